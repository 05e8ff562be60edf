/* ops_basic.c: matmul, elementwise ops, reductions, reshape, SiLU/SwiGLU and
 * embedding lookup, each with its backward. */
#include "qtc/graph.h"
#include "tensor_private.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <string.h>

#define ALL_OK(...) all_present((const qtc_tensor *const[]){__VA_ARGS__}, \
                                sizeof((const qtc_tensor *const[]){__VA_ARGS__}) / sizeof(qtc_tensor *))

static int all_present(const qtc_tensor *const *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!t[i])
            return 0;
    return 1;
}

static void assert_f32_contiguous(const qtc_tensor *t)
{
    assert(t->dtype == QTC_F32 && qtc_tensor_is_contiguous(t));
    (void)t;
}

/* --- matmul ---------------------------------------------------------------- */

void tensor_gemm(int ta, int tb, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                 int64_t ldb, float beta, float *C, int64_t ldc)
{
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                (blasint)M, (blasint)N, (blasint)K, 1.0f, A, (blasint)lda, B, (blasint)ldb, beta,
                C, (blasint)ldc);
}

/* Shapes of a matmul: per-batch M, N, K, the batch count, and whether b is
 * shared across the batch. iarg: trans_a, trans_b. */
typedef struct mm_dims {
    int64_t M, N, K, batch;
    int b_shared;
} mm_dims;

static mm_dims mm_shape(const qtc_tensor *a, const qtc_tensor *b, int ta, int tb)
{
    mm_dims d;
    assert(a->ndim >= 2 && b->ndim >= 2);
    int64_t ar = a->ne[a->ndim - 2], ac = a->ne[a->ndim - 1];
    int64_t br = b->ne[b->ndim - 2], bc = b->ne[b->ndim - 1];
    d.M = ta ? ac : ar;
    d.K = ta ? ar : ac;
    d.N = tb ? br : bc;
    assert((tb ? bc : br) == d.K);
    d.batch = ar * ac != 0 ? qtc_tensor_numel(a) / (ar * ac) : 0;
    d.b_shared = b->ndim == 2;
    if (!d.b_shared) {
        assert(b->ndim == a->ndim);
        for (int i = 0; i < a->ndim - 2; i++)
            assert(a->ne[i] == b->ne[i]);
    }
    return d;
}

static void matmul_backward(qtc_graph *g, qtc_node *n)
{
    qtc_tensor *a = n->in[0], *b = n->in[1];
    int ta = n->iarg[0], tb = n->iarg[1];
    mm_dims d = mm_shape(a, b, ta, tb);
    const float *dC = n->out->grad->data, *A = a->data, *B = b->data;
    int64_t lda = ta ? d.M : d.K, ldb = tb ? d.K : d.N;
    if (qtc_graph_needs_grad(g, a)) {
        float *dA = qtc_graph_grad(g, a);
        if (!dA)
            return;
        if (!ta && d.b_shared) /* dA = dC op(B)^T over all rows at once */
            tensor_gemm(0, !tb, d.M * d.batch, d.K, d.N, dC, d.N, B, ldb, 1.0f, dA, d.K);
        else
            for (int64_t i = 0; i < d.batch; i++) {
                const float *Bi = d.b_shared ? B : B + i * d.K * d.N;
                const float *dCi = dC + i * d.M * d.N;
                float *dAi = dA + i * d.M * d.K;
                if (!ta)
                    tensor_gemm(0, !tb, d.M, d.K, d.N, dCi, d.N, Bi, ldb, 1.0f, dAi, d.K);
                else /* A stored (K, M): dA = op(B) dC^T */
                    tensor_gemm(tb, 1, d.K, d.M, d.N, Bi, ldb, dCi, d.N, 1.0f, dAi, d.M);
            }
    }
    if (qtc_graph_needs_grad(g, b)) {
        float *dB = qtc_graph_grad(g, b);
        if (!dB)
            return;
        if (!ta && d.b_shared) { /* one product over all rows of a */
            if (!tb)
                tensor_gemm(1, 0, d.K, d.N, d.M * d.batch, A, d.K, dC, d.N, 1.0f, dB, d.N);
            else
                tensor_gemm(1, 0, d.N, d.K, d.M * d.batch, dC, d.N, A, d.K, 1.0f, dB, d.K);
            return;
        }
        for (int64_t i = 0; i < d.batch; i++) {
            const float *Ai = A + i * d.M * d.K, *dCi = dC + i * d.M * d.N;
            float *dBi = d.b_shared ? dB : dB + i * d.K * d.N;
            if (!tb) /* dB = op(A)^T dC */
                tensor_gemm(!ta, 0, d.K, d.N, d.M, Ai, lda, dCi, d.N, 1.0f, dBi, d.N);
            else /* B stored (N, K): dB = dC^T op(A) */
                tensor_gemm(1, ta, d.N, d.K, d.M, dCi, d.N, Ai, lda, 1.0f, dBi, d.K);
        }
    }
}

qtc_tensor *qtc_matmul(qtc_graph *g, qtc_tensor *a, qtc_tensor *b, int trans_a, int trans_b)
{
    if (!ALL_OK(a, b))
        return NULL;
    assert_f32_contiguous(a);
    assert_f32_contiguous(b);
    mm_dims d = mm_shape(a, b, trans_a, trans_b);
    int64_t shape[QTC_MAX_DIMS];
    for (int i = 0; i < a->ndim - 2; i++)
        shape[i] = a->ne[i];
    shape[a->ndim - 2] = d.M;
    shape[a->ndim - 1] = d.N;
    qtc_tensor *c = qtc_graph_new_tensor(g, a->ndim, shape);
    if (!c)
        return NULL;
    const float *A = a->data, *B = b->data;
    float *C = c->data;
    int64_t lda = trans_a ? d.M : d.K, ldb = trans_b ? d.K : d.N;
    if (d.M * d.N * d.batch == 0) {
        /* nothing to compute */
    } else if (d.K == 0) {
        memset(C, 0, (size_t)(d.M * d.N * d.batch) * sizeof(float));
    } else if (!trans_a && d.b_shared) {
        tensor_gemm(0, trans_b, d.M * d.batch, d.N, d.K, A, d.K, B, ldb, 0.0f, C, d.N);
    } else {
        for (int64_t i = 0; i < d.batch; i++)
            tensor_gemm(trans_a, trans_b, d.M, d.N, d.K, A + i * d.M * d.K, lda,
                 d.b_shared ? B : B + i * d.K * d.N, ldb, 0.0f, C + i * d.M * d.N, d.N);
    }
    qtc_node *n = qtc_graph_record(g, "matmul", matmul_backward, c, 2, (qtc_tensor *[]){a, b});
    if (n) {
        n->iarg[0] = trans_a;
        n->iarg[1] = trans_b;
    }
    return c;
}

/* --- elementwise with broadcasting of b over a's leading dimensions -------- */

static int64_t broadcast_len(const qtc_tensor *a, const qtc_tensor *b)
{
    assert(b->ndim <= a->ndim);
    for (int i = 0; i < b->ndim; i++)
        assert(b->ne[b->ndim - 1 - i] == a->ne[a->ndim - 1 - i]);
    (void)a;
    return qtc_tensor_numel(b);
}

static qtc_tensor *like(qtc_graph *g, const qtc_tensor *a)
{
    return qtc_graph_new_tensor(g, a->ndim, a->ne);
}

static void add_backward(qtc_graph *g, qtc_node *n)
{
    qtc_tensor *a = n->in[0], *b = n->in[1];
    const float *dy = n->out->grad->data;
    int64_t na = qtc_tensor_numel(a), nb = qtc_tensor_numel(b);
    if (qtc_graph_needs_grad(g, a)) {
        float *da = qtc_graph_grad(g, a);
        if (!da)
            return;
        for (int64_t i = 0; i < na; i++)
            da[i] += dy[i];
    }
    if (qtc_graph_needs_grad(g, b)) {
        float *db = qtc_graph_grad(g, b);
        if (!db)
            return;
        for (int64_t r = 0; r < na / (nb ? nb : 1); r++)
            for (int64_t j = 0; j < nb; j++)
                db[j] += dy[r * nb + j];
    }
}

qtc_tensor *qtc_add(qtc_graph *g, qtc_tensor *a, qtc_tensor *b)
{
    if (!ALL_OK(a, b))
        return NULL;
    assert_f32_contiguous(a);
    assert_f32_contiguous(b);
    int64_t nb = broadcast_len(a, b), na = qtc_tensor_numel(a);
    qtc_tensor *y = like(g, a);
    if (!y)
        return NULL;
    const float *x = a->data, *bb = b->data;
    float *o = y->data;
    for (int64_t r = 0; r < na / (nb ? nb : 1); r++)
        for (int64_t j = 0; j < nb; j++)
            o[r * nb + j] = x[r * nb + j] + bb[j];
    qtc_graph_record(g, "add", add_backward, y, 2, (qtc_tensor *[]){a, b});
    return y;
}

static void mul_backward(qtc_graph *g, qtc_node *n)
{
    qtc_tensor *a = n->in[0], *b = n->in[1];
    const float *dy = n->out->grad->data, *x = a->data, *w = b->data;
    int64_t na = qtc_tensor_numel(a), nb = qtc_tensor_numel(b), rows = na / (nb ? nb : 1);
    if (qtc_graph_needs_grad(g, a)) {
        float *da = qtc_graph_grad(g, a);
        if (!da)
            return;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < nb; j++)
                da[r * nb + j] += dy[r * nb + j] * w[j];
    }
    if (qtc_graph_needs_grad(g, b)) {
        float *db = qtc_graph_grad(g, b);
        if (!db)
            return;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < nb; j++)
                db[j] += dy[r * nb + j] * x[r * nb + j];
    }
}

qtc_tensor *qtc_mul(qtc_graph *g, qtc_tensor *a, qtc_tensor *b)
{
    if (!ALL_OK(a, b))
        return NULL;
    assert_f32_contiguous(a);
    assert_f32_contiguous(b);
    int64_t nb = broadcast_len(a, b), na = qtc_tensor_numel(a);
    qtc_tensor *y = like(g, a);
    if (!y)
        return NULL;
    const float *x = a->data, *w = b->data;
    float *o = y->data;
    for (int64_t r = 0; r < na / (nb ? nb : 1); r++)
        for (int64_t j = 0; j < nb; j++)
            o[r * nb + j] = x[r * nb + j] * w[j];
    qtc_graph_record(g, "mul", mul_backward, y, 2, (qtc_tensor *[]){a, b});
    return y;
}

static void scale_backward(qtc_graph *g, qtc_node *n)
{
    float *da = qtc_graph_grad(g, n->in[0]);
    if (!da)
        return;
    const float *dy = n->out->grad->data;
    float s = n->farg[0];
    int64_t na = qtc_tensor_numel(n->in[0]);
    for (int64_t i = 0; i < na; i++)
        da[i] += s * dy[i];
}

qtc_tensor *qtc_scale(qtc_graph *g, qtc_tensor *a, float s)
{
    if (!a)
        return NULL;
    assert_f32_contiguous(a);
    qtc_tensor *y = like(g, a);
    if (!y)
        return NULL;
    const float *x = a->data;
    float *o = y->data;
    int64_t na = qtc_tensor_numel(a);
    for (int64_t i = 0; i < na; i++)
        o[i] = s * x[i];
    qtc_node *n = qtc_graph_record(g, "scale", scale_backward, y, 1, &a);
    if (n)
        n->farg[0] = s;
    return y;
}

/* sum (farg[0] = 1) and mean (farg[0] = 1/n) share one backward */
static void sum_backward(qtc_graph *g, qtc_node *n)
{
    float *da = qtc_graph_grad(g, n->in[0]);
    if (!da)
        return;
    float d = ((const float *)n->out->grad->data)[0] * n->farg[0];
    int64_t na = qtc_tensor_numel(n->in[0]);
    for (int64_t i = 0; i < na; i++)
        da[i] += d;
}

static qtc_tensor *sum_scaled(qtc_graph *g, qtc_tensor *a, int mean)
{
    if (!a)
        return NULL;
    assert_f32_contiguous(a);
    qtc_tensor *y = qtc_graph_new_tensor(g, 0, NULL);
    if (!y)
        return NULL;
    const float *x = a->data;
    int64_t na = qtc_tensor_numel(a);
    double s = 0;
    for (int64_t i = 0; i < na; i++)
        s += x[i];
    float f = mean && na ? 1.0f / (float)na : 1.0f;
    ((float *)y->data)[0] = (float)(mean && na ? s / (double)na : s);
    qtc_node *n = qtc_graph_record(g, mean ? "mean" : "sum", sum_backward, y, 1, &a);
    if (n)
        n->farg[0] = f;
    return y;
}

qtc_tensor *qtc_sum(qtc_graph *g, qtc_tensor *a)
{
    return sum_scaled(g, a, 0);
}

qtc_tensor *qtc_mean(qtc_graph *g, qtc_tensor *a)
{
    return sum_scaled(g, a, 1);
}

static void copy_backward(qtc_graph *g, qtc_node *n)
{
    float *da = qtc_graph_grad(g, n->in[0]);
    if (!da)
        return;
    const float *dy = n->out->grad->data;
    int64_t na = qtc_tensor_numel(n->in[0]);
    for (int64_t i = 0; i < na; i++)
        da[i] += dy[i];
}

qtc_tensor *qtc_reshape(qtc_graph *g, qtc_tensor *a, int ndim, const int64_t *shape)
{
    if (!a)
        return NULL;
    assert_f32_contiguous(a);
    /* a view: the struct is new, the data is a's */
    qtc_tensor *y = qtc_graph_alloc(g, sizeof *y);
    if (!y)
        return NULL;
    memset(y, 0, sizeof *y);
    y->dtype = QTC_F32;
    y->ndim = ndim;
    int64_t stride = 1;
    for (int d = QTC_MAX_DIMS - 1; d >= 0; d--) {
        y->ne[d] = d < ndim ? shape[d] : 1;
        y->nb[d] = d < ndim ? stride : 1;
        if (d < ndim)
            stride *= y->ne[d];
    }
    assert(stride == qtc_tensor_numel(a));
    y->data = a->data;
    y->flags = QTC_TENSOR_GRAPH;
    qtc_graph_record(g, "reshape", copy_backward, y, 1, &a);
    return y;
}

/* --- SiLU and SwiGLU --------------------------------------------------------- */

/* Elementwise kernels run over chunks, in parallel when the tensor is large;
 * each element's result is the same whatever the split. */
#define EW_CHUNK 4096

static void silu_backward(qtc_graph *g, qtc_node *n)
{
    float *dx = qtc_graph_grad(g, n->in[0]);
    if (!dx)
        return;
    const float *x = n->in[0]->data, *dy = n->out->grad->data;
    int64_t len = qtc_tensor_numel(n->in[0]);
    const tensor_vec_ops *tv = tensor_vec();
    #pragma omp parallel for schedule(static) if (len > 65536)
    for (int64_t i = 0; i < len; i += EW_CHUNK)
        tv->silu_back(x + i, dy + i, dx + i, len - i < EW_CHUNK ? len - i : EW_CHUNK);
}

qtc_tensor *qtc_silu(qtc_graph *g, qtc_tensor *x)
{
    if (!x)
        return NULL;
    assert_f32_contiguous(x);
    qtc_tensor *y = like(g, x);
    if (!y)
        return NULL;
    const float *in = x->data;
    float *o = y->data;
    int64_t len = qtc_tensor_numel(x);
    const tensor_vec_ops *tv = tensor_vec();
    #pragma omp parallel for schedule(static) if (len > 65536)
    for (int64_t i = 0; i < len; i += EW_CHUNK)
        tv->silu(in + i, o + i, len - i < EW_CHUNK ? len - i : EW_CHUNK);
    qtc_graph_record(g, "silu", silu_backward, y, 1, &x);
    return y;
}

static void swiglu_backward(qtc_graph *g, qtc_node *n)
{
    qtc_tensor *gate = n->in[0], *up = n->in[1];
    const float *a = gate->data, *b = up->data, *dy = n->out->grad->data;
    int64_t len = qtc_tensor_numel(gate);
    float *da = qtc_graph_needs_grad(g, gate) ? qtc_graph_grad(g, gate) : NULL;
    float *db = qtc_graph_needs_grad(g, up) ? qtc_graph_grad(g, up) : NULL;
    const tensor_vec_ops *tv = tensor_vec();
    #pragma omp parallel for schedule(static) if (len > 65536)
    for (int64_t i = 0; i < len; i += EW_CHUNK)
        tv->swiglu_back(a + i, b + i, dy + i, da ? da + i : NULL, db ? db + i : NULL,
                        len - i < EW_CHUNK ? len - i : EW_CHUNK);
}

qtc_tensor *qtc_swiglu(qtc_graph *g, qtc_tensor *gate, qtc_tensor *up)
{
    if (!ALL_OK(gate, up))
        return NULL;
    assert_f32_contiguous(gate);
    assert_f32_contiguous(up);
    assert(qtc_tensor_same_shape(gate, up));
    qtc_tensor *y = like(g, gate);
    if (!y)
        return NULL;
    const float *a = gate->data, *b = up->data;
    float *o = y->data;
    int64_t len = qtc_tensor_numel(gate);
    const tensor_vec_ops *tv = tensor_vec();
    #pragma omp parallel for schedule(static) if (len > 65536)
    for (int64_t i = 0; i < len; i += EW_CHUNK)
        tv->swiglu(a + i, b + i, o + i, len - i < EW_CHUNK ? len - i : EW_CHUNK);
    qtc_graph_record(g, "swiglu", swiglu_backward, y, 2, (qtc_tensor *[]){gate, up});
    return y;
}

/* --- embedding --------------------------------------------------------------- */

static void embedding_backward(qtc_graph *g, qtc_node *n)
{
    qtc_tensor *table = n->in[0];
    const int32_t *ids = n->saved;
    float *dt = qtc_graph_grad(g, table);
    if (!dt)
        return;
    int64_t D = table->ne[1], count = qtc_tensor_numel(n->out) / (D ? D : 1);
    const float *dy = n->out->grad->data;
    for (int64_t i = 0; i < count; i++) /* serial: rows may repeat */
        for (int64_t j = 0; j < D; j++)
            dt[(int64_t)ids[i] * D + j] += dy[i * D + j];
}

qtc_tensor *qtc_embedding(qtc_graph *g, qtc_tensor *table, const qtc_tensor *ids)
{
    if (!ALL_OK(table, ids))
        return NULL;
    assert_f32_contiguous(table);
    assert(table->ndim == 2 && ids->dtype == QTC_I32 && qtc_tensor_is_contiguous(ids));
    assert(ids->ndim < QTC_MAX_DIMS);
    int64_t V = table->ne[0], D = table->ne[1], count = qtc_tensor_numel(ids);
    int64_t shape[QTC_MAX_DIMS];
    for (int i = 0; i < ids->ndim; i++)
        shape[i] = ids->ne[i];
    shape[ids->ndim] = D;
    qtc_tensor *y = qtc_graph_new_tensor(g, ids->ndim + 1, shape);
    if (!y)
        return NULL;
    const int32_t *id = ids->data;
    const float *w = table->data;
    float *o = y->data;
    for (int64_t i = 0; i < count; i++) {
        assert(id[i] >= 0 && id[i] < V);
        memcpy(o + i * D, w + (int64_t)id[i] * D, (size_t)D * sizeof(float));
    }
    (void)V;
    qtc_node *n = qtc_graph_record(g, "embedding", embedding_backward, y, 1, &table);
    if (n) { /* ids may be reused by the caller before backward runs */
        n->saved = qtc_graph_alloc(g, (size_t)count * sizeof(int32_t));
        if (n->saved)
            memcpy(n->saved, id, (size_t)count * sizeof(int32_t));
    }
    return y;
}
