/* bench_qconv.c: qconv's throughput and memory on a generated ~1 GB f32 llama
 * (random weights: dim 2048, hidden 5632, 4 layers, vocab 32000), beside a
 * plain read+write copy of the same file in the same run. Prints MB/s of
 * input, the ratio to the copy, and qconv's peak RSS against the largest
 * tensor. Env: QTC_BIN (default bin), TMPDIR. */
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "qtc/convert.h"
#include "qtc/rng.h"

extern char **environ;

static int generate(const char *path, double *largest_mb)
{
    qtc_model_file src;
    memset(&src, 0, sizeof src);
    qtc_llama_config *c = &src.config;
    *c = (qtc_llama_config){.dim = 2048, .hidden = 5632, .n_layers = 4, .n_heads = 16, .n_kv_heads = 16,
                            .vocab = 32000, .ctx = 2048, .head_dim = 128, .n_rot = 128, .norm_eps = 1e-5f,
                            .rope_theta = 10000.0f, .tied = 0, .bos_id = 1, .eos_id = 2};
    src.has_config = 1;
    const char *parts[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm"};
    qtc_out_entry e[64];
    int n = 0;
    snprintf(e[n].name, QTC_NAME_MAX, "model.embed_tokens.weight");
    e[n++] = (qtc_out_entry){"", QTC_F32, 2, {c->vocab, c->dim, 1, 1}};
    snprintf(e[0].name, QTC_NAME_MAX, "model.embed_tokens.weight");
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < 9; p++) {
            int64_t rows = p < 4 ? c->dim : p < 6 ? c->hidden : c->dim, cols = p == 6 ? c->hidden : c->dim;
            e[n].dtype = QTC_F32;
            e[n].ndim = p < 7 ? 2 : 1;
            e[n].ne[0] = rows;
            e[n].ne[1] = p < 7 ? cols : 1;
            e[n].ne[2] = e[n].ne[3] = 1;
            qtc_layer_weight_name(l, parts[p], e[n].name, QTC_NAME_MAX);
            n++;
        }
    e[n] = (qtc_out_entry){"model.norm.weight", QTC_F32, 1, {c->dim, 1, 1, 1}};
    n++;
    qtc_error err;
    qtc_model_writer *w = qtc_writer_open(path, QTC_FMT_SAFETENSORS, 0, &src, e, n, NULL, &err);
    if (!w) {
        fprintf(stderr, "bench_qconv: %s\n", err.msg);
        return 1;
    }
    qtc_rng r;
    qtc_rng_seed(&r, 1);
    *largest_mb = 0;
    for (int i = 0; i < n; i++) {
        qtc_tensor *t = qtc_tensor_new(QTC_F32, e[i].ndim, e[i].ne, &err);
        if (!t)
            return 1;
        qtc_rng_fill_uniform(&r, t, -0.05f, 0.05f);
        double mb = (double)qtc_tensor_nbytes(t) / 1e6;
        if (mb > *largest_mb)
            *largest_mb = mb;
        if (qtc_writer_put(w, i, t, &err) != QTC_OK)
            return 1;
        qtc_tensor_free(t);
    }
    return qtc_writer_commit(w, &err) == QTC_OK ? 0 : 1;
}

static double copy_file(const char *from, const char *to)
{
    double t0 = bench_now();
    int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    size_t cap = 4 << 20;
    char *buf = malloc(cap);
    ssize_t r;
    while ((r = read(in, buf, cap)) > 0)
        if (write(out, buf, (size_t)r) != r)
            break;
    fsync(out); /* qconv syncs its output too */
    close(in);
    close(out);
    free(buf);
    return bench_now() - t0;
}

/* Runs argv, returns wall seconds and peak RSS in MB. */
static double run(char *const argv[], double *rss_mb)
{
    pid_t pid;
    double t0 = bench_now();
    int devnull = open("/dev/null", O_WRONLY);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, devnull, 2);
    if (posix_spawn(&pid, argv[0], &fa, NULL, argv, environ) != 0)
        return -1;
    int status;
    struct rusage ru;
    wait4(pid, &status, 0, &ru);
    double dt = bench_now() - t0;
    close(devnull);
    posix_spawn_file_actions_destroy(&fa);
    *rss_mb = (double)ru.ru_maxrss / 1024.0;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? dt : -1;
}

int main(void)
{
    const char *bin = getenv("QTC_BIN") ? getenv("QTC_BIN") : "bin";
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char dir[512], model[600], copy[600], out[600], qconv[600];
    snprintf(dir, sizeof dir, "%s/qtc-bench-XXXXXX", tmp);
    if (!mkdtemp(dir))
        return 3;
    snprintf(model, sizeof model, "%s/model.safetensors", dir);
    snprintf(copy, sizeof copy, "%s/copy.safetensors", dir);
    snprintf(qconv, sizeof qconv, "%s/qconv", bin);
    double largest;
    if (generate(model, &largest) != 0)
        return 1;
    struct stat st;
    stat(model, &st);
    double mb = (double)st.st_size / 1e6;
    double t_copy = 1e30;
    for (int k = 0; k < 2; k++) { /* best of two, page cache warm like the runs below */
        double t = copy_file(model, copy);
        if (t < t_copy)
            t_copy = t;
    }
    unlink(copy);
    printf("model: %.0f MB of f32 (largest tensor %.0f MB); plain read+write copy: %.0f MB/s\n", mb, largest, mb / t_copy);
    printf("%-10s %10s %8s %10s %16s\n", "to", "MB/s", "vs copy", "peak RSS", "RSS/largest");
    const char *types[] = {"q8_0", "q4_0", "q4_k", "f16", "int4-g32"};
    for (size_t k = 0; k < sizeof types / sizeof *types; k++) {
        snprintf(out, sizeof out, "%s/out.%s", dir, k < 4 ? "gguf" : "safetensors");
        char *argv[] = {qconv, model, "--to", (char *)types[k], "-o", out, NULL};
        double rss, t = run(argv, &rss);
        if (t < 0) {
            fprintf(stderr, "bench_qconv: qconv --to %s failed\n", types[k]);
            return 1;
        }
        printf("%-10s %10.0f %8.2f %8.0f MB %16.2f\n", types[k], mb / t, t_copy / t, rss, rss / largest);
        unlink(out);
    }
    unlink(model);
    rmdir(dir);
    return 0;
}
