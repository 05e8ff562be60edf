/* gptq_run.c: GPTQ of a llama's linear weights a layer at a time, as
 * qtc_calib_run completes each layer (the quantized weights put back when
 * sequential), and the qweight hook that hands the results to qtc_convert. */
#include <stdlib.h>
#include <string.h>

#include "qtc/calibrate.h"

qtc_status qtc_gptq_run_init(qtc_gptq_run *g, int n_layers, const qtc_qscheme *s, const qtc_gptq_opts *o,
                             int sequential, qtc_error *err)
{
    memset(g, 0, sizeof *g);
    g->scheme = *s;
    g->opts = *o;
    g->sequential = sequential;
    g->n = n_layers * QTC_N_LINEAR;
    if (!(g->q = calloc((size_t)g->n, sizeof *g->q)))
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    return QTC_OK;
}

void qtc_gptq_run_free(qtc_gptq_run *g)
{
    for (int i = 0; g->q && i < g->n; i++)
        qtc_qweight_free(&g->q[i]);
    free(g->q);
    g->q = NULL;
}

qtc_status qtc_gptq_layer(void *ctx, qtc_calib *cb, qtc_llama *m, int l, unsigned kinds, qtc_error *err)
{
    qtc_gptq_run *g = ctx;
    if (l < 0 || l >= cb->n_layers || (l + 1) * QTC_N_LINEAR > g->n)
        return qtc_error_set(err, QTC_ERR_USAGE, "GPTQ: layer %d beyond the %d layers it was set up for", l,
                             g->n / QTC_N_LINEAR);
    for (int k = 0; k < QTC_N_LINEAR; k++) {
        if (!(kinds >> k & 1))
            continue;
        const qtc_act_stats *a = &cb->s[l * QTC_N_LINEAR + k];
        qtc_tensor *w = qtc_llama_linear_weight(m, l, (qtc_linear_kind)k);
        if (!a->xtx)
            return qtc_error_set(err, QTC_ERR_USAGE, "%s: GPTQ needs the x x^T sums of its input (qtc_calib_new with_xtx)",
                                 a->weight);
        if (!w || w->dtype != QTC_F32 || w->ndim != 2 || w->ne[1] != a->in)
            return qtc_error_set(err, QTC_ERR_USAGE, "%s: GPTQ needs the llama's f32 weight of %lld columns", a->weight,
                                 (long long)a->in);
        qtc_qweight *q = &g->q[l * QTC_N_LINEAR + k];
        qtc_qweight_free(q);
        if (qtc_gptq(w->data, w->ne[0], w->ne[1], a->xtx, a->rows, &g->scheme, &g->opts, q, err) != QTC_OK)
            return qtc_error_prefix(err, "%s", a->weight);
        if (g->sequential)
            qtc_qweight_dequantize(q, w->data);
    }
    return QTC_OK;
}

int qtc_gptq_weight(void *ctx, const char *name, const qtc_qscheme *s, qtc_qweight *q, qtc_error *err)
{
    (void)err;
    qtc_gptq_run *g = ctx;
    if (memcmp(s, &g->scheme, sizeof *s) != 0)
        return 0;
    for (int i = 0; i < g->n; i++) {
        char w[QTC_NAME_MAX];
        if (g->q[i].q && strcmp(qtc_linear_weight_name(i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR), w, sizeof w),
                                name) == 0) {
            *q = g->q[i]; /* qtc_convert frees it */
            memset(&g->q[i], 0, sizeof g->q[i]);
            g->handed++;
            return 1;
        }
    }
    return 0;
}
