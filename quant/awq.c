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
