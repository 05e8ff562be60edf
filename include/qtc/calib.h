/* qtc/calib.h: calibration: what real text makes the activations look like,
 * and what that says about quantizing them and the weights.
 *
 * A qtc_calib records, at the input of every linear layer of a llama (through
 * the model's linear hook), the minimum and maximum, a histogram of 2048 bins
 * over a symmetric range that doubles (merging bin pairs exactly) when a
 * value falls outside it, per input channel the sums of x^2 and |x|, and, for
 * GPTQ, the sum of x x^T. Projections that read the same input (q, k, v; gate,
 * up) each get the statistics under their own weight name, as llama.cpp's
 * imatrix does. Windows are taken in order from the token stream, so results
 * repeat exactly.
 */
#ifndef QTC_CALIB_H
#define QTC_CALIB_H

#include "qtc/export.h"
#include "qtc/model.h"

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

typedef struct qtc_calib {
    int n_layers;
    qtc_act_stats *s;          /* per layer * QTC_N_LINEAR + kind */
    int with_xtx;
    unsigned record_mask;      /* the kinds (1 << qtc_linear_kind) recorded now: all but inside qtc_calib_run */
    int64_t tokens, windows;
} qtc_calib;

/* Statistics for every linear layer of a model of configuration c. with_xtx
 * also sums x x^T (in^2 doubles per layer input), a layer at a time: see
 * qtc_calib_run. */
qtc_calib *qtc_calib_new(const qtc_llama_config *c, int with_xtx, qtc_error *err);
void qtc_calib_free(qtc_calib *cb);
/* Adds one batch of inputs x (rows x in) to s. */
void qtc_act_stats_add(qtc_act_stats *s, const float *x, int64_t rows);

typedef struct qtc_calib_hooks {
    /* windows (whole model) or layer-windows (a layer at a time) done, of total */
    void (*progress)(void *ctx, int64_t done, int64_t total);
    /* Called once the statistics of layer `layer`'s projections in `kinds`
     * (bits 1 << qtc_linear_kind; all seven unless by_group) are complete,
     * their x x^T sums valid until the layer is done. It may change the
     * layer's weights in m (GPTQ puts its quantized weights there, so what is
     * calibrated after sees what the quantized model computes); with
     * changes_weights set the layer's outputs are then recomputed with them.
     * Returns QTC_OK or an error. */
    qtc_status (*layer_done)(void *ctx, qtc_calib *cb, qtc_llama *m, int layer, unsigned kinds, qtc_error *err);
    int changes_weights;
    /* with changes_weights: layer_done per input group in order (q/k/v, o,
     * gate/up, down), each group's inputs recorded with the earlier groups'
     * changes in place (AutoGPTQ's true_sequential); a block pass per group */
    int by_group;
    void *ctx;
} qtc_calib_hooks;

/* Runs the first max_tokens tokens of data (<= 0: all) through m in windows of
 * ctx, batch windows at a time, recording every linear layer's inputs.
 * Without x x^T sums and without layer_done the model runs whole, a batch at
 * a time (memory: the statistics and one batch's activations). Otherwise it
 * runs a layer at a time: the embedding of every window, then each block over
 * every window's cached hidden state (tokens * dim floats), so only one
 * layer's x x^T sums exist at once. Both orders give the same statistics.
 * hooks may be NULL. */
qtc_status qtc_calib_run(qtc_calib *cb, qtc_llama *m, const qtc_tokens *data, int ctx, int batch, int64_t max_tokens,
                         const qtc_calib_hooks *hooks, qtc_error *err);

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

/* --- files -------------------------------------------------------------------------- */

/* Provenance written into calibration files. */
typedef struct qtc_calib_source {
    const char *data_path;
    char sha256[65];          /* of the data file's bytes */
    int64_t tokens;
    int ctx;
    uint64_t seed;
} qtc_calib_source;

/* sha256 of a file's bytes as 64 hex digits. */
qtc_status qtc_sha256_file(const char *path, char hex[65], qtc_error *err);
void qtc_sha256(const void *data, size_t n, unsigned char out[32]);

/* The calibration file (JSON): {"format":"qtc-calibration","version":1,
 * "qtc_version", "method", "percentile", "bits", "granularity", "source":{data,
 * sha256, tokens, ctx, seed}, "tensors":{"<weight>":{"input":{"min","max",
 * "scale","zero_point","observed_min","observed_max"[,"channels":{"min":[..],
 * "max":[..],"scale":[..],"zero_point":[..]}]}}}}: per linear weight, the
 * static int8 range of its input (asymmetric, PyTorch's qparams for the
 * range) and, with per_channel (granularity "channel"; minmax only), each
 * input channel's observed range and parameters. Written atomically. */
qtc_status qtc_calib_save_json(const qtc_calib *cb, const char *path, qtc_range_method m, double p, int bits,
                               int per_channel, const qtc_calib_source *src, qtc_error *err);

/* A calibration file read back: the static quantization of each linear
 * weight's input, per layer * QTC_N_LINEAR + kind (a weight the file does not
 * name is an error: the file is for another model). */
typedef struct qtc_act_qparams {
    float min, max;  /* the clipping range */
    float scale;
    int zero;
    int64_t channels;     /* > 0: the file also gives per input channel parameters */
    float *ch_scale;      /* channels values (malloc'd; qtc_act_qparams_free) */
    int *ch_zero;
} qtc_act_qparams;
qtc_status qtc_calib_load_json(const char *path, int n_layers, qtc_act_qparams *out, int *bits, qtc_error *err);
void qtc_act_qparams_free(qtc_act_qparams *p, int n);
/* The same as the static input quantization qtc_convert stores beside integer
 * weights (compressed-tensors' input_scale and input_zero_point). */
qtc_status qtc_calib_input_quant(const char *path, int n_layers, qtc_input_quant *out, qtc_error *err);

/* An importance matrix in llama.cpp's GGUF form: general.type "imatrix",
 * imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size, and per weight
 * (llama.cpp's names) <weight>.in_sum2 (f32 [in]) and <weight>.counts (f32 [1]). */
qtc_status qtc_imatrix_save(const qtc_calib *cb, const qtc_llama_config *c, const char *path, const char *dataset,
                            int chunk_size, qtc_error *err);

/* An imatrix read back: per HF weight name, the mean of x^2 per input channel. */
typedef struct qtc_imatrix {
    int n;
    char (*names)[QTC_NAME_MAX];
    float **importance;
    int64_t *len;
    int64_t chunk_count, chunk_size;
} qtc_imatrix;
qtc_status qtc_imatrix_load(const char *path, qtc_imatrix *im, qtc_error *err);
/* The importance of an HF weight (len values), or NULL. */
const float *qtc_imatrix_find(const qtc_imatrix *im, const char *weight, int64_t len);
void qtc_imatrix_free(qtc_imatrix *im);

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
