/* qtc/calib.h: calibration statistics and what follows from them alone: what
 * real text makes the activations look like, and what that says about
 * quantizing them and the weights.
 *
 * A qtc_act_stats records the inputs of one linear layer: the minimum and
 * maximum, a histogram of 2048 bins over a symmetric range that doubles
 * (merging bin pairs exactly) when a value falls outside it, per input channel
 * the sums of x^2 and |x|, and, for GPTQ, the sum of x x^T. A qtc_calib holds
 * them for every linear layer of a model; running a llama over text to fill
 * one, and the files they are written to, are qtc/calibrate.h's. Nothing here
 * needs a model: the statistics are plain numbers and arrays.
 */
#ifndef QTC_CALIB_H
#define QTC_CALIB_H

#include "qtc/export.h"
#include "qtc/quant.h"

QTC_API_BEGIN

#define QTC_HIST_BINS 2048

typedef struct qtc_act_stats {
    char weight[QTC_NAME_MAX]; /* the weight whose input this is */
    int64_t in;                /* input channels */
    int64_t rows;              /* input vectors seen (tokens) */
    double min, max;
    double *sum_sq, *sum_abs;  /* per channel */
    double *amax;              /* per channel max |x| */
    double *cmin, *cmax;       /* per channel min and max (NULL: not kept) */
    double *xtx;               /* in x in, sum of x x^T: only in layer_done (qtc_calib_run), else NULL */
    int xtx_failed;            /* out of memory while adding to xtx: qtc_calib_run fails */
    double range;              /* the histogram covers [-range, range) */
    double hist[QTC_HIST_BINS];
} qtc_act_stats;

/* The statistics of every linear input of a model of n_layers layers, a
 * layer's projections in the order of qtc_linear_kind (qtc/model.h: q k v o
 * gate up down, QTC_N_LINEAR of them). qtc_calib_new (qtc/calibrate.h) makes one. */
typedef struct qtc_calib {
    int n_layers;
    qtc_act_stats *s;          /* per layer * QTC_N_LINEAR + kind */
    int with_xtx;
    unsigned record_mask;      /* the kinds (bit 1 << kind) recorded now: all but inside qtc_calib_run */
    int64_t tokens, windows;
} qtc_calib;

/* Adds one batch of inputs x (rows x in) to s. */
void qtc_act_stats_add(qtc_act_stats *s, const float *x, int64_t rows);

/* --- activation ranges ---------------------------------------------------------------- */

typedef enum qtc_range_method { QTC_RANGE_MINMAX = 0, QTC_RANGE_PERCENTILE, QTC_RANGE_MSE, QTC_RANGE_KL } qtc_range_method;

/* 0 on success. */
int qtc_range_method_parse(const char *name, qtc_range_method *m);
const char *qtc_range_method_name(qtc_range_method m);

/* The clipping range [*lo, *hi] for quantizing the recorded values to `bits`:
 *   minmax: the observed minimum and maximum;
 *   percentile: the two-sided percentile p (99.99: 0.01% of the values clipped
 *     on each side), interpolated within histogram bins;
 *   mse: the symmetric threshold T minimising the expected squared error of
 *     symmetric quantization clipped at T, over the histogram (bin centres);
 *   kl: TensorRT's entropy calibration: over |x| folded into 2048 bins, the
 *     threshold whose 2^(bits-1)-level quantization of the clipped
 *     distribution has the least KL divergence from it.
 * mse and kl give [-T, T] cut to the observed range (widened to include 0). */
void qtc_act_range(const qtc_act_stats *s, qtc_range_method m, double p, int bits, double *lo, double *hi);

/* --- provenance ------------------------------------------------------------------------ */

/* sha256 of a file's bytes as 64 hex digits. */
qtc_status qtc_sha256_file(const char *path, char hex[65], qtc_error *err);
void qtc_sha256(const void *data, size_t n, unsigned char out[32]);

/* --- GPTQ ------------------------------------------------------------------------------ */

typedef struct qtc_gptq_opts {
    double damp;       /* fraction of the mean diagonal added (0.01) */
    int act_order;     /* columns by descending diag(H); group scales then come from the
                          original weights (static groups) so the layout stays plain */
} qtc_gptq_opts;

/* GPTQ of one weight w (rows x cols, f32, not modified) with H = 2/n sum x x^T
 * given as xtx (cols x cols, the sum) and n rows: columns quantized one at a
 * time in scheme s (integer, any group), each column's error spread over the
 * columns not yet quantized through the Cholesky factor of H^-1 (LAPACK's
 * dpotrf/dpotri). out receives the stored form. Channels never seen (zero
 * diagonal) get weight 0, as AutoGPTQ does. */
qtc_status qtc_gptq(const float *w, int64_t rows, int64_t cols, const double *xtx, int64_t n, const qtc_qscheme *s,
                    const qtc_gptq_opts *o, qtc_qweight *out, qtc_error *err);

/* --- AWQ ------------------------------------------------------------------------------- */

/* AWQ's per-input-channel scales for n weights that read the same input (q, k
 * and v; gate and up; ...), each rows[i] x cols f32: for alpha on a grid of
 * `grid` points in [0, 1), s = mean|x|^alpha normalised by sqrt(max s * min s)
 * (AutoAWQ's), and the alpha whose quantized W diag(s) (scheme s, round to
 * nearest), scaled back, has the least output error sum tr(dW H dW^T) over
 * the weights (H = xtx, the sum of x x^T over the calibration rows).
 * scales gets cols values (all 1 when alpha 0 wins); *err and *err_rtn the
 * chosen and the unscaled output errors. */
qtc_status qtc_awq_search(const float *const *ws, const int64_t *rows, int n, int64_t cols, const double *xtx,
                          const double *mean_abs, const qtc_qscheme *s, int grid, float *scales, double *alpha,
                          double *err, double *err_rtn, qtc_error *qerr);

/* AWQ's weight clipping (AutoAWQ's auto_clip) for w (rows x cols, f32): for
 * each row's group (scheme s, integer, per group or channel), the clamp
 * m = max|w| * (1 - i/20), i in 0..9, whose [-m, m]-clamped group rounded to
 * nearest has the least output error over the group's inputs, d H_gg d^T
 * (H = xtx, seen through in_scale when the weight's columns carry AWQ's
 * scales, the inputs then being x / scale; NULL: none), goes to clip
 * (rows x groups). *err_before and *err_after sum the group errors at i = 0
 * and at the chosen clamps. */
qtc_status qtc_awq_clip(const float *w, int64_t rows, int64_t cols, const double *xtx, const float *in_scale,
                        const qtc_qscheme *s, float *clip, double *err_before, double *err_after, qtc_error *qerr);

QTC_API_END

#endif
