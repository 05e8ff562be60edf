/* test_train.c: the training loop against a double-precision replica of the
 * same steps (the independent llama of llama_ref.c, central-difference
 * gradients, AdamW and clipping as PyTorch computes them), and its handling
 * of frozen parameters and NaN. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "llama_ref.h"
#include "qtc/rng.h"
#include "qtc/train.h"

static const qtc_llama_config tiny = {.dim = 8, .hidden = 12, .n_layers = 1, .n_heads = 2, .n_kv_heads = 1,
                                      .vocab = 16, .ctx = 16, .head_dim = 4, .n_rot = 4, .norm_eps = 1e-5f,
                                      .rope_theta = 10000.0f, .tied = 1};

typedef struct losses {
    float v[16];
    int n;
} losses;

static qtc_tensor *ce_loss(void *ctx, qtc_graph *g, const qtc_tensor *tokens, const qtc_tensor *targets)
{
    return qtc_cross_entropy(g, qtc_llama_forward(ctx, g, tokens, 0), targets);
}

static int record(void *ctx, const qtc_train_event *ev, qtc_error *err)
{
    (void)err;
    losses *l = ctx;
    l->v[l->n++] = ev->loss;
    return 0;
}

TEST(training_steps_match_a_double_precision_replica)
{
    enum { STEPS = 4, B = 2, T = 6 };
    qtc_error err;
    qtc_llama *m = test_random_llama(tiny, 11);
    qtc_tokens data = {malloc(300 * sizeof(int32_t)), 300, NULL};
    qtc_rng r;
    qtc_rng_seed(&r, 12);
    for (int i = 0; i < 300; i++)
        data.ids[i] = (int32_t)qtc_rng_below(&r, 16);
    ref_llama ref;
    ref_from_llama(&ref, m); /* the replica starts from the same weights */
    qtc_tensor *params[64];
    int np = qtc_llama_params(m, params, 64);
    for (int i = 0; i < np; i++)
        CHECK(qtc_tensor_require_grad(params[i], &err) == QTC_OK);
    qtc_train_opts o = qtc_train_defaults(STEPS);
    o.batch = B;
    o.ctx = T;
    o.lr = (qtc_lr_schedule){QTC_LR_COSINE, 2e-2f, 1, STEPS, 0.1f};
    o.clip = 0.5f; /* small enough to engage */
    o.seed = 99;
    qtc_adamw_config cfg = {0.9f, 0.95f, 1e-8f, 0.1f};
    qtc_adamw *opt = qtc_adamw_new(params, np, cfg, &err);
    losses got = {0};
    CHECK_MSG(qtc_train(&o, opt, params, np, &data, 0, ce_loss, m, record, &got, &err) == QTC_OK, "%s", err.msg);
    CHECK(got.n == STEPS);
    /* the replica */
    double *mom1[64], *mom2[64], *grad[64];
    for (int i = 0; i < ref.n; i++) {
        mom1[i] = calloc((size_t)ref.len[i], sizeof(double));
        mom2[i] = calloc((size_t)ref.len[i], sizeof(double));
        grad[i] = calloc((size_t)ref.len[i], sizeof(double));
    }
    int32_t tok[B * T], tgt[B * T];
    for (int step = 0; step < STEPS; step++) {
        qtc_train_batch(&data, B, T, o.seed, step, tok, tgt);
        double loss = ref_loss(&ref, tok, tgt, B, T), ss = 0;
        CHECK_MSG(fabs(loss - got.v[step]) <= 1e-4 * fabs(loss), "step %d: loss %.8f, replica %.8f", step + 1, got.v[step], loss);
        for (int i = 0; i < ref.n; i++)
            for (int64_t j = 0; j < ref.len[i]; j++) {
                double w0 = ref.p[i][j], h = 1e-5;
                ref.p[i][j] = w0 + h;
                double lp = ref_loss(&ref, tok, tgt, B, T);
                ref.p[i][j] = w0 - h;
                double lm = ref_loss(&ref, tok, tgt, B, T);
                ref.p[i][j] = w0;
                grad[i][j] = (lp - lm) / (2 * h);
                ss += grad[i][j] * grad[i][j];
            }
        double norm = sqrt(ss), coef = fmin(1.0, 0.5 / (norm + 1e-6));
        double lr = qtc_lr_at(&o.lr, step), b1 = 0.9, b2 = 0.95;
        for (int i = 0; i < ref.n; i++)
            for (int64_t j = 0; j < ref.len[i]; j++) {
                double gj = grad[i][j] * coef;
                ref.p[i][j] *= 1 - lr * 0.1;
                mom1[i][j] = b1 * mom1[i][j] + (1 - b1) * gj;
                mom2[i][j] = b2 * mom2[i][j] + (1 - b2) * gj * gj;
                ref.p[i][j] -= lr / (1 - pow(b1, step + 1)) * mom1[i][j] / (sqrt(mom2[i][j]) / sqrt(1 - pow(b2, step + 1)) + 1e-8);
            }
    }
    /* and the weights end where the replica's do */
    double worst = 0;
    for (int i = 0; i < ref.n; i++)
        for (int64_t j = 0; j < ref.len[i]; j++)
            worst = fmax(worst, fabs(((float *)params[i]->data)[j] - ref.p[i][j]));
    CHECK_MSG(worst < 1e-4, "weights differ from the replica's by up to %g", worst);
    for (int i = 0; i < ref.n; i++) {
        free(mom1[i]);
        free(mom2[i]);
        free(grad[i]);
    }
    ref_free(&ref);
    qtc_adamw_free(opt);
    free(data.ids);
    qtc_llama_free(m);
}

TEST(training_leaves_frozen_parameters_alone_and_stops_on_nan)
{
    qtc_error err;
    qtc_llama *m = test_random_llama(tiny, 21);
    qtc_tokens data = {malloc(100 * sizeof(int32_t)), 100, NULL};
    for (int i = 0; i < 100; i++)
        data.ids[i] = i % 16;
    qtc_tensor *params[64];
    int np = qtc_llama_params(m, params, 64);
    for (int i = 0; i < np; i++)
        qtc_tensor_require_grad(params[i], &err);
    qtc_tensor_set_trainable(m->embed, 0);
    float before = ((float *)m->embed->data)[5], wq = ((float *)m->layers[0].wq->data)[5];
    qtc_train_opts o = qtc_train_defaults(3);
    o.batch = 2;
    o.ctx = 8;
    qtc_adamw *opt = qtc_adamw_new(params, np, qtc_adamw_defaults(), &err);
    CHECK(qtc_train(&o, opt, params, np, &data, 0, ce_loss, m, NULL, NULL, &err) == QTC_OK);
    CHECK(((float *)m->embed->data)[5] == before && ((float *)m->layers[0].wq->data)[5] != wq);
    ((float *)m->layers[0].w_up->data)[3] = NAN;
    float kept = ((float *)m->layers[0].wq->data)[5];
    o.steps = 6;
    CHECK(qtc_train(&o, opt, params, np, &data, 3, ce_loss, m, NULL, NULL, &err) == QTC_ERR_NUMERIC);
    CHECK(strstr(err.msg, "step 4") && strstr(err.msg, "NaN"));
    CHECK(((float *)m->layers[0].wq->data)[5] == kept); /* no step was taken */
    qtc_adamw_free(opt);
    free(data.ids);
    qtc_llama_free(m);
}

typedef struct toggles {
    int on, calls, on_during_forward;
    qtc_llama *m;
} toggles;

static void note_training(void *ctx, int on)
{
    toggles *t = ctx;
    t->on = on;
    t->calls++;
}

/* The model's linear hook sees whether the forward is a training one. */
static qtc_tensor *spy_linear(void *ctx, qtc_graph *g, qtc_tensor *x, qtc_tensor *w, int layer, qtc_linear_kind kind)
{
    (void)layer;
    (void)kind;
    toggles *t = ctx;
    t->on_during_forward += t->on;
    return qtc_matmul(g, x, w, 0, 1);
}

TEST(lm_loss_is_cross_entropy_or_the_kl_from_a_teacher_as_double_loops_compute_them)
{
    enum { B = 2, T = 5, V = 16 };
    qtc_error err;
    qtc_llama *m = test_random_llama(tiny, 21), *teacher = test_random_llama(tiny, 22);
    ref_llama rm, rt;
    ref_from_llama(&rm, m);
    ref_from_llama(&rt, teacher);
    int32_t tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)((i * 7 + 3) % V);
        tgt[i] = i == 4 ? -1 : (int32_t)((i * 5 + 1) % V); /* one ignored target */
    }
    double ce = 0, kl = 0;
    int counted = 0;
    for (int b = 0; b < B; b++) {
        double *lm = ref_forward(&rm, tok + b * T, T), *lt = ref_forward(&rt, tok + b * T, T);
        for (int t = 0; t < T; t++) {
            const double *x = lm + t * V, *y = lt + t * V;
            double mx = x[0], my = y[0], zx = 0, zy = 0;
            for (int v = 1; v < V; v++) {
                mx = fmax(mx, x[v]);
                my = fmax(my, y[v]);
            }
            for (int v = 0; v < V; v++) {
                zx += exp(x[v] - mx);
                zy += exp(y[v] - my);
            }
            for (int v = 0; v < V; v++) {
                double lpx = x[v] - mx - log(zx), lpy = y[v] - my - log(zy);
                kl += exp(lpy) * (lpy - lpx);
            }
            int32_t target = tgt[b * T + t];
            if (target >= 0) {
                ce -= x[target] - mx - log(zx);
                counted++;
            }
        }
        free(lm);
        free(lt);
    }
    ce /= counted;
    kl /= B * T;
    qtc_tensor *tk = qtc_tensor_wrap(QTC_I32, 2, QTC_SHAPE(B, T), tok, NULL, &err);
    qtc_tensor *tg = qtc_tensor_wrap(QTC_I32, 2, QTC_SHAPE(B, T), tgt, NULL, &err);
    qtc_graph *g = qtc_graph_new(&err), *teacher_graph = qtc_graph_new(&err);
    toggles seen = {0, 0, 0, m};
    m->linear = spy_linear;
    m->linear_ctx = &seen;
    qtc_lm_loss plain = {m, NULL, NULL, note_training, &seen, 0};
    qtc_tensor *l = qtc_lm_loss_fn(&plain, g, tk, tg);
    CHECK(l && fabs(((float *)l->data)[0] - ce) < 1e-5 * fmax(1, ce));
    CHECK(seen.calls == 2 && seen.on == 0);            /* told before and after the forward */
    CHECK(seen.on_during_forward == QTC_N_LINEAR * tiny.n_layers + 1); /* every projection and the head saw it */
    qtc_graph_reset(g);
    qtc_lm_loss distill = {m, teacher, teacher_graph, NULL, NULL, 1}; /* fused_head: ignored with a teacher */
    l = qtc_lm_loss_fn(&distill, g, tk, tg);
    CHECK(l && fabs(((float *)l->data)[0] - kl) < 1e-5 * fmax(1e-3, kl));
    CHECK(seen.calls == 2); /* no training callback given */
    qtc_graph_reset(g);
    seen.on_during_forward = 0;
    qtc_lm_loss fused = {m, NULL, NULL, note_training, &seen, 1};
    l = qtc_lm_loss_fn(&fused, g, tk, tg); /* the head fused into the loss: the hook sees the projections only */
    CHECK(l && fabs(((float *)l->data)[0] - ce) < 1e-5 * fmax(1, ce));
    CHECK(seen.on_during_forward == QTC_N_LINEAR * tiny.n_layers);
    m->linear = NULL;
    qtc_graph_free(g);
    qtc_graph_free(teacher_graph);
    qtc_tensor_free(tk);
    qtc_tensor_free(tg);
    ref_free(&rm);
    ref_free(&rt);
    qtc_llama_free(m);
    qtc_llama_free(teacher);
}

/* Every parameter's gradient (the tied embedding's too: lookup and head) is the
 * unfused loss's within float rounding. */
TEST(lm_loss_with_the_head_fused_gives_the_unfused_gradients)
{
    enum { B = 3, T = 7, V = 16 };
    qtc_error err;
    qtc_llama *m = test_random_llama(tiny, 31);
    int32_t tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)((i * 11 + 2) % V);
        tgt[i] = i % 5 == 3 ? -1 : (int32_t)((i * 3 + 7) % V);
    }
    qtc_tensor *tk = qtc_tensor_wrap(QTC_I32, 2, QTC_SHAPE(B, T), tok, NULL, &err);
    qtc_tensor *tg = qtc_tensor_wrap(QTC_I32, 2, QTC_SHAPE(B, T), tgt, NULL, &err);
    qtc_tensor *params[64];
    int np = qtc_llama_params(m, params, 64);
    for (int i = 0; i < np; i++)
        CHECK(qtc_tensor_require_grad(params[i], &err) == QTC_OK);
    float *want[64];
    float loss[2];
    for (int fused = 0; fused < 2; fused++) {
        for (int i = 0; i < np; i++)
            qtc_tensor_zero_grad(params[i]);
        qtc_graph *g = qtc_graph_new(&err);
        qtc_lm_loss l = {m, NULL, NULL, NULL, NULL, fused};
        qtc_tensor *y = qtc_lm_loss_fn(&l, g, tk, tg);
        CHECK(y && qtc_graph_backward(g, y, &err) == QTC_OK);
        loss[fused] = ((float *)y->data)[0];
        for (int i = 0; i < np; i++) {
            int64_t n = qtc_tensor_numel(params[i]);
            const float *d = params[i]->grad->data;
            if (!fused) {
                want[i] = malloc((size_t)n * sizeof(float));
                memcpy(want[i], d, (size_t)n * sizeof(float));
                continue;
            }
            double worst = 0, scale = 0;
            for (int64_t k = 0; k < n; k++) {
                worst = fmax(worst, fabs(d[k] - want[i][k]));
                scale = fmax(scale, fabs(want[i][k]));
            }
            CHECK(worst <= 1e-5 * scale + 1e-9);
            free(want[i]);
        }
        qtc_graph_free(g);
    }
    CHECK(fabs(loss[1] - loss[0]) <= 1e-5 * fabs(loss[0]));
    qtc_tensor_free(tk);
    qtc_tensor_free(tg);
    qtc_llama_free(m);
}
