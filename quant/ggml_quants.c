/* ggml_quants.c: ggml's block formats, quantized and dequantized as ggml's
 * reference code does. Bit-exactness depends on doing the same float
 * operations in the same order without contraction into FMAs, which
 * -std=c11 guarantees (GCC's ISO modes default to -ffp-contract=off). */
#include <float.h>
#include <math.h>
#include <string.h>

#include "ggml_blocks.h"
#include "qtc/quant.h"

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define GROUP_MAX_EPS 1e-15f

static uint16_t fp16(float f)
{
    return qtc_f32_to_f16(f);
}

static float fp32(uint16_t h)
{
    return qtc_f16_to_f32(h);
}

/* ggml's nearest_int: round half to even for |x| <= 2^22 - 1, through the
 * float mantissa. Kept bit for bit, so that blocks which drive it out of
 * range (an f32-denormal block makes 1/scale infinite) still give ggml's
 * bytes rather than undefined behaviour. */
static int nearest_int(float x)
{
    float v = x + 12582912.f;
    int32_t i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

/* ggml's float-to-int8/uint8 casts as x86 executes them (cvttss2si, then the
 * low byte): truncation, and 0 where the value is NaN or out of int32 range.
 * Only those degenerate blocks reach the out-of-range case. */
static int32_t trunc_i32(float v)
{
    return v > -2147483904.f && v < 2147483648.f ? (int32_t)v : INT32_MIN;
}

static int8_t to_i8(float v)
{
    return (int8_t)(uint8_t)((uint32_t)trunc_i32(v) & 0xffu);
}

static uint8_t to_u8(float v)
{
    return (uint8_t)((uint32_t)trunc_i32(v) & 0xffu);
}

/* --- 32-element blocks --------------------------------------------------------- */

/* The value of largest magnitude, with its sign (the first of equals). */
static float signed_absmax(const float *x, int n)
{
    float amax = 0, max = 0;
    for (int j = 0; j < n; j++)
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    return max;
}

static void min_max(const float *x, int n, float *min, float *max)
{
    *min = FLT_MAX;
    *max = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < *min)
            *min = x[j];
        if (x[j] > *max)
            *max = x[j];
    }
}

static void quantize_q4_0(const float *x, block_q4_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK4_0) {
        const float d = signed_absmax(x, QK4_0) / -8, id = d ? 1.0f / d : 0.0f;
        y[i].d = fp16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            uint8_t q0 = (uint8_t)MIN(15, to_i8(x[j] * id + 8.5f));
            uint8_t q1 = (uint8_t)MIN(15, to_i8(x[j + QK4_0 / 2] * id + 8.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void dequantize_q4_0(const block_q4_0 *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK4_0) {
        const float d = fp32(x[i].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[j] = (float)((x[i].qs[j] & 0x0F) - 8) * d;
            y[j + QK4_0 / 2] = (float)((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void quantize_q4_1(const float *x, block_q4_1 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK4_1) {
        float min, max;
        min_max(x, QK4_1, &min, &max);
        const float d = (max - min) / 15, id = d ? 1.0f / d : 0.0f;
        y[i].d = fp16(d);
        y[i].m = fp16(min);
        for (int j = 0; j < QK4_1 / 2; j++) {
            uint8_t q0 = (uint8_t)MIN(15, to_i8((x[j] - min) * id + 0.5f));
            uint8_t q1 = (uint8_t)MIN(15, to_i8((x[j + QK4_1 / 2] - min) * id + 0.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void dequantize_q4_1(const block_q4_1 *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK4_1) {
        const float d = fp32(x[i].d), m = fp32(x[i].m);
        for (int j = 0; j < QK4_1 / 2; j++) {
            y[j] = (float)(x[i].qs[j] & 0x0F) * d + m;
            y[j + QK4_1 / 2] = (float)(x[i].qs[j] >> 4) * d + m;
        }
    }
}

static void quantize_q5_0(const float *x, block_q5_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK5_0) {
        const float d = signed_absmax(x, QK5_0) / -16, id = d ? 1.0f / d : 0.0f;
        y[i].d = fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_0 / 2; j++) {
            uint8_t q0 = (uint8_t)MIN(31, to_i8(x[j] * id + 16.5f));
            uint8_t q1 = (uint8_t)MIN(31, to_i8(x[j + QK5_0 / 2] * id + 16.5f));
            y[i].qs[j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= ((q0 & 0x10u) >> 4) << j; /* the fifth bits: element j at bit j */
            qh |= ((q1 & 0x10u) >> 4) << (j + QK5_0 / 2);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

static void dequantize_q5_0(const block_q5_0 *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK5_0) {
        const float d = fp32(x[i].d);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        for (int j = 0; j < QK5_0 / 2; j++) {
            int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
            y[j] = (float)(((x[i].qs[j] & 0x0F) | h0) - 16) * d;
            y[j + QK5_0 / 2] = (float)(((x[i].qs[j] >> 4) | h1) - 16) * d;
        }
    }
}

static void quantize_q5_1(const float *x, block_q5_1 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK5_1) {
        float min, max;
        min_max(x, QK5_1, &min, &max);
        const float d = (max - min) / 31, id = d ? 1.0f / d : 0.0f;
        y[i].d = fp16(d);
        y[i].m = fp16(min);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_1 / 2; j++) {
            uint8_t q0 = to_u8((x[j] - min) * id + 0.5f);
            uint8_t q1 = to_u8((x[j + QK5_1 / 2] - min) * id + 0.5f);
            y[i].qs[j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= ((q0 & 0x10u) >> 4) << j;
            qh |= ((q1 & 0x10u) >> 4) << (j + QK5_1 / 2);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

static void dequantize_q5_1(const block_q5_1 *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK5_1) {
        const float d = fp32(x[i].d), m = fp32(x[i].m);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        for (int j = 0; j < QK5_1 / 2; j++) {
            int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
            y[j] = (float)((x[i].qs[j] & 0x0F) | h0) * d + m;
            y[j + QK5_1 / 2] = (float)((x[i].qs[j] >> 4) | h1) * d + m;
        }
    }
}

static void quantize_q8_0(const float *x, block_q8_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK8_0) {
        float amax = 0;
        for (int j = 0; j < QK8_0; j++)
            amax = MAX(amax, fabsf(x[j]));
        const float d = amax / 127, id = d ? 1.0f / d : 0.0f;
        y[i].d = fp16(d);
        for (int j = 0; j < QK8_0; j++)
            y[i].qs[j] = to_i8(roundf(x[j] * id)); /* half away from zero, as ggml */
    }
}

static void dequantize_q8_0(const block_q8_0 *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK8_0) {
        const float d = fp32(x[i].d);
        for (int j = 0; j < QK8_0; j++)
            y[j] = (float)x[i].qs[j] * d;
    }
}

/* --- K-quants ------------------------------------------------------------------------- */

/* Fits y = scale * L + min (min <= 0) to n weighted values with L in [0, nmax]:
 * a first guess from the range, then nstep+1 trial scales around it refined by
 * weighted least squares. Returns the scale and -min in *neg_min. */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L,
                           float *neg_min, uint8_t *Laux, float rmin, float rdelta, int nstep)
{
    float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min)
            min = x[i];
        if (x[i] > max)
            max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0)
        min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *neg_min = -min;
        return 0.f;
    }
    float iscale = (float)nmax / (max - min), scale = 1 / iscale, best_error = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)MAX(0, MIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        best_error += w[i] * (diff * diff);
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = nearest_int(iscale * (x[i] - min));
            l = MAX(0, MIN(nmax, l));
            Laux[i] = (uint8_t)l;
            sum_l += w[i] * (float)l;
            sum_l2 += w[i] * (float)l * (float)l;
            sum_xl += w[i] * (float)l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                cur_error += w[i] * (diff * diff);
            }
            if (cur_error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *neg_min = -min;
    return scale;
}

/* The 6-bit scale and min of sub-block j from the 12 packed bytes. */
static void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m)
{
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* A K super-block's 6-bit sub-block scales Ls and mins Lm (clamped to 63)
 * packed into its 12 bytes with d and dmin as f16, then every value
 * requantized against the scales as stored. */
static void finish_k_block(const float *x, int nmax, const uint8_t *Ls, const uint8_t *Lm, float d_block, float m_block,
                           uint16_t *d_out, uint16_t *dmin_out, uint8_t *scales_out, uint8_t *L)
{
    memset(scales_out, 0, K_SCALE_SIZE);
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t ls = MIN(63, Ls[j]), lm = MIN(63, Lm[j]);
        if (j < 4) {
            scales_out[j] = ls;
            scales_out[j + 4] = lm;
        } else {
            scales_out[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            scales_out[j - 4] |= (uint8_t)((ls >> 4) << 6);
            scales_out[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *d_out = fp16(d_block);
    *dmin_out = fp16(m_block);
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t sc, m;
        scale_min_k4(j, scales_out, &sc, &m);
        const float d = fp32(*d_out) * sc;
        if (!d)
            continue;
        const float dm = fp32(*dmin_out) * m;
        for (int ii = 0; ii < 32; ii++) {
            int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)MAX(0, MIN(nmax, l));
        }
    }
}

/* Q4_K and Q5_K share everything but the bit width (nmax 15 or 31), the
 * search grid and the packing of the levels L. Fills d, dmin, scales and L. */
static void quantize_k_scales(const float *x, int nmax, float rmin, int nstep, uint16_t *d_out,
                              uint16_t *dmin_out, uint8_t *scales_out, uint8_t *L)
{
    uint8_t Laux[32];
    float w[32], mins[QK_K / 32], scales[QK_K / 32], max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++)
            sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++)
            w[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = fit_scale_min(32, nmax, x + 32 * j, w, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep);
        if (scales[j] > max_scale)
            max_scale = scales[j];
        if (mins[j] > max_min)
            max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    uint8_t Ls[QK_K / 32], Lm[QK_K / 32];
    for (int j = 0; j < QK_K / 32; j++) {
        Ls[j] = (uint8_t)nearest_int(inv_scale * scales[j]);
        Lm[j] = (uint8_t)nearest_int(inv_min * mins[j]);
    }
    finish_k_block(x, nmax, Ls, Lm, max_scale / 63.f, max_min / 63.f, d_out, dmin_out, scales_out, L);
}

/* The levels L of a Q4_K super-block into its nibbles: low nibbles 32 values, high the next 32. */
static void pack_q4_K(block_q4_K *y, const uint8_t *L)
{
    uint8_t *q = y->qs;
    for (int j = 0; j < QK_K; j += 64, q += 32)
        for (int l = 0; l < 32; l++)
            q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
}

static void quantize_q4_K(const float *x, block_q4_K *y, int64_t nb)
{
    uint8_t L[QK_K];
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        quantize_k_scales(x, 15, -1.f, 20, &y[i].d, &y[i].dmin, y[i].scales, L);
        pack_q4_K(&y[i], L);
    }
}

static void dequantize_q4_K(const block_q4_K *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *q = x[i].qs;
        const float d = fp32(x[i].d), min = fp32(x[i].dmin);
        for (int j = 0, is = 0; j < QK_K; j += 64, q += 32, is += 2) {
            uint8_t sc, m;
            scale_min_k4(is, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (float)(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

/* The 5-bit levels L of a Q5_K super-block: low nibbles as Q4_K, fifth bits in qh. */
static void pack_q5_K(block_q5_K *y, const uint8_t *L)
{
    uint8_t *qh = y->qh, *ql = y->qs;
    memset(qh, 0, QK_K / 8);
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < QK_K; n += 64, ql += 32) {
        for (int j = 0; j < 32; j++) {
            int l1 = L[n + j], l2 = L[n + j + 32];
            if (l1 > 15) {
                l1 -= 16;
                qh[j] |= m1;
            }
            if (l2 > 15) {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[j] = (uint8_t)(l1 | (l2 << 4));
        }
        m1 = (uint8_t)(m1 << 2);
        m2 = (uint8_t)(m2 << 2);
    }
}

static void quantize_q5_K(const float *x, block_q5_K *y, int64_t nb)
{
    uint8_t L[QK_K];
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        quantize_k_scales(x, 31, -0.5f, 15, &y[i].d, &y[i].dmin, y[i].scales, L);
        pack_q5_K(&y[i], L);
    }
}

static void dequantize_q5_K(const block_q5_K *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *ql = x[i].qs, *qh = x[i].qh;
        const float d = fp32(x[i].d), min = fp32(x[i].dmin);
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0, is = 0; j < QK_K; j += 64, ql += 32, is += 2) {
            uint8_t sc, m;
            scale_min_k4(is, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (float)((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * (float)((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            u1 = (uint8_t)(u1 << 2);
            u2 = (uint8_t)(u2 << 2);
        }
    }
}

/* Symmetric levels L in [0, 2 nmax) for n values, with the weighted
 * least-squares scale over 19 trial scales; weights qw, or x^2 when qw is
 * NULL (ggml's make_qx_quants, rmse_type 1). */
static float fit_scale_sym(int n, int nmax, const float *x, int8_t *L, const float *qw)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            max = x[i];
        }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = (float)-nmax / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * x[i]);
        l = MAX(-nmax, MIN(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
        float w = qw ? qw[i] : x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0)
            continue;
        iscale = -((float)nmax + 0.1f * (float)is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = nearest_int(iscale * x[i]);
            l = MAX(-nmax, MIN(nmax - 1, l));
            float w = qw ? qw[i] : x[i] * x[i];
            sumlx += w * x[i] * (float)l;
            suml2 += w * (float)l * (float)l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) {
                int l = nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + MAX(-nmax, MIN(nmax - 1, l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* imp (NULL: none) weights each value's error, as llama.cpp's quantize_q6_K
 * with an importance matrix (the raw importance, without ggml's sigma term). */
static void quantize_q6_K(const float *x, block_q6_K *y, int64_t nb, const float *imp)
{
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < nb; i++, x += QK_K, imp = imp ? imp + QK_K : NULL) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < QK_K / 16; ib++) {
            scales[ib] = fit_scale_sym(16, 32, x + 16 * ib, L + 16 * ib, imp ? imp + 16 * ib : NULL);
            if (fabsf(scales[ib]) > max_abs_scale) {
                max_abs_scale = fabsf(scales[ib]);
                max_scale = scales[ib];
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        float iscale = -128.f / max_scale;
        y[i].d = fp16(1 / iscale);
        for (int ib = 0; ib < QK_K / 16; ib++)
            y[i].scales[ib] = (int8_t)MIN(127, nearest_int(iscale * scales[ib]));
        for (int j = 0; j < QK_K / 16; j++) {
            float d = fp32(y[i].d) * y[i].scales[j];
            if (!d)
                continue;
            for (int ii = 0; ii < 16; ii++) {
                int l = nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = (int8_t)(MAX(-32, MIN(31, l)) + 32);
            }
        }
        uint8_t *ql = y[i].ql, *qh = y[i].qh;
        for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32)
            for (int l = 0; l < 32; l++) {
                const uint8_t *Lj = (const uint8_t *)L + j + l;
                ql[l] = (uint8_t)((Lj[0] & 0xF) | ((Lj[64] & 0xF) << 4));
                ql[l + 32] = (uint8_t)((Lj[32] & 0xF) | ((Lj[96] & 0xF) << 4));
                qh[l] = (uint8_t)((Lj[0] >> 4) | ((Lj[32] >> 4) << 2) | ((Lj[64] >> 4) << 4) |
                                  ((Lj[96] >> 4) << 6));
            }
    }
}

static void dequantize_q6_K(const block_q6_K *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        const float d = fp32(x[i].d);
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int n = 0; n < QK_K; n += 128, y += 128, ql += 64, qh += 32, sc += 8)
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * sc[is] * (float)q1;
                y[l + 32] = d * sc[is + 2] * (float)q2;
                y[l + 64] = d * sc[is + 4] * (float)q3;
                y[l + 96] = d * sc[is + 6] * (float)q4;
            }
    }
}

/* --- importance-weighted quantization (llama.cpp's quantize_* with quant_weights) --------- */

/* Non-negative levels L in [0, nmax] for n values x >= 0 (a super-block's
 * scales or mins) with scale = weighted least squares: the best of 9 trial
 * scales, then up to 5 rounds of moving single levels (ggml's make_qp_quants). */
static float fit_scale_pos(int n, int nmax, const float *x, uint8_t *L, const float *w)
{
    float max = 0;
    for (int i = 0; i < n; i++)
        max = MAX(max, x[i]);
    if (max < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = (float)nmax / max;
    for (int i = 0; i < n; i++)
        L[i] = (uint8_t)nearest_int(iscale * x[i]);
    float scale = 1 / iscale, best_mse = 0;
    for (int i = 0; i < n; i++) {
        float diff = x[i] - scale * L[i];
        best_mse += w[i] * diff * diff;
    }
    for (int is = -4; is <= 4; is++) {
        if (is == 0)
            continue;
        float iscale_is = (0.1f * (float)is + (float)nmax) / max, scale_is = 1 / iscale_is, mse = 0;
        for (int i = 0; i < n; i++) {
            int l = MIN(nmax, nearest_int(iscale_is * x[i]));
            float diff = x[i] - scale_is * (float)l;
            mse += w[i] * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = MIN(nmax, nearest_int(iscale * x[i]));
        L[i] = (uint8_t)l;
        sumlx += w[i] * x[i] * (float)l;
        suml2 += w[i] * (float)l * (float)l;
    }
    for (int itry = 0; itry < 5; itry++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float slx = sumlx - w[i] * x[i] * L[i], sl2 = suml2 - w[i] * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                int new_l = MIN(nmax, nearest_int(x[i] * sl2 / slx));
                if (new_l != L[i]) {
                    slx += w[i] * x[i] * (float)new_l;
                    sl2 += w[i] * (float)new_l * (float)new_l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed)
            break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* The error weights of a block of n values: importance * sqrt(sigma2 + x^2). */
static void block_weights(const float *x, const float *imp, int n, float sigma2, float *w)
{
    for (int j = 0; j < n; j++)
        w[j] = imp[j] * sqrtf(sigma2 + x[j] * x[j]);
}

static float mean_square(const float *x, int64_t n)
{
    float sum_x2 = 0;
    for (int64_t j = 0; j < n; j++)
        sum_x2 += x[j] * x[j];
    return sum_x2 / (float)n;
}

/* The 32 levels L of a 32-value block: low nibbles of values j and j + 16 in
 * qs[j], and with qh (5 bits) the fifth bit of value j at bit j of qh. */
static void pack_levels(uint8_t *qs, uint8_t *qh, const uint8_t *L)
{
    uint32_t h = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((L[j] & 0x0F) | ((L[j + 16] & 0x0F) << 4));
        h |= (((uint32_t)L[j] & 0x10u) >> 4) << j;
        h |= (((uint32_t)L[j + 16] & 0x10u) >> 4) << (j + 16);
    }
    if (qh)
        memcpy(qh, &h, 4);
}

/* Q4_0 (bits 4) and Q5_0 (bits 5) of one row of n values: symmetric levels by weighted least squares. */
static void quantize_x_0_weighted(int bits, const float *x, void *blocks, int64_t n, const float *imp)
{
    const float sigma2 = mean_square(x, n);
    float w[32];
    int8_t L[32];
    for (int64_t ib = 0; ib < n / 32; ib++, x += 32, imp += 32) {
        block_weights(x, imp, 32, sigma2, w);
        float d = fit_scale_sym(32, 1 << (bits - 1), x, L, w);
        if (bits == 4) {
            block_q4_0 *y = (block_q4_0 *)blocks + ib;
            y->d = fp16(d);
            pack_levels(y->qs, NULL, (const uint8_t *)L);
        } else {
            block_q5_0 *y = (block_q5_0 *)blocks + ib;
            y->d = fp16(d);
            pack_levels(y->qs, y->qh, (const uint8_t *)L);
        }
    }
}

/* Q4_1 and Q5_1: scale and min by weighted least squares over 37 trial scales. */
static void quantize_x_1_weighted(int bits, const float *x, void *blocks, int64_t n, const float *imp)
{
    const float sigma2 = mean_square(x, n);
    float w[32];
    uint8_t L[32], Laux[32];
    for (int64_t ib = 0; ib < n / 32; ib++, x += 32, imp += 32) {
        block_weights(x, imp, 32, sigma2, w);
        float neg_min, d = fit_scale_min(32, (1 << bits) - 1, x, w, L, &neg_min, Laux, -0.9f, 0.05f, 36);
        if (bits == 4) {
            block_q4_1 *y = (block_q4_1 *)blocks + ib;
            y->d = fp16(d);
            y->m = fp16(-neg_min);
            pack_levels(y->qs, NULL, L);
        } else {
            block_q5_1 *y = (block_q5_1 *)blocks + ib;
            y->d = fp16(d);
            y->m = fp16(-neg_min);
            pack_levels(y->qs, y->qh, L);
        }
    }
}

/* Q4_K and Q5_K super-blocks with importance: sub-block scale and min by
 * weighted least squares (37 trial scales), then the 6-bit scales and mins
 * fitted to them weighted by each sub-block's total weight. */
static void quantize_k_scales_weighted(const float *x, const float *imp, int nmax, uint16_t *d_out, uint16_t *dmin_out,
                                       uint8_t *scales_out, uint8_t *L)
{
    uint8_t Laux[32], Ls[QK_K / 32], Lm[QK_K / 32];
    float w[32], sw[QK_K / 32], mins[QK_K / 32], scales[QK_K / 32];
    float sigma2 = 2 * mean_square(x, QK_K);
    for (int j = 0; j < QK_K / 32; j++) {
        block_weights(x + 32 * j, imp + 32 * j, 32, sigma2, w);
        float sumw = 0;
        for (int l = 0; l < 32; l++)
            sumw += w[l];
        sw[j] = sumw;
        scales[j] = fit_scale_min(32, nmax, x + 32 * j, w, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f, 36);
    }
    float d_block = fit_scale_pos(QK_K / 32, 63, scales, Ls, sw), m_block = fit_scale_pos(QK_K / 32, 63, mins, Lm, sw);
    finish_k_block(x, nmax, Ls, Lm, d_block, m_block, d_out, dmin_out, scales_out, L);
}

int qtc_dtype_takes_importance(qtc_dtype t)
{
    return t == QTC_Q4_0 || t == QTC_Q4_1 || t == QTC_Q5_0 || t == QTC_Q5_1 || t == QTC_Q4_K || t == QTC_Q5_K ||
           t == QTC_Q6_K;
}

qtc_status qtc_quantize_row_weighted(qtc_dtype t, const float *x, void *y, int64_t n, const float *imp, qtc_error *err)
{
    if (!imp || !qtc_dtype_takes_importance(t))
        return qtc_quantize_row(t, x, y, n, err);
    const qtc_dtype_traits *tr = qtc_dtype_info(t);
    if (n % tr->block_size)
        return qtc_error_set(err, QTC_ERR_USAGE, "cannot quantize %lld values to %s", (long long)n, tr->name);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return qtc_error_set(err, QTC_ERR_NUMERIC, "element %lld is %s", (long long)i, isnan(x[i]) ? "NaN" : "infinite");
    int64_t nb = n / tr->block_size;
    uint8_t L[QK_K];
    switch (t) {
    case QTC_Q4_0: quantize_x_0_weighted(4, x, y, n, imp); break;
    case QTC_Q5_0: quantize_x_0_weighted(5, x, y, n, imp); break;
    case QTC_Q4_1: quantize_x_1_weighted(4, x, y, n, imp); break;
    case QTC_Q5_1: quantize_x_1_weighted(5, x, y, n, imp); break;
    case QTC_Q4_K:
        for (int64_t i = 0; i < nb; i++) {
            block_q4_K *b = (block_q4_K *)y + i;
            quantize_k_scales_weighted(x + i * QK_K, imp + i * QK_K, 15, &b->d, &b->dmin, b->scales, L);
            pack_q4_K(b, L);
        }
        break;
    case QTC_Q5_K:
        for (int64_t i = 0; i < nb; i++) {
            block_q5_K *b = (block_q5_K *)y + i;
            quantize_k_scales_weighted(x + i * QK_K, imp + i * QK_K, 31, &b->d, &b->dmin, b->scales, L);
            pack_q5_K(b, L);
        }
        break;
    default: quantize_q6_K(x, y, nb, imp); break;
    }
    return QTC_OK;
}

/* --- dispatch ------------------------------------------------------------------------- */

static const struct {
    qtc_dtype dtype;
    int ggml;
} ggml_ids[] = {
    {QTC_F32, 0},   {QTC_F16, 1},   {QTC_Q4_0, 2}, {QTC_Q4_1, 3}, {QTC_Q5_0, 6},
    {QTC_Q5_1, 7},  {QTC_Q8_0, 8},  {QTC_Q4_K, 12}, {QTC_Q5_K, 13}, {QTC_Q6_K, 14},
    {QTC_I8, 24},   {QTC_I16, 25},  {QTC_I32, 26}, {QTC_I64, 27}, {QTC_F64, 28},
    {QTC_BF16, 30},
};

int qtc_dtype_to_ggml(qtc_dtype t)
{
    for (size_t i = 0; i < sizeof ggml_ids / sizeof *ggml_ids; i++)
        if (ggml_ids[i].dtype == t)
            return ggml_ids[i].ggml;
    return -1;
}

int qtc_dtype_from_ggml(uint32_t ggml_type)
{
    for (size_t i = 0; i < sizeof ggml_ids / sizeof *ggml_ids; i++)
        if ((uint32_t)ggml_ids[i].ggml == ggml_type)
            return (int)ggml_ids[i].dtype;
    return -1;
}

double qtc_dtype_bpw(qtc_dtype t)
{
    const qtc_dtype_traits *tr = qtc_dtype_info(t);
    return tr ? 8.0 * tr->type_size / tr->block_size : 0;
}

qtc_status qtc_quantize_row(qtc_dtype t, const float *x, void *y, int64_t n, qtc_error *err)
{
    const qtc_dtype_traits *tr = qtc_dtype_info(t);
    if (!tr || n % tr->block_size)
        return qtc_error_set(err, QTC_ERR_USAGE, "cannot quantize %lld values to %s",
                             (long long)n, tr ? tr->name : "an unknown type");
    if (tr->is_quantized)
        for (int64_t i = 0; i < n; i++)
            if (!isfinite(x[i]))
                return qtc_error_set(err, QTC_ERR_NUMERIC, "element %lld is %s", (long long)i,
                                     isnan(x[i]) ? "NaN" : "infinite");
    int64_t nb = n / tr->block_size;
    switch (t) {
    case QTC_F32: memcpy(y, x, (size_t)n * sizeof(float)); break;
    case QTC_F16: qtc_f32_to_f16_row(x, y, n); break;
    case QTC_BF16: qtc_f32_to_bf16_row(x, y, n); break;
    case QTC_Q4_0: quantize_q4_0(x, y, nb); break;
    case QTC_Q4_1: quantize_q4_1(x, y, nb); break;
    case QTC_Q5_0: quantize_q5_0(x, y, nb); break;
    case QTC_Q5_1: quantize_q5_1(x, y, nb); break;
    case QTC_Q8_0: quantize_q8_0(x, y, nb); break;
    case QTC_Q4_K: quantize_q4_K(x, y, nb); break;
    case QTC_Q5_K: quantize_q5_K(x, y, nb); break;
    case QTC_Q6_K: quantize_q6_K(x, y, nb, NULL); break;
    default:
        return qtc_error_set(err, QTC_ERR_USAGE, "%s is not a quantized storage type", tr->name);
    }
    return QTC_OK;
}

void qtc_dequantize_row(qtc_dtype t, const void *x, float *y, int64_t n)
{
    int64_t nb = n / qtc_dtype_info(t)->block_size;
    switch (t) {
    case QTC_Q4_0: dequantize_q4_0(x, y, nb); break;
    case QTC_Q4_1: dequantize_q4_1(x, y, nb); break;
    case QTC_Q5_0: dequantize_q5_0(x, y, nb); break;
    case QTC_Q5_1: dequantize_q5_1(x, y, nb); break;
    case QTC_Q8_0: dequantize_q8_0(x, y, nb); break;
    case QTC_Q4_K: dequantize_q4_K(x, y, nb); break;
    case QTC_Q5_K: dequantize_q5_K(x, y, nb); break;
    case QTC_Q6_K: dequantize_q6_K(x, y, nb); break;
    case QTC_F32: memcpy(y, x, (size_t)n * sizeof(float)); break;
    case QTC_F16: qtc_f16_to_f32_row(x, y, n); break;
    case QTC_BF16: qtc_bf16_to_f32_row(x, y, n); break;
    default: {
        qtc_error e;
        qtc_tensor *w = qtc_tensor_wrap(t, 1, QTC_SHAPE(n), (void *)(uintptr_t)x, NULL, &e);
        for (int64_t i = 0; w && i < n; i++)
            y[i] = (float)qtc_tensor_get(w, i);
        qtc_tensor_free(w);
    }
    }
}
