/* qmatrix.c: frozen quantized matrices for QLoRA-style training (see
 * qtc/quant.h): quantized once with the schemes' own quantizers, stored
 * packed, and dequantized row range by row range inside the matmul. */
#include <stdlib.h>
#include <string.h>

#include "qtc/quant.h"
#include "quant_private.h"

static int packs_nibbles(const qtc_qmatrix *q)
{
    return q->is_scheme && q->s.bits <= 4;
}

qtc_status qtc_qmatrix_quantize(const float *w, int64_t rows, int64_t cols, const qtc_qscheme *s, qtc_dtype t,
                                qtc_qmatrix *q, qtc_error *err)
{
    memset(q, 0, sizeof *q);
    q->rows = rows;
    q->cols = cols;
    if (!s) {
        const qtc_dtype_traits *ti = qtc_dtype_info(t);
        if (!ti || cols % ti->block_size)
            return qtc_error_set(err, QTC_ERR_USAGE, "rows of %lld do not split into %s blocks", (long long)cols,
                                 ti ? ti->name : "?");
        size_t row = qtc_dtype_row_size(t, cols);
        q->dtype = t;
        if (!(q->data = malloc(row * (size_t)rows)))
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        for (int64_t r = 0; r < rows; r++)
            if (qtc_quantize_row(t, w + r * cols, q->data + (size_t)r * row, cols, err) != QTC_OK) {
                qtc_qmatrix_free(q);
                return err->code;
            }
        return QTC_OK;
    }
    qtc_qweight qw;
    if (qtc_qweight_quantize(w, rows, cols, s, &qw, err) != QTC_OK)
        return err->code;
    return qtc_qmatrix_from_qweight(&qw, q, err);
}

qtc_status qtc_qmatrix_from_qweight(qtc_qweight *qw_in, qtc_qmatrix *q, qtc_error *err)
{
    qtc_qweight qw = *qw_in;
    const qtc_qscheme *s = &qw.s;
    memset(qw_in, 0, sizeof *qw_in);
    memset(q, 0, sizeof *q);
    q->rows = qw.rows;
    q->cols = qw.cols;
    q->is_scheme = 1;
    q->s = *s;
    q->n_groups = qw.n_groups;
    q->n_blocks = qw.n_blocks;
    int64_t n = qw.rows * qw.cols;
    size_t bytes = packs_nibbles(q) ? (size_t)(n + 1) / 2 : (size_t)n;
    if (!(q->data = calloc(bytes, 1))) {
        qtc_qweight_free(&qw);
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    }
    int offset = s->kind == QTC_QK_INT ? -QTC_QMIN(s->bits) : 0; /* stored unsigned */
    for (int64_t i = 0; i < n; i++) {
        uint8_t v = (uint8_t)(qw.q[i] + offset);
        if (packs_nibbles(q))
            q->data[i / 2] |= (uint8_t)(i % 2 ? v : v << 4);
        else
            q->data[i] = v;
    }
    int compact = s->kind == QTC_QK_NF4 && s->double_quant && qw.absmax_q && qw.nested_absmax;
    if (compact) { /* the float absmax is dropped when the codes reproduce it (a file's own map may differ) */
        qtc_dynamic_map(q->dyn_map);
        for (int64_t b = 0; b < qw.n_blocks && compact; b++)
            compact = q->dyn_map[qw.absmax_q[b]] * qw.nested_absmax[b / 256] + qw.nested_offset == qw.scale[b];
    }
    if (compact) {
        q->absmax_q = qw.absmax_q;
        q->nested_absmax = qw.nested_absmax;
        q->nested_offset = qw.nested_offset;
        qw.absmax_q = NULL;
        qw.nested_absmax = NULL;
    } else {
        q->scale = qw.scale;
        q->zero = qw.zero;
        qw.scale = NULL;
        qw.zero = NULL;
    }
    qtc_qweight_free(&qw);
    return QTC_OK;
}

void qtc_qmatrix_rows(const qtc_qmatrix *q, int64_t r0, int64_t n, float *out)
{
    const int64_t cols = q->cols;
    if (!q->is_scheme) {
        size_t row = qtc_dtype_row_size(q->dtype, cols);
        for (int64_t r = 0; r < n; r++)
            qtc_dequantize_row(q->dtype, q->data + (size_t)(r0 + r) * row, out + r * cols, cols);
        return;
    }
    const quant_vec_ops *qv = quant_vec();
    if (q->s.kind == QTC_QK_NF4) { /* blocks over the flattened matrix, cut at the range's ends */
        const int64_t block = q->s.group, end = (r0 + n) * cols;
        for (int64_t i = r0 * cols; i < end;) {
            int64_t b = i / block, len = (b + 1) * block < end ? (b + 1) * block - i : end - i;
            float absmax = q->absmax_q ? q->dyn_map[q->absmax_q[b]] * q->nested_absmax[b / 256] + q->nested_offset
                                       : q->scale[b];
            if (packs_nibbles(q))
                qv->lut_nibbles(q->data, i, qtc_nf4_code, absmax, out + (i - r0 * cols), len);
            else
                qv->lut_bytes(q->data + i, qtc_nf4_code, absmax, out + (i - r0 * cols), len);
            i += len;
        }
        return;
    }
    const int offset = -QTC_QMIN(q->s.bits);
    const int64_t g = q->s.group > 0 ? q->s.group : cols;
    for (int64_t r = r0; r < r0 + n; r++)
        for (int64_t c = 0; c < cols; c += g) { /* one group: one scale and zero point */
            int64_t k = q->s.group < 0 ? 0 : r * q->n_groups + c / g, len = cols - c < g ? cols - c : g;
            int off = offset + (q->zero ? q->zero[k] : 0);
            float *o = out + (r - r0) * cols + c;
            if (packs_nibbles(q))
                qv->int_nibbles(q->data, r * cols + c, off, q->scale[k], o, len);
            else
                qv->int_u8(q->data + r * cols + c, off, q->scale[k], o, len);
        }
}

size_t qtc_qmatrix_bytes(const qtc_qmatrix *q)
{
    int64_t n = q->rows * q->cols;
    if (!q->is_scheme)
        return qtc_dtype_row_size(q->dtype, q->cols) * (size_t)q->rows;
    size_t b = packs_nibbles(q) ? (size_t)(n + 1) / 2 : (size_t)n;
    if (q->s.kind == QTC_QK_NF4)
        return b + (q->absmax_q ? (size_t)q->n_blocks + (size_t)(q->n_blocks + 255) / 256 * 4 : (size_t)q->n_blocks * 4);
    int64_t groups = q->s.group < 0 ? 1 : q->rows * q->n_groups;
    return b + (size_t)groups * (4 + (q->zero ? 1 : 0));
}

void qtc_qmatrix_free(qtc_qmatrix *q)
{
    if (!q->borrowed)
        free(q->data);
    free(q->scale);
    free(q->zero);
    free(q->absmax_q);
    free(q->nested_absmax);
    memset(q, 0, sizeof *q);
}
