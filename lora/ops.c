/* ops.c: the graph ops adapters need: a matmul against a quantized frozen
 * matrix, dropout, and prepending a prefix along the time axis. */
#include <assert.h>
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/lora.h"

/* Rows of W dequantized per tile: about 256 KB of floats, at least one row. */
static int64_t tile_rows(const qtc_qmatrix *w)
{
    int64_t r = (int64_t)65536 / w->cols;
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
