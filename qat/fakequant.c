/* fakequant.c: fake quantization ops with straight-through estimators and
 * learnable scales and zero points (see qtc/qat.h for the formulas). */
#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/qat.h"

typedef struct fq_saved {
    qtc_qscheme s;
    float *scale, *zero;  /* per group, as used in the forward (zero rounded) */
    int64_t groups;       /* per row (1 per tensor: with per_tensor set) */
    int per_tensor;
    int per_column;       /* one group per column (an input channel), for all rows */
    float grad_factor;
} fq_saved;

/* group of element (row r, column c) */
static int64_t group_of(const fq_saved *f, int64_t r, int64_t c, int64_t cols)
{
    if (f->per_tensor)
        return 0;
    if (f->per_column)
        return c;
    int64_t g = f->s.group > 0 ? f->s.group : cols;
    return r * f->groups + c / g;
}

static void fq_backward(qtc_graph *g, qtc_node *n)
{
    qtc_tensor *xt = n->in[0], *st = n->in[1], *zt = n->in[2];
    const fq_saved *f = n->saved;
    const int qmin = QTC_QMIN(f->s.bits), qmax = QTC_QMAX(f->s.bits);
    int64_t cols = xt->ne[xt->ndim - 1], rows = qtc_tensor_numel(xt) / cols;
    const float *x = xt->data, *dy = n->out->grad->data;
    float *dx = qtc_graph_needs_grad(g, xt) ? qtc_graph_grad(g, xt) : NULL;
    float *ds = st && qtc_graph_needs_grad(g, st) ? qtc_graph_grad(g, st) : NULL;
    float *dz = zt && qtc_graph_needs_grad(g, zt) ? qtc_graph_grad(g, zt) : NULL;
    if (!f->per_column) { /* runs of one group, as the forward: a row owns its groups' ds, dz */
        int64_t gsize = f->s.group > 0 ? f->s.group : cols;
        int64_t run = f->per_tensor ? rows * cols : gsize, runs_per_row = f->per_tensor ? 1 : f->groups;
        int64_t n_rows = f->per_tensor ? 1 : rows, row_len = f->per_tensor ? rows * cols : cols;
        #pragma omp parallel for schedule(static) if (rows * cols > 65536)
        for (int64_t r = 0; r < n_rows; r++)
            for (int64_t k = 0; k < runs_per_row; k++) {
                int64_t c0 = k * run, len = row_len - c0 < run ? row_len - c0 : run, p = r * runs_per_row + k;
                int64_t i = r * row_len + c0;
                float s = f->scale[p], z = f->zero ? f->zero[p] : 0, sums[2] = {0, 0};
                qtc_int_fake_quant_back_row(x + i, dy + i, dx ? dx + i : NULL, len, 1.0f / s, (int)z, f->s.bits,
                                            ds || dz ? sums : NULL);
                if (ds)
                    ds[p] += sums[0] * f->grad_factor;
                if (dz)
                    dz[p] += sums[1] * -s * f->grad_factor;
            }
        return;
    }
    for (int64_t r = 0; r < rows; r++) /* serial: columns accumulate in a fixed order */
        for (int64_t c = 0; c < cols; c++) {
            int64_t k = group_of(f, r, c, cols), i = r * cols + c;
            float s = f->scale[k], inv = 1.0f / s, z = f->zero ? f->zero[k] : 0;
            float t = x[i] * inv, q = nearbyintf(t) + z;
            int inside = q >= (float)qmin && q <= (float)qmax;
            if (dx && inside)
                dx[i] += dy[i];
            if (ds)
                ds[k] += dy[i] * (inside ? (q - z) - t : q < (float)qmin ? (float)qmin - z : (float)qmax - z) * f->grad_factor;
            if (dz && !inside)
                dz[k] += dy[i] * -s * f->grad_factor;
        }
}

void qtc_fake_quant_init_params(const qtc_tensor *x, const qtc_qscheme *s, qtc_tensor *scale, qtc_tensor *zero)
{
    int64_t cols = x->ne[x->ndim - 1], rows = qtc_tensor_numel(x) / cols;
    const float *xd = x->data;
    float *sd = scale->data, *zd = zero ? zero->data : NULL;
    if (s->group < 0) {
        int z;
        qtc_int_qparams(xd, rows * cols, s->bits, s->symmetric, &sd[0], &z);
        if (zd)
            zd[0] = (float)z;
        return;
    }
    int64_t g = s->group > 0 ? s->group : cols, groups = (cols + g - 1) / g;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < groups; k++) {
            int64_t c0 = k * g, len = c0 + g <= cols ? g : cols - c0;
            int z;
            qtc_int_qparams(xd + r * cols + c0, len, s->bits, s->symmetric, &sd[r * groups + k], &z);
            if (zd)
                zd[r * groups + k] = (float)z;
        }
}

qtc_tensor *qtc_fake_quant(qtc_graph *g, qtc_tensor *x, const qtc_qscheme *s, qtc_tensor *scale, qtc_tensor *zero,
                           float grad_factor)
{
    if (!x)
        return NULL;
    assert(x->dtype == QTC_F32 && qtc_tensor_is_contiguous(x) && s->kind == QTC_QK_INT);
    int64_t cols = x->ne[x->ndim - 1], rows = qtc_tensor_numel(x) / cols;
    int64_t gsize = s->group > 0 ? s->group : cols, groups = s->group < 0 ? 1 : (cols + gsize - 1) / gsize;
    int64_t n_params = s->group < 0 ? 1 : rows * groups;
    const int qmin = QTC_QMIN(s->bits), qmax = QTC_QMAX(s->bits);
    qtc_tensor *y = qtc_graph_new_tensor(g, x->ndim, x->ne);
    fq_saved *f = qtc_graph_alloc(g, sizeof *f);
    float *sc = qtc_graph_alloc(g, (size_t)n_params * sizeof(float));
    float *zp = s->symmetric ? NULL : qtc_graph_alloc(g, (size_t)n_params * sizeof(float));
    if (!y || !f || !sc || (!s->symmetric && !zp))
        return NULL;
    f->s = *s;
    f->scale = sc;
    f->zero = zp;
    f->groups = groups;
    f->per_tensor = s->group < 0;
    f->per_column = 0;
    f->grad_factor = grad_factor > 0 ? grad_factor : (float)(1.0 / sqrt((double)qtc_tensor_numel(x) * qmax));
    if (scale) { /* learnable: as given, zero points rounded into the range */
        assert(qtc_tensor_numel(scale) == n_params && (!zp || (zero && qtc_tensor_numel(zero) == n_params)));
        memcpy(sc, scale->data, (size_t)n_params * sizeof(float));
        for (int64_t k = 0; zp && k < n_params; k++) {
            float z = nearbyintf(((float *)zero->data)[k]);
            zp[k] = z < (float)qmin ? (float)qmin : z > (float)qmax ? (float)qmax : z;
        }
    } else { /* the min-max observer, as quant/ computes it */
        qtc_tensor sct = {0}, zpt = {0};
        sct.data = sc;
        zpt.data = zp;
        qtc_fake_quant_init_params(x, s, &sct, zp ? &zpt : NULL);
    }
    const float *xd = x->data;
    float *yd = y->data;
    /* runs of one group (the whole tensor per tensor): one scale, zero point */
    int64_t run = f->per_tensor ? rows * cols : gsize, runs_per_row = f->per_tensor ? 1 : groups;
    int64_t n_rows = f->per_tensor ? 1 : rows, row_len = f->per_tensor ? rows * cols : cols;
    #pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t k = 0; k < runs_per_row; k++) {
            int64_t c0 = k * run, len = row_len - c0 < run ? row_len - c0 : run, p = r * runs_per_row + k;
            int z = zp ? (int)zp[p] : 0;
            qtc_int_fake_quant_row(xd + r * row_len + c0, yd + r * row_len + c0, len, 1.0f / sc[p], sc[p], z,
                                   s->bits);
        }
    qtc_node *n = qtc_graph_record(g, "fake_quant", fq_backward, y, 3, (qtc_tensor *[]){x, scale, scale ? zero : NULL});
    if (n)
        n->saved = f;
    return y;
}

qtc_tensor *qtc_fake_quant_columns(qtc_graph *g, qtc_tensor *x, int bits, const float *scale, const float *zero)
{
    if (!x)
        return NULL;
    assert(x->dtype == QTC_F32 && qtc_tensor_is_contiguous(x) && bits >= 2 && bits <= 8);
    int64_t cols = x->ne[x->ndim - 1], rows = qtc_tensor_numel(x) / cols;
    qtc_tensor *y = qtc_graph_new_tensor(g, x->ndim, x->ne);
    fq_saved *f = qtc_graph_alloc(g, sizeof *f);
    float *sc = qtc_graph_alloc(g, (size_t)cols * sizeof(float)), *zp = qtc_graph_alloc(g, (size_t)cols * sizeof(float));
    if (!y || !f || !sc || !zp)
        return NULL;
    memset(f, 0, sizeof *f);
    f->s = (qtc_qscheme){QTC_QK_INT, bits, 1, 0, 0};
    f->scale = sc;
    f->zero = zp;
    f->per_column = 1;
    memcpy(sc, scale, (size_t)cols * sizeof(float));
    memcpy(zp, zero, (size_t)cols * sizeof(float));
    float *inv = qtc_graph_alloc(g, (size_t)(2 * cols) * sizeof(float)), *zi = inv ? inv + cols : NULL;
    if (!inv)
        return NULL;
    for (int64_t c = 0; c < cols; c++) {
        inv[c] = 1.0f / sc[c];
        zi[c] = (float)(int)zp[c]; /* qtc_int_quantize_one's integer zero point */
    }
    const float *xd = x->data;
    float *yd = y->data;
    #pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (int64_t r = 0; r < rows; r++)
        qtc_int_fake_quant_cols(xd + r * cols, yd + r * cols, cols, inv, sc, zi, bits);
    qtc_node *n = qtc_graph_record(g, "fake_quant_columns", fq_backward, y, 3, (qtc_tensor *[]){x, NULL, NULL});
    if (n)
        n->saved = f;
    return y;
}

static void identity_backward(qtc_graph *g, qtc_node *n)
{
    float *dx = qtc_graph_grad(g, n->in[0]);
    if (!dx)
        return;
    const float *dy = n->out->grad->data;
    int64_t len = qtc_tensor_numel(n->in[0]);
    for (int64_t i = 0; i < len; i++)
        dx[i] += dy[i];
}

qtc_tensor *qtc_fake_quant_nf4(qtc_graph *g, qtc_tensor *x, const qtc_qscheme *s)
{
    if (!x)
        return NULL;
    assert(x->dtype == QTC_F32 && qtc_tensor_is_contiguous(x) && s->kind == QTC_QK_NF4);
    int64_t cols = x->ne[x->ndim - 1], rows = qtc_tensor_numel(x) / cols;
    qtc_tensor *y = qtc_graph_new_tensor(g, x->ndim, x->ne);
    if (!y)
        return NULL;
    qtc_qweight q;
    qtc_error err;
    if (qtc_qweight_quantize(x->data, rows, cols, s, &q, &err) != QTC_OK) {
        for (int64_t i = 0; i < rows * cols; i++) /* NaN weights: the training loop stops on its loss */
            ((float *)y->data)[i] = NAN;
    } else {
        qtc_qweight_dequantize(&q, y->data);
        qtc_qweight_free(&q);
    }
    qtc_graph_record(g, "fake_quant_nf4", identity_backward, y, 1, &x);
    return y;
}
