/* bench_train.c: training throughput (forward + backward + AdamW, batch 16,
 * ctx 256, cross-entropy) for stories260K and a generated 15M-parameter llama,
 * in fp32 and with int4 (groups of 32) fake-quantized weights, beside the
 * sgemm ceiling measured in the same run. `make bench` then runs PyTorch on
 * the same shapes (bench/torch_train.py) as the peer baseline; the issue
 * quotes about 3,900 tokens/s fp32 and 3,560 with int4 fake quant for
 * stories260K on this machine's 2 cores. Env: QTC_SHARED. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"
#include "qtc/qat.h"
#include "qtc/rng.h"
#include "qtc/runtime.h"
#include "qtc/train.h"
#include "cli.h"

static qtc_qscheme int4;

static qtc_tensor *fq_linear(void *ctx, qtc_graph *g, qtc_tensor *x, qtc_tensor *w, int layer, qtc_linear_kind kind)
{
    (void)ctx;
    (void)layer;
    if (kind == QTC_LIN_OUTPUT)
        return qtc_matmul(g, x, w, 0, 1);
    return qtc_matmul(g, x, qtc_fake_quant(g, w, &int4, NULL, NULL, 0), 0, 1);
}

static void run(const char *what, qtc_llama *m, int fake_quant, int steps, double ceiling)
{
    qtc_error err;
    enum { B = 16, T = 256 };
    qtc_tokens data = {malloc(20000 * sizeof(int32_t)), 20000, NULL};
    qtc_rng r;
    qtc_rng_seed(&r, 1);
    for (int i = 0; i < 20000; i++)
        data.ids[i] = (int32_t)qtc_rng_below(&r, (uint64_t)m->c.vocab);
    m->linear = fake_quant ? fq_linear : NULL;
    qtc_tensor *params[256];
    int np = qtc_llama_params(m, params, 256);
    for (int i = 0; i < np; i++)
        qtc_tensor_require_grad(params[i], &err);
    qtc_adamw *opt = qtc_adamw_new(params, np, qtc_adamw_defaults(), &err);
    qtc_train_opts o = qtc_train_defaults(steps);
    o.batch = B;
    o.ctx = T;
    bench_steps st = {0};
    qtc_train(&o, opt, params, np, &data, 0, bench_ce, m, bench_on_step, &st, &err);
    double tps = (double)B * T * (double)(st.steps - 1) / (st.last - st.first), gflops = bench_train_flops(&m->c, T) * tps * 1e-9;
    printf("%-42s %8.0f tokens/s %8.1f GFLOP/s %6.1f%% of sgemm (steps 2..%d; step 1 %.2f s)\n", what, tps, gflops,
           100 * gflops / ceiling, steps, st.first);
    qtc_adamw_free(opt);
    free(data.ids);
}

int main(int argc, char **argv)
{
    (void)argc;
    cli_process_setup(argv); /* the tools' OpenMP wait policy */
    qtc_set_threads(0);
    qtc_qscheme_parse("int4-g32", &int4);
    double ceiling = bench_sgemm_ceiling();
    printf("threads %d; sgemm ceiling (1024^3) %.1f GFLOP/s; batch 16, ctx 256\n", qtc_get_threads(), ceiling);
    qtc_llama *s = bench_load_stories260K("bench_train");
    if (!s)
        return 2;
    run("stories260K fp32", s, 0, 12, ceiling);
    run("stories260K int4-g32 fake quant", s, 1, 12, ceiling);
    qtc_llama_free(s);
    qtc_llama *m = bench_new_15M();
    run("generated 15M llama fp32", m, 0, 3, ceiling);
    run("generated 15M llama int4-g32 fake quant", m, 1, 3, ceiling);
    qtc_llama_free(m);
    return 0;
}
