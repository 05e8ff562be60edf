/* fold.c: per-input-channel scales folded into a llama's float weights (AWQ,
 * SmoothQuant), the check that folding keeps the model's function, and the
 * transform hook that writes the folded weights out through qtc_convert. */
#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/calibrate.h"

/* A layer's linear weights in qtc_linear_kind order. */
/* An input of a layer: the projections reading it and what produced it. */
typedef struct fold_group {
    qtc_linear_kind stats; /* the kind whose input statistics these are */
    qtc_tensor *w[3];
    int n;
    qtc_tensor *prev;      /* a norm weight, or v/up rows; NULL: no per-channel producer */
    int clip[2];           /* AWQ: the kinds of the weights clipped afterwards (-1: none) */
} fold_group;

/* The layer's four input groups, in calibration order (q/k/v, o, gate/up, down). */
static void fold_groups(qtc_llama *m, int l, fold_group g[4])
{
    qtc_llama_layer *L = &m->layers[l];
    /* grouped-query attention: o_proj's input channels are not v_proj's rows one for one */
    qtc_tensor *v_rows = m->c.n_kv_heads == m->c.n_heads ? L->wv : NULL;
    const fold_group all[4] = {{QTC_LIN_Q, {L->wq, L->wk, L->wv}, 3, L->attn_norm, {QTC_LIN_V, -1}},
                               {QTC_LIN_O, {L->wo}, 1, v_rows, {QTC_LIN_O, -1}},
                               {QTC_LIN_GATE, {L->w_gate, L->w_up}, 2, L->ffn_norm, {QTC_LIN_GATE, QTC_LIN_UP}},
                               {QTC_LIN_DOWN, {L->w_down}, 1, L->w_up, {QTC_LIN_DOWN, -1}}};
    memcpy(g, all, sizeof all);
}

/* Scales columns of w (rows x cols) by s, or rows by 1/s (rows == len(s)). */
static void scale_cols(qtc_tensor *w, const float *s)
{
    float *v = w->data;
    for (int64_t r = 0; r < w->ne[0]; r++)
        for (int64_t c = 0; c < w->ne[1]; c++)
            v[r * w->ne[1] + c] *= s[c];
}

static void unscale_rows(qtc_tensor *w, const float *s)
{
    float *v = w->data;
    for (int64_t i = 0; i < qtc_tensor_numel(w); i++)
        v[i] /= s[w->ndim == 1 ? i : i / w->ne[1]];
}

static void fold(const fold_group *g, const float *s)
{
    for (int i = 0; i < g->n; i++)
        scale_cols(g->w[i], s);
    unscale_rows(g->prev, s);
}

qtc_status qtc_fold_scales(qtc_llama *m, int layer, qtc_linear_kind input, const float *s, qtc_error *err)
{
    if (layer < 0 || layer >= m->c.n_layers)
        return qtc_error_set(err, QTC_ERR_USAGE, "layer %d of a model of %d", layer, m->c.n_layers);
    fold_group g[4];
    fold_groups(m, layer, g);
    for (int k = 0; k < 4; k++) {
        if (g[k].stats != input)
            continue;
        if (!g[k].prev)
            return qtc_error_set(err, QTC_ERR_USAGE,
                                 "layer %d: %s's input has no per-channel producer under grouped-query attention", layer,
                                 qtc_linear_path(input));
        for (int i = 0; i < g[k].n; i++)
            if (!g[k].w[i])
                return qtc_error_set(err, QTC_ERR_USAGE, "layer %d: a weight reading %s's input is not held in f32",
                                     layer, qtc_linear_path(input));
        fold(&g[k], s);
        return QTC_OK;
    }
    return qtc_error_set(err, QTC_ERR_USAGE, "layer %d: kind %d does not start an input group (q, o, gate or down)", layer,
                         (int)input);
}

/* --- AWQ --------------------------------------------------------------------------------- */

qtc_status qtc_awq_fold_init(qtc_awq_fold *a, int n_layers, const qtc_qscheme *s, int clip, qtc_error *err)
{
    memset(a, 0, sizeof *a);
    a->scheme = *s;
    a->grid = 20; /* AutoAWQ's */
    a->n = n_layers * QTC_N_LINEAR;
    a->clip = clip && s->group >= 0; /* a per-tensor range has no groups to clip */
    if (a->clip && !(a->clips = calloc((size_t)a->n, sizeof *a->clips)))
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    return QTC_OK;
}

void qtc_awq_fold_free(qtc_awq_fold *a)
{
    for (int i = 0; a->clips && i < a->n; i++)
        free(a->clips[i]);
    free(a->clips);
    a->clips = NULL;
}

qtc_status qtc_awq_fold_layer(void *ctx, qtc_calib *cb, qtc_llama *m, int l, unsigned kinds, qtc_error *err)
{
    (void)kinds; /* called once per layer, with all of them */
    qtc_awq_fold *r = ctx;
    if (l < 0 || l >= cb->n_layers || (l + 1) * QTC_N_LINEAR > r->n)
        return qtc_error_set(err, QTC_ERR_USAGE, "AWQ: layer %d beyond the %d layers it was set up for", l,
                             r->n / QTC_N_LINEAR);
    fold_group groups[4];
    fold_groups(m, l, groups);
    float *scales[4] = {NULL, NULL, NULL, NULL}; /* the scales folded in per group (NULL: none) */
    qtc_status rc = QTC_OK;
    for (int k = 0; k < 4 && rc == QTC_OK; k++) {
        if (!groups[k].prev) /* grouped-query attention: o_proj's input has no per-channel producer to fold into */
            continue;
        const qtc_act_stats *a = &cb->s[l * QTC_N_LINEAR + groups[k].stats];
        if (!a->xtx) {
            rc = qtc_error_set(err, QTC_ERR_USAGE, "%s: AWQ needs the x x^T sums of its input (qtc_calib_new with_xtx)",
                               a->weight);
            break;
        }
        const int64_t cols = a->in;
        const float *ws[3];
        int64_t rows[3];
        for (int i = 0; i < groups[k].n; i++) {
            ws[i] = groups[k].w[i]->data;
            rows[i] = groups[k].w[i]->ne[0];
        }
        double *mean_abs = malloc((size_t)cols * sizeof *mean_abs), alpha = 0, e = 0, e0 = 0;
        float *sc = scales[k] = malloc((size_t)cols * sizeof *sc);
        if (!mean_abs || !sc) {
            free(mean_abs);
            rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
            break;
        }
        for (int64_t c = 0; c < cols; c++)
            mean_abs[c] = a->sum_abs[c] / (double)a->rows;
        rc = qtc_awq_search(ws, rows, groups[k].n, cols, a->xtx, mean_abs, &r->scheme, r->grid, sc, &alpha, &e, &e0, err);
        if (rc == QTC_OK) {
            r->err_awq += e;
            r->err_rtn += e0;
            fold(&groups[k], sc);
        }
        free(mean_abs);
    }
    for (int k = 0; k < 4 && rc == QTC_OK && r->clip && r->clips; k++) {
        const qtc_act_stats *a = &cb->s[l * QTC_N_LINEAR + groups[k].stats];
        for (int i = 0; i < 2 && groups[k].clip[i] >= 0 && rc == QTC_OK; i++) {
            const qtc_tensor *w = qtc_llama_linear_weight(m, l, (qtc_linear_kind)groups[k].clip[i]);
            const int64_t g = r->scheme.group > 0 ? r->scheme.group : w->ne[1];
            float *clip = malloc((size_t)(w->ne[0] * ((w->ne[1] + g - 1) / g)) * sizeof *clip);
            double before = 0, after = 0;
            rc = clip ? qtc_awq_clip(w->data, w->ne[0], w->ne[1], a->xtx, scales[k], &r->scheme, clip, &before, &after, err)
                      : qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
            free(r->clips[l * QTC_N_LINEAR + groups[k].clip[i]]);
            r->clips[l * QTC_N_LINEAR + groups[k].clip[i]] = clip;
            r->err_clip_before += before;
            r->err_clip_after += after;
        }
    }
    for (int k = 0; k < 4; k++)
        free(scales[k]);
    return rc;
}

/* Clamps every group of w (rows x cols, scheme s) to its [-clip, clip]. */
static void apply_clip(qtc_tensor *w, const float *clip, const qtc_qscheme *s)
{
    const int64_t rows = w->ne[0], cols = w->ne[1], g = s->group > 0 ? s->group : cols, ng = (cols + g - 1) / g;
    float *v = w->data;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            float m = clip[r * ng + c / g];
            v[r * cols + c] = fminf(fmaxf(v[r * cols + c], -m), m);
        }
}

void qtc_awq_apply_clips(const qtc_awq_fold *a, qtc_llama *m)
{
    assert(!a->clips || a->n == m->c.n_layers * QTC_N_LINEAR);
    for (int i = 0; a->clips && i < a->n; i++)
        if (a->clips[i])
            apply_clip(qtc_llama_linear_weight(m, i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR)), a->clips[i],
                       &a->scheme);
}

/* --- SmoothQuant ------------------------------------------------------------------------ */

qtc_status qtc_smoothquant_fold(const qtc_calib *cb, qtc_llama *m, double alpha, qtc_error *err)
{
    if (cb->n_layers != m->c.n_layers)
        return qtc_error_set(err, QTC_ERR_USAGE, "SmoothQuant: statistics of %d layers for a model of %d", cb->n_layers,
                             m->c.n_layers);
    for (int l = 0; l < m->c.n_layers; l++) {
        fold_group groups[4];
        fold_groups(m, l, groups);
        for (int k = 0; k < 4; k += 2) { /* the inputs after the RMSNorms: q/k/v and gate/up */
            const fold_group *gr = &groups[k];
            const qtc_act_stats *a = &cb->s[l * QTC_N_LINEAR + gr->stats];
            float *sc = malloc((size_t)a->in * sizeof *sc);
            if (!sc)
                return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory for the smoothing scales of %s", a->weight);
            for (int64_t c = 0; c < a->in; c++) {
                double wmax = 0;
                for (int i = 0; i < gr->n; i++) {
                    const qtc_tensor *w = gr->w[i];
                    for (int64_t r = 0; r < w->ne[0]; r++)
                        wmax = fmax(wmax, fabs(((const float *)w->data)[r * w->ne[1] + c]));
                }
                double v = a->amax[c] > 0 && wmax > 0 ? pow(a->amax[c], alpha) / pow(wmax, 1 - alpha) : 1;
                sc[c] = (float)fmax(v, 1e-5);
            }
            fold(gr, sc);
            free(sc);
        }
    }
    return QTC_OK;
}

/* --- the check and the output ---------------------------------------------------------- */

float *qtc_fold_logits(qtc_llama *m, const qtc_tokens *data, int ctx, qtc_error *err)
{
    if (ctx < 1 || data->n < ctx)
        return qtc_error_set(err, QTC_ERR_INPUT, "%lld calibration tokens: not one window of %d", (long long)data->n, ctx),
               NULL;
    qtc_graph *g = qtc_graph_new(err);
    if (!g)
        return NULL;
    qtc_graph_set_recording(g, 0);
    qtc_tensor ids = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(1, ctx), data->ids);
    qtc_tensor *y = qtc_llama_forward(m, g, &ids, 0);
    float *out = NULL;
    if (qtc_graph_status(g, err) == QTC_OK) {
        if ((out = malloc(qtc_tensor_nbytes(y))))
            memcpy(out, y->data, qtc_tensor_nbytes(y));
        else
            qtc_error_set(err, QTC_ERR_NOMEM, "out of memory for a window's logits");
    }
    qtc_graph_free(g);
    return out;
}

qtc_status qtc_fold_moved(qtc_llama *m, const qtc_tokens *data, int ctx, const float *before, double *moved,
                          qtc_error *err)
{
    float *after = qtc_fold_logits(m, data, ctx, err);
    if (!after)
        return err->code;
    double d = 0;
    for (int64_t i = 0; i < (int64_t)ctx * m->c.vocab; i++)
        d = fmax(d, fabs((double)before[i] - after[i]));
    free(after);
    *moved = d;
    return QTC_OK;
}

int qtc_folded_weight(void *ctx, const char *name, const qtc_tensor *w, qtc_tensor **out, qtc_error *err)
{
    qtc_llama *m = ctx;
    if (strncmp(name, "model.layers.", 13) != 0)
        return 0;
    int n = qtc_llama_params(m, NULL, 0); /* counts them */
    qtc_tensor **ps = malloc((size_t)n * sizeof *ps);
    if (!ps)
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory"), -1;
    qtc_llama_params(m, ps, n);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        char pn[QTC_NAME_MAX];
        if (strcmp(qtc_llama_param_name(m, i, pn, sizeof pn), name) != 0)
            continue;
        if (qtc_tensor_numel(ps[i]) != qtc_tensor_numel(w))
            rc = (qtc_error_set(err, QTC_ERR_INPUT, "tensor '%s' changed shape", name), -1);
        else
            rc = (*out = qtc_tensor_to_f32(ps[i], err)) ? 1 : -1;
        break;
    }
    free(ps);
    return rc;
}
