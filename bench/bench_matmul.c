/* bench_matmul.c: GFLOP/s of qtc_matmul (forward, and forward+backward) beside
 * raw cblas_sgemm on the same shapes in the same run, as a ratio: the cost of
 * the op layer (graph allocation, shape logic, recording). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "qtc/graph.h"
#include "qtc/rng.h"
#include "qtc/runtime.h"
#include "cli.h"

typedef struct shape {
    const char *what;
    int64_t M, K, N; /* x (M, K), W (N, K): y = x W^T */
} shape;

int main(int argc, char **argv)
{
    (void)argc;
    cli_process_setup(argv); /* the tools' OpenMP wait policy */
    qtc_set_threads(0);
    const shape shapes[] = {
        {"1024^3", 1024, 1024, 1024},
        {"dim 288 attn proj, 4096 tok", 4096, 288, 288},
        {"dim 288 mlp up (768), 4096 tok", 4096, 288, 768},
        {"dim 288 mlp down, 4096 tok", 4096, 768, 288},
        {"dim 768 attn proj, 4096 tok", 4096, 768, 768},
        {"dim 768 mlp up (2048), 4096 tok", 4096, 768, 2048},
        {"dim 768 mlp down, 4096 tok", 4096, 2048, 768},
    };
    qtc_error err;
    qtc_rng r;
    qtc_rng_seed(&r, 1);
    qtc_graph *g = qtc_graph_new(&err);
    printf("threads %d\n", qtc_get_threads());
    printf("%-34s %10s %10s %7s %12s %12s %7s\n", "shape (y = x W^T)", "sgemm", "qtc fwd", "ratio",
           "3x sgemm", "qtc fwd+bwd", "ratio");
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        shape s = shapes[i];
        qtc_tensor *x = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(s.M, s.K), &err);
        qtc_tensor *w = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(s.N, s.K), &err);
        float *y = malloc((size_t)(s.M * s.N) * sizeof(float));
        float *dx = calloc((size_t)(s.M * s.K), sizeof(float));
        float *dw = calloc((size_t)(s.N * s.K), sizeof(float));
        if (!x || !w || !y || !dx || !dw) {
            fprintf(stderr, "bench_matmul: out of memory\n");
            return 3;
        }
        qtc_rng_fill_normal(&r, x, 0, 1);
        qtc_rng_fill_normal(&r, w, 0, 1);
        const float *X = x->data, *W = w->data;
        double flops = 2.0 * (double)s.M * (double)s.K * (double)s.N;
        double t_raw = BENCH_BEST(1.0, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)s.M,
                                                   (int)s.N, (int)s.K, 1, X, (int)s.K, W, (int)s.K, 0,
                                                   y, (int)s.N));
        qtc_graph_set_recording(g, 0);
        double t_op = BENCH_BEST(1.0, {
            qtc_graph_reset(g);
            qtc_matmul(g, x, w, 0, 1);
        });
        /* training: y = x W^T, then dx += dy W and dW += dy^T x (gradients accumulate,
         * as the op's do) */
        double t_raw3 = BENCH_BEST(1.0, {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)s.M, (int)s.N, (int)s.K, 1, X,
                        (int)s.K, W, (int)s.K, 0, y, (int)s.N);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)s.M, (int)s.K, (int)s.N, 1, y,
                        (int)s.N, W, (int)s.K, 1, dx, (int)s.K);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)s.N, (int)s.K, (int)s.M, 1, y,
                        (int)s.N, X, (int)s.K, 1, dw, (int)s.K);
        });
        qtc_graph_set_recording(g, 1);
        qtc_tensor_require_grad(x, &err);
        qtc_tensor_require_grad(w, &err);
        qtc_tensor *dy = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(s.M, s.N), &err);
        qtc_rng_fill_normal(&r, dy, 0, 1);
        double t_op3 = BENCH_BEST(1.0, {
            qtc_graph_reset(g);
            qtc_tensor *out = qtc_matmul(g, x, w, 0, 1);
            /* seed d(out) directly: sum(out * dy) would add elementwise work */
            memcpy(qtc_graph_grad(g, out), dy->data, qtc_tensor_nbytes(dy));
            qtc_graph_backward_from(g, out, NULL);
        });
        printf("%-34s %10.1f %10.1f %7.3f %12.1f %12.1f %7.3f\n", s.what, flops / t_raw * 1e-9,
               flops / t_op * 1e-9, t_raw / t_op, 3 * flops / t_raw3 * 1e-9, 3 * flops / t_op3 * 1e-9,
               t_raw3 / t_op3);
        qtc_tensor_free(x);
        qtc_tensor_free(w);
        qtc_tensor_free(dy);
        free(y);
        free(dx);
        free(dw);
    }
    printf("GFLOP/s; ratio = raw time / op time (1.0 = the op layer costs nothing)\n");
    qtc_graph_free(g);
    return 0;
}
