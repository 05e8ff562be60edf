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
 *
 * qtc_qat_attach puts these ops into a llama's linear hook (qtc/model.h): the
 * projections' weights fake-quantized (min-max groups, NF4, or learned LSQ
 * scales), their inputs too (observed, calibrated, per-token or the model's
 * own static ranges); the output head stays float. What qat-train trains and
 * what qeval scores for W8A8 is this one hook.
 */
#ifndef QTC_QAT_H
#define QTC_QAT_H

#include "qtc/calibrate.h"
#include "qtc/export.h"
#include "qtc/graph.h"
#include "qtc/model.h"
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

/* --- QAT on a llama: fake quantization in its linear hook ------------------------------ */

/* How a projection's input is fake-quantized (to `abits` integers, asymmetric). */
typedef enum qtc_qat_inputs {
    QTC_QAT_INPUTS_FLOAT = 0, /* not at all */
    QTC_QAT_INPUTS_OBSERVED,  /* per tensor, with the range of a moving-average min/max observer
                                 (PyTorch's, constant 0.01; the first batch sets it) that sees
                                 the training forwards of steps < observer_steps */
    QTC_QAT_INPUTS_PER_TOKEN, /* per token, each with its own min-max range (dynamic) */
    QTC_QAT_INPUTS_RANGES,    /* per tensor, the fixed ranges calib[i].min..max, turned into a
                                 scale and zero point as the observers' are (qat-train --calib) */
    QTC_QAT_INPUTS_STATIC,    /* calib[i]'s scale and zero point as given, or its per input
                                 channel parameters where it has them (qeval --act-calib) */
    QTC_QAT_INPUTS_MODEL,     /* per tensor, the parameters a model file stores beside its
                                 weights (input_quant); the inputs it does not name stay float */
} qtc_qat_inputs;

typedef struct qtc_qat_options {
    int weights;          /* 1: the projections' weights are fake-quantized with `scheme` (INT:
                             min-max scales per group, recomputed every forward; NF4); 0: float */
    qtc_qscheme scheme;
    int lsq;              /* INT weights: learnable scales (and zero points for asymmetric
                             schemes) instead, starting at the min-max ones (qtc_qat_params) */
    qtc_qat_inputs inputs;
    int abits;            /* the inputs' bits, 2..8 (unless FLOAT) */
    int64_t observer_steps; /* OBSERVED: the observers freeze at this step; <= 0 never */
    /* RANGES, STATIC: per layer * QTC_N_LINEAR + kind (qtc_calib_load_json's); MODEL: by
     * weight name. Read by qtc_qat_attach only (copied). */
    const qtc_act_qparams *calib;
    const qtc_input_quant *input_quant;
} qtc_qat_options;

typedef struct qtc_qat qtc_qat;

/* Fills m's linear hook (m->linear, m->linear_ctx; none may be there yet)
 * with the fake quantization o describes. QTC_ERR_USAGE for options that do
 * not fit (LSQ without integer weights, bad bits, a missing calib), and
 * QTC_ERR_INPUT for per-channel parameters whose count is not the input's
 * width ("layer L self_attn.q_proj: N channels, the input has M"). */
qtc_qat *qtc_qat_attach(qtc_llama *m, const qtc_qat_options *o, qtc_error *err);
/* Detaches (m's linear layers are the plain matmul again) and frees. NULL is fine. */
void qtc_qat_free(qtc_qat *q);

/* The tensors QAT adds to training (LSQ: per linear weight, layer by layer in
 * kind order, its scales and then its zero points; marked as requiring
 * gradients): how many there are, the first cap of them stored in out (so
 * qtc_qat_params(q, NULL, 0) counts them). */
int qtc_qat_params(qtc_qat *q, qtc_tensor **out, int cap);
/* The optimizer steps taken so far (for the observers' freezing), and whether
 * the forwards that follow train (the observers observe those only). */
void qtc_qat_set_step(qtc_qat *q, int64_t step);
void qtc_qat_set_training(qtc_qat *q, int training);
/* OBSERVED: the observers see the training batch qtc_train_batch draws for
 * (batch, ctx, seed, step) in one forward without gradients, so that nothing
 * is scored with unset ranges. Does nothing for other inputs. */
qtc_status qtc_qat_warm_up(qtc_qat *q, const qtc_tokens *data, int batch, int ctx, uint64_t seed, int64_t step,
                           qtc_error *err);
/* The running range of an input's observer (OBSERVED; RANGES: the fixed
 * range). Returns 0 when that input has none. */
int qtc_qat_input_range(const qtc_qat *q, int layer, qtc_linear_kind kind, float *min, float *max);

/* qtc_convert's qweight hook (ctx: the qtc_qat): a projection's weight stored
 * in the trained scheme with its learned LSQ scales and zero points
 * (qtc_qweight_quantize_with); 0 (quantized afresh) for anything else. */
int qtc_qat_qweight(void *q, const char *name, const qtc_qscheme *s, qtc_qweight *out, qtc_error *err);
/* The hooks that export what q learned (qweight set with LSQ, else none). */
qtc_convert_hooks qtc_qat_convert_hooks(qtc_qat *q);

QTC_API_END

#endif
