/* qtc/train.h: the training loop qat-train and qlora-train share.
 *
 * Each step draws `batch` windows of ctx + 1 tokens at random from the data
 * (the generator is seeded from (seed, step), so a resumed run draws the same
 * batches), builds the loss through a callback, backpropagates (with gradient
 * accumulation), clips the global gradient norm, and takes an AdamW step at
 * the schedule's learning rate. Trainable parameters are those flagged
 * QTC_TENSOR_REQUIRES_GRAD; freezing is clearing the flag. A loss that is NaN
 * or infinite stops the run with QTC_ERR_NUMERIC before the weights change.
 */
#ifndef QTC_TRAIN_H
#define QTC_TRAIN_H

#include "qtc/export.h"
#include "qtc/model.h"
#include "qtc/optim.h"

QTC_API_BEGIN

typedef struct qtc_train_opts {
    int64_t steps;       /* optimizer steps */
    int batch, ctx;      /* windows per micro-batch, tokens per window */
    int grad_accum;      /* micro-batches per step */
    qtc_lr_schedule lr;  /* lr.total is set to steps when 0 */
    float clip;          /* global gradient norm limit; <= 0: none */
    uint64_t seed;
} qtc_train_opts;

/* batch 8, ctx 128, 1 micro-batch, lr 1e-3 with 10% warmup and cosine to 10%, clip 1.0. */
qtc_train_opts qtc_train_defaults(int64_t steps);

/* Builds the loss (a one-element tensor) for tokens and targets, both (B, T) i32. */
typedef qtc_tensor *(*qtc_loss_fn)(void *ctx, qtc_graph *g, const qtc_tensor *tokens, const qtc_tensor *targets);

/* The language-model loss every trainer uses, as a qtc_loss_fn (ctx: a
 * qtc_lm_loss): cross-entropy of model's logits on the next token or, with a
 * teacher, the KL divergence from the teacher's distribution (distillation;
 * the teacher runs unrecorded in teacher_graph, caller-owned). training, when
 * not NULL, is told as the model's forward starts (1) and ends (0): what acts
 * on training forwards only (dropout, activation observers) follows it.
 * fused_head (for a model whose linear hook leaves the output head a plain
 * x W^T) fuses the head into the loss (qtc_linear_cross_entropy, or with a
 * teacher that has no linear hook qtc_linear_kl_div, fed both models' final
 * hidden states): the batch's logits, the student's and the teacher's, never
 * exist. */
typedef struct qtc_lm_loss {
    qtc_llama *model, *teacher;
    qtc_graph *teacher_graph;
    void (*training)(void *ctx, int on);
    void *training_ctx;
    int fused_head;
} qtc_lm_loss;
qtc_tensor *qtc_lm_loss_fn(void *ctx, qtc_graph *g, const qtc_tensor *tokens, const qtc_tensor *targets);

typedef struct qtc_train_event {
    int64_t step;         /* the step just taken, from 1 */
    float loss, lr;
    double grad_norm;     /* before clipping */
    double tokens_per_s, elapsed;
} qtc_train_event;

/* Called after each step; a non-zero return stops the run (with QTC_OK). */
typedef int (*qtc_train_cb)(void *ctx, const qtc_train_event *ev, qtc_error *err);

/* One line for a progress display ("step 12/200 loss 3.1416 lr 1.00e-03 |g| 0.532
 * 8012 tokens/s eta 41s") and one JSON object for --log-json files
 * ({"event":"step",...}), without newlines. */
void qtc_train_event_text(const qtc_train_event *ev, int64_t total_steps, char *buf, size_t cap);
void qtc_train_event_json(const qtc_train_event *ev, char *buf, size_t cap);

/* The windows of step `step`: tokens (B, T) and targets (B, T), the tokens
 * shifted by one (-1, ignored, where the data's loss mask is 0). */
void qtc_train_batch(const qtc_tokens *data, int batch, int ctx, uint64_t seed, int64_t step, int32_t *tokens,
                     int32_t *targets);

/* Runs steps first_step + 1 .. o->steps with opt (caller-owned, so its moments
 * can be saved and restored). The callback may return an error through err. */
qtc_status qtc_train(const qtc_train_opts *o, qtc_adamw *opt, qtc_tensor *const *params, int n_params,
                     const qtc_tokens *data, int64_t first_step, qtc_loss_fn loss, void *loss_ctx, qtc_train_cb cb,
                     void *cb_ctx, qtc_error *err);

/* Checkpoints: one safetensors file with the model's weights under their HF
 * names (so it is also a model any tool reads), the AdamW moments as
 * "adamw.m.<name>" and "adamw.v.<name>", and __metadata__ qtc.checkpoint.step,
 * plus the configuration and tokenizer src carries. Written atomically. */
qtc_status qtc_checkpoint_save(const char *path, const qtc_model_file *src, qtc_llama *m, qtc_adamw *opt, int64_t step,
                               qtc_error *err);
/* Restores weights, moments and the optimizer's step count; *step is the step
 * the checkpoint was taken after. The model must have the same shapes. */
qtc_status qtc_checkpoint_load(const char *path, qtc_llama *m, qtc_adamw *opt, int64_t *step, qtc_error *err);
/* The checkpoint file of a run: DIR/checkpoint.safetensors, DIR being dir or,
 * when dir is NULL, the output path's name with ".ckpt" (trailing slashes
 * dropped). create makes DIR if it does not exist. */
qtc_status qtc_checkpoint_path(const char *dir, const char *out, int create, char *path, size_t cap, qtc_error *err);
/* The same for any list of parameters under the given names (adapters): the
 * optimizer's parameter i is params[i]. */
qtc_status qtc_checkpoint_save_params(const char *path, const qtc_model_file *src, qtc_tensor *const *params,
                                      const char *const *names, int n, qtc_adamw *opt, int64_t step, qtc_error *err);
qtc_status qtc_checkpoint_load_params(const char *path, qtc_tensor *const *params, const char *const *names, int n,
                                      qtc_adamw *opt, int64_t *step, qtc_error *err);

QTC_API_END

#endif
