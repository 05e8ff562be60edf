/* generate.c: sampling and generation from the model. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/model.h"

static int by_prob_desc(const float *prob, int32_t a, int32_t b)
{
    return prob[a] > prob[b] || (prob[a] == prob[b] && a < b);
}

int32_t qtc_sample(const float *logits, int V, float temp, float top_p, qtc_rng *r, float *prob, int32_t *order)
{
    if (temp <= 0) {
        int32_t b = 0;
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[b])
                b = i;
        return b;
    }
    float mx = logits[0];
    for (int i = 1; i < V; i++)
        mx = fmaxf(mx, logits[i]);
    double sum = 0;
    for (int i = 0; i < V; i++)
        sum += prob[i] = expf((logits[i] - mx) / temp);
    for (int i = 0; i < V; i++) {
        prob[i] = (float)(prob[i] / sum);
        order[i] = i;
    }
    /* the smallest prefix of the most likely tokens holding top_p: selection, not a full sort */
    double cum = 0;
    int keep = 0;
    while (keep < V && cum < top_p) {
        int best = keep;
        for (int i = keep + 1; i < V; i++)
            if (by_prob_desc(prob, order[i], order[best]))
                best = i;
        int32_t t = order[keep];
        order[keep] = order[best];
        order[best] = t;
        cum += prob[order[keep++]];
    }
    double x = qtc_rng_uniform(r) * cum, acc = 0;
    for (int i = 0; i < keep; i++) {
        acc += prob[order[i]];
        if (x < acc)
            return order[i];
    }
    return order[keep - 1];
}

qtc_status qtc_generate_from(qtc_llama *m, const int32_t *prompt, int64_t n_prompt, int n_new, float temp, float top_p,
                             qtc_rng *r, const int32_t *stop, int n_stop,
                             void (*on_token)(void *ctx, int32_t prev, int32_t next), void *ctx, int *generated,
                             qtc_error *err)
{
    if (generated)
        *generated = 0;
    if (n_prompt < 1)
        return qtc_error_set(err, QTC_ERR_USAGE, "an empty prompt");
    if (n_prompt + n_new > m->c.ctx)
        return qtc_error_set(err, QTC_ERR_USAGE, "%lld prompt tokens and %d more exceed the model's context of %d",
                             (long long)n_prompt, n_new, m->c.ctx);
    float *prob = malloc((size_t)m->c.vocab * sizeof *prob);
    int32_t *order = malloc((size_t)m->c.vocab * sizeof *order);
    qtc_graph *g = qtc_graph_new(err);
    qtc_status rc = QTC_OK;
    if (!prob || !order || !g) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto done;
    }
    int32_t token = prompt[0];
    for (int64_t pos = 0; pos < n_prompt + n_new - 1; pos++) {
        const float *logits = qtc_llama_step(m, g, token, pos, err);
        if (!logits) {
            rc = err->code;
            goto done;
        }
        if (pos + 1 < n_prompt) { /* still reading the prompt */
            token = prompt[pos + 1];
            continue;
        }
        int32_t next = qtc_sample(logits, m->c.vocab, temp, top_p, r, prob, order);
        int stopped = 0;
        for (int k = 0; k < n_stop; k++)
            stopped |= next == stop[k];
        if (stopped)
            break;
        on_token(ctx, token, next);
        token = next;
        if (generated)
            ++*generated;
    }
done:
    free(prob);
    free(order);
    qtc_graph_free(g);
    return rc;
}

typedef struct sequence {
    int32_t *out;
    int n;
} sequence;

static void append(void *ctx, int32_t prev, int32_t next)
{
    (void)prev;
    sequence *s = ctx;
    s->out[s->n++] = next;
}

qtc_status qtc_generate(qtc_llama *m, int32_t first, int n, float temp, float top_p, qtc_rng *r, int32_t *out,
                        qtc_error *err)
{
    sequence s = {out, 1};
    out[0] = first;
    return qtc_generate_from(m, &first, 1, n - 1, temp, top_p, r, NULL, 0, append, &s, NULL, err);
}

qtc_status qtc_generate_corpus(qtc_llama *m, int64_t n_tokens, int ctx, uint64_t seed, qtc_tokens *out,
                               int64_t *sequences, qtc_error *err)
{
    int len = ctx + 1 > m->c.ctx ? m->c.ctx : ctx + 1;
    int64_t seqs = (n_tokens + len - 1) / len;
    memset(out, 0, sizeof *out);
    if (!(out->ids = malloc((size_t)(seqs * len) * sizeof *out->ids)))
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    out->n = seqs * len;
    qtc_rng r;
    qtc_rng_seed(&r, seed ^ 0x51ed27a1u);
    int bos = m->c.bos_id >= 0 ? m->c.bos_id : 1;
    for (int64_t k = 0; k < seqs; k++)
        if (qtc_generate(m, bos, len, 1.0f, 1.0f, &r, out->ids + k * len, err) != QTC_OK) {
            qtc_tokens_free(out);
            return err->code;
        }
    if (sequences)
        *sequences = seqs;
    return QTC_OK;
}
