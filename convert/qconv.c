/* qconv: convert a model between formats, quantize, dequantize, inspect.
 *
 *   qconv IN [-o OUT|-] [--to TYPE] [--format safetensors|gguf|hf]
 *         [--tensor-type REGEX=TYPE ...] [--threads N] [--zstd]
 *         [--inspect] [--json] [--log-json FILE]
 *
 * A thin layer over libqtc: tensors are read, converted and written one at a
 * time, each written straight to its place in the output. */
#include <getopt.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>

#include "qtc/convert.h"
#include "qtc/quant.h"
#include "qtc/runtime.h"

#define MAX_RULES 64

static const char *usage_text =
    "usage: qconv IN [-o OUT|-] [--to TYPE] [--format safetensors|gguf|hf]\n"
    "             [--tensor-type REGEX=TYPE ...] [--threads N] [--zstd]\n"
    "             [--tokenizer FILE] [--inspect] [--json] [--log-json FILE]\n"
    "\n"
    "IN is a safetensors file, a GGUF file, a llama2.c checkpoint, an HF folder, or - for\n"
    "standard input; any of them may be a zstd frame. The format is read from the bytes.\n"
    "\n"
    "  -o, --output OUT     where to write (- for standard output: safetensors unless --format)\n"
    "  --to TYPE            storage type for weight matrices: f32 f16 bf16 q8_0 q4_0 q4_1 q5_0\n"
    "                       q5_1 q4_k q5_k q6_k. 1-D tensors (norms) stay f32. A block type that\n"
    "                       does not divide a tensor's rows falls back to the nearest that does\n"
    "                       (reported). Without --to, tensors keep their types.\n"
    "  --format FMT         safetensors, gguf or hf (a folder); default from OUT's extension\n"
    "  --tensor-type RE=T   type T for tensors whose HF name matches the extended regex RE\n"
    "                       (first match wins; applies to 1-D tensors too)\n"
    "  --threads N          threads (default: all cores); the output does not depend on it\n"
    "  --zstd               compress the output (also implied by a .zst extension)\n"
    "  --tokenizer FILE     a llama2.c tokenizer.bin to carry along (default: the one beside a\n"
    "                       llama2.c checkpoint; needed when the checkpoint comes through a pipe)\n"
    "  --inspect            print the model's tensors, types, shapes, bits per weight, metadata\n"
    "  --json               --inspect, or the conversion summary, as one JSON document on stdout\n"
    "  --log-json FILE      one JSON object per event (each tensor, the summary) to FILE\n"
    "  -h, --help           this help\n"
    "\n"
    "Exit status: 0 done, 1 usage, 2 bad input, 3 I/O, 4 numerical failure (NaN, Inf).\n";

typedef struct rule {
    regex_t re;
    qtc_dtype type;
} rule;

static void die_usage(const char *msg)
{
    fprintf(stderr, "qconv: %s\n%s", msg, usage_text);
    exit(1);
}

static int fail(const qtc_error *err)
{
    fprintf(stderr, "qconv: error: %s\n", err->msg);
    return qtc_exit_code(err->code);
}

/* Types qconv accepts for --to. */
static int parse_type(const char *s)
{
    int t = qtc_dtype_from_name(s);
    if (t < 0 || !(qtc_dtype_info((qtc_dtype)t)->is_quantized || t == QTC_F32 || t == QTC_F16 || t == QTC_BF16))
        return -1;
    return t;
}

static double shape_numel(const int64_t *ne, int ndim)
{
    double n = 1;
    for (int d = 0; d < ndim; d++)
        n *= (double)ne[d];
    return n;
}

static void shape_str(char *buf, size_t cap, const int64_t *ne, int ndim)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, cap - o, "[");
    for (int d = 0; d < ndim && o < cap; d++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", d ? ", " : "", (long long)ne[d]);
    if (o < cap)
        snprintf(buf + o, cap - o, "]");
}

/* --- inspect ------------------------------------------------------------------------ */

static cJSON *kv_json(const qtc_kv *kv)
{
    uint32_t t = kv->type == QTC_KV_ARRAY ? kv->elem_type : kv->type;
    if (kv->type == QTC_KV_ARRAY) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "array_of", t == QTC_KV_STRING ? "string" : "number");
        cJSON_AddNumberToObject(o, "count", (double)kv->count);
        return o;
    }
    if (t == QTC_KV_STRING)
        return cJSON_CreateString(((qtc_str *)kv->vals)[0].ptr);
    if (t == QTC_KV_BOOL)
        return cJSON_CreateBool(qtc_kv_num_at(kv, 0) != 0);
    return cJSON_CreateNumber(qtc_kv_num_at(kv, 0));
}

static int inspect(const qtc_model_file *m, int as_json)
{
    double total_w = 0, total_bits = 0;
    cJSON *root = cJSON_CreateObject(), *tensors = NULL, *meta = NULL;
    cJSON_AddStringToObject(root, "path", m->path);
    cJSON_AddStringToObject(root, "format", qtc_format_name(m->format));
    if (m->has_config) {
        const qtc_llama_config *c = &m->config;
        cJSON *cfg = cJSON_AddObjectToObject(root, "config");
        cJSON_AddNumberToObject(cfg, "dim", c->dim);
        cJSON_AddNumberToObject(cfg, "hidden", c->hidden);
        cJSON_AddNumberToObject(cfg, "n_layers", c->n_layers);
        cJSON_AddNumberToObject(cfg, "n_heads", c->n_heads);
        cJSON_AddNumberToObject(cfg, "n_kv_heads", c->n_kv_heads);
        cJSON_AddNumberToObject(cfg, "head_dim", c->head_dim);
        cJSON_AddNumberToObject(cfg, "vocab", c->vocab);
        cJSON_AddNumberToObject(cfg, "ctx", c->ctx);
        cJSON_AddNumberToObject(cfg, "rope_theta", c->rope_theta);
        cJSON_AddNumberToObject(cfg, "norm_eps", c->norm_eps);
        cJSON_AddBoolToObject(cfg, "tied_embeddings", c->tied);
    }
    meta = cJSON_AddObjectToObject(root, "metadata");
    for (int i = 0; i < m->meta.n; i++)
        cJSON_AddItemToObject(meta, m->meta.kv[i].key, kv_json(&m->meta.kv[i]));
    tensors = cJSON_AddArrayToObject(root, "tensors");
    if (!as_json) {
        printf("%s: %s, %d tensors\n", m->path, qtc_format_name(m->format), m->n_tensors);
        if (m->has_config)
            printf("llama: dim %d, hidden %d, layers %d, heads %d (kv %d), head_dim %d, vocab %d, ctx %d, "
                   "rope theta %g, eps %g, %s embeddings\n",
                   m->config.dim, m->config.hidden, m->config.n_layers, m->config.n_heads, m->config.n_kv_heads,
                   m->config.head_dim, m->config.vocab, m->config.ctx, m->config.rope_theta, m->config.norm_eps,
                   m->config.tied ? "tied" : "separate");
        for (int i = 0; i < m->meta.n; i++) {
            const qtc_kv *kv = &m->meta.kv[i];
            char *v = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(meta, kv->key));
            int long_str = kv->type == QTC_KV_STRING && ((qtc_str *)kv->vals)[0].len > 80;
            if (long_str)
                printf("  %-44s string of %llu bytes\n", kv->key, (unsigned long long)((qtc_str *)kv->vals)[0].len);
            else
                printf("  %-44s %s\n", kv->key, v ? v : "?");
            cJSON_free(v);
        }
        printf("%-52s %-6s %-20s %7s %12s\n", "tensor", "type", "shape", "bpw", "bytes");
    }
    for (int i = 0; i < m->n_tensors; i++) {
        const qtc_tensor_entry *e = &m->tensors[i];
        double n = shape_numel(e->ne, e->ndim), bpw = qtc_dtype_bpw(e->dtype);
        total_w += n;
        total_bits += n * bpw;
        char shp[96];
        shape_str(shp, sizeof shp, e->ne, e->ndim);
        if (!as_json)
            printf("%-52s %-6s %-20s %7.3f %12zu\n", e->name, qtc_dtype_info(e->dtype)->name, shp, bpw, e->nbytes);
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "name", e->name);
        cJSON_AddStringToObject(t, "type", qtc_dtype_info(e->dtype)->name);
        cJSON *s = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; d < e->ndim; d++)
            cJSON_AddItemToArray(s, cJSON_CreateNumber((double)e->ne[d]));
        cJSON_AddNumberToObject(t, "bpw", bpw);
        cJSON_AddNumberToObject(t, "bytes", (double)e->nbytes);
        cJSON_AddItemToArray(tensors, t);
    }
    double bpw = total_w ? total_bits / total_w : 0;
    cJSON_AddNumberToObject(root, "weights", total_w);
    cJSON_AddNumberToObject(root, "bits_per_weight", bpw);
    if (as_json) {
        char *s = cJSON_Print(root);
        printf("%s\n", s);
        cJSON_free(s);
    } else {
        printf("%.0f weights, %.3f bits per weight, %.0f bytes of tensor data\n", total_w, bpw, total_bits / 8);
    }
    cJSON_Delete(root);
    return fflush(stdout) == 0 ? 0 : 3;
}

/* --- convert ------------------------------------------------------------------------- */

typedef struct plan {
    qtc_dtype want;    /* what was asked for this tensor */
    const char *why;   /* why the stored type differs, or NULL */
} plan;

static qtc_dtype choose_type(const qtc_tensor_entry *e, int have_to, qtc_dtype to, const rule *rules, int n_rules,
                             qtc_format fmt, plan *p)
{
    qtc_dtype want = e->dtype;
    int explicit_rule = 0;
    for (int r = 0; r < n_rules; r++)
        if (regexec(&rules[r].re, e->name, 0, NULL, 0) == 0) {
            want = rules[r].type;
            explicit_rule = 1;
            break;
        }
    if (!explicit_rule && have_to)
        want = e->ndim >= 2 ? to : (qtc_dtype_info(e->dtype)->is_float ? QTC_F32 : e->dtype);
    if (!explicit_rule && !have_to && qtc_dtype_info(e->dtype)->is_quantized && fmt != QTC_FMT_GGUF)
        want = QTC_F32; /* safetensors cannot hold ggml blocks: dequantize */
    p->want = want;
    p->why = NULL;
    int64_t row = e->ndim ? e->ne[e->ndim - 1] : 1;
    qtc_dtype t = qtc_dtype_fallback(want, row);
    if (t != want)
        p->why = "rows do not split into its blocks";
    return t;
}

static int convert(qtc_model_file *m, const char *out_path, qtc_format fmt, int compress, int have_to, qtc_dtype to,
                   const rule *rules, int n_rules, int as_json, FILE *log)
{
    qtc_error err;
    int n = m->n_tensors;
    qtc_out_entry *entries = calloc((size_t)(n ? n : 1), sizeof *entries);
    plan *plans = calloc((size_t)(n ? n : 1), sizeof *plans);
    if (!entries || !plans) {
        fprintf(stderr, "qconv: error: out of memory\n");
        return 3;
    }
    for (int i = 0; i < n; i++) {
        const qtc_tensor_entry *e = &m->tensors[i];
        snprintf(entries[i].name, sizeof entries[i].name, "%s", e->name);
        entries[i].dtype = choose_type(e, have_to, to, rules, n_rules, fmt, &plans[i]);
        entries[i].ndim = e->ndim;
        memcpy(entries[i].ne, e->ne, sizeof e->ne);
        if (fmt != QTC_FMT_GGUF && qtc_dtype_info(entries[i].dtype)->is_quantized) {
            fprintf(stderr, "qconv: error: tensor '%s': %s blocks can only be stored in GGUF (use --format gguf or a .gguf name)\n",
                    e->name, qtc_dtype_info(entries[i].dtype)->name);
            free(entries);
            free(plans);
            return 1;
        }
    }
    if (fmt == QTC_FMT_GGUF && !qtc_kvs_get(&m->meta, "tokenizer.ggml.tokens") && !m->tokenizer_bin && !m->tokenizer_json)
        fprintf(stderr, "qconv: warning: %s has no tokenizer qtc can carry into GGUF; llama.cpp will not load the output\n", m->path);
    qtc_kvs extra = {0};
    qtc_kvs_set_str(&extra, "qtc.source_format", qtc_format_name(m->format));
    qtc_model_writer *w = qtc_writer_open(out_path, fmt, compress, m, entries, n, fmt == QTC_FMT_GGUF ? NULL : &extra, &err);
    qtc_kvs_free(&extra);
    if (!w) {
        free(entries);
        free(plans);
        return fail(&err);
    }
    double sum_se = 0, sum_x2 = 0, max_abs = 0, bytes_in = 0, bytes_out = 0, weights = 0, bits = 0;
    cJSON *summary = cJSON_CreateObject(), *rows = cJSON_AddArrayToObject(summary, "tensors");
    if (!as_json)
        fprintf(stderr, "%-52s %-5s -> %-5s %7s %11s %11s\n", "tensor", "in", "out", "bpw", "rel rms err", "max abs err");
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        const qtc_tensor_entry *e = &m->tensors[i];
        qtc_dtype out_t = entries[i].dtype;
        qtc_tensor *src = qtc_model_tensor(m, i, &err), *q = NULL, *f = NULL, *back = NULL;
        if (!src) {
            rc = fail(&err);
            break;
        }
        double se = 0, x2 = 0, mx = 0;
        const qtc_tensor *put = src;
        int is_weight = qtc_dtype_info(e->dtype)->is_float || qtc_dtype_info(e->dtype)->is_quantized;
        if (is_weight) { /* NaN or Inf weights are refused whatever the target type */
            f = qtc_tensor_to_f32(src, &err);
            int64_t bad = f ? qtc_tensor_find_nonfinite(f) : -1;
            if (!f || bad >= 0) {
                if (f)
                    qtc_error_set(&err, QTC_ERR_NUMERIC, "%s: tensor '%s': element %lld is %s", m->path, e->name,
                                  (long long)bad, isnan(((float *)f->data)[bad]) ? "NaN" : "infinite");
                qtc_tensor_free(src);
                qtc_tensor_free(f);
                rc = fail(&err);
                break;
            }
        }
        if (out_t != e->dtype) {
            if (!f)
                f = qtc_tensor_to_f32(src, &err);
            q = f ? (qtc_dtype_info(out_t)->is_float && !qtc_dtype_info(out_t)->is_quantized && out_t != QTC_F16 && out_t != QTC_BF16
                         ? qtc_tensor_convert(f, out_t, &err)
                         : qtc_tensor_quantize(f, out_t, &err))
                  : NULL;
            back = q ? qtc_tensor_to_f32(q, &err) : NULL;
            if (!back) {
                qtc_tensor_free(src);
                qtc_tensor_free(f);
                qtc_tensor_free(q);
                rc = fail(&err);
                break;
            }
            const float *a = f->data, *b = back->data;
            int64_t cnt = qtc_tensor_numel(f);
            for (int64_t k = 0; k < cnt; k++) {
                double d = (double)b[k] - (double)a[k];
                se += d * d;
                x2 += (double)a[k] * a[k];
                if (fabs(d) > mx)
                    mx = fabs(d);
            }
            put = q;
        } else if (f) { /* stored as is: no error, but its weights count in the totals */
            const float *a = f->data;
            for (int64_t k = 0; k < qtc_tensor_numel(f); k++)
                x2 += (double)a[k] * a[k];
        }
        if (qtc_writer_put(w, i, put, &err) != QTC_OK)
            rc = fail(&err);
        double cnt = shape_numel(e->ne, e->ndim), rel = x2 > 0 ? sqrt(se / x2) : sqrt(se);
        weights += cnt;
        bits += cnt * qtc_dtype_bpw(out_t);
        bytes_in += (double)e->nbytes;
        bytes_out += (double)qtc_tensor_nbytes(put);
        sum_se += se;
        sum_x2 += x2;
        if (mx > max_abs)
            max_abs = mx;
        if (!as_json)
            fprintf(stderr, "%-52s %-5s -> %-5s %7.3f %11.3e %11.3e%s%s%s\n", e->name, qtc_dtype_info(e->dtype)->name,
                    qtc_dtype_info(out_t)->name, qtc_dtype_bpw(out_t), rel, mx, plans[i].why ? "  (" : "",
                    plans[i].why ? qtc_dtype_info(plans[i].want)->name : "", plans[i].why ? " asked; rows do not split into its blocks)" : "");
        cJSON *row = cJSON_CreateObject();
        cJSON_AddStringToObject(row, "name", e->name);
        cJSON_AddStringToObject(row, "in", qtc_dtype_info(e->dtype)->name);
        cJSON_AddStringToObject(row, "out", qtc_dtype_info(out_t)->name);
        if (plans[i].why) {
            cJSON_AddStringToObject(row, "asked", qtc_dtype_info(plans[i].want)->name);
            cJSON_AddStringToObject(row, "fallback_reason", plans[i].why);
        }
        cJSON_AddNumberToObject(row, "bpw", qtc_dtype_bpw(out_t));
        cJSON_AddNumberToObject(row, "rel_rms_err", rel);
        cJSON_AddNumberToObject(row, "max_abs_err", mx);
        cJSON_AddNumberToObject(row, "bytes_in", (double)e->nbytes);
        cJSON_AddNumberToObject(row, "bytes_out", (double)qtc_tensor_nbytes(put));
        if (log) {
            char *s = cJSON_PrintUnformatted(row);
            fprintf(log, "{\"event\":\"tensor\",\"data\":%s}\n", s);
            cJSON_free(s);
        }
        cJSON_AddItemToArray(rows, row);
        qtc_tensor_free(src);
        qtc_tensor_free(f);
        qtc_tensor_free(q);
        qtc_tensor_free(back);
    }
    if (!rc && qtc_writer_commit(w, &err) != QTC_OK)
        rc = fail(&err);
    else if (rc)
        qtc_writer_abort(w);
    if (!rc) {
        double rel = sum_x2 > 0 ? sqrt(sum_se / sum_x2) : 0;
        cJSON_AddStringToObject(summary, "output", out_path);
        cJSON_AddStringToObject(summary, "format", qtc_format_name(fmt));
        cJSON_AddNumberToObject(summary, "weights", weights);
        cJSON_AddNumberToObject(summary, "bits_per_weight", weights ? bits / weights : 0);
        cJSON_AddNumberToObject(summary, "rel_rms_err", rel);
        cJSON_AddNumberToObject(summary, "max_abs_err", max_abs);
        cJSON_AddNumberToObject(summary, "bytes_in", bytes_in);
        cJSON_AddNumberToObject(summary, "bytes_out", bytes_out);
        if (as_json) {
            char *s = cJSON_Print(summary);
            printf("%s\n", s);
            cJSON_free(s);
        } else {
            fprintf(stderr, "total: %.0f weights, %.3f bits per weight, rel rms err %.3e, max abs err %.3e, %.0f -> %.0f bytes\n",
                    weights, weights ? bits / weights : 0, rel, max_abs, bytes_in, bytes_out);
        }
        if (log) {
            cJSON_DeleteItemFromObject(summary, "tensors");
            char *s = cJSON_PrintUnformatted(summary);
            fprintf(log, "{\"event\":\"summary\",\"data\":%s}\n", s);
            cJSON_free(s);
        }
    }
    cJSON_Delete(summary);
    free(entries);
    free(plans);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"output", required_argument, 0, 'o'}, {"to", required_argument, 0, 't'},
        {"format", required_argument, 0, 'f'}, {"tensor-type", required_argument, 0, 'T'},
        {"threads", required_argument, 0, 'j'}, {"zstd", no_argument, 0, 'z'},
        {"inspect", no_argument, 0, 'i'},       {"json", no_argument, 0, 'J'},
        {"log-json", required_argument, 0, 'L'}, {"help", no_argument, 0, 'h'},
        {"tokenizer", required_argument, 0, 'k'},
        {0, 0, 0, 0}};
    const char *out = NULL, *log_path = NULL, *tokenizer = NULL;
    int have_to = 0, as_json = 0, do_inspect = 0, compress = 0, n_rules = 0, threads = 0;
    qtc_dtype to = QTC_F32;
    qtc_format fmt = QTC_FMT_UNKNOWN;
    rule rules[MAX_RULES];
    int c;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 't': {
            int t = parse_type(optarg);
            if (t < 0)
                die_usage("unknown --to type");
            to = (qtc_dtype)t;
            have_to = 1;
            break;
        }
        case 'f':
            fmt = qtc_format_from_name(optarg);
            if (fmt == QTC_FMT_UNKNOWN)
                die_usage("--format is safetensors, gguf or hf");
            break;
        case 'T': {
            char *eq = strrchr(optarg, '=');
            if (!eq || n_rules == MAX_RULES)
                die_usage("--tensor-type takes REGEX=TYPE");
            *eq = '\0';
            int t = parse_type(eq + 1);
            if (t < 0)
                die_usage("unknown type in --tensor-type");
            if (regcomp(&rules[n_rules].re, optarg, REG_EXTENDED | REG_NOSUB) != 0)
                die_usage("bad regular expression in --tensor-type");
            rules[n_rules++].type = (qtc_dtype)t;
            break;
        }
        case 'j': threads = atoi(optarg); if (threads <= 0) die_usage("--threads takes a positive number"); break;
        case 'z': compress = 1; break;
        case 'i': do_inspect = 1; break;
        case 'J': as_json = 1; break;
        case 'L': log_path = optarg; break;
        case 'k': tokenizer = optarg; break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: die_usage("bad option");
        }
    }
    if (optind != argc - 1)
        die_usage(optind < argc ? "one input only" : "no input");
    const char *in = argv[optind];
    qtc_set_threads(threads);
    if (!do_inspect && !out)
        die_usage("no output: give -o OUT (or - for standard output), or --inspect");
    if (out) {
        compress |= qtc_path_wants_zstd(out);
        if (fmt == QTC_FMT_UNKNOWN)
            fmt = strcmp(out, "-") == 0 ? QTC_FMT_SAFETENSORS : qtc_format_from_path(out);
        if (fmt == QTC_FMT_UNKNOWN)
            die_usage("cannot tell the output format from its name: use --format");
        if (as_json && strcmp(out, "-") == 0)
            die_usage("--json prints to standard output, which -o - already uses (try --log-json FILE)");
    }
    FILE *log = NULL;
    if (log_path && !(log = fopen(log_path, "w"))) {
        fprintf(stderr, "qconv: error: %s: cannot open for writing\n", log_path);
        return 3;
    }
    qtc_error err;
    qtc_model_file *m = qtc_model_open(in, &err);
    int rc;
    if (m && tokenizer) {
        free(m->tokenizer_bin);
        m->tokenizer_bin = strdup(tokenizer);
    }
    if (!m)
        rc = fail(&err);
    else if (do_inspect)
        rc = inspect(m, as_json);
    else
        rc = convert(m, out, fmt, compress, have_to, to, rules, n_rules, as_json, log);
    qtc_model_close(m);
    for (int r = 0; r < n_rules; r++)
        regfree(&rules[r].re);
    if (log && fclose(log) != 0 && !rc)
        rc = 3;
    if (fclose(stdout) != 0 && !rc) {
        fprintf(stderr, "qconv: error: standard output: write failed\n");
        rc = 3;
    }
    return rc;
}
