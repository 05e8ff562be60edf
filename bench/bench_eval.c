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
#include "cli.h"

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
    cli_process_setup(argv); /* the tools' OpenMP wait policy */
    qtc_set_threads(0);
    double ceiling = bench_sgemm_ceiling();
    printf("threads %d; sgemm ceiling (1024^3) %.1f GFLOP/s\n", qtc_get_threads(), ceiling);
    qtc_llama *s = bench_load_stories260K("bench_eval");
    if (!s)
        return 2;
    run("stories260K, ctx 256, batch 16", s, 256, 16, ceiling);
    qtc_llama_free(s);
    qtc_llama *m = bench_new_15M();
    run("generated 15M llama, ctx 256, batch 16", m, 256, 16, ceiling);
    qtc_llama_free(m);
    return 0;
}
