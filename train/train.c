/* train.c: the shared training loop (see qtc/train.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qtc/rng.h"
#include "qtc/train.h"

qtc_train_opts qtc_train_defaults(int64_t steps)
{
    qtc_train_opts o;
    memset(&o, 0, sizeof o);
    o.steps = steps;
    o.batch = 8;
    o.ctx = 128;
    o.grad_accum = 1;
    o.lr = (qtc_lr_schedule){QTC_LR_COSINE, 1e-3f, steps / 10, steps, 0.1f};
    o.clip = 1.0f;
    return o;
}

void qtc_train_event_text(const qtc_train_event *ev, int64_t total_steps, char *buf, size_t cap)
{
    double eta = ev->step ? ev->elapsed / (double)ev->step * (double)(total_steps - ev->step) : 0;
    snprintf(buf, cap, "step %lld/%lld loss %.4f lr %.2e |g| %.3f %.0f tokens/s eta %.0fs", (long long)ev->step,
             (long long)total_steps, ev->loss, ev->lr, ev->grad_norm, ev->tokens_per_s, eta);
}

void qtc_train_event_json(const qtc_train_event *ev, char *buf, size_t cap)
{
    snprintf(buf, cap, "{\"event\":\"step\",\"step\":%lld,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,\"tokens_per_s\":%.1f}",
             (long long)ev->step, ev->loss, ev->lr, ev->grad_norm, ev->tokens_per_s);
}

void qtc_train_batch(const qtc_tokens *data, int batch, int ctx, uint64_t seed, int64_t step, int32_t *tokens,
                     int32_t *targets)
{
    qtc_rng r;
    qtc_rng_seed(&r, seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(step + 1)));
    uint64_t starts = (uint64_t)(data->n - ctx); /* windows of ctx + 1 tokens */
    for (int b = 0; b < batch; b++) {
        int64_t s = (int64_t)qtc_rng_below(&r, starts);
        memcpy(tokens + (int64_t)b * ctx, data->ids + s, (size_t)ctx * sizeof *tokens);
        memcpy(targets + (int64_t)b * ctx, data->ids + s + 1, (size_t)ctx * sizeof *targets);
        for (int t = 0; data->loss_mask && t < ctx; t++) /* SFT: only the responses count */
            if (!data->loss_mask[s + 1 + t])
                targets[(int64_t)b * ctx + t] = -1;
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

qtc_status qtc_train(const qtc_train_opts *o, qtc_adamw *opt, qtc_tensor *const *params, int n_params,
                     const qtc_tokens *data, int64_t first_step, qtc_loss_fn loss, void *loss_ctx, qtc_train_cb cb,
                     void *cb_ctx, qtc_error *err)
{
    if (data->n < o->ctx + 2)
        return qtc_error_set(err, QTC_ERR_INPUT, "%lld training tokens: not one window of %d", (long long)data->n, o->ctx);
    qtc_lr_schedule sched = o->lr;
    if (sched.total <= 0)
        sched.total = o->steps;
    int accum = o->grad_accum > 0 ? o->grad_accum : 1;
    size_t per = (size_t)o->batch * (size_t)o->ctx;
    int32_t *tok = malloc(per * sizeof *tok), *tgt = malloc(per * sizeof *tgt);
    qtc_graph *g = qtc_graph_new(err);
    qtc_status rc = QTC_OK;
    if (!tok || !tgt || !g) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory for training");
        goto done;
    }
    qtc_tensor tokens = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(o->batch, o->ctx), tok);
    qtc_tensor targets = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(o->batch, o->ctx), tgt);
    double t0 = now();
    for (int64_t step = first_step; step < o->steps; step++) {
        double ts = now();
        for (int i = 0; i < n_params; i++)
            qtc_tensor_zero_grad(params[i]);
        double total = 0;
        for (int a = 0; a < accum; a++) {
            qtc_train_batch(data, o->batch, o->ctx, o->seed, step * accum + a, tok, tgt);
            qtc_graph_reset(g);
            qtc_graph_set_recording(g, 1);
            qtc_tensor *l = loss(loss_ctx, g, &tokens, &targets);
            if (qtc_graph_status(g, err) != QTC_OK || !l) {
                rc = err->code ? err->code : qtc_error_set(err, QTC_ERR_NOMEM, "the loss could not be built");
                goto done;
            }
            float lv = ((float *)l->data)[0];
            if (!isfinite(lv)) {
                rc = qtc_error_set(err, QTC_ERR_NUMERIC, "step %lld: the loss is %s; stopping before the weights change",
                                   (long long)step + 1, isnan(lv) ? "NaN" : "infinite");
                goto done;
            }
            total += lv;
            qtc_tensor *scaled = accum > 1 ? qtc_scale(g, l, 1.0f / (float)accum) : l;
            if (qtc_graph_backward(g, scaled, err) != QTC_OK) {
                rc = err->code;
                goto done;
            }
        }
        double norm = o->clip > 0 ? qtc_clip_grad_norm(params, n_params, o->clip) : qtc_grad_norm(params, n_params);
        if (!isfinite(norm)) {
            rc = qtc_error_set(err, QTC_ERR_NUMERIC, "step %lld: the gradient norm is not finite; stopping before the weights change",
                               (long long)step + 1);
            goto done;
        }
        float lr = qtc_lr_at(&sched, step);
        qtc_adamw_step(opt, lr);
        double te = now();
        qtc_train_event ev = {step + 1, (float)(total / accum), lr, norm, (double)(per * (size_t)accum) / (te - ts), te - t0};
        qtc_error_clear(err);
        if (cb && cb(cb_ctx, &ev, err)) {
            rc = err ? err->code : QTC_OK;
            break;
        }
    }
done:
    free(tok);
    free(tgt);
    qtc_graph_free(g);
    return rc;
}
