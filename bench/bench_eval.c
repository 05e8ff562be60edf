/* bench_eval.c: evaluation throughput (tokens/s of the forward pass with the
 * log-softmax scoring qeval does) for stories260K and a generated 15M-parameter
 * llama (dim 288, 6 layers, 6 heads, hidden 768, vocab 32000) at ctx 256,
 * beside the OpenBLAS sgemm ceiling measured in the same run: the share of
 * that ceiling the forward's FLOPs reach. Env: QTC_SHARED. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "qtc/model.h"
#include "qtc/rng.h"
#include "qtc/runtime.h"

/* forward FLOPs per token at context T (matmuls and attention) */
static double flops_per_token(const qtc_llama_config *c, int T)
{
    double d = c->dim, qd = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
    double per_layer = 2 * d * (qd + 2 * kv) + 2 * qd * d + 3 * 2 * d * c->hidden + 2 * 2 * qd * (T / 2.0);
    return c->n_layers * per_layer + 2 * d * c->vocab;
}

static void run(const char *what, qtc_llama *m, int T, int B, double ceiling)
{
    qtc_error err;
    qtc_tokens data;
    int windows = 4 * B;
    data.n = (int64_t)windows * T;
    data.ids = malloc((size_t)data.n * sizeof *data.ids);
    qtc_rng r;
    qtc_rng_seed(&r, 3);
    for (int64_t i = 0; i < data.n; i++)
        data.ids[i] = (int32_t)qtc_rng_below(&r, (uint64_t)m->c.vocab);
    qtc_eval_result res;
    double t = BENCH_BEST(2.0, qtc_eval(m, NULL, &data, T, B, 0, NULL, NULL, &res, &err));
    double tps = (double)data.n / t, gflops = flops_per_token(&m->c, T) * tps * 1e-9;
    printf("%-34s %8.0f tokens/s %8.1f GFLOP/s %6.1f%% of sgemm\n", what, tps, gflops, 100 * gflops / ceiling);
    free(data.ids);
}

int main(int argc, char **argv)
{
    (void)argc;
    qtc_runtime_setup(argv); /* the tools' OpenMP wait policy */
    qtc_set_threads(0);
    /* the ceiling: OpenBLAS sgemm at 1024^3 */
    int n = 1024;
    float *a = calloc((size_t)n * n, 4), *b = calloc((size_t)n * n, 4), *c = calloc((size_t)n * n, 4);
    double t = BENCH_BEST(1.0, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n));
    double ceiling = 2.0 * n * n * n / t * 1e-9;
    free(a);
    free(b);
    free(c);
    printf("threads %d; sgemm ceiling (1024^3) %.1f GFLOP/s\n", qtc_get_threads(), ceiling);
    qtc_error err;
    const char *dir = getenv("QTC_SHARED") ? getenv("QTC_SHARED") : "../shared";
    char path[4096];
    snprintf(path, sizeof path, "%s/models/stories260K/stories260K.bin", dir);
    qtc_llama *s = qtc_llama_load(path, &err);
    if (!s) {
        fprintf(stderr, "bench_eval: %s\n", err.msg);
        return 2;
    }
    run("stories260K, ctx 256, batch 16", s, 256, 16, ceiling);
    qtc_llama_free(s);
    qtc_llama_config c15 = {.dim = 288, .hidden = 768, .n_layers = 6, .n_heads = 6, .n_kv_heads = 6, .vocab = 32000,
                            .ctx = 256, .head_dim = 48, .n_rot = 48, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = 1};
    qtc_llama *m = qtc_llama_new_random(&c15, 1, 0.02f, &err);
    run("generated 15M llama, ctx 256, batch 16", m, 256, 16, ceiling);
    qtc_llama_free(m);
    return 0;
}
