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

#include "qtc/export.h"
#include "qtc/tensor.h"

QTC_API_BEGIN

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
/* The same weighted by importance (n values: the mean x^2 of each input
 * channel, an imatrix row; NULL: qtc_quantize_row), as llama.cpp's quantize_*
 * with quant_weights: Q4_0/Q5_0 and Q4_1/Q5_1 blocks and Q4_K/Q5_K sub-blocks
 * fit their scale (and min) by least squares weighted by importance *
 * sqrt(sigma^2 + x^2) (sigma^2 the row's, for K the super-block's doubled,
 * mean square); Q4_K/Q5_K fit the 6-bit sub-block scales weighted by each
 * sub-block's total weight; Q6_K weights its 16-value groups by the raw
 * importance. Other types (Q8_0, floats) are quantized as without it. */
qtc_status qtc_quantize_row_weighted(qtc_dtype t, const float *x, void *y, int64_t n, const float *imp, qtc_error *err);
/* Whether qtc_quantize_row_weighted uses the importance for type t. */
int qtc_dtype_takes_importance(qtc_dtype t);
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
    double rms_rel;    /* sqrt(sum (q - x)^2 / sum x^2); 0 when x is all zeros */
    double max_abs;    /* max |q - x| */
    double sum_sq_err; /* sum (q - x)^2, for totals over many tensors */
    double sum_sq_ref; /* sum x^2 */
} qtc_quant_error;
qtc_quant_error qtc_quant_error_of(const float *x, const float *q, int64_t n);

/* qtc_tensor_quantize that also measures the stored values' error against x,
 * row by row in the same parallel pass (nothing dequantized is kept), and
 * refuses NaN or Inf for every target type (QTC_ERR_NUMERIC naming the tensor
 * and the element). t may be any float or ggml type; importance (NULL, or one
 * value per row element) weights the rounding as qtc_quantize_row_weighted.
 * The statistics do not depend on the thread count. */
qtc_tensor *qtc_tensor_quantize_measured(const qtc_tensor *x, qtc_dtype t, const float *importance, qtc_quant_error *e,
                                         qtc_error *err);


/* --- qtc's own schemes: integers per tensor, channel or group, and NF4 ------- */

typedef enum qtc_qkind { QTC_QK_INT = 0, QTC_QK_NF4 = 1 } qtc_qkind;

typedef struct qtc_qscheme {
    qtc_qkind kind;
    int bits;         /* INT: 2 to 8; NF4: 4 */
    int group;        /* INT: elements per group along a row (the input dimension), 0 for one
                         group per row (per channel), -1 for the whole tensor; the last group
                         of a row may be partial. NF4: the block size (64), over the flattened tensor */
    int symmetric;    /* INT: zero point 0 */
    int double_quant; /* NF4: absmax values quantized in blocks of 256 (QLoRA's double quantization) */
} qtc_qscheme;

/* Parses a scheme name: int8 (per channel, symmetric), int8-tensor, intB-gG
 * (B in 2..8, G in 32/64/128 or any positive size), each with an optional
 * -asym suffix; nf4 (double quantization) and nf4-single. Returns 0 on success. */
int qtc_qscheme_parse(const char *name, qtc_qscheme *s);
void qtc_qscheme_name(const qtc_qscheme *s, char *buf, size_t cap);
/* Stored bits per weight, counting scales and zero points (f32 scales, int8
 * zero points; NF4: packed codes plus its absmax statistics). */
double qtc_qscheme_bpw(const qtc_qscheme *s, int64_t rows, int64_t cols);

/* The integer range of a bit width: [-2^(b-1), 2^(b-1) - 1]. */
#define QTC_QMIN(bits) (-(1 << ((bits) - 1)))
#define QTC_QMAX(bits) ((1 << ((bits) - 1)) - 1)

/* A weight matrix quantized with a scheme. */
typedef struct qtc_qweight {
    qtc_qscheme s;
    int64_t rows, cols;   /* [out, in] */
    int64_t n_groups;     /* INT: groups per row (1 per channel; per tensor: 1 in all) */
    int8_t *q;            /* INT: rows*cols values in [qmin, qmax]; NF4: codes 0..15 */
    float *scale;         /* INT: rows*n_groups (per tensor: 1); NF4: absmax per block as used */
    int8_t *zero;         /* INT asymmetric: like scale; NULL when symmetric */
    int64_t n_blocks;     /* NF4: blocks of s.group over rows*cols */
    uint8_t *absmax_q;    /* NF4 double quant: n_blocks codes into the dynamic map */
    float *nested_absmax; /* NF4 double quant: per 256 blocks */
    float nested_offset;  /* NF4 double quant: the mean absmax subtracted first */
} qtc_qweight;

/* Scale and zero point of one group as PyTorch's min-max observers compute
 * them: the range is widened to include 0; symmetric scale = max|x| /
 * ((qmax - qmin) / 2), asymmetric scale = (max - min) / (qmax - qmin) with
 * zero point qmin - round(min / scale) clamped to the range; scales are at
 * least FLT_EPSILON. */
void qtc_int_qparams(const float *x, int64_t n, int bits, int symmetric, float *scale, int *zero);
/* clamp(nearbyint(x * (1/scale)) + zero, qmin, qmax): the rounding of
 * PyTorch's fake quantization (the reciprocal is a float32). */
int qtc_int_quantize_one(float x, float inv_scale, int zero, int bits);
/* Fake quantization of a run sharing one scale: y[i] = (qtc_int_quantize_one(x[i],
 * inv_scale, zero, bits) - zero) * scale, the same bits on every qtc_cpu_path
 * (NaN stays NaN). _cols: inv_scale, scale and zero per element (integer-valued
 * zero points), as for per-column ranges. y may be x. */
void qtc_int_fake_quant_row(const float *x, float *y, int64_t n, float inv_scale, float scale, int zero, int bits);
/* Its straight-through backward over the run, t = x[i] * inv_scale: dx[i] += dy[i] where
 * round(t) + zero is inside the integer range (dx NULL: skipped); with sums non-NULL,
 * sums[0] += the sum of dy (inside ? round(t) - t : the clamped code - zero), LSQ's scale
 * gradient before its factors, and sums[1] += the sum of dy outside the range. */
void qtc_int_fake_quant_back_row(const float *x, const float *dy, float *dx, int64_t n, float inv_scale, int zero,
                                 int bits, float *sums);
void qtc_int_fake_quant_cols(const float *x, float *y, int64_t n, const float *inv_scale, const float *scale,
                             const float *zero, int bits);

/* Quantizes w (rows x cols, f32) with s into q (fields allocated here).
 * QTC_ERR_NUMERIC on NaN or Inf. */
qtc_status qtc_qweight_quantize(const float *w, int64_t rows, int64_t cols, const qtc_qscheme *s,
                                qtc_qweight *q, qtc_error *err);
/* The same with given scales (and float zero points, rounded into the grid):
 * what learnable-scale (LSQ) training exports. Integer schemes only. */
qtc_status qtc_qweight_quantize_with(const float *w, int64_t rows, int64_t cols, const qtc_qscheme *s,
                                     const float *scale, const float *zero, qtc_qweight *q, qtc_error *err);
/* Integer schemes weighted by importance (cols values: the mean x^2 of each
 * input channel, an imatrix): each group's min-max range is shrunk by 0..40%
 * in 1% steps and the scale (and zero point) with the least importance-
 * weighted squared error is kept. NF4 is quantized as usual. */
qtc_status qtc_qweight_quantize_weighted(const float *w, int64_t rows, int64_t cols, const qtc_qscheme *s,
                                         const float *importance, qtc_qweight *q, qtc_error *err);
/* Dequantizes into w (rows x cols): (q - zero) * scale; NF4: code[q] * absmax. */
void qtc_qweight_dequantize(const qtc_qweight *q, float *w);
/* Allocates the arrays of q for its scheme and shape (zeroed); QTC_ERR_NOMEM. */
qtc_status qtc_qweight_alloc(qtc_qweight *q, qtc_error *err);
void qtc_qweight_free(qtc_qweight *q);

/* bitsandbytes' NF4 code values (create_normal_map(offset=0.9677083)). */
extern const float qtc_nf4_code[16];
/* bitsandbytes' signed dynamic 8-bit map (create_dynamic_map()), the code for
 * the double-quantized absmax values: 256 sorted values in [-1, 1]. */
void qtc_dynamic_map(float map[256]);

/* --- a frozen quantized matrix, dequantized a few rows at a time -------------
 * The base weights of QLoRA: a scheme's codes packed as stored (4 bits and
 * fewer two to a byte, the first element in the high nibble as bitsandbytes
 * packs NF4), NF4's absmax kept double-quantized (reconstructed per block as
 * a reader does), or ggml blocks. qtc_qmatrix_rows gives exactly the values
 * qtc_qweight_dequantize / qtc_dequantize_row give for those rows. */
typedef struct qtc_qmatrix {
    int64_t rows, cols;
    int is_scheme;          /* 1: s below; 0: dtype (a ggml block type or f16/bf16/f32) */
    qtc_qscheme s;
    qtc_dtype dtype;
    uint8_t *data;          /* scheme: packed codes; dtype: rows of blocks */
    float *scale;           /* INT: as qtc_qweight; NF4 without double quant: absmax per block */
    int8_t *zero;           /* INT asymmetric */
    int64_t n_groups, n_blocks;
    uint8_t *absmax_q;      /* NF4 double quant */
    float *nested_absmax;
    float nested_offset;
    float dyn_map[256];     /* NF4 double quant: the dynamic map */
    int borrowed;           /* data views memory the matrix does not own (a file's mapping): not freed */
} qtc_qmatrix;

/* Quantizes w (rows x cols, f32) with scheme s, or to dtype t when s is NULL.
 * QTC_ERR_NUMERIC on NaN/Inf; QTC_ERR_USAGE when t's blocks do not divide a row. */
qtc_status qtc_qmatrix_quantize(const float *w, int64_t rows, int64_t cols, const qtc_qscheme *s, qtc_dtype t,
                                qtc_qmatrix *q, qtc_error *err);
/* The same from a stored quantized weight (qtc_model_qweight: the codes a
 * file holds, kept exactly); takes qw's arrays (qw is left empty). */
qtc_status qtc_qmatrix_from_qweight(qtc_qweight *qw, qtc_qmatrix *q, qtc_error *err);
/* Rows r0 .. r0+n-1 as floats into out (n x cols). Safe to call from several threads. */
void qtc_qmatrix_rows(const qtc_qmatrix *q, int64_t r0, int64_t n, float *out);
/* Bytes the matrix holds. */
size_t qtc_qmatrix_bytes(const qtc_qmatrix *q);
void qtc_qmatrix_free(qtc_qmatrix *q);

QTC_API_END

#endif
