/* peft.c: the trainable parts of LoRA, bottleneck adapters and prefix tuning,
 * their initialisation, and the hooks that put them into a llama's forward. */
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/lora.h"

int qtc_peft_targets(const char *spec, int layer, qtc_linear_kind kind)
{
    if (kind >= QTC_N_LINEAR || layer < 0)
        return 0;
    char path[96];
    snprintf(path, sizeof path, "model.layers.%d.%s", layer, qtc_linear_path((qtc_linear_kind)(kind)));
    const char *leaf = strchr(qtc_linear_path((qtc_linear_kind)(kind)), '.') + 1;
    if (strpbrk(spec, "\\^$.*+?()[]{}|")) { /* a regex over the whole module path, as PEFT's fullmatch */
        char *anchored = malloc(strlen(spec) + 5);
        if (!anchored)
            return -1;
        sprintf(anchored, "^(%s)$", spec);
        regex_t re;
        int bad = regcomp(&re, anchored, REG_EXTENDED | REG_NOSUB);
        free(anchored);
        if (bad)
            return -1;
        int hit = regexec(&re, path, 0, NULL, 0) == 0;
        regfree(&re);
        return hit;
    }
    if (strcmp(spec, "all-linear") == 0)
        return 1;
    for (const char *s = spec; *s;) {
        size_t n = strcspn(s, ",");
        if (n == strlen(leaf) && strncmp(s, leaf, n) == 0)
            return 1;
        s += n + (s[n] == ',');
    }
    return 0;
}

static qtc_tensor *param(int64_t rows, int64_t cols, const char *name, qtc_error *err)
{
    qtc_tensor *t = cols ? qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(rows, cols), err)
                         : qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(rows), err);
    if (t && qtc_tensor_require_grad(t, err) != QTC_OK) {
        qtc_tensor_free(t);
        return NULL;
    }
    if (t)
        snprintf(t->name, sizeof t->name, "%s", name);
    return t;
}

qtc_peft *qtc_peft_new(const qtc_llama_config *mc, const qtc_peft_config *c, uint64_t seed, qtc_error *err)
{
    if (c->method == QTC_PEFT_PREFIX ? c->prefix_len < 1 : c->r < 1)
        return qtc_error_set(err, QTC_ERR_USAGE, c->method == QTC_PEFT_PREFIX ? "the prefix length must be at least 1"
                                                                               : "the rank must be at least 1"), NULL;
    if (c->dropout < 0 || c->dropout >= 1)
        return qtc_error_set(err, QTC_ERR_USAGE, "dropout %g is outside [0, 1)", c->dropout), NULL;
    qtc_peft *p = calloc(1, sizeof *p);
    const int L = mc->n_layers;
    if (!p)
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory"), NULL;
    p->c = *c;
    p->mc = *mc;
    if (c->method == QTC_PEFT_LORA)
        p->scaling = c->rslora ? c->alpha / sqrtf((float)c->r) : c->alpha / (float)c->r;
    qtc_rng_seed(&p->rng, seed);
    const int64_t D = mc->dim, H = mc->hidden, QD = (int64_t)mc->n_heads * mc->head_dim,
                  KV = (int64_t)mc->n_kv_heads * mc->head_dim;
    const int64_t out_dim[QTC_N_LINEAR] = {QD, KV, KV, D, H, H, D}, in_dim[QTC_N_LINEAR] = {D, D, D, QD, D, D, H};
    char name[QTC_NAME_MAX];
    int ok = 1, n_targets = 0;
    if (c->method == QTC_PEFT_LORA) {
        ok = (p->lora_a = calloc((size_t)L * QTC_N_LINEAR, sizeof *p->lora_a)) &&
             (p->lora_b = calloc((size_t)L * QTC_N_LINEAR, sizeof *p->lora_b));
        for (int l = 0; ok && l < L; l++)
            for (int k = 0; k < QTC_N_LINEAR && ok; k++) {
                int hit = qtc_peft_targets(c->target, l, (qtc_linear_kind)k);
                if (hit < 0) {
                    qtc_error_set(err, QTC_ERR_USAGE, "bad target pattern '%s'", c->target);
                    ok = 0;
                    break;
                }
                if (!hit)
                    continue;
                n_targets++;
                int i = l * QTC_N_LINEAR + k;
                snprintf(name, sizeof name, "model.layers.%d.%s.lora_A", l, qtc_linear_path((qtc_linear_kind)(k)));
                ok = (p->lora_a[i] = param(c->r, in_dim[k], name, err)) != NULL;
                snprintf(name, sizeof name, "model.layers.%d.%s.lora_B", l, qtc_linear_path((qtc_linear_kind)(k)));
                ok = ok && (p->lora_b[i] = param(out_dim[k], c->r, name, err)) != NULL;
                if (ok) /* PEFT: kaiming_uniform_(A, a=sqrt(5)), B zero */
                    qtc_rng_kaiming_uniform(&p->rng, p->lora_a[i], sqrt(5.0));
            }
        if (ok && !n_targets) {
            qtc_error_set(err, QTC_ERR_USAGE, "the targets '%s' name no linear layer of the model", c->target);
            ok = 0;
        }
    } else if (c->method == QTC_PEFT_ADAPTER) {
        ok = (p->down = calloc((size_t)L * 2, sizeof *p->down)) && (p->down_b = calloc((size_t)L * 2, sizeof *p->down)) &&
             (p->up = calloc((size_t)L * 2, sizeof *p->down)) && (p->up_b = calloc((size_t)L * 2, sizeof *p->down));
        for (int i = 0; ok && i < 2 * L; i++) {
            const char *where = i % 2 ? "mlp_adapter" : "attn_adapter";
            snprintf(name, sizeof name, "model.layers.%d.%s.down", i / 2, where);
            ok = (p->down[i] = param(c->r, D, name, err)) && (p->down_b[i] = param(c->r, 0, name, err)) &&
                 (p->up[i] = param(D, c->r, name, err)) && (p->up_b[i] = param(D, 0, name, err));
            if (ok)
                qtc_rng_kaiming_uniform(&p->rng, p->down[i], sqrt(5.0));
        }
    } else {
        ok = (p->prefix_k = calloc((size_t)L, sizeof *p->prefix_k)) && (p->prefix_v = calloc((size_t)L, sizeof *p->prefix_v));
        for (int l = 0; ok && l < L; l++) {
            snprintf(name, sizeof name, "prefix.%d", l);
            ok = (p->prefix_k[l] = param(c->prefix_len, KV, name, err)) && (p->prefix_v[l] = param(c->prefix_len, KV, name, err));
            if (ok) { /* small random keys and values: the prefix starts nearly silent */
                qtc_rng_fill_normal(&p->rng, p->prefix_k[l], 0.0f, 0.02f);
                qtc_rng_fill_normal(&p->rng, p->prefix_v[l], 0.0f, 0.02f);
            }
        }
    }
    if (!ok) {
        if (!err->code)
            qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        qtc_peft_free(p);
        return NULL;
    }
    return p;
}

void qtc_peft_free(qtc_peft *p)
{
    if (!p)
        return;
    const int L = p->mc.n_layers;
    for (int i = 0; i < L * QTC_N_LINEAR; i++) {
        if (p->lora_a)
            qtc_tensor_free(p->lora_a[i]);
        if (p->lora_b)
            qtc_tensor_free(p->lora_b[i]);
        if (p->base)
            qtc_qmatrix_free(&p->base[i]);
    }
    for (int i = 0; i < 2 * L; i++) {
        qtc_tensor *t[4] = {p->down ? p->down[i] : NULL, p->down_b ? p->down_b[i] : NULL, p->up ? p->up[i] : NULL,
                            p->up_b ? p->up_b[i] : NULL};
        for (int k = 0; k < 4; k++)
            qtc_tensor_free(t[k]);
    }
    for (int l = 0; l < L; l++) {
        if (p->prefix_k)
            qtc_tensor_free(p->prefix_k[l]);
        if (p->prefix_v)
            qtc_tensor_free(p->prefix_v[l]);
    }
    free(p->lora_a);
    free(p->lora_b);
    free(p->base);
    if (p->base_head && p->base_head != p->base_embed) {
        qtc_qmatrix_free(p->base_head);
        free(p->base_head);
    }
    if (p->base_embed) {
        qtc_qmatrix_free(p->base_embed);
        free(p->base_embed);
    }
    qtc_model_close(p->file); /* after the matrices that view its mapping */
    free(p->down);
    free(p->down_b);
    free(p->up);
    free(p->up_b);
    free(p->prefix_k);
    free(p->prefix_v);
    free(p);
}

qtc_status qtc_peft_quantize_base(qtc_peft *p, qtc_llama *m, const qtc_qscheme *s, qtc_dtype t, qtc_error *err)
{
    const int n = m->c.n_layers * QTC_N_LINEAR;
    if (!p->base && !(p->base = calloc((size_t)n, sizeof *p->base)))
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        int layer = i / QTC_N_LINEAR;
        qtc_linear_kind kind = (qtc_linear_kind)(i % QTC_N_LINEAR);
        qtc_tensor **w = qtc_llama_linear_slot(m, layer, kind);
        if (!*w)
            continue; /* already quantized */
        qtc_dtype ti = s ? t : qtc_dtype_fallback(t, (*w)->ne[1]);
        char name[QTC_NAME_MAX];
        if (qtc_qmatrix_quantize((*w)->data, (*w)->ne[0], (*w)->ne[1], s, ti, &p->base[i], err) != QTC_OK)
            return qtc_error_prefix(err, "%s", qtc_linear_weight_name(layer, kind, name, sizeof name));
        qtc_tensor_free(*w);
        *w = NULL;
    }
    return QTC_OK;
}

typedef struct base_loader {
    qtc_peft *p;
    const qtc_model_file *f;
    const qtc_target *lin, *io; /* NULL: float as stored */
} base_loader;

/* A weight the file already stores in the wanted form is taken as stored
 * (codes or blocks, viewed in the mapping where its rows need no permutation):
 * training then sees exactly the file's weights. */
static int take_as_stored(base_loader *b, const char *name, const qtc_target *to, qtc_qmatrix *out, qtc_error *err)
{
    int i = qtc_model_find(b->f, name);
    const qtc_tensor_entry *e = i >= 0 ? &b->f->tensors[i] : NULL;
    if (!e)
        return 0;
    if (to->is_scheme && e->qparts.scheme_set && memcmp(&e->scheme, &to->scheme, sizeof to->scheme) == 0) {
        qtc_qweight qw;
        if (qtc_model_qweight(b->f, i, &qw, err) != QTC_OK || qtc_qmatrix_from_qweight(&qw, out, err) != QTC_OK)
            return -1;
        return 1;
    }
    if (!to->is_scheme && e->dtype == to->dtype && qtc_dtype_info(e->dtype)->is_quantized && e->ndim == 2) {
        out->rows = e->ne[0];
        out->cols = e->ne[1];
        out->dtype = e->dtype;
        if (!e->rope_heads && (uintptr_t)e->data % 4 == 0) { /* blocks hold 2-byte scales: aligned views only */
            out->data = (uint8_t *)(uintptr_t)e->data;
            out->borrowed = 1;
            return 1;
        }
        if (!(out->data = malloc(e->nbytes)))
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory"), -1;
        if (e->rope_heads) /* a GGUF's q/k: whole rows of blocks back into HF's order */
            qtc_rope_rows_to_hf(e->data, out->data, e->ne[0], e->nbytes / (size_t)e->ne[0], e->rope_heads);
        else
            memcpy(out->data, e->data, e->nbytes);
        return 1;
    }
    return 0;
}

/* An f16/bf16 weight as a matrix of its stored rows: a view of the mapping,
 * or a copy of rows the reader had to permute. */
static int keep_half(const qtc_tensor *w, qtc_qmatrix *out, qtc_error *err)
{
    out->rows = w->ne[0];
    out->cols = w->ne[1];
    out->dtype = w->dtype;
    if (!qtc_tensor_owns_data(w)) {
        out->data = w->data;
        out->borrowed = 1;
        return 1;
    }
    size_t bytes = qtc_tensor_nbytes(w);
    if (!(out->data = malloc(bytes)))
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory"), -1;
    memcpy(out->data, w->data, bytes);
    return 1;
}

static int frozen_keep(void *ctx, int layer, qtc_linear_kind kind, const qtc_tensor *w, qtc_error *err)
{
    base_loader *b = ctx;
    qtc_peft *p = b->p;
    const int io = kind == QTC_LIN_EMBED || kind == QTC_LIN_OUTPUT;
    const qtc_target *to = io ? b->io : b->lin;
    char name[QTC_NAME_MAX];
    if (io)
        snprintf(name, sizeof name, kind == QTC_LIN_EMBED ? "model.embed_tokens.weight" : "lm_head.weight");
    else
        qtc_linear_weight_name(layer, kind, name, sizeof name);
    const int as_float = !to || (!to->is_scheme && to->dtype == QTC_F32);
    if (as_float && w->dtype == QTC_F32)
        return 0; /* the llama holds it: a view of the mapping where the file allows */
    qtc_qmatrix *q;
    if (io) {
        qtc_qmatrix **slot = kind == QTC_LIN_EMBED ? &p->base_embed : &p->base_head;
        if (!(*slot = calloc(1, sizeof **slot)))
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory"), -1;
        q = *slot;
        if (kind == QTC_LIN_EMBED && qtc_model_find(b->f, "lm_head.weight") < 0)
            p->base_head = q; /* tied: one table serves both */
    } else {
        q = &p->base[layer * QTC_N_LINEAR + (int)kind];
    }
    int kept = as_float ? keep_half(w, q, err) : take_as_stored(b, name, to, q, err);
    if (kept)
        return kept;
    qtc_tensor *f32 = w->dtype == QTC_F32 ? NULL : qtc_tensor_to_f32(w, err);
    if (w->dtype != QTC_F32 && !f32)
        return -1;
    const float *v = f32 ? f32->data : w->data;
    /* a block type that does not divide the rows falls back as qconv's does (stories260K's 172-wide down_proj) */
    qtc_dtype t = to->is_scheme ? to->dtype : qtc_dtype_fallback(to->dtype, w->ne[1]);
    qtc_status rc = qtc_qmatrix_quantize(v, w->ne[0], w->ne[1], to->is_scheme ? &to->scheme : NULL, t, q, err);
    qtc_tensor_free(f32);
    if (rc != QTC_OK) {
        qtc_error_prefix(err, "%s", name);
        return -1;
    }
    return 1;
}

qtc_llama *qtc_peft_load_frozen(qtc_peft *p, const qtc_model_file *f, const qtc_target *linear, const qtc_target *io,
                                qtc_error *err)
{
    if (!p->base && !(p->base = calloc((size_t)p->mc.n_layers * QTC_N_LINEAR, sizeof *p->base)))
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory"), NULL;
    if (!p->file)
        p->file = qtc_model_ref(f); /* base entries may view its mapping */
    base_loader b = {p, f, linear, io};
    return qtc_llama_from_model_frozen(f, frozen_keep, &b, err);
}

qtc_llama *qtc_peft_load_base(qtc_peft *p, const qtc_model_file *f, const qtc_qscheme *s, qtc_dtype t, qtc_error *err)
{
    qtc_target to = {s != NULL, t, {0}};
    if (s)
        to.scheme = *s;
    return qtc_peft_load_frozen(p, f, &to, NULL, err);
}

size_t qtc_peft_base_bytes(const qtc_peft *p)
{
    size_t b = 0;
    for (int i = 0; p->base && i < p->mc.n_layers * QTC_N_LINEAR; i++)
        b += qtc_qmatrix_bytes(&p->base[i]);
    return b;
}

static qtc_tensor *peft_linear(void *ctx, qtc_graph *g, qtc_tensor *x, qtc_tensor *w, int layer, qtc_linear_kind kind)
{
    qtc_peft *p = ctx;
    int i = layer * QTC_N_LINEAR + (int)kind;
    qtc_tensor *y = w ? qtc_matmul(g, x, w, 0, 1) : qtc_qmatmul(g, x, layer >= 0 ? &p->base[i] : p->base_head);
    if (layer < 0 || !p->lora_a || !p->lora_a[i])
        return y;
    qtc_tensor *xa = p->training && p->c.dropout > 0 ? qtc_dropout(g, x, p->c.dropout, &p->rng) : x;
    qtc_tensor *d = qtc_matmul(g, qtc_matmul(g, xa, p->lora_a[i], 0, 1), p->lora_b[i], 0, 1);
    return qtc_add(g, y, qtc_scale(g, d, p->scaling));
}

static qtc_tensor *peft_sublayer(void *ctx, qtc_graph *g, qtc_tensor *out, int layer, int which)
{
    qtc_peft *p = ctx;
    if (!p->down)
        return out;
    int i = layer * 2 + which;
    qtc_tensor *h = qtc_silu(g, qtc_add(g, qtc_matmul(g, out, p->down[i], 0, 1), p->down_b[i]));
    return qtc_add(g, out, qtc_add(g, qtc_matmul(g, h, p->up[i], 0, 1), p->up_b[i]));
}

static void peft_extend_kv(void *ctx, qtc_graph *g, int layer, qtc_tensor **k, qtc_tensor **v)
{
    qtc_peft *p = ctx;
    if (!p->prefix_k)
        return;
    *k = qtc_concat_prefix(g, p->prefix_k[layer], *k);
    *v = qtc_concat_prefix(g, p->prefix_v[layer], *v);
}

/* What a checkpointed block's recomputation needs of p to draw the dropout
 * masks its forward drew: whether dropout was on, and the generator. */
static size_t peft_hook_state(void *ctx, void *buf, int save)
{
    qtc_peft *p = ctx;
    const size_t n = sizeof p->training + sizeof p->rng;
    unsigned char *b = buf;
    if (!b)
        return n;
    if (save) {
        memcpy(b, &p->training, sizeof p->training);
        memcpy(b + sizeof p->training, &p->rng, sizeof p->rng);
    } else {
        memcpy(&p->training, b, sizeof p->training);
        memcpy(&p->rng, b + sizeof p->training, sizeof p->rng);
    }
    return n;
}

static qtc_tensor *peft_embed_rows(void *ctx, qtc_graph *g, const qtc_tensor *ids)
{
    return qtc_qembedding(g, ((qtc_peft *)ctx)->base_embed, ids);
}

static qtc_tensor *peft_head_loss(void *ctx, qtc_graph *g, qtc_tensor *x, const qtc_tensor *targets)
{
    return qtc_qlinear_cross_entropy(g, x, ((qtc_peft *)ctx)->base_head, targets, 0);
}

void qtc_peft_attach(qtc_peft *p, qtc_llama *m)
{
    m->linear = peft_linear;
    m->linear_ctx = p;
    m->sublayer = p->down ? peft_sublayer : NULL;
    m->extend_kv = p->prefix_k ? peft_extend_kv : NULL;
    m->embed_rows = p->base_embed ? peft_embed_rows : NULL;
    m->head_loss = p->base_head ? peft_head_loss : NULL;
    m->hook_ctx = p;
    m->hook_state = peft_hook_state;
}

void qtc_peft_detach(qtc_llama *m)
{
    m->linear = NULL;
    m->sublayer = NULL;
    m->extend_kv = NULL;
    m->hook_state = NULL;
    m->embed_rows = NULL;
    m->head_loss = NULL;
    m->linear_ctx = m->hook_ctx = NULL;
}

/* The i-th trainable tensor, or NULL past the end (fixed order: layer by
 * layer), and its file key into name (cap bytes) when name is not NULL. */
static qtc_tensor *nth(const qtc_peft *p, int i, char *name, size_t cap)
{
    const int L = p->mc.n_layers;
    for (int j = 0; p->lora_a && j < L * QTC_N_LINEAR; j++)
        if (p->lora_a[j] && (i -= 2) < 0) {
            if (name)
                snprintf(name, cap, "base_model.model.model.layers.%d.%s.lora_%c.weight", j / QTC_N_LINEAR,
                         qtc_linear_path((qtc_linear_kind)(j % QTC_N_LINEAR)), i == -2 ? 'A' : 'B');
            return i == -2 ? p->lora_a[j] : p->lora_b[j];
        }
    static const char *part[4] = {"down.weight", "down.bias", "up.weight", "up.bias"};
    for (int j = 0; p->down && j < 2 * L; j++)
        if ((i -= 4) < 0) {
            if (name)
                snprintf(name, cap, "base_model.model.model.layers.%d.%s_adapter.%s", j / 2, j % 2 ? "mlp" : "attn",
                         part[i + 4]);
            return (qtc_tensor *[]){p->down[j], p->down_b[j], p->up[j], p->up_b[j]}[i + 4];
        }
    for (int j = 0; p->prefix_k && j < L; j++) /* stored together as prompt_embeddings; named apart in checkpoints */
        if ((i -= 2) < 0) {
            if (name)
                snprintf(name, cap, "prefix.layers.%d.%s", j, i == -2 ? "key" : "value");
            return i == -2 ? p->prefix_k[j] : p->prefix_v[j];
        }
    return NULL;
}

int qtc_peft_params(const qtc_peft *p, qtc_tensor **out, int cap)
{
    int n = 0;
    for (qtc_tensor *t; (t = nth(p, n, NULL, 0)); n++)
        if (n < cap)
            out[n] = t;
    return n;
}

const char *qtc_peft_param_name(const qtc_peft *p, int i, char *buf, size_t cap)
{
    return nth(p, i, buf, cap) ? buf : NULL;
}
