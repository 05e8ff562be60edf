/* vec.c: the row kernels behind tensor_vec() (tensor_private.h), in plain C
 * written so that GCC vectorizes it. The Makefile compiles this file once per
 * instruction-set path: plain (baseline x86-64), with VEC_SUFFIX=avx2 and
 * -mavx2 -mfma, with VEC_SUFFIX=avx512 and -mavx512{f,bw,vl,dq}; only the
 * table's name differs. Reductions keep explicit lanes (16 floats, or 8
 * doubles) combined in a fixed order: without -ffast-math the compiler may not
 * reorder a sum, and the lanes make the order the same on every path and for
 * every thread count. The vector paths allow fused multiply-adds
 * (-ffp-contract=fast): results differ from the baseline path by a few ulp. */
#include "tensor_private.h"
#include "vec_exp.h"

#include <math.h>
#include <stddef.h>

#ifndef VEC_SUFFIX
#define VEC_SUFFIX baseline
#define VEC_BASELINE 1
#endif
#define VEC_CAT_(a, b) a##_##b
#define VEC_CAT(a, b) VEC_CAT_(a, b)

#define FL 16 /* float lanes */
#define DL 8  /* double lanes */

static float sum_lanes_f(float *acc)
{
    for (int w = FL / 2; w; w /= 2)
        for (int j = 0; j < w; j++)
            acc[j] += acc[j + w];
    return acc[0];
}

static double sum_lanes_d(double *acc)
{
    for (int w = DL / 2; w; w /= 2)
        for (int j = 0; j < w; j++)
            acc[j] += acc[j + w];
    return acc[0];
}

static float dot(const float *a, const float *b, int64_t n)
{
    float acc[FL] = {0};
    int64_t i = 0;
    for (; i + FL <= n; i += FL)
        for (int j = 0; j < FL; j++)
            acc[j] += a[i + j] * b[i + j];
    for (int j = 0; i + j < n; j++)
        acc[j] += a[i + j] * b[i + j];
    return sum_lanes_f(acc);
}

static void axpy(int64_t n, float a, const float *x, float *y)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

static void scale(int64_t n, float a, const float *x, float *y)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = a * x[i];
}

/* sum of y[i] into the double lanes; lane = i % DL, so chunks of a multiple
 * of DL add up exactly as one pass would */
static void add_lanes_d(double *acc, const float *y, int64_t n)
{
    int64_t i = 0;
    for (; i + DL <= n; i += DL)
        for (int j = 0; j < DL; j++)
            acc[j] += y[i + j];
    for (int j = 0; i + j < n; j++)
        acc[j] += y[i + j];
}

static void exp_into(const float *x, float m, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = vec_expf(x[i] - m);
}

static double exp_row(const float *x, float m, float *y, int64_t n)
{
    double acc[DL] = {0};
    exp_into(x, m, y, n);
    add_lanes_d(acc, y, n);
    return sum_lanes_d(acc);
}

static void exp_axpy(const float *x, float m, float a, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += a * vec_expf(x[i] - m);
}

static float max_row(const float *x, int64_t n)
{
    float acc[FL];
    for (int j = 0; j < FL; j++)
        acc[j] = -INFINITY;
    int64_t i = 0;
    for (; i + FL <= n; i += FL)
        for (int j = 0; j < FL; j++)
            acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
    for (int j = 0; i + j < n; j++)
        acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
    float mx = acc[0];
    for (int j = 1; j < FL; j++)
        mx = acc[j] > mx ? acc[j] : mx;
    return mx;
}

static float log_sum_exp(const float *x, int64_t n)
{
    float mx = max_row(x, n), buf[256]; /* 256: a multiple of DL, so the sum is exp_row's */
    double acc[DL] = {0};
    for (int64_t i = 0; i < n; i += 256) {
        int64_t c = n - i < 256 ? n - i : 256;
        exp_into(x + i, mx, buf, c);
        add_lanes_d(acc, buf, c);
    }
    return mx + (float)log(sum_lanes_d(acc));
}

static void sum_squares_d(const float *x, int64_t n, double *acc)
{
    int64_t i = 0;
    for (; i + DL <= n; i += DL)
        for (int j = 0; j < DL; j++)
            acc[j] += (double)x[i + j] * x[i + j];
    for (int j = 0; i + j < n; j++)
        acc[j] += (double)x[i + j] * x[i + j];
}

static float rmsnorm(const float *x, const float *w, float *y, int64_t n, float eps)
{
    double acc[DL] = {0};
    sum_squares_d(x, n, acc);
    float rs = (float)(1.0 / sqrt(sum_lanes_d(acc) / (double)(n ? n : 1) + eps));
    if (w)
        for (int64_t j = 0; j < n; j++)
            y[j] = x[j] * rs * w[j];
    else
        for (int64_t j = 0; j < n; j++)
            y[j] = x[j] * rs;
    return rs;
}

static void rmsnorm_back(const float *x, const float *w, const float *dy, float rs, float *dx, int64_t n)
{
    double acc[DL] = {0};
    int64_t i = 0;
    if (w) {
        for (; i + DL <= n; i += DL)
            for (int j = 0; j < DL; j++)
                acc[j] += (double)(dy[i + j] * w[i + j]) * x[i + j];
        for (int j = 0; i + j < n; j++)
            acc[j] += (double)(dy[i + j] * w[i + j]) * x[i + j];
    } else {
        for (; i + DL <= n; i += DL)
            for (int j = 0; j < DL; j++)
                acc[j] += (double)dy[i + j] * x[i + j];
        for (int j = 0; i + j < n; j++)
            acc[j] += (double)dy[i + j] * x[i + j];
    }
    float c = (float)(sum_lanes_d(acc) / (double)n) * rs * rs * rs;
    if (w)
        for (int64_t j = 0; j < n; j++)
            dx[j] += rs * dy[j] * w[j] - c * x[j];
    else
        for (int64_t j = 0; j < n; j++)
            dx[j] += rs * dy[j] - c * x[j];
}

static void rmsnorm_wgrad(const float *x, const float *dy, float rs, float *dw, int64_t n)
{
    for (int64_t j = 0; j < n; j++)
        dw[j] += dy[j] * x[j] * rs;
}

static void rope_head(const float *x, float *y, int acc, const float *cs, float dir, int n_rot, int hd,
                      int interleaved)
{
    const int half = n_rot / 2;
    /* (first, second) of pair i: (2i, 2i+1) or (i, i+half) */
    const int step = interleaved ? 2 : 1, off = interleaved ? 1 : half;
    if (acc)
        for (int i = 0; i < half; i++) {
            float a = x[step * i], b = x[step * i + off], c = cs[2 * i], s = dir * cs[2 * i + 1];
            y[step * i] += a * c - b * s;
            y[step * i + off] += a * s + b * c;
        }
    else
        for (int i = 0; i < half; i++) {
            float a = x[step * i], b = x[step * i + off], c = cs[2 * i], s = dir * cs[2 * i + 1];
            y[step * i] = a * c - b * s;
            y[step * i + off] = a * s + b * c;
        }
    for (int i = n_rot; i < hd; i++)
        y[i] = acc ? y[i] + x[i] : x[i];
}

static inline float sigmoid(float x)
{
    return 1.0f / (1.0f + vec_expf(-x));
}

static void silu(const float *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] * sigmoid(x[i]);
}

static void silu_back(const float *x, const float *dy, float *dx, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float s = sigmoid(x[i]);
        dx[i] += dy[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}

static void swiglu(const float *a, const float *b, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = a[i] * sigmoid(a[i]) * b[i];
}

static void swiglu_back(const float *a, const float *b, const float *dy, float *da, float *db, int64_t n)
{
    if (da)
        for (int64_t i = 0; i < n; i++) {
            float s = sigmoid(a[i]);
            da[i] += dy[i] * b[i] * s * (1.0f + a[i] * (1.0f - s));
        }
    if (db)
        for (int64_t i = 0; i < n; i++)
            db[i] += dy[i] * a[i] * sigmoid(a[i]);
}

const tensor_vec_ops VEC_CAT(tensor_vec, VEC_SUFFIX) = {
    .dot = dot,
    .axpy = axpy,
    .scale = scale,
    .exp_row = exp_row,
    .exp_axpy = exp_axpy,
    .max_row = max_row,
    .log_sum_exp = log_sum_exp,
    .rmsnorm = rmsnorm,
    .rmsnorm_back = rmsnorm_back,
    .rmsnorm_wgrad = rmsnorm_wgrad,
    .rope_head = rope_head,
    .silu = silu,
    .silu_back = silu_back,
    .swiglu = swiglu,
    .swiglu_back = swiglu_back,
};

#ifdef VEC_BASELINE
#include "qtc/runtime.h"

#ifdef QTC_VEC_X86
extern const tensor_vec_ops tensor_vec_avx2, tensor_vec_avx512;
#endif

const tensor_vec_ops *tensor_vec_for(int path)
{
#ifdef QTC_VEC_X86
    if (path == QTC_CPU_AVX512)
        return &tensor_vec_avx512;
    if (path == QTC_CPU_AVX2)
        return &tensor_vec_avx2;
#endif
    (void)path;
    return &tensor_vec_baseline;
}

const tensor_vec_ops *tensor_vec(void)
{
    return tensor_vec_for(qtc_cpu_get());
}
#endif
