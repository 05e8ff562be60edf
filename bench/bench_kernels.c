/* bench_kernels.c: the row kernels (tensor/vec.c, quant/qvec.c) on every
 * instruction-set path this CPU has, one thread, each as a ratio to the
 * baseline path timed in the same run; then the effect on whole training
 * steps (stories260K, batch 16, ctx 256, fp32 and int4-g32 fake quant), the
 * baseline path and the default path alternating in the same run. White-box:
 * it includes the library's private kernel tables. Env: QTC_SHARED. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../quant/quant_private.h"
#include "../tensor/tensor_private.h"
#include "bench.h"
#include "cli.h"
#include "qtc/qat.h"
#include "qtc/quant.h"
#include "qtc/rng.h"
#include "qtc/runtime.h"
#include "qtc/train.h"

enum { N = 1 << 14, D = 288, V = 32000 };
static float *xa, *xb, *xc, *xd, *ya, *yb, cs[64];
static qtc_qmatrix qm_nf4, qm_int4;
static volatile float sink;

/* one kernel call over about N elements on the path's tables */
static void run_kernel(int k, const tensor_vec_ops *tv, const quant_vec_ops *qv)
{
    switch (k) {
    case 0: for (int i = 0; i < N; i += 64) sink += tv->dot(xa + i, xb + i, 64); break;
    case 1: for (int i = 0; i < N; i += 64) tv->axpy(64, 0.5f, xa + i, ya + i); break;
    case 2: sink += (float)tv->exp_row(xa, 1.0f, ya, N); break;
    case 3: sink += tv->log_sum_exp(xd, V); break;
    case 4: for (int i = 0; i + D <= N; i += D) sink += tv->rmsnorm(xa + i, xb, ya + i, D, 1e-5f); break;
    case 5: for (int i = 0; i + D <= N; i += D) tv->rmsnorm_back(xa + i, xb, xc + i, 0.7f, ya + i, D); break;
    case 6: for (int i = 0; i + 48 <= N; i += 48) tv->rope_head(xa + i, ya + i, 0, cs, 1.0f, 48, 48, 0); break;
    case 7: tv->silu(xa, ya, N); break;
    case 8: tv->swiglu(xa, xb, ya, N); break;
    case 9: tv->swiglu_back(xa, xb, xc, ya, yb, N); break;
    case 10: for (int i = 0; i < N; i += 32) qv->fake_quant(xa + i, ya + i, 32, 7.1f, 1 / 7.1f, 0, -8, 7); break;
    case 11: qv->lut_nibbles((const uint8_t *)xc, 0, qtc_nf4_code, 0.3f, ya, N); break;
    case 12: qv->int_nibbles((const uint8_t *)xc, 0, 8, 0.3f, ya, N); break;
    case 13: qtc_qmatrix_rows(&qm_nf4, 0, 56, ya); break;  /* 56 x 288: 16128 values */
    case 14: qtc_qmatrix_rows(&qm_int4, 0, 56, ya); break;
    }
}

static const char *const names[] = {
    "dot (rows of 64)", "axpy (rows of 64)", "exp_row", "log_sum_exp (V 32000)", "rmsnorm (rows of 288)",
    "rmsnorm_back (rows of 288)", "rope_head (hd 48)", "silu", "swiglu", "swiglu_back",
    "fake_quant int4 (groups of 32)", "nf4 nibbles -> f32", "int4 nibbles -> f32", "qtc_qmatrix_rows nf4",
    "qtc_qmatrix_rows int4-g32",
};
#define N_KERNELS (int)(sizeof names / sizeof names[0])

static qtc_qscheme int4;

static qtc_tensor *fq_linear(void *ctx, qtc_graph *g, qtc_tensor *x, qtc_tensor *w, int layer, qtc_linear_kind kind)
{
    (void)ctx;
    (void)layer;
    if (kind == QTC_LIN_OUTPUT)
        return qtc_matmul(g, x, w, 0, 1);
    return qtc_matmul(g, x, qtc_fake_quant(g, w, &int4, NULL, NULL, 0), 0, 1);
}

/* mean seconds per training step after the first */
static double train_steps(qtc_llama *m, int fake_quant, int steps)
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
    qtc_adamw_free(opt);
    free(data.ids);
    return (st.last - st.first) / (double)(st.steps - 1);
}

int main(int argc, char **argv)
{
    (void)argc;
    cli_process_setup(argv);
    setvbuf(stdout, NULL, _IOLBF, 0);
    qtc_error err;
    qtc_rng r;
    qtc_rng_seed(&r, 3);
    xa = malloc(N * 4), xb = malloc(N * 4), xc = malloc(N * 4), xd = malloc(V * 4), ya = malloc(N * 4),
    yb = malloc(N * 4);
    float *w = malloc(56 * D * 4);
    if (!xa || !xb || !xc || !xd || !ya || !yb || !w)
        return 3;
    for (int i = 0; i < N; i++) {
        xa[i] = 4 * qtc_rng_uniform(&r) - 2, xb[i] = 4 * qtc_rng_uniform(&r) - 2;
        xc[i] = 4 * qtc_rng_uniform(&r) - 2, ya[i] = yb[i] = 0;
    }
    for (int i = 0; i < V; i++)
        xd[i] = 8 * qtc_rng_uniform(&r) - 4;
    for (int i = 0; i < 48; i++)
        cs[i] = (float)cos(0.1 * i);
    for (int i = 0; i < 56 * D; i++)
        w[i] = qtc_rng_uniform(&r) - 0.5f;
    qtc_qscheme nf4;
    qtc_qscheme_parse("nf4", &nf4);
    qtc_qscheme_parse("int4-g32", &int4);
    if (qtc_qmatrix_quantize(w, 56, D, &nf4, QTC_F32, &qm_nf4, &err) != QTC_OK ||
        qtc_qmatrix_quantize(w, 56, D, &int4, QTC_F32, &qm_int4, &err) != QTC_OK)
        return 3;

    qtc_set_threads(1);
    qtc_cpu_path saved = qtc_cpu_get(), best = qtc_cpu_best();
    printf("kernels, 1 thread, ns per 1k elements (best of repeats), and speedup over baseline; default path %s\n",
           qtc_cpu_name(saved));
    printf("%-32s %10s", "kernel", "baseline");
    for (int p = 1; p <= (int)best; p++)
        printf(" %10s %7s", qtc_cpu_name(p), "x");
    printf("\n");
    for (int k = 0; k < N_KERNELS; k++) {
        double elems = k == 3 ? V : k == 13 || k == 14 ? 56 * D : k == 6 ? N / 48 * 48 : N, t0 = 0;
        printf("%-32s", names[k]);
        for (int p = 0; p <= (int)best; p++) {
            qtc_cpu_set(p);
            const tensor_vec_ops *tv = tensor_vec_for(p);
            const quant_vec_ops *qv = quant_vec_for(p);
            double t = BENCH_BEST(0.2, run_kernel(k, tv, qv));
            if (p == 0)
                t0 = t, printf(" %10.1f", t / elems * 1e12);
            else
                printf(" %10.1f %6.2fx", t / elems * 1e12, t0 / t);
        }
        printf("\n");
    }
    qtc_cpu_set(saved);

    qtc_set_threads(0);
    qtc_llama *s = bench_load_stories260K("bench_kernels");
    if (!s)
        return 2;
    printf("\ntraining steps, stories260K B16 x T256, %d threads: s/step (mean of steps 2..6), baseline vs %s, "
           "alternating\n", qtc_get_threads(), qtc_cpu_name(saved));
    for (int fq = 0; fq < 2; fq++)
        for (int rep = 0; rep < 2; rep++) {
            qtc_cpu_set(QTC_CPU_BASELINE);
            double tb = train_steps(s, fq, 6);
            qtc_cpu_set(saved);
            double tv = train_steps(s, fq, 6);
            printf("%-24s run %d: baseline %.3f s  %s %.3f s  speedup %.2fx\n", fq ? "int4-g32 fake quant" : "fp32",
                   rep + 1, tb, qtc_cpu_name(saved), tv, tb / tv);
        }
    qtc_llama_free(s);
    qtc_qmatrix_free(&qm_nf4);
    qtc_qmatrix_free(&qm_int4);
    free(xa), free(xb), free(xc), free(xd), free(ya), free(yb), free(w);
    return 0;
}
