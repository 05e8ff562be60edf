/* dtype.c: the dtype table and f16/bf16 conversion.
 *
 * The conversions are written with integer operations so that they round to
 * nearest even whatever the FPU's rounding mode, and so they are exact on every
 * platform. */
#include "qtc/tensor.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

static const qtc_dtype_traits dtype_table[QTC_DTYPE_COUNT] = {
    [QTC_F32] = {"f32", 1, 4, 1, 0},
    [QTC_F16] = {"f16", 1, 2, 1, 0},
    [QTC_BF16] = {"bf16", 1, 2, 1, 0},
    [QTC_F64] = {"f64", 1, 8, 1, 0},
    [QTC_I8] = {"i8", 1, 1, 0, 0},
    [QTC_U8] = {"u8", 1, 1, 0, 0},
    [QTC_I16] = {"i16", 1, 2, 0, 0},
    [QTC_I32] = {"i32", 1, 4, 0, 0},
    [QTC_I64] = {"i64", 1, 8, 0, 0},
    [QTC_Q4_0] = {"q4_0", 32, 18, 0, 1},
    [QTC_Q4_1] = {"q4_1", 32, 20, 0, 1},
    [QTC_Q5_0] = {"q5_0", 32, 22, 0, 1},
    [QTC_Q5_1] = {"q5_1", 32, 24, 0, 1},
    [QTC_Q8_0] = {"q8_0", 32, 34, 0, 1},
    [QTC_Q4_K] = {"q4_k", 256, 144, 0, 1},
    [QTC_Q5_K] = {"q5_k", 256, 176, 0, 1},
    [QTC_Q6_K] = {"q6_k", 256, 210, 0, 1},
};

const qtc_dtype_traits *qtc_dtype_info(qtc_dtype t)
{
    if ((int)t < 0 || t >= QTC_DTYPE_COUNT || !dtype_table[t].name)
        return NULL;
    return &dtype_table[t];
}

int qtc_dtype_from_name(const char *name)
{
    for (int t = 0; t < QTC_DTYPE_COUNT; t++)
        if (dtype_table[t].name && strcasecmp(dtype_table[t].name, name) == 0)
            return t;
    return -1;
}

size_t qtc_dtype_row_size(qtc_dtype t, int64_t n)
{
    const qtc_dtype_traits *tr = qtc_dtype_info(t);
    if (!tr || n < 0 || n > QTC_MAX_NUMEL || n % tr->block_size != 0)
        return SIZE_MAX;
    return (size_t)(n / tr->block_size) * (size_t)tr->type_size;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t qtc_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) { /* NaN: keep the top payload bits, stay a NaN */
        uint16_t m = (uint16_t)((ax >> 13) & 0x3ffu);
        return (uint16_t)(sign | 0x7c00u | (m ? m : 0x200u));
    }
    if (ax >= 0x477ff000u) /* >= 65520, the midpoint above 65504: Inf */
        return (uint16_t)(sign | 0x7c00u);
    if (ax >= 0x38800000u) { /* normal f16: drop 13 bits, ties to even */
        uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u);
        return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
    }
    /* f16 subnormal or zero: round (value * 2^24) to an integer, ties to even */
    uint32_t e = ax >> 23;
    uint32_t shift = 126 - e;
    if (e == 0 || shift > 24)
        return sign;
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return (uint16_t)(sign | q);
}

float qtc_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        if (m == 0)
            return bits_f32(sign);
        /* subnormal: m * 2^-24, normalised */
        uint32_t shift = 0;
        while (!(m & 0x400u)) {
            m <<= 1;
            shift++;
        }
        m &= 0x3ffu;
        return bits_f32(sign | ((113u - shift) << 23) | (m << 13));
    }
    if (e == 31)
        return bits_f32(sign | 0x7f800000u | (m << 13));
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

uint16_t qtc_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) { /* NaN: truncating could make it Inf */
        uint16_t h = (uint16_t)(x >> 16);
        return (uint16_t)((h & 0x7fu) ? h : (h | 0x40u));
    }
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

float qtc_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

void qtc_f32_to_f16_row(const float *x, uint16_t *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = qtc_f32_to_f16(x[i]);
}

void qtc_f16_to_f32_row(const uint16_t *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = qtc_f16_to_f32(x[i]);
}

void qtc_f32_to_bf16_row(const float *x, uint16_t *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = qtc_f32_to_bf16(x[i]);
}

void qtc_bf16_to_f32_row(const uint16_t *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = qtc_bf16_to_f32(x[i]);
}
