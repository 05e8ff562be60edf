/* test_convert.c: model formats against the real models in ../shared, the
 * rotary permutation against the HF converter's formula, round trips through
 * every writer, zstd input, and a corpus of hostile files that must each be
 * rejected with QTC_ERR_INPUT and a message naming the problem. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "harness.h"
#include "qtc/convert.h"
#include "qtc/quant.h"
#include "qtc/rng.h"

static char tmpdir[256];

static const char *tmp(const char *name)
{
    static char path[512];
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/qtc-test-XXXXXX");
        if (!mkdtemp(tmpdir))
            return NULL;
    }
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    return path;
}

static int write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    size_t w = fwrite(p, 1, n, f);
    return fclose(f) == 0 && w == n;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Writes every tensor of m to path in fmt, unchanged. */
static qtc_status copy_model(const qtc_model_file *m, const char *path, qtc_format fmt, int compress, qtc_error *err)
{
    qtc_out_entry *e = calloc((size_t)m->n_tensors, sizeof *e);
    for (int i = 0; i < m->n_tensors; i++) {
        snprintf(e[i].name, sizeof e[i].name, "%s", m->tensors[i].name);
        e[i].dtype = m->tensors[i].dtype;
        e[i].ndim = m->tensors[i].ndim;
        memcpy(e[i].ne, m->tensors[i].ne, sizeof e[i].ne);
    }
    qtc_model_writer *w = qtc_writer_open(path, fmt, compress, m, e, m->n_tensors, NULL, err);
    free(e);
    if (!w)
        return err->code;
    for (int i = m->n_tensors - 1; i >= 0; i--) { /* any order works */
        qtc_tensor *t = qtc_model_tensor(m, i, err);
        if (!t || qtc_writer_put(w, i, t, err) != QTC_OK) {
            qtc_tensor_free(t);
            qtc_writer_abort(w);
            return err->code;
        }
        qtc_tensor_free(t);
    }
    return qtc_writer_commit(w, err);
}

/* 1 when both models hold the same tensors with the same bytes (HF layout). */
static int same_tensors(const qtc_model_file *a, const qtc_model_file *b, char *why, size_t cap)
{
    qtc_error err;
    if (a->n_tensors != b->n_tensors) {
        snprintf(why, cap, "%d vs %d tensors", a->n_tensors, b->n_tensors);
        return 0;
    }
    for (int i = 0; i < a->n_tensors; i++) {
        int j = qtc_model_find(b, a->tensors[i].name);
        if (j < 0) {
            snprintf(why, cap, "'%s' missing", a->tensors[i].name);
            return 0;
        }
        qtc_tensor *x = qtc_model_tensor(a, i, &err), *y = qtc_model_tensor(b, j, &err);
        int same = x && y && x->dtype == y->dtype && qtc_tensor_same_shape(x, y) &&
                   memcmp(x->data, y->data, qtc_tensor_nbytes(x)) == 0;
        qtc_tensor_free(x);
        qtc_tensor_free(y);
        if (!same) {
            snprintf(why, cap, "'%s' differs", a->tensors[i].name);
            return 0;
        }
    }
    return 1;
}

TEST(llama2c_import_matches_the_hf_folder_tensor_for_tensor)
{
    qtc_error err;
    qtc_model_file *l2c = qtc_model_open(shared_path("models/stories260K/stories260K.bin"), &err);
    CHECK_MSG(l2c, "%s", err.msg);
    qtc_model_file *hf = qtc_model_open(shared_path("models/stories260K-hf"), &err);
    CHECK_MSG(hf, "%s", err.msg);
    CHECK(l2c->format == QTC_FMT_LLAMA2C && hf->format == QTC_FMT_HF);
    CHECK(l2c->config.dim == 64 && l2c->config.hidden == 172 && l2c->config.n_layers == 5 &&
          l2c->config.n_heads == 8 && l2c->config.n_kv_heads == 4 && l2c->config.vocab == 512 && l2c->config.tied);
    CHECK(hf->config.dim == 64 && hf->config.n_kv_heads == 4 && hf->config.tied);
    CHECK(l2c->tokenizer_bin && strstr(l2c->tokenizer_bin, "tok512.bin"));
    char why[256];
    CHECK_MSG(same_tensors(l2c, hf, why, sizeof why), "%s", why);
    qtc_model_close(l2c);
    qtc_model_close(hf);
}

TEST(rope_permutation_is_the_hf_converters_and_inverts)
{
    /* convert_hf_to_gguf's permute: reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2) */
    enum { H = 3, HD = 8, ROWS = H * HD, COLS = 5 };
    float hf[ROWS * COLS], inter[ROWS * COLS], want[ROWS * COLS], back[ROWS * COLS];
    for (int i = 0; i < ROWS * COLS; i++)
        hf[i] = (float)i;
    for (int h = 0; h < H; h++)
        for (int a = 0; a < 2; a++)
            for (int b = 0; b < HD / 2; b++) /* element [h][b][a] of the swapped array */
                memcpy(&want[((h * (HD / 2) + b) * 2 + a) * COLS], &hf[((h * 2 + a) * (HD / 2) + b) * COLS],
                       COLS * sizeof(float));
    qtc_rope_rows_from_hf(hf, inter, ROWS, COLS * sizeof(float), H);
    CHECK(memcmp(inter, want, sizeof want) == 0);
    qtc_rope_rows_to_hf(inter, back, ROWS, COLS * sizeof(float), H);
    CHECK(memcmp(back, hf, sizeof hf) == 0);
}

TEST(llama2c_to_safetensors_to_gguf_to_safetensors_is_bit_exact)
{
    qtc_error err;
    qtc_model_file *src = qtc_model_open(shared_path("models/stories260K/stories260K.bin"), &err);
    CHECK_MSG(src, "%s", err.msg);
    CHECK_MSG(copy_model(src, tmp("a.safetensors"), QTC_FMT_SAFETENSORS, 0, &err) == QTC_OK, "%s", err.msg);
    qtc_model_file *a = qtc_model_open(tmp("a.safetensors"), &err);
    CHECK_MSG(a && a->has_config && a->config.hidden == 172, "%s", err.msg);
    CHECK(qtc_kvs_get(&a->meta, "tokenizer.ggml.tokens")); /* carried in __metadata__ */
    CHECK_MSG(copy_model(a, tmp("b.gguf"), QTC_FMT_GGUF, 0, &err) == QTC_OK, "%s", err.msg);
    qtc_model_file *b = qtc_model_open(tmp("b.gguf"), &err);
    CHECK_MSG(b, "%s", err.msg);
    CHECK(b->config.n_kv_heads == 4 && b->config.tied && qtc_model_find(b, "lm_head.weight") < 0);
    const qtc_kv *toks = qtc_kvs_get(&b->meta, "tokenizer.ggml.tokens");
    CHECK(toks && toks->count == 512 && strcmp(((qtc_str *)toks->vals)[1].ptr, "<s>") == 0);
    CHECK(strcmp(((qtc_str *)toks->vals)[3].ptr, "<0x00>") == 0);
    CHECK(qtc_kvs_num(&b->meta, "general.alignment", 0) == 32);
    /* in the GGUF itself the q rows are interleaved again, as in llama2.c */
    int q = qtc_model_find(b, "model.layers.2.self_attn.q_proj.weight");
    int q0 = qtc_model_find(src, "model.layers.2.self_attn.q_proj.weight");
    CHECK(memcmp(b->tensors[q].data, src->tensors[q0].data, src->tensors[q0].nbytes) == 0);
    CHECK_MSG(copy_model(b, tmp("c.safetensors"), QTC_FMT_SAFETENSORS, 1, &err) == QTC_OK, "%s", err.msg);
    qtc_model_file *c = qtc_model_open(tmp("c.safetensors"), &err); /* a zstd frame, read by its magic */
    CHECK_MSG(c && c->inputs[0].was_zstd, "%s", c ? "not zstd" : err.msg);
    char why[256];
    CHECK_MSG(same_tensors(src, c, why, sizeof why), "%s", why);
    CHECK_MSG(copy_model(c, tmp("hf-out"), QTC_FMT_HF, 0, &err) == QTC_OK, "%s", err.msg);
    qtc_model_file *d = qtc_model_open(tmp("hf-out"), &err);
    CHECK_MSG(d && d->format == QTC_FMT_HF && d->config.vocab == 512, "%s", err.msg);
    CHECK_MSG(same_tensors(src, d, why, sizeof why), "%s", why);
    qtc_model_close(src);
    qtc_model_close(a);
    qtc_model_close(b);
    qtc_model_close(c);
    qtc_model_close(d);
}

TEST(gguf_reader_reads_llama_cpps_own_file)
{
    qtc_error err;
    qtc_model_file *m = qtc_model_open(shared_path("models/tiny-random/llama-2-tiny-random.gguf"), &err);
    CHECK_MSG(m, "%s", err.msg);
    CHECK(m->n_tensors == 12 && m->config.dim == 8 && m->config.n_rot == 4 && !m->config.tied);
    int e = qtc_model_find(m, "model.embed_tokens.weight");
    CHECK(e >= 0 && m->tensors[e].dtype == QTC_F16 && m->tensors[e].ne[0] == 32000 && m->tensors[e].ne[1] == 8);
    CHECK(strcmp(qtc_kvs_str(&m->meta, "tokenizer.ggml.model"), "llama") == 0);
    /* and it survives our writer unchanged */
    CHECK_MSG(copy_model(m, tmp("tiny.gguf"), QTC_FMT_GGUF, 0, &err) == QTC_OK, "%s", err.msg);
    qtc_model_file *b = qtc_model_open(tmp("tiny.gguf"), &err);
    char why[256];
    CHECK_MSG(b && same_tensors(m, b, why, sizeof why), "%s", b ? why : err.msg);
    CHECK(qtc_kvs_get(&b->meta, "tokenizer.ggml.scores")->count == 32000);
    qtc_model_close(m);
    qtc_model_close(b);
}

TEST(writer_abort_leaves_no_file_and_commit_checks_every_tensor_was_written)
{
    qtc_error err;
    qtc_out_entry e[2] = {{"a", QTC_F32, 1, {4, 1, 1, 1}}, {"b", QTC_F16, 2, {2, 3, 1, 1}}};
    const char *path = tmp("partial.safetensors");
    qtc_model_writer *w = qtc_writer_open(path, QTC_FMT_SAFETENSORS, 0, NULL, e, 2, NULL, &err);
    CHECK(w);
    float four[4] = {1, 2, 3, 4};
    qtc_tensor *t = qtc_tensor_wrap(QTC_F32, 1, QTC_SHAPE(4), four, NULL, &err);
    CHECK(qtc_writer_put(w, 0, t, &err) == QTC_OK);
    CHECK(qtc_writer_put(w, 1, t, &err) == QTC_ERR_USAGE); /* wrong type for b */
    CHECK(qtc_writer_commit(w, &err) == QTC_ERR_USAGE && strstr(err.msg, "'b'"));
    CHECK(!file_exists(path));
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls %s | grep -q partial", tmpdir);
    CHECK(system(cmd) != 0); /* no temporary file left behind either */
    qtc_tensor_free(t);
}

/* --- hostile files ------------------------------------------------------------------------- */

/* Opens bytes written to a file; expects rejection with a message containing want. */
static int rejects(const char *label, const void *bytes, size_t n, const char *want)
{
    qtc_error err;
    const char *path = tmp("hostile.bin");
    write_file(path, bytes, n);
    qtc_model_file *m = qtc_model_open(path, &err);
    if (m) {
        test_fail(__FILE__, __LINE__, "%s: accepted", label);
        qtc_model_close(m);
        return 0;
    }
    if (err.code != QTC_ERR_INPUT || !strstr(err.msg, "hostile.bin") || (want && !strstr(err.msg, want))) {
        test_fail(__FILE__, __LINE__, "%s: code %d, message '%s' (want '%s')", label, err.code, err.msg, want ? want : "");
        return 0;
    }
    return 1;
}

static size_t st_file(char *buf, size_t cap, const char *header, size_t data_bytes)
{
    size_t n = strlen(header);
    uint64_t len = n;
    memcpy(buf, &len, 8);
    memcpy(buf + 8, header, n);
    memset(buf + 8 + n, 0x3f, data_bytes);
    (void)cap;
    return 8 + n + data_bytes;
}

TEST(hostile_safetensors_files_are_rejected_with_the_cause)
{
    static char b[4096];
    size_t n;
    const char *ok = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
    n = st_file(b, sizeof b, ok, 16);
    qtc_error err;
    write_file(tmp("ok.safetensors"), b, n);
    qtc_model_file *m = qtc_model_open(tmp("ok.safetensors"), &err);
    CHECK_MSG(m && m->n_tensors == 1, "the valid file: %s", err.msg);
    qtc_model_close(m);
    for (size_t cut = 9; cut < n; cut++) /* every truncation */
        if (!rejects("truncated", b, cut, NULL))
            return;
    uint64_t huge = 2000000000ull;
    memcpy(b, &huge, 8);
    CHECK(rejects("2 GB header length", b, n, "100 MB"));
    huge = 5000;
    memcpy(b, &huge, 8);
    CHECK(rejects("header past the end", b, n, "past the end"));
    struct {
        const char *label, *header, *want;
        size_t data;
    } cases[] = {
        {"not JSON", "{\"w\":{\"dtype\":", "not a JSON object", 16},
        {"bad dtype", "{\"w\":{\"dtype\":\"C64\",\"shape\":[2],\"data_offsets\":[0,16]}}", "C64", 16},
        {"size mismatch", "{\"w\":{\"dtype\":\"F32\",\"shape\":[3,2],\"data_offsets\":[0,16]}}", "needs 24", 16},
        {"data past the buffer", "{\"w\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]}}", "data ends at byte 32", 16},
        {"overlap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", "overlap", 16},
        {"hole", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}", "hole", 16},
        {"uncovered tail", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "cover 8 bytes of a 16", 16},
        {"shape overflow", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,16]}}", "overflow", 16},
        {"negative shape", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}", "sensible", 16},
        {"five dims", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,4],\"data_offsets\":[0,16]}}", "5 dimensions", 16},
        {"reversed offsets", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,0]}}", "increasing", 16},
        {"duplicate", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", "twice", 16},
        {"metadata not a string", "{\"__metadata__\":{\"a\":1},\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", "not a string", 16},
        {"fractional offset", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0.5,16]}}", "increasing", 16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        n = st_file(b, sizeof b, cases[i].header, cases[i].data);
        if (!rejects(cases[i].label, b, n, cases[i].want))
            return;
    }
}

/* A minimal valid GGUF: one KV, one 4-float tensor. */
static size_t gguf_file(unsigned char *b, uint64_t n_tensors, uint64_t n_kv, uint32_t gtype, uint64_t dim0,
                        uint64_t offset)
{
    size_t o = 0;
#define PUT(v, sz) do { uint64_t v_ = (v); memcpy(b + o, &v_, sz); o += sz; } while (0)
    memcpy(b, "GGUF", 4);
    o = 4;
    PUT(3, 4);
    PUT(n_tensors, 8);
    PUT(n_kv, 8);
    PUT(17, 8);
    memcpy(b + o, "general.test_key1", 17);
    o += 17;
    PUT(QTC_KV_U32, 4);
    PUT(7, 4);
    PUT(1, 8);
    b[o++] = 'w';
    PUT(1, 4);
    PUT(dim0, 8);
    PUT(gtype, 4);
    PUT(offset, 8);
    while (o % 32)
        b[o++] = 0;
    memset(b + o, 0, 16);
    return o + 16;
#undef PUT
}

TEST(hostile_gguf_files_are_rejected_with_the_cause)
{
    static unsigned char b[4096];
    size_t n = gguf_file(b, 1, 1, 0, 4, 0);
    qtc_error err;
    write_file(tmp("ok.gguf"), b, n);
    qtc_model_file *m = qtc_model_open(tmp("ok.gguf"), &err);
    CHECK_MSG(m && m->n_tensors == 1 && qtc_kvs_num(&m->meta, "general.test_key1", 0) == 7, "the valid file: %s", err.msg);
    qtc_model_close(m);
    for (size_t cut = 4; cut < n; cut++) /* every truncation: header, KVs, infos, data */
        if (!rejects("truncated gguf", b, cut, NULL))
            return;
    n = gguf_file(b, 1u << 30, 1, 0, 4, 0);
    CHECK(rejects("lying tensor count", b, n, "cannot fit"));
    n = gguf_file(b, 1, 1, 0, 4, 0);
    uint64_t big = 1ull << 40;
    memcpy(b + 24, &big, 8); /* the key length */
    CHECK(rejects("huge string length", b, n, "past the end"));
    n = gguf_file(b, 1, 1, 0, 1ull << 50, 0);
    CHECK(rejects("absurd dimension", b, n, "absurd"));
    n = gguf_file(b, 1, 1, 99, 4, 0);
    CHECK(rejects("unknown ggml type", b, n, "type 99"));
    n = gguf_file(b, 1, 1, 0, 4, 8);
    CHECK(rejects("misaligned offset", b, n, "not a multiple"));
    n = gguf_file(b, 1, 1, 0, 8, 0);
    CHECK(rejects("data past the end", b, n, "data ends"));
    n = gguf_file(b, 1, 1, 8 /* Q8_0 */, 16, 0);
    CHECK(rejects("row not whole blocks", b, n, "does not fit"));
    n = gguf_file(b, 1, 1, 0, 4, 0);
    b[4] = 9;
    CHECK(rejects("version 9", b, n, "version 9"));
}

TEST(files_of_no_known_format_are_rejected)
{
    char junk[100] = "this is not a model";
    CHECK(rejects("text", junk, sizeof junk, "unknown model format"));
    /* a llama2.c header whose size does not match the file */
    FILE *f = fopen(shared_path("models/stories260K/stories260K.bin"), "rb");
    CHECK(f);
    static unsigned char buf[2048];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    CHECK(rejects("cut llama2.c", buf, n, "unknown model format"));
    CHECK(rejects("empty", "", 0, NULL));
}

TEST(zstd_input_of_any_format_is_decompressed)
{
    FILE *f = fopen(shared_path("models/stories260K/stories260K.bin"), "rb");
    CHECK(f);
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *raw = malloc(n), *z = malloc(ZSTD_compressBound(n));
    CHECK(fread(raw, 1, n, f) == n);
    fclose(f);
    size_t zn = ZSTD_compress(z, ZSTD_compressBound(n), raw, n, 3);
    CHECK(!ZSTD_isError(zn) && write_file(tmp("model.zst"), z, zn));
    qtc_error err;
    qtc_model_file *m = qtc_model_open(tmp("model.zst"), &err);
    CHECK_MSG(m && m->format == QTC_FMT_LLAMA2C && m->n_tensors == 47, "%s", err.msg);
    qtc_model_close(m);
    CHECK(write_file(tmp("cut.zst"), z, zn / 2));
    m = qtc_model_open(tmp("cut.zst"), &err);
    CHECK(!m && err.code == QTC_ERR_INPUT && strstr(err.msg, "truncated"));
    free(raw);
    free(z);
}

/* 1 when key holds the same type, count and bytes in both. */
static int same_kv(const qtc_kvs *a, const qtc_kvs *b, const char *key)
{
    const qtc_kv *x = qtc_kvs_get(a, key), *y = qtc_kvs_get(b, key);
    if (!x || !y || x->type != y->type || x->elem_type != y->elem_type || x->count != y->count)
        return 0;
    uint32_t t = x->type == QTC_KV_ARRAY ? x->elem_type : x->type;
    if (t != QTC_KV_STRING)
        return memcmp(x->vals, y->vals, (size_t)x->count * (size_t)qtc_kv_type_size(t)) == 0;
    for (uint64_t i = 0; i < x->count; i++) {
        const qtc_str *s = (const qtc_str *)x->vals + i, *u = (const qtc_str *)y->vals + i;
        if (s->len != u->len || memcmp(s->ptr, u->ptr, s->len) != 0)
            return 0;
    }
    return 1;
}

TEST(gguf_from_the_hf_folder_and_from_llama2c_carry_the_same_vocabulary)
{
    /* tokenizer.json (BPE, byte fallback) and tok512.bin are two encodings of one
     * vocabulary: both must become the same tokenizer.ggml.* keys, bit for bit */
    qtc_error err;
    qtc_model_file *l2c = qtc_model_open(shared_path("models/stories260K/stories260K.bin"), &err);
    qtc_model_file *hf = qtc_model_open(shared_path("models/stories260K-hf"), &err);
    CHECK(l2c && hf);
    CHECK_MSG(copy_model(l2c, tmp("from-l2c.gguf"), QTC_FMT_GGUF, 0, &err) == QTC_OK, "%s", err.msg);
    CHECK_MSG(copy_model(hf, tmp("from-hf.gguf"), QTC_FMT_GGUF, 0, &err) == QTC_OK, "%s", err.msg);
    qtc_model_file *a = qtc_model_open(tmp("from-l2c.gguf"), &err), *b = qtc_model_open(tmp("from-hf.gguf"), &err);
    CHECK(a && b);
    const char *keys[] = {"tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                          "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
                          "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        CHECK_MSG(same_kv(&a->meta, &b->meta, keys[i]), "%s differs", keys[i]);
    const qtc_kv *types = qtc_kvs_get(&a->meta, "tokenizer.ggml.token_type");
    CHECK(qtc_kv_num_at(types, 0) == 2 && qtc_kv_num_at(types, 1) == 3 && qtc_kv_num_at(types, 3) == 6 &&
          qtc_kv_num_at(types, 300) == 1);
    char why[256];
    CHECK_MSG(same_tensors(a, b, why, sizeof why), "%s", why);
    qtc_model_close(l2c);
    qtc_model_close(hf);
    qtc_model_close(a);
    qtc_model_close(b);
}

TEST(quantized_layouts_write_and_read_back_exactly)
{
    /* every scheme, on rows of 172 (partial last groups) and 64: what is read back
     * from the file is the qweight that was written, and dequantizes the same */
    const char *names[] = {"int8", "int8-tensor", "int8-g32-asym", "int4-g32", "int4-g32-asym", "int4-tensor-asym",
                           "int3-g32", "int2-g64-asym", "int4", "nf4", "nf4-single"};
    enum { R = 64, C = 172 };
    static float w[R * C], a[R * C];
    qtc_rng r;
    qtc_rng_seed(&r, 41);
    for (int i = 0; i < R * C; i++)
        w[i] = (float)(0.05 * qtc_rng_normal(&r) + (i % 7 == 0 ? 0.02 : 0));
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        qtc_qscheme s;
        qtc_qweight q, back;
        qtc_error err;
        CHECK(qtc_qscheme_parse(names[k], &s) == 0);
        CHECK(qtc_qweight_quantize(w, R, C, &s, &q, &err) == QTC_OK);
        int n = qtc_qlayout_count(&s);
        qtc_out_entry e[8];
        qtc_tensor *parts[8];
        CHECK(qtc_qlayout_entries(&s, "model.layers.0.mlp.down_proj.weight", R, C, e) == 0);
        CHECK_MSG(qtc_qlayout_pack(&q, "model.layers.0.mlp.down_proj.weight", parts, &err) == QTC_OK, "%s", err.msg);
        qtc_kvs extra = {0};
        char *qc = qtc_qlayout_hf_config(&s, 0);
        qtc_kvs_set_str(&extra, "qtc.quantization_config", qc);
        free(qc);
        qtc_model_file *src = qtc_model_open(shared_path("models/stories260K/stories260K.bin"), &err); /* for the config */
        qtc_model_writer *wr = qtc_writer_open(tmp("q.safetensors"), QTC_FMT_SAFETENSORS, 0, src, e, n, &extra, &err);
        CHECK_MSG(wr, "%s", err.msg);
        for (int i = 0; i < n; i++)
            CHECK(qtc_writer_put(wr, i, parts[i], &err) == QTC_OK);
        CHECK_MSG(qtc_writer_commit(wr, &err) == QTC_OK, "%s", err.msg);
        qtc_model_file *m = qtc_model_open(tmp("q.safetensors"), &err);
        CHECK_MSG(m && m->n_tensors == 1 && m->tensors[0].qparts.scheme_set, "%s: %s", names[k], m ? "not folded" : err.msg);
        CHECK(strcmp(m->tensors[0].name, "model.layers.0.mlp.down_proj.weight") == 0);
        CHECK_MSG(!memcmp(&m->tensors[0].scheme, &s, sizeof s), "%s: scheme read back differs", names[k]);
        CHECK(qtc_model_qweight(m, 0, &back, &err) == QTC_OK);
        CHECK_MSG(memcmp(back.q, q.q, R * C) == 0, "%s: values differ", names[k]);
        qtc_qweight_dequantize(&q, a);
        qtc_tensor *t = qtc_model_tensor(m, 0, &err);
        CHECK_MSG(t && memcmp(t->data, a, sizeof a) == 0, "%s: dequantized weights differ", names[k]);
        qtc_tensor_free(t);
        for (int i = 0; i < n; i++)
            qtc_tensor_free(parts[i]);
        qtc_qweight_free(&q);
        qtc_qweight_free(&back);
        qtc_kvs_free(&extra);
        qtc_model_close(m);
        qtc_model_close(src);
    }
}

TEST(quantized_layouts_with_inconsistent_parts_are_rejected)
{
    static char b[4096];
    size_t n;
    const char *cases[][2] = {
        {"{\"m.weight_scale\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
         "\"m.weight\":{\"dtype\":\"I8\",\"shape\":[2,4],\"data_offsets\":[24,32]}}", "inconsistent"},
        {"{\"m.weight_scale\":{\"dtype\":\"F32\",\"shape\":[2,1],\"data_offsets\":[0,8]},"
         "\"m.weight_packed\":{\"dtype\":\"I32\",\"shape\":[2,1],\"data_offsets\":[8,16]}}", "weight_shape"},
        {"{\"w.weight.quant_state.bitsandbytes__nf4\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}", "quant state"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        n = st_file(b, sizeof b, cases[i][0], i == 0 ? 32 : i == 1 ? 16 : 8);
        if (!rejects(cases[i][1], b, n, cases[i][1]))
            return;
    }
}

TEST(sharded_hf_folders_are_read_through_their_index)
{
    /* two shards written with qtc's writer, an index naming them */
    qtc_error err;
    qtc_model_file *src = qtc_model_open(shared_path("models/stories260K-hf"), &err);
    CHECK_MSG(src, "%s", err.msg);
    char dir[512];
    snprintf(dir, sizeof dir, "%s", tmp("sharded"));
    mkdir(dir, 0755);
    int half = src->n_tensors / 2;
    char path[600], index[8192] = "{\"metadata\":{\"total_size\":1040128},\"weight_map\":{";
    size_t o = strlen(index);
    for (int s = 0; s < 2; s++) {
        int lo = s ? half : 0, hi = s ? src->n_tensors : half;
        qtc_out_entry e[64];
        for (int i = lo; i < hi; i++) {
            snprintf(e[i - lo].name, sizeof e[i - lo].name, "%s", src->tensors[i].name);
            e[i - lo].dtype = src->tensors[i].dtype;
            e[i - lo].ndim = src->tensors[i].ndim;
            memcpy(e[i - lo].ne, src->tensors[i].ne, sizeof e[i - lo].ne);
            o += (size_t)snprintf(index + o, sizeof index - o, "%s\"%s\":\"model-0000%d-of-00002.safetensors\"",
                                  o > 60 ? "," : "", src->tensors[i].name, s + 1);
        }
        snprintf(path, sizeof path, "%s/model-0000%d-of-00002.safetensors", dir, s + 1);
        qtc_model_writer *w = qtc_writer_open(path, QTC_FMT_SAFETENSORS, 0, NULL, e, hi - lo, NULL, &err);
        CHECK_MSG(w, "%s", err.msg);
        for (int i = lo; i < hi; i++) {
            qtc_tensor *t = qtc_model_tensor(src, i, &err);
            CHECK(qtc_writer_put(w, i - lo, t, &err) == QTC_OK);
            qtc_tensor_free(t);
        }
        CHECK(qtc_writer_commit(w, &err) == QTC_OK);
    }
    snprintf(index + o, sizeof index - o, "}}");
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    CHECK(write_file(path, index, strlen(index)));
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(write_file(path, src->config_json, strlen(src->config_json)));
    qtc_model_file *m = qtc_model_open(dir, &err);
    CHECK_MSG(m && m->n_inputs == 2, "%s", m ? "not two shards" : err.msg);
    char why[256];
    CHECK_MSG(same_tensors(src, m, why, sizeof why), "%s", why);
    qtc_model_close(m);
    /* an index naming a tensor its shard does not hold */
    index[strlen(index) - 2] = '\0';
    strcat(index, ",\"ghost.weight\":\"model-00001-of-00002.safetensors\"}}");
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    CHECK(write_file(path, index, strlen(index)));
    m = qtc_model_open(dir, &err);
    CHECK(!m && err.code == QTC_ERR_INPUT && strstr(err.msg, "ghost.weight"));
    qtc_model_close(src);
}
