/* model.c: opening a model in any format, its tensors in HF layout, the llama
 * configuration from HF config.json or GGUF metadata, and the rotary row
 * permutations. */
#include <cJSON.h>
#include <dirent.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert_private.h"

const char *qtc_format_name(qtc_format f)
{
    switch (f) {
    case QTC_FMT_SAFETENSORS: return "safetensors";
    case QTC_FMT_GGUF: return "gguf";
    case QTC_FMT_LLAMA2C: return "llama2.c";
    case QTC_FMT_HF: return "hf";
    default: return "unknown";
    }
}

qtc_format qtc_format_from_name(const char *name)
{
    if (strcmp(name, "safetensors") == 0)
        return QTC_FMT_SAFETENSORS;
    if (strcmp(name, "gguf") == 0)
        return QTC_FMT_GGUF;
    if (strcmp(name, "hf") == 0)
        return QTC_FMT_HF;
    return QTC_FMT_UNKNOWN;
}

qtc_format qtc_format_from_path(const char *path)
{
    size_t n = strlen(path);
    if (n > 4 && strcmp(path + n - 4, ".zst") == 0)
        n -= 4;
    if (n >= 5 && strncmp(path + n - 5, ".gguf", 5) == 0)
        return QTC_FMT_GGUF;
    if (n >= 12 && strncmp(path + n - 12, ".safetensors", 12) == 0)
        return QTC_FMT_SAFETENSORS;
    if (n >= 1 && path[n - 1] == '/')
        return QTC_FMT_HF;
    return QTC_FMT_UNKNOWN;
}

qtc_tensor_entry *model_add_entry(qtc_model_file *m, qtc_error *err)
{
    if ((m->n_tensors & (m->n_tensors - 1)) == 0) { /* grow at powers of two */
        int cap = m->n_tensors ? 2 * m->n_tensors : 16;
        qtc_tensor_entry *t = realloc(m->tensors, (size_t)cap * sizeof *t);
        if (!t) {
            qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
            return NULL;
        }
        m->tensors = t;
    }
    qtc_tensor_entry *e = &m->tensors[m->n_tensors++];
    memset(e, 0, sizeof *e);
    return e;
}

int model_add_input(qtc_model_file *m, const char *path, qtc_error *err)
{
    qtc_in *ins = realloc(m->inputs, (size_t)(m->n_inputs + 1) * sizeof *ins);
    if (!ins) {
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        return -1;
    }
    m->inputs = ins;
    if (qtc_in_open(&ins[m->n_inputs], path, err) != QTC_OK)
        return -1;
    return m->n_inputs++;
}

int qtc_model_find(const qtc_model_file *m, const char *name)
{
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0)
            return i;
    return -1;
}

/* --- configuration ----------------------------------------------------------------- */

static int json_int(const cJSON *o, const char *key, int fallback)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsArray(v)) /* eos_token_id may be a list: take the first */
        v = cJSON_GetArrayItem(v, 0);
    return cJSON_IsNumber(v) ? (int)v->valuedouble : fallback;
}

static double json_num(const cJSON *o, const char *key, double fallback)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : fallback;
}

/* Sizes must be positive, heads must divide evenly: anything else is a lie. */
static qtc_status check_config(const qtc_llama_config *c, const char *what, qtc_error *err)
{
    if (c->dim <= 0 || c->hidden <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        c->vocab <= 0 || c->head_dim <= 0 || c->n_heads % c->n_kv_heads || c->head_dim % 2 ||
        c->n_rot <= 0 || c->n_rot > c->head_dim || c->n_rot % 2 || !(c->norm_eps > 0) || !(c->rope_theta > 0))
        return qtc_error_set(err, QTC_ERR_INPUT,
                             "%s: inconsistent llama configuration (dim %d, hidden %d, layers %d, heads %d/%d, "
                             "head_dim %d, vocab %d)", what, c->dim, c->hidden, c->n_layers, c->n_heads,
                             c->n_kv_heads, c->head_dim, c->vocab);
    return QTC_OK;
}

qtc_status qtc_config_from_json(qtc_llama_config *c, const char *json, const char *what, qtc_error *err)
{
    cJSON *o = cJSON_Parse(json);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: not a JSON object", what);
    }
    memset(c, 0, sizeof *c);
    c->dim = json_int(o, "hidden_size", 0);
    c->hidden = json_int(o, "intermediate_size", 0);
    c->n_layers = json_int(o, "num_hidden_layers", 0);
    c->n_heads = json_int(o, "num_attention_heads", 0);
    c->n_kv_heads = json_int(o, "num_key_value_heads", c->n_heads);
    c->vocab = json_int(o, "vocab_size", 0);
    c->ctx = json_int(o, "max_position_embeddings", 2048);
    c->head_dim = json_int(o, "head_dim", c->n_heads ? c->dim / c->n_heads : 0);
    c->n_rot = c->head_dim;
    c->norm_eps = (float)json_num(o, "rms_norm_eps", 1e-6);
    c->rope_theta = (float)json_num(o, "rope_theta", 10000.0);
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o, "rope_parameters");
    if (cJSON_IsObject(rp))
        c->rope_theta = (float)json_num(rp, "rope_theta", c->rope_theta);
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(o, "tie_word_embeddings");
    c->tied = cJSON_IsBool(tie) ? cJSON_IsTrue(tie) : 0;
    c->bos_id = json_int(o, "bos_token_id", -1);
    c->eos_id = json_int(o, "eos_token_id", -1);
    cJSON_Delete(o);
    return check_config(c, what, err);
}

qtc_status qtc_config_from_gguf(qtc_llama_config *c, const qtc_kvs *kv, const char *what, qtc_error *err)
{
    const char *arch = qtc_kvs_str(kv, "general.architecture");
    if (!arch)
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: no general.architecture", what);
    if (strcmp(arch, "llama") != 0)
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: architecture '%.40s' (qtc runs llama)", what, arch);
    memset(c, 0, sizeof *c);
    c->dim = (int)qtc_kvs_num(kv, "llama.embedding_length", 0);
    c->hidden = (int)qtc_kvs_num(kv, "llama.feed_forward_length", 0);
    c->n_layers = (int)qtc_kvs_num(kv, "llama.block_count", 0);
    c->n_heads = (int)qtc_kvs_num(kv, "llama.attention.head_count", 0);
    c->n_kv_heads = (int)qtc_kvs_num(kv, "llama.attention.head_count_kv", c->n_heads);
    c->ctx = (int)qtc_kvs_num(kv, "llama.context_length", 2048);
    c->head_dim = (int)qtc_kvs_num(kv, "llama.attention.key_length", c->n_heads ? c->dim / c->n_heads : 0);
    c->n_rot = (int)qtc_kvs_num(kv, "llama.rope.dimension_count", c->head_dim);
    c->norm_eps = (float)qtc_kvs_num(kv, "llama.attention.layer_norm_rms_epsilon", 1e-5);
    c->rope_theta = (float)qtc_kvs_num(kv, "llama.rope.freq_base", 10000.0);
    const qtc_kv *tokens = qtc_kvs_get(kv, "tokenizer.ggml.tokens");
    c->vocab = (int)qtc_kvs_num(kv, "llama.vocab_size", tokens ? (double)tokens->count : 0);
    c->bos_id = (int)qtc_kvs_num(kv, "tokenizer.ggml.bos_token_id", -1);
    c->eos_id = (int)qtc_kvs_num(kv, "tokenizer.ggml.eos_token_id", -1);
    return check_config(c, what, err);
}

/* --- rotary row permutations ---------------------------------------------------------------- */

static void permute_rows(const void *src, void *dst, int64_t rows, size_t row_bytes, int n_head, int to_hf)
{
    int64_t hd = rows / n_head, half = hd / 2;
    for (int64_t h = 0; h < n_head; h++)
        for (int64_t i = 0; i < half; i++)
            for (int s = 0; s < 2; s++) {
                int64_t inter = h * hd + 2 * i + s, hf = h * hd + s * half + i;
                int64_t from = to_hf ? inter : hf, to = to_hf ? hf : inter;
                memcpy((char *)dst + (size_t)to * row_bytes, (const char *)src + (size_t)from * row_bytes, row_bytes);
            }
}

void qtc_rope_rows_to_hf(const void *src, void *dst, int64_t rows, size_t row_bytes, int n_head)
{
    permute_rows(src, dst, rows, row_bytes, n_head, 1);
}

void qtc_rope_rows_from_hf(const void *src, void *dst, int64_t rows, size_t row_bytes, int n_head)
{
    permute_rows(src, dst, rows, row_bytes, n_head, 0);
}

qtc_tensor *qtc_model_tensor(const qtc_model_file *m, int i, qtc_error *err)
{
    const qtc_tensor_entry *e = &m->tensors[i];
    if (e->qparts.scheme_set) { /* a quantized layout: dequantized on load */
        qtc_qweight q;
        if (qtc_model_qweight(m, i, &q, err) != QTC_OK)
            return NULL;
        qtc_tensor *t = qtc_tensor_new(QTC_F32, 2, e->ne, err);
        if (t) {
            qtc_tensor_set_name(t, e->name);
            qtc_qweight_dequantize(&q, t->data);
        }
        qtc_qweight_free(&q);
        return t;
    }
    int64_t rows = e->ndim ? e->ne[0] : 1;
    if (e->rope_heads <= 0 || e->ndim != 2) {
        qtc_tensor *t = qtc_tensor_wrap(e->dtype, e->ndim, e->ne, (void *)(uintptr_t)e->data, NULL, err);
        if (t)
            qtc_tensor_set_name(t, e->name);
        return t;
    }
    if (rows % (2 * e->rope_heads)) {
        qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': %lld rows do not split into %d rotary heads",
                      m->inputs[e->input].name, e->name, (long long)rows, e->rope_heads);
        return NULL;
    }
    qtc_tensor *t = qtc_tensor_new(e->dtype, e->ndim, e->ne, err);
    if (!t)
        return NULL;
    qtc_tensor_set_name(t, e->name);
    qtc_rope_rows_to_hf(e->data, t->data, rows, e->nbytes / (size_t)rows, e->rope_heads);
    return t;
}

void qtc_model_forget(const qtc_model_file *m, int i)
{
    const qtc_tensor_entry *e = &m->tensors[i];
    const qtc_in *in = &m->inputs[e->input];
    if (!in->map || !e->nbytes)
        return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)e->data + page - 1) / page * page; /* whole pages inside the tensor only */
    uintptr_t hi = ((uintptr_t)e->data + e->nbytes) / page * page;
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* --- opening -------------------------------------------------------------------------------- */

qtc_model_file *qtc_model_ref(const qtc_model_file *m)
{
    qtc_model_file *w = (qtc_model_file *)(uintptr_t)m; /* the count is bookkeeping, not the file's contents */
    w->refs++;
    return w;
}

void qtc_model_close(qtc_model_file *m)
{
    if (!m)
        return;
    if (m->refs > 0) {
        m->refs--;
        return;
    }
    for (int i = 0; i < m->n_inputs; i++)
        qtc_in_close(&m->inputs[i]);
    free(m->inputs);
    free(m->tensors);
    qtc_kvs_free(&m->meta);
    free(m->config_json);
    free(m->tokenizer_json);
    free(m->tokenizer_bin);
    free(m);
}

static char *read_text(const char *path, qtc_error *err)
{
    qtc_in in;
    if (qtc_in_open(&in, path, err) != QTC_OK)
        return NULL;
    char *s = malloc(in.size + 1);
    if (!s)
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    else {
        memcpy(s, in.data, in.size);
        s[in.size] = '\0';
    }
    qtc_in_close(&in);
    return s;
}

static int file_exists(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f)
        fclose(f);
    return f != NULL;
}

/* An HF folder: config.json, then model.safetensors or the shards its index names. */
static qtc_status open_hf(qtc_model_file *m, const char *dir, qtc_error *err)
{
    char path[QTC_PATH_MAX];
    if (qtc_path_join(path, dir, "config.json", err) != QTC_OK)
        return err->code;
    m->config_json = read_text(path, err);
    if (!m->config_json)
        return err ? err->code : QTC_ERR_INPUT;
    if (qtc_config_from_json(&m->config, m->config_json, path, err) != QTC_OK)
        return err->code;
    m->has_config = 1;
    if (qtc_path_join(path, dir, "tokenizer.json", err) != QTC_OK)
        return err->code;
    if (file_exists(path) && !(m->tokenizer_json = read_text(path, err)))
        return err->code;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (file_exists(path)) {
        int in = model_add_input(m, path, err);
        return in < 0 ? err->code : safetensors_parse(m, in, err);
    }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    char *index = read_text(path, err);
    if (!index)
        return qtc_error_prefix(err, "%s: neither model.safetensors nor an index", dir);
    cJSON *o = cJSON_Parse(index);
    free(index);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(o, "weight_map");
    qtc_status rc = QTC_OK;
    if (!cJSON_IsObject(map)) {
        rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: no weight_map object", path);
        goto done;
    }
    /* each shard once, in the order the index first names it */
    for (const cJSON *it = map->child; it && rc == QTC_OK; it = it->next) {
        if (!cJSON_IsString(it) || strchr(it->valuestring, '/')) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s' maps to a bad shard name", path, it->string);
            break;
        }
        int seen = 0;
        for (const cJSON *p = map->child; p != it && !seen; p = p->next)
            seen = strcmp(p->valuestring, it->valuestring) == 0;
        if (seen)
            continue;
        char shard[QTC_PATH_MAX];
        if ((rc = qtc_path_join(shard, dir, it->valuestring, err)) != QTC_OK)
            break;
        int in = model_add_input(m, shard, err);
        rc = in < 0 ? err->code : safetensors_parse(m, in, err);
    }
    for (const cJSON *it = map->child; it && rc == QTC_OK; it = it->next)
        if (qtc_model_find(m, it->string) < 0)
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s' is not in shard %s", path, it->string, it->valuestring);
done:
    cJSON_Delete(o);
    return rc;
}

/* tokenizer.bin or tok*.bin beside a llama2.c checkpoint */
static void find_llama2c_tokenizer(qtc_model_file *m, const char *path)
{
    char dir[QTC_PATH_MAX];
    if ((size_t)snprintf(dir, sizeof dir, "%s", path) >= sizeof dir)
        return; /* a path too long to look beside */
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    char cand[QTC_PATH_MAX];
    if (qtc_path_join(cand, dir, "tokenizer.bin", NULL) == QTC_OK && file_exists(cand)) {
        m->tokenizer_bin = strdup(cand);
        return;
    }
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (strncmp(de->d_name, "tok", 3) == 0 && n > 4 && strcmp(de->d_name + n - 4, ".bin") == 0) {
            if (snprintf(cand, sizeof cand, "%s/%s", dir, de->d_name) >= (int)sizeof cand)
                continue; /* a path too long to open */
            m->tokenizer_bin = strdup(cand);
            break;
        }
    }
    closedir(d);
}

/* A safetensors file written by qtc carries the config, the tokenizer and the
 * GGUF tokenizer keys in its __metadata__ (see convert/carry.c). */
static qtc_status adopt_carried(qtc_model_file *m, const char *file, qtc_error *err)
{
    const char *cfg = qtc_kvs_str(&m->meta, "qtc.config");
    const char *tok = qtc_kvs_str(&m->meta, "qtc.tokenizer");
    const char *gkv = qtc_kvs_str(&m->meta, "qtc.gguf_kv");
    char what[4200];
    if (cfg) {
        snprintf(what, sizeof what, "%s: __metadata__ qtc.config", file);
        if (qtc_config_from_json(&m->config, cfg, what, err) != QTC_OK)
            return err->code;
        m->has_config = 1;
        if (!(m->config_json = strdup(cfg)))
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    }
    if (tok && !(m->tokenizer_json = strdup(tok)))
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    if (gkv) {
        char *copy = strdup(gkv); /* the setters below may move the string */
        if (!copy)
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        qtc_status rc = carry_kvs_from_json(&m->meta, copy, file, err);
        free(copy);
        return rc;
    }
    return QTC_OK;
}

qtc_model_file *qtc_model_open(const char *path, qtc_error *err)
{
    qtc_model_file *m = calloc(1, sizeof *m);
    if (!m) {
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        return NULL;
    }
    snprintf(m->path, sizeof m->path, "%s", path);
    qtc_status rc;
    if (qtc_path_is_dir(path)) {
        m->format = QTC_FMT_HF;
        rc = open_hf(m, path, err);
    } else {
        int in = model_add_input(m, path, err);
        if (in < 0) {
            qtc_model_close(m);
            return NULL;
        }
        const qtc_in *f = &m->inputs[in];
        if (f->size >= 4 && memcmp(f->data, "GGUF", 4) == 0) {
            m->format = QTC_FMT_GGUF;
            rc = gguf_parse(m, in, err);
            if (rc == QTC_OK && qtc_kvs_get(&m->meta, "llama.embedding_length")) {
                rc = qtc_config_from_gguf(&m->config, &m->meta, f->name, err);
                m->has_config = rc == QTC_OK;
                m->config.tied = qtc_model_find(m, "lm_head.weight") < 0;
            }
        } else if (llama2c_detect(f)) { /* no magic: a header that matches the size exactly */
            m->format = QTC_FMT_LLAMA2C;
            rc = llama2c_parse(m, in, err);
            if (rc == QTC_OK && strcmp(path, "-") != 0)
                find_llama2c_tokenizer(m, path);
        } else if (f->size >= 9 && f->data[8] == '{') {
            m->format = QTC_FMT_SAFETENSORS;
            rc = safetensors_parse(m, in, err);
            if (rc == QTC_OK)
                rc = adopt_carried(m, f->name, err);
        } else {
            rc = qtc_error_set(err, QTC_ERR_INPUT,
                               "%s: unknown model format (not safetensors, GGUF, llama2.c or a zstd frame of one)", f->name);
        }
    }
    if (rc == QTC_OK && (m->format == QTC_FMT_SAFETENSORS || m->format == QTC_FMT_HF))
        rc = qlayout_fold(m, err);
    if (rc != QTC_OK) {
        qtc_model_close(m);
        return NULL;
    }
    return m;
}
