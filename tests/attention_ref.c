/* attention_ref.c: the attention op that kept every probability (see
 * attention_ref.h), moved here unchanged from tensor/ops_nn.c when the tiled
 * kernel replaced it. */
#include "attention_ref.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct attn_dims {
    int64_t B, Tq, Tk;
    int H, Hkv, D;
} attn_dims;

static attn_dims attn_shape(const qtc_tensor *q, const qtc_tensor *k, const qtc_tensor *v,
                            int n_head, int n_kv_head)
{
    attn_dims d;
    assert(q->ndim == 3 && k->ndim == 3 && v->ndim == 3);
    assert(n_head > 0 && n_kv_head > 0 && n_head % n_kv_head == 0);
    d.B = q->ne[0];
    d.Tq = q->ne[1];
    d.Tk = k->ne[1];
    d.H = n_head;
    d.Hkv = n_kv_head;
    assert(q->ne[2] % n_head == 0);
    d.D = (int)(q->ne[2] / n_head);
    assert(k->ne[0] == d.B && v->ne[0] == d.B && v->ne[1] == d.Tk && d.Tk >= d.Tq);
    assert(k->ne[2] == (int64_t)n_kv_head * d.D && v->ne[2] == k->ne[2]);
    return d;
}

/* One head's softmax(q k^T * scale) v for query rows of one sequence.
 * q rows have stride qs, k/v rows kvs, out rows qs. p: Tk floats per query
 * (the probabilities are left there, zero past the causal limit). */
static void attn_head(const float *q, const float *k, const float *v, float *out, float *p,
                      int64_t p_stride, attn_dims d, int64_t qs, int64_t kvs, float scale)
{
    int64_t off = d.Tk - d.Tq;
    for (int64_t t = 0; t < d.Tq; t++) {
        const float *qt = q + t * qs;
        float *pt = p + t * p_stride;
        int64_t n = t + off + 1;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n; j++) {
            const float *kj = k + j * kvs;
            float s = 0;
            for (int i = 0; i < d.D; i++)
                s += qt[i] * kj[i];
            s *= scale;
            pt[j] = s;
            if (s > mx)
                mx = s;
        }
        double sum = 0;
        for (int64_t j = 0; j < n; j++) {
            pt[j] = expf(pt[j] - mx);
            sum += pt[j];
        }
        float inv = (float)(1.0 / sum);
        float *ot = out + t * qs;
        for (int i = 0; i < d.D; i++)
            ot[i] = 0;
        for (int64_t j = 0; j < n; j++) {
            pt[j] *= inv;
            const float *vj = v + j * kvs;
            for (int i = 0; i < d.D; i++)
                ot[i] += pt[j] * vj[i];
        }
        if (p_stride)
            for (int64_t j = n; j < d.Tk; j++)
                pt[j] = 0;
    }
}

static int max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static void attention_backward(qtc_graph *g, qtc_node *n)
{
    qtc_tensor *qt = n->in[0], *kt = n->in[1], *vt = n->in[2];
    attn_dims d = attn_shape(qt, kt, vt, n->iarg[0], n->iarg[1]);
    float *dq = qtc_graph_needs_grad(g, qt) ? qtc_graph_grad(g, qt) : NULL;
    float *dk = qtc_graph_needs_grad(g, kt) ? qtc_graph_grad(g, kt) : NULL;
    float *dv = qtc_graph_needs_grad(g, vt) ? qtc_graph_grad(g, vt) : NULL;
    float *scratch = qtc_graph_alloc(g, (size_t)(max_threads() * d.Tk) * sizeof(float));
    if (!scratch)
        return;
    const float *q = qt->data, *k = kt->data, *v = vt->data, *dO = n->out->grad->data;
    const float *P = n->saved;
    int64_t qs = (int64_t)d.H * d.D, kvs = (int64_t)d.Hkv * d.D, off = d.Tk - d.Tq;
    int group = d.H / d.Hkv;
    float scale = 1.0f / sqrtf((float)d.D);
    /* one task per (sequence, kv head): it alone writes that kv head's dk/dv
     * and its query heads' dq, so no two threads touch the same gradient */
    #pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < d.B * d.Hkv; task++) {
        int64_t b = task / d.Hkv;
        int kvh = (int)(task % d.Hkv);
        float *dp = scratch + thread_id() * d.Tk;
        const float *kb = k + b * d.Tk * kvs + kvh * d.D, *vb = v + b * d.Tk * kvs + kvh * d.D;
        for (int h = kvh * group; h < (kvh + 1) * group; h++) {
            const float *Ph = P + (b * d.H + h) * d.Tq * d.Tk;
            for (int64_t t = 0; t < d.Tq; t++) {
                const float *pt = Ph + t * d.Tk;
                const float *dot = dO + (b * d.Tq + t) * qs + h * d.D;
                const float *qrow = q + (b * d.Tq + t) * qs + h * d.D;
                int64_t cnt = t + off + 1;
                double sum = 0;
                for (int64_t j = 0; j < cnt; j++) {
                    const float *vj = vb + j * kvs;
                    float s = 0;
                    for (int i = 0; i < d.D; i++)
                        s += dot[i] * vj[i];
                    dp[j] = s;
                    sum += (double)s * pt[j];
                }
                float fsum = (float)sum;
                for (int64_t j = 0; j < cnt; j++) {
                    float ds = pt[j] * (dp[j] - fsum) * scale; /* d(score before scaling) */
                    if (dq) {
                        float *dqt = dq + (b * d.Tq + t) * qs + h * d.D;
                        const float *kj = kb + j * kvs;
                        for (int i = 0; i < d.D; i++)
                            dqt[i] += ds * kj[i];
                    }
                    if (dk) {
                        float *dkj = dk + (b * d.Tk + j) * kvs + kvh * d.D;
                        for (int i = 0; i < d.D; i++)
                            dkj[i] += ds * qrow[i];
                    }
                    if (dv) {
                        float *dvj = dv + (b * d.Tk + j) * kvs + kvh * d.D;
                        for (int i = 0; i < d.D; i++)
                            dvj[i] += pt[j] * dot[i];
                    }
                }
            }
        }
    }
}

qtc_tensor *ref_attention_stored(qtc_graph *g, qtc_tensor *q, qtc_tensor *k, qtc_tensor *v,
                                 int n_head, int n_kv_head)
{
    if (!q || !k || !v)
        return NULL;
    attn_dims d = attn_shape(q, k, v, n_head, n_kv_head);
    qtc_tensor *out = qtc_graph_new_tensor(g, 3, q->ne);
    if (!out)
        return NULL;
    int record = qtc_graph_needs_grad(g, q) || qtc_graph_needs_grad(g, k) ||
                 qtc_graph_needs_grad(g, v);
    /* training keeps every probability for the backward; inference needs one row */
    size_t pbytes = record ? (size_t)(d.B * d.H * d.Tq * d.Tk) * sizeof(float)
                           : (size_t)(max_threads() * d.Tk) * sizeof(float);
    float *P = qtc_graph_alloc(g, pbytes);
    if (!P)
        return NULL;
    int64_t qs = (int64_t)d.H * d.D, kvs = (int64_t)d.Hkv * d.D;
    int group = d.H / d.Hkv;
    float scale = 1.0f / sqrtf((float)d.D);
    const float *qd = q->data, *kd = k->data, *vd = v->data;
    float *od = out->data;
    #pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < d.B * d.H; task++) {
        int64_t b = task / d.H;
        int h = (int)(task % d.H), kvh = h / group;
        const float *qb = qd + b * d.Tq * qs + h * d.D;
        const float *kb = kd + b * d.Tk * kvs + kvh * d.D, *vb = vd + b * d.Tk * kvs + kvh * d.D;
        float *ob = od + b * d.Tq * qs + h * d.D;
        if (record) {
            attn_head(qb, kb, vb, ob, P + task * d.Tq * d.Tk, d.Tk, d, qs, kvs, scale);
        } else { /* row by row through this thread's scratch row */
            attn_dims one = d;
            one.Tq = 1;
            for (int64_t t = 0; t < d.Tq; t++) {
                one.Tk = t + (d.Tk - d.Tq) + 1;
                attn_head(qb + t * qs, kb, vb, ob + t * qs, P + thread_id() * d.Tk, 0, one, qs,
                          kvs, scale);
            }
        }
    }
    qtc_node *n = qtc_graph_record(g, "attention (stored P)", attention_backward, out, 3,
                                   (qtc_tensor *[]){q, k, v});
    if (n) {
        n->iarg[0] = n_head;
        n->iarg[1] = n_kv_head;
        n->saved = P;
    }
    return out;
}
