/* gguf.c: GGUF v3 (v2 is read too: the same layout).
 *
 *   u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv x { string key; u32 type; value }       string = u64 len + bytes
 *   n_tensors x { string name; u32 n_dims; u64 ne[n_dims]; u32 ggml_type; u64 offset }
 *   0x00 padding to general.alignment (default 32) | data section
 * ne[0] is the contiguous dimension (HF's last). Tensor offsets are relative
 * to the data section and multiples of the alignment. Little-endian only:
 * big-endian files cannot be told apart and are not supported.
 * Deliberately left out: nested arrays in metadata (no llama.cpp file uses them). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert_private.h"
#include "qtc/quant.h"

typedef struct cursor {
    const unsigned char *p;
    size_t size, pos;
    const char *file;
    qtc_error *err;
    int failed;
} cursor;

static int need(cursor *c, uint64_t n, const char *what)
{
    if (c->failed)
        return 0;
    if (n > c->size - c->pos) {
        qtc_error_set(c->err, QTC_ERR_INPUT, "%s: %s at byte %zu runs past the end of the file (%zu bytes)",
                      c->file, what, c->pos, c->size);
        c->failed = 1;
        return 0;
    }
    return 1;
}

static uint64_t rd(cursor *c, int bytes, const char *what)
{
    if (!need(c, (uint64_t)bytes, what))
        return 0;
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--)
        v = (v << 8) | c->p[c->pos + (size_t)i];
    c->pos += (size_t)bytes;
    return v;
}

/* A string as a pointer into the file and its length. */
static const char *rd_str(cursor *c, uint64_t *len, const char *what)
{
    *len = rd(c, 8, what);
    if (!need(c, *len, what))
        return NULL;
    const char *s = (const char *)c->p + c->pos;
    c->pos += (size_t)*len;
    return s;
}

static qtc_status read_kv(cursor *c, qtc_kvs *kvs)
{
    uint64_t klen;
    const char *k = rd_str(c, &klen, "a metadata key");
    if (c->failed)
        return QTC_ERR_INPUT;
    char key[256];
    if (klen >= sizeof key)
        return qtc_error_set(c->err, QTC_ERR_INPUT, "%s: a metadata key at byte %zu is %llu bytes long",
                             c->file, c->pos, (unsigned long long)klen);
    memcpy(key, k, klen);
    key[klen] = '\0';
    uint32_t type = (uint32_t)rd(c, 4, "a metadata type"), elem = type;
    uint64_t count = 1;
    if (type == QTC_KV_ARRAY) {
        elem = (uint32_t)rd(c, 4, "an array type");
        count = rd(c, 8, "an array length");
        if (elem == QTC_KV_ARRAY)
            return qtc_error_set(c->err, QTC_ERR_INPUT, "%s: metadata '%s': nested arrays are not supported", c->file, key);
    }
    if (c->failed)
        return QTC_ERR_INPUT;
    int esize = qtc_kv_type_size(elem);
    if (!esize)
        return qtc_error_set(c->err, QTC_ERR_INPUT, "%s: metadata '%s': unknown value type %u", c->file, key, elem);
    /* a lying count cannot make us allocate more than the file could hold */
    uint64_t min_bytes = elem == QTC_KV_STRING ? 8 : (uint64_t)esize;
    if (count > (c->size - c->pos) / min_bytes + 1)
        return qtc_error_set(c->err, QTC_ERR_INPUT, "%s: metadata '%s': %llu elements cannot fit in the file",
                             c->file, key, (unsigned long long)count);
    qtc_status rc;
    if (elem == QTC_KV_STRING) {
        qtc_str *s = calloc(count ? count : 1, sizeof *s);
        if (!s)
            return qtc_error_set(c->err, QTC_ERR_NOMEM, "out of memory");
        for (uint64_t i = 0; i < count && !c->failed; i++)
            s[i].ptr = (char *)(uintptr_t)rd_str(c, &s[i].len, key);
        rc = c->failed ? QTC_ERR_INPUT
             : type == QTC_KV_ARRAY ? qtc_kvs_set_array(kvs, key, elem, count, s)
                                    : qtc_kvs_set_array(kvs, key, elem, 1, s);
        if (rc == QTC_OK && type != QTC_KV_ARRAY) {
            qtc_kv *kv = (qtc_kv *)qtc_kvs_get(kvs, key);
            kv->type = QTC_KV_STRING;
            kv->elem_type = 0;
        }
        free(s);
    } else {
        if (!need(c, count * (uint64_t)esize, key))
            return QTC_ERR_INPUT;
        const void *vals = c->p + c->pos;
        c->pos += (size_t)(count * (uint64_t)esize);
        rc = qtc_kvs_set_array(kvs, key, elem, count, vals);
        if (rc == QTC_OK && type != QTC_KV_ARRAY) {
            qtc_kv *kv = (qtc_kv *)qtc_kvs_get(kvs, key);
            kv->type = elem;
            kv->elem_type = 0;
        }
    }
    if (rc == QTC_ERR_NOMEM)
        qtc_error_set(c->err, QTC_ERR_NOMEM, "out of memory");
    return rc;
}

/* llama.cpp's tensor names and their HF counterparts; N is the layer. */
static const struct {
    const char *gguf, *hf;
} name_map[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
    {"blk.N.attn_norm.weight", "model.layers.N.input_layernorm.weight"},
    {"blk.N.attn_q.weight", "model.layers.N.self_attn.q_proj.weight"},
    {"blk.N.attn_k.weight", "model.layers.N.self_attn.k_proj.weight"},
    {"blk.N.attn_v.weight", "model.layers.N.self_attn.v_proj.weight"},
    {"blk.N.attn_output.weight", "model.layers.N.self_attn.o_proj.weight"},
    {"blk.N.ffn_norm.weight", "model.layers.N.post_attention_layernorm.weight"},
    {"blk.N.ffn_gate.weight", "model.layers.N.mlp.gate_proj.weight"},
    {"blk.N.ffn_up.weight", "model.layers.N.mlp.up_proj.weight"},
    {"blk.N.ffn_down.weight", "model.layers.N.mlp.down_proj.weight"},
};

/* Matches name against a pattern with one N (a layer number); fills *layer. */
static int match(const char *pat, const char *name, long *layer)
{
    const char *n = strchr(pat, 'N');
    if (!n)
        return strcmp(pat, name) == 0;
    size_t pre = (size_t)(n - pat);
    if (strncmp(pat, name, pre) != 0)
        return 0;
    char *end;
    const char *digits = name + pre;
    if (*digits < '0' || *digits > '9')
        return 0;
    *layer = strtol(digits, &end, 10);
    return strcmp(end, n + 1) == 0;
}

static void expand(const char *pat, long layer, char *out, size_t cap)
{
    const char *n = strchr(pat, 'N');
    if (!n)
        snprintf(out, cap, "%s", pat);
    else
        snprintf(out, cap, "%.*s%ld%s", (int)(n - pat), pat, layer, n + 1);
}

static void map_name(const char *from, int to_hf, char *out, size_t cap)
{
    for (size_t i = 0; i < sizeof name_map / sizeof *name_map; i++) {
        long layer = 0;
        const char *src = to_hf ? name_map[i].gguf : name_map[i].hf;
        const char *dst = to_hf ? name_map[i].hf : name_map[i].gguf;
        if (match(src, from, &layer)) {
            expand(dst, layer, out, cap);
            return;
        }
    }
    snprintf(out, cap, "%s", from);
}

const char *qtc_layer_weight_name(int layer, const char *part, char *buf, size_t cap)
{
    snprintf(buf, cap, "model.layers.%d.%s.weight", layer, part);
    return buf;
}

const char *qtc_gguf_name(const char *hf_name, char *buf, size_t cap)
{
    map_name(hf_name, 0, buf, cap);
    return buf;
}

const char *qtc_hf_name(const char *gguf_name, char *buf, size_t cap)
{
    map_name(gguf_name, 1, buf, cap);
    return buf;
}

static int by_data(const void *a, const void *b)
{
    const qtc_tensor_entry *x = *(const qtc_tensor_entry *const *)a, *y = *(const qtc_tensor_entry *const *)b;
    return x->data < y->data ? -1 : x->data > y->data;
}

/* Tensors whose bytes overlap mean a lying header. */
static qtc_status check_overlaps(qtc_model_file *m, int first, int n, const char *file, qtc_error *err)
{
    const qtc_tensor_entry **by = malloc((size_t)(n ? n : 1) * sizeof *by);
    if (!by)
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++)
        by[i] = &m->tensors[first + i];
    qsort(by, (size_t)n, sizeof *by, by_data);
    qtc_status rc = QTC_OK;
    for (int i = 1; i < n && rc == QTC_OK; i++)
        if (by[i - 1]->data + by[i - 1]->nbytes > by[i]->data && by[i]->nbytes)
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensors '%s' and '%s' overlap", file, by[i - 1]->name, by[i]->name);
    free(by);
    return rc;
}

qtc_status gguf_parse(qtc_model_file *m, int in_index, qtc_error *err)
{
    const qtc_in *in = &m->inputs[in_index];
    cursor c = {in->data, in->size, 0, in->name, err, 0};
    rd(&c, 4, "the magic");
    uint32_t version = (uint32_t)rd(&c, 4, "the version");
    uint64_t n_tensors = rd(&c, 8, "the tensor count"), n_kv = rd(&c, 8, "the metadata count");
    if (c.failed)
        return QTC_ERR_INPUT;
    if (version != 2 && version != 3)
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: GGUF version %u (qtc reads 2 and 3)", in->name, version);
    /* every KV takes at least 12 bytes and every tensor info at least 24 */
    if (n_kv > in->size / 12 || n_tensors > in->size / 24)
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: %llu tensors and %llu metadata entries cannot fit in %zu bytes",
                             in->name, (unsigned long long)n_tensors, (unsigned long long)n_kv, in->size);
    for (uint64_t i = 0; i < n_kv; i++)
        if (read_kv(&c, &m->meta) != QTC_OK)
            return err ? err->code : QTC_ERR_INPUT;
    uint64_t alignment = (uint64_t)qtc_kvs_num(&m->meta, "general.alignment", 32);
    if (alignment == 0 || alignment % 8 || alignment > (1u << 20))
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: general.alignment %llu is not a multiple of 8", in->name,
                             (unsigned long long)alignment);
    int n_head = (int)qtc_kvs_num(&m->meta, "llama.attention.head_count", 0);
    int n_head_kv = (int)qtc_kvs_num(&m->meta, "llama.attention.head_count_kv", n_head);
    int first = m->n_tensors;
    uint64_t *offsets = calloc(n_tensors ? n_tensors : 1, sizeof *offsets);
    if (!offsets)
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    qtc_status rc = QTC_OK;
    for (uint64_t t = 0; t < n_tensors; t++) {
        uint64_t nlen;
        const char *nm = rd_str(&c, &nlen, "a tensor name");
        uint32_t n_dims = (uint32_t)rd(&c, 4, "a tensor's dimension count");
        if (c.failed) {
            rc = QTC_ERR_INPUT;
            goto done;
        }
        char name[QTC_NAME_MAX];
        if (nlen >= 64) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor %llu: name of %llu bytes (GGUF allows 63)", in->name,
                               (unsigned long long)t, (unsigned long long)nlen);
            goto done;
        }
        memcpy(name, nm, nlen);
        name[nlen] = '\0';
        if (n_dims > QTC_MAX_DIMS) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': %u dimensions (at most %d)", in->name, name, n_dims, QTC_MAX_DIMS);
            goto done;
        }
        int64_t ne[QTC_MAX_DIMS];
        for (uint32_t d = 0; d < n_dims; d++) {
            uint64_t v = rd(&c, 8, "a tensor dimension");
            if (v > (uint64_t)QTC_MAX_NUMEL) {
                rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': dimension %u = %llu is absurd", in->name, name, d,
                                   (unsigned long long)v);
                goto done;
            }
            ne[n_dims - 1 - d] = (int64_t)v; /* HF order: ne[0] is the innermost */
        }
        uint32_t gtype = (uint32_t)rd(&c, 4, "a tensor type");
        offsets[t] = rd(&c, 8, "a tensor offset");
        if (c.failed) {
            rc = QTC_ERR_INPUT;
            goto done;
        }
        int dtype = qtc_dtype_from_ggml(gtype);
        if (dtype < 0) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': ggml type %u is not supported", in->name, name, gtype);
            goto done;
        }
        qtc_tensor_entry *e = model_add_entry(m, err);
        if (!e) {
            rc = QTC_ERR_NOMEM;
            goto done;
        }
        map_name(name, 1, e->name, sizeof e->name);
        if (qtc_model_find(m, e->name) < m->n_tensors - 1) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s' appears twice", in->name, name);
            goto done;
        }
        e->dtype = (qtc_dtype)dtype;
        e->ndim = (int)n_dims;
        for (int d = 0; d < QTC_MAX_DIMS; d++)
            e->ne[d] = d < (int)n_dims ? ne[d] : 1;
        e->input = in_index;
        e->nbytes = entry_nbytes(e->dtype, e->ndim, e->ne);
        if (e->nbytes == SIZE_MAX) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': shape does not fit type %s (or its size overflows)",
                               in->name, name, qtc_dtype_info(e->dtype)->name);
            goto done;
        }
        size_t len = strlen(name); /* q/k weights only, not tensors named after them (a LoRA's lora_b) */
        if (len > 14 && strcmp(name + len - 14, ".attn_q.weight") == 0)
            e->rope_heads = n_head;
        else if (len > 14 && strcmp(name + len - 14, ".attn_k.weight") == 0)
            e->rope_heads = n_head_kv;
    }
    size_t data_start = (c.pos + alignment - 1) / alignment * alignment;
    if (data_start > in->size && n_tensors) {
        rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: the data section would start at byte %zu, past the end (%zu)",
                           in->name, data_start, in->size);
        goto done;
    }
    uint64_t data_size = data_start <= in->size ? in->size - data_start : 0;
    for (uint64_t t = 0; t < n_tensors; t++) {
        qtc_tensor_entry *e = &m->tensors[first + (int)t];
        if (offsets[t] % alignment) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': offset %llu is not a multiple of the alignment %llu",
                               in->name, e->name, (unsigned long long)offsets[t], (unsigned long long)alignment);
            goto done;
        }
        if (offsets[t] > data_size || e->nbytes > data_size - offsets[t]) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': data ends at byte %llu of a %llu-byte data section",
                               in->name, e->name, (unsigned long long)(offsets[t] + e->nbytes), (unsigned long long)data_size);
            goto done;
        }
        e->data = in->data + data_start + offsets[t];
    }
    rc = check_overlaps(m, first, (int)n_tensors, in->name, err);
done:
    free(offsets);
    return rc;
}
