/* peft_io.c: adapters on disk: PEFT folders (adapter_config.json and
 * adapter_model.safetensors with PEFT's key names) and GGUF LoRA adapters
 * (general.type = adapter, tensors <llama.cpp name>.lora_a / .lora_b). */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qtc/lora.h"

static const char *const method_name[3] = {"LORA", "BOTTLENECK", "PREFIX_TUNING"};

static void linear_dims(const qtc_llama_config *mc, int k, int64_t *out, int64_t *in)
{
    const int64_t D = mc->dim, H = mc->hidden, QD = (int64_t)mc->n_heads * mc->head_dim,
                  KV = (int64_t)mc->n_kv_heads * mc->head_dim;
    const int64_t o[QTC_N_LINEAR] = {QD, KV, KV, D, H, H, D}, i[QTC_N_LINEAR] = {D, D, D, QD, D, D, H};
    *out = o[k];
    *in = i[k];
}

/* adapter_config.json as PEFT writes it (the fields a reader needs, and PEFT's defaults for the rest). */
static char *config_json(const qtc_peft *p, const char *base_name)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "peft_type", method_name[p->c.method]);
    cJSON_AddStringToObject(o, "task_type", "CAUSAL_LM");
    cJSON_AddStringToObject(o, "base_model_name_or_path", base_name ? base_name : "");
    cJSON_AddBoolToObject(o, "inference_mode", 1);
    if (p->c.method == QTC_PEFT_LORA) {
        cJSON_AddNumberToObject(o, "r", p->c.r);
        cJSON_AddNumberToObject(o, "lora_alpha", p->c.alpha);
        cJSON_AddNumberToObject(o, "lora_dropout", p->c.dropout);
        /* the modules actually adapted, as a list of leaf names when every layer has the same set */
        int same = 1;
        for (int l = 1; l < p->mc.n_layers; l++)
            for (int k = 0; k < QTC_N_LINEAR; k++)
                same &= !p->lora_a[l * QTC_N_LINEAR + k] == !p->lora_a[k];
        if (same) {
            cJSON *t = cJSON_AddArrayToObject(o, "target_modules");
            for (int k = 0; k < QTC_N_LINEAR; k++)
                if (p->lora_a[k])
                    cJSON_AddItemToArray(t, cJSON_CreateString(strchr(qtc_linear_path((qtc_linear_kind)(k)), '.') + 1));
        } else {
            cJSON_AddStringToObject(o, "target_modules", p->c.target);
        }
        cJSON_AddStringToObject(o, "bias", "none");
        cJSON_AddBoolToObject(o, "fan_in_fan_out", 0);
        cJSON_AddBoolToObject(o, "use_rslora", p->c.rslora);
        cJSON_AddBoolToObject(o, "use_dora", 0);
        cJSON_AddBoolToObject(o, "init_lora_weights", 1);
        cJSON_AddItemToObject(o, "rank_pattern", cJSON_CreateObject());
        cJSON_AddItemToObject(o, "alpha_pattern", cJSON_CreateObject());
        cJSON_AddNullToObject(o, "modules_to_save");
    } else if (p->c.method == QTC_PEFT_ADAPTER) {
        cJSON_AddNumberToObject(o, "bottleneck_size", p->c.r);
        cJSON_AddStringToObject(o, "non_linearity", "silu");
        cJSON_AddStringToObject(o, "placement", "attention_output,mlp_output");
    } else {
        cJSON_AddNumberToObject(o, "num_virtual_tokens", p->c.prefix_len);
        cJSON_AddNumberToObject(o, "num_layers", p->mc.n_layers);
        cJSON_AddNumberToObject(o, "token_dim", p->mc.dim);
        cJSON_AddNumberToObject(o, "num_attention_heads", p->mc.n_heads);
        cJSON_AddNumberToObject(o, "num_key_value_heads", p->mc.n_kv_heads);
        cJSON_AddBoolToObject(o, "prefix_projection", 0);
    }
    char *j = cJSON_Print(o), *copy = j ? strdup(j) : NULL;
    cJSON_free(j);
    cJSON_Delete(o);
    return copy;
}

/* The entries (and tensors) an adapter file holds. prompt_embeddings is
 * built here (PEFT's layout: row p = [k_0 v_0 k_1 v_1 ...] of every layer). */
static int file_tensors(const qtc_peft *p, int gguf, qtc_out_entry *e, qtc_tensor **t, int cap, qtc_error *err)
{
    int n = 0;
    if (p->prefix_k) {
        const int64_t P = p->c.prefix_len, KV = p->prefix_k[0]->ne[1], L = p->mc.n_layers;
        qtc_tensor *pe = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(P, L * 2 * KV), err);
        if (!pe)
            return -1;
        float *d = pe->data;
        for (int64_t r = 0; r < P; r++)
            for (int64_t l = 0; l < L; l++) {
                memcpy(d + r * L * 2 * KV + (2 * l) * KV, (float *)p->prefix_k[l]->data + r * KV, (size_t)KV * 4);
                memcpy(d + r * L * 2 * KV + (2 * l + 1) * KV, (float *)p->prefix_v[l]->data + r * KV, (size_t)KV * 4);
            }
        snprintf(e[0].name, sizeof e[0].name, "prompt_embeddings");
        t[0] = pe;
        n = 1;
    } else {
        int np = qtc_peft_params(p, NULL, 0);
        qtc_tensor **ps = malloc((size_t)(np > 0 ? np : 1) * sizeof *ps);
        if (!ps) {
            qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
            return -1;
        }
        qtc_peft_params(p, ps, np);
        for (int i = 0; i < np && i < cap; i++) {
            char name[QTC_NAME_MAX];
            qtc_peft_param_name(p, i, name, sizeof name);
            if (gguf) { /* blk.N.attn_q.weight.lora_a; lora_b's rows of q/k in llama.cpp's rotary order */
                int lin = i / 2, is_b = i % 2;
                int l = 0, k = 0;
                for (int j = 0, seen = 0; j < p->mc.n_layers * QTC_N_LINEAR; j++)
                    if (p->lora_a[j] && seen++ == lin) {
                        l = j / QTC_N_LINEAR;
                        k = j % QTC_N_LINEAR;
                        break;
                    }
                char hf[QTC_NAME_MAX], g[96];
                qtc_linear_weight_name(l, (qtc_linear_kind)k, hf, sizeof hf);
                qtc_gguf_name(hf, g, sizeof g);
                snprintf(name, sizeof name, "%s.lora_%c", g, is_b ? 'b' : 'a');
                if (is_b && (k == QTC_LIN_Q || k == QTC_LIN_K)) {
                    qtc_tensor *c = qtc_tensor_new(QTC_F32, 2, ps[i]->ne, err);
                    if (!c) {
                        free(ps);
                        return -1;
                    }
                    qtc_rope_rows_from_hf(ps[i]->data, c->data, ps[i]->ne[0], (size_t)ps[i]->ne[1] * 4,
                                          k == QTC_LIN_Q ? p->mc.n_heads : p->mc.n_kv_heads);
                    t[n] = c;
                } else {
                    t[n] = qtc_tensor_wrap(QTC_F32, ps[i]->ndim, ps[i]->ne, ps[i]->data, NULL, err);
                }
            } else {
                t[n] = qtc_tensor_wrap(QTC_F32, ps[i]->ndim, ps[i]->ne, ps[i]->data, NULL, err);
            }
            if (!t[n]) {
                free(ps);
                return -1;
            }
            snprintf(e[n].name, sizeof e[n].name, "%s", name);
            n++;
        }
        free(ps);
    }
    for (int i = 0; i < n; i++) {
        e[i].dtype = QTC_F32;
        e[i].ndim = t[i]->ndim;
        memcpy(e[i].ne, t[i]->ne, sizeof e[i].ne);
    }
    return n;
}

qtc_status qtc_peft_save(const qtc_peft *p, const char *path, int gguf, const char *base_name, qtc_error *err)
{
    if (gguf && p->c.method != QTC_PEFT_LORA)
        return qtc_error_set(err, QTC_ERR_USAGE, "only LoRA adapters have a GGUF form; write a PEFT folder");
    const int cap = qtc_peft_params(p, NULL, 0) + 1; /* the tensors, or prompt_embeddings */
    qtc_out_entry *e = calloc((size_t)cap, sizeof *e);
    qtc_tensor **t = calloc((size_t)cap, sizeof *t);
    qtc_kvs extra = {0};
    char *json = NULL, file[QTC_PATH_MAX];
    qtc_out *cfg = NULL;
    qtc_model_writer *w = NULL;
    qtc_status rc = QTC_OK;
    int n = e && t ? file_tensors(p, gguf, e, t, cap, err) : (qtc_error_set(err, QTC_ERR_NOMEM, "out of memory"), -1);
    if (n < 0) {
        rc = err->code;
        goto done;
    }
    if (gguf) {
        qtc_model_file like; /* the configuration the GGUF writer needs; no tokenizer */
        memset(&like, 0, sizeof like);
        like.has_config = 1;
        like.config = p->mc;
        snprintf(like.path, sizeof like.path, "%s", path);
        if (qtc_kvs_set_str(&extra, "general.type", "adapter") || qtc_kvs_set_str(&extra, "adapter.type", "lora") ||
            qtc_kvs_set_num(&extra, "adapter.lora.alpha", QTC_KV_F32, p->c.rslora ? p->scaling * p->c.r : p->c.alpha) ||
            qtc_kvs_set_str(&extra, "general.name", base_name ? base_name : "qtc adapter")) {
            rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
            goto done;
        }
        if (!(w = qtc_writer_open(path, QTC_FMT_GGUF, 0, &like, e, n, &extra, err))) {
            rc = err->code;
            goto done;
        }
        snprintf(file, sizeof file, "%s", path);
    } else {
        /* the longer of the two names: checked before the folder exists */
        if ((rc = qtc_path_join(file, path, "adapter_model.safetensors", err)) != QTC_OK)
            goto done;
        if (mkdir(path, 0777) != 0 && errno != EEXIST) {
            rc = qtc_error_set(err, QTC_ERR_IO, "%s: cannot create the adapter folder: %s", path, strerror(errno));
            goto done;
        }
        snprintf(file, sizeof file, "%s/adapter_config.json", path);
        if (!(json = config_json(p, base_name)) || !(cfg = qtc_out_open(file, 0, err)) ||
            qtc_out_pwrite(cfg, json, strlen(json), 0, err) != QTC_OK) {
            rc = json ? err->code : qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
            goto done;
        }
        snprintf(file, sizeof file, "%s/adapter_model.safetensors", path);
        if (qtc_kvs_set_str(&extra, "format", "pt") ||
            !(w = qtc_writer_open(file, QTC_FMT_SAFETENSORS, 0, NULL, e, n, &extra, err))) {
            rc = w ? qtc_error_set(err, QTC_ERR_NOMEM, "out of memory") : err->code;
            goto done;
        }
    }
    for (int i = 0; i < n && rc == QTC_OK; i++)
        rc = qtc_writer_put(w, i, t[i], err);
    if (rc != QTC_OK)
        goto done;
    rc = qtc_writer_commit(w, err);
    w = NULL;
    if (rc == QTC_OK && cfg) {
        rc = qtc_out_commit(cfg, err);
        cfg = NULL;
        if (rc != QTC_OK)
            unlink(file); /* no folder with weights but no configuration */
    }
done:
    if (w)
        qtc_writer_abort(w);
    qtc_out_abort(cfg);
    for (int i = 0; t && i < (n > 0 ? n : 0); i++)
        qtc_tensor_free(t[i]);
    free(t);
    free(e);
    free(json);
    qtc_kvs_free(&extra);
    return rc;
}

/* --- loading ---------------------------------------------------------------------- */

static char *read_text(const char *path, qtc_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno)), NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            char *b = realloc(buf, cap = cap * 2 + 8192);
            if (!b) {
                free(buf);
                fclose(f);
                return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory"), NULL;
            }
            buf = b;
        }
        size_t got = fread(buf + n, 1, 4096, f);
        n += got;
        if (got < 4096)
            break;
        if (n > (64u << 20)) {
            free(buf);
            fclose(f);
            return qtc_error_set(err, QTC_ERR_INPUT, "%s: over 64 MB: not an adapter configuration", path), NULL;
        }
    }
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* A copy of tensor `name` of f, checked to be rows x cols f32 (or f16/bf16, converted). */
static qtc_tensor *take(const qtc_model_file *f, const char *name, int64_t rows, int64_t cols, const char *what,
                        qtc_error *err)
{
    int i = qtc_model_find(f, name);
    if (i < 0)
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s' is missing", f->path, name), NULL;
    const qtc_tensor_entry *x = &f->tensors[i];
    int64_t r = x->ne[0], c = x->ndim > 1 ? x->ne[1] : 0;
    if (!qtc_dtype_info(x->dtype)->is_float || x->ndim != (cols ? 2 : 1) || r != rows || (cols && c != cols))
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s' is %s [%lld, %lld]; %s needs f32 [%lld, %lld]", f->path,
                             name, qtc_dtype_info(x->dtype)->name, (long long)r, (long long)c, what, (long long)rows,
                             (long long)cols), NULL;
    qtc_tensor *s = qtc_model_tensor(f, i, err), *t = s ? qtc_tensor_to_f32(s, err) : NULL;
    qtc_tensor_free(s);
    if (t && qtc_tensor_find_nonfinite(t) >= 0) {
        qtc_error_set(err, QTC_ERR_NUMERIC, "%s: tensor '%s': element %lld is not finite", f->path, name,
                      (long long)qtc_tensor_find_nonfinite(t));
        qtc_tensor_free(t);
        return NULL;
    }
    if (t && qtc_tensor_require_grad(t, err) != QTC_OK) {
        qtc_tensor_free(t);
        return NULL;
    }
    if (t)
        snprintf(t->name, sizeof t->name, "%s", name);
    return t;
}

/* The LoRA pair of module (l, k), or 0 when the file has none; -1 on error. */
static int load_pair(qtc_peft *p, const qtc_model_file *f, int gguf, int l, int k, qtc_error *err)
{
    char a[QTC_NAME_MAX + 32], b[QTC_NAME_MAX + 32], hf[QTC_NAME_MAX];
    qtc_linear_weight_name(l, (qtc_linear_kind)k, hf, sizeof hf);
    if (gguf) {
        char g[QTC_NAME_MAX];
        qtc_gguf_name(hf, g, sizeof g);
        snprintf(a, sizeof a, "%s.lora_a", g);
        snprintf(b, sizeof b, "%s.lora_b", g);
    } else {
        snprintf(a, sizeof a, "base_model.model.model.layers.%d.%s.lora_A.weight", l, qtc_linear_path((qtc_linear_kind)(k)));
        snprintf(b, sizeof b, "base_model.model.model.layers.%d.%s.lora_B.weight", l, qtc_linear_path((qtc_linear_kind)(k)));
    }
    int ia = qtc_model_find(f, a), ib = qtc_model_find(f, b);
    if (ia < 0 && ib < 0)
        return 0;
    int64_t out, in;
    linear_dims(&p->mc, k, &out, &in);
    if (p->c.r <= 0) /* GGUF: the rank comes from the tensors */
        p->c.r = ia >= 0 ? (int)f->tensors[ia].ne[0] : 0;
    int i = l * QTC_N_LINEAR + k;
    if (!(p->lora_a[i] = take(f, a, p->c.r, in, hf, err)) || !(p->lora_b[i] = take(f, b, out, p->c.r, hf, err)))
        return -1;
    if (gguf && (k == QTC_LIN_Q || k == QTC_LIN_K)) { /* back to HF's rotate-half rows */
        qtc_tensor *t = p->lora_b[i];
        float *tmp = malloc((size_t)qtc_tensor_nbytes(t));
        if (!tmp)
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory"), -1;
        qtc_rope_rows_to_hf(t->data, tmp, t->ne[0], (size_t)t->ne[1] * 4, k == QTC_LIN_Q ? p->mc.n_heads : p->mc.n_kv_heads);
        memcpy(t->data, tmp, qtc_tensor_nbytes(t));
        free(tmp);
    }
    return 1;
}

/* Every tensor of f must be one this adapter reads: a file with more is for another model or method. */
static qtc_status check_known(const qtc_peft *p, const qtc_model_file *f, qtc_error *err)
{
    int np = qtc_peft_params(p, NULL, 0);
    for (int i = 0; i < f->n_tensors; i++) {
        int known = 0;
        char name[QTC_NAME_MAX];
        for (int j = 0; j < np && !known; j++)
            known = strcmp(qtc_peft_param_name(p, j, name, sizeof name), f->tensors[i].name) == 0;
        if (!known)
            return qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s' is not one qtc's %s adapters hold for this model",
                                 f->path, f->tensors[i].name, method_name[p->c.method]);
    }
    return QTC_OK;
}

static qtc_status parse_config(const char *path, qtc_peft_config *c, qtc_error *err)
{
    char *text = read_text(path, err);
    if (!text)
        return err->code;
    cJSON *o = cJSON_Parse(text);
    free(text);
    qtc_status rc = QTC_OK;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "peft_type");
    if (!o || !cJSON_IsString(type)) {
        rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: not an adapter configuration (no peft_type)", path);
        goto done;
    }
    const char *t = type->valuestring;
    c->method = strcmp(t, "LORA") == 0 ? QTC_PEFT_LORA : strcmp(t, "BOTTLENECK") == 0 ? QTC_PEFT_ADAPTER
                : strcmp(t, "PREFIX_TUNING") == 0 ? QTC_PEFT_PREFIX : (qtc_peft_method)-1;
    if ((int)c->method < 0) {
        rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: peft_type '%s' is not supported (LORA, BOTTLENECK, PREFIX_TUNING)", path, t);
        goto done;
    }
    const char *num = c->method == QTC_PEFT_LORA ? "r" : c->method == QTC_PEFT_ADAPTER ? "bottleneck_size" : "num_virtual_tokens";
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, num);
    if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble > 65536 || r->valuedouble != floor(r->valuedouble)) {
        rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: '%s' is missing or not a positive integer", path, num);
        goto done;
    }
    if (c->method == QTC_PEFT_PREFIX)
        c->prefix_len = r->valueint;
    else
        c->r = r->valueint;
    if (c->method == QTC_PEFT_LORA) {
        const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(o, "lora_alpha");
        c->alpha = cJSON_IsNumber(alpha) ? (float)alpha->valuedouble : 8.0f; /* PEFT's default */
        c->rslora = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "use_rslora"));
        const cJSON *drop = cJSON_GetObjectItemCaseSensitive(o, "lora_dropout");
        c->dropout = cJSON_IsNumber(drop) ? (float)drop->valuedouble : 0.0f;
        static const char *unsupported[] = {"use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "modules_to_save",
                                            "layer_replication"};
        for (size_t k = 0; k < sizeof unsupported / sizeof *unsupported; k++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, unsupported[k]);
            int set = cJSON_IsTrue(v) || (cJSON_IsObject(v) && v->child) || (cJSON_IsArray(v) && v->child);
            if (set) {
                rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: '%s' is set: qtc does not support it yet", path, unsupported[k]);
                goto done;
            }
        }
        const cJSON *bias = cJSON_GetObjectItemCaseSensitive(o, "bias");
        if (cJSON_IsString(bias) && strcmp(bias->valuestring, "none") != 0) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: bias '%s': qtc adapters have no bias terms", path, bias->valuestring);
            goto done;
        }
    }
done:
    cJSON_Delete(o);
    return rc;
}

qtc_peft *qtc_peft_load(const char *path, const qtc_llama_config *mc, qtc_error *err)
{
    qtc_peft_config c;
    memset(&c, 0, sizeof c);
    int gguf = !qtc_path_is_dir(path);
    char file[QTC_PATH_MAX];
    if (!gguf && (qtc_path_join(file, path, "adapter_config.json", err) != QTC_OK || parse_config(file, &c, err) != QTC_OK))
        return NULL;
    if (!gguf && qtc_path_join(file, path, "adapter_model.safetensors", err) != QTC_OK)
        return NULL;
    if (gguf && (size_t)snprintf(file, sizeof file, "%s", path) >= sizeof file) {
        qtc_error_set(err, QTC_ERR_USAGE, "a path longer than %d bytes: %s", QTC_PATH_MAX - 1, path);
        return NULL;
    }
    qtc_model_file *f = qtc_model_open(file, err);
    if (!f)
        return NULL;
    qtc_peft *p = NULL;
    if (gguf) {
        const char *type = qtc_kvs_str(&f->meta, "general.type"), *atype = qtc_kvs_str(&f->meta, "adapter.type");
        const char *arch = qtc_kvs_str(&f->meta, "general.architecture");
        if (f->format != QTC_FMT_GGUF || !type || strcmp(type, "adapter") != 0 || !atype || strcmp(atype, "lora") != 0) {
            qtc_error_set(err, QTC_ERR_INPUT, "%s: neither a PEFT folder nor a GGUF LoRA adapter (general.type=adapter, adapter.type=lora)", path);
            goto fail;
        }
        if (!arch || strcmp(arch, "llama") != 0) {
            qtc_error_set(err, QTC_ERR_INPUT, "%s: an adapter for architecture '%s', not llama", path, arch ? arch : "?");
            goto fail;
        }
        c.method = QTC_PEFT_LORA;
        c.alpha = (float)qtc_kvs_num(&f->meta, "adapter.lora.alpha", 0);
    }
    if (f->has_config && (f->config.dim != mc->dim || f->config.n_layers != mc->n_layers || f->config.hidden != mc->hidden)) {
        qtc_error_set(err, QTC_ERR_INPUT, "%s: an adapter for a model of %d layers of width %d (hidden %d); this one has %d of %d (%d)",
                      path, f->config.n_layers, f->config.dim, f->config.hidden, mc->n_layers, mc->dim, mc->hidden);
        goto fail;
    }
    if (!(p = calloc(1, sizeof *p))) {
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto fail;
    }
    p->c = c;
    p->mc = *mc;
    const int L = mc->n_layers;
    const int64_t D = mc->dim, KV = (int64_t)mc->n_kv_heads * mc->head_dim;
    if (c.method == QTC_PEFT_LORA) {
        snprintf(p->c.target, sizeof p->c.target, "(from %s)", path);
        if (!(p->lora_a = calloc((size_t)L * QTC_N_LINEAR, sizeof *p->lora_a)) ||
            !(p->lora_b = calloc((size_t)L * QTC_N_LINEAR, sizeof *p->lora_b))) {
            qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
            goto fail;
        }
        int found = 0;
        for (int l = 0; l < L; l++)
            for (int k = 0; k < QTC_N_LINEAR; k++) {
                int got = load_pair(p, f, gguf, l, k, err);
                if (got < 0)
                    goto fail;
                found += got;
            }
        if (!found) {
            qtc_error_set(err, QTC_ERR_INPUT, "%s: no LoRA tensor for any linear layer of this model", path);
            goto fail;
        }
        if (gguf && p->c.alpha == 0) /* llama.cpp: alpha 0 means a scale of 1 */
            p->c.alpha = (float)p->c.r;
        p->scaling = p->c.rslora ? p->c.alpha / sqrtf((float)p->c.r) : p->c.alpha / (float)p->c.r;
    } else if (c.method == QTC_PEFT_ADAPTER) {
        p->down = calloc((size_t)L * 2, sizeof *p->down);
        p->down_b = calloc((size_t)L * 2, sizeof *p->down);
        p->up = calloc((size_t)L * 2, sizeof *p->down);
        p->up_b = calloc((size_t)L * 2, sizeof *p->down);
        if (!p->down || !p->down_b || !p->up || !p->up_b) {
            qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
            goto fail;
        }
        for (int i = 0; i < 2 * L; i++) {
            char stem[96], name[128];
            snprintf(stem, sizeof stem, "base_model.model.model.layers.%d.%s_adapter", i / 2, i % 2 ? "mlp" : "attn");
            qtc_tensor **dst[4] = {&p->down[i], &p->down_b[i], &p->up[i], &p->up_b[i]};
            const char *suffix[4] = {"down.weight", "down.bias", "up.weight", "up.bias"};
            const int64_t rows[4] = {c.r, c.r, D, D}, cols[4] = {D, 0, c.r, 0};
            for (int k = 0; k < 4; k++) {
                snprintf(name, sizeof name, "%s.%s", stem, suffix[k]);
                if (!(*dst[k] = take(f, name, rows[k], cols[k], "the adapter", err)))
                    goto fail;
            }
        }
    } else {
        int i = qtc_model_find(f, "prompt_embeddings");
        qtc_tensor *pe = i >= 0 ? take(f, "prompt_embeddings", c.prefix_len, L * 2 * KV, "prefix tuning", err) : NULL;
        if (i < 0)
            qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor 'prompt_embeddings' is missing", file);
        p->prefix_k = calloc((size_t)L, sizeof *p->prefix_k);
        p->prefix_v = calloc((size_t)L, sizeof *p->prefix_v);
        if (!pe || !p->prefix_k || !p->prefix_v) {
            qtc_tensor_free(pe);
            if (pe)
                qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
            goto fail;
        }
        for (int l = 0; l < L; l++) {
            char name[64];
            snprintf(name, sizeof name, "prefix.%d", l);
            p->prefix_k[l] = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(c.prefix_len, KV), err);
            p->prefix_v[l] = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(c.prefix_len, KV), err);
            if (!p->prefix_k[l] || !p->prefix_v[l] || qtc_tensor_require_grad(p->prefix_k[l], err) ||
                qtc_tensor_require_grad(p->prefix_v[l], err)) {
                qtc_tensor_free(pe);
                goto fail;
            }
            snprintf(p->prefix_k[l]->name, sizeof p->prefix_k[l]->name, "%s", name);
            snprintf(p->prefix_v[l]->name, sizeof p->prefix_v[l]->name, "%s", name);
            for (int64_t r = 0; r < c.prefix_len; r++) {
                memcpy((float *)p->prefix_k[l]->data + r * KV, (float *)pe->data + r * L * 2 * KV + 2 * l * KV, (size_t)KV * 4);
                memcpy((float *)p->prefix_v[l]->data + r * KV, (float *)pe->data + r * L * 2 * KV + (2 * l + 1) * KV, (size_t)KV * 4);
            }
        }
        qtc_tensor_free(pe);
    }
    if (!gguf && c.method != QTC_PEFT_PREFIX && check_known(p, f, err) != QTC_OK)
        goto fail;
    if (gguf) { /* every tensor must be a lora_a/lora_b of this model */
        for (int i = 0; i < f->n_tensors; i++) {
            int known = 0;
            for (int j = 0; j < L * QTC_N_LINEAR && !known; j++) {
                if (!p->lora_a[j])
                    continue;
                known = strcmp(p->lora_a[j]->name, f->tensors[i].name) == 0 || strcmp(p->lora_b[j]->name, f->tensors[i].name) == 0;
            }
            if (!known) {
                qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s' is not a LoRA tensor of this model", path, f->tensors[i].name);
                goto fail;
            }
        }
    }
    qtc_model_close(f);
    return p;
fail:
    qtc_peft_free(p);
    qtc_model_close(f);
    return NULL;
}
