/* bench_lora.c: LoRA training throughput and memory: rank 8, alpha 16 on every
 * linear layer, batch 16, ctx 256, on an f32 base and on an NF4 base (QLoRA,
 * quantized while loading), for stories260K and a generated 15M-parameter
 * llama, whose QLoRA also runs with activation checkpointing. Each configuration runs in its own process so that its peak RSS is
 * its own. Beside: the sgemm ceiling of this run; `make bench` then runs
 * PyTorch on the same shapes (bench/torch_train.py). The issue quotes PyTorch
 * at 3,780 tokens/s (LoRA) and 4,130 (NF4 QLoRA) for stories260K here.
 * Env: QTC_SHARED. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "qtc/lora.h"
#include "qtc/rng.h"
#include "qtc/runtime.h"
#include "qtc/train.h"
#include "cli.h"

static double rss_mb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (double)resident * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
}

/* One configuration, in the calling (child) process. */
static int run(const char *what, const char *path, int qlora, int ckpt, int steps)
{
    qtc_error err;
    enum { B = 16, T = 256 };
    double rss0 = rss_mb();
    qtc_model_file *f = qtc_model_open(path, &err);
    qtc_peft_config c = {.method = QTC_PEFT_LORA, .r = 8, .alpha = 16, .target = "all-linear"};
    qtc_peft *p = f ? qtc_peft_new(&f->config, &c, 1, &err) : NULL;
    qtc_qscheme nf4;
    qtc_qscheme_parse("nf4", &nf4);
    qtc_llama *m = !p ? NULL : qlora ? qtc_peft_load_base(p, f, &nf4, QTC_F32, &err) : qtc_llama_from_model(f, &err);
    if (!m) {
        fprintf(stderr, "bench_lora: %s\n", err.msg);
        return 2;
    }
    qtc_model_close(f);
    const qtc_llama_config *mc = &m->c;
    double f32_base = 4.0 * mc->n_layers *
                      ((double)mc->dim * mc->head_dim * (mc->n_heads * 2 + mc->n_kv_heads * 2) + 3.0 * mc->dim * mc->hidden);
    double base = qlora ? (double)qtc_peft_base_bytes(p) : f32_base, loaded = rss_mb() - rss0;
    qtc_peft_attach(p, m);
    m->grad_checkpoint = ckpt;
    qtc_tensor *params[512];
    int np = qtc_peft_params(p, params, 512);
    qtc_adamw *opt = qtc_adamw_new(params, np, qtc_adamw_defaults(), &err);
    qtc_tokens data = {malloc(20000 * sizeof(int32_t)), 20000, NULL};
    qtc_rng r;
    qtc_rng_seed(&r, 1);
    for (int i = 0; i < 20000; i++)
        data.ids[i] = (int32_t)qtc_rng_below(&r, (uint64_t)mc->vocab);
    qtc_train_opts o = qtc_train_defaults(steps);
    o.batch = B;
    o.ctx = T;
    bench_steps st = {0};
    if (qtc_train(&o, opt, params, np, &data, 0, bench_ce, m, bench_on_step, &st, &err) != QTC_OK) {
        fprintf(stderr, "bench_lora: %s\n", err.msg);
        return 4;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double tps = (double)B * T * (double)(st.steps - 1) / (st.last - st.first);
    printf("%-36s %7.0f tokens/s  linear base %7.2f MB (%.3f of f32)  model loaded %7.1f MB  peak RSS %7.1f MB\n", what, tps,
           base / (1024.0 * 1024.0), base / f32_base, loaded, (double)ru.ru_maxrss / 1024.0);
    qtc_adamw_free(opt);
    free(data.ids);
    qtc_llama_free(m);
    qtc_peft_free(p);
    return 0;
}

/* merge of a random rank-8 LoRA on every linear layer into the model at path,
 * written as f32 safetensors: time and peak RSS against the largest tensor
 * and the whole file. */
static int run_merge(const char *path)
{
    qtc_error err;
    double rss0 = rss_mb();
    char out[] = "/tmp/qtc-bench-merged-XXXXXX";
    int fd = mkstemp(out);
    if (fd < 0)
        return 3;
    close(fd);
    qtc_model_file *f = qtc_model_open(path, &err);
    qtc_peft_config c = {.method = QTC_PEFT_LORA, .r = 8, .alpha = 16, .target = "all-linear"};
    qtc_peft *p = f ? qtc_peft_new(&f->config, &c, 1, &err) : NULL;
    if (!p) {
        fprintf(stderr, "bench_lora: %s\n", err.msg);
        return 2;
    }
    qtc_tensor *ps[512];
    int np = qtc_peft_params(p, ps, 512);
    qtc_rng r;
    qtc_rng_seed(&r, 2);
    for (int i = 0; i < np; i++)
        qtc_rng_fill_normal(&r, ps[i], 0.0f, 0.01f);
    double largest = 0, total = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        total += (double)f->tensors[i].nbytes;
        if ((double)f->tensors[i].nbytes > largest)
            largest = (double)f->tensors[i].nbytes;
    }
    qtc_merge_opts mo = {QTC_MERGE_SUM, 1, 0};
    float one = 1;
    qtc_convert_summary s;
    double t0 = bench_now();
    qtc_status st = qtc_merge_model(f, &p, &one, 1, &mo, out, QTC_FMT_SAFETENSORS, 0, NULL, &s, &err);
    double dt = bench_now() - t0;
    unlink(out);
    if (st != QTC_OK) {
        fprintf(stderr, "bench_lora: %s\n", err.msg);
        return 2;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double mb = 1024.0 * 1024.0, peak = (double)ru.ru_maxrss * 1024.0;
    double grew = peak - rss0 * mb; /* the child starts with the parent's resident pages */
    printf("%-36s %7.2f s  %7.1f MB/s  peak RSS %.1f MB, %.1f MB above the start = %.2fx the largest tensor (%.1f MB), "
           "%.2fx the model (%.1f MB)\n", "merge 15M llama + LoRA (f32 out)", dt, total / mb / dt, peak / mb, grew / mb,
           grew / largest, largest / mb, grew / total, total / mb);
    qtc_peft_free(p);
    qtc_model_close(f);
    return 0;
}

/* Runs one configuration in a child process (its own peak RSS); steps 0 runs the merge.
 * ckpt: activation checkpointing (qtc_llama.grad_checkpoint). */
static int in_child(const char *what, const char *path, int qlora, int ckpt, int steps)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int rc = steps ? run(what, path, qlora, ckpt, steps) : run_merge(path);
        fflush(stdout);
        _exit(rc);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

/* Writes the generated 15M llama to a safetensors file (with its configuration). */
static int save_15M(const char *path)
{
    qtc_error err;
    qtc_llama *m = bench_new_15M();
    qtc_model_file like;
    memset(&like, 0, sizeof like);
    like.has_config = 1;
    like.config = m->c;
    qtc_tensor *ps[256];
    int n = qtc_llama_params(m, ps, 256);
    qtc_out_entry e[256];
    memset(e, 0, sizeof e);
    for (int i = 0; i < n; i++) {
        qtc_llama_param_name(m, i, e[i].name, sizeof e[i].name);
        e[i].dtype = QTC_F32;
        e[i].ndim = ps[i]->ndim;
        memcpy(e[i].ne, ps[i]->ne, sizeof e[i].ne);
    }
    qtc_model_writer *w = qtc_writer_open(path, QTC_FMT_SAFETENSORS, 0, &like, e, n, NULL, &err);
    int ok = w != NULL;
    for (int i = 0; ok && i < n; i++)
        ok = qtc_writer_put(w, i, ps[i], &err) == QTC_OK;
    ok = ok && qtc_writer_commit(w, &err) == QTC_OK;
    if (!ok)
        fprintf(stderr, "bench_lora: %s\n", err.msg);
    qtc_llama_free(m);
    return ok ? 0 : 3;
}

int main(int argc, char **argv)
{
    (void)argc;
    cli_process_setup(argv); /* the tools' OpenMP wait policy */
    qtc_set_threads(0);
    double ceiling = bench_sgemm_ceiling();
    printf("threads %d; sgemm ceiling (1024^3) %.1f GFLOP/s; LoRA rank 8 on every linear layer, batch 16, ctx 256\n",
           qtc_get_threads(), ceiling);
    const char *dir = getenv("QTC_SHARED") ? getenv("QTC_SHARED") : "../shared";
    char s260[4096], m15[] = "/tmp/qtc-bench-15M-XXXXXX";
    snprintf(s260, sizeof s260, "%s/models/stories260K/stories260K.bin", dir);
    int fd = mkstemp(m15), rc = fd < 0 ? 3 : 0;
    if (fd >= 0)
        close(fd);
    rc = rc || in_child("stories260K LoRA, f32 base", s260, 0, 0, 12) ||
         in_child("stories260K QLoRA, NF4 base", s260, 1, 0, 12) || save_15M(m15) ||
         in_child("generated 15M llama LoRA, f32 base", m15, 0, 0, 3) ||
         in_child("generated 15M llama QLoRA, NF4 base", m15, 1, 0, 3) ||
         in_child("  the same, --grad-checkpoint", m15, 1, 1, 3) || in_child("merge", m15, 0, 0, 0);
    unlink(m15);
    return rc;
}
