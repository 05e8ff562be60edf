/* carry.c: the metadata a conversion carries along: the HF config.json of a
 * llama configuration, and the GGUF tokenizer keys (tokenizer.ggml.*) from a
 * llama2.c tokenizer.bin or a GGUF, and their JSON form inside a safetensors
 * __metadata__ (key "qtc.gguf_kv"), so a safetensors file in a pipe keeps
 * what GGUF output needs. */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert_private.h"

/* The JSON text of o in memory from malloc (not cJSON's allocator); frees o. */
static char *print_and_free(cJSON *o, int pretty)
{
    char *j = pretty ? cJSON_Print(o) : cJSON_PrintUnformatted(o);
    char *s = j ? strdup(j) : NULL;
    cJSON_free(j);
    cJSON_Delete(o);
    return s;
}

char *carry_config_json(const qtc_llama_config *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("LlamaForCausalLM"));
    cJSON_AddStringToObject(o, "model_type", "llama");
    cJSON_AddNumberToObject(o, "hidden_size", c->dim);
    cJSON_AddNumberToObject(o, "intermediate_size", c->hidden);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->n_kv_heads);
    if (c->head_dim != c->dim / c->n_heads)
        cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab);
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->ctx);
    cJSON_AddNumberToObject(o, "rms_norm_eps", c->norm_eps);
    cJSON_AddNumberToObject(o, "rope_theta", c->rope_theta);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tied);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    if (c->bos_id >= 0)
        cJSON_AddNumberToObject(o, "bos_token_id", c->bos_id);
    if (c->eos_id >= 0)
        cJSON_AddNumberToObject(o, "eos_token_id", c->eos_id);
    cJSON_AddStringToObject(o, "torch_dtype", "float32");
    return print_and_free(o, 1);
}

/* The llama2.c tokenizer: i32 max_token_length, then per token f32 score,
 * i32 length, bytes. */
qtc_status qtc_tokenizer_kvs_from_llama2c(qtc_kvs *kv, const char *path, int vocab, qtc_error *err)
{
    qtc_in in;
    if (qtc_in_open(&in, path, err) != QTC_OK)
        return err->code;
    qtc_str *tokens = calloc((size_t)vocab, sizeof *tokens);
    float *scores = calloc((size_t)vocab, sizeof *scores);
    int32_t *types = calloc((size_t)vocab, sizeof *types);
    qtc_status rc = QTC_OK;
    size_t pos = 4;
    if (!tokens || !scores || !types) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < vocab; i++) {
        int32_t len;
        if (in.size < pos + 8) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: token %d: the file ends at byte %zu", path, i, in.size);
            goto done;
        }
        memcpy(&scores[i], in.data + pos, 4);
        memcpy(&len, in.data + pos + 4, 4);
        pos += 8;
        if (len < 0 || (size_t)len > in.size - pos) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: token %d: length %d runs past the end", path, i, len);
            goto done;
        }
        const unsigned char *text = in.data + pos;
        size_t n = (size_t)len;
        pos += n;
        if (i == 1 || i == 2) { /* llama2.c's export wraps <s> and </s> in newlines */
            for (; n && text[0] == '\n'; n--)
                text++;
            for (; n && text[n - 1] == '\n'; n--)
                ;
        }
        /* SentencePiece marks spaces with U+2581; llama2.c stores plain spaces */
        size_t spaces = 0;
        for (size_t j = 0; j < n; j++)
            spaces += text[j] == ' ';
        tokens[i].ptr = malloc(n + 2 * spaces + 1);
        if (!tokens[i].ptr) {
            rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
            goto done;
        }
        size_t o = 0;
        for (size_t j = 0; j < n; j++) {
            if (text[j] == ' ') {
                memcpy(tokens[i].ptr + o, "\xe2\x96\x81", 3);
                o += 3;
            } else
                tokens[i].ptr[o++] = (char)text[j];
        }
        tokens[i].ptr[o] = '\0';
        tokens[i].len = o;
        const char *t = tokens[i].ptr;
        types[i] = i == 0 ? 2 /* unknown */ : (i == 1 || i == 2) ? 3 /* control */
                 : (o == 6 && strncmp(t, "<0x", 3) == 0 && t[5] == '>') ? 6 /* byte */ : 1;
    }
    if (qtc_kvs_set_str(kv, "tokenizer.ggml.model", "llama") ||
        qtc_kvs_set_array(kv, "tokenizer.ggml.tokens", QTC_KV_STRING, (uint64_t)vocab, tokens) ||
        qtc_kvs_set_array(kv, "tokenizer.ggml.scores", QTC_KV_F32, (uint64_t)vocab, scores) ||
        qtc_kvs_set_array(kv, "tokenizer.ggml.token_type", QTC_KV_I32, (uint64_t)vocab, types) ||
        qtc_kvs_set_num(kv, "tokenizer.ggml.bos_token_id", QTC_KV_U32, 1) ||
        qtc_kvs_set_num(kv, "tokenizer.ggml.eos_token_id", QTC_KV_U32, 2) ||
        qtc_kvs_set_num(kv, "tokenizer.ggml.unknown_token_id", QTC_KV_U32, 0))
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
done:
    for (int i = 0; tokens && i < vocab; i++)
        free(tokens[i].ptr);
    free(tokens);
    free(scores);
    free(types);
    qtc_in_close(&in);
    return rc;
}

/* JSON form of KVs: {"key": {"type": t, "elem": e, "v": [..]}} */
char *carry_kvs_to_json(const qtc_kvs *kv, const char *prefix)
{
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; i < kv->n; i++) {
        const qtc_kv *k = &kv->kv[i];
        if (strncmp(k->key, prefix, strlen(prefix)) != 0)
            continue;
        cJSON *e = cJSON_AddObjectToObject(o, k->key);
        cJSON_AddNumberToObject(e, "type", k->type);
        uint32_t t = k->type == QTC_KV_ARRAY ? k->elem_type : k->type;
        cJSON_AddNumberToObject(e, "elem", t);
        cJSON *v = cJSON_AddArrayToObject(e, "v");
        for (uint64_t j = 0; j < k->count; j++)
            cJSON_AddItemToArray(v, t == QTC_KV_STRING ? cJSON_CreateString(((qtc_str *)k->vals)[j].ptr)
                                                       : cJSON_CreateNumber(qtc_kv_num_at(k, j)));
    }
    return print_and_free(o, 0);
}

qtc_status carry_kvs_from_json(qtc_kvs *kv, const char *json, const char *what, qtc_error *err)
{
    cJSON *o = cJSON_Parse(json);
    qtc_status rc = QTC_OK;
    if (!cJSON_IsObject(o)) {
        rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: qtc.gguf_kv is not a JSON object", what);
        goto done;
    }
    for (cJSON *e = o->child; e && rc == QTC_OK; e = e->next) {
        int type = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(e, "type"));
        int elem = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(e, "elem"));
        cJSON *v = cJSON_GetObjectItem(e, "v");
        int n = cJSON_GetArraySize(v), size = qtc_kv_type_size((uint32_t)elem);
        if (!cJSON_IsArray(v) || !size || (type != QTC_KV_ARRAY && (type != elem || n != 1))) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: qtc.gguf_kv entry '%s' is malformed", what, e->string);
            break;
        }
        unsigned char *vals = calloc((size_t)(n ? n : 1), (size_t)size);
        if (!vals) {
            rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
            break;
        }
        int j = 0;
        for (cJSON *x = v->child; x; x = x->next, j++) {
            if (elem == QTC_KV_STRING) {
                const char *s = cJSON_IsString(x) ? x->valuestring : "";
                ((qtc_str *)vals)[j].ptr = (char *)(uintptr_t)s;
                ((qtc_str *)vals)[j].len = strlen(s);
            } else {
                qtc_kvs tmp = {0};
                qtc_kvs_set_num(&tmp, "x", (uint32_t)elem, cJSON_GetNumberValue(x));
                memcpy(vals + (size_t)j * (size_t)size, tmp.kv[0].vals, (size_t)size);
                qtc_kvs_free(&tmp);
            }
        }
        if (qtc_kvs_set_array(kv, e->string, (uint32_t)elem, (uint64_t)n, vals) != QTC_OK)
            rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        else if (type != QTC_KV_ARRAY) {
            qtc_kv *k = (qtc_kv *)qtc_kvs_get(kv, e->string);
            k->type = (uint32_t)elem;
            k->elem_type = 0;
        }
        free(vals);
    }
done:
    cJSON_Delete(o);
    return rc;
}

/* tokenizer.ggml.* keys from an HF tokenizer.json with a BPE model.
 * SentencePiece-style vocabularies (byte_fallback, U+2581 for spaces) become
 * GGUF "llama" vocabularies: SentencePiece orders ids by descending score, so
 * the n-th ordinary token gets score -n (what llama2.c's export writes);
 * byte and special tokens score 0. Byte-level BPE (GPT-2 style) becomes a
 * "gpt2" vocabulary with its merges. */
qtc_status qtc_tokenizer_kvs_from_json(qtc_kvs *kv, const char *json, const qtc_llama_config *c, qtc_error *err)
{
    cJSON *root = cJSON_Parse(json);
    cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    qtc_status rc = QTC_OK;
    qtc_str *tokens = NULL, *mstr = NULL;
    float *scores = NULL;
    int32_t *types = NULL;
    char **merge_buf = NULL;
    int n = 0, n_merges = 0;
    if (!cJSON_IsObject(vocab) || !cJSON_IsString(type) || strcmp(type->valuestring, "BPE") != 0) {
        rc = qtc_error_set(err, QTC_ERR_INPUT, "tokenizer.json: not a BPE model with a vocab");
        goto done;
    }
    n = cJSON_GetArraySize(vocab);
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    int max_id = -1;
    for (const cJSON *t = vocab->child; t; t = t->next)
        if (cJSON_IsNumber(t) && t->valueint > max_id)
            max_id = t->valueint;
    for (const cJSON *a = cJSON_IsArray(added) ? added->child : NULL; a; a = a->next) {
        int id = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(a, "id"));
        if (id > max_id)
            max_id = id;
    }
    n = max_id + 1;
    if (c && c->vocab > n)
        n = c->vocab;
    if (n <= 0 || n > (1 << 24)) {
        rc = qtc_error_set(err, QTC_ERR_INPUT, "tokenizer.json: %d tokens", n);
        goto done;
    }
    tokens = calloc((size_t)n, sizeof *tokens);
    scores = calloc((size_t)n, sizeof *scores);
    types = calloc((size_t)n, sizeof *types);
    if (!tokens || !scores || !types)
        goto nomem;
    for (const cJSON *t = vocab->child; t; t = t->next) {
        int id = (int)cJSON_GetNumberValue(t);
        if (id < 0 || id >= n || tokens[id].ptr) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "tokenizer.json: token '%s' has a bad or repeated id", t->string);
            goto done;
        }
        tokens[id].ptr = t->string;
        tokens[id].len = strlen(t->string);
        types[id] = 1;
    }
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    for (const cJSON *a = cJSON_IsArray(added) ? added->child : NULL; a; a = a->next) {
        int id = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(a, "id"));
        const cJSON *content = cJSON_GetObjectItem(a, "content");
        if (id < 0 || id >= n || !cJSON_IsString(content))
            continue;
        tokens[id].ptr = content->valuestring;
        tokens[id].len = strlen(content->valuestring);
        types[id] = cJSON_IsTrue(cJSON_GetObjectItem(a, "special")) ? 3 : 4;
        if (cJSON_IsString(unk) && strcmp(unk->valuestring, content->valuestring) == 0)
            types[id] = 2;
    }
    for (int i = 0; i < n; i++)
        if (!tokens[i].ptr) { /* a hole in the ids: an unused slot, as llama.cpp's converter pads */
            static char pad[32];
            snprintf(pad, sizeof pad, "[PAD%d]", i);
            tokens[i].ptr = strdup(pad);
            tokens[i].len = strlen(pad);
            types[i] = 5;
        }
    int spm = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"));
    int ordinary = 0;
    for (int i = 0; i < n; i++) {
        const char *t = tokens[i].ptr;
        if (spm && types[i] == 1 && tokens[i].len == 6 && strncmp(t, "<0x", 3) == 0 && t[5] == '>')
            types[i] = 6;
        if (spm && types[i] == 1)
            scores[i] = -(float)ordinary++; /* -0.0 first, as llama2.c writes */
    }
    if (qtc_kvs_set_str(kv, "tokenizer.ggml.model", spm ? "llama" : "gpt2") ||
        qtc_kvs_set_array(kv, "tokenizer.ggml.tokens", QTC_KV_STRING, (uint64_t)n, tokens) ||
        (spm && qtc_kvs_set_array(kv, "tokenizer.ggml.scores", QTC_KV_F32, (uint64_t)n, scores)) ||
        qtc_kvs_set_array(kv, "tokenizer.ggml.token_type", QTC_KV_I32, (uint64_t)n, types))
        goto nomem;
    if (!spm && cJSON_IsArray(merges)) {
        n_merges = cJSON_GetArraySize(merges);
        mstr = calloc((size_t)(n_merges ? n_merges : 1), sizeof *mstr);
        merge_buf = calloc((size_t)(n_merges ? n_merges : 1), sizeof *merge_buf);
        if (!mstr || !merge_buf)
            goto nomem;
        int i = 0;
        for (const cJSON *mg = merges->child; mg; mg = mg->next, i++) {
            if (cJSON_IsString(mg)) {
                mstr[i].ptr = mg->valuestring;
            } else if (cJSON_IsArray(mg) && cJSON_GetArraySize(mg) == 2) { /* newer ["a", "b"] form */
                const char *a = cJSON_GetStringValue(cJSON_GetArrayItem(mg, 0)), *b = cJSON_GetStringValue(cJSON_GetArrayItem(mg, 1));
                if (!a || !b)
                    continue;
                merge_buf[i] = malloc(strlen(a) + strlen(b) + 2);
                if (!merge_buf[i])
                    goto nomem;
                sprintf(merge_buf[i], "%s %s", a, b);
                mstr[i].ptr = merge_buf[i];
            } else
                continue;
            mstr[i].len = strlen(mstr[i].ptr);
        }
        if (qtc_kvs_set_array(kv, "tokenizer.ggml.merges", QTC_KV_STRING, (uint64_t)n_merges, mstr))
            goto nomem;
    }
    if (c && c->bos_id >= 0 && qtc_kvs_set_num(kv, "tokenizer.ggml.bos_token_id", QTC_KV_U32, c->bos_id))
        goto nomem;
    if (c && c->eos_id >= 0 && qtc_kvs_set_num(kv, "tokenizer.ggml.eos_token_id", QTC_KV_U32, c->eos_id))
        goto nomem;
    for (int i = 0; i < n; i++)
        if (types[i] == 2 && qtc_kvs_set_num(kv, "tokenizer.ggml.unknown_token_id", QTC_KV_U32, i))
            goto nomem;
    goto done;
nomem:
    rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
done:
    for (int i = 0; types && i < n; i++)
        if (types[i] == 5)
            free(tokens[i].ptr);
    for (int i = 0; merge_buf && i < n_merges; i++)
        free(merge_buf[i]);
    free(merge_buf);
    free(mstr);
    free(tokens);
    free(scores);
    free(types);
    cJSON_Delete(root);
    return rc;
}

qtc_status qtc_model_tokenizer_kvs(const qtc_model_file *m, qtc_kvs *out, qtc_error *err)
{
    qtc_error_clear(err);
    int have = 0;
    for (int i = 0; i < m->meta.n; i++)
        if (strncmp(m->meta.kv[i].key, "tokenizer.", 10) == 0) {
            if (qtc_kvs_copy(out, &m->meta.kv[i]) != QTC_OK)
                return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
            have = 1;
        }
    if (have)
        return QTC_OK;
    if (m->tokenizer_bin && m->has_config)
        return qtc_tokenizer_kvs_from_llama2c(out, m->tokenizer_bin, m->config.vocab, err);
    if (m->tokenizer_json)
        return qtc_tokenizer_kvs_from_json(out, m->tokenizer_json, m->has_config ? &m->config : NULL, err);
    return qtc_error_set(err, QTC_ERR_INPUT, "%s: no tokenizer (GGUF tokenizer keys, tokenizer.json, or a llama2.c tokenizer.bin beside it)",
                         m->path);
}
