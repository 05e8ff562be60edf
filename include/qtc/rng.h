/* qtc/rng.h: the library's own seeded random numbers.
 *
 * xoshiro256** seeded through splitmix64, with uniform floats made from the top
 * 24 bits and normals by Box-Muller in double: the same seed gives the same
 * numbers on every platform and compiler. The state is a plain struct the
 * caller owns; nothing is global.
 */
#ifndef QTC_RNG_H
#define QTC_RNG_H

#include <stdint.h>

#include "qtc/export.h"
#include "qtc/tensor.h"

QTC_API_BEGIN

typedef struct qtc_rng {
    uint64_t s[4];
} qtc_rng;

void qtc_rng_seed(qtc_rng *r, uint64_t seed);
uint64_t qtc_rng_u64(qtc_rng *r);
/* Uniform in [0, 1), a multiple of 2^-24. */
float qtc_rng_uniform(qtc_rng *r);
/* Uniform integer in [0, n), without modulo bias. n > 0. */
uint64_t qtc_rng_below(qtc_rng *r, uint64_t n);
/* Standard normal. */
double qtc_rng_normal(qtc_rng *r);

/* Fill a contiguous f32 tensor. */
void qtc_rng_fill_uniform(qtc_rng *r, qtc_tensor *t, float lo, float hi);
void qtc_rng_fill_normal(qtc_rng *r, qtc_tensor *t, float mean, float std);
/* PyTorch's kaiming_uniform_(t, a) with fan_in = t's last dimension: uniform
 * in +-sqrt(6 / ((1 + a^2) fan_in)). With a = sqrt(5), as nn.Linear and LoRA's
 * A use, the bound is 1/sqrt(fan_in). */
void qtc_rng_kaiming_uniform(qtc_rng *r, qtc_tensor *t, double a);

QTC_API_END

#endif
