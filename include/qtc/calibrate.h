/* qtc/calibrate.h: calibrating a llama: running text through it to collect
 * the statistics of qtc/calib.h, and the files they are written to (the
 * calibration JSON, llama.cpp's imatrix GGUF).
 *
 * qtc_calib_run records, at the input of every linear layer of a llama
 * (through the model's linear hook), the statistics of a qtc_act_stats.
 * Projections that read the same input (q, k, v; gate, up) each get the
 * statistics under their own weight name, as llama.cpp's imatrix does.
 * Windows are taken in order from the token stream, so results repeat
 * exactly.
 */
#ifndef QTC_CALIBRATE_H
#define QTC_CALIBRATE_H

#include "qtc/calib.h"
#include "qtc/model.h"

/* Statistics for every linear layer of a model of configuration c. with_xtx
 * also sums x x^T (in^2 doubles per layer input), a layer at a time: see
 * qtc_calib_run. */
qtc_calib *qtc_calib_new(const qtc_llama_config *c, int with_xtx, qtc_error *err);
void qtc_calib_free(qtc_calib *cb);

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

/* --- files -------------------------------------------------------------------------- */

/* Provenance written into calibration files. */
typedef struct qtc_calib_source {
    const char *data_path;
    char sha256[65];          /* of the data file's bytes */
    int64_t tokens;
    int ctx;
    uint64_t seed;
} qtc_calib_source;

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

#endif
