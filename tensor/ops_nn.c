/* ops_nn.c: RMSNorm, rotary embeddings, causal grouped-query attention,
 * cross-entropy (plain, and fused with the output projection) and KL
 * divergence (plain, and fused with both output projections), each with its
 * backward.
 *
 * Rows are independent, so the loops are split across threads by row; every
 * reduction that crosses rows runs serially in a fixed order, which keeps the
 * results identical for any thread count. */
#include "qtc/graph.h"
#include "tensor_private.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static void assert_f32_contiguous(const qtc_tensor *t)
{
    assert(t->dtype == QTC_F32 && qtc_tensor_is_contiguous(t));
    (void)t;
}

static int64_t last_dim(const qtc_tensor *t)
{
    return t->ndim ? t->ne[t->ndim - 1] : 1;
}

/* --- RMSNorm ------------------------------------------------------------------ */

static void rmsnorm_backward(qtc_graph *g, qtc_node *n)
{
    qtc_tensor *xt = n->in[0], *wt = n->in[1];
    int64_t D = last_dim(xt), rows = qtc_tensor_numel(xt) / (D ? D : 1);
    const float *x = xt->data, *w = wt ? wt->data : NULL, *dy = n->out->grad->data;
    const float *rstd = n->saved;
    const tensor_vec_ops *tv = tensor_vec();
    if (qtc_graph_needs_grad(g, xt)) {
        float *dx = qtc_graph_grad(g, xt);
        if (!dx)
            return;
        #pragma omp parallel for schedule(static) if (rows * D > 65536)
        for (int64_t r = 0; r < rows; r++)
            tv->rmsnorm_back(x + r * D, w, dy + r * D, rstd[r], dx + r * D, D);
    }
    if (wt && qtc_graph_needs_grad(g, wt)) {
        float *dw = qtc_graph_grad(g, wt);
        if (!dw)
            return;
        for (int64_t r = 0; r < rows; r++) /* serial: rows add into dw in a fixed order */
            tv->rmsnorm_wgrad(x + r * D, dy + r * D, rstd[r], dw, D);
    }
}

qtc_tensor *qtc_rmsnorm(qtc_graph *g, qtc_tensor *x, qtc_tensor *w, float eps)
{
    if (!x)
        return NULL;
    assert_f32_contiguous(x);
    int64_t D = last_dim(x), rows = qtc_tensor_numel(x) / (D ? D : 1);
    if (w) {
        assert_f32_contiguous(w);
        assert(qtc_tensor_numel(w) == D);
    }
    qtc_tensor *y = qtc_graph_new_tensor(g, x->ndim, x->ne);
    float *rstd = qtc_graph_alloc(g, (size_t)rows * sizeof(float));
    if (!y || !rstd)
        return NULL;
    const float *in = x->data, *wd = w ? w->data : NULL;
    float *o = y->data;
    const tensor_vec_ops *tv = tensor_vec();
    #pragma omp parallel for schedule(static) if (rows * D > 65536)
    for (int64_t r = 0; r < rows; r++)
        rstd[r] = tv->rmsnorm(in + r * D, wd, o + r * D, D, eps);
    qtc_node *n = qtc_graph_record(g, "rmsnorm", rmsnorm_backward, y, w ? 2 : 1,
                                   (qtc_tensor *[]){x, w});
    if (n)
        n->saved = rstd;
    return y;
}

/* --- rotary embeddings ------------------------------------------------------------ */

/* cos/sin of every (position, pair): T * (n_rot/2) of each, computed in double. */
static float *rope_table(qtc_graph *g, int64_t T, int n_rot, int64_t pos0, float theta)
{
    int half = n_rot / 2;
    float *tab = qtc_graph_alloc(g, (size_t)(2 * T * half) * sizeof(float));
    if (!tab)
        return NULL;
    for (int i = 0; i < half; i++) {
        double inv_freq = pow((double)theta, -2.0 * i / n_rot);
        for (int64_t t = 0; t < T; t++) {
            double angle = (double)(pos0 + t) * inv_freq;
            tab[2 * (t * half + i)] = (float)cos(angle);
            tab[2 * (t * half + i) + 1] = (float)sin(angle);
        }
    }
    return tab;
}

/* Rotates every head of x (rows of n_head*hd, row r at table row r % T) by
 * +angle (dir 1) or -angle (dir -1), accumulating into y when acc. */
static void rope_apply(const float *x, float *y, int acc, int64_t rows, int64_t T, int n_head, int hd,
                       int n_rot, qtc_rope_layout layout, const float *tab, float dir)
{
    int half = n_rot / 2;
    const tensor_vec_ops *tv = tensor_vec();
    #pragma omp parallel for schedule(static) if (rows * n_head * hd > 65536)
    for (int64_t r = 0; r < rows; r++) {
        const float *cs = tab + 2 * (r % T) * half;
        for (int h = 0; h < n_head; h++)
            tv->rope_head(x + (r * n_head + h) * hd, y + (r * n_head + h) * hd, acc, cs, dir, n_rot, hd,
                          layout == QTC_ROPE_INTERLEAVED);
    }
}

static void rope_backward(qtc_graph *g, qtc_node *n)
{
    qtc_tensor *x = n->in[0];
    float *dx = qtc_graph_grad(g, x);
    if (!dx)
        return;
    int n_head = n->iarg[0], n_rot = n->iarg[1], hd = n->iarg[3];
    int64_t T = x->ne[x->ndim - 2], rows = qtc_tensor_numel(x) / last_dim(x);
    rope_apply(n->out->grad->data, dx, 1, rows, T, n_head, hd, n_rot,
               (qtc_rope_layout)n->iarg[2], n->saved, -1.0f);
}

qtc_tensor *qtc_rope(qtc_graph *g, qtc_tensor *x, int n_head, int n_rot, int64_t pos0,
                     float theta, qtc_rope_layout layout)
{
    if (!x)
        return NULL;
    assert_f32_contiguous(x);
    assert(x->ndim >= 2 && n_head > 0 && last_dim(x) % n_head == 0);
    int hd = (int)(last_dim(x) / n_head);
    if (n_rot == 0)
        n_rot = hd;
    assert(n_rot > 0 && n_rot <= hd && n_rot % 2 == 0);
    int64_t T = x->ne[x->ndim - 2], rows = qtc_tensor_numel(x) / last_dim(x);
    qtc_tensor *y = qtc_graph_new_tensor(g, x->ndim, x->ne);
    float *tab = rope_table(g, T, n_rot, pos0, theta);
    if (!y || !tab)
        return NULL;
    rope_apply(x->data, y->data, 0, rows, T, n_head, hd, n_rot, layout, tab, 1.0f);
    qtc_node *n = qtc_graph_record(g, "rope", rope_backward, y, 1, &x);
    if (n) {
        n->iarg[0] = n_head;
        n->iarg[1] = n_rot;
        n->iarg[2] = (int)layout;
        n->iarg[3] = hd;
        n->saved = tab;
    }
    return y;
}

/* --- attention ---------------------------------------------------------------------- */

/* FlashAttention's way (Dao et al. 2022; the backward as in FlashAttention-2):
 * queries go through in tiles of ATTN_BR rows, keys in tiles of ATTN_BC, and
 * the softmax is taken online (a running maximum and sum per query row), so
 * no T x T matrix ever exists. The forward keeps only the output and each
 * row's log-sum-exp; the backward recomputes each tile's probabilities from
 * them. Memory: O(B * H * T * D). */
#define ATTN_BR 32
#define ATTN_BC 64

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

/* The innermost loops of both passes go through the vector kernels (a dot
 * product over the head, y += a x, the exp of a row of scores; see
 * tensor_private.h): their sums keep a fixed order, so results depend only
 * on the inputs and the instruction-set path. */

/* One query tile [t0, t1) of one head of one sequence: out rows (stride qs)
 * and, when lse is not NULL, each row's log-sum-exp of its scaled scores.
 * q, out point at the head's first row; k, v at its kv head's first row
 * (stride kvs). Query t sees keys 0 .. t + off. */
static void attn_forward_tile(const tensor_vec_ops *tv, const float *q, const float *k, const float *v, float *out,
                              float *lse, int64_t t0, int64_t t1, int64_t off, int D,
                              int64_t qs, int64_t kvs, float scale)
{
    float mx[ATTN_BR], s[ATTN_BC];
    double sum[ATTN_BR];
    for (int64_t t = t0; t < t1; t++) {
        mx[t - t0] = -INFINITY;
        sum[t - t0] = 0;
        memset(out + t * qs, 0, (size_t)D * sizeof(float));
    }
    int64_t kend = t1 + off; /* keys the tile's last row sees */
    for (int64_t j0 = 0; j0 < kend; j0 += ATTN_BC) {
        int64_t j1 = kend - j0 < ATTN_BC ? kend : j0 + ATTN_BC;
        const float *kt = k + j0 * kvs, *vt = v + j0 * kvs;
        for (int64_t t = t0; t < t1; t++) {
            int64_t n = (t + off + 1 < j1 ? t + off + 1 : j1) - j0;
            if (n <= 0)
                continue; /* the whole key tile lies past this row's causal limit */
            const float *qt = q + t * qs;
            float m = mx[t - t0];
            for (int64_t j = 0; j < n; j++) {
                s[j] = tv->dot(qt, kt + j * kvs, D) * scale;
                if (s[j] > m)
                    m = s[j];
            }
            double tile_sum = tv->exp_row(s, m, s, n);
            float *ot = out + t * qs;
            if (m != mx[t - t0] && mx[t - t0] != -INFINITY) {
                /* a new maximum: what was summed so far shrinks by exp(old - new) */
                float alpha = expf(mx[t - t0] - m);
                sum[t - t0] *= alpha;
                tv->scale(D, alpha, ot, ot);
            }
            mx[t - t0] = m;
            sum[t - t0] += tile_sum;
            for (int64_t j = 0; j < n; j++)
                tv->axpy(D, s[j], vt + j * kvs, ot);
        }
    }
    for (int64_t t = t0; t < t1; t++) {
        float *ot = out + t * qs;
        tv->scale(D, (float)(1.0 / sum[t - t0]), ot, ot);
        if (lse)
            lse[t] = mx[t - t0] + (float)log(sum[t - t0]);
    }
}

typedef struct attn_saved {
    float *lse; /* (B, H, Tq): log-sum-exp of each query row's scaled scores */
} attn_saved;

static void attention_backward(qtc_graph *g, qtc_node *n)
{
    qtc_tensor *qt = n->in[0], *kt = n->in[1], *vt = n->in[2];
    attn_dims d = attn_shape(qt, kt, vt, n->iarg[0], n->iarg[1]);
    const tensor_vec_ops *tv = tensor_vec();
    float *dq = qtc_graph_needs_grad(g, qt) ? qtc_graph_grad(g, qt) : NULL;
    float *dk = qtc_graph_needs_grad(g, kt) ? qtc_graph_grad(g, kt) : NULL;
    float *dv = qtc_graph_needs_grad(g, vt) ? qtc_graph_grad(g, vt) : NULL;
    /* Di = rowsum(dO * O) per (sequence, head, query): softmax's backward term */
    float *Di = qtc_graph_alloc(g, (size_t)(d.B * d.H * d.Tq + 1) * sizeof(float));
    if ((qtc_graph_needs_grad(g, qt) && !dq) || (qtc_graph_needs_grad(g, kt) && !dk) ||
        (qtc_graph_needs_grad(g, vt) && !dv) || !Di)
        return; /* out of memory: the graph remembers it */
    const attn_saved *sv = n->saved;
    const float *q = qt->data, *k = kt->data, *v = vt->data, *dO = n->out->grad->data;
    const float *O = n->out->data;
    int64_t qs = (int64_t)d.H * d.D, kvs = (int64_t)d.Hkv * d.D, off = d.Tk - d.Tq;
    int group = d.H / d.Hkv, D = d.D;
    float scale = 1.0f / sqrtf((float)d.D);
    /* one task per (sequence, kv head): it alone writes that kv head's dk/dv
     * and its query heads' dq, each in a fixed order, so no two threads touch
     * the same gradient and the sums do not depend on the thread count */
    #pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < d.B * d.Hkv; task++) {
        int64_t b = task / d.Hkv;
        int kvh = (int)(task % d.Hkv);
        float p[ATTN_BC];
        for (int h = kvh * group; h < (kvh + 1) * group; h++)
            for (int64_t t = 0; t < d.Tq; t++) {
                int64_t row = (b * d.Tq + t) * qs + h * D;
                Di[(b * d.H + h) * d.Tq + t] = tv->dot(dO + row, O + row, D);
            }
        const float *kb = k + b * d.Tk * kvs + kvh * D, *vb = v + b * d.Tk * kvs + kvh * D;
        for (int64_t j0 = 0; j0 < d.Tk; j0 += ATTN_BC) {
            int64_t j1 = d.Tk - j0 < ATTN_BC ? d.Tk : j0 + ATTN_BC;
            int64_t tfirst = j0 - off > 0 ? j0 - off : 0; /* first query that sees key j0 */
            for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                const float *lse = sv->lse + (b * d.H + h) * d.Tq;
                const float *Dh = Di + (b * d.H + h) * d.Tq;
                for (int64_t t = tfirst; t < d.Tq; t++) {
                    int64_t row = (b * d.Tq + t) * qs + h * D;
                    int64_t cnt = (t + off + 1 < j1 ? t + off + 1 : j1) - j0;
                    const float *qrow = q + row, *dorow = dO + row;
                    /* the tile's probabilities, recomputed from the saved lse */
                    for (int64_t j = 0; j < cnt; j++)
                        p[j] = tv->dot(qrow, kb + (j0 + j) * kvs, D) * scale;
                    tv->exp_row(p, lse[t], p, cnt);
                    for (int64_t j = 0; j < cnt; j++) {
                        int64_t kr = (b * d.Tk + j0 + j) * kvs + kvh * D;
                        if (dv)
                            tv->axpy(D, p[j], dorow, dv + kr);
                        float dp = tv->dot(dorow, vb + (j0 + j) * kvs, D);
                        float ds = p[j] * (dp - Dh[t]) * scale; /* d(score before scaling) */
                        if (dq)
                            tv->axpy(D, ds, kb + (j0 + j) * kvs, dq + row);
                        if (dk)
                            tv->axpy(D, ds, qrow, dk + kr);
                    }
                }
            }
        }
    }
}

qtc_tensor *qtc_attention(qtc_graph *g, qtc_tensor *q, qtc_tensor *k, qtc_tensor *v,
                          int n_head, int n_kv_head)
{
    if (!q || !k || !v)
        return NULL;
    assert_f32_contiguous(q);
    assert_f32_contiguous(k);
    assert_f32_contiguous(v);
    attn_dims d = attn_shape(q, k, v, n_head, n_kv_head);
    qtc_tensor *out = qtc_graph_new_tensor(g, 3, q->ne);
    if (!out)
        return NULL;
    int record = qtc_graph_needs_grad(g, q) || qtc_graph_needs_grad(g, k) ||
                 qtc_graph_needs_grad(g, v);
    /* training keeps one log-sum-exp per query row; inference nothing */
    attn_saved *sv = NULL;
    if (record) {
        sv = qtc_graph_alloc(g, sizeof *sv);
        float *lse = qtc_graph_alloc(g, (size_t)(d.B * d.H * d.Tq + 1) * sizeof(float));
        if (!sv || !lse)
            return NULL;
        sv->lse = lse;
    }
    int64_t qs = (int64_t)d.H * d.D, kvs = (int64_t)d.Hkv * d.D, off = d.Tk - d.Tq;
    int64_t tiles = (d.Tq + ATTN_BR - 1) / ATTN_BR;
    int group = d.H / d.Hkv;
    float scale = 1.0f / sqrtf((float)d.D);
    const float *qd = q->data, *kd = k->data, *vd = v->data;
    float *od = out->data;
    const tensor_vec_ops *tv = tensor_vec();
    /* one task per (sequence, head, query tile): each writes its own rows */
    #pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < d.B * d.H * tiles; task++) {
        int64_t bh = task / tiles, t0 = (task % tiles) * ATTN_BR;
        int64_t b = bh / d.H, t1 = d.Tq - t0 < ATTN_BR ? d.Tq : t0 + ATTN_BR;
        int h = (int)(bh % d.H), kvh = h / group;
        attn_forward_tile(tv, qd + b * d.Tq * qs + h * d.D, kd + b * d.Tk * kvs + kvh * d.D,
                          vd + b * d.Tk * kvs + kvh * d.D, od + b * d.Tq * qs + h * d.D,
                          sv ? sv->lse + bh * d.Tq : NULL, t0, t1, off, d.D, qs, kvs, scale);
    }
    qtc_node *n = qtc_graph_record(g, "attention", attention_backward, out, 3,
                                   (qtc_tensor *[]){q, k, v});
    if (n) {
        n->iarg[0] = n_head;
        n->iarg[1] = n_kv_head;
        n->saved = sv;
    }
    return out;
}

/* --- losses ----------------------------------------------------------------------- */

/* log(sum(exp(x))) of one row, with the maximum subtracted first (the
 * vector kernel's, whose exp every path shares). */
static float log_sum_exp(const float *x, int64_t V)
{
    return tensor_vec()->log_sum_exp(x, V);
}

typedef struct ce_saved {
    float *lse;       /* per row */
    int32_t *targets; /* per row, copied */
    int64_t n_valid;
} ce_saved;

static void cross_entropy_backward(qtc_graph *g, qtc_node *n)
{
    qtc_tensor *lt = n->in[0];
    float *dl = qtc_graph_grad(g, lt);
    if (!dl)
        return;
    const ce_saved *s = n->saved;
    int64_t V = last_dim(lt), rows = qtc_tensor_numel(lt) / (V ? V : 1);
    if (s->n_valid == 0)
        return;
    float scale = ((const float *)n->out->grad->data)[0] / (float)s->n_valid;
    const float *x = lt->data;
    const tensor_vec_ops *tv = tensor_vec();
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        if (s->targets[r] < 0)
            continue;
        const float *xr = x + r * V;
        float *dr = dl + r * V;
        tv->exp_axpy(xr, s->lse[r], scale, dr, V);
        dr[s->targets[r]] -= scale;
    }
}

qtc_tensor *qtc_cross_entropy(qtc_graph *g, qtc_tensor *logits, const qtc_tensor *targets)
{
    if (!logits || !targets)
        return NULL;
    assert_f32_contiguous(logits);
    assert(targets->dtype == QTC_I32 && qtc_tensor_is_contiguous(targets));
    int64_t V = last_dim(logits), rows = qtc_tensor_numel(logits) / (V ? V : 1);
    assert(qtc_tensor_numel(targets) == rows);
    qtc_tensor *y = qtc_graph_new_tensor(g, 0, NULL);
    ce_saved *s = qtc_graph_alloc(g, sizeof *s);
    float *lse = qtc_graph_alloc(g, (size_t)rows * sizeof(float));
    int32_t *tg = qtc_graph_alloc(g, (size_t)rows * sizeof(int32_t));
    float *loss = qtc_graph_alloc(g, (size_t)rows * sizeof(float));
    if (!y || !s || !lse || !tg || !loss)
        return NULL;
    memcpy(tg, targets->data, (size_t)rows * sizeof(int32_t));
    const float *x = logits->data;
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        if (tg[r] < 0)
            continue;
        assert(tg[r] < V);
        lse[r] = log_sum_exp(x + r * V, V);
        loss[r] = lse[r] - x[r * V + tg[r]];
    }
    double total = 0;
    int64_t valid = 0;
    for (int64_t r = 0; r < rows; r++)
        if (tg[r] >= 0) {
            total += loss[r];
            valid++;
        }
    ((float *)y->data)[0] = valid ? (float)(total / (double)valid) : 0.0f;
    s->lse = lse;
    s->targets = tg;
    s->n_valid = valid;
    qtc_node *n = qtc_graph_record(g, "cross_entropy", cross_entropy_backward, y, 1, &logits);
    if (n)
        n->saved = s;
    return y;
}

/* --- cross-entropy fused with the output projection --------------------------------- */

/* Default rows per chunk: the chunk's logits near 4M floats (16 MiB). */
#define LCE_CHUNK_FLOATS ((int64_t)1 << 22)

typedef struct lce_saved {
    float *lse;       /* per row (ignored rows: unset) */
    int32_t *targets; /* per row, copied */
    int64_t n_valid, chunk;
} lce_saved;

/* Scratch for one chunk's logits: malloc'd by the forward and again by the
 * backward and freed before each returns, not taken from the graph arena. An
 * arena buffer would stay until qtc_graph_reset, through every later op of the
 * step, and the arena's doubling growth makes the chunk after it twice as
 * big, so the arena would keep ~3x the chunk where this holds 1x only while
 * the op runs. When malloc fails the arena is tried, which records the
 * out-of-memory error in the graph if it fails too. *owned says to free. */
static float *lce_scratch(qtc_graph *g, int64_t floats, int *owned)
{
    size_t bytes = (size_t)(floats > 0 ? floats : 1) * sizeof(float);
    float *p = malloc(bytes);
    *owned = p != NULL;
    return p ? p : qtc_graph_alloc(g, bytes);
}

/* logits[0..c) = x[r0..r0+c) W^T: the same product qtc_matmul(x, w, 0, 1) runs. */
static void lce_chunk_logits(const float *x, const float *w, int64_t r0, int64_t c, int64_t V,
                             int64_t D, float *logits)
{
    if (D == 0) {
        memset(logits, 0, (size_t)(c * V) * sizeof(float));
        return;
    }
    tensor_gemm(0, 1, c, V, D, x + r0 * D, D, w, D, 0.0f, logits, V);
}

static void linear_cross_entropy_backward(qtc_graph *g, qtc_node *n)
{
    qtc_tensor *xt = n->in[0], *wt = n->in[1];
    const lce_saved *s = n->saved;
    int64_t D = last_dim(xt), rows = qtc_tensor_numel(xt) / (D ? D : 1), V = wt->ne[0];
    if (s->n_valid == 0 || V == 0)
        return; /* the loss is the constant 0 */
    float *dx = qtc_graph_needs_grad(g, xt) ? qtc_graph_grad(g, xt) : NULL;
    float *dw = qtc_graph_needs_grad(g, wt) ? qtc_graph_grad(g, wt) : NULL;
    if ((qtc_graph_needs_grad(g, xt) && !dx) || (qtc_graph_needs_grad(g, wt) && !dw))
        return; /* out of memory: the graph remembers it */
    /* the scale and the per-element formula are cross_entropy_backward's */
    const tensor_vec_ops *tv = tensor_vec();
    float scale = ((const float *)n->out->grad->data)[0] / (float)s->n_valid;
    const float *x = xt->data, *w = wt->data;
    int owned;
    float *dl = lce_scratch(g, s->chunk * V, &owned);
    if (!dl)
        return;
    for (int64_t r0 = 0; r0 < rows; r0 += s->chunk) {
        int64_t c = rows - r0 < s->chunk ? rows - r0 : s->chunk;
        int any = 0;
        for (int64_t i = 0; i < c && !any; i++)
            any = s->targets[r0 + i] >= 0;
        if (!any)
            continue; /* every row ignored: the chunk adds nothing */
        lce_chunk_logits(x, w, r0, c, V, D, dl);
        /* dlogits = (softmax - onehot) * scale in place; ignored rows zero */
        #pragma omp parallel for schedule(static) if (c * V > 65536)
        for (int64_t i = 0; i < c; i++) {
            int32_t t = s->targets[r0 + i];
            float *dr = dl + i * V;
            if (t < 0) {
                memset(dr, 0, (size_t)V * sizeof(float));
                continue;
            }
            tv->exp_row(dr, s->lse[r0 + i], dr, V);
            tv->scale(V, scale, dr, dr);
            dr[t] -= scale;
        }
        if (D == 0)
            continue;
        if (dx) /* dx[chunk] += dlogits W */
            tensor_gemm(0, 0, c, D, V, dl, V, w, D, 1.0f, dx + r0 * D, D);
        if (dw) /* dW += dlogits^T x[chunk] */
            tensor_gemm(1, 0, V, D, c, dl, V, x + r0 * D, D, 1.0f, dw, D);
    }
    if (owned)
        free(dl);
}

qtc_tensor *qtc_linear_cross_entropy(qtc_graph *g, qtc_tensor *x, qtc_tensor *w,
                                     const qtc_tensor *targets, int64_t chunk_rows)
{
    if (!x || !w || !targets)
        return NULL;
    assert_f32_contiguous(x);
    assert_f32_contiguous(w);
    assert(targets->dtype == QTC_I32 && qtc_tensor_is_contiguous(targets));
    assert(w->ndim == 2);
    int64_t D = last_dim(x), rows = qtc_tensor_numel(x) / (D ? D : 1), V = w->ne[0];
    assert(w->ne[1] == D);
    assert(qtc_tensor_numel(targets) == rows);
    int64_t chunk = chunk_rows > 0 ? chunk_rows : LCE_CHUNK_FLOATS / (V ? V : 1);
    if (chunk < 1)
        chunk = 1;
    if (chunk > rows)
        chunk = rows;
    qtc_tensor *y = qtc_graph_new_tensor(g, 0, NULL);
    lce_saved *s = qtc_graph_alloc(g, sizeof *s);
    float *lse = qtc_graph_alloc(g, (size_t)rows * sizeof(float));
    int32_t *tg = qtc_graph_alloc(g, (size_t)rows * sizeof(int32_t));
    if (!y || !s || !lse || !tg)
        return NULL;
    int owned;
    float *logits = lce_scratch(g, chunk * V, &owned);
    if (!logits)
        return NULL;
    memcpy(tg, targets->data, (size_t)rows * sizeof(int32_t));
    const float *xd = x->data, *wd = w->data;
    double total = 0;
    int64_t valid = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        int64_t c = rows - r0 < chunk ? rows - r0 : chunk;
        int any = 0;
        for (int64_t i = 0; i < c && !any; i++)
            any = tg[r0 + i] >= 0;
        if (!any)
            continue; /* every row of the chunk ignored: no logits needed */
        lce_chunk_logits(xd, wd, r0, c, V, D, logits);
        #pragma omp parallel for schedule(static) if (c * V > 65536)
        for (int64_t i = 0; i < c; i++) {
            if (tg[r0 + i] < 0)
                continue;
            assert(tg[r0 + i] < V);
            lse[r0 + i] = log_sum_exp(logits + i * V, V);
        }
        /* serially in row order, as qtc_cross_entropy sums its per-row losses */
        for (int64_t i = 0; i < c; i++)
            if (tg[r0 + i] >= 0) {
                float loss = lse[r0 + i] - logits[i * V + tg[r0 + i]];
                total += loss;
                valid++;
            }
    }
    if (owned)
        free(logits);
    ((float *)y->data)[0] = valid ? (float)(total / (double)valid) : 0.0f;
    s->lse = lse;
    s->targets = tg;
    s->n_valid = valid;
    s->chunk = chunk;
    qtc_node *n = qtc_graph_record(g, "linear_cross_entropy", linear_cross_entropy_backward, y, 2,
                                   (qtc_tensor *[]){x, w});
    if (n)
        n->saved = s;
    return y;
}

typedef struct kl_saved {
    float *lse, *lse_ref, *kl; /* per row */
} kl_saved;

static void kl_div_backward(qtc_graph *g, qtc_node *n)
{
    qtc_tensor *st = n->in[0], *rt = n->in[1];
    const kl_saved *s = n->saved;
    int64_t V = last_dim(st), rows = qtc_tensor_numel(st) / (V ? V : 1);
    float *ds = qtc_graph_needs_grad(g, st) ? qtc_graph_grad(g, st) : NULL;
    float *dr = qtc_graph_needs_grad(g, rt) ? qtc_graph_grad(g, rt) : NULL;
    if (!rows)
        return;
    float scale = ((const float *)n->out->grad->data)[0] / (float)rows;
    const float *x = st->data, *xr = rt->data;
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t j = 0; j < V; j++) {
            float lp = x[r * V + j] - s->lse[r], lq = xr[r * V + j] - s->lse_ref[r];
            float p = expf(lp), q = expf(lq);
            if (ds)
                ds[r * V + j] += (p - q) * scale;
            if (dr)
                dr[r * V + j] += q * (lq - lp - s->kl[r]) * scale;
        }
    }
}

qtc_tensor *qtc_kl_div(qtc_graph *g, qtc_tensor *logits, qtc_tensor *ref_logits)
{
    if (!logits || !ref_logits)
        return NULL;
    assert_f32_contiguous(logits);
    assert_f32_contiguous(ref_logits);
    assert(qtc_tensor_same_shape(logits, ref_logits));
    int64_t V = last_dim(logits), rows = qtc_tensor_numel(logits) / (V ? V : 1);
    qtc_tensor *y = qtc_graph_new_tensor(g, 0, NULL);
    kl_saved *s = qtc_graph_alloc(g, sizeof *s);
    float *buf = qtc_graph_alloc(g, (size_t)(3 * rows) * sizeof(float));
    if (!y || !s || !buf)
        return NULL;
    s->lse = buf;
    s->lse_ref = buf + rows;
    s->kl = buf + 2 * rows;
    const float *x = logits->data, *xr = ref_logits->data;
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        float l = log_sum_exp(x + r * V, V), lr = log_sum_exp(xr + r * V, V);
        double kl = 0;
        for (int64_t j = 0; j < V; j++) {
            double lq = (double)xr[r * V + j] - lr, lp = (double)x[r * V + j] - l;
            kl += exp(lq) * (lq - lp);
        }
        s->lse[r] = l;
        s->lse_ref[r] = lr;
        s->kl[r] = (float)kl;
    }
    double total = 0;
    for (int64_t r = 0; r < rows; r++)
        total += s->kl[r];
    ((float *)y->data)[0] = rows ? (float)(total / (double)rows) : 0.0f;
    qtc_node *n = qtc_graph_record(g, "kl_div", kl_div_backward, y, 2,
                                   (qtc_tensor *[]){logits, ref_logits});
    if (n)
        n->saved = s;
    return y;
}

/* --- KL divergence fused with both output projections ------------------------------- */

typedef struct lkl_saved {
    float *lse, *lse_ref, *kl; /* per row */
    int64_t chunk;
} lkl_saved;

static void linear_kl_div_backward(qtc_graph *g, qtc_node *n)
{
    qtc_tensor *t[4] = {n->in[0], n->in[1], n->in[2], n->in[3]}; /* x, w, x_ref, w_ref */
    const lkl_saved *s = n->saved;
    int64_t D = last_dim(t[0]), rows = qtc_tensor_numel(t[0]) / (D ? D : 1), V = t[1]->ne[0];
    int64_t Dr = last_dim(t[2]);
    if (rows == 0 || V == 0)
        return; /* the loss is the constant 0 */
    float *grad[4];
    for (int i = 0; i < 4; i++) {
        grad[i] = qtc_graph_needs_grad(g, t[i]) ? qtc_graph_grad(g, t[i]) : NULL;
        if (qtc_graph_needs_grad(g, t[i]) && !grad[i])
            return; /* out of memory: the graph remembers it */
    }
    int student = grad[0] || grad[1], teacher = grad[2] || grad[3];
    /* the scale and the per-element formulas are kl_div_backward's */
    float scale = ((const float *)n->out->grad->data)[0] / (float)rows;
    const float *x = t[0]->data, *w = t[1]->data, *xr = t[2]->data, *wr = t[3]->data;
    int owned, owned_ref;
    float *dl = lce_scratch(g, s->chunk * V, &owned), *dlr = lce_scratch(g, s->chunk * V, &owned_ref);
    if (!dl || !dlr)
        goto done;
    for (int64_t r0 = 0; r0 < rows; r0 += s->chunk) {
        int64_t c = rows - r0 < s->chunk ? rows - r0 : s->chunk;
        lce_chunk_logits(x, w, r0, c, V, D, dl);
        lce_chunk_logits(xr, wr, r0, c, V, Dr, dlr);
        /* d(student logits) and d(teacher logits), in place */
        #pragma omp parallel for schedule(static) if (c * V > 65536)
        for (int64_t i = 0; i < c; i++) {
            float l = s->lse[r0 + i], lr = s->lse_ref[r0 + i], kl = s->kl[r0 + i];
            float *a = dl + i * V, *b = dlr + i * V;
            for (int64_t j = 0; j < V; j++) {
                float lp = a[j] - l, lq = b[j] - lr;
                float p = expf(lp), q = expf(lq);
                a[j] = (p - q) * scale;
                b[j] = q * (lq - lp - kl) * scale;
            }
        }
        if (student && D) {
            if (grad[0]) /* dx[chunk] += dlogits W */
                tensor_gemm(0, 0, c, D, V, dl, V, w, D, 1.0f, grad[0] + r0 * D, D);
            if (grad[1]) /* dW += dlogits^T x[chunk] */
                tensor_gemm(1, 0, V, D, c, dl, V, x + r0 * D, D, 1.0f, grad[1], D);
        }
        if (teacher && Dr) {
            if (grad[2])
                tensor_gemm(0, 0, c, Dr, V, dlr, V, wr, Dr, 1.0f, grad[2] + r0 * Dr, Dr);
            if (grad[3])
                tensor_gemm(1, 0, V, Dr, c, dlr, V, xr + r0 * Dr, Dr, 1.0f, grad[3], Dr);
        }
    }
done:
    if (owned)
        free(dl);
    if (owned_ref)
        free(dlr);
}

qtc_tensor *qtc_linear_kl_div(qtc_graph *g, qtc_tensor *x, qtc_tensor *w, qtc_tensor *x_ref,
                              qtc_tensor *w_ref, int64_t chunk_rows)
{
    if (!x || !w || !x_ref || !w_ref)
        return NULL;
    assert_f32_contiguous(x);
    assert_f32_contiguous(w);
    assert_f32_contiguous(x_ref);
    assert_f32_contiguous(w_ref);
    assert(w->ndim == 2 && w_ref->ndim == 2);
    int64_t D = last_dim(x), rows = qtc_tensor_numel(x) / (D ? D : 1), V = w->ne[0];
    int64_t Dr = last_dim(x_ref);
    assert(w->ne[1] == D && w_ref->ne[0] == V && w_ref->ne[1] == Dr);
    assert(qtc_tensor_numel(x_ref) == rows * Dr);
    /* two chunks of logits (student and teacher), each near 4M floats */
    int64_t chunk = chunk_rows > 0 ? chunk_rows : LCE_CHUNK_FLOATS / (V ? V : 1);
    if (chunk > rows)
        chunk = rows;
    if (chunk < 1)
        chunk = 1;
    qtc_tensor *y = qtc_graph_new_tensor(g, 0, NULL);
    lkl_saved *s = qtc_graph_alloc(g, sizeof *s);
    float *buf = qtc_graph_alloc(g, (size_t)(3 * rows + 1) * sizeof(float));
    if (!y || !s || !buf)
        return NULL;
    s->lse = buf;
    s->lse_ref = buf + rows;
    s->kl = buf + 2 * rows;
    s->chunk = chunk;
    int owned = 0, owned_ref = 0;
    float *lg = NULL, *lr = NULL;
    if (rows && V) {
        lg = lce_scratch(g, chunk * V, &owned);
        lr = lce_scratch(g, chunk * V, &owned_ref);
    }
    const float *xd = x->data, *wd = w->data, *xrd = x_ref->data, *wrd = w_ref->data;
    for (int64_t r0 = 0; lg && lr && r0 < rows; r0 += chunk) {
        int64_t c = rows - r0 < chunk ? rows - r0 : chunk;
        lce_chunk_logits(xd, wd, r0, c, V, D, lg);
        lce_chunk_logits(xrd, wrd, r0, c, V, Dr, lr);
        /* per row as qtc_kl_div computes it */
        #pragma omp parallel for schedule(static) if (c * V > 65536)
        for (int64_t i = 0; i < c; i++) {
            const float *a = lg + i * V, *b = lr + i * V;
            float l = log_sum_exp(a, V), lref = log_sum_exp(b, V);
            double kl = 0;
            for (int64_t j = 0; j < V; j++) {
                double lq = (double)b[j] - lref, lp = (double)a[j] - l;
                kl += exp(lq) * (lq - lp);
            }
            s->lse[r0 + i] = l;
            s->lse_ref[r0 + i] = lref;
            s->kl[r0 + i] = (float)kl;
        }
    }
    int failed = rows && V && (!lg || !lr);
    if (owned)
        free(lg);
    if (owned_ref)
        free(lr);
    if (failed)
        return NULL;
    double total = 0;
    for (int64_t r = 0; r < rows; r++)
        total += V ? s->kl[r] : 0;
    ((float *)y->data)[0] = rows && V ? (float)(total / (double)rows) : 0.0f;
    qtc_node *n = qtc_graph_record(g, "linear_kl_div", linear_kl_div_backward, y, 4,
                                   (qtc_tensor *[]){x, w, x_ref, w_ref});
    if (n)
        n->saved = s;
    return y;
}
