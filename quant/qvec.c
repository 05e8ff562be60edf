/* qvec.c: the row kernels behind quant_vec() (quant_private.h), plain C that
 * GCC vectorizes, compiled once per instruction-set path as tensor/vec.c is
 * (see the Makefile). No kernel here fuses multiply-adds, so every path gives
 * the bits of the scalar code it replaced. */
#include "quant_private.h"

#ifndef VEC_SUFFIX
#define VEC_SUFFIX baseline
#define VEC_BASELINE 1
#endif
#define VEC_CAT_(a, b) a##_##b
#define VEC_CAT(a, b) VEC_CAT_(a, b)

/* round to nearest even as nearbyintf does in the default rounding mode, by
 * adding and subtracting 1.5 * 2^23 (SSE2 has no rounding instruction, so
 * nearbyintf would stay a call on the baseline path). t is clamped to 2^22
 * first: beyond that every value saturates the integer range anyway. */
static inline float round_even(float t)
{
    const float magic = 12582912.0f, lim = 4194304.0f;
    t = t > lim ? lim : t;
    t = t < -lim ? -lim : t;
    return (t + magic) - magic;
}

static inline float fq_one(float x, float inv, float scale, float zero, float qmin, float qmax)
{
    float v = round_even(x * inv) + zero;
    v = v <= qmin ? qmin : v;
    v = v >= qmax ? qmax : v;
    return (v - zero) * scale;
}

static void fake_quant(const float *x, float *y, int64_t n, float inv, float scale, float zero, int qmin,
                       int qmax)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = fq_one(x[i], inv, scale, zero, (float)qmin, (float)qmax);
}

static void fake_quant_cols(const float *x, float *y, int64_t n, const float *inv, const float *scale,
                            const float *zero, int qmin, int qmax)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = fq_one(x[i], inv[i], scale[i], zero[i], (float)qmin, (float)qmax);
}

static void fake_quant_back(const float *x, const float *dy, float *dx, int64_t n, float inv, float zero,
                            int qmin, int qmax, float *sums)
{
    const float lo = (float)qmin, hi = (float)qmax;
    if (dx)
        for (int64_t i = 0; i < n; i++) {
            float q = round_even(x[i] * inv) + zero;
            dx[i] += q >= lo && q <= hi ? dy[i] : 0.0f;
        }
    if (!sums)
        return;
    float acc_s[16] = {0}, acc_z[16] = {0};
    for (int64_t i0 = 0; i0 < n; i0 += 16)
        for (int j = 0; j < 16 && i0 + j < n; j++) {
            int64_t i = i0 + j;
            float t = x[i] * inv, r = round_even(t), q = r + zero;
            int inside = q >= lo && q <= hi;
            acc_s[j] += dy[i] * (inside ? r - t : q < lo ? lo - zero : hi - zero);
            acc_z[j] += inside ? 0.0f : dy[i];
        }
    for (int w = 8; w; w /= 2)
        for (int j = 0; j < w; j++) {
            acc_s[j] += acc_s[j + w];
            acc_z[j] += acc_z[j + w];
        }
    sums[0] += acc_s[0];
    sums[1] += acc_z[0];
}

/* A 16-entry table lookup does not auto-vectorize (GCC will not gather from
 * it), so the vector paths look codes up with a permute: one vpermps over the
 * whole table on AVX-512, two and a blend on AVX2. lut16 gets 16 codes (as
 * bytes below 16) from a 16-byte vector. */
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#define LUT_VECTOR 1
#endif

#if defined(__AVX512F__)
static inline void lut16(__m128i codes, const float *lut, float scale, float *y)
{
    __m512 t = _mm512_loadu_ps(lut);
    __m512 v = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(codes), t);
    _mm512_storeu_ps(y, _mm512_mul_ps(v, _mm512_set1_ps(scale)));
}
#elif defined(__AVX2__)
static inline void lut8(__m128i codes, __m256 t0, __m256 t1, __m256 s, float *y)
{
    __m256i idx = _mm256_cvtepu8_epi32(codes);
    __m256 hi = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)); /* bit 3 on top: the blend's mask */
    __m256 v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t0, idx), _mm256_permutevar8x32_ps(t1, idx), hi);
    _mm256_storeu_ps(y, _mm256_mul_ps(v, s));
}

static inline void lut16(__m128i codes, const float *lut, float scale, float *y)
{
    __m256 t0 = _mm256_loadu_ps(lut), t1 = _mm256_loadu_ps(lut + 8), s = _mm256_set1_ps(scale);
    lut8(codes, t0, t1, s, y);
    lut8(_mm_srli_si128(codes, 8), t0, t1, s, y + 8);
}
#endif

static void lut_bytes(const uint8_t *codes, const float *lut, float scale, float *y, int64_t n)
{
    int64_t i = 0;
#ifdef LUT_VECTOR
    const __m128i m = _mm_set1_epi8(15);
    for (; i + 16 <= n; i += 16)
        lut16(_mm_and_si128(_mm_loadu_si128((const __m128i *)(codes + i)), m), lut, scale, y + i);
#endif
    for (; i < n; i++)
        y[i] = lut[codes[i] & 15] * scale;
}

static void lut_nibbles(const uint8_t *packed, int64_t i0, const float *lut, float scale, float *y, int64_t n)
{
    int64_t i = 0;
    if (n > 0 && i0 % 2) { /* starts on a low nibble */
        y[0] = lut[packed[i0 / 2] & 15] * scale;
        i = 1;
    }
    const uint8_t *p = packed + (i0 + i) / 2;
    int64_t pairs = (n - i) / 2, k = 0;
#ifdef LUT_VECTOR
    const __m128i m = _mm_set1_epi8(15);
    for (; k + 8 <= pairs; k += 8) { /* 8 bytes: codes hi0 lo0 hi1 lo1 ... */
        __m128i b = _mm_loadl_epi64((const __m128i *)(p + k));
        __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), m), lo = _mm_and_si128(b, m);
        lut16(_mm_unpacklo_epi8(hi, lo), lut, scale, y + i + 2 * k);
    }
#endif
    for (; k < pairs; k++) {
        y[i + 2 * k] = lut[p[k] >> 4] * scale;
        y[i + 2 * k + 1] = lut[p[k] & 15] * scale;
    }
    if ((n - i) % 2)
        y[n - 1] = lut[p[pairs] >> 4] * scale;
}

static void int_s8(const int8_t *q, int off, float scale, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)(q[i] - off) * scale;
}

static void int_u8(const uint8_t *q, int off, float scale, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)(q[i] - off) * scale;
}

static void int_nibbles(const uint8_t *packed, int64_t i0, int off, float scale, float *y, int64_t n)
{
    int64_t i = 0;
    if (n > 0 && i0 % 2) {
        y[0] = (float)((packed[i0 / 2] & 15) - off) * scale;
        i = 1;
    }
    const uint8_t *p = packed + (i0 + i) / 2;
    int64_t pairs = (n - i) / 2;
    for (int64_t k = 0; k < pairs; k++) {
        y[i + 2 * k] = (float)((p[k] >> 4) - off) * scale;
        y[i + 2 * k + 1] = (float)((p[k] & 15) - off) * scale;
    }
    if ((n - i) % 2)
        y[n - 1] = (float)((p[pairs] >> 4) - off) * scale;
}

const quant_vec_ops VEC_CAT(quant_vec, VEC_SUFFIX) = {
    .fake_quant = fake_quant,
    .fake_quant_cols = fake_quant_cols,
    .fake_quant_back = fake_quant_back,
    .lut_bytes = lut_bytes,
    .lut_nibbles = lut_nibbles,
    .int_s8 = int_s8,
    .int_u8 = int_u8,
    .int_nibbles = int_nibbles,
};

#ifdef VEC_BASELINE
#include "qtc/runtime.h"

#ifdef QTC_VEC_X86
extern const quant_vec_ops quant_vec_avx2, quant_vec_avx512;
#endif

const quant_vec_ops *quant_vec_for(int path)
{
#ifdef QTC_VEC_X86
    if (path == QTC_CPU_AVX512)
        return &quant_vec_avx512;
    if (path == QTC_CPU_AVX2)
        return &quant_vec_avx2;
#endif
    (void)path;
    return &quant_vec_baseline;
}

const quant_vec_ops *quant_vec(void)
{
    return quant_vec_for(qtc_cpu_get());
}
#endif
