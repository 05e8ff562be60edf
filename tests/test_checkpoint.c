/* test_checkpoint.c: activation checkpointing (qtc_grad_checkpoint and
 * qtc_llama.grad_checkpoint) gives the run without it bit for bit: every
 * step's loss and every parameter's gradient compared with memcmp over a few
 * training steps, for full fp32 training (cross-entropy, fused or not, and
 * distillation), LoRA with dropout, QLoRA on NF4, bottleneck adapters, prefix
 * tuning, and QAT with observed inputs (and LSQ's scales). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "llama_ref.h"
#include "qtc/lora.h"
#include "qtc/qat.h"
#include "qtc/rng.h"
#include "qtc/train.h"

/* --- the op itself ------------------------------------------------------------------ */

typedef struct seg_ctx {
    qtc_tensor *w, *b; /* (D, D), (D) */
    int nested;        /* 1: the segment checkpoints a segment of its own */
} seg_ctx;

/* silu(x W^T + b) * x + x */
static qtc_tensor *seg_inner(void *ctx, qtc_graph *g, qtc_tensor *x, int replay)
{
    (void)replay;
    const seg_ctx *s = ctx;
    qtc_tensor *h = qtc_silu(g, qtc_add(g, qtc_matmul(g, x, s->w, 0, 1), s->b));
    return qtc_add(g, qtc_mul(g, h, x), x);
}

static qtc_tensor *seg_outer(void *ctx, qtc_graph *g, qtc_tensor *x, int replay)
{
    const seg_ctx *s = ctx;
    qtc_tensor *y = s->nested ? qtc_grad_checkpoint(g, seg_inner, ctx, x) : seg_inner(ctx, g, x, replay);
    return seg_inner(ctx, g, y, replay);
}

static void fill(qtc_tensor *t, uint64_t seed, float std)
{
    qtc_rng r;
    qtc_rng_seed(&r, seed);
    qtc_rng_fill_normal(&r, t, 0.0f, std);
}

TEST(checkpointed_segments_give_the_same_result_and_gradients_bit_for_bit)
{
    enum { R = 5, D = 7 };
    qtc_error err;
    qtc_tensor *w = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(D, D), &err), *b = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(D), &err);
    qtc_tensor *e = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(R, D), &err), *x0 = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(R, D), &err);
    CHECK(w && b && e && x0);
    fill(w, 1, 0.5f);
    fill(b, 2, 0.5f);
    fill(e, 3, 1.0f);
    fill(x0, 4, 1.0f);
    CHECK(qtc_tensor_require_grad(w, &err) == QTC_OK && qtc_tensor_require_grad(b, &err) == QTC_OK);
    CHECK(qtc_tensor_require_grad(e, &err) == QTC_OK);
    qtc_graph *g = qtc_graph_new(&err);
    CHECK(g);
    /* x needing a gradient (through e) or not; checkpointed, nested, or not */
    for (int x_trainable = 0; x_trainable < 2; x_trainable++) {
        float want[3][R * D + 1], gw[3][D * D], gb[3][D], ge[3][R * D];
        for (int mode = 0; mode < 3; mode++) {
            qtc_graph_reset(g);
            qtc_tensor_zero_grad(w);
            qtc_tensor_zero_grad(b);
            qtc_tensor_zero_grad(e);
            seg_ctx s = {w, b, mode == 2};
            qtc_tensor *x = x_trainable ? qtc_mul(g, x0, e) : x0;
            qtc_tensor *y = mode ? qtc_grad_checkpoint(g, seg_outer, &s, x) : seg_outer(&s, g, x, 0);
            y = mode ? qtc_grad_checkpoint(g, seg_outer, &s, y) : seg_outer(&s, g, y, 0);
            qtc_tensor *loss = qtc_sum(g, qtc_mul(g, y, y));
            CHECK_MSG(loss && qtc_graph_backward(g, loss, &err) == QTC_OK, "%s", qtc_graph_status(g, &err) ? err.msg : "");
            memcpy(want[mode], y->data, sizeof(float) * R * D);
            want[mode][R * D] = *(float *)loss->data;
            memcpy(gw[mode], w->grad->data, sizeof gw[mode]);
            memcpy(gb[mode], b->grad->data, sizeof gb[mode]);
            memcpy(ge[mode], e->grad->data, sizeof ge[mode]);
        }
        for (int mode = 1; mode < 3; mode++) {
            CHECK(memcmp(want[mode], want[0], sizeof want[0]) == 0);
            CHECK(memcmp(gw[mode], gw[0], sizeof gw[0]) == 0);
            CHECK(memcmp(gb[mode], gb[0], sizeof gb[0]) == 0);
            CHECK(memcmp(ge[mode], ge[0], sizeof ge[0]) == 0);
        }
        int nonzero = 0;
        for (int i = 0; i < R * D; i++)
            nonzero += ge[0][i] != 0;
        CHECK(nonzero == (x_trainable ? R * D : 0));
    }
    /* unrecorded: the segment simply runs */
    qtc_graph_reset(g);
    qtc_graph_set_recording(g, 0);
    seg_ctx s = {w, b, 0};
    qtc_tensor *y = qtc_grad_checkpoint(g, seg_outer, &s, x0);
    CHECK(y && qtc_graph_status(g, NULL) == QTC_OK);
    qtc_graph_free(g);
    qtc_tensor_free(w);
    qtc_tensor_free(b);
    qtc_tensor_free(e);
    qtc_tensor_free(x0);
}

/* A segment that reads a tensor of the outer graph needing a gradient. */
static qtc_tensor *seg_leaky(void *ctx, qtc_graph *g, qtc_tensor *x, int replay)
{
    (void)replay;
    return qtc_mul(g, x, ctx);
}

TEST(a_checkpointed_segment_reading_a_trainable_tensor_of_the_outer_graph_is_refused)
{
    qtc_error err;
    qtc_tensor *w = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(4), &err), *x = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(4), &err);
    CHECK(w && x);
    fill(w, 5, 1.0f);
    fill(x, 6, 1.0f);
    CHECK(qtc_tensor_require_grad(w, &err) == QTC_OK);
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *outer = qtc_scale(g, w, 2.0f);
    CHECK(qtc_grad_checkpoint(g, seg_leaky, outer, x) == NULL);
    CHECK(qtc_graph_status(g, &err) == QTC_ERR_USAGE && strstr(err.msg, "another graph"));
    qtc_graph_reset(g); /* a leaf is fine */
    CHECK(qtc_grad_checkpoint(g, seg_leaky, w, x) != NULL && qtc_graph_status(g, NULL) == QTC_OK);
    qtc_graph_free(g);
    qtc_tensor_free(w);
    qtc_tensor_free(x);
}

/* --- llamas in training ---------------------------------------------------------------- */

static const qtc_llama_config shape = {.dim = 32, .hidden = 48, .n_layers = 3, .n_heads = 4, .n_kv_heads = 2,
                                       .vocab = 40, .ctx = 16, .head_dim = 8, .n_rot = 8, .norm_eps = 1e-5f,
                                       .rope_theta = 10000.0f, .tied = 1};

enum setup_kind { FULL, FULL_FUSED, DISTILL, LORA_DROPOUT, QLORA_DROPOUT, ADAPTER, PREFIX, QAT_OBSERVED, QAT_LSQ, N_SETUPS };
static const char *const setup_name[N_SETUPS] = {"full fp32",        "full fp32, fused head", "fp32 distillation",
                                                 "LoRA, dropout 0.2", "QLoRA (NF4), dropout 0.2", "adapters",
                                                 "prefix tuning",     "QAT, observed inputs", "QAT, LSQ"};

typedef struct run {
    qtc_llama *m, *teacher;
    qtc_graph *teacher_graph;
    qtc_peft *p;
    qtc_qat *q;
    qtc_tensor *params[256];
    int np;
    qtc_lm_loss loss;
} run;

static void peft_training(void *ctx, int on)
{
    ((qtc_peft *)ctx)->training = on;
}

static void qat_training(void *ctx, int on)
{
    qtc_qat_set_training(ctx, on);
}

static void run_free(run *r)
{
    qtc_qat_free(r->q);
    qtc_peft_free(r->p);
    qtc_llama_free(r->m);
    qtc_llama_free(r->teacher);
    qtc_graph_free(r->teacher_graph);
}

static int run_setup(run *r, int kind, int ckpt, qtc_error *err)
{
    memset(r, 0, sizeof *r);
    if (!(r->m = test_random_llama(shape, 11)))
        return 0;
    r->m->grad_checkpoint = ckpt;
    r->loss = (qtc_lm_loss){.model = r->m, .fused_head = kind != FULL};
    if (kind == DISTILL || kind == QAT_OBSERVED || kind == QAT_LSQ) {
        if (!(r->teacher = test_random_llama(shape, 12)) || !(r->teacher_graph = qtc_graph_new(err)))
            return 0;
        r->loss.teacher = r->teacher;
        r->loss.teacher_graph = r->teacher_graph;
    }
    if (kind <= DISTILL || kind >= QAT_OBSERVED) {
        r->np = qtc_llama_params(r->m, r->params, 256);
        if (kind >= QAT_OBSERVED) {
            qtc_qat_options o = {.weights = 1, .lsq = kind == QAT_LSQ, .inputs = QTC_QAT_INPUTS_OBSERVED, .abits = 8};
            qtc_qscheme_parse("int4-g16-asym", &o.scheme);
            if (!(r->q = qtc_qat_attach(r->m, &o, err)))
                return 0;
            r->np += qtc_qat_params(r->q, r->params + r->np, 256 - r->np);
            r->loss.training = qat_training;
            r->loss.training_ctx = r->q;
        }
        for (int i = 0; i < r->np; i++)
            if (qtc_tensor_require_grad(r->params[i], err) != QTC_OK)
                return 0;
        return 1;
    }
    qtc_peft_config c = {.method = QTC_PEFT_LORA, .r = 4, .alpha = 8, .prefix_len = 3};
    snprintf(c.target, sizeof c.target, "all-linear");
    if (kind == LORA_DROPOUT || kind == QLORA_DROPOUT)
        c.dropout = 0.2f;
    if (kind == ADAPTER)
        c.method = QTC_PEFT_ADAPTER;
    if (kind == PREFIX)
        c.method = QTC_PEFT_PREFIX;
    if (!(r->p = qtc_peft_new(&r->m->c, &c, 13, err)))
        return 0;
    r->np = qtc_peft_params(r->p, r->params, 256);
    for (int i = 0; i < r->np; i++) /* B and U start at zero: give every tensor a gradient */
        fill(r->params[i], 100 + (uint64_t)i, 0.2f);
    if (kind == QLORA_DROPOUT) {
        qtc_qscheme nf4;
        qtc_qscheme_parse("nf4", &nf4);
        if (qtc_peft_quantize_base(r->p, r->m, &nf4, QTC_F32, err) != QTC_OK)
            return 0;
    }
    qtc_peft_attach(r->p, r->m);
    r->loss.training = peft_training;
    r->loss.training_ctx = r->p;
    return 1;
}

/* Appends n bytes to a growing trace. */
typedef struct trace {
    unsigned char *b;
    size_t n, cap;
} trace;

static void put(trace *t, const void *p, size_t n)
{
    if (t->n + n > t->cap) {
        t->cap = (t->n + n) * 2;
        t->b = realloc(t->b, t->cap);
    }
    memcpy(t->b + t->n, p, n);
    t->n += n;
}

/* Three steps of setup `kind` (forward, backward, plain SGD), two windows each:
 * every step's loss and gradients, then the state the hooks carry (dropout's
 * generator, the observers' ranges) into the trace. Returns the number of
 * gradient values that are not zero, or -1. */
static int64_t train_trace(int kind, int ckpt, trace *t)
{
    enum { B = 2, T = 9, STEPS = 3 };
    qtc_error err;
    run r;
    int64_t nonzero = 0;
    if (!run_setup(&r, kind, ckpt, &err)) {
        run_free(&r);
        return -1;
    }
    qtc_graph *g = qtc_graph_new(&err);
    for (int step = 0; step < STEPS && g; step++) {
        int32_t tok[B * T], tgt[B * T];
        for (int i = 0; i < B * T; i++) {
            tok[i] = (int32_t)((i * 7 + step * 5 + 3) % shape.vocab);
            tgt[i] = i % 6 == 4 ? -1 : (int32_t)((i * 11 + step + 1) % shape.vocab);
        }
        qtc_tensor tk = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(B, T), tok);
        qtc_tensor tg = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(B, T), tgt);
        qtc_graph_reset(g);
        for (int i = 0; i < r.np; i++)
            qtc_tensor_zero_grad(r.params[i]);
        qtc_tensor *loss = qtc_lm_loss_fn(&r.loss, g, &tk, &tg);
        if (!loss || qtc_graph_backward(g, loss, &err) != QTC_OK) {
            nonzero = -1;
            break;
        }
        put(t, loss->data, sizeof(float));
        for (int i = 0; i < r.np; i++) {
            int64_t n = qtc_tensor_numel(r.params[i]);
            float *w = r.params[i]->data;
            const float *d = r.params[i]->grad->data;
            put(t, d, (size_t)n * sizeof(float));
            for (int64_t k = 0; k < n; k++) {
                nonzero += d[k] != 0;
                w[k] -= 0.05f * d[k];
            }
        }
    }
    if (!g)
        nonzero = -1;
    if (r.p)
        put(t, &r.p->rng, sizeof r.p->rng);
    for (int l = 0; r.q && l < shape.n_layers; l++)
        for (int k = 0; k < QTC_N_LINEAR; k++) {
            float mm[2];
            qtc_qat_input_range(r.q, l, (qtc_linear_kind)k, &mm[0], &mm[1]);
            put(t, mm, sizeof mm);
        }
    qtc_graph_free(g);
    run_free(&r);
    return nonzero;
}

TEST(training_with_grad_checkpoint_matches_training_without_it_bit_for_bit)
{
    for (int kind = 0; kind < N_SETUPS; kind++) {
        trace a = {0}, b = {0};
        int64_t nz_a = train_trace(kind, 0, &a), nz_b = train_trace(kind, 1, &b);
        CHECK_MSG(nz_a > 0 && nz_b > 0, "%s: training failed or no gradient reached the parameters", setup_name[kind]);
        CHECK_MSG(a.n == b.n, "%s: %zu vs %zu bytes traced", setup_name[kind], a.n, b.n);
        size_t first = 0;
        while (first < a.n && a.b[first] == b.b[first])
            first++;
        CHECK_MSG(first == a.n, "%s: the traces differ from byte %zu of %zu (float %zu)", setup_name[kind], first, a.n,
                  first / 4);
        free(a.b);
        free(b.b);
    }
}

/* The dropout draws really are replayed: a recomputation that drew fresh masks
 * (the hooks' state left as the forward ended) changes the gradients. */
static size_t no_state(void *ctx, void *buf, int save)
{
    (void)ctx, (void)buf, (void)save;
    return 0;
}

TEST(grad_checkpoint_replays_the_dropout_masks_of_the_forward)
{
    enum { B = 2, T = 9 };
    qtc_error err;
    float grads[2][4 * 32];
    for (int broken = 0; broken < 2; broken++) {
        run r;
        CHECK_MSG(run_setup(&r, LORA_DROPOUT, 1, &err), "%s", err.msg);
        if (broken)
            r.m->hook_state = no_state;
        int32_t tok[B * T], tgt[B * T];
        for (int i = 0; i < B * T; i++) {
            tok[i] = (int32_t)((i * 7 + 3) % shape.vocab);
            tgt[i] = (int32_t)((i * 11 + 1) % shape.vocab);
        }
        qtc_tensor tk = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(B, T), tok);
        qtc_tensor tg = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(B, T), tgt);
        qtc_graph *g = qtc_graph_new(&err);
        qtc_tensor *loss = qtc_lm_loss_fn(&r.loss, g, &tk, &tg);
        CHECK(loss && qtc_graph_backward(g, loss, &err) == QTC_OK);
        memcpy(grads[broken], r.p->lora_a[0]->grad->data, sizeof grads[broken]); /* layer 0 q_proj's A (4, 32) */
        qtc_graph_free(g);
        run_free(&r);
    }
    CHECK(memcmp(grads[0], grads[1], sizeof grads[0]) != 0);
}

/* Memory: the graph of a checkpointed step (its scratch graph's arena
 * included) holds about one block's activations, not all of them. */
TEST(grad_checkpoint_keeps_one_block_of_activations_instead_of_every_block)
{
    enum { B = 4, T = 64 };
    const qtc_llama_config c = {.dim = 64, .hidden = 128, .n_layers = 8, .n_heads = 4, .n_kv_heads = 2, .vocab = 64,
                                .ctx = 64, .head_dim = 16, .n_rot = 16, .norm_eps = 1e-5f, .rope_theta = 10000.0f,
                                .tied = 1};
    qtc_error err;
    qtc_llama *m = test_random_llama(c, 21);
    CHECK(m);
    qtc_tensor *params[128];
    int np = qtc_llama_params(m, params, 128);
    for (int i = 0; i < np; i++)
        CHECK(qtc_tensor_require_grad(params[i], &err) == QTC_OK);
    int32_t tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)((i * 13 + 5) % c.vocab);
        tgt[i] = (int32_t)((i * 7 + 1) % c.vocab);
    }
    qtc_tensor tk = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(B, T), tok);
    qtc_tensor tg = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(B, T), tgt);
    size_t bytes[2];
    for (int ckpt = 0; ckpt < 2; ckpt++) {
        m->grad_checkpoint = ckpt;
        qtc_graph *g = qtc_graph_new(&err);
        qtc_lm_loss l = {.model = m, .fused_head = 1};
        qtc_tensor *y = qtc_lm_loss_fn(&l, g, &tk, &tg);
        CHECK(y && qtc_graph_backward(g, y, &err) == QTC_OK);
        bytes[ckpt] = qtc_graph_arena_bytes(g);
        qtc_graph_free(g);
    }
    CHECK_MSG(bytes[1] * 2 <= bytes[0], "arena %zu bytes with checkpointing, %zu without", bytes[1], bytes[0]);
    qtc_llama_free(m);
}
