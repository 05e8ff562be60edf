/* quant_private.h: the functions the files of quant/ share (private to
 * quant/, hidden in libqtc.so). ggml_blocks.h holds ggml's block layouts. */
#ifndef QTC_QUANT_PRIVATE_H
#define QTC_QUANT_PRIVATE_H

#include "qtc/quant.h"

/* nf4.c: the NF4 scheme behind qtc_qweight_quantize/_dequantize (intq.c), on
 * a q those have checked and allocated. */
qtc_status nf4_quantize(const float *w, qtc_qweight *q);
void nf4_dequantize(const qtc_qweight *q, float *w);

/* qvec.c: the dequantization and fake-quantization row kernels, compiled
 * once per instruction-set path like tensor/vec.c; quant_vec() is the table of
 * the path in use (qtc_cpu_get). Every path gives the same bits: no fused
 * multiply-adds, rounding as nearbyintf does in the default rounding mode. */
typedef struct quant_vec_ops {
    /* y = (clamp(round(x inv) + zero, qmin, qmax) - zero) * scale: qtc_int_quantize_one
     * dequantized, for a run sharing one scale (NaN stays NaN) */
    void (*fake_quant)(const float *x, float *y, int64_t n, float inv, float scale, float zero, int qmin,
                       int qmax);
    /* the same with inv, scale and zero per element (one per column) */
    void (*fake_quant_cols)(const float *x, float *y, int64_t n, const float *inv, const float *scale,
                            const float *zero, int qmin, int qmax);
    /* fake_quant's straight-through backward over such a run, t = x inv: dx += dy where
     * round(t) + zero is inside [qmin, qmax] (dx NULL: skipped); with sums, sums[0] gets
     * the sum of dy (inside ? round(t) - t : the clamped code - zero) and sums[1] the sum
     * of dy over the elements outside, each in 16 lanes combined in a fixed order */
    void (*fake_quant_back)(const float *x, const float *dy, float *dx, int64_t n, float inv, float zero,
                            int qmin, int qmax, float *sums);
    /* y[i] = lut[codes[i]] * scale, codes below 16 */
    void (*lut_bytes)(const uint8_t *codes, const float *lut, float scale, float *y, int64_t n);
    /* the same for 4-bit codes packed high nibble first, starting at code i0 */
    void (*lut_nibbles)(const uint8_t *packed, int64_t i0, const float *lut, float scale, float *y, int64_t n);
    /* y[i] = (float)(code - off) * scale for signed bytes, unsigned bytes, packed nibbles from code i0 */
    void (*int_s8)(const int8_t *q, int off, float scale, float *y, int64_t n);
    void (*int_u8)(const uint8_t *q, int off, float scale, float *y, int64_t n);
    void (*int_nibbles)(const uint8_t *packed, int64_t i0, int off, float scale, float *y, int64_t n);
} quant_vec_ops;

const quant_vec_ops *quant_vec(void);
const quant_vec_ops *quant_vec_for(int path);

#endif
