/* test_vec.c: the row kernels of every instruction-set path (tensor/vec.c,
 * quant/qvec.c), white-box through their tables: the baseline path against
 * double-precision loops, every other path this CPU has against the baseline,
 * exp against double exp over a dense sweep, and the path choice (QTC_CPU).
 * Tolerances: float kernels within a few ulp of baseline elementwise (5e-7
 * relative), sums within 4 eps of the sum of |terms| per accumulated term
 * group; quantization kernels bit for bit on every path. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../quant/quant_private.h"
#include "../tensor/tensor_private.h"
#include "harness.h"
#include "qtc/rng.h"
#include "qtc/runtime.h"

static const int64_t lens[] = {1, 2, 3, 7, 15, 16, 17, 31, 33, 64, 100, 255, 256, 257, 1000, 4099};
#define N_LENS (int)(sizeof lens / sizeof lens[0])

static void fill(qtc_rng *r, float *x, int64_t n, float spread)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = spread * (2 * qtc_rng_uniform(r) - 1);
}

static int close_f(float got, double want, double rtol, double atol)
{
    return fabs((double)got - want) <= atol + rtol * fabs(want);
}

/* ulps between a float and the double it approximates, measured in the float's ulp */
static double ulps(float got, double want)
{
    float w = (float)want;
    double ulp = nextafterf(fabsf(w), INFINITY) - fabsf(w);
    return fabs((double)got - want) / ulp;
}

TEST(cpu_env_variable_caps_the_path)
{
    /* run before any test switches paths; run.sh also runs it under QTC_CPU=baseline */
    qtc_cpu_path want = qtc_cpu_best(), p;
    const char *env = getenv("QTC_CPU");
    if (env && qtc_cpu_parse(env, &p) == 0 && p < want)
        want = p;
    CHECK_MSG(qtc_cpu_get() == want, "QTC_CPU=%s: path %s, want %s", env ? env : "(unset)",
              qtc_cpu_name(qtc_cpu_get()), qtc_cpu_name(want));
    if (env && strcmp(env, "baseline") == 0)
        CHECK(qtc_cpu_get() == QTC_CPU_BASELINE);
}

TEST(cpu_paths_parse_switch_and_refuse_what_is_missing)
{
    qtc_cpu_path saved = qtc_cpu_get(), p;
    for (int i = 0; i < 3; i++) {
        CHECK(qtc_cpu_parse(qtc_cpu_name((qtc_cpu_path)i), &p) == 0 && p == (qtc_cpu_path)i);
        int ok = qtc_cpu_set((qtc_cpu_path)i) == 0;
        CHECK(ok == (i <= (int)qtc_cpu_best()));
        CHECK(qtc_cpu_get() == (ok ? (qtc_cpu_path)i : qtc_cpu_best()));
        if (ok) /* the table follows the setting */
            CHECK(tensor_vec() == tensor_vec_for(i) && quant_vec() == quant_vec_for(i));
        else
            qtc_cpu_set(qtc_cpu_best());
    }
    CHECK(qtc_cpu_parse("avx3", &p) == -1 && qtc_cpu_name((qtc_cpu_path)7) == NULL);
    CHECK(qtc_cpu_set((qtc_cpu_path)-1) == -1);
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        CHECK(qtc_cpu_best() >= QTC_CPU_AVX2);
#endif
    CHECK(qtc_cpu_set(saved) == 0);
}

TEST(vec_exp_within_2_ulp_of_double_exp_on_every_path)
{
    const int64_t n = 1 << 21;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    CHECK(x && y);
    for (int path = 0; path <= (int)qtc_cpu_best(); path++) {
        const tensor_vec_ops *tv = tensor_vec_for(path);
        /* dense over the normal results, and all of [-1, 1] at 2^-20 */
        for (int pass = 0; pass < 2; pass++) {
            double lo = pass ? -1.0 : -87.3, hi = pass ? 1.0 : 88.7;
            for (int64_t i = 0; i < n; i++)
                x[i] = (float)(lo + (hi - lo) * (double)i / (double)(n - 1));
            tv->exp_row(x, 0.0f, y, n);
            double worst = 0;
            int64_t at = 0;
            for (int64_t i = 0; i < n; i++) {
                double u = ulps(y[i], exp((double)x[i]));
                if (u > worst)
                    worst = u, at = i;
            }
            CHECK_MSG(worst <= 2.0, "%s: exp(%.9g) = %.9g, %.2f ulp from %.9g", qtc_cpu_name(path), x[at],
                      y[at], worst, exp((double)x[at]));
        }
        /* subnormal results: within 2 of the smallest subnormal */
        for (int64_t i = 0; i < 4096; i++)
            x[i] = -87.4f - 16.0f * (float)i / 4096.0f;
        tv->exp_row(x, 0.0f, y, 4096);
        for (int64_t i = 0; i < 4096; i++)
            CHECK_MSG(fabs(y[i] - exp((double)x[i])) <= 2 * 1.401298464e-45, "%s: exp(%g) = %g",
                      qtc_cpu_name(path), x[i], y[i]);
        float sp[6] = {0.0f, -INFINITY, INFINITY, NAN, 89.0f, -200.0f}, sy[6];
        tv->exp_row(sp, 0.0f, sy, 6);
        CHECK(sy[0] == 1.0f && sy[1] == 0.0f && isinf(sy[2]) && sy[2] > 0 && isnan(sy[3]) && isinf(sy[4]) &&
              sy[5] == 0.0f);
    }
    free(x);
    free(y);
}

/* double references of the float kernels */
static double dsig(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

TEST(vec_float_kernels_baseline_match_double_and_paths_match_baseline)
{
    qtc_rng r;
    qtc_rng_seed(&r, 77);
    const int64_t M = 4099;
    float *a = malloc(M * sizeof(float)), *b = malloc(M * sizeof(float)), *c = malloc(M * sizeof(float));
    float *w = malloc(M * sizeof(float)), *y0 = malloc(M * sizeof(float)), *y1 = malloc(M * sizeof(float));
    float *z0 = malloc(M * sizeof(float)), *z1 = malloc(M * sizeof(float));
    CHECK(a && b && c && w && y0 && y1 && z0 && z1);
    const tensor_vec_ops *base = tensor_vec_for(QTC_CPU_BASELINE);
    for (int li = 0; li < N_LENS; li++) {
        int64_t n = lens[li];
        fill(&r, a, n, 4.0f);
        fill(&r, b, n, 2.0f);
        fill(&r, c, n, 1.0f);
        fill(&r, w, n, 1.5f);
        double sab = 0, sabs = 0, mx = -INFINITY;
        for (int64_t i = 0; i < n; i++) {
            sab += (double)a[i] * b[i];
            sabs += fabs((double)a[i] * b[i]);
            mx = a[i] > mx ? a[i] : mx;
        }
        double sum_tol = 4 * FLT_EPSILON * ((double)n / 16 + 2) * sabs; /* lanes of n/16 terms, then 16 */
        /* baseline against double */
        CHECK_MSG(fabs(base->dot(a, b, n) - sab) <= sum_tol, "dot n=%lld", (long long)n);
        CHECK(base->max_row(a, n) == (float)mx);
        double se = 0;
        for (int64_t i = 0; i < n; i++)
            se += exp((double)a[i] - mx);
        CHECK_MSG(close_f(base->log_sum_exp(a, n), mx + log(se), 1e-6, 1e-6), "log_sum_exp n=%lld", (long long)n);
        CHECK(close_f((float)base->exp_row(a, (float)mx, y0, n), se, 2e-6, 0));
        memcpy(y0, c, n * sizeof(float));
        base->exp_axpy(a, (float)mx, -0.3f, y0, n);
        for (int64_t i = 0; i < n; i++) {
            double e = (double)-0.3f * exp((double)a[i] - mx);
            CHECK(fabs(y0[i] - (c[i] + e)) <= 2 * FLT_EPSILON * (fabs(c[i]) + fabs(e)));
        }
        memcpy(y1, c, n * sizeof(float));
        for (int path = 1; path <= (int)qtc_cpu_best(); path++) {
            tensor_vec_for(path)->exp_axpy(a, (float)mx, -0.3f, y1, n);
            for (int64_t i = 0; i < n; i++)
                CHECK(fabs(y1[i] - y0[i]) <= 2 * FLT_EPSILON * (fabs(c[i]) + fabs(y0[i] - c[i])));
            memcpy(y1, c, n * sizeof(float));
        }
        memcpy(y0, c, n * sizeof(float));
        base->axpy(n, 0.37f, a, y0);
        for (int64_t i = 0; i < n; i++)
            CHECK(fabs(y0[i] - (c[i] + (double)0.37f * a[i])) <= FLT_EPSILON * (fabs(c[i]) + fabs(0.37 * a[i])));
        /* RMSNorm forward and backward */
        double ss = 0;
        for (int64_t i = 0; i < n; i++)
            ss += (double)a[i] * a[i];
        double rs = 1.0 / sqrt(ss / n + 1e-5);
        float frs = base->rmsnorm(a, w, y0, n, 1e-5f);
        CHECK(close_f(frs, rs, 2 * FLT_EPSILON, 0));
        for (int64_t i = 0; i < n; i++)
            CHECK_MSG(close_f(y0[i], a[i] * rs * w[i], 4 * FLT_EPSILON, 1e-30), "rmsnorm n=%lld i=%lld",
                      (long long)n, (long long)i);
        memset(y0, 0, n * sizeof(float));
        base->rmsnorm_back(a, w, b, frs, y0, n);
        double dot = 0;
        for (int64_t i = 0; i < n; i++)
            dot += (double)b[i] * w[i] * a[i];
        for (int64_t i = 0; i < n; i++) {
            double want = frs * (double)b[i] * w[i] - dot / n * frs * frs * frs * a[i];
            double scale = fabs(frs * (double)b[i] * w[i]) + fabs(dot / n * frs * frs * frs * a[i]);
            CHECK_MSG(fabs(y0[i] - want) <= 8 * FLT_EPSILON * scale + 1e-30, "rmsnorm_back n=%lld i=%lld",
                      (long long)n, (long long)i);
        }
        /* SiLU and SwiGLU, forward and backward */
        base->silu(a, y0, n);
        memset(z0, 0, n * sizeof(float));
        base->silu_back(a, b, z0, n);
        for (int64_t i = 0; i < n; i++) {
            double s = dsig(a[i]);
            CHECK_MSG(close_f(y0[i], a[i] * s, 1e-6, 1e-30), "silu(%g)", a[i]);
            CHECK_MSG(close_f(z0[i], b[i] * s * (1 + a[i] * (1 - s)), 2e-6, 1e-7), "silu_back(%g)", a[i]);
        }
        base->swiglu(a, c, y0, n);
        memset(z0, 0, n * sizeof(float));
        memset(y1, 0, n * sizeof(float));
        base->swiglu_back(a, c, b, z0, y1, n);
        for (int64_t i = 0; i < n; i++) {
            double s = dsig(a[i]);
            CHECK(close_f(y0[i], a[i] * s * c[i], 1e-6, 1e-30));
            CHECK(close_f(z0[i], (double)b[i] * c[i] * s * (1 + a[i] * (1 - s)), 2e-6, 1e-7));
            CHECK(close_f(y1[i], (double)b[i] * a[i] * s, 1e-6, 1e-30));
        }
        /* every other path against the baseline */
        for (int path = 1; path <= (int)qtc_cpu_best(); path++) {
            const tensor_vec_ops *tv = tensor_vec_for(path);
            const char *pn = qtc_cpu_name(path);
            CHECK_MSG(fabs(tv->dot(a, b, n) - base->dot(a, b, n)) <= sum_tol, "%s dot n=%lld", pn, (long long)n);
            CHECK(tv->max_row(a, n) == base->max_row(a, n));
            CHECK(close_f(tv->log_sum_exp(a, n), base->log_sum_exp(a, n), 5e-7, 1e-7));
            CHECK(close_f((float)tv->exp_row(a, (float)mx, y1, n), base->exp_row(a, (float)mx, y0, n), 5e-7, 0));
            for (int64_t i = 0; i < n; i++)
                CHECK_MSG(close_f(y1[i], y0[i], 5e-7, 1e-38), "%s exp_row n=%lld i=%lld", pn, (long long)n,
                          (long long)i);
            memcpy(y0, c, n * sizeof(float));
            memcpy(y1, c, n * sizeof(float));
            base->axpy(n, -1.7f, a, y0);
            tv->axpy(n, -1.7f, a, y1);
            for (int64_t i = 0; i < n; i++) /* a fused multiply-add: within an ulp of the terms */
                CHECK(fabs(y1[i] - y0[i]) <= FLT_EPSILON * (fabs(c[i]) + fabs(1.7f * a[i])));
            CHECK(close_f(tv->rmsnorm(a, w, y1, n, 1e-5f), base->rmsnorm(a, w, y0, n, 1e-5f), 0, 0));
            for (int64_t i = 0; i < n; i++)
                CHECK_MSG(close_f(y1[i], y0[i], 5e-7, 1e-30), "%s rmsnorm n=%lld", pn, (long long)n);
            memset(y0, 0, n * sizeof(float));
            memset(y1, 0, n * sizeof(float));
            base->rmsnorm_back(a, w, b, frs, y0, n);
            tv->rmsnorm_back(a, w, b, frs, y1, n);
            for (int64_t i = 0; i < n; i++) {
                double scale = fabs(frs * (double)b[i] * w[i]) + fabs(dot / n * frs * frs * frs * a[i]);
                CHECK_MSG(fabs(y1[i] - y0[i]) <= 4 * FLT_EPSILON * scale + 1e-30, "%s rmsnorm_back", pn);
            }
            memcpy(y0, c, n * sizeof(float));
            memcpy(y1, c, n * sizeof(float));
            base->rmsnorm_wgrad(a, b, frs, y0, n);
            tv->rmsnorm_wgrad(a, b, frs, y1, n);
            for (int64_t i = 0; i < n; i++)
                CHECK(fabs(y1[i] - y0[i]) <= 2 * FLT_EPSILON * (fabs(c[i]) + fabs(a[i] * b[i] * frs)));
            base->silu(a, y0, n);
            tv->silu(a, y1, n);
            memcpy(z0, c, n * sizeof(float));
            memcpy(z1, c, n * sizeof(float));
            base->silu_back(a, b, z0, n);
            tv->silu_back(a, b, z1, n);
            for (int64_t i = 0; i < n; i++) {
                CHECK_MSG(close_f(y1[i], y0[i], 5e-7, 1e-38), "%s silu(%g)", pn, a[i]);
                CHECK_MSG(close_f(z1[i], z0[i], 5e-7, 4 * FLT_EPSILON * fabs(b[i])), "%s silu_back(%g)", pn, a[i]);
            }
            base->swiglu(a, c, y0, n);
            tv->swiglu(a, c, y1, n);
            for (int64_t i = 0; i < n; i++)
                CHECK(close_f(y1[i], y0[i], 5e-7, 1e-38));
            memset(y0, 0, n * sizeof(float));
            memset(y1, 0, n * sizeof(float));
            memset(z0, 0, n * sizeof(float));
            memset(z1, 0, n * sizeof(float));
            base->swiglu_back(a, c, b, z0, y0, n);
            tv->swiglu_back(a, c, b, z1, y1, n);
            for (int64_t i = 0; i < n; i++) {
                CHECK(close_f(z1[i], z0[i], 5e-7, 4 * FLT_EPSILON * fabs(b[i] * c[i])));
                CHECK(close_f(y1[i], y0[i], 5e-7, 1e-38));
            }
            tv->swiglu_back(a, c, b, NULL, y1, n); /* either gradient may be absent */
        }
    }
    free(a), free(b), free(c), free(w), free(y0), free(y1), free(z0), free(z1);
}

TEST(vec_rope_head_matches_double_rotation_on_every_path)
{
    qtc_rng r;
    qtc_rng_seed(&r, 5);
    float x[96], y[96], yb[96], cs[96];
    for (int layout = 0; layout < 2; layout++)
        for (int hd = 2; hd <= 96; hd += hd < 16 ? 2 : 22)
            for (int n_rot = 2; n_rot <= hd; n_rot += n_rot < 8 ? 2 : 14) {
                fill(&r, x, hd, 2.0f);
                for (int i = 0; i < n_rot / 2; i++) {
                    double ang = 0.3 + 1.7 * i;
                    cs[2 * i] = (float)cos(ang);
                    cs[2 * i + 1] = (float)sin(ang);
                }
                for (int path = 0; path <= (int)qtc_cpu_best(); path++)
                    for (int acc = 0; acc < 2; acc++) {
                        const tensor_vec_ops *tv = tensor_vec_for(path);
                        for (int i = 0; i < hd; i++)
                            y[i] = acc ? 0.5f : -9.0f;
                        tv->rope_head(x, y, acc, cs, -1.0f, n_rot, hd, layout);
                        for (int i = 0; i < hd; i++) {
                            double want = x[i];
                            int half = n_rot / 2;
                            if (i < n_rot) {
                                int p = layout ? i / 2 : i % half, first = layout ? i % 2 == 0 : i < half;
                                int o = layout ? (first ? i + 1 : i - 1) : (first ? i + half : i - half);
                                double c = cs[2 * p], s = -(double)cs[2 * p + 1];
                                want = first ? x[i] * c - x[o] * s : x[o] * s + x[i] * c;
                            }
                            want += acc ? 0.5 : 0;
                            CHECK_MSG(fabs(y[i] - want) <= 1e-6 * (fabs(x[i]) + 4), "%s hd=%d n_rot=%d i=%d",
                                      qtc_cpu_name(path), hd, n_rot, i);
                        }
                        if (path == 0 && acc == 0)
                            memcpy(yb, y, sizeof y);
                        if (path > 0 && acc == 0)
                            for (int i = 0; i < hd; i++)
                                CHECK(fabs(y[i] - yb[i]) <= 2 * FLT_EPSILON * (fabs(x[i]) + 2));
                    }
            }
}

/* qtc_int_quantize_one dequantized: the scalar definition the kernels replace */
static float fq_scalar(float x, float inv, float scale, int zero, int bits)
{
    return (float)(qtc_int_quantize_one(x, inv, zero, bits) - zero) * scale;
}

TEST(vec_quant_kernels_equal_the_scalar_code_bit_for_bit_on_every_path)
{
    qtc_rng r;
    qtc_rng_seed(&r, 11);
    const int64_t M = 4099;
    float *x = malloc(M * sizeof(float)), *y = malloc(M * sizeof(float)), *inv = malloc(M * sizeof(float));
    float *sc = malloc(M * sizeof(float)), *zf = malloc(M * sizeof(float));
    uint8_t *codes = malloc(M), *packed = malloc(M);
    CHECK(x && y && inv && sc && zf && codes && packed);
    float lut[16];
    for (int i = 0; i < 16; i++)
        lut[i] = qtc_nf4_code[i];
    for (int path = 0; path <= (int)qtc_cpu_best(); path++) {
        const quant_vec_ops *qv = quant_vec_for(path);
        const char *pn = qtc_cpu_name(path);
        for (int li = 0; li < N_LENS; li++) {
            int64_t n = lens[li];
            for (int bits = 2; bits <= 8; bits += 3)
                for (int zero = -3; zero <= 5; zero += 8) {
                    float s = 0.0137f * (float)bits, iv = 1.0f / s;
                    fill(&r, x, n, s * (float)(1 << bits));
                    /* ties (k + 1/2) s, huge values and NaN-free extremes */
                    for (int64_t i = 0; i < n; i += 5)
                        x[i] = ((float)(i % 17) - 8.5f) * s;
                    if (n > 3) {
                        x[1] = 3e38f;
                        x[2] = -3e38f;
                    }
                    qv->fake_quant(x, y, n, iv, s, (float)zero, QTC_QMIN(bits), QTC_QMAX(bits));
                    for (int64_t i = 0; i < n; i++)
                        CHECK_MSG(y[i] == fq_scalar(x[i], iv, s, zero, bits), "%s fake_quant(%g) bits %d: %g vs %g",
                                  pn, x[i], bits, y[i], fq_scalar(x[i], iv, s, zero, bits));
                    /* the backward: dx against the scalar mask, the sums against double, and
                     * (same lanes, no fused multiply-adds) the baseline's bits on every path */
                    float sums[2] = {0, 0}, bsums[2] = {0, 0};
                    double ws = 0, wz = 0, wabs = 0;
                    fill(&r, inv, n, 1.0f); /* dy */
                    memset(y, 0, n * sizeof(float));
                    qv->fake_quant_back(x, inv, y, n, iv, (float)zero, QTC_QMIN(bits), QTC_QMAX(bits), sums);
                    quant_vec_for(0)->fake_quant_back(x, inv, NULL, n, iv, (float)zero, QTC_QMIN(bits),
                                                      QTC_QMAX(bits), bsums);
                    for (int64_t i = 0; i < n; i++) {
                        float t = x[i] * iv, q = nearbyintf(t) + (float)zero;
                        int inside = q >= QTC_QMIN(bits) && q <= QTC_QMAX(bits);
                        CHECK(y[i] == (inside ? inv[i] : 0.0f));
                        double term = inside ? (double)(q - zero) - t
                                             : q < QTC_QMIN(bits) ? QTC_QMIN(bits) - zero : QTC_QMAX(bits) - zero;
                        ws += inv[i] * term;
                        wabs += fabs(inv[i] * term);
                        wz += inside ? 0 : inv[i];
                    }
                    CHECK_MSG(fabs(sums[0] - ws) <= 4 * FLT_EPSILON * ((double)n / 16 + 2) * wabs, "%s ds n=%lld", pn,
                              (long long)n);
                    CHECK(fabs(sums[1] - wz) <= 4 * FLT_EPSILON * ((double)n / 16 + 2) * n);
                    CHECK(sums[0] == bsums[0] && sums[1] == bsums[1]);
                    for (int64_t i = 0; i < n; i++) {
                        sc[i] = s * (1 + (float)(i % 3));
                        inv[i] = 1.0f / sc[i];
                        zf[i] = (float)(zero + (int)(i % 2));
                    }
                    qv->fake_quant_cols(x, y, n, inv, sc, zf, QTC_QMIN(bits), QTC_QMAX(bits));
                    for (int64_t i = 0; i < n; i++)
                        CHECK(y[i] == fq_scalar(x[i], inv[i], sc[i], (int)zf[i], bits));
                }
            for (int64_t i = 0; i < n; i++) {
                codes[i] = (uint8_t)(qtc_rng_uniform(&r) * 16) & 15;
                packed[i] = (uint8_t)(qtc_rng_uniform(&r) * 256);
            }
            qv->lut_bytes(codes, lut, 0.731f, y, n);
            for (int64_t i = 0; i < n; i++)
                CHECK_MSG(y[i] == lut[codes[i]] * 0.731f, "%s lut_bytes n=%lld", pn, (long long)n);
            for (int64_t i0 = 0; i0 < 3; i0++) {
                int64_t m = n - i0 < 1 ? 1 : n - i0;
                qv->lut_nibbles(packed, i0, lut, -1.25f, y, m);
                for (int64_t i = 0; i < m; i++) {
                    int code = (i0 + i) % 2 ? packed[(i0 + i) / 2] & 15 : packed[(i0 + i) / 2] >> 4;
                    CHECK_MSG(y[i] == lut[code] * -1.25f, "%s lut_nibbles i0=%lld n=%lld i=%lld", pn,
                              (long long)i0, (long long)m, (long long)i);
                }
                qv->int_nibbles(packed, i0, 7, 0.3f, y, m);
                for (int64_t i = 0; i < m; i++) {
                    int code = (i0 + i) % 2 ? packed[(i0 + i) / 2] & 15 : packed[(i0 + i) / 2] >> 4;
                    CHECK(y[i] == (float)(code - 7) * 0.3f);
                }
            }
            qv->int_u8(packed, 128, 0.01f, y, n);
            for (int64_t i = 0; i < n; i++)
                CHECK(y[i] == (float)(packed[i] - 128) * 0.01f);
            qv->int_s8((const int8_t *)packed, -3, 0.02f, y, n);
            for (int64_t i = 0; i < n; i++)
                CHECK(y[i] == (float)(((const int8_t *)packed)[i] + 3) * 0.02f);
        }
    }
    free(x), free(y), free(inv), free(sc), free(zf), free(codes), free(packed);
}
