/* eval.c: perplexity, and KL divergence and top-1 agreement against a
 * reference model, under one fixed protocol (see qtc_eval in qtc/model.h).
 * Per-prediction values are kept in arrays and summed in order, so the
 * figures do not depend on the thread count. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/model.h"

/* log-sum-exp of a row, in double */
static double lse(const float *x, int64_t V)
{
    float mx = x[0];
    for (int64_t j = 1; j < V; j++)
        if (x[j] > mx)
            mx = x[j];
    double s = 0;
    for (int64_t j = 0; j < V; j++)
        s += exp((double)x[j] - mx);
    return mx + log(s);
}

static int64_t argmax(const float *x, int64_t V)
{
    int64_t b = 0;
    for (int64_t j = 1; j < V; j++)
        if (x[j] > x[b])
            b = j;
    return b;
}

qtc_status qtc_eval(qtc_llama *m, qtc_llama *ref, const qtc_tokens *data, int ctx, int batch, int64_t max_windows,
                    void (*progress)(void *ctx, int64_t done, int64_t total), void *progress_ctx,
                    qtc_eval_result *out, qtc_error *err)
{
    memset(out, 0, sizeof *out);
    if (ctx < 2 || ctx > m->c.ctx)
        return qtc_error_set(err, QTC_ERR_USAGE, "a window of %d tokens: the model takes 2 to %d", ctx, m->c.ctx);
    if (ref && (ref->c.vocab != m->c.vocab || ctx > ref->c.ctx))
        return qtc_error_set(err, QTC_ERR_USAGE, "the reference model has vocabulary %d and context %d; the model %d and %d",
                             ref->c.vocab, ref->c.ctx, m->c.vocab, ctx);
    for (int64_t i = 0; i < data->n; i++)
        if (data->ids[i] < 0 || data->ids[i] >= m->c.vocab)
            return qtc_error_set(err, QTC_ERR_INPUT, "token %lld is %d, outside the vocabulary of %d", (long long)i,
                                 data->ids[i], m->c.vocab);
    int64_t windows = data->n / ctx;
    if (max_windows > 0 && windows > max_windows)
        windows = max_windows;
    if (windows == 0)
        return qtc_error_set(err, QTC_ERR_INPUT, "%lld tokens: not one window of %d", (long long)data->n, ctx);
    if (batch < 1)
        batch = 1;
    const int64_t V = m->c.vocab, per = ctx - 1, n_pred = windows * per;
    double *nll = malloc((size_t)n_pred * sizeof *nll), *rnll = ref ? malloc((size_t)n_pred * sizeof *rnll) : NULL;
    double *kld = ref ? malloc((size_t)n_pred * sizeof *kld) : NULL;
    char *agree = ref ? malloc((size_t)n_pred) : NULL;
    qtc_graph *g = qtc_graph_new(err), *gr = ref ? qtc_graph_new(err) : NULL;
    qtc_status rc = QTC_OK;
    if (!nll || (ref && (!rnll || !kld || !agree || !gr)) || !g) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory for evaluation");
        goto done;
    }
    for (int64_t w0 = 0; w0 < windows; w0 += batch) {
        int64_t B = windows - w0 < batch ? windows - w0 : batch;
        qtc_tensor ids = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(B, ctx), data->ids + w0 * ctx);
        qtc_graph_reset(g);
        qtc_graph_set_recording(g, 0);
        qtc_tensor *logits = qtc_llama_forward(m, g, &ids, 0), *rlogits = NULL;
        if (ref) {
            qtc_graph_reset(gr);
            qtc_graph_set_recording(gr, 0);
            rlogits = qtc_llama_forward(ref, gr, &ids, 0);
        }
        if (qtc_graph_status(g, err) != QTC_OK || (gr && qtc_graph_status(gr, err) != QTC_OK)) {
            rc = err->code;
            goto done;
        }
        const float *L = logits->data, *R = rlogits ? rlogits->data : NULL;
        const int32_t *tok = ids.data;
        #pragma omp parallel for schedule(static)
        for (int64_t k = 0; k < B * per; k++) {
            int64_t b = k / per, t = k % per, row = b * ctx + t, i = (w0 + b) * per + t;
            int32_t target = tok[b * ctx + t + 1];
            const float *x = L + row * V;
            double l = lse(x, V);
            nll[i] = l - x[target];
            if (R) {
                const float *y = R + row * V;
                double lr = lse(y, V), kl = 0;
                for (int64_t j = 0; j < V; j++) {
                    double lq = (double)y[j] - lr, lp = (double)x[j] - l;
                    kl += exp(lq) * (lq - lp);
                }
                rnll[i] = lr - y[target];
                kld[i] = kl;
                agree[i] = argmax(x, V) == argmax(y, V);
            }
        }
        if (progress)
            progress(progress_ctx, w0 + B, windows);
    }
    /* means and standard errors, summed in order */
    double s = 0, ss = 0, rs = 0, ks = 0, kss = 0;
    int64_t top = 0;
    for (int64_t i = 0; i < n_pred; i++) {
        s += nll[i];
        ss += nll[i] * nll[i];
        if (ref) {
            rs += rnll[i];
            ks += kld[i];
            kss += kld[i] * kld[i];
            top += agree[i];
        }
    }
    double n = (double)n_pred;
    out->windows = windows;
    out->predictions = n_pred;
    out->nll = s / n;
    out->nll_se = n > 1 ? sqrt(fmax(0, ss / n - out->nll * out->nll) / (n - 1)) : 0;
    out->ppl = exp(out->nll);
    out->ppl_se = out->ppl * out->nll_se;
    if (ref) {
        out->ref_nll = rs / n;
        out->ref_ppl = exp(out->ref_nll);
        out->kld = ks / n;
        out->kld_se = n > 1 ? sqrt(fmax(0, kss / n - out->kld * out->kld) / (n - 1)) : 0;
        out->top1 = (double)top / n;
    }
done:
    free(nll);
    free(rnll);
    free(kld);
    free(agree);
    qtc_graph_free(g);
    qtc_graph_free(gr);
    return rc;
}
