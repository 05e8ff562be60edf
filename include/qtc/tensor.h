/* qtc/tensor.h: element types, tensors and views, f16/bf16 conversion.
 *
 * A tensor has up to four dimensions, listed outermost first (ne[ndim-1] is
 * the fastest-varying one), and strides counted in elements. Its bytes live
 * in a qtc_buffer that views share by reference count:
 *   - qtc_tensor_new allocates an owned buffer (zeroed, 64-byte aligned);
 *   - qtc_tensor_wrap views memory the tensor does not own: a caller's array
 *     (buffer NULL: the caller keeps it alive) or an external buffer such as
 *     an mmap of a file (qtc_buffer_new_external, released with the last view).
 * qtc_tensor_free releases the struct, its gradient and its buffer reference.
 * Tensors created by a qtc_graph belong to the graph: never free those.
 *
 * Quantized block types are listed here with their block layout (elements per
 * block, bytes per block) so that sizes can be computed anywhere; their
 * quantizers and dequantizers live in quant/.
 */
#ifndef QTC_TENSOR_H
#define QTC_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "qtc/error.h"
#include "qtc/export.h"

QTC_API_BEGIN

#define QTC_MAX_DIMS 4
#define QTC_NAME_MAX 128

typedef enum qtc_dtype {
    QTC_F32 = 0,
    QTC_F16,
    QTC_BF16,
    QTC_F64,
    QTC_I8,
    QTC_U8,
    QTC_I16,
    QTC_I32,
    QTC_I64,
    /* ggml's block types: layouts in quant/ggml_blocks.h, kernels in quant/ */
    QTC_Q4_0,
    QTC_Q4_1,
    QTC_Q5_0,
    QTC_Q5_1,
    QTC_Q8_0,
    QTC_Q4_K,
    QTC_Q5_K,
    QTC_Q6_K,
    QTC_DTYPE_COUNT
} qtc_dtype;

typedef struct qtc_dtype_traits {
    const char *name;   /* "f32", "bf16", ... (lower case, as the CLI spells them) */
    int block_size;     /* elements per block; 1 for plain types */
    int type_size;      /* bytes per block */
    int is_float;       /* 1 for f32/f16/bf16/f64 */
    int is_quantized;   /* 1 for block types */
} qtc_dtype_traits;

/* Traits of a dtype; NULL when t is out of range. */
const qtc_dtype_traits *qtc_dtype_info(qtc_dtype t);
/* Looks a dtype up by name (case-insensitive); returns -1 when unknown. */
int qtc_dtype_from_name(const char *name);
/* Bytes needed by n elements of type t (n a multiple of the block size), or
 * SIZE_MAX when that overflows or n is not a whole number of blocks. */
size_t qtc_dtype_row_size(qtc_dtype t, int64_t n);

typedef struct qtc_buffer qtc_buffer;

typedef struct qtc_tensor {
    qtc_dtype dtype;
    int ndim;                   /* 0 (a scalar) to QTC_MAX_DIMS */
    int64_t ne[QTC_MAX_DIMS];   /* shape, outermost first; unused dims are 1 */
    int64_t nb[QTC_MAX_DIMS];   /* strides in elements */
    void *data;                 /* the first element */
    qtc_buffer *buf;            /* shared owner of data; NULL when borrowed */
    struct qtc_tensor *grad;    /* f32, same shape; set by qtc_tensor_require_grad */
    unsigned flags;             /* QTC_TENSOR_* */
    char name[QTC_NAME_MAX];    /* for messages: "model.layers.0.mlp.up_proj.weight" */
} qtc_tensor;

enum {
    QTC_TENSOR_REQUIRES_GRAD = 1u << 0, /* a leaf the autograd accumulates into */
    QTC_TENSOR_GRAPH = 1u << 1          /* lives in a qtc_graph's arena */
};

/* Shape literal: qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(3, 4), &err). */
#define QTC_SHAPE(...) ((const int64_t[]){__VA_ARGS__})

/* Largest number of elements qtc accepts in one tensor (2^48): shapes from files
 * beyond it are rejected before any size arithmetic can overflow. */
#define QTC_MAX_NUMEL ((int64_t)1 << 48)

/* A new contiguous tensor owning zeroed memory. NULL on failure (bad shape:
 * QTC_ERR_INPUT; no memory: QTC_ERR_NOMEM). */
qtc_tensor *qtc_tensor_new(qtc_dtype t, int ndim, const int64_t *shape, qtc_error *err);

/* A contiguous tensor over memory it does not own. With owner NULL the caller
 * keeps data alive for the tensor's life; otherwise the tensor holds a
 * reference to owner. */
qtc_tensor *qtc_tensor_wrap(qtc_dtype t, int ndim, const int64_t *shape, void *data,
                            qtc_buffer *owner, qtc_error *err);

/* The same as a value, for a short-lived tensor on the stack (a batch of token
 * ids, a view of a cache): no allocation, no owner. The shape comes from the
 * code, not from a file, so it must be valid. */
qtc_tensor qtc_tensor_borrow(qtc_dtype t, int ndim, const int64_t *shape, void *data);

/* A buffer over external memory (an mmap, a caller's allocation). release, if
 * not NULL, is called with (ctx, ptr, size) when the last reference goes. The
 * new buffer has one reference, which the caller drops with qtc_buffer_unref
 * once its tensors hold their own. */
qtc_buffer *qtc_buffer_new_external(void *ptr, size_t size,
                                    void (*release)(void *ctx, void *ptr, size_t size),
                                    void *ctx, qtc_error *err);
void qtc_buffer_ref(qtc_buffer *b);
void qtc_buffer_unref(qtc_buffer *b);
/* 1 when the buffer's memory was allocated by qtc (and is freed with it). */
int qtc_buffer_is_owned(const qtc_buffer *b);

/* Frees the struct, its gradient and its buffer reference. NULL is a no-op.
 * Must not be called on graph tensors. */
void qtc_tensor_free(qtc_tensor *t);

/* Views: new structs sharing t's memory (and buffer reference). NULL on a bad
 * request (QTC_ERR_USAGE) or no memory. */
qtc_tensor *qtc_tensor_view_slice(const qtc_tensor *t, int dim, int64_t start, int64_t len,
                                  qtc_error *err);
qtc_tensor *qtc_tensor_view_reshape(const qtc_tensor *t, int ndim, const int64_t *shape,
                                    qtc_error *err);
qtc_tensor *qtc_tensor_view_transpose(const qtc_tensor *t, int d0, int d1, qtc_error *err);

int64_t qtc_tensor_numel(const qtc_tensor *t);
/* Bytes of a contiguous tensor's data. */
size_t qtc_tensor_nbytes(const qtc_tensor *t);
int qtc_tensor_is_contiguous(const qtc_tensor *t);
/* 1 when t's memory was allocated by qtc, 0 when it views memory it does not own. */
int qtc_tensor_owns_data(const qtc_tensor *t);
int qtc_tensor_same_shape(const qtc_tensor *a, const qtc_tensor *b);
/* Sets the name (truncated to QTC_NAME_MAX-1 bytes). */
void qtc_tensor_set_name(qtc_tensor *t, const char *name);

/* A new contiguous tensor of type to with t's values (any strides). Float to
 * integer conversion rounds half to even and saturates; NaN becomes 0 and is
 * reported as QTC_ERR_NUMERIC. Quantized types are converted by quant/. */
qtc_tensor *qtc_tensor_convert(const qtc_tensor *t, qtc_dtype to, qtc_error *err);

/* Marks t as a trainable leaf and gives it a zeroed f32 gradient (t must be f32).
 * Freezing is qtc_tensor_set_trainable(t, 0): the gradient is kept but no
 * longer computed. */
qtc_status qtc_tensor_require_grad(qtc_tensor *t, qtc_error *err);
void qtc_tensor_set_trainable(qtc_tensor *t, int trainable);
void qtc_tensor_zero_grad(qtc_tensor *t);

/* f16 and bf16: conversion from f32 rounds to nearest even, overflows to Inf,
 * keeps Inf, and keeps NaN a NaN (its payload too where the narrow type has
 * room). Conversion to f32 is exact. */
uint16_t qtc_f32_to_f16(float f);
float qtc_f16_to_f32(uint16_t h);
uint16_t qtc_f32_to_bf16(float f);
float qtc_bf16_to_f32(uint16_t h);
void qtc_f32_to_f16_row(const float *x, uint16_t *y, int64_t n);
void qtc_f16_to_f32_row(const uint16_t *x, float *y, int64_t n);
void qtc_f32_to_bf16_row(const float *x, uint16_t *y, int64_t n);
void qtc_bf16_to_f32_row(const uint16_t *x, float *y, int64_t n);

/* Reads element i (in row-major logical order, honouring strides) of a plain
 * (non-quantized) tensor as a double. For tests and messages, not hot loops. */
double qtc_tensor_get(const qtc_tensor *t, int64_t i);

/* Index of the first NaN or Inf in a contiguous f32 tensor, or -1. */
int64_t qtc_tensor_find_nonfinite(const qtc_tensor *t);

QTC_API_END

#endif
