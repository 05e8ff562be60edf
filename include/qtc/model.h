/* qtc/model.h: the llama model, tokenizers and evaluation.
 *
 * A qtc_llama holds the configuration and f32 weights in HF layout (loaded from
 * any format qtc reads; quantized weights are dequantized on load), or, for a
 * llama that is never trained (qtc_llama_from_model_frozen), views of the
 * file's f32 data and weights a hook holds in their stored or a quantized form. Its
 * forward pass is built from qtc_graph ops, so the same code trains (with
 * recording on) and evaluates (recording off). Generation decodes one token at
 * a time against a KV cache.
 */
#ifndef QTC_MODEL_H
#define QTC_MODEL_H

#include "qtc/convert.h"
#include "qtc/export.h"
#include "qtc/graph.h"
#include "qtc/rng.h"

QTC_API_BEGIN

typedef struct qtc_llama_layer {
    qtc_tensor *attn_norm;            /* (dim) */
    qtc_tensor *wq;                   /* (n_heads*head_dim, dim) */
    qtc_tensor *wk, *wv;              /* (n_kv_heads*head_dim, dim) */
    qtc_tensor *wo;                   /* (dim, n_heads*head_dim) */
    qtc_tensor *ffn_norm;             /* (dim) */
    qtc_tensor *w_gate, *w_up;        /* (hidden, dim) */
    qtc_tensor *w_down;               /* (dim, hidden) */
} qtc_llama_layer;

/* Which projection a linear layer is (for hooks). */
typedef enum qtc_linear_kind {
    QTC_LIN_Q, QTC_LIN_K, QTC_LIN_V, QTC_LIN_O, QTC_LIN_GATE, QTC_LIN_UP, QTC_LIN_DOWN, QTC_LIN_OUTPUT,
    QTC_LIN_EMBED /* the token embedding: offered to a loader's keep(), never to the linear hook */
} qtc_linear_kind;
#define QTC_N_LINEAR 7 /* a layer's projections: q k v o gate up down (QTC_LIN_Q .. QTC_LIN_DOWN) */
/* "self_attn.q_proj", ... "mlp.down_proj": the module path of a layer's projection kind
 * ("lm_head", "embed_tokens" for the head and the embedding) */
const char *qtc_linear_path(qtc_linear_kind kind);
/* The HF name of a layer's projection weight (kind < QTC_N_LINEAR), as
 * qtc_layer_weight_name (qtc/convert.h) writes it. */
const char *qtc_linear_weight_name(int layer, qtc_linear_kind kind, char *buf, size_t cap);

/* y = x W^T for one projection of layer `layer` (-1 for the output head). A
 * hook replaces it to fake-quantize W or x (QAT) or add an adapter (LoRA). */
typedef qtc_tensor *(*qtc_linear_fn)(void *ctx, qtc_graph *g, qtc_tensor *x, qtc_tensor *w, int layer,
                                     qtc_linear_kind kind);

typedef struct qtc_llama {
    qtc_llama_config c;
    qtc_linear_fn linear;             /* NULL: the plain matmul */
    void *linear_ctx;
    /* Adapters (qtc/lora.h): `sublayer` sees the output of attention (which 0)
     * and of the MLP (which 1) before its residual add and returns what is
     * added; `extend_kv` may replace a layer's keys and values (B, Tk, kv)
     * before attention, with more of them (a prefix). NULL: none. A weight may
     * be NULL when the linear hook holds it in another form (a quantized base). */
    qtc_tensor *(*sublayer)(void *ctx, qtc_graph *g, qtc_tensor *out, int layer, int which);
    void (*extend_kv)(void *ctx, qtc_graph *g, int layer, qtc_tensor **k, qtc_tensor **v);
    /* A frozen embedding or output head a hook holds in another form (embed /
     * output NULL: a quantized table, qtc/lora.h): `embed_rows` gives the rows
     * (ids' shape..., dim) of token ids, `head_loss` the fused cross-entropy
     * of hidden states x through the head (as qtc_linear_cross_entropy; used
     * by qtc_lm_loss_fn). The head's logits go through `linear` (layer -1). */
    qtc_tensor *(*embed_rows)(void *ctx, qtc_graph *g, const qtc_tensor *ids);
    qtc_tensor *(*head_loss)(void *ctx, qtc_graph *g, qtc_tensor *x, const qtc_tensor *targets);
    void *hook_ctx;
    /* Activation checkpointing: with grad_checkpoint set, a recorded forward
     * (qtc_llama_hidden, qtc_llama_forward) keeps only each block's input and
     * output, and the backward recomputes the block (qtc_grad_checkpoint):
     * memory is one block's activations instead of every block's, the
     * gradients are the same bit for bit. Hooks whose forward draws from
     * state of their own (dropout's generator, whether dropout is on) make
     * the recomputation draw what the forward drew through hook_state (with
     * hook_ctx): save 1 copies that state into buf, save 0 copies it back;
     * with buf NULL it returns its size in bytes. NULL: no such state.
     * Updates only training forwards make (QAT's observers) happen once:
     * the recomputation runs in the backward, after the training forward. */
    int grad_checkpoint;
    size_t (*hook_state)(void *ctx, void *buf, int save);
    qtc_tensor *embed;                /* (vocab, dim) */
    qtc_llama_layer *layers;          /* n_layers */
    qtc_tensor *norm;                 /* (dim) */
    qtc_tensor *output;               /* (vocab, dim); the embedding when tied */
    /* KV cache for generation: per layer (ctx, n_kv_heads*head_dim), allocated on first use */
    float *k_cache, *v_cache;
    int64_t cache_len;
    qtc_model_file *file;             /* a hold on the file whose mapping frozen weights view, or NULL */
} qtc_llama;

/* Loads a llama from a path any qtc reader accepts (or an open model file).
 * Errors name the file and the missing or misshapen tensor. */
qtc_llama *qtc_llama_load(const char *path, qtc_error *err);
qtc_llama *qtc_llama_from_model(const qtc_model_file *m, qtc_error *err);
/* The same, offering each layer's linear weight (f32, loaded) to keep(): a
 * return of 1 means the caller kept it in another form (a quantized base), so
 * the llama frees it at once and holds NULL; 0 keeps it; -1 fails with err.
 * Memory then stays near one f32 weight above what the caller keeps. */
typedef int (*qtc_llama_weight_fn)(void *ctx, int layer, qtc_linear_kind kind, const qtc_tensor *w, qtc_error *err);
qtc_llama *qtc_llama_from_model_with(const qtc_model_file *m, qtc_llama_weight_fn keep, void *keep_ctx, qtc_error *err);
/* A llama whose weights are never written (an adapter's base, a teacher): no
 * f32 copy of what the file stores as f32. A weight m stores as contiguous,
 * aligned little-endian f32 (not rotary-permuted) is a read-only view of m's
 * mapping; the llama holds m (qtc_model_ref) until qtc_llama_free, so the
 * caller may close m at once. keep (may be NULL) is offered every linear
 * weight, the output head (layer -1, QTC_LIN_OUTPUT, when the file has one)
 * and the embedding (layer -1, QTC_LIN_EMBED; when kept and tied, the head
 * goes with it), f16 and bf16 ones in their stored type (a view or a permuted
 * copy) and others as f32; what keep leaves is held as f32 (views where the
 * file allows). Every weight is scanned for NaN/Inf first (QTC_ERR_NUMERIC
 * naming the tensor and element). Weights require no gradient: training one
 * needs qtc_llama_from_model's copies. */
qtc_llama *qtc_llama_from_model_frozen(const qtc_model_file *m, qtc_llama_weight_fn keep, void *keep_ctx,
                                       qtc_error *err);
void qtc_llama_free(qtc_llama *m);
/* A llama of configuration c with seeded random weights: matrices ~ N(0, std^2),
 * norm weights ~ N(1, 0.1^2), the output head tied to the embedding. */
qtc_llama *qtc_llama_new_random(const qtc_llama_config *c, uint64_t seed, float std, qtc_error *err);
/* The weight of a layer's projection (kind < QTC_N_LINEAR; the output head
 * otherwise); NULL when a hook holds it in another form. The slot is where
 * the llama keeps it, for a caller that takes the weight over. */
qtc_tensor *qtc_llama_linear_weight(const qtc_llama *m, int layer, qtc_linear_kind kind);
qtc_tensor **qtc_llama_linear_slot(qtc_llama *m, int layer, qtc_linear_kind kind);
/* Every weight tensor, in a fixed order (for optimizers and checkpoints), and
 * the HF name of each (qtc_llama_param_name fills buf). Returns how many
 * there are and stores the first cap of them: qtc_llama_params(m, NULL, 0)
 * counts them. */
int qtc_llama_params(qtc_llama *m, qtc_tensor **out, int cap);
const char *qtc_llama_param_name(const qtc_llama *m, int i, char *buf, size_t cap);
/* Writes m's weights (f32, under their HF names) as a twin of src (a temporary
 * safetensors file in $TMPDIR or /tmp carrying src's configuration and
 * tokenizer), then qtc_convert's that to out in fmt as `to` and hooks say
 * (a trained model exported; in llama_export.c). The summary is qtc_convert's. */
qtc_status qtc_llama_export(qtc_llama *m, const qtc_model_file *src, const char *out, qtc_format fmt, int compress,
                            const qtc_target *to, const qtc_convert_hooks *hooks, qtc_convert_summary *summary,
                            qtc_error *err);

/* Logits (B, T, vocab) of token windows (B, T) (i32), token t of every window
 * at position pos0 + t. */
qtc_tensor *qtc_llama_forward(qtc_llama *m, qtc_graph *g, const qtc_tensor *tokens, int64_t pos0);
/* The same up to the final RMSNorm: the hidden states (B, T, dim) that the
 * output head (m->output, through the linear hook) turns into logits. */
qtc_tensor *qtc_llama_hidden(qtc_llama *m, qtc_graph *g, const qtc_tensor *tokens, int64_t pos0);
/* One transformer block: layer `layer`'s output (B, T, dim) for its input x
 * (the embedding or the previous block's output), as the forward pass computes
 * it. For running a model a layer at a time (calibration). */
qtc_tensor *qtc_llama_block(qtc_llama *m, qtc_graph *g, int layer, qtc_tensor *x, int64_t pos0);

/* Generation: feeds one token at position pos (0 restarts the cache) and
 * returns the next-token logits (vocab floats, valid until the next call). */
const float *qtc_llama_step(qtc_llama *m, qtc_graph *g, int32_t token, int64_t pos, qtc_error *err);

/* --- sampling ----------------------------------------------------------------------- */

/* The next token from logits: the argmax when temp <= 0, else top-p sampling of
 * softmax(logits / temp) (ties broken by the lower id) with r. prob and order
 * are scratch arrays of vocab entries. */
int32_t qtc_sample(const float *logits, int vocab, float temp, float top_p, qtc_rng *r, float *prob, int32_t *order);

/* Continues a prompt (n_prompt >= 1 tokens, from position 0): after reading
 * it, up to n_new tokens sampled as qtc_sample does, each handed to on_token
 * (with the token before it) as it comes; a sampled stop token (stop[0..n_stop))
 * ends the run unhanded. *generated counts the tokens handed over. A prompt
 * and n_new that exceed the model's context are refused (QTC_ERR_USAGE). */
qtc_status qtc_generate_from(qtc_llama *m, const int32_t *prompt, int64_t n_prompt, int n_new, float temp, float top_p,
                             qtc_rng *r, const int32_t *stop, int n_stop,
                             void (*on_token)(void *ctx, int32_t prev, int32_t next), void *ctx, int *generated,
                             qtc_error *err);
/* Fills out[0..n) with a sequence the model generates from BOS-like token
 * `first` (out[0] = first): each next token sampled as qtc_sample does. */
qtc_status qtc_generate(qtc_llama *m, int32_t first, int n, float temp, float top_p, qtc_rng *r, int32_t *out,
                        qtc_error *err);

/* --- tokenizers ------------------------------------------------------------------------ */

typedef struct qtc_tokenizer qtc_tokenizer;

/* A llama2.c tokenizer.bin (tok512.bin): SentencePiece-style BPE by score with
 * byte fallback tokens <0x00>..<0xFF>. */
qtc_tokenizer *qtc_tokenizer_load_llama2c(const char *path, int vocab, qtc_error *err);
/* A tokenizer file recognised by its bytes: a GGUF (its tokenizer keys), an HF
 * tokenizer.json, or a llama2.c tokenizer.bin (of `vocab` tokens). */
qtc_tokenizer *qtc_tokenizer_load(const char *path, int vocab, qtc_error *err);
/* The tokenizer a model file carries or has beside it (llama2.c), or NULL with
 * a clear error. SentencePiece-style ("llama") and byte-level BPE ("gpt2")
 * vocabularies; both reproduce llama.cpp's token ids. */
qtc_tokenizer *qtc_tokenizer_for_model(const qtc_model_file *m, qtc_error *err);
void qtc_tokenizer_free(qtc_tokenizer *t);
int qtc_tokenizer_vocab(const qtc_tokenizer *t);
int qtc_tokenizer_bos(const qtc_tokenizer *t);
int qtc_tokenizer_eos(const qtc_tokenizer *t);
/* Encodes UTF-8 text; returns the token count (ids written up to cap), or -1
 * with an error. bos/eos add those tokens. */
int64_t qtc_tokenizer_encode(const qtc_tokenizer *t, const char *text, int bos, int eos, int32_t *ids,
                             int64_t cap, qtc_error *err);
/* The text token id stands for, following prev (SentencePiece's dummy space
 * after BOS is dropped; byte tokens are their byte; a NUL byte reads as "").
 * Valid as long as the tokenizer. */
const char *qtc_tokenizer_piece(const qtc_tokenizer *t, int32_t prev, int32_t id);


/* --- data and evaluation ----------------------------------------------------------------- */

/* A token stream. */
typedef struct qtc_tokens {
    int32_t *ids;
    int64_t n;
    uint8_t *loss_mask;  /* NULL, or per token: 1 when predicting it counts in the loss (SFT data) */
} qtc_tokens;

/* Tokenizes a text file: documents are separated by lines reading
 * <|endoftext|> (TinyStories) or, without such lines, each non-empty line is
 * one document; each document is trimmed and preceded by BOS. */
qtc_status qtc_tokens_from_text(const qtc_tokenizer *t, const char *path, qtc_tokens *out, qtc_error *err);
void qtc_tokens_free(qtc_tokens *d);

/* Supervised fine-tuning data: JSON lines {"prompt": "...", "response": "..."}
 * become BOS, the prompt's tokens, the response's tokens and EOS, with the
 * loss mask set on the response and EOS only. Blank lines are skipped; a line
 * that is not such an object is an error naming the file and the line. */
qtc_status qtc_tokens_from_jsonl(const qtc_tokenizer *t, const char *path, qtc_tokens *out, qtc_error *err);

/* Token files, for data tokenized once:
 *   8 bytes "QTCTOKS\0" | u32 version (1) | u32 bytes per id (2 or 4) | u64 count |
 *   count little-endian ids (u16 or u32)
 * qtc_tokens_load reads one (checking every field against the file size),
 * reads a file whose first non-blank byte is '{' as JSON lines
 * (qtc_tokens_from_jsonl), and falls back to qtc_tokens_from_text for
 * anything else, so tools take any of them.
 * qtc_tokens_save picks 2 bytes per id when every id fits. vocab > 0 checks
 * the ids against a vocabulary size. */
qtc_status qtc_tokens_load(const qtc_tokenizer *t, const char *path, int vocab, qtc_tokens *out, qtc_error *err);
qtc_status qtc_tokens_save(const qtc_tokens *d, const char *path, qtc_error *err);

/* Training text the model writes itself (LLM-QAT's data-free QAT; in
 * generate.c): sequences of len = min(ctx + 1, the model's context) tokens,
 * each from BOS (the configuration's, else 1) sampled at temperature 1 with
 * top-p 1, enough of them for n_tokens (out->n is a whole number of
 * sequences, *sequences of them). The generator is seeded with seed ^
 * 0x51ed27a1, so a run may pass the seed its training batches use. */
qtc_status qtc_generate_corpus(qtc_llama *m, int64_t n_tokens, int ctx, uint64_t seed, qtc_tokens *out,
                               int64_t *sequences, qtc_error *err);

typedef struct qtc_eval_result {
    int64_t windows, predictions;
    double nll, nll_se;          /* mean negative log-likelihood (nats) and its standard error */
    double ppl, ppl_se;          /* exp(nll), and ppl * nll_se */
    /* with a reference model, on the same predictions: */
    double ref_nll, ref_ppl;
    double kld, kld_se;          /* mean KL(p_ref || p) per prediction, and its standard error */
    double top1;                 /* share of predictions whose argmax agrees with the reference's */
} qtc_eval_result;

/* Scores data under the fixed protocol: consecutive windows of ctx tokens (an
 * incomplete last window is dropped), every prediction after the first token
 * of a window. ref may be NULL. max_windows <= 0 means all. progress, if not
 * NULL, is called after each batch with the windows done and the total. */
qtc_status qtc_eval(qtc_llama *m, qtc_llama *ref, const qtc_tokens *data, int ctx, int batch, int64_t max_windows,
                    void (*progress)(void *ctx, int64_t done, int64_t total), void *progress_ctx,
                    qtc_eval_result *out, qtc_error *err);

QTC_API_END

#endif
