/* tensor_private.h: what the files of tensor/ share (private to tensor/,
 * hidden in libqtc.so). */
#ifndef QTC_TENSOR_PRIVATE_H
#define QTC_TENSOR_PRIVATE_H

#include <stdint.h>

/* ops_basic.c: C = op(A) op(B) + beta C, row-major f32 (op: transposed when
 * ta / tb), through cblas_sgemm; every matrix product of the ops. */
void tensor_gemm(int ta, int tb, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                 int64_t ldb, float beta, float *C, int64_t ldc);

/* vec.c: the row kernels qtc's ops run, compiled once per instruction-set
 * path (baseline, AVX2+FMA, AVX-512; see qtc_cpu_path in qtc/runtime.h).
 * tensor_vec() is the table of the path in use: call it once per op, not per
 * element. Every kernel takes plain contiguous f32 rows, never allocates and
 * gives the same result for the same input whatever the thread count; the
 * paths differ only by fused multiply-adds (a few ulp). exp is vec.c's own
 * (range reduction and a degree-7 polynomial, within 2 ulp of exp over the
 * float range), not libm's, so every path computes the same function. */
typedef struct tensor_vec_ops {
    /* sum a[i] b[i], accumulated in 16 float lanes combined in a fixed order */
    float (*dot)(const float *a, const float *b, int64_t n);
    /* y[i] += a x[i] */
    void (*axpy)(int64_t n, float a, const float *x, float *y);
    /* y[i] = a x[i] */
    void (*scale)(int64_t n, float a, const float *x, float *y);
    /* y[i] = exp(x[i] - m) (y may be x); returns the sum of the y[i], in double */
    double (*exp_row)(const float *x, float m, float *y, int64_t n);
    /* y[i] += a exp(x[i] - m): a softmax gradient's row (cross-entropy's (p - onehot) scale) */
    void (*exp_axpy)(const float *x, float m, float a, float *y, int64_t n);
    /* max x[i] (-inf for n = 0; NaN is not propagated) */
    float (*max_row)(const float *x, int64_t n);
    /* log sum exp(x[i]), the maximum subtracted first, the sum in double */
    float (*log_sum_exp)(const float *x, int64_t n);
    /* RMSNorm of one row: y = x * rstd * w (w NULL: 1), rstd = 1/sqrt(mean(x^2) + eps)
     * with the mean in double; returns rstd */
    float (*rmsnorm)(const float *x, const float *w, float *y, int64_t n, float eps);
    /* its backward for one row: dx += rstd dy w - (dot(dy w, x)/n) rstd^3 x */
    void (*rmsnorm_back)(const float *x, const float *w, const float *dy, float rstd, float *dx, int64_t n);
    /* dw += dy x rstd for one row */
    void (*rmsnorm_wgrad)(const float *x, const float *dy, float rstd, float *dw, int64_t n);
    /* one head of hd values rotated by the pairs' (cos, sin) in cs (n_rot/2
     * pairs, sin times dir); pairs (2i, 2i+1) when interleaved, else (i, i+n_rot/2);
     * values past n_rot copied; y += when acc */
    void (*rope_head)(const float *x, float *y, int acc, const float *cs, float dir, int n_rot, int hd,
                      int interleaved);
    /* y = x sigmoid(x); dx += dy sigmoid(x) (1 + x (1 - sigmoid(x))) */
    void (*silu)(const float *x, float *y, int64_t n);
    void (*silu_back)(const float *x, const float *dy, float *dx, int64_t n);
    /* y = silu(a) b; da += dy b silu'(a), db += dy silu(a) (either may be NULL) */
    void (*swiglu)(const float *a, const float *b, float *y, int64_t n);
    void (*swiglu_back)(const float *a, const float *b, const float *dy, float *da, float *db, int64_t n);
} tensor_vec_ops;

const tensor_vec_ops *tensor_vec(void);
/* One path's table (tests and benchmarks reach them through qtc_cpu_set). */
const tensor_vec_ops *tensor_vec_for(int path);

#endif
