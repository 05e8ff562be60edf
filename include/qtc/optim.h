/* qtc/optim.h: AdamW, gradient clipping by global norm, learning-rate schedules.
 *
 * AdamW follows PyTorch's torch.optim.AdamW step for step (decoupled weight
 * decay applied first, then the bias-corrected Adam update), so runs can be
 * compared with PyTorch's. Parameters are f32 tensors with a gradient
 * (qtc_tensor_require_grad); frozen ones (not QTC_TENSOR_REQUIRES_GRAD) are
 * skipped. Moments exist for trainable parameters only: one frozen when the
 * optimizer is made gets them (zeroed) at its first step as a trainable one,
 * and one frozen later keeps them for when it is unfrozen.
 */
#ifndef QTC_OPTIM_H
#define QTC_OPTIM_H

#include "qtc/export.h"
#include "qtc/tensor.h"

QTC_API_BEGIN

typedef struct qtc_adamw_config {
    float beta1, beta2, eps, weight_decay;
} qtc_adamw_config;

/* PyTorch's defaults: beta1 0.9, beta2 0.999, eps 1e-8, weight decay 0.01. */
qtc_adamw_config qtc_adamw_defaults(void);

typedef struct qtc_adamw qtc_adamw;

/* The optimizer keeps the params array's pointers (not the tensors); the
 * tensors must outlive it. NULL on failure. */
qtc_adamw *qtc_adamw_new(qtc_tensor *const *params, int n_params, qtc_adamw_config cfg,
                         qtc_error *err);
void qtc_adamw_free(qtc_adamw *opt);
/* Weight decay for one parameter (norms and biases usually get 0). */
void qtc_adamw_set_weight_decay(qtc_adamw *opt, int param, float weight_decay);
/* One step with learning rate lr, using and keeping each param's grad. */
void qtc_adamw_step(qtc_adamw *opt, float lr);
/* Steps taken so far. */
int64_t qtc_adamw_steps(const qtc_adamw *opt);
/* The moment buffers of param i (numel floats each), for checkpoints; NULL
 * while it has none (frozen since the optimizer was made: zero moments). */
float *qtc_adamw_moment(qtc_adamw *opt, int param, int which /* 1 or 2 */);
void qtc_adamw_set_steps(qtc_adamw *opt, int64_t steps);

/* The L2 norm of all trainable params' gradients together (in double). */
double qtc_grad_norm(qtc_tensor *const *params, int n_params);
/* Scales the gradients so their global norm is at most max_norm, as
 * torch.nn.utils.clip_grad_norm_ does (factor max_norm / (norm + 1e-6) when
 * that is below 1). Returns the norm before clipping. */
double qtc_clip_grad_norm(qtc_tensor *const *params, int n_params, double max_norm);

typedef enum qtc_lr_kind { QTC_LR_CONSTANT = 0, QTC_LR_COSINE = 1 } qtc_lr_kind;

typedef struct qtc_lr_schedule {
    qtc_lr_kind kind;
    float lr;           /* the peak learning rate */
    int64_t warmup;     /* linear warmup steps: step s < warmup gets lr * (s + 1) / warmup */
    int64_t total;      /* cosine: steps until the floor is reached */
    float min_ratio;    /* cosine floor as a fraction of lr (0 decays to 0) */
} qtc_lr_schedule;

/* The learning rate of step s (0-based). After warmup, cosine decays from lr at
 * s = warmup to lr * min_ratio at s = total and stays there. */
float qtc_lr_at(const qtc_lr_schedule *sched, int64_t step);

QTC_API_END

#endif
