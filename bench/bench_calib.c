/* bench_calib.c: qcalib's work on stories260K and a generated 15M-parameter
 * llama: collecting the statistics of 64K tokens (ctx 128, a layer at a time
 * with x x^T for GPTQ) beside a plain forward pass over the same tokens (the
 * baseline), with GPTQ of every linear weight to int4-g32 and AWQ's search as
 * each layer completes, each configuration in its own process for its peak RSS. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "qtc/calibrate.h"
#include "qtc/rng.h"
#include "qtc/runtime.h"
#include "cli.h"

typedef struct layer_work {
    qtc_qscheme s;
    double t_gptq, t_awq;
} layer_work;

/* Each layer, once its statistics are in: GPTQ of its seven weights, and AWQ's
 * search on its q/k/v group and on down_proj, timed apart from the statistics. */
static qtc_status time_layer(void *ctx, qtc_calib *cb, qtc_llama *m, int l, unsigned kinds, qtc_error *err)
{
    (void)kinds;
    layer_work *lw = ctx;
    const qtc_llama_layer *L = &m->layers[l];
    qtc_gptq_opts o = {0.01, 0};
    double t0 = bench_now();
    for (int k = 0; k < QTC_N_LINEAR; k++) {
        const qtc_act_stats *a = &cb->s[l * QTC_N_LINEAR + k];
        const qtc_tensor *w = qtc_llama_linear_weight(m, l, (qtc_linear_kind)k);
        qtc_qweight q;
        if (qtc_gptq(w->data, w->ne[0], w->ne[1], a->xtx, a->rows, &lw->s, &o, &q, err) != QTC_OK)
            return err->code;
        qtc_qweight_free(&q);
    }
    lw->t_gptq += bench_now() - t0;
    t0 = bench_now();
    const qtc_act_stats *a = &cb->s[l * QTC_N_LINEAR], *d = &cb->s[l * QTC_N_LINEAR + QTC_LIN_DOWN];
    const float *qkv[3] = {L->wq->data, L->wk->data, L->wv->data}, *down[1] = {L->w_down->data};
    int64_t rq[3] = {L->wq->ne[0], L->wk->ne[0], L->wv->ne[0]}, rd[1] = {L->w_down->ne[0]};
    double *ma = malloc((size_t)a->in * sizeof *ma), *md = malloc((size_t)d->in * sizeof *md), alpha, e, e0;
    float *sc = malloc((size_t)d->in * sizeof *sc);
    qtc_status rc = ma && md && sc ? QTC_OK : qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    for (int64_t c = 0; rc == QTC_OK && c < a->in; c++)
        ma[c] = a->sum_abs[c] / (double)a->rows;
    for (int64_t c = 0; rc == QTC_OK && c < d->in; c++)
        md[c] = d->sum_abs[c] / (double)d->rows;
    if (rc == QTC_OK)
        rc = qtc_awq_search(qkv, rq, 3, a->in, a->xtx, ma, &lw->s, 20, sc, &alpha, &e, &e0, err);
    if (rc == QTC_OK)
        rc = qtc_awq_search(down, rd, 1, d->in, d->xtx, md, &lw->s, 20, sc, &alpha, &e, &e0, err);
    free(ma);
    free(md);
    free(sc);
    lw->t_awq += bench_now() - t0;
    return rc;
}

static int run(const char *what, int big)
{
    qtc_error err;
    qtc_llama *m = big ? bench_new_15M() : bench_load_stories260K("bench_calib");
    if (!m)
        return 2;
    enum { CTX = 128, TOKENS = 65536 };
    qtc_tokens data = {malloc(TOKENS * sizeof(int32_t)), TOKENS, NULL};
    qtc_rng r;
    qtc_rng_seed(&r, 1);
    for (int i = 0; i < TOKENS; i++)
        data.ids[i] = (int32_t)qtc_rng_below(&r, (uint64_t)m->c.vocab);
    /* baseline: the forward passes alone */
    qtc_graph *g = qtc_graph_new(&err);
    qtc_graph_set_recording(g, 0);
    double t0 = bench_now();
    for (int w = 0; w < TOKENS / CTX; w += 8) {
        qtc_tensor ids = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(8, CTX), data.ids + (int64_t)w * CTX);
        qtc_graph_reset(g);
        qtc_llama_forward(m, g, &ids, 0);
    }
    double t_fwd = bench_now() - t0;
    qtc_graph_free(g);
    qtc_calib *cb = qtc_calib_new(&m->c, 1, &err);
    layer_work lw = {{0}, 0, 0};
    qtc_qscheme_parse("int4-g32", &lw.s);
    qtc_calib_hooks h = {NULL, time_layer, 0, 0, &lw};
    t0 = bench_now();
    if (!cb || qtc_calib_run(cb, m, &data, CTX, 8, 0, &h, &err) != QTC_OK) {
        fprintf(stderr, "bench_calib: %s\n", err.msg);
        return 2;
    }
    double t_gptq = lw.t_gptq, t_awq = lw.t_awq, t_stats = bench_now() - t0 - t_gptq - t_awq;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("%-22s statistics %6.2f s (forward alone %5.2f s: %4.2fx)  GPTQ %6.2f s  AWQ search %6.2f s  peak RSS %6.1f MB\n",
           what, t_stats, t_fwd, t_stats / t_fwd, t_gptq, t_awq, (double)ru.ru_maxrss / 1024.0);
    qtc_calib_free(cb);
    free(data.ids);
    qtc_llama_free(m);
    return 0;
}

static int in_child(const char *what, int big)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int rc = run(what, big);
        fflush(stdout);
        _exit(rc);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int main(int argc, char **argv)
{
    (void)argc;
    cli_process_setup(argv); /* the tools' OpenMP wait policy */
    qtc_set_threads(0);
    printf("threads %d; 65536 tokens in windows of 128, x x^T kept for GPTQ; int4-g32\n", qtc_get_threads());
    return in_child("stories260K", 0) || in_child("generated 15M llama", 1);
}
