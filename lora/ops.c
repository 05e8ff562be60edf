/* ops.c: the graph ops adapters need: a matmul against a quantized frozen
 * matrix, an embedding lookup from one and the output head's cross-entropy
 * fused with one (QLoRA's frozen embedding and head), dropout, and prepending
 * a prefix along the time axis. */
#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/lora.h"

/* Rows of W dequantized per tile: about 4M floats (16 MiB), at least one row;
 * thinner tiles leave sgemm memory-bound (the backward re-reads dx per tile). */
static int64_t tile_rows(const qtc_qmatrix *w)
{
    int64_t r = ((int64_t)1 << 22) / w->cols;
    return r < 1 ? 1 : r > w->rows ? w->rows : r;
}

/* Dequantizes rows r0 .. r0+n of w into tile, rows in parallel. */
static void dequant_tile(const qtc_qmatrix *w, int64_t r0, int64_t n, float *tile)
{
    #pragma omp parallel for schedule(static) if (n * w->cols > 16384)
    for (int64_t r = 0; r < n; r++)
        qtc_qmatrix_rows(w, r0 + r, 1, tile + r * w->cols);
}

static void qmatmul_backward(qtc_graph *g, qtc_node *n)
{
    float *dx = qtc_graph_grad(g, n->in[0]);
    if (!dx)
        return;
    const qtc_qmatrix *w = n->saved;
    const int64_t K = w->cols, N = w->rows, M = qtc_tensor_numel(n->in[0]) / K, R = tile_rows(w);
    const float *dy = n->out->grad->data;
    float *tile = malloc((size_t)(R * K) * sizeof *tile);
    if (!tile) /* cannot happen after the forward had the same memory; keep the gradient unchanged */
        return;
    for (int64_t r0 = 0; r0 < N; r0 += R) {
        int64_t nr = r0 + R <= N ? R : N - r0;
        dequant_tile(w, r0, nr, tile);
        /* dx (M, K) += dy[:, r0:r0+nr] (M, nr) . tile (nr, K) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)K, (int)nr, 1.0f, dy + r0, (int)N, tile,
                     (int)K, 1.0f, dx, (int)K);
    }
    free(tile);
}

qtc_tensor *qtc_qmatmul(qtc_graph *g, qtc_tensor *x, const qtc_qmatrix *w)
{
    if (!x)
        return NULL;
    assert(x->dtype == QTC_F32 && x->ndim >= 1 && x->ne[x->ndim - 1] == w->cols);
    int64_t shape[QTC_MAX_DIMS];
    memcpy(shape, x->ne, sizeof shape);
    shape[x->ndim - 1] = w->rows;
    qtc_tensor *y = qtc_graph_new_tensor(g, x->ndim, shape);
    const int64_t K = w->cols, N = w->rows, M = qtc_tensor_numel(x) / K, R = tile_rows(w);
    float *tile = y ? malloc((size_t)(R * K) * sizeof *tile) : NULL;
    if (!tile)
        return NULL; /* y stays in the arena; the graph reports the missing result */
    for (int64_t r0 = 0; r0 < N; r0 += R) {
        int64_t nr = r0 + R <= N ? R : N - r0;
        dequant_tile(w, r0, nr, tile);
        /* y[:, r0:r0+nr] = x (M, K) . tile^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)nr, (int)K, 1.0f, x->data, (int)K, tile,
                    (int)K, 0.0f, (float *)y->data + r0, (int)N);
    }
    free(tile);
    qtc_node *n = qtc_graph_record(g, "qmatmul", qmatmul_backward, y, 1, &x);
    if (n)
        n->saved = (void *)w;
    return y;
}

static void dropout_backward(qtc_graph *g, qtc_node *n)
{
    float *dx = qtc_graph_grad(g, n->in[0]);
    if (!dx)
        return;
    const float *dy = n->out->grad->data, *mask = n->saved;
    for (int64_t i = 0; i < qtc_tensor_numel(n->out); i++)
        dx[i] += dy[i] * mask[i];
}

qtc_tensor *qtc_dropout(qtc_graph *g, qtc_tensor *x, float p, qtc_rng *r)
{
    if (!x)
        return NULL;
    assert(x->dtype == QTC_F32 && p >= 0 && p < 1);
    qtc_tensor *y = qtc_graph_new_tensor(g, x->ndim, x->ne);
    int64_t n = qtc_tensor_numel(x);
    float *mask = y ? qtc_graph_alloc(g, (size_t)n * sizeof *mask) : NULL;
    if (!mask)
        return NULL;
    const float keep = 1.0f / (1.0f - p), *xv = x->data;
    float *yv = y->data;
    for (int64_t i = 0; i < n; i++) {
        mask[i] = qtc_rng_uniform(r) >= p ? keep : 0.0f;
        yv[i] = xv[i] * mask[i];
    }
    qtc_node *nd = qtc_graph_record(g, "dropout", dropout_backward, y, 1, &x);
    if (nd)
        nd->saved = mask;
    return y;
}

static void concat_prefix_backward(qtc_graph *g, qtc_node *n)
{
    const qtc_tensor *x = n->in[1];
    const int64_t B = x->ne[0], T = x->ne[1], D = x->ne[2], P = n->in[0]->ne[0];
    const float *dy = n->out->grad->data;
    float *dp = qtc_graph_grad(g, n->in[0]), *dx = qtc_graph_grad(g, n->in[1]);
    for (int64_t b = 0; b < B; b++) {
        const float *row = dy + b * (P + T) * D;
        if (dp)
            for (int64_t i = 0; i < P * D; i++)
                dp[i] += row[i];
        if (dx)
            for (int64_t i = 0; i < T * D; i++)
                dx[b * T * D + i] += row[P * D + i];
    }
}

qtc_tensor *qtc_concat_prefix(qtc_graph *g, qtc_tensor *prefix, qtc_tensor *x)
{
    if (!prefix || !x)
        return NULL;
    assert(x->ndim == 3 && prefix->ndim == 2 && prefix->ne[1] == x->ne[2]);
    const int64_t B = x->ne[0], T = x->ne[1], D = x->ne[2], P = prefix->ne[0];
    qtc_tensor *y = qtc_graph_new_tensor(g, 3, QTC_SHAPE(B, P + T, D));
    if (!y)
        return NULL;
    float *o = y->data;
    for (int64_t b = 0; b < B; b++) {
        memcpy(o + b * (P + T) * D, prefix->data, (size_t)(P * D) * sizeof *o);
        memcpy(o + b * (P + T) * D + P * D, (const float *)x->data + b * T * D, (size_t)(T * D) * sizeof *o);
    }
    qtc_graph_record(g, "concat_prefix", concat_prefix_backward, y, 2, (qtc_tensor *[]){prefix, x});
    return y;
}

/* Scratch outside the arena (freed when the op returns, so it does not stay
 * through the rest of the step); when malloc fails the arena is tried, which
 * records the out-of-memory error in the graph if it fails too. */
static float *scratch(qtc_graph *g, int64_t floats, int *owned)
{
    size_t bytes = (size_t)(floats > 0 ? floats : 1) * sizeof(float);
    float *p = malloc(bytes);
    *owned = p != NULL;
    return p ? p : qtc_graph_alloc(g, bytes);
}

qtc_tensor *qtc_qembedding(qtc_graph *g, const qtc_qmatrix *table, const qtc_tensor *ids)
{
    assert(ids->dtype == QTC_I32 && qtc_tensor_is_contiguous(ids) && ids->ndim < QTC_MAX_DIMS);
    int64_t shape[QTC_MAX_DIMS], n = qtc_tensor_numel(ids), D = table->cols;
    memcpy(shape, ids->ne, sizeof shape);
    shape[ids->ndim] = D;
    qtc_tensor *y = qtc_graph_new_tensor(g, ids->ndim + 1, shape);
    if (!y)
        return NULL;
    const int32_t *id = ids->data;
    float *out = y->data;
    #pragma omp parallel for schedule(static) if (n * D > 65536)
    for (int64_t i = 0; i < n; i++) {
        assert(id[i] >= 0 && id[i] < table->rows);
        qtc_qmatrix_rows(table, id[i], 1, out + i * D); /* only the looked-up rows are dequantized */
    }
    return y; /* the table is frozen and ids have no gradient: nothing to record */
}

/* Vocabulary rows of the head per tile: the tile's logits for every row and
 * its dequantized weights each stay near 4M floats (16 MiB). */
#define QLCE_FLOATS ((int64_t)1 << 22)

static int64_t head_tile(int64_t rows, int64_t V, int64_t D, int64_t want)
{
    int64_t big = rows > D ? rows : D, t = want > 0 ? want : QLCE_FLOATS / (big ? big : 1);
    return t < 1 ? 1 : t > V ? V : t;
}

typedef struct qlce_saved {
    const qtc_qmatrix *w;
    float *lse;        /* per row (ignored rows: unset) */
    int32_t *targets;  /* per row, copied */
    int64_t n_valid, tile;
} qlce_saved;

/* logits (rows, nv) = x (rows, D) . tile^T for head rows v0 .. v0+nv. */
static void head_logits(const float *x, int64_t rows, int64_t D, const float *tile, int64_t nv, float *logits)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)nv, (int)D, 1.0f, x, (int)D, tile, (int)D,
                0.0f, logits, (int)nv);
}

static void qlinear_ce_backward(qtc_graph *g, qtc_node *n)
{
    qtc_tensor *xt = n->in[0];
    const qlce_saved *s = n->saved;
    const qtc_qmatrix *w = s->w;
    const int64_t D = w->cols, V = w->rows, rows = qtc_tensor_numel(xt) / (D ? D : 1), nt = s->tile;
    float *dx = qtc_graph_grad(g, xt);
    if (!dx || s->n_valid == 0 || D == 0)
        return; /* out of memory (the graph remembers it), or the loss is the constant 0 */
    /* the scale and the per-element formula are qtc_cross_entropy's */
    const float scale = ((const float *)n->out->grad->data)[0] / (float)s->n_valid, *x = xt->data;
    int owned_t, owned_l;
    float *tile = scratch(g, nt * D, &owned_t), *dl = tile ? scratch(g, rows * nt, &owned_l) : NULL;
    for (int64_t v0 = 0; dl && v0 < V; v0 += nt) {
        int64_t nv = V - v0 < nt ? V - v0 : nt;
        dequant_tile(w, v0, nv, tile);
        head_logits(x, rows, D, tile, nv, dl);
        /* dlogits = (softmax - onehot) * scale in place; ignored rows zero */
        #pragma omp parallel for schedule(static) if (rows * nv > 65536)
        for (int64_t r = 0; r < rows; r++) {
            int32_t t = s->targets[r];
            float *d = dl + r * nv;
            if (t < 0) {
                memset(d, 0, (size_t)nv * sizeof *d);
                continue;
            }
            for (int64_t j = 0; j < nv; j++)
                d[j] = expf(d[j] - s->lse[r]) * scale;
            if (t >= v0 && t < v0 + nv)
                d[t - v0] -= scale;
        }
        /* dx (rows, D) += dlogits (rows, nv) . tile (nv, D) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)D, (int)nv, 1.0f, dl, (int)nv, tile,
                    (int)D, 1.0f, dx, (int)D);
    }
    if (tile && owned_t)
        free(tile);
    if (dl && owned_l)
        free(dl);
}

qtc_tensor *qtc_qlinear_cross_entropy(qtc_graph *g, qtc_tensor *x, const qtc_qmatrix *w, const qtc_tensor *targets,
                                      int64_t tile_rows)
{
    if (!x || !targets)
        return NULL;
    assert(x->dtype == QTC_F32 && qtc_tensor_is_contiguous(x) && x->ndim >= 1 && x->ne[x->ndim - 1] == w->cols);
    assert(targets->dtype == QTC_I32 && qtc_tensor_is_contiguous(targets));
    const int64_t D = w->cols, V = w->rows, rows = qtc_tensor_numel(x) / (D ? D : 1);
    assert(qtc_tensor_numel(targets) == rows);
    const int64_t nt = head_tile(rows, V, D, tile_rows);
    qtc_tensor *y = qtc_graph_new_tensor(g, 0, NULL);
    qlce_saved *s = qtc_graph_alloc(g, sizeof *s);
    float *lse = qtc_graph_alloc(g, (size_t)(rows ? rows : 1) * sizeof(float));
    int32_t *tg = qtc_graph_alloc(g, (size_t)(rows ? rows : 1) * sizeof(int32_t));
    if (!y || !s || !lse || !tg)
        return NULL;
    memcpy(tg, targets->data, (size_t)rows * sizeof(int32_t));
    int64_t valid = 0;
    for (int64_t r = 0; r < rows; r++) {
        assert(tg[r] < V);
        valid += tg[r] >= 0;
    }
    double total = 0;
    if (valid) {
        /* an online log-sum-exp over the vocabulary tiles: each row's running
         * maximum mx and sum of exp(logit - mx) in double, and its target's logit */
        int owned_t, owned_l, owned_r;
        float *tile = scratch(g, nt * D, &owned_t), *lg = tile ? scratch(g, rows * nt, &owned_l) : NULL;
        float *run = lg ? scratch(g, 4 * rows, &owned_r) : NULL; /* mx, picked, then the sum as a double pair */
        if (!run) {
            if (tile && owned_t)
                free(tile);
            if (lg && owned_l)
                free(lg);
            return NULL;
        }
        float *mx = run, *picked = run + rows;
        double *sum = (double *)(void *)(run + 2 * rows);
        for (int64_t r = 0; r < rows; r++) {
            mx[r] = -INFINITY;
            sum[r] = 0;
            picked[r] = 0;
        }
        for (int64_t v0 = 0; v0 < V; v0 += nt) {
            int64_t nv = V - v0 < nt ? V - v0 : nt;
            dequant_tile(w, v0, nv, tile);
            head_logits(x->data, rows, D, tile, nv, lg);
            #pragma omp parallel for schedule(static) if (rows * nv > 65536)
            for (int64_t r = 0; r < rows; r++) {
                if (tg[r] < 0)
                    continue;
                const float *l = lg + r * nv;
                float m = mx[r];
                for (int64_t j = 0; j < nv; j++)
                    if (l[j] > m)
                        m = l[j];
                double acc = m > mx[r] ? sum[r] * exp((double)mx[r] - m) : sum[r];
                for (int64_t j = 0; j < nv; j++)
                    acc += expf(l[j] - m);
                mx[r] = m;
                sum[r] = acc;
                if (tg[r] >= v0 && tg[r] < v0 + nv)
                    picked[r] = l[tg[r] - v0];
            }
        }
        /* serially in row order, as qtc_cross_entropy sums its per-row losses */
        for (int64_t r = 0; r < rows; r++)
            if (tg[r] >= 0) {
                lse[r] = mx[r] + (float)log(sum[r]);
                float loss = lse[r] - picked[r];
                total += loss;
            }
        if (owned_t)
            free(tile);
        if (owned_l)
            free(lg);
        if (owned_r)
            free(run);
    }
    ((float *)y->data)[0] = valid ? (float)(total / (double)valid) : 0.0f;
    *s = (qlce_saved){w, lse, tg, valid, nt};
    qtc_node *n = qtc_graph_record(g, "qlinear_cross_entropy", qlinear_ce_backward, y, 1, &x);
    if (n)
        n->saved = s;
    return y;
}
