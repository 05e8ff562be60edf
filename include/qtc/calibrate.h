/* qtc/calibrate.h: calibrating a llama: running text through it to collect
 * the statistics of qtc/calib.h, the files they are written to (the
 * calibration JSON, llama.cpp's imatrix GGUF), and folding what they say into
 * the llama's float weights (AWQ's and SmoothQuant's per-channel scales), and
 * GPTQ of its weights a layer at a time.
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
#include "qtc/export.h"
#include "qtc/model.h"

QTC_API_BEGIN

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

/* --- GPTQ of a llama's weights ------------------------------------------------------- */

/* GPTQ run over a llama a layer at a time, as qtc_calib_run completes each
 * layer (a qtc_calib with x x^T sums; hooks with layer_done qtc_gptq_layer,
 * ctx the qtc_gptq_run, changes_weights and by_group both `sequential`),
 * then written through qtc_convert (hooks with qweight qtc_gptq_weight, ctx
 * the qtc_gptq_run, and `to` in the same scheme). */
typedef struct qtc_gptq_run {
    qtc_qscheme scheme;  /* the integer scheme of every linear weight */
    qtc_gptq_opts opts;
    int sequential;      /* the quantized weights put back: what is calibrated after sees them */
    int n;               /* layers * QTC_N_LINEAR */
    qtc_qweight *q;      /* per layer * QTC_N_LINEAR + kind: GPTQ's result (q.q NULL: none, or handed over) */
    int handed;          /* results handed over by qtc_gptq_weight */
} qtc_gptq_run;

/* Ready for a model of n_layers layers, to be quantized to scheme s with o. */
qtc_status qtc_gptq_run_init(qtc_gptq_run *g, int n_layers, const qtc_qscheme *s, const qtc_gptq_opts *o,
                             int sequential, qtc_error *err);
/* Frees the results not handed over (a zeroed qtc_gptq_run is freed too). */
void qtc_gptq_run_free(qtc_gptq_run *g);
/* qtc_calib_hooks.layer_done (ctx: a qtc_gptq_run): qtc_gptq of each of the
 * layer's weights in `kinds` on its recorded x x^T sums, kept in g->q; with
 * sequential, the weight in m replaced by the result dequantized. */
qtc_status qtc_gptq_layer(void *ctx, qtc_calib *cb, qtc_llama *m, int layer, unsigned kinds, qtc_error *err);
/* qtc_convert_hooks.qweight (ctx: a qtc_gptq_run): hands over (once; qtc_convert
 * frees it) GPTQ's result for the weight `name` when s is the run's scheme:
 * returns 1 with *q, 0 for another scheme or a weight without a result. */
int qtc_gptq_weight(void *ctx, const char *name, const qtc_qscheme *s, qtc_qweight *q, qtc_error *err);

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

/* --- folding scales into the llama ---------------------------------------------------- */

/* Folds per-input-channel scales s into layer `layer` of m, leaving its float
 * function alone: the columns of the projections that read the input of kind
 * `input` are multiplied by s, and what produced that input is divided by s:
 *   QTC_LIN_Q     q, k, v; the attention RMSNorm weight
 *   QTC_LIN_O     o; v_proj's rows (one per o column: not under grouped-query attention)
 *   QTC_LIN_GATE  gate, up; the MLP RMSNorm weight
 *   QTC_LIN_DOWN  down; up_proj's rows
 * s has the input's width. Another kind, or o under grouped-query attention,
 * is QTC_ERR_USAGE. */
qtc_status qtc_fold_scales(qtc_llama *m, int layer, qtc_linear_kind input, const float *s, qtc_error *err);

/* AWQ folded into a llama a layer at a time, as qtc_calib_run completes each
 * layer (a qtc_calib with x x^T sums; hooks with layer_done
 * qtc_awq_fold_layer, ctx the qtc_awq_fold, changes_weights 0: the float
 * function does not change, so the layers after see the same inputs). */
typedef struct qtc_awq_fold {
    qtc_qscheme scheme;      /* the integer scheme the weights will be rounded to */
    int grid;                /* alpha grid points of the scale search (20) */
    int clip;                /* AWQ's clipping too (not for a per-tensor scheme: no groups) */
    int n;                   /* layers * QTC_N_LINEAR */
    float **clips;           /* per layer * QTC_N_LINEAR + kind: the clamp of each row's group, or NULL */
    double err_awq, err_rtn; /* output errors summed over the searched weights: with the scales, round to nearest */
    double err_clip_before, err_clip_after; /* group output errors summed over the clipped weights */
} qtc_awq_fold;

/* Ready for a model of n_layers layers, to be rounded to scheme s; clip asks
 * for AWQ's clipping (kept off for a per-tensor scheme). */
qtc_status qtc_awq_fold_init(qtc_awq_fold *a, int n_layers, const qtc_qscheme *s, int clip, qtc_error *err);
void qtc_awq_fold_free(qtc_awq_fold *a);
/* qtc_calib_hooks.layer_done (ctx: a qtc_awq_fold): for each of the layer's
 * input groups (q/k/v, o, gate/up, down; o skipped under grouped-query
 * attention, its input having no per-channel producer), AWQ's scales
 * (qtc_awq_search over the group's weights) folded in by qtc_fold_scales;
 * then, with clip, AWQ's clamps (qtc_awq_clip, the inputs seen through the
 * scales) of every weight but q and k, as AutoAWQ (the attention scores
 * magnify their errors). The clamps are only kept: they change the function,
 * so qtc_awq_apply_clips applies them once the fold has been checked. */
qtc_status qtc_awq_fold_layer(void *ctx, qtc_calib *cb, qtc_llama *m, int layer, unsigned kinds, qtc_error *err);
/* Clamps every group of the weights that have clamps to its [-clamp, clamp]. */
void qtc_awq_apply_clips(const qtc_awq_fold *a, qtc_llama *m);

/* SmoothQuant: for every layer, per input channel of q/k/v and of gate/up,
 * s = max|x|^alpha / max|W|^(1 - alpha), the max over the weights reading it
 * (1 where either is 0, at least 1e-5), folded into the RMSNorm weight before
 * them (qtc_fold_scales). cb holds m's input statistics (max |x|). */
qtc_status qtc_smoothquant_fold(const qtc_calib *cb, qtc_llama *m, double alpha, qtc_error *err);

/* The logits (ctx x vocab floats, malloc'd) of data's first window of ctx
 * tokens: what folding must leave unchanged. */
float *qtc_fold_logits(qtc_llama *m, const qtc_tokens *data, int ctx, qtc_error *err);
/* The largest |difference| between the same window's logits now and before
 * (from qtc_fold_logits): how far folding moved the float model. */
qtc_status qtc_fold_moved(qtc_llama *m, const qtc_tokens *data, int ctx, const float *before, double *moved,
                          qtc_error *err);

/* qtc_convert's transform hook (ctx: a qtc_llama) for writing a folded
 * model: every layer tensor (model.layers.*) as the llama holds it, in f32;
 * the file's other tensors as they are. Returns 1 with *out, 0 to keep w, -1
 * with err (a tensor whose size differs from the llama's). */
int qtc_folded_weight(void *ctx, const char *name, const qtc_tensor *w, qtc_tensor **out, qtc_error *err);

QTC_API_END

#endif
