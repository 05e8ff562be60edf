/* calib.c: the calibration statistics and what is computed from them alone:
 * running histograms, activation ranges (min-max, percentile, MSE, KL),
 * GPTQ, and sha256 for provenance. Running a model to collect them is
 * model/calibrate.c. */
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/calib.h"

void qtc_act_stats_add(qtc_act_stats *s, const float *x, int64_t rows)
{
    const int64_t in = s->in, n = rows * in;
    double amax = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = x[i];
        if (v < s->min || (!s->rows && i == 0))
            s->min = v;
        if (v > s->max || (!s->rows && i == 0))
            s->max = v;
        amax = fmax(amax, fabs(v));
    }
    if (s->range == 0) /* the first batch sets the range */
        s->range = amax > 0 ? amax * (1 + 1e-9) : 1.0;
    while (amax >= s->range) { /* double the range: bin pairs merge exactly (2048 is even, the range symmetric) */
        double merged[QTC_HIST_BINS] = {0};
        for (int b = 0; b < QTC_HIST_BINS; b++)
            merged[(QTC_HIST_BINS / 2 + b) / 2] += s->hist[b];
        memcpy(s->hist, merged, sizeof merged);
        s->range *= 2;
    }
    const double scale = QTC_HIST_BINS / (2 * s->range);
    for (int64_t i = 0; i < n; i++) {
        int b = (int)floor((x[i] + s->range) * scale);
        s->hist[b < 0 ? 0 : b >= QTC_HIST_BINS ? QTC_HIST_BINS - 1 : b] += 1;
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < in; c++) {
            double v = x[r * in + c];
            s->sum_sq[c] += v * v;
            s->sum_abs[c] += fabs(v);
            s->amax[c] = fmax(s->amax[c], fabs(v));
            if (s->cmin && ((!s->rows && r == 0) || v < s->cmin[c]))
                s->cmin[c] = v;
            if (s->cmax && ((!s->rows && r == 0) || v > s->cmax[c]))
                s->cmax[c] = v;
        }
    if (s->xtx) { /* sum of x x^T: the batch's X^T X by BLAS in float (a few hundred rows), added up in double */
        float *batch = malloc((size_t)(in * in) * sizeof *batch);
        if (batch) {
            cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, (int)in, (int)rows, 1.0f, x, (int)in, 0.0f, batch, (int)in);
            for (int64_t a = 0; a < in; a++)
                for (int64_t b = 0; b <= a; b++) {
                    s->xtx[a * in + b] += batch[a * in + b];
                    s->xtx[b * in + a] = s->xtx[a * in + b];
                }
            free(batch);
        } else {
            s->xtx_failed = 1;
        }
    }
    s->rows += rows;
}

int qtc_range_method_parse(const char *name, qtc_range_method *m)
{
    static const char *names[] = {"minmax", "percentile", "mse", "kl"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) {
            *m = (qtc_range_method)i;
            return 0;
        }
    return -1;
}

const char *qtc_range_method_name(qtc_range_method m)
{
    static const char *names[] = {"minmax", "percentile", "mse", "kl"};
    return (unsigned)m < 4 ? names[m] : "?";
}

/* The value below which a share q of the histogram's mass lies (linear within a bin). */
static double quantile(const qtc_act_stats *s, double q)
{
    double total = 0;
    for (int b = 0; b < QTC_HIST_BINS; b++)
        total += s->hist[b];
    const double width = 2 * s->range / QTC_HIST_BINS, want = q * total;
    double acc = 0;
    for (int b = 0; b < QTC_HIST_BINS; b++) {
        if (acc + s->hist[b] >= want && s->hist[b] > 0)
            return -s->range + width * (b + (want - acc) / s->hist[b]);
        acc += s->hist[b];
    }
    return s->range;
}

/* Expected squared error of symmetric b-bit quantization clipped at t, over the bin centres. */
static double clip_mse(const qtc_act_stats *s, double t, int bits)
{
    const double width = 2 * s->range / QTC_HIST_BINS, levels = (double)((1 << bits) - 1) / 2, step = t / levels;
    double e = 0;
    for (int b = 0; b < QTC_HIST_BINS; b++) {
        if (!s->hist[b])
            continue;
        double x = -s->range + width * (b + 0.5), c = fmax(-t, fmin(t, x));
        double q = nearbyint(c / step) * step;
        q = fmax(-levels * step, fmin(levels * step, q));
        e += s->hist[b] * (x - q) * (x - q);
    }
    return e;
}

/* TensorRT's entropy calibration over |x| (the histogram folded at 0). */
static double kl_threshold(const qtc_act_stats *s, int bits)
{
    enum { HALF = QTC_HIST_BINS / 2 };
    const int levels = 1 << (bits - 1); /* 128 for int8 */
    double h[HALF];
    for (int b = 0; b < HALF; b++)
        h[b] = s->hist[HALF + b] + s->hist[HALF - 1 - b];
    const double width = s->range / HALF;
    double best = INFINITY;
    int best_i = HALF;
    double *p = malloc(HALF * sizeof *p), *q = malloc(HALF * sizeof *q);
    if (!p || !q) {
        free(p);
        free(q);
        return s->range;
    }
    for (int i = levels; i <= HALF; i++) {
        /* P: the first i bins, the rest folded into the last one */
        double outliers = 0;
        for (int b = i; b < HALF; b++)
            outliers += h[b];
        memcpy(p, h, (size_t)i * sizeof *p);
        p[i - 1] += outliers;
        /* Q: the first i bins merged into `levels` groups, each spread evenly over its non-empty bins */
        for (int j = 0; j < levels; j++) {
            int b0 = (int)((int64_t)j * i / levels), b1 = (int)((int64_t)(j + 1) * i / levels);
            double sum = 0;
            int nonzero = 0;
            for (int b = b0; b < b1; b++) {
                sum += h[b];
                nonzero += h[b] != 0;
            }
            for (int b = b0; b < b1; b++)
                q[b] = h[b] != 0 ? sum / nonzero : 0;
        }
        double ps = 0, qs = 0, kl = 0;
        for (int b = 0; b < i; b++) {
            ps += p[b];
            qs += q[b];
        }
        for (int b = 0; b < i && ps > 0 && qs > 0; b++) {
            if (p[b] == 0)
                continue;
            double pb = p[b] / ps, qb = q[b] / qs;
            kl += qb > 0 ? pb * log(pb / qb) : pb * log(pb / 1e-12); /* a mass Q cannot represent costs a lot */
        }
        if (kl < best) {
            best = kl;
            best_i = i;
        }
    }
    free(p);
    free(q);
    return (best_i + 0.5) * width;
}

void qtc_act_range(const qtc_act_stats *s, qtc_range_method m, double p, int bits, double *lo, double *hi)
{
    if (m == QTC_RANGE_MINMAX || !s->rows) {
        *lo = s->min;
        *hi = s->max;
    } else if (m == QTC_RANGE_PERCENTILE) {
        double tail = (100 - p) / 100;
        *lo = fmax(s->min, quantile(s, tail));
        *hi = fmin(s->max, quantile(s, 1 - tail));
    } else if (m == QTC_RANGE_MSE) {
        const double amax = fmax(fabs(s->min), fabs(s->max));
        double best_t = amax, best_e = INFINITY;
        for (int k = 1; k <= 1000; k++) { /* thresholds from 0.1% of max |x| to max |x| */
            double t = amax * k / 1000.0, e = clip_mse(s, t, bits);
            if (e < best_e) {
                best_e = e;
                best_t = t;
            }
        }
        *lo = fmax(-best_t, fmin(s->min, 0));
        *hi = fmin(best_t, fmax(s->max, 0));
    } else {
        double t = kl_threshold(s, bits);
        *lo = fmax(-t, fmin(s->min, 0));
        *hi = fmin(t, fmax(s->max, 0));
    }
}

/* --- GPTQ ---------------------------------------------------------------------------------- */

void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info);

/* Upper Cholesky factor U (row-major, U^T U = A^-1) of the inverse of the
 * symmetric positive definite n x n matrix a, in place. 0 on success. */
static int inverse_cholesky_upper(double *a, int n)
{
    int info = 0;
    /* row-major a is column-major a^T = a: "L" of the column-major view is our upper triangle */
    dpotrf_("L", &n, a, &n, &info);
    if (info)
        return info;
    dpotri_("L", &n, a, &n, &info); /* A^-1, lower triangle (column-major) = our upper */
    if (info)
        return info;
    for (int i = 0; i < n; i++) /* mirror into a full symmetric matrix */
        for (int j = 0; j < i; j++)
            a[(int64_t)i * n + j] = a[(int64_t)j * n + i];
    /* the upper factor of A^-1: U^T U = A^-1, i.e. column-major lower L = U^T */
    dpotrf_("L", &n, a, &n, &info);
    if (info)
        return info;
    for (int i = 0; i < n; i++) /* keep the upper triangle (row-major), zero below */
        for (int j = 0; j < i; j++)
            a[(int64_t)i * n + j] = 0;
    return 0;
}

qtc_status qtc_gptq(const float *w_in, int64_t rows, int64_t cols, const double *xtx, int64_t n, const qtc_qscheme *s,
                    const qtc_gptq_opts *o, qtc_qweight *out, qtc_error *err)
{
    if (s->kind != QTC_QK_INT)
        return qtc_error_set(err, QTC_ERR_USAGE, "GPTQ quantizes to integer schemes");
    if (n <= 0)
        return qtc_error_set(err, QTC_ERR_USAGE, "GPTQ needs calibration inputs");
    memset(out, 0, sizeof *out);
    out->s = *s;
    out->rows = rows;
    out->cols = cols;
    if (qtc_qweight_alloc(out, err) != QTC_OK)
        return err->code;
    const int64_t g = s->group > 0 ? s->group : cols;
    double *H = malloc((size_t)(cols * cols) * sizeof *H), *W = malloc((size_t)(rows * cols) * sizeof *W);
    int64_t *perm = malloc((size_t)cols * sizeof *perm);
    float *col = malloc((size_t)cols * sizeof *col), *orig = malloc((size_t)(rows * cols) * sizeof *orig);
    qtc_status rc = QTC_OK;
    if (!H || !W || !perm || !col || !orig) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int64_t c = 0; c < cols; c++)
        perm[c] = c;
    if (o->act_order) { /* descending diag(H), ties by index */
        for (int64_t i = 1; i < cols; i++) {
            int64_t v = perm[i], j = i;
            while (j > 0 && xtx[perm[j - 1] * cols + perm[j - 1]] < xtx[v * cols + v]) {
                perm[j] = perm[j - 1];
                j--;
            }
            perm[j] = v;
        }
    }
    /* H = 2/n X^T X in the processing order; dead channels get H = 1 and weight 0 */
    double mean_diag = 0;
    for (int64_t a = 0; a < cols; a++)
        for (int64_t b = 0; b < cols; b++)
            H[a * cols + b] = 2.0 * xtx[perm[a] * cols + perm[b]] / (double)n;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            W[r * cols + c] = w_in[r * cols + perm[c]];
    for (int64_t c = 0; c < cols; c++) {
        if (H[c * cols + c] == 0) {
            H[c * cols + c] = 1;
            for (int64_t r = 0; r < rows; r++)
                W[r * cols + c] = 0;
        }
        mean_diag += H[c * cols + c];
    }
    mean_diag /= (double)cols;
    for (int64_t c = 0; c < cols; c++)
        H[c * cols + c] += o->damp * mean_diag;
    if (inverse_cholesky_upper(H, (int)cols) != 0) {
        rc = qtc_error_set(err, QTC_ERR_NUMERIC, "GPTQ: the damped Hessian is not positive definite (raise the damping)");
        goto done;
    }
    /* group scales: from the weights as they are when a group's first column is reached (static groups
       from the original weights under act-order, so groups stay contiguous in the stored layout) */
    for (int64_t i = 0; i < rows * cols; i++)
        orig[i] = w_in[i];
    if (o->act_order || s->group < 0) /* static: every group's parameters from the original weights */
        for (int64_t r = 0; r < rows; r++)
            for (int64_t k = 0; k < (s->group < 0 ? 1 : out->n_groups); k++) {
                if (s->group < 0 && r > 0)
                    break;
                int64_t c0 = s->group < 0 ? 0 : k * g, len = s->group < 0 ? rows * cols : (c0 + g <= cols ? g : cols - c0);
                int z;
                int64_t gi = s->group < 0 ? 0 : r * out->n_groups + k;
                qtc_int_qparams(orig + (s->group < 0 ? 0 : r * cols + c0), len, s->bits, s->symmetric, &out->scale[gi], &z);
                if (out->zero)
                    out->zero[gi] = (int8_t)z;
            }
    for (int64_t i = 0; i < cols; i++) {
        const int64_t c = perm[i], k = s->group < 0 ? 0 : c / g;
        const double d = H[i * cols + i];
        if (!o->act_order && s->group >= 0 && c % g == 0) /* a group starts: its scales from the updated weights */
            for (int64_t r = 0; r < rows; r++) {
                int64_t len = c + g <= cols ? g : cols - c;
                for (int64_t j = 0; j < len; j++)
                    col[j] = (float)W[r * cols + i + j];
                int z;
                qtc_int_qparams(col, len, s->bits, s->symmetric, &out->scale[r * out->n_groups + k], &z);
                if (out->zero)
                    out->zero[r * out->n_groups + k] = (int8_t)z;
            }
        #pragma omp parallel for schedule(static) if (rows * (cols - i) > 32768)
        for (int64_t r = 0; r < rows; r++) { /* rows are independent: H is shared, W's rows are not */
            const int64_t gi = s->group < 0 ? 0 : r * out->n_groups + k;
            const float sc = out->scale[gi];
            const int z = out->zero ? out->zero[gi] : 0;
            double wv = W[r * cols + i];
            int q = qtc_int_quantize_one((float)wv, 1.0f / sc, z, s->bits); /* stored with its zero point */
            out->q[r * cols + c] = (int8_t)q;
            double e = (wv - (double)(q - z) * sc) / d;
            /* the error goes to every column not yet quantized at once (what the reference's lazy
               128-column batches compute, in another order of the same sums) */
            for (int64_t j = i + 1; j < cols; j++)
                W[r * cols + j] -= e * H[i * cols + j];
        }
    }
done:
    if (rc != QTC_OK)
        qtc_qweight_free(out);
    free(H);
    free(W);
    free(perm);
    free(col);
    free(orig);
    return rc;
}
