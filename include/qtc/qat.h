/* qtc/qat.h: quantization-aware training: fake quantization as graph ops with
 * straight-through estimators, and learnable scales (LSQ).
 *
 * Integer fake quantization computes, as PyTorch's fake_quantize kernels do,
 *   q = nearbyint(x * inv_s) + z,  y = (clamp(q, qmin, qmax) - z) * s
 * with inv_s the float32 reciprocal of s and z an integer (a learnable zero
 * point is a float rounded to the nearest integer in [qmin, qmax]). Gradients:
 *   dx = dy where qmin <= q <= qmax, 0 elsewhere (the straight-through estimator);
 *   ds = sum dy * ((q - z) - x * inv_s) inside, (qmin - z) below, (qmax - z) above;
 *   dz = sum dy * -s where clamped, 0 inside;
 * ds and dz times a gradient factor (LSQ's 1/sqrt(numel * qmax) by default).
 * The values are the ones quant/ stores: a weight fake-quantized with the
 * min-max scales equals qtc_qweight_quantize + dequantize bit for bit.
 */
#ifndef QTC_QAT_H
#define QTC_QAT_H

#include "qtc/export.h"
#include "qtc/graph.h"
#include "qtc/quant.h"

QTC_API_BEGIN

/* Integer fake quantization of x (..., cols) under scheme s (QTC_QK_INT):
 * groups run along the last dimension (per channel: one per row; per tensor:
 * one in all). scale (and, for asymmetric schemes, zero) hold one value per
 * group: rows * groups, or 1 per tensor. With scale NULL the min-max scales
 * and zero points are computed from x in the forward (the weights' observer),
 * and carry no gradient. grad_factor <= 0 means 1/sqrt(numel * qmax). */
qtc_tensor *qtc_fake_quant(qtc_graph *g, qtc_tensor *x, const qtc_qscheme *s, qtc_tensor *scale, qtc_tensor *zero,
                           float grad_factor);

/* Integer fake quantization of x (..., cols) with one scale and zero point per
 * column, the same for every row: an activation quantized per input channel
 * with static ranges. The straight-through estimator for x; the parameters
 * are constants. */
qtc_tensor *qtc_fake_quant_columns(qtc_graph *g, qtc_tensor *x, int bits, const float *scale, const float *zero);

/* NF4 fake quantization (bitsandbytes' blocks of 64 over the flattened tensor,
 * double quantization as the scheme says): dequant(quant(x)), and the
 * identity as gradient (every value is in range: the blocks scale by their
 * maximum). */
qtc_tensor *qtc_fake_quant_nf4(qtc_graph *g, qtc_tensor *x, const qtc_qscheme *s);

/* The min-max scales and zero points of x under s into scale (and zero),
 * shaped as qtc_fake_quant takes them: the start of LSQ training. */
void qtc_fake_quant_init_params(const qtc_tensor *x, const qtc_qscheme *s, qtc_tensor *scale, qtc_tensor *zero);

QTC_API_END

#endif
