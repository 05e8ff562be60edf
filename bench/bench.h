/* bench.h: timing helpers shared by the benchmarks (header-only). */
#ifndef QTC_BENCH_H
#define QTC_BENCH_H

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "qtc/model.h"
#include "qtc/train.h"

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Best time of one call over repeated calls lasting at least min_seconds in total. */
#define BENCH_BEST(min_seconds, body)                        \
    ({                                                       \
        double best_ = 1e30, start_ = bench_now();           \
        do {                                                 \
            double t0_ = bench_now();                        \
            body;                                            \
            double dt_ = bench_now() - t0_;                  \
            if (dt_ < best_)                                 \
                best_ = dt_;                                 \
        } while (bench_now() - start_ < (min_seconds));      \
        best_;                                               \
    })

/* The ceiling the benchmarks' GFLOP/s are compared with: OpenBLAS sgemm at 1024^3. */
static inline double bench_sgemm_ceiling(void)
{
    int n = 1024;
    float *a = calloc((size_t)n * n, 4), *b = calloc((size_t)n * n, 4), *c = calloc((size_t)n * n, 4);
    double t = BENCH_BEST(1.0, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n));
    free(a);
    free(b);
    free(c);
    return 2.0 * n * n * n / t * 1e-9;
}

/* Training FLOPs per token of a llama trained whole: 3x the forward's
 * (matmuls and causal attention over T). */
static inline double bench_train_flops(const qtc_llama_config *c, int T)
{
    double d = c->dim, qd = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
    double per_layer = 2 * d * (qd + 2 * kv) + 2 * qd * d + 3 * 2 * d * c->hidden + 2 * 2 * qd * (T / 2.0);
    return 3 * (c->n_layers * per_layer + 2 * d * c->vocab);
}

/* stories260K from QTC_SHARED (default ../shared); NULL with a message on stderr. */
static inline qtc_llama *bench_load_stories260K(const char *who)
{
    qtc_error err;
    const char *dir = getenv("QTC_SHARED") ? getenv("QTC_SHARED") : "../shared";
    char path[4096];
    snprintf(path, sizeof path, "%s/models/stories260K/stories260K.bin", dir);
    qtc_llama *m = qtc_llama_load(path, &err);
    if (!m)
        fprintf(stderr, "%s: %s\n", who, err.msg);
    return m;
}

/* A generated llama of llama2.c's 15M shape (dim 288, 6 layers, vocab 32000). */
static inline qtc_llama *bench_new_15M(void)
{
    qtc_error err;
    qtc_llama_config c = {.dim = 288, .hidden = 768, .n_layers = 6, .n_heads = 6, .n_kv_heads = 6, .vocab = 32000,
                          .ctx = 256, .head_dim = 48, .n_rot = 48, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = 1};
    return qtc_llama_new_random(&c, 1, 0.02f, &err);
}

/* Training throughput as the mean step after the first (the first also faults
 * in the graph's arena and the optimizer's moments, which a run pays once):
 * pass bench_on_step and a bench_steps to qtc_train. */
typedef struct bench_steps {
    double first, last;
    int64_t steps;
} bench_steps;

static inline int bench_on_step(void *ctx, const qtc_train_event *ev, qtc_error *err)
{
    (void)err;
    bench_steps *t = ctx;
    if (ev->step == 1)
        t->first = ev->elapsed;
    t->last = ev->elapsed;
    t->steps = ev->step;
    return 0;
}

/* Next-token cross-entropy of the llama passed as ctx (a qtc_loss_fn). */
static inline qtc_tensor *bench_ce(void *ctx, qtc_graph *g, const qtc_tensor *tokens, const qtc_tensor *targets)
{
    return qtc_cross_entropy(g, qtc_llama_forward(ctx, g, tokens, 0), targets);
}

#endif
