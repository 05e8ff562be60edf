/* optim.c: AdamW, gradient clipping and learning-rate schedules. */
#include "qtc/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct qtc_adamw {
    qtc_adamw_config cfg;
    int n;
    qtc_tensor **params;
    float **m, **v;
    float *wd;
    int64_t steps;
};

qtc_adamw_config qtc_adamw_defaults(void)
{
    return (qtc_adamw_config){0.9f, 0.999f, 1e-8f, 0.01f};
}

void qtc_adamw_free(qtc_adamw *opt)
{
    if (!opt)
        return;
    for (int i = 0; i < opt->n; i++) {
        if (opt->m)
            free(opt->m[i]);
        if (opt->v)
            free(opt->v[i]);
    }
    free(opt->m);
    free(opt->v);
    free(opt->wd);
    free(opt->params);
    free(opt);
}

/* Zeroed moments for param i; 0 when out of memory. */
static int moments(qtc_adamw *opt, int i)
{
    size_t n = (size_t)qtc_tensor_numel(opt->params[i]);
    if (!opt->m[i])
        opt->m[i] = calloc(n ? n : 1, sizeof(float));
    if (!opt->v[i])
        opt->v[i] = calloc(n ? n : 1, sizeof(float));
    return opt->m[i] && opt->v[i];
}

qtc_adamw *qtc_adamw_new(qtc_tensor *const *params, int n_params, qtc_adamw_config cfg,
                         qtc_error *err)
{
    qtc_adamw *opt = calloc(1, sizeof *opt);
    if (!opt)
        goto nomem;
    opt->cfg = cfg;
    opt->n = n_params;
    opt->params = calloc((size_t)n_params + 1, sizeof *opt->params);
    opt->m = calloc((size_t)n_params + 1, sizeof *opt->m);
    opt->v = calloc((size_t)n_params + 1, sizeof *opt->v);
    opt->wd = calloc((size_t)n_params + 1, sizeof *opt->wd);
    if (!opt->params || !opt->m || !opt->v || !opt->wd)
        goto nomem;
    for (int i = 0; i < n_params; i++) {
        qtc_tensor *p = params[i];
        if (p->dtype != QTC_F32 || !qtc_tensor_is_contiguous(p)) {
            qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': AdamW needs contiguous f32 parameters", p->name);
            qtc_adamw_free(opt);
            return NULL;
        }
        opt->params[i] = p;
        opt->wd[i] = cfg.weight_decay;
        if ((p->flags & QTC_TENSOR_REQUIRES_GRAD) && !moments(opt, i)) /* frozen ones: none */
            goto nomem;
    }
    return opt;
nomem:
    qtc_adamw_free(opt);
    qtc_error_set(err, QTC_ERR_NOMEM, "out of memory for the optimizer state");
    return NULL;
}

void qtc_adamw_set_weight_decay(qtc_adamw *opt, int param, float weight_decay)
{
    opt->wd[param] = weight_decay;
}

void qtc_adamw_step(qtc_adamw *opt, float lr)
{
    opt->steps++;
    const float b1 = opt->cfg.beta1, b2 = opt->cfg.beta2, eps = opt->cfg.eps;
    /* PyTorch computes the bias corrections in Python floats (double) */
    double bc1 = 1.0 - pow(b1, (double)opt->steps);
    double bc2_sqrt = sqrt(1.0 - pow(b2, (double)opt->steps));
    float step_size = (float)(lr / bc1);
    for (int i = 0; i < opt->n; i++) {
        qtc_tensor *p = opt->params[i];
        if (!(p->flags & QTC_TENSOR_REQUIRES_GRAD) || !p->grad || !moments(opt, i))
            continue; /* frozen (or unfrozen since, and no memory for its moments: left as it is) */
        float *w = p->data, *m = opt->m[i], *v = opt->v[i];
        const float *gr = p->grad->data;
        float decay = 1.0f - lr * opt->wd[i];
        int64_t n = qtc_tensor_numel(p);
        #pragma omp parallel for schedule(static) if (n > 65536)
        for (int64_t j = 0; j < n; j++) {
            m[j] = b1 * m[j] + (1.0f - b1) * gr[j];
            v[j] = b2 * v[j] + (1.0f - b2) * gr[j] * gr[j];
            float denom = sqrtf(v[j]) / (float)bc2_sqrt + eps;
            w[j] = w[j] * decay - step_size * m[j] / denom;
        }
    }
}

int64_t qtc_adamw_steps(const qtc_adamw *opt)
{
    return opt->steps;
}

void qtc_adamw_set_steps(qtc_adamw *opt, int64_t steps)
{
    opt->steps = steps;
}

float *qtc_adamw_moment(qtc_adamw *opt, int param, int which)
{
    return which == 1 ? opt->m[param] : opt->v[param];
}

double qtc_grad_norm(qtc_tensor *const *params, int n_params)
{
    double ss = 0;
    for (int i = 0; i < n_params; i++) {
        const qtc_tensor *p = params[i];
        if (!(p->flags & QTC_TENSOR_REQUIRES_GRAD) || !p->grad)
            continue;
        const float *gr = p->grad->data;
        int64_t n = qtc_tensor_numel(p);
        for (int64_t j = 0; j < n; j++)
            ss += (double)gr[j] * gr[j];
    }
    return sqrt(ss);
}

double qtc_clip_grad_norm(qtc_tensor *const *params, int n_params, double max_norm)
{
    double norm = qtc_grad_norm(params, n_params);
    double coef = max_norm / (norm + 1e-6);
    if (coef >= 1.0)
        return norm;
    for (int i = 0; i < n_params; i++) {
        qtc_tensor *p = params[i];
        if (!(p->flags & QTC_TENSOR_REQUIRES_GRAD) || !p->grad)
            continue;
        float *gr = p->grad->data;
        int64_t n = qtc_tensor_numel(p);
        for (int64_t j = 0; j < n; j++)
            gr[j] = (float)(gr[j] * coef);
    }
    return norm;
}

float qtc_lr_at(const qtc_lr_schedule *s, int64_t step)
{
    if (step < s->warmup)
        return s->lr * (float)(step + 1) / (float)s->warmup;
    if (s->kind == QTC_LR_CONSTANT)
        return s->lr;
    int64_t span = s->total - s->warmup;
    double progress = span > 0 ? (double)(step - s->warmup) / (double)span : 1.0;
    if (progress > 1.0)
        progress = 1.0;
    double cosine = 0.5 * (1.0 + cos(M_PI * progress));
    return (float)(s->lr * (s->min_ratio + (1.0 - s->min_ratio) * cosine));
}
