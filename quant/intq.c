/* intq.c: integer quantization per tensor, per channel and per group, as
 * PyTorch's observers and fake quantization define it (and as
 * compressed-tensors stores it). */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/quant.h"
#include "quant_private.h"

int qtc_qscheme_parse(const char *name, qtc_qscheme *s)
{
    memset(s, 0, sizeof *s);
    if (strcmp(name, "nf4") == 0 || strcmp(name, "nf4-single") == 0) {
        s->kind = QTC_QK_NF4;
        s->bits = 4;
        s->group = 64;
        s->double_quant = strcmp(name, "nf4") == 0;
        return 0;
    }
    if (strncmp(name, "int", 3) != 0)
        return -1;
    char *end;
    long bits = strtol(name + 3, &end, 10);
    if (end == name + 3 || bits < 2 || bits > 8)
        return -1;
    s->kind = QTC_QK_INT;
    s->bits = (int)bits;
    s->symmetric = 1;
    s->group = 0;
    if (strncmp(end, "-tensor", 7) == 0) {
        s->group = -1;
        end += 7;
    } else if (strncmp(end, "-g", 2) == 0) {
        char *e2;
        long g = strtol(end + 2, &e2, 10);
        if (e2 == end + 2 || g <= 0 || g > (1 << 20))
            return -1;
        s->group = (int)g;
        end = e2;
    }
    if (strcmp(end, "-asym") == 0) {
        s->symmetric = 0;
        end += 5;
    }
    return *end ? -1 : 0;
}

void qtc_qscheme_name(const qtc_qscheme *s, char *buf, size_t cap)
{
    if (s->kind == QTC_QK_NF4) {
        snprintf(buf, cap, s->double_quant ? "nf4" : "nf4-single");
        return;
    }
    char g[32] = "";
    if (s->group > 0)
        snprintf(g, sizeof g, "-g%d", s->group);
    else if (s->group < 0)
        snprintf(g, sizeof g, "-tensor");
    snprintf(buf, cap, "int%d%s%s", s->bits, g, s->symmetric ? "" : "-asym");
}

static int64_t groups_per_row(const qtc_qscheme *s, int64_t cols)
{
    return s->group > 0 ? (cols + s->group - 1) / s->group : 1;
}

double qtc_qscheme_bpw(const qtc_qscheme *s, int64_t rows, int64_t cols)
{
    double n = (double)rows * (double)cols;
    if (n == 0)
        return 0;
    if (s->kind == QTC_QK_NF4) {
        double blocks = ceil(n / s->group);
        double stats = s->double_quant ? blocks * 8 + ceil(blocks / 256) * 32 : blocks * 32;
        return (n * 4 + stats) / n;
    }
    double groups = s->group < 0 ? 1 : (double)rows * (double)groups_per_row(s, cols);
    return (n * s->bits + groups * (32 + (s->symmetric ? 0 : 8))) / n;
}

void qtc_int_qparams(const float *x, int64_t n, int bits, int symmetric, float *scale, int *zero)
{
    float lo = 0, hi = 0; /* the range always includes 0 */
    for (int64_t i = 0; i < n; i++) {
        if (x[i] < lo)
            lo = x[i];
        if (x[i] > hi)
            hi = x[i];
    }
    const int qmin = QTC_QMIN(bits), qmax = QTC_QMAX(bits);
    float s;
    int z = 0;
    if (symmetric) {
        float amax = fmaxf(-lo, hi);
        s = amax / ((float)(qmax - qmin) / 2);
    } else {
        s = (hi - lo) / (float)(qmax - qmin);
    }
    if (s < FLT_EPSILON)
        s = FLT_EPSILON;
    if (!symmetric) {
        z = qmin - (int)nearbyintf(lo / s);
        z = z < qmin ? qmin : z > qmax ? qmax : z;
    }
    *scale = s;
    *zero = z;
}

int qtc_int_quantize_one(float x, float inv_scale, int zero, int bits)
{
    const int qmin = QTC_QMIN(bits), qmax = QTC_QMAX(bits);
    float r = nearbyintf(x * inv_scale);
    /* compare in float first: a huge x must not overflow the int conversion */
    if (r + (float)zero <= (float)qmin)
        return qmin;
    if (r + (float)zero >= (float)qmax)
        return qmax;
    return (int)r + zero;
}

qtc_status qtc_qweight_alloc(qtc_qweight *q, qtc_error *err)
{
    int64_t n = q->rows * q->cols;
    const qtc_qscheme *s = &q->s;
    q->q = calloc((size_t)(n ? n : 1), 1);
    if (s->kind == QTC_QK_INT) {
        q->n_groups = groups_per_row(s, q->cols);
        int64_t ns = s->group < 0 ? 1 : q->rows * q->n_groups;
        q->scale = calloc((size_t)ns, sizeof *q->scale);
        if (!s->symmetric)
            q->zero = calloc((size_t)ns, 1);
        if (!q->q || !q->scale || (!s->symmetric && !q->zero))
            goto nomem;
        return QTC_OK;
    }
    q->n_blocks = (n + s->group - 1) / s->group;
    q->scale = calloc((size_t)(q->n_blocks ? q->n_blocks : 1), sizeof *q->scale);
    if (!q->q || !q->scale)
        goto nomem;
    if (s->double_quant) {
        q->absmax_q = calloc((size_t)(q->n_blocks ? q->n_blocks : 1), 1);
        q->nested_absmax = calloc((size_t)((q->n_blocks + 255) / 256 + 1), sizeof(float));
        if (!q->absmax_q || !q->nested_absmax)
            goto nomem;
    }
    return QTC_OK;
nomem:
    qtc_qweight_free(q);
    return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
}

void qtc_qweight_free(qtc_qweight *q)
{
    free(q->q);
    free(q->scale);
    free(q->zero);
    free(q->absmax_q);
    free(q->nested_absmax);
    q->q = NULL;
    q->scale = NULL;
    q->zero = NULL;
    q->absmax_q = NULL;
    q->nested_absmax = NULL;
}

/* The values of every group of w against q's scales and zero points. */
static void quantize_values(const float *w, qtc_qweight *q)
{
    const qtc_qscheme *s = &q->s;
    const int64_t rows = q->rows, cols = q->cols, g = s->group > 0 ? s->group : cols;
    #pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            int64_t k = s->group < 0 ? 0 : r * q->n_groups + c / g;
            q->q[r * cols + c] = (int8_t)qtc_int_quantize_one(w[r * cols + c], 1.0f / q->scale[k], q->zero ? q->zero[k] : 0, s->bits);
        }
}

static qtc_status check_and_alloc(const float *w, int64_t rows, int64_t cols, const qtc_qscheme *s, qtc_qweight *q,
                                  qtc_error *err)
{
    memset(q, 0, sizeof *q);
    q->s = *s;
    q->rows = rows;
    q->cols = cols;
    for (int64_t i = 0; i < rows * cols; i++)
        if (!isfinite(w[i]))
            return qtc_error_set(err, QTC_ERR_NUMERIC, "element %lld is %s", (long long)i, isnan(w[i]) ? "NaN" : "infinite");
    return qtc_qweight_alloc(q, err) == QTC_OK ? QTC_OK : QTC_ERR_NOMEM;
}

qtc_status qtc_qweight_quantize(const float *w, int64_t rows, int64_t cols, const qtc_qscheme *s,
                                qtc_qweight *q, qtc_error *err)
{
    qtc_status rc = check_and_alloc(w, rows, cols, s, q, err);
    if (rc != QTC_OK)
        return rc;
    if (s->kind == QTC_QK_NF4)
        return nf4_quantize(w, q);
    /* min-max scales and zero points per group (the whole tensor: one group) */
    const int64_t g = s->group > 0 ? s->group : cols, groups = s->group < 0 ? 1 : rows * q->n_groups;
    for (int64_t k = 0; k < groups; k++) {
        int64_t r = s->group < 0 ? 0 : k / q->n_groups, c0 = s->group < 0 ? 0 : (k % q->n_groups) * g;
        int64_t len = s->group < 0 ? rows * cols : (c0 + g <= cols ? g : cols - c0); /* the last group may be partial */
        int z;
        qtc_int_qparams(w + r * cols + c0, len, s->bits, s->symmetric, &q->scale[k], &z);
        if (q->zero)
            q->zero[k] = (int8_t)z;
    }
    quantize_values(w, q);
    return QTC_OK;
}

/* Weighted squared error of one group quantized with scale sc and zero z. */
static double group_error(const float *x, const float *imp, int64_t len, float sc, int z, int bits)
{
    double e = 0;
    const float inv = 1.0f / sc;
    for (int64_t j = 0; j < len; j++) {
        double d = x[j] - (float)(qtc_int_quantize_one(x[j], inv, z, bits) - z) * sc;
        e += (double)imp[j] * d * d;
    }
    return e;
}

qtc_status qtc_qweight_quantize_weighted(const float *w, int64_t rows, int64_t cols, const qtc_qscheme *s,
                                         const float *importance, qtc_qweight *q, qtc_error *err)
{
    if (s->kind != QTC_QK_INT)
        return qtc_qweight_quantize(w, rows, cols, s, q, err); /* NF4's code has no scale to choose */
    qtc_status rc = qtc_qweight_quantize(w, rows, cols, s, q, err);
    if (rc != QTC_OK)
        return rc;
    const int64_t g = s->group > 0 ? s->group : cols, groups = s->group < 0 ? 1 : rows * q->n_groups;
    const int qmin = QTC_QMIN(s->bits);
    float *imp = malloc((size_t)(s->group < 0 ? rows * cols : g) * sizeof *imp);
    if (!imp) {
        qtc_qweight_free(q);
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    }
    for (int64_t k = 0; k < groups; k++) {
        int64_t r = s->group < 0 ? 0 : k / q->n_groups, c0 = s->group < 0 ? 0 : (k % q->n_groups) * g;
        int64_t len = s->group < 0 ? rows * cols : (c0 + g <= cols ? g : cols - c0);
        const float *x = w + r * cols + c0;
        for (int64_t j = 0; j < len; j++) /* a small floor keeps channels never seen in play */
            imp[j] = importance[(c0 + j) % cols] + 1e-8f;
        /* the min-max scale shrunk by up to 40% in 1% steps, keeping the one with the least weighted error */
        float best_s = q->scale[k];
        int best_z = q->zero ? q->zero[k] : 0;
        double best = group_error(x, imp, len, best_s, best_z, s->bits);
        float lo = 0, hi = 0;
        for (int64_t j = 0; j < len; j++) {
            lo = x[j] < lo ? x[j] : lo;
            hi = x[j] > hi ? x[j] : hi;
        }
        for (int f = 99; f >= 60; f--) {
            float range[2] = {lo * (float)f / 100, hi * (float)f / 100}, sc;
            int z;
            qtc_int_qparams(range, 2, s->bits, s->symmetric, &sc, &z);
            if (!s->symmetric) { /* the zero point of the shrunk range */
                z = qmin - (int)nearbyintf(range[0] / sc);
                z = z < qmin ? qmin : z > QTC_QMAX(s->bits) ? QTC_QMAX(s->bits) : z;
            }
            double e = group_error(x, imp, len, sc, z, s->bits);
            if (e < best) {
                best = e;
                best_s = sc;
                best_z = z;
            }
        }
        q->scale[k] = best_s;
        if (q->zero)
            q->zero[k] = (int8_t)best_z;
    }
    free(imp);
    quantize_values(w, q);
    return QTC_OK;
}

qtc_status qtc_qweight_quantize_with(const float *w, int64_t rows, int64_t cols, const qtc_qscheme *s,
                                     const float *scale, const float *zero, qtc_qweight *q, qtc_error *err)
{
    if (s->kind != QTC_QK_INT)
        return qtc_error_set(err, QTC_ERR_USAGE, "given scales are for integer schemes");
    qtc_status rc = check_and_alloc(w, rows, cols, s, q, err);
    if (rc != QTC_OK)
        return rc;
    const int qmin = QTC_QMIN(s->bits), qmax = QTC_QMAX(s->bits);
    int64_t groups = s->group < 0 ? 1 : rows * q->n_groups;
    for (int64_t k = 0; k < groups; k++) {
        if (!(scale[k] > 0) || !isfinite(scale[k])) {
            qtc_qweight_free(q);
            return qtc_error_set(err, QTC_ERR_NUMERIC, "scale %lld is %g", (long long)k, (double)scale[k]);
        }
        q->scale[k] = scale[k];
        if (q->zero) { /* a float zero point rounds into the grid, as fake quantization uses it */
            float z = nearbyintf(zero[k]);
            q->zero[k] = (int8_t)(z < (float)qmin ? qmin : z > (float)qmax ? qmax : z);
        }
    }
    quantize_values(w, q);
    return QTC_OK;
}

void qtc_qweight_dequantize(const qtc_qweight *q, float *w)
{
    if (q->s.kind == QTC_QK_NF4) {
        nf4_dequantize(q, w);
        return;
    }
    const int64_t g = q->s.group > 0 ? q->s.group : q->cols, cols = q->cols;
    const quant_vec_ops *qv = quant_vec();
    #pragma omp parallel for schedule(static) if (q->rows * cols > 65536)
    for (int64_t r = 0; r < q->rows; r++)
        for (int64_t c = 0; c < cols; c += g) { /* one group: one scale and zero point */
            int64_t k = q->s.group < 0 ? 0 : r * q->n_groups + c / g;
            qv->int_s8(q->q + r * cols + c, q->zero ? q->zero[k] : 0, q->scale[k], w + r * cols + c,
                       cols - c < g ? cols - c : g);
        }
}

void qtc_int_fake_quant_row(const float *x, float *y, int64_t n, float inv_scale, float scale, int zero, int bits)
{
    quant_vec()->fake_quant(x, y, n, inv_scale, scale, (float)zero, QTC_QMIN(bits), QTC_QMAX(bits));
}

void qtc_int_fake_quant_back_row(const float *x, const float *dy, float *dx, int64_t n, float inv_scale, int zero,
                                 int bits, float *sums)
{
    quant_vec()->fake_quant_back(x, dy, dx, n, inv_scale, (float)zero, QTC_QMIN(bits), QTC_QMAX(bits), sums);
}

void qtc_int_fake_quant_cols(const float *x, float *y, int64_t n, const float *inv_scale, const float *scale,
                             const float *zero, int bits)
{
    quant_vec()->fake_quant_cols(x, y, n, inv_scale, scale, zero, QTC_QMIN(bits), QTC_QMAX(bits));
}
