/* convert.c: qtc_convert, converting a whole model: per tensor a storage
 * type (or scheme), the fallback of block types, one fused quantization pass,
 * the writer. Every tool that writes a model writes it through here. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/convert.h"
#include "qtc/quant.h"

int qtc_target_parse(const char *s, qtc_target *t)
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

void qtc_target_name(const qtc_target *t, char *buf, size_t cap)
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

/* What happens to one input tensor. */
typedef struct plan {
    qtc_target out;        /* what it is stored as */
    qtc_target asked;      /* what was asked (differs after a fallback) */
    int fell_back;
    int keep_q;        /* a quantized input kept in its own scheme: copied, not requantized */
    int first, count;  /* its entries in the output list */
    int input;         /* its static input scale in hooks->inputs, or -1 */
    int gptq;          /* stored in GPTQ's layout */
} plan;

static void plan_tensor(const qtc_tensor_entry *e, const qtc_target *to, const qtc_convert_rule *rules, int n_rules, qtc_format fmt,
                        plan *p)
{
    memset(p, 0, sizeof *p);
    p->input = -1;
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

/* The static input scale of a weight planned in an integer scheme, if hooks give one:
 * p->input and its two entries (<module>.input_scale, <module>.input_zero_point). */
static qtc_status plan_input(const qtc_input_quant *in, const qtc_tensor_entry *e, plan *p, qtc_out_entry *out,
                             qtc_error *err)
{
    for (int k = 0; in && k < in->n; k++) {
        if (strcmp(in->weights[k], e->name) != 0)
            continue;
        size_t len = strlen(e->name);
        if (p->out.scheme.kind != QTC_QK_INT || len < 7 || strcmp(e->name + len - 7, ".weight") != 0)
            return qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': static input scales go with integer schemes", e->name);
        memset(out, 0, 2 * sizeof *out);
        snprintf(out[0].name, sizeof out[0].name, "%.*s.input_scale", (int)(len - 7), e->name);
        snprintf(out[1].name, sizeof out[1].name, "%.*s.input_zero_point", (int)(len - 7), e->name);
        out[0].dtype = QTC_F32;
        out[1].dtype = QTC_I8;
        out[0].ndim = out[1].ndim = 1;
        out[0].ne[0] = out[1].ne[0] = 1;
        p->input = k;
    }
    return QTC_OK;
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
static qtc_status convert_one(qtc_model_file *m, int i, const plan *p, qtc_model_writer *w, const qtc_convert_hooks *hooks,
                              double *se, double *x2, double *mx, double *bytes_out, int *weighted, qtc_error *err)
{
    const qtc_tensor_entry *e = &m->tensors[i];
    qtc_tensor *src = qtc_model_tensor(m, i, err), *f = NULL, *q = NULL, *back = NULL;
    qtc_tensor *parts[8] = {0};
    qtc_qweight qw;
    memset(&qw, 0, sizeof qw);
    qtc_status rc = QTC_OK;
    int changed = 0;
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
        if (hooks->transform) {
            qtc_tensor *changed_f = NULL;
            int r = hooks->transform(hooks->ctx, e->name, f, &changed_f, err);
            if (r < 0) {
                rc = err->code;
                goto done;
            }
            if (r > 0) {
                if (f != src)
                    qtc_tensor_free(f);
                f = changed_f;
                changed = 1;
            }
        }
    }
    const float *imp = hooks->importance && is_weight && e->ndim == 2 ? hooks->importance(hooks->ctx, e->name, e->ne[1]) : NULL;
    if (p->out.is_scheme) {
        int given = hooks->qweight ? hooks->qweight(hooks->ctx, e->name, &p->out.scheme, &qw, err) : 0;
        if (given < 0)
            rc = err->code;
        else if (given)
            rc = QTC_OK;
        else if (imp && p->out.scheme.kind == QTC_QK_INT) {
            rc = qtc_qweight_quantize_weighted(f->data, e->ne[0], e->ne[1], &p->out.scheme, imp, &qw, err);
            *weighted = 1;
        } else if (p->keep_q && !changed)
            rc = qtc_model_qweight(m, i, &qw, err);
        else
            rc = qtc_qweight_quantize(f->data, e->ne[0], e->ne[1], &p->out.scheme, &qw, err);
        if (rc == QTC_OK && !(back = qtc_tensor_new(QTC_F32, 2, e->ne, err)))
            rc = err->code;
        if (rc == QTC_OK) {
            qtc_qweight_dequantize(&qw, back->data);
            accumulate_error(qtc_quant_error_of(f->data, back->data, qtc_tensor_numel(f)), se, x2, mx);
            rc = p->gptq ? qtc_gptq_layout_pack(&qw, e->name, parts, err) : qtc_qlayout_pack(&qw, e->name, parts, err);
        }
        if (rc == QTC_OK && p->input >= 0) { /* the last two entries: its input's scale and zero point */
            const qtc_input_quant *in = hooks->inputs;
            parts[p->count - 2] = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(1), err);
            parts[p->count - 1] = qtc_tensor_new(QTC_I8, 1, QTC_SHAPE(1), err);
            if (!parts[p->count - 2] || !parts[p->count - 1])
                rc = err->code;
            else {
                ((float *)parts[p->count - 2]->data)[0] = in->scale[p->input];
                ((int8_t *)parts[p->count - 1]->data)[0] = (int8_t)in->zero[p->input];
            }
        }
        for (int k = 0; rc == QTC_OK && k < p->count; k++) {
            rc = qtc_writer_put(w, p->first + k, parts[k], err);
            *bytes_out += (double)qtc_tensor_nbytes(parts[k]);
        }
        goto done;
    }
    const qtc_tensor *put = src;
    if (p->out.dtype != e->dtype || e->qparts.scheme_set || changed) {
        qtc_quant_error qe;
        q = qtc_tensor_quantize_measured(f, p->out.dtype, imp, &qe, err);
        *weighted = imp && qtc_dtype_takes_importance(p->out.dtype);
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

qtc_status qtc_convert(qtc_model_file *m, const char *out_path, qtc_format fmt, int compress, const qtc_target *to,
                       const qtc_convert_rule *rules, int n_rules, const qtc_convert_hooks *hooks,
                       qtc_convert_summary *summary, qtc_error *err)
{
    static const qtc_convert_hooks none;
    if (!hooks)
        hooks = &none;
    int n = m->n_tensors, n_out = 0;
    plan *plans = calloc((size_t)(n ? n : 1), sizeof *plans);
    qtc_out_entry *entries = calloc((size_t)(8 * n + 1), sizeof *entries);
    qtc_kvs extra = {0};
    const qtc_qscheme *used_scheme = NULL;
    qtc_model_writer *w = NULL;
    qtc_status rc = QTC_OK;
    qtc_convert_summary sum;
    memset(&sum, 0, sizeof sum);
    if (!plans || !entries) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const qtc_tensor_entry *e = &m->tensors[i];
        plan *p = &plans[i];
        plan_tensor(e, to, rules, n_rules, fmt, p);
        p->first = n_out;
        if (p->out.is_scheme) {
            char nm[32];
            qtc_target_name(&p->out, nm, sizeof nm);
            if (fmt == QTC_FMT_GGUF) {
                rc = qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': GGUF cannot hold %s; use a ggml type (q4_0, q8_0, ...) or safetensors",
                                   e->name, nm);
                goto done;
            }
            if (e->ndim != 2) {
                rc = qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': schemes apply to 2-D weights", e->name);
                goto done;
            }
            if (hooks->gptq_config && p->out.scheme.kind == QTC_QK_INT) {
                char why[192];
                if (hooks->inputs) {
                    rc = qtc_error_set(err, QTC_ERR_USAGE, "static input scales go with the compressed-tensors layout, not GPTQ's");
                    goto done;
                }
                if (qtc_gptq_layout_entries(&p->out.scheme, e->name, e->ne[0], e->ne[1], &entries[n_out], why, sizeof why) != 0) {
                    rc = qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': %s", e->name, why);
                    goto done;
                }
                p->count = QTC_GPTQ_PARTS;
                p->gptq = 1;
            } else {
                p->count = qtc_qlayout_count(&p->out.scheme);
                if (qtc_qlayout_entries(&p->out.scheme, e->name, e->ne[0], e->ne[1], &entries[n_out]) != 0) {
                    rc = qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': name too long for its quantized parts", e->name);
                    goto done;
                }
            }
            if ((rc = plan_input(hooks->inputs, e, p, &entries[n_out + p->count], err)) != QTC_OK)
                goto done;
            if (p->input >= 0)
                p->count += 2;
            if (used_scheme && memcmp(used_scheme, &p->out.scheme, sizeof *used_scheme) != 0) {
                rc = qtc_error_set(err, QTC_ERR_USAGE, "one scheme per model (its quantization_config describes one)");
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
                rc = qtc_error_set(err, QTC_ERR_USAGE,
                                   "tensor '%s': %s blocks can only be stored in GGUF (use --format gguf or a .gguf name)",
                                   e->name, qtc_dtype_info(p->out.dtype)->name);
                goto done;
            }
        }
        n_out += p->count;
    }
    sum.no_tokenizer = fmt == QTC_FMT_GGUF && !qtc_kvs_get(&m->meta, "tokenizer.ggml.tokens") && !m->tokenizer_bin &&
                       !m->tokenizer_json;
    for (int k = 0; hooks->inputs && k < hooks->inputs->n; k++) {
        int found = 0;
        for (int i = 0; i < n && !found; i++)
            found = plans[i].input == k;
        if (!found) {
            int absent = qtc_model_find(m, hooks->inputs->weights[k]) < 0;
            rc = qtc_error_set(err, absent ? QTC_ERR_INPUT : QTC_ERR_USAGE, "static input scale for '%s': %s",
                               hooks->inputs->weights[k],
                               absent ? "no such weight in the model" : "the weight is not stored in an integer scheme (--to int8, ...)");
            goto done;
        }
    }
    if (fmt != QTC_FMT_GGUF) {
        qtc_kvs_set_str(&extra, "qtc.source_format", qtc_format_name(m->format));
        if (used_scheme && hooks->gptq_config) {
            qtc_kvs_set_str(&extra, "qtc.quantization_config", hooks->gptq_config);
        } else if (used_scheme) {
            char *qc = qtc_qlayout_hf_config(used_scheme, hooks->inputs ? hooks->inputs->bits : 0);
            if (qc)
                qtc_kvs_set_str(&extra, "qtc.quantization_config", qc);
            free(qc);
        }
    }
    w = qtc_writer_open(out_path, fmt, compress, m, entries, n_out, fmt == QTC_FMT_GGUF ? NULL : &extra, err);
    if (!w) {
        rc = err->code;
        goto done;
    }
    double sum_se = 0, sum_x2 = 0, bits = 0;
    for (int i = 0; i < n; i++) {
        const qtc_tensor_entry *e = &m->tensors[i];
        const plan *p = &plans[i];
        double se = 0, x2 = 0, mx = 0, b_out = 0;
        int weighted = 0;
        if ((rc = convert_one(m, i, p, w, hooks, &se, &x2, &mx, &b_out, &weighted, err)) != QTC_OK)
            goto done;
        sum.weighted += weighted;
        qtc_model_forget(m, i);
        qtc_convert_row row;
        memset(&row, 0, sizeof row);
        row.name = e->name;
        if (e->qparts.scheme_set)
            qtc_qscheme_name(&e->scheme, row.in, sizeof row.in);
        else
            snprintf(row.in, sizeof row.in, "%s", qtc_dtype_info(e->dtype)->name);
        qtc_target_name(&p->out, row.out, sizeof row.out);
        qtc_target_name(&p->asked, row.asked, sizeof row.asked);
        row.fell_back = p->fell_back;
        row.weights = 1;
        for (int d = 0; d < e->ndim; d++)
            row.weights *= (double)e->ne[d];
        row.bpw = p->out.is_scheme ? qtc_qscheme_bpw(&p->out.scheme, e->ne[0], e->ne[1]) : qtc_dtype_bpw(p->out.dtype);
        row.rel_rms_err = x2 > 0 ? sqrt(se / x2) : sqrt(se);
        row.max_abs_err = mx;
        row.bytes_in = e->qparts.scheme_set ? ceil(qtc_qscheme_bpw(&e->scheme, e->ne[0], e->ne[1]) * row.weights / 8)
                                           : (double)e->nbytes;
        row.bytes_out = b_out;
        row.weighted = weighted;
        sum.weights += row.weights;
        bits += row.weights * row.bpw;
        sum.bytes_in += row.bytes_in;
        sum.bytes_out += b_out;
        sum_se += se;
        sum_x2 += x2;
        if (mx > sum.max_abs_err)
            sum.max_abs_err = mx;
        if (hooks->report)
            hooks->report(hooks->ctx, &row);
    }
    rc = qtc_writer_commit(w, err);
    w = NULL;
    sum.bits_per_weight = sum.weights ? bits / sum.weights : 0;
    sum.rel_rms_err = sum_x2 > 0 ? sqrt(sum_se / sum_x2) : 0;
done:
    qtc_writer_abort(w);
    qtc_kvs_free(&extra);
    free(entries);
    free(plans);
    if (summary)
        *summary = sum;
    return rc;
}
