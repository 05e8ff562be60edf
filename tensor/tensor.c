/* tensor.c: tensor structs, shared buffers, views and dtype conversion. */
#include "qtc/tensor.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct qtc_buffer {
    void *ptr;
    size_t size;
    int refs; /* not atomic: tensors are created and freed by one thread */
    int owned;
    void (*release)(void *ctx, void *ptr, size_t size);
    void *ctx;
};

static qtc_buffer *buffer_alloc(size_t size, qtc_error *err)
{
    qtc_buffer *b = calloc(1, sizeof *b);
    void *p = NULL;
    /* at least one cache line, so zero-element tensors still have an address */
    size_t bytes = size ? (size + 63) / 64 * 64 : 64;
    if (!b || posix_memalign(&p, 64, bytes) != 0) {
        free(b);
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory allocating %zu bytes", size);
        return NULL;
    }
    memset(p, 0, bytes);
    b->ptr = p;
    b->size = size;
    b->refs = 1;
    b->owned = 1;
    return b;
}

qtc_buffer *qtc_buffer_new_external(void *ptr, size_t size,
                                    void (*release)(void *ctx, void *ptr, size_t size),
                                    void *ctx, qtc_error *err)
{
    qtc_buffer *b = calloc(1, sizeof *b);
    if (!b) {
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        return NULL;
    }
    b->ptr = ptr;
    b->size = size;
    b->refs = 1;
    b->release = release;
    b->ctx = ctx;
    return b;
}

void qtc_buffer_ref(qtc_buffer *b)
{
    if (b)
        b->refs++;
}

void qtc_buffer_unref(qtc_buffer *b)
{
    if (!b || --b->refs > 0)
        return;
    if (b->owned)
        free(b->ptr);
    else if (b->release)
        b->release(b->ctx, b->ptr, b->size);
    free(b);
}

int qtc_buffer_is_owned(const qtc_buffer *b)
{
    return b && b->owned;
}

/* Checks a shape and sets contiguous strides; returns the element count or -1. */
static int64_t set_shape(qtc_tensor *t, qtc_dtype dtype, int ndim, const int64_t *shape,
                         qtc_error *err)
{
    const qtc_dtype_traits *tr = qtc_dtype_info(dtype);
    if (!tr) {
        qtc_error_set(err, QTC_ERR_USAGE, "unknown dtype %d", (int)dtype);
        return -1;
    }
    if (ndim < 0 || ndim > QTC_MAX_DIMS) {
        qtc_error_set(err, QTC_ERR_INPUT, "%d dimensions (at most %d)", ndim, QTC_MAX_DIMS);
        return -1;
    }
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || shape[d] > QTC_MAX_NUMEL ||
            (shape[d] > 0 && numel > QTC_MAX_NUMEL / shape[d])) {
            qtc_error_set(err, QTC_ERR_INPUT, "shape dimension %d = %lld is absurd (%lld elements at most)",
                          d, (long long)shape[d], (long long)QTC_MAX_NUMEL);
            return -1;
        }
        numel *= shape[d];
    }
    if (ndim > 0 && shape[ndim - 1] % tr->block_size != 0) {
        qtc_error_set(err, QTC_ERR_INPUT, "row length %lld is not a multiple of %s's block size %d",
                      (long long)shape[ndim - 1], tr->name, tr->block_size);
        return -1;
    }
    t->dtype = dtype;
    t->ndim = ndim;
    int64_t stride = 1;
    for (int d = QTC_MAX_DIMS - 1; d >= 0; d--) {
        t->ne[d] = d < ndim ? shape[d] : 1;
        t->nb[d] = d < ndim ? stride : 1;
        if (d < ndim)
            stride *= t->ne[d];
    }
    return numel;
}

static size_t contiguous_bytes(const qtc_tensor *t)
{
    if (t->ndim == 0)
        return (size_t)qtc_dtype_info(t->dtype)->type_size;
    int64_t rows = qtc_tensor_numel(t) / (t->ne[t->ndim - 1] ? t->ne[t->ndim - 1] : 1);
    if (t->ne[t->ndim - 1] == 0)
        return 0;
    return (size_t)rows * qtc_dtype_row_size(t->dtype, t->ne[t->ndim - 1]);
}

qtc_tensor *qtc_tensor_new(qtc_dtype dtype, int ndim, const int64_t *shape, qtc_error *err)
{
    qtc_tensor *t = calloc(1, sizeof *t);
    if (!t) {
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        return NULL;
    }
    if (set_shape(t, dtype, ndim, shape, err) < 0) {
        free(t);
        return NULL;
    }
    t->buf = buffer_alloc(contiguous_bytes(t), err);
    if (!t->buf) {
        free(t);
        return NULL;
    }
    t->data = t->buf->ptr;
    return t;
}

qtc_tensor *qtc_tensor_wrap(qtc_dtype dtype, int ndim, const int64_t *shape, void *data,
                            qtc_buffer *owner, qtc_error *err)
{
    qtc_tensor *t = calloc(1, sizeof *t);
    if (!t) {
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        return NULL;
    }
    if (set_shape(t, dtype, ndim, shape, err) < 0) {
        free(t);
        return NULL;
    }
    t->data = data;
    t->buf = owner;
    qtc_buffer_ref(owner);
    return t;
}

qtc_tensor qtc_tensor_borrow(qtc_dtype dtype, int ndim, const int64_t *shape, void *data)
{
    qtc_tensor t = {0};
    int64_t ok = set_shape(&t, dtype, ndim, shape, NULL);
    assert(ok >= 0);
    (void)ok;
    t.data = data;
    return t;
}

void qtc_tensor_free(qtc_tensor *t)
{
    if (!t)
        return;
    qtc_tensor_free(t->grad);
    qtc_buffer_unref(t->buf);
    free(t);
}

static qtc_tensor *view_of(const qtc_tensor *t, qtc_error *err)
{
    qtc_tensor *v = malloc(sizeof *v);
    if (!v) {
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        return NULL;
    }
    *v = *t;
    v->grad = NULL;
    v->flags = 0;
    qtc_buffer_ref(v->buf);
    return v;
}

qtc_tensor *qtc_tensor_view_slice(const qtc_tensor *t, int dim, int64_t start, int64_t len,
                                  qtc_error *err)
{
    const qtc_dtype_traits *tr = qtc_dtype_info(t->dtype);
    if (dim < 0 || dim >= t->ndim || start < 0 || len < 0 || start > t->ne[dim] - len) {
        qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': slice [%lld, +%lld) of dimension %d is out of range",
                      t->name, (long long)start, (long long)len, dim);
        return NULL;
    }
    if (tr->block_size > 1 && dim == t->ndim - 1 &&
        (start % tr->block_size || len % tr->block_size)) {
        qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': a %s row can only be sliced at block boundaries",
                      t->name, tr->name);
        return NULL;
    }
    qtc_tensor *v = view_of(t, err);
    if (!v)
        return NULL;
    size_t offset = (size_t)(start * t->nb[dim] / tr->block_size) * (size_t)tr->type_size;
    v->data = (char *)t->data + offset;
    v->ne[dim] = len;
    return v;
}

qtc_tensor *qtc_tensor_view_reshape(const qtc_tensor *t, int ndim, const int64_t *shape,
                                    qtc_error *err)
{
    if (!qtc_tensor_is_contiguous(t)) {
        qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': reshape needs a contiguous tensor", t->name);
        return NULL;
    }
    qtc_tensor tmp = *t;
    if (set_shape(&tmp, t->dtype, ndim, shape, err) < 0)
        return NULL;
    if (qtc_tensor_numel(&tmp) != qtc_tensor_numel(t)) {
        qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': reshape from %lld to %lld elements",
                      t->name, (long long)qtc_tensor_numel(t), (long long)qtc_tensor_numel(&tmp));
        return NULL;
    }
    qtc_tensor *v = view_of(&tmp, err);
    return v;
}

qtc_tensor *qtc_tensor_view_transpose(const qtc_tensor *t, int d0, int d1, qtc_error *err)
{
    if (d0 < 0 || d1 < 0 || d0 >= t->ndim || d1 >= t->ndim ||
        qtc_dtype_info(t->dtype)->block_size > 1) {
        qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': cannot transpose dimensions %d and %d",
                      t->name, d0, d1);
        return NULL;
    }
    qtc_tensor *v = view_of(t, err);
    if (!v)
        return NULL;
    int64_t ne = v->ne[d0], nb = v->nb[d0];
    v->ne[d0] = v->ne[d1];
    v->nb[d0] = v->nb[d1];
    v->ne[d1] = ne;
    v->nb[d1] = nb;
    return v;
}

int64_t qtc_tensor_numel(const qtc_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= t->ne[d];
    return n;
}

size_t qtc_tensor_nbytes(const qtc_tensor *t)
{
    return contiguous_bytes(t);
}

int qtc_tensor_is_contiguous(const qtc_tensor *t)
{
    int64_t stride = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->ne[d] != 1 && t->nb[d] != stride)
            return 0;
        stride *= t->ne[d];
    }
    return 1;
}

int qtc_tensor_owns_data(const qtc_tensor *t)
{
    return qtc_buffer_is_owned(t->buf);
}

int qtc_tensor_same_shape(const qtc_tensor *a, const qtc_tensor *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->ne[d] != b->ne[d])
            return 0;
    return 1;
}

void qtc_tensor_set_name(qtc_tensor *t, const char *name)
{
    snprintf(t->name, sizeof t->name, "%s", name);
}

/* Element offset of logical (row-major) index i. */
static int64_t offset_of(const qtc_tensor *t, int64_t i)
{
    int64_t off = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        off += (i % t->ne[d]) * t->nb[d];
        i /= t->ne[d];
    }
    return off;
}

static double load(qtc_dtype t, const void *p, int64_t k)
{
    switch (t) {
    case QTC_F32: return ((const float *)p)[k];
    case QTC_F16: return qtc_f16_to_f32(((const uint16_t *)p)[k]);
    case QTC_BF16: return qtc_bf16_to_f32(((const uint16_t *)p)[k]);
    case QTC_F64: return ((const double *)p)[k];
    case QTC_I8: return ((const int8_t *)p)[k];
    case QTC_U8: return ((const uint8_t *)p)[k];
    case QTC_I16: return ((const int16_t *)p)[k];
    case QTC_I32: return ((const int32_t *)p)[k];
    case QTC_I64: return (double)((const int64_t *)p)[k];
    default: return NAN;
    }
}

double qtc_tensor_get(const qtc_tensor *t, int64_t i)
{
    return load(t->dtype, t->data, offset_of(t, i));
}

static double clamp_round(double v, double lo, double hi)
{
    v = nearbyint(v);
    return v < lo ? lo : v > hi ? hi : v;
}

/* Stores v as type t; returns 0 when v is NaN and t is an integer type. */
static int store(qtc_dtype t, void *p, int64_t k, double v)
{
    if (isnan(v) && !qtc_dtype_info(t)->is_float) {
        memset((char *)p + k * qtc_dtype_info(t)->type_size, 0, (size_t)qtc_dtype_info(t)->type_size);
        return 0;
    }
    switch (t) {
    case QTC_F32: ((float *)p)[k] = (float)v; break;
    case QTC_F16: ((uint16_t *)p)[k] = qtc_f32_to_f16((float)v); break;
    case QTC_BF16: ((uint16_t *)p)[k] = qtc_f32_to_bf16((float)v); break;
    case QTC_F64: ((double *)p)[k] = v; break;
    case QTC_I8: ((int8_t *)p)[k] = (int8_t)clamp_round(v, INT8_MIN, INT8_MAX); break;
    case QTC_U8: ((uint8_t *)p)[k] = (uint8_t)clamp_round(v, 0, UINT8_MAX); break;
    case QTC_I16: ((int16_t *)p)[k] = (int16_t)clamp_round(v, INT16_MIN, INT16_MAX); break;
    case QTC_I32: ((int32_t *)p)[k] = (int32_t)clamp_round(v, INT32_MIN, INT32_MAX); break;
    case QTC_I64: ((int64_t *)p)[k] = (int64_t)clamp_round(v, -9.2233720368547748e18, 9.2233720368547748e18 - 1024); break;
    default: break;
    }
    return 1;
}

qtc_tensor *qtc_tensor_convert(const qtc_tensor *t, qtc_dtype to, qtc_error *err)
{
    if (qtc_dtype_info(t->dtype)->is_quantized || !qtc_dtype_info(to) ||
        qtc_dtype_info(to)->is_quantized) {
        qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': quantized types are converted by quant/", t->name);
        return NULL;
    }
    qtc_tensor *out = qtc_tensor_new(to, t->ndim, t->ne, err);
    if (!out)
        return NULL;
    qtc_tensor_set_name(out, t->name);
    int64_t n = qtc_tensor_numel(t);
    if (qtc_tensor_is_contiguous(t)) { /* the common cases without a detour through double */
        if (t->dtype == to) {
            memcpy(out->data, t->data, qtc_tensor_nbytes(t));
            return out;
        }
        if (t->dtype == QTC_F32 && to == QTC_F16) {
            qtc_f32_to_f16_row(t->data, out->data, n);
            return out;
        }
        if (t->dtype == QTC_F32 && to == QTC_BF16) {
            qtc_f32_to_bf16_row(t->data, out->data, n);
            return out;
        }
        if (t->dtype == QTC_F16 && to == QTC_F32) {
            qtc_f16_to_f32_row(t->data, out->data, n);
            return out;
        }
        if (t->dtype == QTC_BF16 && to == QTC_F32) {
            qtc_bf16_to_f32_row(t->data, out->data, n);
            return out;
        }
    }
    int64_t first_nan = -1;
    for (int64_t i = 0; i < n; i++)
        if (!store(to, out->data, i, qtc_tensor_get(t, i)) && first_nan < 0)
            first_nan = i;
    if (first_nan >= 0) {
        qtc_error_set(err, QTC_ERR_NUMERIC, "tensor '%s': element %lld is NaN and cannot become %s",
                      t->name, (long long)first_nan, qtc_dtype_info(to)->name);
        qtc_tensor_free(out);
        return NULL;
    }
    return out;
}

qtc_status qtc_tensor_require_grad(qtc_tensor *t, qtc_error *err)
{
    if (t->dtype != QTC_F32)
        return qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': only f32 tensors can be trained", t->name);
    if (!t->grad) {
        t->grad = qtc_tensor_new(QTC_F32, t->ndim, t->ne, err);
        if (!t->grad)
            return err ? err->code : QTC_ERR_NOMEM;
    }
    t->flags |= QTC_TENSOR_REQUIRES_GRAD;
    return QTC_OK;
}

void qtc_tensor_set_trainable(qtc_tensor *t, int trainable)
{
    if (trainable && t->grad)
        t->flags |= QTC_TENSOR_REQUIRES_GRAD;
    else
        t->flags &= ~QTC_TENSOR_REQUIRES_GRAD;
}

void qtc_tensor_zero_grad(qtc_tensor *t)
{
    if (t->grad)
        memset(t->grad->data, 0, qtc_tensor_nbytes(t->grad));
}

int64_t qtc_tensor_find_nonfinite(const qtc_tensor *t)
{
    const float *x = t->data;
    int64_t n = qtc_tensor_numel(t);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return i;
    return -1;
}
