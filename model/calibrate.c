/* calibrate.c: running calibration text through a llama to collect the
 * statistics of qtc/calib.h, and the files they are written to: the
 * calibration JSON and llama.cpp's imatrix GGUF. Folding scales into the
 * llama is fold.c. */
#include <cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/calibrate.h"
#include "qtc/io.h"
#include "qtc/runtime.h"

/* Projections that read the same input record it once (q for k and v, gate for up). */
static int recorded_kind(int k)
{
    return k == QTC_LIN_K || k == QTC_LIN_V ? QTC_LIN_Q : k == QTC_LIN_UP ? QTC_LIN_GATE : k;
}

qtc_calib *qtc_calib_new(const qtc_llama_config *c, int with_xtx, qtc_error *err)
{
    qtc_calib *cb = calloc(1, sizeof *cb);
    if (!cb || !(cb->s = calloc((size_t)c->n_layers * QTC_N_LINEAR, sizeof *cb->s))) {
        free(cb);
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory"), NULL;
    }
    cb->n_layers = c->n_layers;
    cb->with_xtx = with_xtx;
    cb->record_mask = (1u << QTC_N_LINEAR) - 1;
    const int64_t in[QTC_N_LINEAR] = {c->dim, c->dim, c->dim, (int64_t)c->n_heads * c->head_dim, c->dim, c->dim, c->hidden};
    for (int i = 0; i < c->n_layers * QTC_N_LINEAR; i++) {
        qtc_act_stats *s = &cb->s[i];
        int k = i % QTC_N_LINEAR;
        qtc_linear_weight_name(i / QTC_N_LINEAR, (qtc_linear_kind)k, s->weight, sizeof s->weight);
        s->in = in[k];
        s->sum_sq = calloc((size_t)s->in, sizeof *s->sum_sq);
        s->sum_abs = calloc((size_t)s->in, sizeof *s->sum_abs);
        s->amax = calloc((size_t)s->in, sizeof *s->amax);
        s->cmin = calloc((size_t)s->in, sizeof *s->cmin);
        s->cmax = calloc((size_t)s->in, sizeof *s->cmax);
        if (!s->sum_sq || !s->sum_abs || !s->amax || !s->cmin || !s->cmax) {
            qtc_calib_free(cb);
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory for the calibration statistics"), NULL;
        }
    }
    return cb;
}

void qtc_calib_free(qtc_calib *cb)
{
    if (!cb)
        return;
    for (int i = 0; cb->s && i < cb->n_layers * QTC_N_LINEAR; i++) {
        int k = i % QTC_N_LINEAR;
        free(cb->s[i].sum_sq);
        free(cb->s[i].sum_abs);
        free(cb->s[i].amax);
        free(cb->s[i].cmin);
        free(cb->s[i].cmax);
        if (recorded_kind(k) == k) /* copies share their source's x x^T */
            free(cb->s[i].xtx);
    }
    free(cb->s);
    free(cb);
}

static qtc_tensor *record_linear(void *ctx, qtc_graph *g, qtc_tensor *x, qtc_tensor *w, int layer, qtc_linear_kind kind)
{
    qtc_calib *cb = ctx;
    if (x && layer >= 0 && recorded_kind(kind) == (int)kind && (cb->record_mask >> kind & 1))
        qtc_act_stats_add(&cb->s[layer * QTC_N_LINEAR + kind], x->data, qtc_tensor_numel(x) / x->ne[x->ndim - 1]);
    return qtc_matmul(g, x, w, 0, 1);
}

/* Copies layer l's shared statistics to the projections that read the same input. */
static void share(qtc_calib *cb, int l)
{
    for (int i = l * QTC_N_LINEAR; i < (l + 1) * QTC_N_LINEAR; i++) {
        int k = i % QTC_N_LINEAR, from = recorded_kind(k);
        if (from == k)
            continue;
        qtc_act_stats *d = &cb->s[i];
        const qtc_act_stats *s = &cb->s[i - k + from];
        double *sq = d->sum_sq, *ab = d->sum_abs, *am = d->amax, *mn = d->cmin, *mx = d->cmax;
        char name[QTC_NAME_MAX];
        memcpy(name, d->weight, sizeof name);
        *d = *s;
        memcpy(d->weight, name, sizeof name);
        d->sum_sq = sq;
        d->sum_abs = ab;
        d->amax = am;
        d->cmin = mn;
        d->cmax = mx;
        memcpy(sq, s->sum_sq, (size_t)s->in * sizeof *sq);
        memcpy(ab, s->sum_abs, (size_t)s->in * sizeof *ab);
        memcpy(am, s->amax, (size_t)s->in * sizeof *am);
        memcpy(mn, s->cmin, (size_t)s->in * sizeof *mn);
        memcpy(mx, s->cmax, (size_t)s->in * sizeof *mx);
        d->xtx = s->xtx;
    }
}

/* x x^T sums for layer l's recorded inputs (alloc), or their release (NULL everywhere). */
static qtc_status layer_xtx(qtc_calib *cb, int l, int alloc, qtc_error *err)
{
    for (int i = l * QTC_N_LINEAR; i < (l + 1) * QTC_N_LINEAR; i++) {
        qtc_act_stats *s = &cb->s[i];
        if (recorded_kind(i % QTC_N_LINEAR) == i % QTC_N_LINEAR)
            free(s->xtx);
        s->xtx = NULL;
    }
    for (int i = l * QTC_N_LINEAR; alloc && i < (l + 1) * QTC_N_LINEAR; i++) {
        qtc_act_stats *s = &cb->s[i];
        if (recorded_kind(i % QTC_N_LINEAR) != i % QTC_N_LINEAR)
            continue;
        if (!(s->xtx = calloc((size_t)(s->in * s->in), sizeof *s->xtx)))
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory for layer %d's x x^T sums (%lld x %lld doubles)", l,
                                 (long long)s->in, (long long)s->in);
    }
    return QTC_OK;
}

static qtc_status check_xtx(const qtc_calib *cb, qtc_error *err)
{
    for (int i = 0; i < cb->n_layers * QTC_N_LINEAR; i++)
        if (cb->s[i].xtx_failed)
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory for the calibration statistics");
    return QTC_OK;
}

/* The whole model a batch of windows at a time. */
static qtc_status run_whole(qtc_calib *cb, qtc_llama *m, const int32_t *ids, int64_t windows, int ctx, int batch,
                            const qtc_calib_hooks *h, qtc_graph *g, qtc_error *err)
{
    qtc_status rc = QTC_OK;
    for (int64_t w0 = 0; w0 < windows && rc == QTC_OK; w0 += batch) {
        int64_t b = w0 + batch <= windows ? batch : windows - w0;
        qtc_tensor t = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(b, ctx), (void *)(ids + w0 * ctx));
        qtc_graph_reset(g);
        qtc_llama_forward(m, g, &t, 0);
        rc = qtc_graph_status(g, err);
        if (h->progress)
            h->progress(h->ctx, w0 + b, windows);
    }
    for (int l = 0; rc == QTC_OK && l < cb->n_layers; l++)
        share(cb, l);
    return rc == QTC_OK ? check_xtx(cb, err) : rc;
}

/* Block l over every window's hidden state in hid (windows x ctx x dim), in
 * place when write is set. The linear hook decides whether it is recorded. */
static qtc_status run_block(qtc_llama *m, int l, float *hid, int64_t windows, int ctx, int batch, int write, qtc_graph *g,
                            qtc_error *err)
{
    const int64_t dim = m->c.dim;
    for (int64_t w0 = 0; w0 < windows; w0 += batch) {
        int64_t b = w0 + batch <= windows ? batch : windows - w0;
        float *slice = hid + w0 * ctx * dim;
        qtc_tensor x = qtc_tensor_borrow(QTC_F32, 3, QTC_SHAPE(b, ctx, dim), slice);
        qtc_graph_reset(g);
        qtc_tensor *y = qtc_llama_block(m, g, l, &x, 0);
        if (qtc_graph_status(g, err) != QTC_OK)
            return err->code;
        if (write)
            memcpy(slice, y->data, (size_t)(b * ctx * dim) * sizeof *slice);
    }
    return QTC_OK;
}

/* The embedding of every window, then one block at a time over them. */
static qtc_status run_layers(qtc_calib *cb, qtc_llama *m, const int32_t *ids, int64_t windows, int ctx, int batch,
                             const qtc_calib_hooks *h, qtc_graph *g, qtc_error *err)
{
    const int64_t dim = m->c.dim, n = windows * ctx;
    if (n > INT64_MAX / 4 / dim)
        return qtc_error_set(err, QTC_ERR_USAGE, "%lld calibration tokens are too many to cache", (long long)n);
    float *hid = malloc((size_t)(n * dim) * sizeof *hid);
    if (!hid)
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory for the hidden states of %lld tokens (%.0f MB)",
                             (long long)n, (double)n * dim * 4 / 1e6);
    qtc_status rc = QTC_OK;
    for (int64_t w0 = 0; w0 < windows && rc == QTC_OK; w0 += batch) {
        int64_t b = w0 + batch <= windows ? batch : windows - w0;
        qtc_tensor t = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(b, ctx), (void *)(ids + w0 * ctx));
        qtc_graph_reset(g);
        qtc_tensor *x = qtc_embedding(g, m->embed, &t);
        if ((rc = qtc_graph_status(g, err)) == QTC_OK)
            memcpy(hid + w0 * ctx * dim, x->data, (size_t)(b * ctx * dim) * sizeof *hid);
    }
    qtc_linear_fn recording = m->linear;
    const int recompute = h->layer_done && h->changes_weights, by_group = recompute && h->by_group;
    /* the projections recorded in each pass: all at once, or group by group */
    static const unsigned all[1] = {(1u << QTC_N_LINEAR) - 1};
    static const unsigned groups[4] = {1u << QTC_LIN_Q | 1u << QTC_LIN_K | 1u << QTC_LIN_V, 1u << QTC_LIN_O,
                                       1u << QTC_LIN_GATE | 1u << QTC_LIN_UP, 1u << QTC_LIN_DOWN};
    const unsigned *steps = by_group ? groups : all;
    const int n_steps = by_group ? 4 : 1;
    for (int l = 0; l < cb->n_layers && rc == QTC_OK; l++) {
        if ((rc = layer_xtx(cb, l, cb->with_xtx, err)) != QTC_OK)
            break;
        for (int st = 0; st < n_steps && rc == QTC_OK; st++) {
            cb->record_mask = steps[st];
            m->linear = recording;
            if ((rc = run_block(m, l, hid, windows, ctx, batch, !recompute, g, err)) != QTC_OK ||
                (rc = check_xtx(cb, err)) != QTC_OK)
                break;
            share(cb, l);
            if (h->layer_done)
                rc = h->layer_done(h->ctx, cb, m, l, steps[st], err);
        }
        cb->record_mask = all[0];
        if (rc != QTC_OK)
            break;
        layer_xtx(cb, l, 0, err);
        m->linear = NULL; /* the changed layer's outputs, not recorded */
        if (recompute && (rc = run_block(m, l, hid, windows, ctx, batch, 1, g, err)) != QTC_OK)
            break;
        if (h->progress)
            h->progress(h->ctx, (int64_t)(l + 1) * windows, (int64_t)cb->n_layers * windows);
    }
    m->linear = recording;
    cb->record_mask = all[0];
    for (int l = 0; l < cb->n_layers; l++)
        layer_xtx(cb, l, 0, err);
    free(hid);
    return rc;
}

qtc_status qtc_calib_run(qtc_calib *cb, qtc_llama *m, const qtc_tokens *data, int ctx, int batch, int64_t max_tokens,
                         const qtc_calib_hooks *hooks, qtc_error *err)
{
    static const qtc_calib_hooks none;
    const qtc_calib_hooks *h = hooks ? hooks : &none;
    int64_t n = max_tokens > 0 && max_tokens < data->n ? max_tokens : data->n, windows = n / ctx;
    if (windows < 1)
        return qtc_error_set(err, QTC_ERR_INPUT, "%lld calibration tokens: not one window of %d", (long long)n, ctx);
    qtc_graph *g = qtc_graph_new(err);
    if (!g)
        return err->code;
    qtc_graph_set_recording(g, 0);
    qtc_linear_fn saved = m->linear;
    void *saved_ctx = m->linear_ctx;
    m->linear = record_linear;
    m->linear_ctx = cb;
    qtc_status rc = cb->with_xtx || h->layer_done ? run_layers(cb, m, data->ids, windows, ctx, batch, h, g, err)
                                                  : run_whole(cb, m, data->ids, windows, ctx, batch, h, g, err);
    m->linear = saved;
    m->linear_ctx = saved_ctx;
    qtc_graph_free(g);
    if (rc == QTC_OK) {
        cb->windows += windows;
        cb->tokens += windows * ctx;
    }
    return rc;
}

/* The static int8 quantization parameters of a range (PyTorch's asymmetric qparams). */
static void range_qparams(double lo, double hi, int bits, float *scale, int *zero)
{
    float r[2] = {(float)lo, (float)hi};
    qtc_int_qparams(r, 2, bits, 0, scale, zero);
}

/* An input's per-channel ranges and their parameters, as JSON arrays. */
static cJSON *channels_json(const qtc_act_stats *a, int bits)
{
    cJSON *c = cJSON_CreateObject(), *mn = cJSON_AddArrayToObject(c, "min"), *mx = cJSON_AddArrayToObject(c, "max");
    cJSON *sc = cJSON_AddArrayToObject(c, "scale"), *zp = cJSON_AddArrayToObject(c, "zero_point");
    for (int64_t k = 0; k < a->in; k++) {
        float scale;
        int zero;
        range_qparams(a->cmin[k], a->cmax[k], bits, &scale, &zero);
        cJSON_AddItemToArray(mn, cJSON_CreateNumber(a->cmin[k]));
        cJSON_AddItemToArray(mx, cJSON_CreateNumber(a->cmax[k]));
        cJSON_AddItemToArray(sc, cJSON_CreateNumber(scale));
        cJSON_AddItemToArray(zp, cJSON_CreateNumber(zero));
    }
    return c;
}

qtc_status qtc_calib_save_json(const qtc_calib *cb, const char *path, qtc_range_method m, double p, int bits,
                               int per_channel, const qtc_calib_source *src, qtc_error *err)
{
    cJSON *o = cJSON_CreateObject(), *s = cJSON_CreateObject(), *t = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "format", "qtc-calibration");
    cJSON_AddNumberToObject(o, "version", 1);
    cJSON_AddStringToObject(o, "qtc_version", qtc_version());
    cJSON_AddStringToObject(o, "method", qtc_range_method_name(m));
    if (m == QTC_RANGE_PERCENTILE)
        cJSON_AddNumberToObject(o, "percentile", p);
    cJSON_AddNumberToObject(o, "bits", bits);
    cJSON_AddStringToObject(o, "granularity", per_channel ? "channel" : "tensor");
    cJSON_AddStringToObject(s, "data", src->data_path ? src->data_path : "");
    cJSON_AddStringToObject(s, "sha256", src->sha256);
    cJSON_AddNumberToObject(s, "tokens", (double)src->tokens);
    cJSON_AddNumberToObject(s, "ctx", src->ctx);
    cJSON_AddNumberToObject(s, "seed", (double)src->seed);
    cJSON_AddItemToObject(o, "source", s);
    for (int i = 0; i < cb->n_layers * QTC_N_LINEAR; i++) {
        const qtc_act_stats *a = &cb->s[i];
        double lo, hi;
        qtc_act_range(a, m, p, bits, &lo, &hi);
        float scale;
        int zero;
        range_qparams(lo, hi, bits, &scale, &zero);
        cJSON *e = cJSON_CreateObject(), *in = cJSON_CreateObject();
        cJSON_AddNumberToObject(in, "min", lo);
        cJSON_AddNumberToObject(in, "max", hi);
        cJSON_AddNumberToObject(in, "scale", scale);
        cJSON_AddNumberToObject(in, "zero_point", zero);
        cJSON_AddNumberToObject(in, "observed_min", a->min);
        cJSON_AddNumberToObject(in, "observed_max", a->max);
        if (per_channel)
            cJSON_AddItemToObject(in, "channels", channels_json(a, bits));
        cJSON_AddItemToObject(e, "input", in);
        cJSON_AddItemToObject(t, a->weight, e);
    }
    cJSON_AddItemToObject(o, "tensors", t);
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    if (!text)
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    qtc_status rc = qtc_write_file(path, text, strlen(text), err);
    cJSON_free(text);
    return rc;
}

/* An input's "channels" object: scale and zero_point arrays of one length. */
static qtc_status load_channels(const cJSON *ch, int bits, qtc_act_qparams *q, qtc_error *err)
{
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(ch, "scale"), *zp = cJSON_GetObjectItemCaseSensitive(ch, "zero_point");
    int n = cJSON_GetArraySize(sc);
    if (!cJSON_IsArray(sc) || !cJSON_IsArray(zp) || n < 1 || cJSON_GetArraySize(zp) != n)
        return qtc_error_set(err, QTC_ERR_INPUT, "per-channel scale and zero_point are not arrays of one length");
    q->ch_scale = malloc((size_t)n * sizeof *q->ch_scale);
    q->ch_zero = malloc((size_t)n * sizeof *q->ch_zero);
    if (!q->ch_scale || !q->ch_zero)
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    q->channels = n;
    const cJSON *s = sc->child, *z = zp->child;
    for (int k = 0; k < n; k++, s = s->next, z = z->next) {
        if (!cJSON_IsNumber(s) || !cJSON_IsNumber(z) || !(s->valuedouble > 0) || !isfinite(s->valuedouble) ||
            z->valuedouble < QTC_QMIN(bits) || z->valuedouble > QTC_QMAX(bits))
            return qtc_error_set(err, QTC_ERR_INPUT, "channel %d: no valid scale and zero point", k);
        q->ch_scale[k] = (float)s->valuedouble;
        q->ch_zero[k] = (int)z->valuedouble;
    }
    return QTC_OK;
}

qtc_status qtc_calib_load_json(const char *path, int n_layers, qtc_act_qparams *out, int *bits, qtc_error *err)
{
    memset(out, 0, (size_t)n_layers * QTC_N_LINEAR * sizeof *out);
    qtc_in in;
    if (qtc_in_open(&in, path, err) != QTC_OK)
        return err->code;
    cJSON *o = cJSON_ParseWithLength((const char *)in.data, in.size);
    qtc_in_close(&in);
    qtc_status rc = QTC_OK;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(o, "format"), *b = cJSON_GetObjectItemCaseSensitive(o, "bits");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "tensors");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "qtc-calibration") != 0 || !cJSON_IsNumber(b) || !cJSON_IsObject(t)) {
        rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: not a qtc calibration file", path);
        goto done;
    }
    *bits = b->valueint;
    if (*bits < 2 || *bits > 8) {
        rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: %d-bit activations (2..8)", path, *bits);
        goto done;
    }
    for (int i = 0; i < n_layers * QTC_N_LINEAR && rc == QTC_OK; i++) {
        char name[QTC_NAME_MAX];
        qtc_linear_weight_name(i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR), name, sizeof name);
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(t, name), "input");
        const cJSON *sc = cJSON_GetObjectItemCaseSensitive(e, "scale"), *zp = cJSON_GetObjectItemCaseSensitive(e, "zero_point");
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(e, "min"), *mx = cJSON_GetObjectItemCaseSensitive(e, "max");
        if (!cJSON_IsNumber(sc) || !cJSON_IsNumber(zp) || !(sc->valuedouble > 0) || !isfinite(sc->valuedouble) ||
            zp->valuedouble < QTC_QMIN(*bits) || zp->valuedouble > QTC_QMAX(*bits) || !cJSON_IsNumber(mn) ||
            !cJSON_IsNumber(mx) || !(mn->valuedouble <= mx->valuedouble)) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': no valid input scale and zero point", path, name);
            break;
        }
        out[i].min = (float)mn->valuedouble;
        out[i].max = (float)mx->valuedouble;
        out[i].scale = (float)sc->valuedouble;
        out[i].zero = (int)zp->valuedouble;
        out[i].channels = 0;
        out[i].ch_scale = NULL;
        out[i].ch_zero = NULL;
        const cJSON *ch = cJSON_GetObjectItemCaseSensitive(e, "channels");
        if (ch && (rc = load_channels(ch, *bits, &out[i], err)) != QTC_OK)
            qtc_error_prefix(err, "%s: tensor '%s'", path, name);
    }
done:
    if (rc != QTC_OK)
        qtc_act_qparams_free(out, n_layers * QTC_N_LINEAR);
    cJSON_Delete(o);
    return rc;
}

void qtc_act_qparams_free(qtc_act_qparams *p, int n)
{
    for (int i = 0; i < n; i++) {
        free(p[i].ch_scale);
        free(p[i].ch_zero);
        p[i].ch_scale = NULL;
        p[i].ch_zero = NULL;
        p[i].channels = 0;
    }
}

qtc_status qtc_calib_input_quant(const char *path, int n_layers, qtc_input_quant *out, qtc_error *err)
{
    const int n = n_layers * QTC_N_LINEAR;
    memset(out, 0, sizeof *out);
    qtc_act_qparams *p = calloc((size_t)n, sizeof *p);
    out->weights = calloc((size_t)n, sizeof *out->weights);
    out->scale = calloc((size_t)n, sizeof *out->scale);
    out->zero = calloc((size_t)n, sizeof *out->zero);
    qtc_status rc = p && out->weights && out->scale && out->zero ? qtc_calib_load_json(path, n_layers, p, &out->bits, err)
                                                                  : qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    for (int i = 0; rc == QTC_OK && i < n; i++)
        if (p[i].channels)
            rc = qtc_error_set(err, QTC_ERR_USAGE, "%s: per-channel input ranges: static input scales are stored per tensor",
                               path);
    if (p)
        qtc_act_qparams_free(p, n);
    for (int i = 0; rc == QTC_OK && i < n; i++) {
        qtc_linear_weight_name(i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR), out->weights[i], QTC_NAME_MAX);
        out->scale[i] = p[i].scale;
        out->zero[i] = p[i].zero;
    }
    out->n = rc == QTC_OK ? n : 0;
    free(p);
    if (rc != QTC_OK)
        qtc_input_quant_free(out);
    return rc;
}

qtc_status qtc_imatrix_save(const qtc_calib *cb, const qtc_llama_config *c, const char *path, const char *dataset,
                            int chunk_size, qtc_error *err)
{
    const int n = cb->n_layers * QTC_N_LINEAR;
    qtc_out_entry *e = calloc((size_t)(2 * n), sizeof *e);
    qtc_tensor **t = calloc((size_t)(2 * n), sizeof *t);
    qtc_kvs kv = {0};
    qtc_status rc = QTC_OK;
    if (!e || !t) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < n && rc == QTC_OK; i++) {
        const qtc_act_stats *a = &cb->s[i];
        char g[96];
        qtc_gguf_name(a->weight, g, sizeof g);
        snprintf(e[2 * i].name, sizeof e->name, "%s.in_sum2", g);
        snprintf(e[2 * i + 1].name, sizeof e->name, "%s.counts", g);
        e[2 * i].dtype = e[2 * i + 1].dtype = QTC_F32;
        e[2 * i].ndim = e[2 * i + 1].ndim = 2;
        e[2 * i].ne[0] = e[2 * i + 1].ne[0] = 1; /* one expert */
        e[2 * i].ne[1] = a->in;
        e[2 * i + 1].ne[1] = 1;
        if (!(t[2 * i] = qtc_tensor_new(QTC_F32, 2, e[2 * i].ne, err)) || !(t[2 * i + 1] = qtc_tensor_new(QTC_F32, 2, e[2 * i + 1].ne, err))) {
            rc = err->code;
            break;
        }
        for (int64_t j = 0; j < a->in; j++)
            ((float *)t[2 * i]->data)[j] = (float)a->sum_sq[j];
        ((float *)t[2 * i + 1]->data)[0] = (float)a->rows;
    }
    qtc_str ds = {strlen(dataset), (char *)dataset};
    if (rc == QTC_OK && (qtc_kvs_set_str(&kv, "general.type", "imatrix") ||
                         qtc_kvs_set_array(&kv, "imatrix.datasets", QTC_KV_STRING, 1, &ds) ||
                         qtc_kvs_set_num(&kv, "imatrix.chunk_count", QTC_KV_U32, (double)cb->windows) ||
                         qtc_kvs_set_num(&kv, "imatrix.chunk_size", QTC_KV_U32, chunk_size)))
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    if (rc == QTC_OK) {
        qtc_model_file like; /* the configuration the GGUF writer wants; no tokenizer */
        memset(&like, 0, sizeof like);
        like.has_config = 1;
        like.config = *c;
        qtc_model_writer *w = qtc_writer_open(path, QTC_FMT_GGUF, 0, &like, e, 2 * n, &kv, err);
        for (int i = 0; w && i < 2 * n && rc == QTC_OK; i++)
            rc = qtc_writer_put(w, i, t[i], err);
        if (!w)
            rc = err->code;
        else if (rc != QTC_OK)
            qtc_writer_abort(w);
        else
            rc = qtc_writer_commit(w, err);
    }
done:
    for (int i = 0; t && i < 2 * n; i++)
        qtc_tensor_free(t[i]);
    free(t);
    free(e);
    qtc_kvs_free(&kv);
    return rc;
}

qtc_status qtc_imatrix_load(const char *path, qtc_imatrix *im, qtc_error *err)
{
    memset(im, 0, sizeof *im);
    qtc_model_file *f = qtc_model_open(path, err);
    if (!f)
        return err->code;
    qtc_status rc = QTC_OK;
    const char *type = qtc_kvs_str(&f->meta, "general.type");
    if (f->format != QTC_FMT_GGUF || !type || strcmp(type, "imatrix") != 0) {
        rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: not an imatrix GGUF (general.type imatrix)", path);
        goto done;
    }
    im->chunk_count = (int64_t)qtc_kvs_num(&f->meta, "imatrix.chunk_count", 0);
    im->chunk_size = (int64_t)qtc_kvs_num(&f->meta, "imatrix.chunk_size", 0);
    im->names = calloc((size_t)f->n_tensors + 1, sizeof *im->names);
    im->importance = calloc((size_t)f->n_tensors + 1, sizeof *im->importance);
    im->len = calloc((size_t)f->n_tensors + 1, sizeof *im->len);
    if (!im->names || !im->importance || !im->len) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < f->n_tensors && rc == QTC_OK; i++) {
        const qtc_tensor_entry *e = &f->tensors[i];
        size_t len = strlen(e->name);
        if (len < 9 || strcmp(e->name + len - 8, ".in_sum2") != 0)
            continue;
        char base[QTC_NAME_MAX], counts[QTC_NAME_MAX + 8];
        snprintf(base, sizeof base, "%.*s", (int)(len - 8), e->name);
        snprintf(counts, sizeof counts, "%s.counts", base);
        int j = qtc_model_find(f, counts);
        int64_t in = e->ndim ? e->ne[e->ndim - 1] : 0;
        if (j < 0 || e->dtype != QTC_F32 || f->tensors[j].dtype != QTC_F32 || f->tensors[j].nbytes < 4 ||
            e->nbytes != (size_t)in * 4) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s' %s", path, e->name,
                               j < 0 ? "has no .counts beside it" : "is not f32 [1, in] with an f32 count (experts are not supported)");
            break;
        }
        float count;
        memcpy(&count, f->tensors[j].data, 4);
        if (!(count > 0)) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': count %g", path, counts, count);
            break;
        }
        float *v = malloc((size_t)in * sizeof *v);
        if (!v) {
            rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
            break;
        }
        memcpy(v, e->data, (size_t)in * 4);
        for (int64_t k = 0; k < in; k++)
            v[k] /= count;
        qtc_hf_name(base, im->names[im->n], QTC_NAME_MAX);
        im->importance[im->n] = v;
        im->len[im->n++] = in;
    }
done:
    if (rc != QTC_OK)
        qtc_imatrix_free(im);
    qtc_model_close(f);
    return rc;
}

const float *qtc_imatrix_find(const qtc_imatrix *im, const char *weight, int64_t len)
{
    for (int i = 0; i < im->n; i++)
        if (strcmp(im->names[i], weight) == 0 && im->len[i] == len)
            return im->importance[i];
    return NULL;
}

void qtc_imatrix_free(qtc_imatrix *im)
{
    for (int i = 0; im->importance && i < im->n; i++)
        free(im->importance[i]);
    free(im->importance);
    free(im->names);
    free(im->len);
    memset(im, 0, sizeof *im);
}
