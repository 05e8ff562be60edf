/* qtc/quant.h: quantization schemes and their kernels.
 *
 * ggml's block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) are
 * dtypes: a tensor of such a type holds whole blocks along its rows. Their
 * quantizers reproduce ggml's reference quantizers (quantize_row_*_ref, which
 * llama-quantize uses when no importance matrix is given) bit for bit; the
 * dequantizers reproduce dequantize_row_*. Kernels never allocate.
 */
#ifndef QTC_QUANT_H
#define QTC_QUANT_H

#include <stdint.h>

#include "qtc/tensor.h"

/* ggml's type id of a dtype (GGML_TYPE_*), or -1 when ggml has none. */
int qtc_dtype_to_ggml(qtc_dtype t);
/* The dtype of a ggml type id, or -1 when qtc does not support it. */
int qtc_dtype_from_ggml(uint32_t ggml_type);
/* Bits per weight of a dtype (8 * bytes per block / elements per block). */
double qtc_dtype_bpw(qtc_dtype t);

/* Quantizes n floats (a multiple of the block size) into blocks of type t, as
 * ggml's reference quantizer does. Returns QTC_ERR_NUMERIC, without writing a
 * block, when x holds a NaN or an infinity (ggml would write garbage). For
 * plain float types this is a conversion (f32, f16, bf16). */
qtc_status qtc_quantize_row(qtc_dtype t, const float *x, void *y, int64_t n, qtc_error *err);
/* The inverse: n floats from blocks of type t (or from f32/f16/bf16/integers). */
void qtc_dequantize_row(qtc_dtype t, const void *x, float *y, int64_t n);

/* The type to store a tensor of rows of length row_len as when `want` is
 * asked for: want itself when its block divides the row, otherwise the
 * nearest ggml type that fits (Q4_K/Q5_K -> Q5_0/Q5_1 family -> ... -> F16),
 * chosen as llama.cpp does for tensors whose rows are not a multiple of 256,
 * and F16 where no block type fits (stories260K's 172-wide rows). */
qtc_dtype qtc_dtype_fallback(qtc_dtype want, int64_t row_len);

/* A new tensor of type t (same shape) holding x quantized row by row. x may
 * be of any plain type and any strides. NULL on failure (QTC_ERR_NUMERIC names
 * the tensor and the first non-finite element). */
qtc_tensor *qtc_tensor_quantize(const qtc_tensor *x, qtc_dtype t, qtc_error *err);
/* A new contiguous f32 tensor with x's values (any type, any strides). */
qtc_tensor *qtc_tensor_to_f32(const qtc_tensor *x, qtc_error *err);

/* Error statistics of a quantized tensor against its source, in double. */
typedef struct qtc_quant_error {
    double rms_rel;   /* sqrt(sum (q - x)^2 / sum x^2); 0 when x is all zeros */
    double max_abs;   /* max |q - x| */
} qtc_quant_error;
qtc_quant_error qtc_quant_error_of(const float *x, const float *q, int64_t n);

#endif
