/* quant_input.h: the input the ggml golden files were made from: 8192 floats
 * in 256 blocks of 32 whose kinds rotate through the cases quantizers get
 * wrong (outliers, zeros, constants, f32 denormals, all-positive blocks, ties
 * on a quarter grid, large magnitudes). Seeded, so it is the same everywhere.
 * tests/golden/README says how the golden files were made. */
#ifndef QTC_QUANT_INPUT_H
#define QTC_QUANT_INPUT_H

#include "qtc/rng.h"

#define QUANT_INPUT_N 8192

static inline void quant_input(float *x)
{
    qtc_rng r;
    qtc_rng_seed(&r, 2024);
    for (int b = 0; b < QUANT_INPUT_N / 32; b++) {
        float *v = x + 32 * b;
        for (int j = 0; j < 32; j++) {
            double z = qtc_rng_normal(&r);
            switch (b % 9) {
            case 0: v[j] = (float)z; break;
            case 1: v[j] = (float)(0.02 * z); break;
            case 2: v[j] = (float)(j == 7 ? 50 * z : 0.1 * z); break;
            case 3: v[j] = 0.0f; break;
            case 4: v[j] = 0.3f; break;
            case 5: v[j] = (float)(z * 1e-39); break;
            case 6: v[j] = 0.5f + qtc_rng_uniform(&r); break;
            case 7: v[j] = 0.25f * (float)((int)qtc_rng_below(&r, 17) - 8); break;
            default: v[j] = (float)(3000.0 * z); break;
            }
        }
    }
}

#endif
