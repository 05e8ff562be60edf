/* merging.c: folding LoRA adapters into a base model: the merged delta of one
 * weight (sum, cat, TIES, DARE on the full deltas w_i s_i B_i A_i) and the
 * streamed rewrite of a whole model through qtc_convert. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/lora.h"

/* d = scale * B A: (out, r) . (r, in). */
static void full_delta(const qtc_tensor *a, const qtc_tensor *b, float scale, float *d)
{
    const int64_t r = a->ne[0], in = a->ne[1], out = b->ne[0];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)out, (int)in, (int)r, scale, b->data, (int)r, a->data,
                (int)in, 0.0f, d, (int)in);
}

typedef struct mag {
    float a;
    int64_t i;
} mag;

static int by_magnitude(const void *x, const void *y)
{
    const mag *p = x, *q = y;
    if (p->a != q->a)
        return p->a < q->a ? 1 : -1;
    return (p->i > q->i) - (p->i < q->i);
}

/* Zeroes all but the k = (int)(density * n) entries of largest magnitude (ties by index). */
static qtc_status trim(float *d, int64_t n, float density, qtc_error *err)
{
    int64_t k = (int64_t)(density * (double)n);
    mag *m = malloc((size_t)n * sizeof *m);
    if (!m)
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++)
        m[i] = (mag){d[i] < 0 ? -d[i] : d[i], i};
    qsort(m, (size_t)n, sizeof *m, by_magnitude);
    for (int64_t j = k; j < n; j++)
        d[m[j].i] = 0;
    free(m);
    return QTC_OK;
}

qtc_status qtc_merge_delta(qtc_peft *const *adapters, const float *weights, int n, int layer, qtc_linear_kind kind,
                           const qtc_merge_opts *o, float *out, qtc_error *err)
{
    const int slot = layer * QTC_N_LINEAR + (int)kind;
    int64_t rows = 0, cols = 0, total_r = 0;
    for (int i = 0; i < n; i++) {
        const qtc_peft *p = adapters[i];
        if (p->lora_a && p->lora_a[slot]) {
            rows = p->lora_b[slot]->ne[0];
            cols = p->lora_a[slot]->ne[1];
            total_r += p->lora_a[slot]->ne[0];
        }
    }
    const int64_t numel = rows * cols;
    if (!numel)
        return QTC_OK;
    memset(out, 0, (size_t)numel * sizeof *out);
    if (o->method == QTC_MERGE_CAT) { /* the stacked adapter [w_i s_i A_i], [B_i], multiplied out once */
        float *a = malloc((size_t)(total_r * cols) * sizeof *a), *b = malloc((size_t)(rows * total_r) * sizeof *b);
        if (!a || !b) {
            free(a);
            free(b);
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        }
        int64_t r0 = 0;
        for (int i = 0; i < n; i++) {
            const qtc_peft *p = adapters[i];
            if (!p->lora_a || !p->lora_a[slot])
                continue;
            const qtc_tensor *A = p->lora_a[slot], *B = p->lora_b[slot];
            const int64_t r = A->ne[0];
            const float s = weights[i] * p->scaling, *av = A->data, *bv = B->data;
            for (int64_t j = 0; j < r * cols; j++)
                a[r0 * cols + j] = s * av[j];
            for (int64_t x = 0; x < rows; x++)
                memcpy(b + x * total_r + r0, bv + x * r, (size_t)r * sizeof *b);
            r0 += r;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)cols, (int)total_r, 1.0f, b, (int)total_r,
                    a, (int)cols, 0.0f, out, (int)cols);
        free(a);
        free(b);
        return QTC_OK;
    }
    float *d = malloc((size_t)numel * sizeof *d);
    float *sign_sum = o->method == QTC_MERGE_TIES ? calloc((size_t)numel, sizeof *sign_sum) : NULL;
    int32_t *count = o->method == QTC_MERGE_TIES ? calloc((size_t)numel, sizeof *count) : NULL;
    float **kept = o->method == QTC_MERGE_TIES ? calloc((size_t)n, sizeof *kept) : NULL;
    qtc_status rc = QTC_OK;
    if (!d || (o->method == QTC_MERGE_TIES && (!sign_sum || !count || !kept))) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < n && rc == QTC_OK; i++) {
        const qtc_peft *p = adapters[i];
        if (!p->lora_a || !p->lora_a[slot])
            continue;
        full_delta(p->lora_a[slot], p->lora_b[slot], weights[i] * p->scaling, d);
        if (o->method == QTC_MERGE_SUM) {
            for (int64_t j = 0; j < numel; j++)
                out[j] += d[j];
        } else if (o->method == QTC_MERGE_DARE) { /* drop with probability 1 - density, rescale the rest */
            qtc_rng r;
            qtc_rng_seed(&r, o->seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(slot + 1)) ^ ((uint64_t)i << 48));
            for (int64_t j = 0; j < numel; j++)
                if (qtc_rng_uniform(&r) < o->density)
                    out[j] += d[j] / o->density;
        } else { /* TIES: trim, then remember the survivors for the sign election */
            if ((rc = trim(d, numel, o->density, err)) != QTC_OK)
                break;
            if (!(kept[i] = malloc((size_t)numel * sizeof *kept[i]))) {
                rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
                break;
            }
            memcpy(kept[i], d, (size_t)numel * sizeof *d);
            for (int64_t j = 0; j < numel; j++)
                sign_sum[j] += d[j];
        }
    }
    if (rc == QTC_OK && o->method == QTC_MERGE_TIES) { /* disjoint mean of the entries that agree with the elected sign */
        for (int i = 0; i < n; i++)
            for (int64_t j = 0; kept[i] && j < numel; j++) {
                float v = kept[i][j];
                if (v != 0 && (v > 0) == (sign_sum[j] > 0) && sign_sum[j] != 0) {
                    out[j] += v;
                    count[j]++;
                }
            }
        for (int64_t j = 0; j < numel; j++)
            if (count[j])
                out[j] /= (float)count[j];
    }
done:
    for (int i = 0; kept && i < n; i++)
        free(kept[i]);
    free(kept);
    free(d);
    free(sign_sum);
    free(count);
    return rc;
}

typedef struct merge_ctx {
    qtc_peft *const *adapters;
    const float *weights;
    int n;
    const qtc_merge_opts *o;
} merge_ctx;

/* "model.layers.N.<path>.weight" -> layer and kind; 0 when not a linear layer. */
static int parse_linear(const char *name, int *layer, int *kind)
{
    char *end;
    if (strncmp(name, "model.layers.", 13) != 0)
        return 0;
    long l = strtol(name + 13, &end, 10);
    if (end == name + 13 || *end != '.')
        return 0;
    for (int k = 0; k < QTC_N_LINEAR; k++) {
        size_t n = strlen(qtc_linear_path((qtc_linear_kind)(k)));
        if (strncmp(end + 1, qtc_linear_path((qtc_linear_kind)(k)), n) == 0 && strcmp(end + 1 + n, ".weight") == 0) {
            *layer = (int)l;
            *kind = k;
            return 1;
        }
    }
    return 0;
}

static int add_delta(void *ctx, const char *name, const qtc_tensor *base, qtc_tensor **out, qtc_error *err)
{
    merge_ctx *m = ctx;
    int layer, kind, any = 0;
    if (!parse_linear(name, &layer, &kind))
        return 0;
    for (int i = 0; i < m->n; i++)
        any |= layer < m->adapters[i]->mc.n_layers && m->adapters[i]->lora_a[layer * QTC_N_LINEAR + kind] != NULL;
    if (!any)
        return 0;
    int64_t numel = qtc_tensor_numel(base);
    qtc_tensor *w = qtc_tensor_to_f32(base, err);
    float *d = w ? malloc((size_t)numel * sizeof *d) : NULL;
    if (!d) {
        qtc_tensor_free(w);
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory"), -1;
    }
    if (qtc_merge_delta(m->adapters, m->weights, m->n, layer, (qtc_linear_kind)kind, m->o, d, err) != QTC_OK) {
        free(d);
        qtc_tensor_free(w);
        return -1;
    }
    float *v = w->data;
    for (int64_t j = 0; j < numel; j++)
        v[j] += d[j];
    free(d);
    *out = w;
    return 1;
}

qtc_status qtc_merge_model(qtc_model_file *base, qtc_peft *const *adapters, const float *weights, int n,
                           const qtc_merge_opts *o, const char *out, qtc_format fmt, int compress,
                           const qtc_target *to, qtc_convert_summary *summary, qtc_error *err)
{
    if (!base->has_config)
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: no llama configuration to check the adapters against", base->path);
    const qtc_llama_config *c = &base->config;
    if ((o->method == QTC_MERGE_TIES || o->method == QTC_MERGE_DARE) && !(o->density > 0 && o->density <= 1))
        return qtc_error_set(err, QTC_ERR_USAGE, "the density must be in (0, 1]");
    for (int i = 0; i < n; i++) {
        const qtc_peft *p = adapters[i];
        const qtc_llama_config *a = &p->mc;
        if (p->c.method != QTC_PEFT_LORA)
            return qtc_error_set(err, QTC_ERR_INPUT, "adapter %d: only LoRA adapters fold into weights (prefixes and "
                                 "bottleneck adapters add computation)", i + 1);
        if (a->dim != c->dim || a->n_layers != c->n_layers || a->hidden != c->hidden || a->n_heads != c->n_heads ||
            a->n_kv_heads != c->n_kv_heads || a->head_dim != c->head_dim)
            return qtc_error_set(err, QTC_ERR_INPUT, "adapter %d: made for another model shape than %s", i + 1, base->path);
        for (int s = 0; s < c->n_layers * QTC_N_LINEAR; s++) {
            if (!p->lora_a[s])
                continue;
            char name[QTC_NAME_MAX];
            qtc_linear_weight_name(s / QTC_N_LINEAR, (qtc_linear_kind)(s % QTC_N_LINEAR), name, sizeof name);
            int j = qtc_model_find(base, name);
            if (j < 0)
                return qtc_error_set(err, QTC_ERR_INPUT, "adapter %d: %s has no tensor '%s' to merge into", i + 1,
                                     base->path, name);
            const qtc_tensor_entry *e = &base->tensors[j];
            if (e->ndim != 2 || e->ne[0] != p->lora_b[s]->ne[0] || e->ne[1] != p->lora_a[s]->ne[1])
                return qtc_error_set(err, QTC_ERR_INPUT, "adapter %d: tensor '%s' of %s is [%lld, %lld], the adapter's "
                                     "delta is [%lld, %lld]", i + 1, name, base->path, (long long)e->ne[0],
                                     (long long)(e->ndim > 1 ? e->ne[1] : 0), (long long)p->lora_b[s]->ne[0],
                                     (long long)p->lora_a[s]->ne[1]);
        }
    }
    merge_ctx m = {adapters, weights, n, o};
    qtc_convert_hooks hooks = {.transform = add_delta, .ctx = &m};
    return qtc_convert(base, out, fmt, compress, to, NULL, 0, &hooks, summary, err);
}
