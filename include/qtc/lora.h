/* qtc/lora.h: parameter-efficient fine-tuning and merging.
 *
 * One qtc_peft holds the trainable parts of one method on a llama:
 *   - LoRA: y = W x + s B A dropout(x) on the targeted linear layers, s =
 *     alpha / r (rsLoRA: alpha / sqrt(r)); A (r, in) Kaiming-uniform(a=sqrt(5))
 *     as PEFT initialises it, B (out, r) zero.
 *   - bottleneck adapters (Houlsby): h + U silu(D h + d) + u on the output of
 *     attention and of the MLP before each residual add; D Kaiming-uniform,
 *     U, d and u zero, so training starts from the base model.
 *   - prefix tuning: P trainable keys and values per layer placed before the
 *     window's own in every attention (as cached keys: not rotated; the
 *     window keeps positions 0..T-1).
 * Any of them can train against a quantized base (QLoRA: NF4 with double
 * quantization): qtc_peft_quantize_base replaces the llama's linear weights
 * by qtc_qmatrix copies, and the matmul dequantizes them a tile of rows at a
 * time (qtc_qmatmul), so the float base never exists in memory.
 * qtc_peft_load_frozen does that while loading for any base: a float one is
 * used as the file stores it (f32 from its mapping, f16/bf16 a tile at a
 * time), and the embedding and output head may be quantized too (looked up
 * by qtc_qembedding, fused into the loss by qtc_qlinear_cross_entropy).
 *
 * Files: a PEFT folder (adapter_config.json + adapter_model.safetensors with
 * PEFT's key names: base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight,
 * prefix tuning's prompt_embeddings; bottleneck adapters, which PEFT lacks,
 * as peft_type "BOTTLENECK" with keys ...layers.N.attn_adapter.down.weight),
 * or for LoRA a GGUF LoRA adapter as llama.cpp reads it.
 */
#ifndef QTC_LORA_H
#define QTC_LORA_H

#include "qtc/export.h"
#include "qtc/model.h"
#include "qtc/quant.h"

QTC_API_BEGIN

typedef enum qtc_peft_method { QTC_PEFT_LORA = 0, QTC_PEFT_ADAPTER, QTC_PEFT_PREFIX } qtc_peft_method;

typedef struct qtc_peft_config {
    qtc_peft_method method;
    int r;              /* LoRA rank; the adapters' bottleneck width */
    float alpha;        /* LoRA */
    int rslora;
    float dropout;      /* LoRA: on the adapter's input while training */
    int prefix_len;     /* prefix tuning: virtual tokens */
    char target[512];   /* LoRA: comma-separated module names (q_proj,v_proj; "all-linear")
                           or a regex over module paths (model.layers.0.self_attn.q_proj) */
} qtc_peft_config;

typedef struct qtc_peft {
    qtc_peft_config c;
    qtc_llama_config mc;     /* the model it belongs to (shapes) */
    float scaling;           /* LoRA's s */
    /* LoRA, per layer * QTC_N_LINEAR + kind; NULL where not targeted */
    qtc_tensor **lora_a, **lora_b;
    /* adapters, per layer * 2 + (0 after attention, 1 after the MLP) */
    qtc_tensor **down, **down_b, **up, **up_b;
    /* prefix tuning, per layer: (prefix_len, n_kv_heads * head_dim) */
    qtc_tensor **prefix_k, **prefix_v;
    /* a quantized base, per layer * QTC_N_LINEAR + kind (NULL: the llama's f32 weights;
       an entry with no data: that weight's f32 is the llama's) */
    qtc_qmatrix *base;
    /* the frozen embedding and output head held here (quantized, or f16/bf16
       as stored) and not in the llama; NULL: the llama's. head == embed when tied */
    qtc_qmatrix *base_embed, *base_head;
    qtc_model_file *file;    /* a hold on the file whose mapping base entries view, or NULL */
    int training;            /* dropout on */
    qtc_rng rng;             /* dropout masks */
} qtc_peft;

/* 1 when LoRA targets projection `kind` of layer `layer` under spec (see
 * qtc_peft_config.target); -1 for a bad regex. */
int qtc_peft_targets(const char *spec, int layer, qtc_linear_kind kind);

/* New trainable parts for a model of configuration mc, initialised from seed.
 * QTC_ERR_USAGE for a bad configuration (rank < 1, nothing targeted, ...). */
qtc_peft *qtc_peft_new(const qtc_llama_config *mc, const qtc_peft_config *c, uint64_t seed, qtc_error *err);
void qtc_peft_free(qtc_peft *p);

/* Quantizes m's linear layers (not the output head) with scheme s, or to dtype
 * t when s is NULL (falling back per tensor as qconv does where t's blocks do
 * not divide a row), into p->base, and frees m's f32 copies (their pointers
 * become NULL: m then only runs with p attached). */
qtc_status qtc_peft_quantize_base(qtc_peft *p, qtc_llama *m, const qtc_qscheme *s, qtc_dtype t, qtc_error *err);
/* Loads the llama of f with its linear layers quantized as they are read (a
 * weight at a time, so the f32 base never exists in memory), into p->base.
 * A weight f already stores in that scheme or block type is taken as stored
 * (a GGUF's q/k rows of blocks permuted back to HF's order), so training
 * sees exactly the file's weights. f must be the configuration p was made for. */
qtc_llama *qtc_peft_load_base(qtc_peft *p, const qtc_model_file *f, const qtc_qscheme *s, qtc_dtype t, qtc_error *err);
/* The base of a model whose weights are all frozen, never copied to f32
 * (qtc_llama_from_model_frozen): each linear weight becomes `linear`'s type
 * as qtc_peft_load_base makes it, or with linear NULL (or f32) stays as
 * stored: f32 as a view of f's mapping (in the llama), f16/bf16 in p->base as
 * a matrix viewing the mapping, converted a tile at a time in the matmul. The
 * embedding and output head (tied or not) go the same way under `io`
 * (p->base_embed, p->base_head; the llama's hooks look rows up and fuse the
 * head's cross-entropy). The llama and p each hold f (qtc_model_ref), so the
 * caller may close f. A NaN/Inf weight is refused naming the tensor. */
qtc_llama *qtc_peft_load_frozen(qtc_peft *p, const qtc_model_file *f, const qtc_target *linear, const qtc_target *io,
                                qtc_error *err);
/* Bytes the quantized base holds (0 without one). */
size_t qtc_peft_base_bytes(const qtc_peft *p);

/* Makes m's forward run through p (its linear, sublayer and attention hooks).
 * qtc_peft_detach restores the plain model. */
void qtc_peft_attach(qtc_peft *p, qtc_llama *m);
void qtc_peft_detach(qtc_llama *m);

/* The trainable tensors in a fixed order, and the file key of each. Returns
 * how many there are and stores the first cap: (p, NULL, 0) counts them. */
int qtc_peft_params(const qtc_peft *p, qtc_tensor **out, int cap);
const char *qtc_peft_param_name(const qtc_peft *p, int i, char *buf, size_t cap);

/* Saves p as a PEFT folder (dir/adapter_config.json, dir/adapter_model.safetensors)
 * or, for LoRA, as a GGUF LoRA adapter (a file). base_name goes into
 * base_model_name_or_path / general.name. Atomic: nothing on failure. */
qtc_status qtc_peft_save(const qtc_peft *p, const char *path, int gguf, const char *base_name, qtc_error *err);
/* Loads an adapter: a PEFT folder (LoRA, qtc's BOTTLENECK, PREFIX_TUNING) or a
 * GGUF LoRA adapter, checked against the model configuration mc (every shape,
 * the rank against the tensors). Errors name the file and the tensor. */
qtc_peft *qtc_peft_load(const char *path, const qtc_llama_config *mc, qtc_error *err);

/* --- graph ops --------------------------------------------------------------------- */

/* y = x W^T with W a quantized matrix (out, in): x (..., in), y (..., out).
 * W is dequantized a tile of rows at a time into scratch memory; the gradient
 * reaches x through the same dequantized tiles (W is frozen). */
qtc_tensor *qtc_qmatmul(qtc_graph *g, qtc_tensor *x, const qtc_qmatrix *w);
/* Rows of a frozen table (V, D) picked by ids (i32, any shape, each in [0, V)):
 * (ids' shape..., D), only the picked rows dequantized. No gradient. */
qtc_tensor *qtc_qembedding(qtc_graph *g, const qtc_qmatrix *table, const qtc_tensor *ids);
/* qtc_linear_cross_entropy (qtc/graph.h) with a frozen quantized head w (V, D):
 * the mean cross-entropy of x W^T (x (..., D)) against targets (a negative one
 * is ignored) without the (rows, V) logits: W is dequantized tile_rows of the
 * vocabulary at a time (<= 0: about 4M floats of logits or weights per tile),
 * each tile's logits of every row folded into a running log-sum-exp; the
 * backward recomputes them tile by tile. The gradient reaches x. w must
 * outlive the graph's backward pass. */
qtc_tensor *qtc_qlinear_cross_entropy(qtc_graph *g, qtc_tensor *x, const qtc_qmatrix *w, const qtc_tensor *targets,
                                      int64_t tile_rows);
/* Inverted dropout: x * mask / (1 - p), the mask drawn from r (Bernoulli 1 - p). */
qtc_tensor *qtc_dropout(qtc_graph *g, qtc_tensor *x, float p, qtc_rng *r);
/* [prefix; x] along the time axis: prefix (P, D) for every batch row of x
 * (B, T, D): (B, P + T, D). */
qtc_tensor *qtc_concat_prefix(qtc_graph *g, qtc_tensor *prefix, qtc_tensor *x);

/* --- merging -------------------------------------------------------------------------- */

typedef enum qtc_merge_method { QTC_MERGE_SUM = 0, QTC_MERGE_CAT, QTC_MERGE_TIES, QTC_MERGE_DARE } qtc_merge_method;

typedef struct qtc_merge_opts {
    qtc_merge_method method;
    float density;   /* TIES: share of each delta's entries kept (by magnitude); DARE: keep probability */
    uint64_t seed;   /* DARE's masks */
} qtc_merge_opts;

/* The merged delta of one weight (rows x cols) from n LoRA deltas: each
 * delta_i = w_i * s_i * B_i A_i (NULL adapters are skipped). sum and cat:
 * sum_i delta_i (cat builds the stacked adapter [w_i s_i A_i], [B_i] and
 * multiplies it out); TIES: keep each delta's top density share by
 * magnitude, elect the sign of the summed deltas per entry, average the kept
 * entries that agree with it (the weights already applied); DARE: keep each
 * entry with probability density (a mask from the seed, the weight's name and
 * i), rescale by 1/density, then sum. out is rows * cols floats. */
qtc_status qtc_merge_delta(qtc_peft *const *adapters, const float *weights, int n, int layer, qtc_linear_kind kind,
                           const qtc_merge_opts *o, float *out, qtc_error *err);

/* Writes base with the adapters folded in, tensor by tensor, to out in fmt:
 * LoRA targets get W + delta with W the base as stored (dequantized), then
 * stored as `to` asks or, with to NULL, as the base stored them (quantized
 * schemes and ggml types re-quantized). Every adapter must be LoRA for the
 * base's configuration and name tensors the base has. */
qtc_status qtc_merge_model(qtc_model_file *base, qtc_peft *const *adapters, const float *weights, int n,
                           const qtc_merge_opts *o, const char *out, qtc_format fmt, int compress,
                           const qtc_target *to, qtc_convert_summary *summary, qtc_error *err);

QTC_API_END

#endif
