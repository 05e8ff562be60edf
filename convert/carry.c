/* carry.c: the metadata a conversion carries along: the HF config.json of a
 * llama configuration, and the GGUF tokenizer keys (tokenizer.ggml.*) from a
 * llama2.c tokenizer.bin or a GGUF, and their JSON form inside a safetensors
 * __metadata__ (key "qtc.gguf_kv"), so a safetensors file in a pipe keeps
 * what GGUF output needs. */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carry.h"

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
qtc_status carry_tokenizer_from_llama2c(qtc_kvs *kv, const char *path, int vocab, qtc_error *err)
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
