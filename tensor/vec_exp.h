/* vec_exp.h: exp in plain C that compilers vectorize (libm's expf does not
 * vectorize without -ffast-math), for tensor/vec.c. Included by tensor/ only.
 *
 * exp(x) = 2^n e^r, n = round(x log2 e), r = x - n ln2 in two parts (Cody and
 * Waite: n ln2_hi is exact for |n| < 2^9), e^r on |r| <= ln2/2 by its Taylor
 * polynomial of degree 7 (truncation below 1e-8 relative), 2^n as two
 * exponent-field floats so results between 2^-149 and 2^-126 still come out
 * (subnormal: rounded twice). x is clamped to [-104, 88.8]: past either end the
 * result is 0 or +inf anyway; NaN passes through. Measured within 2 ulp of
 * double exp rounded to float over [-87, 88] (tests/test_vec.c). */
#ifndef QTC_VEC_EXP_H
#define QTC_VEC_EXP_H

#include <stdint.h>
#include <string.h>

static inline uint32_t vec_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float vec_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float vec_expf(float x)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    x = x > 88.8f ? 88.8f : x;
    x = x < -104.0f ? -104.0f : x;
    float t = x * 1.44269504088896341f + magic;
    float n = t - magic;
    float r = x - n * 0.693145751953125f; /* ln2_hi: 15 significant bits */
    r = r - n * 1.42860682030941723e-6f;  /* ln2 - ln2_hi */
    int32_t ni = (int32_t)(vec_bits(t) - vec_bits(magic));
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t n1 = ni / 2, n2 = ni - n1; /* each within the normal exponents for n in [-150, 128] */
    return p * vec_float((uint32_t)(n1 + 127) << 23) * vec_float((uint32_t)(n2 + 127) << 23);
}

#endif
