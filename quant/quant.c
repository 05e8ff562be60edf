/* quant.c: tensor-level quantization, the block-type fallback policy and
 * error statistics. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/quant.h"

#ifdef _OPENMP
#include <omp.h>
#endif

qtc_dtype qtc_dtype_fallback(qtc_dtype want, int64_t row_len)
{
    /* llama.cpp's rule for K-quants on rows that are not a multiple of 256,
     * then F16 where no block fits at all */
    static const struct {
        qtc_dtype from, to;
    } chain[] = {
        {QTC_Q4_K, QTC_Q5_0}, {QTC_Q5_K, QTC_Q5_1}, {QTC_Q6_K, QTC_Q8_0},
    };
    qtc_dtype t = want;
    for (;;) {
        const qtc_dtype_traits *tr = qtc_dtype_info(t);
        if (row_len % tr->block_size == 0)
            return t;
        qtc_dtype next = QTC_F16;
        for (size_t i = 0; i < sizeof chain / sizeof *chain; i++)
            if (chain[i].from == t)
                next = chain[i].to;
        t = next;
    }
}

/* Reads row r (of length n) of a plain tensor with any strides as f32. */
static void read_row_f32(const qtc_tensor *x, int64_t r, float *out, int64_t n)
{
    if (qtc_tensor_is_contiguous(x)) {
        const char *base = (const char *)x->data + (size_t)r * qtc_dtype_row_size(x->dtype, n);
        qtc_dequantize_row(x->dtype, base, out, n);
        return;
    }
    for (int64_t j = 0; j < n; j++)
        out[j] = (float)qtc_tensor_get(x, r * n + j);
}

qtc_tensor *qtc_tensor_to_f32(const qtc_tensor *x, qtc_error *err)
{
    if (qtc_dtype_info(x->dtype)->is_quantized && !qtc_tensor_is_contiguous(x)) {
        qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': a quantized view must be contiguous", x->name);
        return NULL;
    }
    qtc_tensor *y = qtc_tensor_new(QTC_F32, x->ndim, x->ne, err);
    if (!y)
        return NULL;
    qtc_tensor_set_name(y, x->name);
    int64_t n = x->ndim ? x->ne[x->ndim - 1] : 1, rows = n ? qtc_tensor_numel(x) / n : 0;
    float *out = y->data;
    #pragma omp parallel for schedule(static) if (rows * n > 65536)
    for (int64_t r = 0; r < rows; r++)
        read_row_f32(x, r, out + r * n, n);
    return y;
}

qtc_tensor *qtc_tensor_quantize(const qtc_tensor *x, qtc_dtype t, qtc_error *err)
{
    const qtc_dtype_traits *tr = qtc_dtype_info(t);
    if (!tr) {
        qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': unknown target type", x->name);
        return NULL;
    }
    int64_t n = x->ndim ? x->ne[x->ndim - 1] : 1;
    if (n % tr->block_size) {
        qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': rows of %lld do not split into %s blocks of %d",
                      x->name, (long long)n, tr->name, tr->block_size);
        return NULL;
    }
    qtc_tensor *src = x->dtype == QTC_F32 && qtc_tensor_is_contiguous(x) ? NULL : qtc_tensor_to_f32(x, err);
    if (x->dtype != QTC_F32 || !qtc_tensor_is_contiguous(x)) {
        if (!src)
            return NULL;
    }
    const float *xs = src ? src->data : x->data;
    qtc_tensor *y = qtc_tensor_new(t, x->ndim ? x->ndim : 1, x->ndim ? x->ne : QTC_SHAPE(1), err);
    if (!y) {
        qtc_tensor_free(src);
        return NULL;
    }
    qtc_tensor_set_name(y, x->name);
    int64_t rows = n ? qtc_tensor_numel(x) / n : 0;
    size_t row_bytes = qtc_dtype_row_size(t, n);
    int64_t bad_row = -1;
    #pragma omp parallel for schedule(static) if (rows * n > 65536)
    for (int64_t r = 0; r < rows; r++)
        if (qtc_quantize_row(t, xs + r * n, (char *)y->data + (size_t)r * row_bytes, n, NULL) != QTC_OK) {
            #pragma omp critical
            if (bad_row < 0 || r < bad_row)
                bad_row = r;
        }
    if (bad_row >= 0) {
        int64_t i = bad_row * n;
        while (isfinite(xs[i]))
            i++;
        qtc_error_set(err, QTC_ERR_NUMERIC, "tensor '%s': element %lld is %s; refusing to quantize it",
                      x->name, (long long)i, isnan(xs[i]) ? "NaN" : "infinite");
        qtc_tensor_free(y);
        y = NULL;
    }
    qtc_tensor_free(src);
    return y;
}

qtc_quant_error qtc_quant_error_of(const float *x, const float *q, int64_t n)
{
    double se = 0, sx = 0, mx = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)q[i] - (double)x[i];
        se += d * d;
        sx += (double)x[i] * x[i];
        if (fabs(d) > mx)
            mx = fabs(d);
    }
    qtc_quant_error e = {sx > 0 ? sqrt(se / sx) : sqrt(se), mx, se, sx};
    return e;
}

qtc_tensor *qtc_tensor_quantize_measured(const qtc_tensor *x, qtc_dtype t, const float *importance, qtc_quant_error *e,
                                         qtc_error *err)
{
    const qtc_dtype_traits *tr = qtc_dtype_info(t);
    int64_t n = x->ndim ? x->ne[x->ndim - 1] : 1;
    if (!tr || (!tr->is_quantized && t != QTC_F32 && t != QTC_F16 && t != QTC_BF16) || n % tr->block_size) {
        qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': cannot store rows of %lld as %s", x->name, (long long)n,
                      tr ? tr->name : "an unknown type");
        return NULL;
    }
    qtc_tensor *src = x->dtype == QTC_F32 && qtc_tensor_is_contiguous(x) ? NULL : qtc_tensor_to_f32(x, err);
    if (!src && !(x->dtype == QTC_F32 && qtc_tensor_is_contiguous(x)))
        return NULL;
    const float *xs = src ? src->data : x->data;
    int64_t rows = n ? qtc_tensor_numel(x) / n : 0;
    qtc_tensor *y = qtc_tensor_new(t, x->ndim ? x->ndim : 1, x->ndim ? x->ne : QTC_SHAPE(1), err);
    double *row_stats = malloc((size_t)(3 * rows + 1) * sizeof(double));
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    float *scratch = malloc((size_t)(threads * n + 1) * sizeof(float));
    if (!y || !row_stats || !scratch) {
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory quantizing tensor '%s'", x->name);
        goto fail;
    }
    qtc_tensor_set_name(y, x->name);
    size_t row_bytes = qtc_dtype_row_size(t, n);
    int64_t bad = -1;
    #pragma omp parallel for schedule(static) if (rows * n > 65536)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = xs + r * n;
        int64_t j = 0;
        while (j < n && isfinite(xr[j]))
            j++;
        if (j < n) {
            #pragma omp critical
            if (bad < 0 || r * n + j < bad)
                bad = r * n + j;
            continue;
        }
        void *yr = (char *)y->data + (size_t)r * row_bytes;
        qtc_quantize_row_weighted(t, xr, yr, n, importance, NULL);
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *back = scratch + (int64_t)tid * n;
        qtc_dequantize_row(t, yr, back, n);
        qtc_quant_error re = qtc_quant_error_of(xr, back, n);
        row_stats[3 * r] = re.sum_sq_err;
        row_stats[3 * r + 1] = re.sum_sq_ref;
        row_stats[3 * r + 2] = re.max_abs;
    }
    if (bad >= 0) {
        qtc_error_set(err, QTC_ERR_NUMERIC, "tensor '%s': element %lld is %s", x->name, (long long)bad,
                      isnan(xs[bad]) ? "NaN" : "infinite");
        goto fail;
    }
    double se = 0, sx = 0, mx = 0; /* rows in order: the same sums for any thread count */
    for (int64_t r = 0; r < rows; r++) {
        se += row_stats[3 * r];
        sx += row_stats[3 * r + 1];
        if (row_stats[3 * r + 2] > mx)
            mx = row_stats[3 * r + 2];
    }
    if (e)
        *e = (qtc_quant_error){sx > 0 ? sqrt(se / sx) : sqrt(se), mx, se, sx};
    free(row_stats);
    free(scratch);
    qtc_tensor_free(src);
    return y;
fail:
    free(row_stats);
    free(scratch);
    qtc_tensor_free(src);
    qtc_tensor_free(y);
    return NULL;
}
