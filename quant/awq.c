/* awq.c: activation-aware weight quantization's scale search (see
 * qtc/calib.h): scale the input channels that carry large activations up
 * before rounding, so their weights round more finely, and fold the inverse
 * into whatever produced the input. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/calib.h"

/* Output error of replacing w by wq (rows x cols): sum over rows of d H d^T, d = w - wq. */
static double output_error(const float *w, const float *wq, int64_t rows, int64_t cols, const double *H)
{
    double total = 0;
    #pragma omp parallel for reduction(+ : total) schedule(static) if (rows * cols * cols > 1000000)
    for (int64_t r = 0; r < rows; r++) {
        double *d = malloc((size_t)cols * sizeof *d), e = 0;
        if (!d)
            continue;
        for (int64_t c = 0; c < cols; c++)
            d[c] = (double)w[r * cols + c] - wq[r * cols + c];
        for (int64_t a = 0; a < cols; a++) {
            double hd = 0;
            for (int64_t b = 0; b < cols; b++)
                hd += H[a * cols + b] * d[b];
            e += d[a] * hd;
        }
        total += e;
        free(d);
    }
    return total;
}

/* The output error of quantizing w diag(scales) and scaling back. */
static double scaled_error(const float *w, int64_t rows, int64_t cols, const float *scales, const double *H,
                           const qtc_qscheme *s, float *tmp, float *back, qtc_error *err)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            tmp[r * cols + c] = w[r * cols + c] * scales[c];
    qtc_qweight q;
    if (qtc_qweight_quantize(tmp, rows, cols, s, &q, err) != QTC_OK)
        return -1;
    qtc_qweight_dequantize(&q, back);
    qtc_qweight_free(&q);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            back[r * cols + c] /= scales[c];
    return output_error(w, back, rows, cols, H);
}

qtc_status qtc_awq_search(const float *const *ws, const int64_t *rows, int n, int64_t cols, const double *xtx,
                          const double *mean_abs, const qtc_qscheme *s, int grid, float *scales, double *alpha,
                          double *err, double *err_rtn, qtc_error *qerr)
{
    int64_t most = 0;
    for (int i = 0; i < n; i++)
        most = rows[i] > most ? rows[i] : most;
    float *tmp = malloc((size_t)(most * cols) * sizeof *tmp), *back = malloc((size_t)(most * cols) * sizeof *back);
    float *cand = malloc((size_t)cols * sizeof *cand);
    if (!tmp || !back || !cand) {
        free(tmp);
        free(back);
        free(cand);
        return qtc_error_set(qerr, QTC_ERR_NOMEM, "out of memory");
    }
    qtc_status rc = QTC_OK;
    *err = INFINITY;
    for (int k = 0; k < grid && rc == QTC_OK; k++) {
        double a = (double)k / grid, mx = 0, mn = INFINITY;
        for (int64_t c = 0; c < cols; c++) {
            double v = pow(fmax(mean_abs[c], 1e-4), a);
            cand[c] = (float)v;
            mx = fmax(mx, v);
            mn = fmin(mn, v);
        }
        double norm = sqrt(mx * mn);
        for (int64_t c = 0; c < cols; c++)
            cand[c] = (float)(cand[c] / norm);
        double e = 0;
        for (int i = 0; i < n && rc == QTC_OK; i++) {
            double ei = scaled_error(ws[i], rows[i], cols, cand, xtx, s, tmp, back, qerr);
            if (ei < 0)
                rc = qerr->code;
            e += ei;
        }
        if (k == 0)
            *err_rtn = e; /* alpha 0: all scales 1, plain round to nearest */
        if (rc == QTC_OK && e < *err) {
            *err = e;
            *alpha = a;
            memcpy(scales, cand, (size_t)cols * sizeof *scales);
        }
    }
    free(tmp);
    free(back);
    free(cand);
    return rc;
}

/* The output error of one group of a row: d H_gg d^T over columns [c0, c0 + g),
 * H seen through the input scales (the inputs are x / scale once the weights
 * carry the scale). */
static double group_error(const float *w, const float *wq, int64_t c0, int64_t g, int64_t cols, const double *H,
                          const float *in_scale)
{
    double e = 0;
    for (int64_t a = 0; a < g; a++) {
        double da = (double)w[a] - wq[a], hd = 0;
        if (da == 0)
            continue;
        for (int64_t b = 0; b < g; b++) {
            double h = H[(c0 + a) * cols + c0 + b];
            if (in_scale)
                h /= (double)in_scale[c0 + a] * in_scale[c0 + b];
            hd += h * ((double)w[b] - wq[b]);
        }
        e += da * hd;
    }
    return e;
}

/* One group clamped to [-m, m] and rounded to nearest in s (its own min-max
 * range, as qtc_qweight_quantize would round it) into out. */
static void clip_and_round(const float *w, int64_t g, float m, const qtc_qscheme *s, float *clamped, float *out)
{
    for (int64_t j = 0; j < g; j++)
        clamped[j] = fminf(fmaxf(w[j], -m), m);
    float scale;
    int zero;
    qtc_int_qparams(clamped, g, s->bits, s->symmetric, &scale, &zero);
    float inv = 1.0f / scale;
    for (int64_t j = 0; j < g; j++)
        out[j] = (float)(qtc_int_quantize_one(clamped[j], inv, zero, s->bits) - zero) * scale;
}

qtc_status qtc_awq_clip(const float *w, int64_t rows, int64_t cols, const double *xtx, const float *in_scale,
                        const qtc_qscheme *s, float *clip, double *err_before, double *err_after, qtc_error *qerr)
{
    *err_before = *err_after = 0;
    const int64_t g = s->group > 0 ? s->group : cols;
    if (s->kind != QTC_QK_INT || s->group < 0) /* one range for the whole tensor: nothing per group to clip */
        return qtc_error_set(qerr, QTC_ERR_USAGE, "AWQ clips integer schemes per group or channel");
    const int n_grid = 20, max_shrink = 10; /* AutoAWQ's: max|w| * (1 - i/20), i < 0.5 * 20 */
    double before = 0, after = 0;
    int failed = 0;
    #pragma omp parallel for reduction(+ : before, after) schedule(static) if (rows * cols > 4096)
    for (int64_t r = 0; r < rows; r++) {
        float *clamped = malloc((size_t)g * sizeof *clamped), *wq = malloc((size_t)g * sizeof *wq);
        if (!clamped || !wq) {
            free(clamped);
            free(wq);
            #pragma omp atomic write
            failed = 1;
            continue;
        }
        for (int64_t c0 = 0; c0 < cols; c0 += g) {
            const int64_t n = c0 + g <= cols ? g : cols - c0;
            const float *row = w + r * cols + c0;
            float amax = 0;
            for (int64_t j = 0; j < n; j++)
                amax = fmaxf(amax, fabsf(row[j]));
            double best = INFINITY, first = 0;
            float best_m = amax;
            for (int i = 0; i < max_shrink && amax > 0; i++) {
                float m = amax * (1.0f - (float)i / (float)n_grid);
                clip_and_round(row, n, m, s, clamped, wq);
                double e = group_error(row, wq, c0, n, cols, xtx, in_scale);
                if (i == 0)
                    first = e;
                if (e < best) {
                    best = e;
                    best_m = m;
                }
            }
            before += first;
            after += amax > 0 ? best : 0;
            clip[r * ((cols + g - 1) / g) + c0 / g] = best_m;
        }
        free(clamped);
        free(wq);
    }
    if (failed)
        return qtc_error_set(qerr, QTC_ERR_NOMEM, "out of memory");
    *err_before = before;
    *err_after = after;
    return QTC_OK;
}
