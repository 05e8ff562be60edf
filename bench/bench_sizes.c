/* bench_sizes.c: training at real sizes, the table of issue 13. Each row is
 * measured in this run beside its peer (PyTorch through bench/torch_train.py,
 * or another qtc configuration) and printed with its target:
 *
 *   1  15M shape (dim 288, 6 layers, vocab 32000, tied), B16 x T256, fp32
 *      training: tokens/s vs PyTorch, and % of the sgemm ceiling
 *   2  the same: peak RSS vs PyTorch's
 *   3  the 15M shape at B*T = 4096 tokens, T = 256, 512, 1024, 2048: peak RSS
 *      against T = 256 (PyTorch's at T = 256 and 2048 beside)
 *   4  a generated TinyLlama-1.1B shape, QLoRA on NF4, rank 16 on every linear
 *      layer, B4 x T512, --grad-checkpoint: peak RSS vs LoRA on the f32 base,
 *      tokens/s and its % of the sgemm ceiling, through bin/qlora-train
 *   5  stories260K fp32 and QLoRA (rank 8) tokens/s vs PyTorch
 *   6  the 15M step at 1 and 2 threads; OpenBLAS's threading, and sgemm
 *      called from inside an OpenMP region
 *
 * Every configuration runs in a child process of its own (a fork running
 * qtc_train in-process, PyTorch's python, or the qlora-train binary) and its
 * peak RSS is the child's ru_maxrss from wait4. The parent allocates nothing
 * large, so a forked child starts near nothing. Steps are few (the whole of
 * `make bench` is meant to fit in about 10 minutes on 2 cores): step 1 is
 * reported apart, tokens/s is the mean of the steps after it. The losses are
 * the trainers' own: cross-entropy with the output head fused into the loss.
 *
 *   bench_sizes [--rows 1,2,...]      the rows to run (default all, or $QTC_BENCH_ROWS:
 *                                     `QTC_BENCH_ROWS=12356 make bench` leaves out the 1.1B row)
 *   bench_sizes --gen-1b PATH         only write the 1.1B-shape model (f32 safetensors)
 *
 * Env: QTC_SHARED (../shared), QTC_BIN (bin), QTC_PYTHON (a python3 with
 * torch; default the first of python3, /usr/bin/python3 that imports it),
 * TMPDIR (where the 1.1B model is written: about 4.4 GB, removed after). */
#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "qtc/convert.h"
#include "qtc/lora.h"
#include "qtc/rng.h"
#include "qtc/runtime.h"
#include "qtc/train.h"
#include "cli.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* What one child measured. */
typedef struct fig {
    int ok;
    double step1;  /* seconds of step 1 */
    double tps;    /* tokens/s of steps 2..n; NAN with one step */
    double rss_mb; /* the child's peak RSS */
    double wall;   /* the child's whole life, seconds */
    double base_mb; /* qlora-train: the linear base it reports */
} fig;
#define NO_FIG ((fig){0, NAN, NAN, NAN, NAN, NAN})

static const char *shared_dir, *bin_dir, *python;
static double ceiling;
static int threads;

/* user + system seconds of the children waited for so far */
static double children_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
           1e-6 * (double)ru.ru_stime.tv_usec;
}

static double mb_of_kb(long kb)
{
    return (double)kb / 1024.0;
}

/* --- children -------------------------------------------------------------------------------- */

/* Waits for pid; fills the peak RSS and returns the exit status (or 128 + signal). */
static int reap(pid_t pid, fig *f)
{
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR)
        ;
    f->rss_mb = mb_of_kb(ru.ru_maxrss);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

/* An in-process training configuration: the generated 15M llama or stories260K. */
typedef enum { FULL, QLORA } mode;
typedef struct job {
    int stories; /* 0: the generated 15M llama; 1: stories260K */
    mode m;
    int B, T, steps, threads;
} job;

static qtc_llama_config config_15M(int T)
{
    qtc_llama_config c = {.dim = 288, .hidden = 768, .n_layers = 6, .n_heads = 6, .n_kv_heads = 6, .vocab = 32000,
                          .ctx = T, .head_dim = 48, .n_rot = 48, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = 1};
    return c;
}

/* Runs j in this (child) process; returns an exit status. */
static int train_job(const job *j, fig *f)
{
    qtc_error err;
    qtc_set_threads(j->threads);
    char path[4096];
    snprintf(path, sizeof path, "%s/models/stories260K/stories260K.bin", shared_dir);
    qtc_llama *m = NULL;
    qtc_peft *p = NULL;
    if (j->m == QLORA) { /* rank 8, alpha 16 on every linear layer, the base quantized as it is read */
        qtc_model_file *mf = qtc_model_open(path, &err);
        qtc_peft_config pc = {.method = QTC_PEFT_LORA, .r = 8, .alpha = 16, .target = "all-linear"};
        qtc_qscheme nf4;
        qtc_qscheme_parse("nf4", &nf4);
        if (mf && (p = qtc_peft_new(&mf->config, &pc, 1, &err)))
            m = qtc_peft_load_base(p, mf, &nf4, QTC_F32, &err);
        qtc_model_close(mf);
    } else if (j->stories) {
        m = qtc_llama_load(path, &err);
    } else {
        qtc_llama_config c = config_15M(j->T);
        m = qtc_llama_new_random(&c, 1, 0.02f, &err);
    }
    if (!m) {
        fprintf(stderr, "bench_sizes: %s\n", err.msg);
        return 2;
    }
    qtc_tensor *params[512];
    int np;
    if (p) {
        qtc_peft_attach(p, m);
        np = qtc_peft_params(p, params, 512);
    } else {
        np = qtc_llama_params(m, params, 512);
        for (int i = 0; i < np; i++)
            qtc_tensor_require_grad(params[i], &err);
    }
    qtc_adamw *opt = qtc_adamw_new(params, np, qtc_adamw_defaults(), &err);
    int64_t n = 20000 > 4 * j->T ? 20000 : 4 * j->T;
    qtc_tokens data = {malloc((size_t)n * sizeof(int32_t)), n, NULL};
    if (!opt || !data.ids) {
        fprintf(stderr, "bench_sizes: out of memory\n");
        return 3;
    }
    qtc_rng r;
    qtc_rng_seed(&r, 1);
    for (int64_t i = 0; i < n; i++)
        data.ids[i] = (int32_t)qtc_rng_below(&r, (uint64_t)m->c.vocab);
    qtc_train_opts o = qtc_train_defaults(j->steps);
    o.batch = j->B;
    o.ctx = j->T;
    qtc_lm_loss loss = {m, NULL, NULL, NULL, NULL, 1}; /* as qlora-train and qat-train --ce: the head fused */
    bench_steps st = {0};
    if (qtc_train(&o, opt, params, np, &data, 0, qtc_lm_loss_fn, &loss, bench_on_step, &st, &err) != QTC_OK) {
        fprintf(stderr, "bench_sizes: %s\n", err.msg);
        return 4;
    }
    f->ok = 1;
    f->step1 = st.first;
    f->tps = st.steps > 1 ? (double)j->B * j->T * (double)(st.steps - 1) / (st.last - st.first) : NAN;
    qtc_adamw_free(opt);
    free(data.ids);
    qtc_llama_free(m);
    qtc_peft_free(p);
    return 0;
}

static fig run_job(const job *j)
{
    fig f = NO_FIG;
    int fd[2];
    if (pipe(fd) != 0)
        return f;
    fflush(stdout);
    double t0 = bench_now();
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        fig mine = f;
        int rc = train_job(j, &mine);
        if (write(fd[1], &mine, sizeof mine) != (ssize_t)sizeof mine)
            rc = rc ? rc : 3;
        _exit(rc);
    }
    close(fd[1]);
    fig got = f;
    ssize_t n = pid > 0 ? read(fd[0], &got, sizeof got) : -1;
    close(fd[0]);
    if (pid < 0)
        return f;
    int rc = reap(pid, &got);
    got.wall = bench_now() - t0;
    got.ok = rc == 0 && n == (ssize_t)sizeof got && got.ok;
    if (!got.ok)
        fprintf(stderr, "bench_sizes: a qtc child exited with status %d\n", rc);
    return got;
}

/* Runs argv with stdout into a buffer (out, cap) and stderr to errfile (or inherited). */
static int run_cmd(char *const argv[], char *out, size_t cap, const char *errfile, int torch_env, fig *f)
{
    int fd[2];
    if (pipe(fd) != 0)
        return -1;
    fflush(stdout);
    fflush(stderr);
    double t0 = bench_now();
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        dup2(fd[1], 1);
        close(fd[1]);
        if (errfile) {
            int e = open(errfile, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (e >= 0) {
                dup2(e, 2);
                close(e);
            }
        }
        /* PyTorch runs with the environment the user gave, not the wait policy set for qtc */
        if (torch_env && getenv("QTC_BENCH_SET_WAIT"))
            unsetenv("OMP_WAIT_POLICY");
        execvp(argv[0], argv);
        _exit(127);
    }
    close(fd[1]);
    size_t len = 0;
    ssize_t n;
    while (pid > 0 && (n = read(fd[0], out + len, cap - 1 - len)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        len += (size_t)n;
        if (len == cap - 1) { /* drain the rest */
            char sink[4096];
            while (read(fd[0], sink, sizeof sink) > 0)
                ;
            break;
        }
    }
    out[len] = 0;
    close(fd[0]);
    if (pid < 0)
        return -1;
    int rc = reap(pid, f);
    f->wall = bench_now() - t0;
    return rc;
}

/* PyTorch on one configuration, in a fresh python process. */
static fig run_torch(const char *shape_name, const char *mode_name, int B, int T, int steps, int nthreads)
{
    fig f = NO_FIG;
    if (!python)
        return f;
    char b[16], t[16], s[16], th[16], out[4096];
    snprintf(b, sizeof b, "%d", B);
    snprintf(t, sizeof t, "%d", T);
    snprintf(s, sizeof s, "%d", steps);
    snprintf(th, sizeof th, "%d", nthreads);
    char *argv[] = {(char *)python, "bench/torch_train.py", "--shape", (char *)shape_name, "--mode", (char *)mode_name,
                    "--batch", b, "--ctx", t, "--steps", s, "--threads", th, NULL};
    int rc = run_cmd(argv, out, sizeof out, NULL, 1, &f);
    const char *line = strstr(out, "torch_train: step1_s");
    f.ok = rc == 0 && line && sscanf(line, "torch_train: step1_s %lf tokens_per_s %lf", &f.step1, &f.tps) == 2;
    if (!f.ok)
        fprintf(stderr, "bench_sizes: torch_train.py %s %s B%d T%d exited with status %d: %s\n", shape_name, mode_name, B,
                T, rc, out);
    return f;
}

/* --- printing ---------------------------------------------------------------------------------- */

static const char *verdict(int ok, int met)
{
    return !ok ? "(not measured)" : met ? "met" : "NOT met";
}

static void print_ratio(const char *what, double qtc, double peer, const char *unit, const char *peer_name,
                        const char *target, int met)
{
    int ok = isfinite(qtc) && isfinite(peer) && peer > 0;
    printf("   %-38s qtc %9.1f %-8s %-7s %9.1f %-8s = %6.2fx   target %-9s %s\n", what, qtc, unit, peer_name, peer, unit,
           ok ? qtc / peer : NAN, target, verdict(ok, met));
}

/* --- the rows ---------------------------------------------------------------------------------- */

static fig q15_2t, t15_2t; /* the 15M shape at B16 x T256, 2 threads: rows 1, 2, 3, 6 */
static int have_15 = 0;

static void measure_15M(void)
{
    if (have_15)
        return;
    have_15 = 1;
    job j = {0, FULL, 16, 256, 2, threads};
    q15_2t = run_job(&j);
    t15_2t = run_torch("15M", "full", 16, 256, 2, threads);
}

static void row_1_2(void)
{
    static int done;
    if (done++)
        return;
    measure_15M();
    qtc_llama_config c = config_15M(256);
    double qg = bench_train_flops(&c, 256) * q15_2t.tps * 1e-9;
    printf("1  15M shape, B16 x T256, fp32 training, %d threads (step 1: qtc %.2f s, PyTorch %.2f s)\n", threads,
           q15_2t.step1, t15_2t.step1);
    double r = q15_2t.tps / t15_2t.tps;
    print_ratio("tokens/s vs PyTorch", q15_2t.tps, t15_2t.tps, "tok/s", "PyTorch", ">= 1.5x", r >= 1.5);
    printf("   %-38s qtc %9.1f GFLOP/s = %5.1f%% of the sgemm ceiling (%.1f GFLOP/s)   target >= 50%%    %s\n",
           "% of the sgemm ceiling", qg, 100 * qg / ceiling, ceiling, verdict(isfinite(qg), qg >= 0.5 * ceiling));
    printf("2  the same, peak RSS\n");
    print_ratio("peak RSS vs PyTorch", q15_2t.rss_mb, t15_2t.rss_mb, "MB", "PyTorch", "<= 0.25x",
                q15_2t.rss_mb <= 0.25 * t15_2t.rss_mb);
}

static void row_3(void)
{
    measure_15M();
    printf("3  15M shape at B*T = 4096 tokens, fp32 training, peak RSS against T = 256 (one step each beyond T = 256)\n");
    const int Ts[] = {256, 512, 1024, 2048};
    double base = q15_2t.rss_mb;
    for (int i = 0; i < 4; i++) {
        fig q = q15_2t;
        if (Ts[i] != 256) {
            job j = {0, FULL, 4096 / Ts[i], Ts[i], 1, threads};
            q = run_job(&j);
        }
        char what[64];
        snprintf(what, sizeof what, "T = %4d (B%d): peak RSS", Ts[i], 4096 / Ts[i]);
        int ok = q.ok && isfinite(base);
        if (Ts[i] == 2048)
            printf("   %-38s qtc %9.1f MB  = %6.2fx of T = 256   step 1 %6.2f s   target <= 1.3x   %s\n", what, q.rss_mb,
                   q.rss_mb / base, q.step1, verdict(ok, q.rss_mb <= 1.3 * base));
        else
            printf("   %-38s qtc %9.1f MB  = %6.2fx of T = 256   step 1 %6.2f s\n", what, q.rss_mb, q.rss_mb / base, q.step1);
    }
    fig t = run_torch("15M", "full", 2, 2048, 1, threads);
    printf("   %-38s PyTorch %7.1f MB at T = 256, %.1f MB at T = 2048 (%.2fx)\n", "the peer's growth", t15_2t.rss_mb,
           t.rss_mb, t.rss_mb / t15_2t.rss_mb);
}

/* The TinyLlama-1.1B shape. */
static qtc_llama_config config_1B(void)
{
    qtc_llama_config c = {.dim = 2048, .hidden = 5632, .n_layers = 22, .n_heads = 32, .n_kv_heads = 4, .vocab = 32000,
                          .ctx = 2048, .head_dim = 64, .n_rot = 64, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = 0,
                          .bos_id = 1, .eos_id = 2};
    return c;
}

/* Writes the 1.1B shape as f32 safetensors with random weights: every row a
 * window at a random offset of one pool of N(0, 0.02^2) values (norms N(1,
 * 0.1^2)), so generating costs a copy per weight rather than a normal draw, and
 * memory stays at the largest tensor. */
static int write_1B(const char *path, double *bytes)
{
    qtc_error err;
    qtc_llama_config c = config_1B();
    const int64_t D = c.dim, H = c.hidden, QD = (int64_t)c.n_heads * c.head_dim, KV = (int64_t)c.n_kv_heads * c.head_dim;
    enum { PER_LAYER = 9 };
    int n = 3 + PER_LAYER * c.n_layers;
    qtc_out_entry *e = calloc((size_t)n, sizeof *e);
    if (!e)
        return 3;
    static const char *part[PER_LAYER] = {"input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                          "self_attn.o_proj", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj",
                                          "mlp.down_proj"};
    const int64_t rows[PER_LAYER] = {D, QD, KV, KV, D, D, H, H, D}, cols[PER_LAYER] = {0, D, D, D, QD, 0, D, D, H};
    int k = 0;
    snprintf(e[k].name, sizeof e[k].name, "model.embed_tokens.weight");
    e[k].ndim = 2, e[k].ne[0] = c.vocab, e[k].ne[1] = D, k++;
    snprintf(e[k].name, sizeof e[k].name, "lm_head.weight");
    e[k].ndim = 2, e[k].ne[0] = c.vocab, e[k].ne[1] = D, k++;
    snprintf(e[k].name, sizeof e[k].name, "model.norm.weight");
    e[k].ndim = 1, e[k].ne[0] = D, k++;
    for (int l = 0; l < c.n_layers; l++)
        for (int p = 0; p < PER_LAYER; p++, k++) {
            qtc_layer_weight_name(l, part[p], e[k].name, sizeof e[k].name);
            e[k].ndim = cols[p] ? 2 : 1;
            e[k].ne[0] = rows[p];
            e[k].ne[1] = cols[p];
        }
    *bytes = 0;
    for (int i = 0; i < n; i++) {
        e[i].dtype = QTC_F32;
        *bytes += 4.0 * (double)e[i].ne[0] * (double)(e[i].ndim == 2 ? e[i].ne[1] : 1);
    }
    qtc_model_file like;
    memset(&like, 0, sizeof like);
    like.has_config = 1;
    like.config = c;
    qtc_rng r;
    qtc_rng_seed(&r, 11);
    const int64_t pool_n = (int64_t)1 << 22;
    qtc_tensor *pool = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(pool_n), &err);
    qtc_model_writer *w = pool ? qtc_writer_open(path, QTC_FMT_SAFETENSORS, 0, &like, e, n, NULL, &err) : NULL;
    int ok = w != NULL;
    if (ok)
        qtc_rng_fill_normal(&r, pool, 0.0f, 0.02f);
    for (int i = 0; ok && i < n; i++) {
        int64_t R = e[i].ne[0], C = e[i].ndim == 2 ? e[i].ne[1] : 0;
        qtc_tensor *t = qtc_tensor_new(QTC_F32, e[i].ndim, e[i].ne, &err);
        if (!(ok = t != NULL))
            break;
        float *x = t->data;
        if (!C) {
            qtc_rng_fill_normal(&r, t, 1.0f, 0.1f);
        } else {
            for (int64_t row = 0; row < R; row++)
                memcpy(x + row * C, (float *)pool->data + qtc_rng_below(&r, (uint64_t)(pool_n - C)), (size_t)C * 4);
        }
        ok = qtc_writer_put(w, i, t, &err) == QTC_OK;
        qtc_tensor_free(t);
    }
    if (ok)
        ok = qtc_writer_commit(w, &err) == QTC_OK;
    else if (w)
        qtc_writer_abort(w);
    if (!ok)
        fprintf(stderr, "bench_sizes: %s: %s\n", path, err.msg);
    qtc_tensor_free(pool);
    free(e);
    return ok ? 0 : 3;
}

/* Generates in a child, so that its pages are not the parent's. */
static int gen_1B(const char *path, double *bytes, double *seconds)
{
    int fd[2];
    if (pipe(fd) != 0)
        return 3;
    fflush(stdout);
    double t0 = bench_now();
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        double b = 0;
        int rc = write_1B(path, &b);
        if (write(fd[1], &b, sizeof b) != (ssize_t)sizeof b)
            rc = rc ? rc : 3;
        _exit(rc);
    }
    close(fd[1]);
    *bytes = 0;
    if (pid < 0 || read(fd[0], bytes, sizeof *bytes) != (ssize_t)sizeof *bytes)
        *bytes = 0;
    close(fd[0]);
    fig f;
    int rc = pid < 0 ? 3 : reap(pid, &f);
    *seconds = bench_now() - t0;
    return rc;
}

/* Whether `qlora-train --help` lists flag. */
static int tool_has(const char *tool, const char *flag)
{
    char path[4096], out[16384];
    snprintf(path, sizeof path, "%s/%s", bin_dir, tool);
    char *argv[] = {path, "--help", NULL};
    fig f;
    if (run_cmd(argv, out, sizeof out, "/dev/null", 0, &f) != 0)
        return 0;
    return strstr(out, flag) != NULL;
}

static double mem_available_mb(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    double kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb / 1024.0;
}

/* qlora-train on the 1.1B model: --method method, B4 x T512, steps steps; the
 * step times from its --log-json events. */
static fig run_qlora_train(const char *model, const char *method, int steps, const char *tmp)
{
    fig f = NO_FIG;
    char tool[4096], data[4096], vocab[4096], log[4096], out[4096], errf[4096], st[16], th[16], buf[256];
    snprintf(tool, sizeof tool, "%s/qlora-train", bin_dir);
    snprintf(data, sizeof data, "%s/data/tinystories-eval.txt", shared_dir);
    snprintf(vocab, sizeof vocab, "%s/models/vocab/ggml-vocab-llama-spm.gguf", shared_dir);
    snprintf(log, sizeof log, "%s/%s.jsonl", tmp, method);
    snprintf(out, sizeof out, "%s/%s-adapter", tmp, method);
    snprintf(errf, sizeof errf, "%s/%s.stderr", tmp, method);
    snprintf(st, sizeof st, "%d", steps);
    snprintf(th, sizeof th, "%d", threads);
    char *argv[] = {tool, (char *)model, "--data", data, "--tokenizer", vocab, "--method", (char *)method, "--target",
                    "all-linear", "--rank", "16", "--batch", "4", "--ctx", "512", "--steps", st, "--grad-checkpoint",
                    "--threads", th, "--log-json", log, "-o", out, NULL};
    int rc = run_cmd(argv, buf, sizeof buf, errf, 0, &f);
    FILE *lf = fopen(log, "r");
    char line[1024];
    double total = 0;
    int later = 0;
    while (lf && fgets(line, sizeof line, lf)) {
        long long step;
        double tps;
        const char *s = strstr(line, "\"step\":"), *t = strstr(line, "\"tokens_per_s\":");
        if (!strstr(line, "\"event\":\"step\"") || !s || !t || sscanf(s, "\"step\":%lld", &step) != 1 ||
            sscanf(t, "\"tokens_per_s\":%lf", &tps) != 1 || !(tps > 0))
            continue;
        if (step == 1)
            f.step1 = 4.0 * 512 / tps;
        else
            total += 4.0 * 512 / tps, later++;
    }
    if (lf)
        fclose(lf);
    f.tps = later ? later * 4.0 * 512 / total : NAN;
    f.ok = rc == 0 && isfinite(f.step1);
    f.base_mb = NAN;
    FILE *bf = fopen(errf, "r");
    while (bf && fgets(line, sizeof line, bf)) {
        const char *b = strstr(line, "linear base ");
        char type[32];
        if (b && sscanf(b, "linear base %31s %lf MB", type, &f.base_mb) == 2)
            break;
    }
    if (bf)
        fclose(bf);
    if (!f.ok) {
        fprintf(stderr, "bench_sizes: qlora-train --method %s exited with status %d; its last messages:\n", method, rc);
        FILE *ef = fopen(errf, "r");
        char tail[8][512];
        int nt = 0;
        while (ef && fgets(tail[nt % 8], sizeof tail[0], ef))
            nt++;
        for (int i = nt > 8 ? nt - 8 : 0; i < nt; i++)
            fprintf(stderr, "  %s", tail[i % 8]);
        if (ef)
            fclose(ef);
    }
    return f;
}

static void remove_tree(const char *path)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path); /* a mkdtemp path: no quotes in it */
    if (system(cmd) != 0)
        fprintf(stderr, "bench_sizes: could not remove %s\n", path);
}

/* the 1.1B model file while it exists: removed if the run is interrupted */
static char model_path[4200];

static void on_signal(int sig)
{
    if (model_path[0])
        unlink(model_path);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void row_4(void)
{
    qtc_llama_config c = config_1B();
    printf("4  generated TinyLlama-1.1B shape (dim 2048, 22 layers, 32/4 heads, ffn 5632, vocab 32000, untied), rank 16 "
           "on every linear layer, B4 x T512, --grad-checkpoint, through bin/qlora-train\n");
    if (!tool_has("qlora-train", "--grad-checkpoint")) {
        printf("   skipped: needs qlora-train --grad-checkpoint (without it B4 x T512 keeps every block's activations, "
               "more than 10 GB here)\n");
        return;
    }
    const char *tdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char tmp[4096], model[4200];
    snprintf(tmp, sizeof tmp, "%s/qtc-bench-1b-XXXXXX", tdir);
    if (!mkdtemp(tmp)) {
        printf("   skipped: cannot make a folder under %s\n", tdir);
        return;
    }
    snprintf(model, sizeof model, "%s/tinyllama-shape.safetensors", tmp);
    snprintf(model_path, sizeof model_path, "%s", model);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    double bytes, gen_s;
    if (gen_1B(model, &bytes, &gen_s) != 0) {
        printf("   skipped: the model could not be written (%s)\n", model);
        remove_tree(tmp);
        model_path[0] = 0;
        return;
    }
    printf("   the model: %.0f MB of f32 safetensors written in %.1f s (%.0f MB/s)\n", bytes / 1048576.0, gen_s,
           bytes / 1048576.0 / gen_s);
    fig q = run_qlora_train(model, "qlora", 2, tmp);
    /* LoRA on the f32 base holds the base in memory (today a copy beside the mapping): run it only where it fits */
    double need = 2.5 * bytes / 1048576.0, avail = mem_available_mb();
    fig l = NO_FIG;
    if (avail >= need)
        l = run_qlora_train(model, "lora", 1, tmp);
    else
        printf("   LoRA on the f32 base skipped: %.0f MB available, %.0f MB wanted\n", avail, need);
    remove_tree(tmp);
    model_path[0] = 0;
    double lin = 0;
    lin = (double)c.n_layers * ((double)c.dim * c.head_dim * (c.n_heads * 2 + c.n_kv_heads * 2) + 3.0 * c.dim * c.hidden);
    double params = lin + (double)c.vocab * c.dim; /* the linear layers and the head: what the matmuls see */
    double flops = 4 * params + 6.0 * c.n_layers * c.n_heads * c.head_dim * 512, qg = flops * q.tps * 1e-9;
    printf("   %-38s qtc %9.1f MB    target <= 1536 MB   %s   (linear base: NF4 %.1f MB, f32 %.1f MB)\n",
           "QLoRA (NF4 base) peak RSS", q.rss_mb, verdict(q.ok, q.rss_mb <= 1536), q.base_mb, l.base_mb);
    print_ratio("QLoRA peak RSS vs LoRA on the f32 base", q.rss_mb, l.rss_mb, "MB", "LoRA", "<= 0.35x",
                q.rss_mb <= 0.35 * l.rss_mb);
    printf("   %-38s qtc %9.1f tok/s  %6.1f GFLOP/s = %5.1f%% of the sgemm ceiling (4 params + attention per token)   "
           "aim >= 40%%   %s\n", "QLoRA tokens/s (step 2)", q.tps, qg, 100 * qg / ceiling,
           verdict(isfinite(qg), qg >= 0.4 * ceiling));
    printf("   %-38s QLoRA %.1f s, LoRA %.1f s; whole runs (load, steps, save): QLoRA %.1f s, LoRA %.1f s\n", "step 1",
           q.step1, l.step1, q.wall, l.wall);
}

static void row_5(void)
{
    printf("5  stories260K, B16 x T256, %d threads: tokens/s vs PyTorch (4 steps each)\n", threads);
    job jf = {1, FULL, 16, 256, 4, threads}, jq = {1, QLORA, 16, 256, 4, threads};
    fig qf = run_job(&jf), tf = run_torch("260K", "full", 16, 256, 4, threads);
    print_ratio("fp32 training", qf.tps, tf.tps, "tok/s", "PyTorch", ">= 3x", qf.tps >= 3 * tf.tps);
    fig qq = run_job(&jq), tq = run_torch("260K", "qlora", 16, 256, 4, threads);
    print_ratio("QLoRA, NF4 base, rank 8 all-linear", qq.tps, tq.tps, "tok/s", "PyTorch", ">= 3x", qq.tps >= 3 * tq.tps);
}

/* Two sgemms of one size issued one after the other at `threads` OpenBLAS
 * threads, and the same two issued from inside an OpenMP loop of two threads
 * (OpenBLAS at its setting, then at 1 thread inside). */
enum { GN = 512 };
static float *ga, *gb, *gc;

static void gemm(int i)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, GN, GN, GN, 1, ga, GN, gb, GN, 0, gc + (size_t)i * GN * GN, GN);
}

static void two_serial(void)
{
    gemm(0);
    gemm(1);
}

static void two_inside(void)
{
    #pragma omp parallel for num_threads(2) schedule(static)
    for (int i = 0; i < 2; i++)
        gemm(i);
}

static int omp_sgemm_check(void)
{
    ga = calloc((size_t)GN * GN, 4), gb = calloc((size_t)GN * GN, 4), gc = calloc(2 * (size_t)GN * GN, 4);
    if (!ga || !gb || !gc)
        return 3;
    qtc_set_threads(threads);
    double serial = BENCH_BEST(0.5, two_serial());
    double inside = BENCH_BEST(0.5, two_inside());
    openblas_set_num_threads(1);
    double inside1 = BENCH_BEST(0.5, two_inside());
    printf("   two 512^3 sgemms: one after the other %.2f ms; from a 2-thread OpenMP loop %.2f ms (%.2fx), the same with "
           "OpenBLAS at 1 thread %.2f ms (%.2fx)\n", 1e3 * serial, 1e3 * inside, inside / serial, 1e3 * inside1,
           inside1 / serial);
    fflush(stdout);
    free(ga);
    free(gb);
    free(gc);
    return 0;
}

static void row_6(void)
{
    measure_15M();
    printf("6  thread scaling of the 15M step (B16 x T256, fp32, 2 steps)\n");
    job j = {0, FULL, 16, 256, 2, 1};
    fig one = run_job(&j);
    printf("   %-38s qtc %9.1f tok/s at 1 thread, %.1f at %d = %.2fx (ideal %d.00x)\n", "tokens/s", one.tps, q15_2t.tps,
           threads, q15_2t.tps / one.tps, threads);
    const char *par[] = {"sequential", "pthreads", "OpenMP"};
    int pm = openblas_get_parallel();
    char lib[4096] = "?", line[4400];
    FILE *maps = fopen("/proc/self/maps", "r");
    while (maps && fgets(line, sizeof line, maps)) {
        char *p = strchr(line, '/');
        if (p && strstr(p, "libopenblas")) {
            p[strcspn(p, "\n")] = 0;
            if (!realpath(p, lib))
                snprintf(lib, sizeof lib, "%s", p);
            break;
        }
    }
    if (maps)
        fclose(maps);
    printf("   OpenBLAS %s (%s), threading %s, %d threads; OpenMP %d threads, OMP_WAIT_POLICY=%s\n", lib,
           openblas_get_config(), pm >= 0 && pm <= 2 ? par[pm] : "?", openblas_get_num_threads(), qtc_get_threads(),
           getenv("OMP_WAIT_POLICY") ? getenv("OMP_WAIT_POLICY") : "(unset)");
    fflush(stdout);
    pid_t pid = fork(); /* OpenMP's threads start in the child, never in the parent that forks the others */
    if (pid == 0)
        _exit(omp_sgemm_check());
    fig f;
    if (pid > 0)
        reap(pid, &f);
}

static const char *find_python(void)
{
    const char *env = getenv("QTC_PYTHON");
    const char *try[] = {env, "python3", "/usr/bin/python3"};
    for (int i = 0; i < 3; i++) {
        if (!try[i] || strchr(try[i], '\''))
            continue;
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "'%s' -c 'import torch' >/dev/null 2>&1", try[i]);
        if (system(cmd) == 0)
            return try[i];
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (!getenv("OMP_WAIT_POLICY"))
        setenv("QTC_BENCH_SET_WAIT", "1", 1); /* the re-executed process knows the policy was ours */
    cli_process_setup(argv); /* the tools' OpenMP wait policy */
    const char *rows = getenv("QTC_BENCH_ROWS") ? getenv("QTC_BENCH_ROWS") : "123456";
    if (argc == 3 && strcmp(argv[1], "--rows") == 0) {
        rows = argv[2];
    } else if (argc == 3 && strcmp(argv[1], "--gen-1b") == 0) {
        double bytes, s;
        int rc = gen_1B(argv[2], &bytes, &s);
        if (!rc)
            printf("bench_sizes: wrote %s: %.0f MB in %.1f s\n", argv[2], bytes / 1048576.0, s);
        return rc;
    } else if (argc != 1) {
        fprintf(stderr, "usage: bench_sizes [--rows 1,2,...] | --gen-1b PATH\n");
        return 1;
    }
    shared_dir = getenv("QTC_SHARED") ? getenv("QTC_SHARED") : "../shared";
    bin_dir = getenv("QTC_BIN") ? getenv("QTC_BIN") : "bin";
    qtc_set_threads(0);
    threads = qtc_get_threads();
    ceiling = bench_sgemm_ceiling();
    python = access("bench/torch_train.py", R_OK) == 0 ? find_python() : NULL;
    printf("threads %d; sgemm ceiling (1024^3) %.1f GFLOP/s; PyTorch peer: %s\n", threads, ceiling,
           python ? python : "none (no python3 with torch, or not run from the source tree): peer columns are nan");
    printf("figures on a shared 2-core machine are indicative; ratios are taken within this run\n");
    double t0 = bench_now();
    for (const char *r = rows; *r; r++) {
        double ts = bench_now(), cs = children_cpu();
        switch (*r) {
        case '2':
            if (strchr(rows, '1'))
                continue; /* printed with row 1 */
            /* fall through */
        case '1': row_1_2(); break;
        case '3': row_3(); break;
        case '4': row_4(); break;
        case '5': row_5(); break;
        case '6': row_6(); break;
        default: continue;
        }
        printf("   (%.0f s, %.0f CPU s)\n", bench_now() - ts, children_cpu() - cs);
        fflush(stdout);
    }
    printf("bench_sizes: %.0f s, %.0f CPU s in the children\n", bench_now() - t0, children_cpu());
    return 0;
}
