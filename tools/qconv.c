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

#include "qtc/calibrate.h"
#include "qtc/convert.h"
#include "qtc/quant.h"
#include "qtc/runtime.h"

#include "cli.h"

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
    "  --to TYPE            storage type for weight matrices: f32 f16 bf16, ggml's q8_0 q4_0 q4_1\n"
    "                       q5_0 q5_1 q4_k q5_k q6_k (GGUF), or a scheme for the linear layers'\n"
    "                       weights (safetensors, HF): int8 (per channel), int8-tensor, intB-gG\n"
    "                       (B bits 2..8, groups of G along the input), each with -asym; nf4\n"
    "                       (bitsandbytes, double quantization) or nf4-single. 1-D tensors\n"
    "                       (norms) stay f32. A block type that does not divide a tensor's rows\n"
    "                       falls back to the nearest that does (reported). Without --to,\n"
    "                       tensors keep their types (quantized layouts too, where the format allows).\n"
    "  --format FMT         safetensors, gguf or hf (a folder); default from OUT's extension\n"
    "  --tensor-type RE=T   type T for tensors whose HF name matches the extended regex RE\n"
    "                       (first match wins; applies to 1-D tensors too)\n"
    "  --threads N          threads (default: all cores); the output does not depend on it\n"
    "  --zstd               compress the output (also implied by a .zst extension)\n"
    "  --imatrix FILE       an importance matrix (llama.cpp's imatrix GGUF, as qcalib writes): ggml's\n"
    "                       Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K round as llama-quantize does with it,\n"
    "                       integer schemes choose each group's scale by importance-weighted error\n"
    "  --calib FILE.json    a qcalib calibration file: each linear layer's static input scale and zero\n"
    "                       point stored beside its integer weights (compressed-tensors' input_scale,\n"
    "                       input_zero_point; input_activations in quantization_config): W8A8 with --to int8\n"
    "  --tokenizer FILE     a llama2.c tokenizer.bin to carry along (default: the one beside a\n"
    "                       llama2.c checkpoint; needed when the checkpoint comes through a pipe)\n"
    "  --inspect            print the model's tensors, types, shapes, bits per weight, metadata\n"
    "  --json               --inspect, or the conversion summary, as one JSON document on stdout\n"
    "  --log-json FILE      one JSON object per event (each tensor, the summary) to FILE\n"
    "  -h, --help           this help\n"
    "\n"
    "Exit status: 0 done, 1 usage, 2 bad input, 3 I/O, 4 numerical failure (NaN, Inf).\n";

typedef struct report_ctx {
    int as_json;
    FILE *log;
    cJSON *rows;
    const qtc_imatrix *im;    /* NULL without --imatrix */
} report_ctx;

/* With --imatrix: the importance of a weight's input channels, when the file has them. */
static const float *weight_importance(void *ctx, const char *name, int64_t row_len)
{
    const report_ctx *rc = ctx;
    return qtc_imatrix_find(rc->im, name, row_len);
}

static void print_json(const cJSON *o)
{
    char *js = cJSON_Print(o);
    printf("%s\n", js ? js : "null");
    cJSON_free(js);
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
        double n = shape_numel(e->ne, e->ndim);
        double bpw = e->qparts.scheme_set ? qtc_qscheme_bpw(&e->scheme, e->ne[0], e->ne[1]) : qtc_dtype_bpw(e->dtype);
        char tname[32];
        if (e->qparts.scheme_set)
            qtc_qscheme_name(&e->scheme, tname, sizeof tname);
        else
            snprintf(tname, sizeof tname, "%s", qtc_dtype_info(e->dtype)->name);
        total_w += n;
        total_bits += n * bpw;
        char shp[96];
        shape_str(shp, sizeof shp, e->ne, e->ndim);
        if (!as_json)
            printf("%-52s %-6s %-20s %7.3f %12.0f\n", e->name, tname, shp, bpw, bpw * n / 8);
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "name", e->name);
        cJSON_AddStringToObject(t, "type", tname);
        cJSON *s = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; d < e->ndim; d++)
            cJSON_AddItemToArray(s, cJSON_CreateNumber((double)e->ne[d]));
        cJSON_AddNumberToObject(t, "bpw", bpw);
        cJSON_AddNumberToObject(t, "bytes", e->qparts.scheme_set ? ceil(bpw * n / 8) : (double)e->nbytes);
        cJSON_AddItemToArray(tensors, t);
    }
    double bpw = total_w ? total_bits / total_w : 0;
    cJSON_AddNumberToObject(root, "weights", total_w);
    cJSON_AddNumberToObject(root, "bits_per_weight", bpw);
    if (as_json) {
        print_json(root);
    } else {
        printf("%.0f weights, %.3f bits per weight, %.0f bytes of tensor data\n", total_w, bpw, total_bits / 8);
    }
    cJSON_Delete(root);
    return fflush(stdout) == 0 ? 0 : 3;
}

/* --- convert ------------------------------------------------------------------------- */

static cJSON *row_json(const qtc_convert_row *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", r->name);
    cJSON_AddStringToObject(o, "in", r->in);
    cJSON_AddStringToObject(o, "out", r->out);
    if (r->fell_back) {
        cJSON_AddStringToObject(o, "asked", r->asked);
        cJSON_AddStringToObject(o, "fallback_reason", "rows do not split into its blocks");
    }
    cJSON_AddNumberToObject(o, "bpw", r->bpw);
    cJSON_AddNumberToObject(o, "rel_rms_err", r->rel_rms_err);
    cJSON_AddNumberToObject(o, "max_abs_err", r->max_abs_err);
    cJSON_AddNumberToObject(o, "bytes_in", r->bytes_in);
    cJSON_AddNumberToObject(o, "bytes_out", r->bytes_out);
    if (r->weighted)
        cJSON_AddBoolToObject(o, "importance_weighted", 1);
    return o;
}

/* One tensor done: a table row on stderr (or into the JSON document), a log line. */
static void report(void *ctx, const qtc_convert_row *r)
{
    report_ctx *rc = ctx;
    if (!rc->as_json)
        fprintf(stderr, "%-52s %-6s -> %-13s %7.3f %11.3e %11.3e%s%s%s%s\n", r->name, r->in, r->out, r->bpw, r->rel_rms_err,
                r->max_abs_err, r->weighted ? "  (imatrix)" : "", r->fell_back ? "  (" : "", r->fell_back ? r->asked : "",
                r->fell_back ? " asked; rows do not split into its blocks)" : "");
    cJSON *o = row_json(r);
    if (rc->log) {
        char *js = cJSON_PrintUnformatted(o);
        fprintf(rc->log, "{\"event\":\"tensor\",\"data\":%s}\n", js);
        cJSON_free(js);
    }
    cJSON_AddItemToArray(rc->rows, o);
}

static int convert(qtc_model_file *m, const char *out_path, qtc_format fmt, int compress, const qtc_target *to,
                   const qtc_convert_rule *rules, int n_rules, int as_json, FILE *log, const qtc_imatrix *im,
                   const qtc_input_quant *inputs)
{
    qtc_error err;
    qtc_convert_summary s;
    cJSON *summary = cJSON_CreateObject();
    report_ctx rc = {as_json, log, cJSON_AddArrayToObject(summary, "tensors"), im};
    if (!as_json)
        fprintf(stderr, "%-52s %-6s -> %-13s %7s %11s %11s\n", "tensor", "in", "out", "bpw", "rel rms err", "max abs err");
    qtc_convert_hooks hooks = {.report = report, .importance = im ? weight_importance : NULL, .inputs = inputs, .ctx = &rc};
    qtc_status st = qtc_convert(m, out_path, fmt, compress, to, rules, n_rules, &hooks, &s, &err);
    if (s.no_tokenizer)
        fprintf(stderr, "qconv: warning: %s has no tokenizer qtc can carry into GGUF; llama.cpp will not load the output\n", m->path);
    if (st != QTC_OK) {
        cJSON_Delete(summary);
        return cli_fail(&err);
    }
    cJSON_AddStringToObject(summary, "output", out_path);
    cJSON_AddStringToObject(summary, "format", qtc_format_name(fmt));
    cJSON_AddNumberToObject(summary, "weights", s.weights);
    cJSON_AddNumberToObject(summary, "bits_per_weight", s.bits_per_weight);
    cJSON_AddNumberToObject(summary, "rel_rms_err", s.rel_rms_err);
    cJSON_AddNumberToObject(summary, "max_abs_err", s.max_abs_err);
    cJSON_AddNumberToObject(summary, "bytes_in", s.bytes_in);
    cJSON_AddNumberToObject(summary, "bytes_out", s.bytes_out);
    if (im)
        cJSON_AddNumberToObject(summary, "importance_weighted", s.weighted);
    if (as_json)
        print_json(summary);
    else
        fprintf(stderr, "total: %.0f weights, %.3f bits per weight, rel rms err %.3e, max abs err %.3e, %.0f -> %.0f bytes\n",
                s.weights, s.bits_per_weight, s.rel_rms_err, s.max_abs_err, s.bytes_in, s.bytes_out);
    if (im && !as_json)
        fprintf(stderr, "%d tensors rounded with the importance matrix\n", s.weighted);
    if (log) {
        cJSON_DeleteItemFromObject(summary, "tensors");
        char *js = cJSON_PrintUnformatted(summary);
        fprintf(log, "{\"event\":\"summary\",\"data\":%s}\n", js);
        cJSON_free(js);
    }
    cJSON_Delete(summary);
    return 0;
}

int main(int argc, char **argv)
{
    cli_init("qconv", usage_text, argv);
    static const struct option opts[] = {
        {"output", required_argument, 0, 'o'}, {"to", required_argument, 0, 't'},
        {"format", required_argument, 0, 'f'}, {"tensor-type", required_argument, 0, 'T'},
        {"threads", required_argument, 0, 'j'}, {"zstd", no_argument, 0, 'z'},
        {"inspect", no_argument, 0, 'i'},       {"json", no_argument, 0, 'J'},
        {"log-json", required_argument, 0, 'L'}, {"help", no_argument, 0, 'h'},
        {"tokenizer", required_argument, 0, 'k'}, {"imatrix", required_argument, 0, 'I'},
        {"calib", required_argument, 0, 'C'},
        {0, 0, 0, 0}};
    const char *out = NULL, *log_path = NULL, *tokenizer = NULL, *imatrix = NULL, *calib = NULL;
    int have_to = 0, as_json = 0, do_inspect = 0, compress = 0, n_rules = 0, threads = 0;
    qtc_target to;
    qtc_format fmt = QTC_FMT_UNKNOWN;
    qtc_convert_rule rules[MAX_RULES];
    int c;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 't':
            if (qtc_target_parse(optarg, &to) != 0)
                cli_usage("unknown --to type");
            have_to = 1;
            break;
        case 'f':
            fmt = qtc_format_from_name(optarg);
            if (fmt == QTC_FMT_UNKNOWN)
                cli_usage("--format is safetensors, gguf or hf");
            break;
        case 'T': {
            char *eq = strrchr(optarg, '=');
            if (!eq || n_rules == MAX_RULES)
                cli_usage("--tensor-type takes REGEX=TYPE");
            *eq = '\0';
            if (qtc_target_parse(eq + 1, &rules[n_rules].to) != 0)
                cli_usage("unknown type in --tensor-type");
            if (regcomp(&rules[n_rules].re, optarg, REG_EXTENDED | REG_NOSUB) != 0)
                cli_usage("bad regular expression in --tensor-type");
            n_rules++;
            break;
        }
        case 'j': threads = cli_threads(optarg); break;
        case 'z': compress = 1; break;
        case 'i': do_inspect = 1; break;
        case 'J': as_json = 1; break;
        case 'L': log_path = optarg; break;
        case 'I': imatrix = optarg; break;
        case 'C': calib = optarg; break;
        case 'k': tokenizer = optarg; break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: cli_usage("bad option");
        }
    }
    if (optind != argc - 1)
        cli_usage(optind < argc ? "one input only" : "no input");
    const char *in = argv[optind];
    qtc_set_threads(threads);
    if (!do_inspect && !out)
        cli_usage("no output: give -o OUT (or - for standard output), or --inspect");
    if (out) {
        compress |= qtc_path_wants_zstd(out);
        if (fmt == QTC_FMT_UNKNOWN)
            fmt = strcmp(out, "-") == 0 ? QTC_FMT_SAFETENSORS : qtc_format_from_path(out);
        if (fmt == QTC_FMT_UNKNOWN)
            cli_usage("cannot tell the output format from its name: use --format");
        if (as_json && strcmp(out, "-") == 0)
            cli_usage("--json prints to standard output, which -o - already uses (try --log-json FILE)");
    }
    FILE *log = NULL;
    if (log_path && !(log = fopen(log_path, "w")))
        return cli_error(3, "%s: cannot open for writing", log_path);
    qtc_error err;
    qtc_model_file *m = qtc_model_open(in, &err);
    int rc;
    if (m && tokenizer) {
        free(m->tokenizer_bin);
        m->tokenizer_bin = strdup(tokenizer);
    }
    if (!m)
        rc = cli_fail(&err);
    else if (do_inspect)
        rc = inspect(m, as_json);
    else {
        qtc_imatrix im = {0};
        qtc_input_quant iq = {0};
        if (imatrix && qtc_imatrix_load(imatrix, &im, &err) != QTC_OK)
            rc = cli_fail(&err);
        else if (calib && !m->has_config)
            rc = cli_fail(&(qtc_error){QTC_ERR_INPUT, "--calib: the model has no llama configuration to match the file's layers"});
        else if (calib && qtc_calib_input_quant(calib, m->config.n_layers, &iq, &err) != QTC_OK)
            rc = cli_fail(&err);
        else
            rc = convert(m, out, fmt, compress, have_to ? &to : NULL, rules, n_rules, as_json, log, imatrix ? &im : NULL,
                         calib ? &iq : NULL);
        qtc_imatrix_free(&im);
        qtc_input_quant_free(&iq);
    }
    qtc_model_close(m);
    for (int r = 0; r < n_rules; r++)
        regfree(&rules[r].re);
    if (log && fclose(log) != 0 && !rc)
        rc = 3;
    if (fclose(stdout) != 0 && !rc)
        rc = cli_error(3, "standard output: write failed");
    return rc;
}
