/* bench_calib.c: qcalib's work on stories260K and a generated 15M-parameter
 * llama: collecting the statistics of 64K tokens (ctx 128, with x x^T for
 * GPTQ) beside a plain forward pass over the same tokens (the baseline), then
 * GPTQ of every linear weight to int4-g32 and AWQ's search, each configuration
 * in its own process for its peak RSS. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "qtc/calib.h"
#include "qtc/rng.h"
#include "qtc/runtime.h"

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
    t0 = bench_now();
    if (!cb || qtc_calib_run(cb, m, &data, CTX, 8, 0, NULL, NULL, &err) != QTC_OK) {
        fprintf(stderr, "bench_calib: %s\n", err.msg);
        return 2;
    }
    double t_stats = bench_now() - t0;
    qtc_qscheme s;
    qtc_qscheme_parse("int4-g32", &s);
    qtc_gptq_opts o = {0.01, 0};
    t0 = bench_now();
    for (int i = 0; i < m->c.n_layers * QTC_N_LINEAR; i++) {
        const qtc_llama_layer *L = &m->layers[i / QTC_N_LINEAR];
        const qtc_tensor *ws[QTC_N_LINEAR] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
        const qtc_tensor *w = ws[i % QTC_N_LINEAR];
        qtc_qweight q;
        if (qtc_gptq(w->data, w->ne[0], w->ne[1], cb->s[i].xtx, cb->s[i].rows, &s, &o, &q, &err) != QTC_OK) {
            fprintf(stderr, "bench_calib: %s\n", err.msg);
            return 4;
        }
        qtc_qweight_free(&q);
    }
    double t_gptq = bench_now() - t0;
    t0 = bench_now();
    for (int l = 0; l < m->c.n_layers; l++) { /* AWQ's search on the q/k/v group and on down_proj */
        const qtc_llama_layer *L = &m->layers[l];
        const qtc_act_stats *a = &cb->s[l * QTC_N_LINEAR], *d = &cb->s[l * QTC_N_LINEAR + QTC_LIN_DOWN];
        const float *qkv[3] = {L->wq->data, L->wk->data, L->wv->data}, *down[1] = {L->w_down->data};
        int64_t rq[3] = {L->wq->ne[0], L->wk->ne[0], L->wv->ne[0]}, rd[1] = {L->w_down->ne[0]};
        double *ma = malloc((size_t)a->in * sizeof *ma), *md = malloc((size_t)d->in * sizeof *md), alpha, e, e0;
        float *sc = malloc((size_t)d->in * sizeof *sc);
        for (int64_t c = 0; c < a->in; c++)
            ma[c] = a->sum_abs[c] / (double)a->rows;
        for (int64_t c = 0; c < d->in; c++)
            md[c] = d->sum_abs[c] / (double)d->rows;
        qtc_awq_search(qkv, rq, 3, a->in, a->xtx, ma, &s, 20, sc, &alpha, &e, &e0, &err);
        qtc_awq_search(down, rd, 1, d->in, d->xtx, md, &s, 20, sc, &alpha, &e, &e0, &err);
        free(ma);
        free(md);
        free(sc);
    }
    double t_awq = bench_now() - t0;
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
    qtc_runtime_setup(argv);
    qtc_set_threads(0);
    printf("threads %d; 65536 tokens in windows of 128, x x^T kept for GPTQ; int4-g32\n", qtc_get_threads());
    return in_child("stories260K", 0) || in_child("generated 15M llama", 1);
}
