/* writer.c: laying out and writing safetensors, GGUF and HF folders.
 *
 * The layout is fixed when the writer opens (every name, type and shape is
 * known), so tensors can then arrive in any order and go straight to their
 * offsets. GGUF gets llama.cpp's names and keys, and q/k rows in the
 * interleaved rotary order llama.cpp expects. */
#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "convert_private.h"
#include "qtc/quant.h"
#include "qtc/runtime.h"

#define GGUF_ALIGNMENT 32

struct qtc_model_writer {
    qtc_format fmt;
    int n;
    qtc_out_entry *e;
    uint64_t *offsets; /* of each tensor, relative to the data section */
    uint64_t data_start, data_size;
    char *written;
    int *rope_heads;   /* GGUF: q/k rows to permute to the interleaved layout */
    qtc_out *out;
    /* HF folder */
    char dir[QTC_PATH_MAX], tmpdir[QTC_PATH_MAX];
    char *config_json, *tokenizer_json;
};

/* The config JSON with extra's "qtc.quantization_config" (JSON text), if any,
 * set as its quantization_config. malloc'd; NULL on failure. */
static char *config_with_quant(const char *config_json, const qtc_kvs *extra)
{
    const char *qc = extra ? qtc_kvs_str(extra, "qtc.quantization_config") : NULL;
    if (!qc)
        return strdup(config_json);
    cJSON *o = cJSON_Parse(config_json), *q = cJSON_Parse(qc);
    char *out = NULL;
    if (cJSON_IsObject(o) && q) {
        cJSON_DeleteItemFromObjectCaseSensitive(o, "quantization_config");
        cJSON_AddItemToObject(o, "quantization_config", q);
        q = NULL;
        char *j = cJSON_Print(o);
        out = j ? strdup(j) : NULL;
        cJSON_free(j);
    }
    cJSON_Delete(q);
    cJSON_Delete(o);
    return out;
}

/* --- a growable byte buffer for GGUF headers ------------------------------------- */

typedef struct bytes {
    unsigned char *p;
    size_t n, cap;
    int failed;
} bytes;

static void put(bytes *b, const void *p, size_t n)
{
    if (b->failed)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        unsigned char *q = realloc(b->p, cap);
        if (!q) {
            b->failed = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void put_u32(bytes *b, uint32_t v)
{
    unsigned char c[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
    put(b, c, 4);
}

static void put_u64(bytes *b, uint64_t v)
{
    put_u32(b, (uint32_t)v);
    put_u32(b, (uint32_t)(v >> 32));
}

static void put_str(bytes *b, const char *s, uint64_t len)
{
    put_u64(b, len);
    put(b, s, (size_t)len);
}

static void put_kv(bytes *b, const qtc_kv *kv)
{
    put_str(b, kv->key, strlen(kv->key));
    put_u32(b, kv->type);
    uint32_t t = kv->type;
    if (kv->type == QTC_KV_ARRAY) {
        put_u32(b, kv->elem_type);
        put_u64(b, kv->count);
        t = kv->elem_type;
    }
    if (t == QTC_KV_STRING)
        for (uint64_t i = 0; i < kv->count; i++)
            put_str(b, ((qtc_str *)kv->vals)[i].ptr, ((qtc_str *)kv->vals)[i].len);
    else
        put(b, kv->vals, (size_t)kv->count * (size_t)qtc_kv_type_size(t));
}

/* llama.cpp's general.file_type for the type holding most weights. */
static uint32_t file_type_of(const qtc_out_entry *e, int n)
{
    static const struct {
        qtc_dtype t;
        uint32_t ftype;
    } ft[] = {{QTC_F32, 0}, {QTC_F16, 1}, {QTC_Q4_0, 2}, {QTC_Q4_1, 3}, {QTC_Q8_0, 7}, {QTC_Q5_0, 8},
              {QTC_Q5_1, 9}, {QTC_Q4_K, 14}, {QTC_Q5_K, 16}, {QTC_Q6_K, 18}, {QTC_BF16, 32}};
    double count[QTC_DTYPE_COUNT] = {0};
    for (int i = 0; i < n; i++) {
        double c = 1;
        for (int d = 0; d < e[i].ndim; d++)
            c *= (double)e[i].ne[d];
        if (e[i].ndim >= 2)
            count[e[i].dtype] += c;
    }
    int best = QTC_F32;
    for (int t = 0; t < QTC_DTYPE_COUNT; t++)
        if (count[t] > count[best])
            best = t;
    for (size_t i = 0; i < sizeof ft / sizeof *ft; i++)
        if ((int)ft[i].t == best)
            return ft[i].ftype;
    return 0;
}

static qtc_status gguf_metadata(qtc_kvs *kv, const qtc_model_file *src, const qtc_out_entry *e, int n,
                                const qtc_kvs *extra, qtc_error *err)
{
    if (!src || !src->has_config)
        return qtc_error_set(err, QTC_ERR_USAGE,
                             "GGUF output needs the model's llama configuration: give an HF folder, a GGUF, "
                             "a llama2.c checkpoint or a safetensors file written by qtc");
    const qtc_llama_config *c = &src->config;
    const char *name = src ? qtc_kvs_str(&src->meta, "general.name") : NULL;
    int quantized = 0;
    for (int i = 0; i < n; i++)
        quantized |= qtc_dtype_info(e[i].dtype)->is_quantized;
    int bad = qtc_kvs_set_str(kv, "general.architecture", "llama") ||
              qtc_kvs_set_str(kv, "general.name", name ? name : "qtc model") ||
              qtc_kvs_set_num(kv, "general.alignment", QTC_KV_U32, GGUF_ALIGNMENT) ||
              qtc_kvs_set_num(kv, "general.file_type", QTC_KV_U32, file_type_of(e, n)) ||
              (quantized && qtc_kvs_set_num(kv, "general.quantization_version", QTC_KV_U32, 2)) ||
              qtc_kvs_set_num(kv, "llama.context_length", QTC_KV_U32, c->ctx) ||
              qtc_kvs_set_num(kv, "llama.embedding_length", QTC_KV_U32, c->dim) ||
              qtc_kvs_set_num(kv, "llama.block_count", QTC_KV_U32, c->n_layers) ||
              qtc_kvs_set_num(kv, "llama.feed_forward_length", QTC_KV_U32, c->hidden) ||
              qtc_kvs_set_num(kv, "llama.rope.dimension_count", QTC_KV_U32, c->n_rot) ||
              qtc_kvs_set_num(kv, "llama.rope.freq_base", QTC_KV_F32, c->rope_theta) ||
              qtc_kvs_set_num(kv, "llama.attention.head_count", QTC_KV_U32, c->n_heads) ||
              qtc_kvs_set_num(kv, "llama.attention.head_count_kv", QTC_KV_U32, c->n_kv_heads) ||
              qtc_kvs_set_num(kv, "llama.attention.layer_norm_rms_epsilon", QTC_KV_F32, c->norm_eps) ||
              qtc_kvs_set_num(kv, "llama.vocab_size", QTC_KV_U32, c->vocab);
    if (!bad && c->head_dim != c->dim / c->n_heads)
        bad = qtc_kvs_set_num(kv, "llama.attention.key_length", QTC_KV_U32, c->head_dim) ||
              qtc_kvs_set_num(kv, "llama.attention.value_length", QTC_KV_U32, c->head_dim);
    if (bad)
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    /* the tokenizer, from whatever the source has (a model without one still converts) */
    qtc_kvs tok = {0};
    qtc_error tok_err;
    if (qtc_model_tokenizer_kvs(src, &tok, &tok_err) == QTC_OK)
        for (int i = 0; i < tok.n; i++)
            if (qtc_kvs_copy(kv, &tok.kv[i]) != QTC_OK) {
                qtc_kvs_free(&tok);
                return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
            }
    qtc_kvs_free(&tok);
    if (tok_err.code != QTC_OK && tok_err.code != QTC_ERR_INPUT)
        return qtc_error_set(err, tok_err.code, "%s", tok_err.msg);
    for (int i = 0; extra && i < extra->n; i++)
        if (qtc_kvs_copy(kv, &extra->kv[i]) != QTC_OK)
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    return QTC_OK;
}

static qtc_status layout_gguf(qtc_model_writer *w, const qtc_model_file *src, const qtc_kvs *extra,
                              qtc_error *err)
{
    qtc_kvs kv = {0};
    bytes b = {0};
    qtc_status rc = gguf_metadata(&kv, src, w->e, w->n, extra, err);
    if (rc != QTC_OK)
        goto done;
    w->rope_heads = calloc((size_t)(w->n ? w->n : 1), sizeof *w->rope_heads);
    if (!w->rope_heads) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto done;
    }
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, (uint64_t)w->n);
    put_u64(&b, (uint64_t)kv.n);
    for (int i = 0; i < kv.n; i++)
        put_kv(&b, &kv.kv[i]);
    uint64_t at = 0;
    for (int i = 0; i < w->n; i++) {
        const qtc_out_entry *e = &w->e[i];
        char gname[QTC_NAME_MAX];
        qtc_gguf_name(e->name, gname, sizeof gname);
        int ggml = qtc_dtype_to_ggml(e->dtype);
        if (strlen(gname) >= 64 || ggml < 0) {
            rc = qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': %s", e->name,
                               ggml < 0 ? "GGUF cannot store this type" : "name longer than GGUF's 63 bytes");
            goto done;
        }
        if (strstr(e->name, ".self_attn.q_proj.weight"))
            w->rope_heads[i] = src->config.n_heads;
        else if (strstr(e->name, ".self_attn.k_proj.weight"))
            w->rope_heads[i] = src->config.n_kv_heads;
        put_str(&b, gname, strlen(gname));
        put_u32(&b, (uint32_t)e->ndim);
        for (int d = e->ndim - 1; d >= 0; d--)
            put_u64(&b, (uint64_t)e->ne[d]);
        put_u32(&b, (uint32_t)ggml);
        put_u64(&b, at);
        w->offsets[i] = at;
        at += (entry_nbytes(e->dtype, e->ndim, e->ne) + GGUF_ALIGNMENT - 1) / GGUF_ALIGNMENT * GGUF_ALIGNMENT;
    }
    if (b.failed) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto done;
    }
    w->data_start = (b.n + GGUF_ALIGNMENT - 1) / GGUF_ALIGNMENT * GGUF_ALIGNMENT;
    w->data_size = at;
    rc = qtc_out_pwrite(w->out, b.p, b.n, 0, err);
done:
    free(b.p);
    qtc_kvs_free(&kv);
    return rc;
}

static qtc_status layout_safetensors(qtc_model_writer *w, const qtc_model_file *src, const qtc_kvs *extra,
                                     int lone_file, qtc_error *err)
{
    qtc_kvs meta = {0};
    char *cfg = NULL, *gkv = NULL, *header = NULL;
    int *order = malloc((size_t)(w->n ? w->n : 1) * sizeof *order);
    qtc_status rc = QTC_OK;
    if (!order || qtc_kvs_set_str(&meta, "format", "pt") || qtc_kvs_set_str(&meta, "qtc.version", qtc_version()))
        goto nomem;
    if (lone_file && src) { /* a single file keeps what a folder would hold beside it */
        if (src->has_config) {
            char *plain = src->config_json ? strdup(src->config_json) : carry_config_json(&src->config);
            cfg = plain ? config_with_quant(plain, extra) : NULL;
            free(plain);
            if (!cfg || qtc_kvs_set_str(&meta, "qtc.config", cfg))
                goto nomem;
        }
        if (src->tokenizer_json && qtc_kvs_set_str(&meta, "qtc.tokenizer", src->tokenizer_json))
            goto nomem;
        qtc_kvs tok = {0};
        qtc_error tok_err;
        if (!src->tokenizer_json && qtc_model_tokenizer_kvs(src, &tok, &tok_err) != QTC_OK &&
            tok_err.code != QTC_ERR_INPUT) { /* tokenizer.json travels as itself, below */
            rc = qtc_error_set(err, tok_err.code, "%s", tok_err.msg);
            goto done;
        }
        if (tok.n) {
            gkv = carry_kvs_to_json(&tok, "tokenizer.");
            if (!gkv || qtc_kvs_set_str(&meta, "qtc.gguf_kv", gkv)) {
                qtc_kvs_free(&tok);
                goto nomem;
            }
        }
        qtc_kvs_free(&tok);
    }
    for (int i = 0; extra && i < extra->n; i++)
        if (extra->kv[i].type == QTC_KV_STRING && strcmp(extra->kv[i].key, "qtc.quantization_config") != 0 &&
            qtc_kvs_copy(&meta, &extra->kv[i]))
            goto nomem;
    uint64_t len;
    header = safetensors_header(w->e, w->n, &meta, order, w->offsets, &len, err);
    if (!header) {
        rc = err->code;
        goto done;
    }
    unsigned char n8[8];
    for (int i = 0; i < 8; i++)
        n8[i] = (unsigned char)(len >> (8 * i));
    rc = qtc_out_pwrite(w->out, n8, 8, 0, err);
    if (rc == QTC_OK)
        rc = qtc_out_pwrite(w->out, header, (size_t)len, 8, err);
    w->data_start = 8 + len;
    w->data_size = 0;
    for (int i = 0; i < w->n; i++)
        w->data_size += entry_nbytes(w->e[i].dtype, w->e[i].ndim, w->e[i].ne);
    goto done;
nomem:
    rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
done:
    free(order);
    free(cfg);
    free(gkv);
    free(header);
    qtc_kvs_free(&meta);
    return rc;
}

qtc_model_writer *qtc_writer_open(const char *path, qtc_format fmt, int compress,
                                  const qtc_model_file *src, const qtc_out_entry *entries, int n,
                                  const qtc_kvs *extra, qtc_error *err)
{
    qtc_model_writer *w = calloc(1, sizeof *w);
    if (!w) {
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        return NULL;
    }
    w->fmt = fmt;
    w->n = n;
    w->e = malloc((size_t)(n ? n : 1) * sizeof *w->e);
    w->offsets = calloc((size_t)(n ? n : 1), sizeof *w->offsets);
    w->written = calloc((size_t)(n ? n : 1), 1);
    if (!w->e || !w->offsets || !w->written) {
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto fail;
    }
    memcpy(w->e, entries, (size_t)n * sizeof *w->e);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (strcmp(entries[i].name, entries[j].name) == 0) {
                qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s' is listed twice", entries[i].name);
                goto fail;
            }
    qtc_status rc;
    if (fmt == QTC_FMT_HF) {
        if (strcmp(path, "-") == 0 || compress) {
            qtc_error_set(err, QTC_ERR_USAGE, "an HF folder cannot go to standard output or through zstd");
            goto fail;
        }
        if (snprintf(w->dir, sizeof w->dir, "%s", path) >= (int)sizeof w->dir) {
            qtc_error_set(err, QTC_ERR_USAGE, "%s: the path is too long", path);
            goto fail;
        }
        size_t len = strlen(w->dir);
        while (len > 1 && w->dir[len - 1] == '/')
            w->dir[--len] = '\0';
        if (!qtc_path_is_dir(w->dir)) { /* build it beside its final name, rename when done */
            if (snprintf(w->tmpdir, sizeof w->tmpdir, "%s.tmp-XXXXXX", w->dir) >= (int)sizeof w->tmpdir) {
                qtc_error_set(err, QTC_ERR_USAGE, "%s: the path is too long", w->dir);
                goto fail;
            }
            if (!mkdtemp(w->tmpdir)) {
                qtc_error_set(err, QTC_ERR_IO, "%s: cannot create a folder: %s", w->dir, strerror(errno));
                goto fail;
            }
        }
        if (src && src->has_config) {
            char *plain = src->config_json ? strdup(src->config_json) : carry_config_json(&src->config);
            w->config_json = plain ? config_with_quant(plain, extra) : NULL;
            free(plain);
        }
        if (src && src->tokenizer_json)
            w->tokenizer_json = strdup(src->tokenizer_json);
        char file[QTC_PATH_MAX];
        if (qtc_path_join(file, w->tmpdir[0] ? w->tmpdir : w->dir, "model.safetensors", err) != QTC_OK ||
            !(w->out = qtc_out_open(file, 0, err)))
            goto fail;
        rc = layout_safetensors(w, src, extra, 0, err);
    } else if (fmt == QTC_FMT_SAFETENSORS || fmt == QTC_FMT_GGUF) {
        if (!(w->out = qtc_out_open(path, compress, err)))
            goto fail;
        rc = fmt == QTC_FMT_GGUF ? layout_gguf(w, src, extra, err) : layout_safetensors(w, src, extra, 1, err);
    } else {
        rc = qtc_error_set(err, QTC_ERR_USAGE, "qtc cannot write %s", qtc_format_name(fmt));
    }
    if (rc != QTC_OK)
        goto fail;
    return w;
fail:
    qtc_writer_abort(w);
    return NULL;
}

qtc_status qtc_writer_put(qtc_model_writer *w, int i, const qtc_tensor *t, qtc_error *err)
{
    const qtc_out_entry *e = &w->e[i];
    if (t->dtype != e->dtype || t->ndim != e->ndim || !qtc_tensor_is_contiguous(t))
        return qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': written as %s but laid out as %s", e->name,
                             qtc_dtype_info(t->dtype)->name, qtc_dtype_info(e->dtype)->name);
    for (int d = 0; d < e->ndim; d++)
        if (t->ne[d] != e->ne[d])
            return qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': shape differs from the layout", e->name);
    size_t nb = qtc_tensor_nbytes(t);
    uint64_t at = w->data_start + w->offsets[i];
    qtc_status rc;
    if (w->rope_heads && w->rope_heads[i] > 0 && e->ndim == 2) {
        int64_t rows = e->ne[0];
        if (rows % (2 * w->rope_heads[i]))
            return qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': %lld rows do not split into %d rotary heads",
                                 e->name, (long long)rows, w->rope_heads[i]);
        void *tmp = malloc(nb ? nb : 1);
        if (!tmp)
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        qtc_rope_rows_from_hf(t->data, tmp, rows, nb / (size_t)rows, w->rope_heads[i]);
        rc = qtc_out_pwrite(w->out, tmp, nb, at, err);
        free(tmp);
    } else {
        rc = qtc_out_pwrite(w->out, t->data, nb, at, err);
    }
    if (rc == QTC_OK)
        w->written[i] = 1;
    return rc;
}

static qtc_status write_text(const char *dir, const char *name, const char *text, qtc_error *err)
{
    char path[QTC_PATH_MAX];
    if (qtc_path_join(path, dir, name, err) != QTC_OK)
        return err->code;
    return qtc_write_file(path, text, strlen(text), err);
}

qtc_status qtc_writer_commit(qtc_model_writer *w, qtc_error *err)
{
    qtc_status rc = QTC_OK;
    for (int i = 0; i < w->n && rc == QTC_OK; i++)
        if (!w->written[i])
            rc = qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s' was never written", w->e[i].name);
    if (rc == QTC_OK && w->fmt == QTC_FMT_GGUF && w->data_size) {
        /* the zero padding after the last tensor, unless a tensor ends exactly there */
        int padded = 1;
        for (int i = 0; i < w->n; i++)
            if (w->offsets[i] + entry_nbytes(w->e[i].dtype, w->e[i].ndim, w->e[i].ne) == w->data_size)
                padded = 0;
        static const unsigned char zero = 0;
        if (padded)
            rc = qtc_out_pwrite(w->out, &zero, 1, w->data_start + w->data_size - 1, err);
    }
    if (rc != QTC_OK) {
        qtc_writer_abort(w);
        return rc;
    }
    rc = qtc_out_commit(w->out, err);
    w->out = NULL;
    if (rc == QTC_OK && w->fmt == QTC_FMT_HF) {
        const char *dir = w->tmpdir[0] ? w->tmpdir : w->dir;
        if (w->tokenizer_json)
            rc = write_text(dir, "tokenizer.json", w->tokenizer_json, err);
        if (rc == QTC_OK && w->config_json)
            rc = write_text(dir, "config.json", w->config_json, err);
        if (rc == QTC_OK && w->tmpdir[0]) {
            mode_t mask = umask(0); /* mkdtemp makes 0700 folders; give the usual 0777 & ~umask */
            umask(mask);
            chmod(w->tmpdir, 0777 & ~mask);
            if (rename(w->tmpdir, w->dir) != 0)
                rc = qtc_error_set(err, QTC_ERR_IO, "%s: cannot move the finished folder into place: %s", w->dir,
                                   strerror(errno));
            else
                w->tmpdir[0] = '\0';
        }
    }
    qtc_writer_abort(w); /* frees; removes a temporary folder left by a failure */
    return rc;
}

void qtc_writer_abort(qtc_model_writer *w)
{
    if (!w)
        return;
    qtc_out_abort(w->out);
    if (w->tmpdir[0]) {
        char path[QTC_PATH_MAX];
        const char *files[] = {"model.safetensors", "config.json", "tokenizer.json"};
        for (size_t i = 0; i < sizeof files / sizeof *files; i++)
            if (qtc_path_join(path, w->tmpdir, files[i], NULL) == QTC_OK)
                unlink(path);
        rmdir(w->tmpdir);
    }
    free(w->e);
    free(w->offsets);
    free(w->written);
    free(w->rope_heads);
    free(w->config_json);
    free(w->tokenizer_json);
    free(w);
}
