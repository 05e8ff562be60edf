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
    "  --tokenizer FILE     a llama2.c tokenizer.bin to carry along (default: the one beside a\n"
    "                       llama2.c checkpoint; needed when the checkpoint comes through a pipe)\n"
    "  --inspect            print the model's tensors, types, shapes, bits per weight, metadata\n"
    "  --json               --inspect, or the conversion summary, as one JSON document on stdout\n"
    "  --log-json FILE      one JSON object per event (each tensor, the summary) to FILE\n"
    "  -h, --help           this help\n"
    "\n"
    "Exit status: 0 done, 1 usage, 2 bad input, 3 I/O, 4 numerical failure (NaN, Inf).\n";

/* What a tensor is stored as: a dtype, or one of qtc's schemes (int groups, NF4). */
typedef struct target {
    int is_scheme;
    qtc_dtype dtype;
    qtc_qscheme scheme;
} target;

typedef struct rule {
    regex_t re;
    target to;
} rule;

static void die_usage(const char *msg)
{
    fprintf(stderr, "qconv: %s\n%s", msg, usage_text);
    exit(1);
}

static void print_json(const cJSON *o)
{
    char *js = cJSON_Print(o);
    printf("%s\n", js ? js : "null");
    cJSON_free(js);
}

static int fail(const qtc_error *err)
{
    fprintf(stderr, "qconv: error: %s\n", err->msg);
    return qtc_exit_code(err->code);
}

/* Types qconv accepts for --to: float and ggml types, or a scheme name. */
static int parse_target(const char *s, target *t)
{
    memset(t, 0, sizeof *t);
    int d = qtc_dtype_from_name(s);
    if (d >= 0 && (qtc_dtype_info((qtc_dtype)d)->is_quantized || d == QTC_F32 || d == QTC_F16 || d == QTC_BF16)) {
        t->dtype = (qtc_dtype)d;
        return 0;
    }
    if (qtc_qscheme_parse(s, &t->scheme) == 0) {
        t->is_scheme = 1;
        return 0;
    }
    return -1;
}

static void target_name(const target *t, char *buf, size_t cap)
{
    if (t->is_scheme)
        qtc_qscheme_name(&t->scheme, buf, cap);
    else
        snprintf(buf, cap, "%s", qtc_dtype_info(t->dtype)->name);
}

/* Linear-layer weights: what integer and NF4 schemes apply to (compressed-tensors
 * targets Linear; embeddings and norms stay as they are). */
static int is_linear_weight(const qtc_tensor_entry *e)
{
    size_t n = strlen(e->name);
    return e->ndim == 2 && n > 12 && strcmp(e->name + n - 12, "_proj.weight") == 0;
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

/* What happens to one input tensor. */
typedef struct plan {
    target out;        /* what it is stored as */
    target asked;      /* what was asked (differs after a fallback) */
    int fell_back;
    int keep_q;        /* a quantized input kept in its own scheme: copied, not requantized */
    int first, count;  /* its entries in the output list */
} plan;

static void plan_tensor(const qtc_tensor_entry *e, const target *to, const rule *rules, int n_rules, qtc_format fmt,
                        plan *p)
{
    memset(p, 0, sizeof *p);
    int ruled = 0;
    for (int r = 0; r < n_rules && !ruled; r++)
        if (regexec(&rules[r].re, e->name, 0, NULL, 0) == 0) {
            p->asked = rules[r].to;
            ruled = 1;
        }
    if (!ruled && to && (e->ndim >= 2 || e->qparts.scheme_set)) {
        p->asked = *to;
    } else if (!ruled) { /* keep the type: floats stay (1-D ones as f32 when converting), ... */
        p->asked.dtype = to && qtc_dtype_info(e->dtype)->is_float ? QTC_F32 : e->dtype;
        if (e->qparts.scheme_set && fmt != QTC_FMT_GGUF) { /* ... and a quantized layout stays */
            p->asked.is_scheme = 1;
            p->asked.scheme = e->scheme;
        } else if (qtc_dtype_info(e->dtype)->is_quantized && fmt != QTC_FMT_GGUF) {
            p->asked.dtype = QTC_F32; /* safetensors cannot hold ggml blocks */
        }
    }
    p->out = p->asked;
    if (p->out.is_scheme && !is_linear_weight(e) && !ruled) { /* schemes are for linear layers */
        p->out.is_scheme = 0;
        p->out.dtype = e->qparts.scheme_set || qtc_dtype_info(e->dtype)->is_float ? QTC_F32 : e->dtype;
        p->asked = p->out;
    }
    if (!p->out.is_scheme) {
        int64_t row = e->ndim ? e->ne[e->ndim - 1] : 1;
        p->out.dtype = qtc_dtype_fallback(p->asked.dtype, row);
        p->fell_back = p->out.dtype != p->asked.dtype;
    }
    p->keep_q = p->out.is_scheme && e->qparts.scheme_set && !memcmp(&p->out.scheme, &e->scheme, sizeof e->scheme);
}

/* Adds one tensor's error statistics to the totals. */
static void accumulate_error(qtc_quant_error e, double *se, double *x2, double *mx)
{
    *se += e.sum_sq_err;
    *x2 += e.sum_sq_ref;
    if (e.max_abs > *mx)
        *mx = e.max_abs;
}


/* Converts input tensor i as planned and writes its entries. Fills the error
 * statistics and the bytes written. */
static qtc_status convert_one(qtc_model_file *m, int i, const plan *p, qtc_model_writer *w, double *se, double *x2,
                              double *mx, double *bytes_out, qtc_error *err)
{
    const qtc_tensor_entry *e = &m->tensors[i];
    qtc_tensor *src = qtc_model_tensor(m, i, err), *f = NULL, *q = NULL, *back = NULL;
    qtc_tensor *parts[8] = {0};
    qtc_qweight qw;
    memset(&qw, 0, sizeof qw);
    qtc_status rc = QTC_OK;
    if (!src)
        return err->code;
    int is_weight = qtc_dtype_info(e->dtype)->is_float || qtc_dtype_info(e->dtype)->is_quantized;
    int measured = !p->out.is_scheme && (p->out.dtype != e->dtype || e->qparts.scheme_set);
    if (is_weight) { /* NaN or Inf weights are refused whatever the target (measured: checked there) */
        f = src->dtype == QTC_F32 ? src : qtc_tensor_to_f32(src, err);
        int64_t bad = f && !measured ? qtc_tensor_find_nonfinite(f) : -1;
        if (!f) {
            rc = err->code;
            goto done;
        }
        if (bad >= 0) {
            rc = qtc_error_set(err, QTC_ERR_NUMERIC, "%s: tensor '%s': element %lld is %s", m->path, e->name,
                               (long long)bad, isnan(((float *)f->data)[bad]) ? "NaN" : "infinite");
            goto done;
        }
    }
    if (p->out.is_scheme) {
        if (p->keep_q)
            rc = qtc_model_qweight(m, i, &qw, err);
        else
            rc = qtc_qweight_quantize(f->data, e->ne[0], e->ne[1], &p->out.scheme, &qw, err);
        if (rc == QTC_OK && !(back = qtc_tensor_new(QTC_F32, 2, e->ne, err)))
            rc = err->code;
        if (rc == QTC_OK) {
            qtc_qweight_dequantize(&qw, back->data);
            accumulate_error(qtc_quant_error_of(f->data, back->data, qtc_tensor_numel(f)), se, x2, mx);
            rc = qtc_qlayout_pack(&qw, e->name, parts, err);
        }
        for (int k = 0; rc == QTC_OK && k < p->count; k++) {
            rc = qtc_writer_put(w, p->first + k, parts[k], err);
            *bytes_out += (double)qtc_tensor_nbytes(parts[k]);
        }
        goto done;
    }
    const qtc_tensor *put = src;
    if (p->out.dtype != e->dtype || e->qparts.scheme_set) {
        qtc_quant_error qe;
        q = qtc_tensor_quantize_measured(f, p->out.dtype, &qe, err);
        if (!q) {
            rc = qtc_error_prefix(err, "%s", m->path);
            goto done;
        }
        accumulate_error(qe, se, x2, mx);
        put = q;
    } else if (f) { /* stored as is: no error, but its weights count in the totals */
        accumulate_error(qtc_quant_error_of(f->data, f->data, qtc_tensor_numel(f)), se, x2, mx);
    }
    rc = qtc_writer_put(w, p->first, put, err);
    *bytes_out += (double)qtc_tensor_nbytes(put);
done:
    for (int k = 0; k < 8; k++)
        qtc_tensor_free(parts[k]);
    qtc_qweight_free(&qw);
    if (f != src)
        qtc_tensor_free(f);
    qtc_tensor_free(src);
    qtc_tensor_free(q);
    qtc_tensor_free(back);
    return rc;
}

static int convert(qtc_model_file *m, const char *out_path, qtc_format fmt, int compress, const target *to,
                   const rule *rules, int n_rules, int as_json, FILE *log)
{
    qtc_error err;
    int n = m->n_tensors, n_out = 0, rc = 0;
    plan *plans = calloc((size_t)(n ? n : 1), sizeof *plans);
    qtc_out_entry *entries = calloc((size_t)(8 * n + 1), sizeof *entries);
    qtc_kvs extra = {0};
    const qtc_qscheme *used_scheme = NULL;
    qtc_model_writer *w = NULL;
    cJSON *summary = cJSON_CreateObject(), *rows = cJSON_AddArrayToObject(summary, "tensors");
    if (!plans || !entries) {
        fprintf(stderr, "qconv: error: out of memory\n");
        rc = 3;
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const qtc_tensor_entry *e = &m->tensors[i];
        plan *p = &plans[i];
        plan_tensor(e, to, rules, n_rules, fmt, p);
        p->first = n_out;
        if (p->out.is_scheme) {
            if (fmt == QTC_FMT_GGUF) {
                char nm[32];
                target_name(&p->out, nm, sizeof nm);
                fprintf(stderr, "qconv: error: tensor '%s': GGUF cannot hold %s; use a ggml type (q4_0, q8_0, ...) or safetensors\n",
                        e->name, nm);
                rc = 1;
                goto done;
            }
            if (e->ndim != 2) {
                fprintf(stderr, "qconv: error: tensor '%s': schemes apply to 2-D weights\n", e->name);
                rc = 1;
                goto done;
            }
            p->count = qtc_qlayout_count(&p->out.scheme);
            if (qtc_qlayout_entries(&p->out.scheme, e->name, e->ne[0], e->ne[1], &entries[n_out]) != 0) {
                fprintf(stderr, "qconv: error: tensor '%s': name too long for its quantized parts\n", e->name);
                rc = 1;
                goto done;
            }
            if (used_scheme && memcmp(used_scheme, &p->out.scheme, sizeof *used_scheme) != 0) {
                fprintf(stderr, "qconv: error: one scheme per model (its quantization_config describes one)\n");
                rc = 1;
                goto done;
            }
            used_scheme = &p->out.scheme;
        } else {
            p->count = 1;
            snprintf(entries[n_out].name, sizeof entries[n_out].name, "%s", e->name);
            entries[n_out].dtype = p->out.dtype;
            entries[n_out].ndim = e->ndim;
            memcpy(entries[n_out].ne, e->ne, sizeof e->ne);
            if (fmt != QTC_FMT_GGUF && qtc_dtype_info(p->out.dtype)->is_quantized) {
                fprintf(stderr, "qconv: error: tensor '%s': %s blocks can only be stored in GGUF (use --format gguf or a .gguf name)\n",
                        e->name, qtc_dtype_info(p->out.dtype)->name);
                rc = 1;
                goto done;
            }
        }
        n_out += p->count;
    }
    if (fmt == QTC_FMT_GGUF && !qtc_kvs_get(&m->meta, "tokenizer.ggml.tokens") && !m->tokenizer_bin && !m->tokenizer_json)
        fprintf(stderr, "qconv: warning: %s has no tokenizer qtc can carry into GGUF; llama.cpp will not load the output\n", m->path);
    if (fmt != QTC_FMT_GGUF) {
        qtc_kvs_set_str(&extra, "qtc.source_format", qtc_format_name(m->format));
        if (used_scheme) {
            char *qc = qtc_qlayout_hf_config(used_scheme);
            if (qc)
                qtc_kvs_set_str(&extra, "qtc.quantization_config", qc);
            free(qc);
        }
    }
    w = qtc_writer_open(out_path, fmt, compress, m, entries, n_out, fmt == QTC_FMT_GGUF ? NULL : &extra, &err);
    if (!w) {
        rc = fail(&err);
        goto done;
    }
    double sum_se = 0, sum_x2 = 0, max_abs = 0, bytes_in = 0, bytes_out = 0, weights = 0, bits = 0;
    if (!as_json)
        fprintf(stderr, "%-52s %-6s -> %-13s %7s %11s %11s\n", "tensor", "in", "out", "bpw", "rel rms err", "max abs err");
    for (int i = 0; i < n; i++) {
        const qtc_tensor_entry *e = &m->tensors[i];
        const plan *p = &plans[i];
        double se = 0, x2 = 0, mx = 0, b_out = 0;
        if (convert_one(m, i, p, w, &se, &x2, &mx, &b_out, &err) != QTC_OK) {
            rc = fail(&err);
            goto done;
        }
        qtc_model_forget(m, i);
        double cnt = shape_numel(e->ne, e->ndim), rel = x2 > 0 ? sqrt(se / x2) : sqrt(se);
        double bpw = p->out.is_scheme ? qtc_qscheme_bpw(&p->out.scheme, e->ne[0], e->ne[1]) : qtc_dtype_bpw(p->out.dtype);
        double b_in = e->qparts.scheme_set ? ceil(qtc_qscheme_bpw(&e->scheme, e->ne[0], e->ne[1]) * cnt / 8) : (double)e->nbytes;
        weights += cnt;
        bits += cnt * bpw;
        bytes_in += b_in;
        bytes_out += b_out;
        sum_se += se;
        sum_x2 += x2;
        if (mx > max_abs)
            max_abs = mx;
        char in_name[32], out_name[32], asked_name[32];
        if (e->qparts.scheme_set)
            qtc_qscheme_name(&e->scheme, in_name, sizeof in_name);
        else
            snprintf(in_name, sizeof in_name, "%s", qtc_dtype_info(e->dtype)->name);
        target_name(&p->out, out_name, sizeof out_name);
        target_name(&p->asked, asked_name, sizeof asked_name);
        if (!as_json)
            fprintf(stderr, "%-52s %-6s -> %-13s %7.3f %11.3e %11.3e%s%s%s\n", e->name, in_name, out_name, bpw, rel, mx,
                    p->fell_back ? "  (" : "", p->fell_back ? asked_name : "",
                    p->fell_back ? " asked; rows do not split into its blocks)" : "");
        cJSON *row = cJSON_CreateObject();
        cJSON_AddStringToObject(row, "name", e->name);
        cJSON_AddStringToObject(row, "in", in_name);
        cJSON_AddStringToObject(row, "out", out_name);
        if (p->fell_back) {
            cJSON_AddStringToObject(row, "asked", asked_name);
            cJSON_AddStringToObject(row, "fallback_reason", "rows do not split into its blocks");
        }
        cJSON_AddNumberToObject(row, "bpw", bpw);
        cJSON_AddNumberToObject(row, "rel_rms_err", rel);
        cJSON_AddNumberToObject(row, "max_abs_err", mx);
        cJSON_AddNumberToObject(row, "bytes_in", b_in);
        cJSON_AddNumberToObject(row, "bytes_out", b_out);
        if (log) {
            char *js = cJSON_PrintUnformatted(row);
            fprintf(log, "{\"event\":\"tensor\",\"data\":%s}\n", js);
            cJSON_free(js);
        }
        cJSON_AddItemToArray(rows, row);
    }
    rc = qtc_writer_commit(w, &err) == QTC_OK ? 0 : fail(&err);
    w = NULL;
    if (rc)
        goto done;
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
        print_json(summary);
    } else {
        fprintf(stderr, "total: %.0f weights, %.3f bits per weight, rel rms err %.3e, max abs err %.3e, %.0f -> %.0f bytes\n",
                weights, weights ? bits / weights : 0, rel, max_abs, bytes_in, bytes_out);
    }
    if (log) {
        cJSON_DeleteItemFromObject(summary, "tensors");
        char *js = cJSON_PrintUnformatted(summary);
        fprintf(log, "{\"event\":\"summary\",\"data\":%s}\n", js);
        cJSON_free(js);
    }
done:
    qtc_writer_abort(w);
    qtc_kvs_free(&extra);
    cJSON_Delete(summary);
    free(entries);
    free(plans);
    return rc;
}

int main(int argc, char **argv)
{
    qtc_runtime_setup(argv);
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
    target to;
    qtc_format fmt = QTC_FMT_UNKNOWN;
    rule rules[MAX_RULES];
    int c;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 't':
            if (parse_target(optarg, &to) != 0)
                die_usage("unknown --to type");
            have_to = 1;
            break;
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
            if (parse_target(eq + 1, &rules[n_rules].to) != 0)
                die_usage("unknown type in --tensor-type");
            if (regcomp(&rules[n_rules].re, optarg, REG_EXTENDED | REG_NOSUB) != 0)
                die_usage("bad regular expression in --tensor-type");
            n_rules++;
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
        rc = convert(m, out, fmt, compress, have_to ? &to : NULL, rules, n_rules, as_json, log);
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
