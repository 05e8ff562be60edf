/* tokenizer.c: SentencePiece-style BPE over a scored vocabulary with byte
 * fallback (GGUF's "llama" vocabularies; llama2.c's tokenizer.bin and HF
 * tokenizer.json of that kind reach here as the same GGUF keys), encoding and
 * decoding as llama2.c's run.c does: a leading space is added to non-empty
 * text, the text is split into UTF-8 characters (unknown ones become their
 * byte tokens), and the adjacent pair whose merge has the highest score is
 * merged until none can be. Control and unknown tokens never match text.
 * Left out for now: byte-level BPE ("gpt2" vocabularies). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/io.h"
#include "qtc/model.h"

typedef struct piece_ref {
    const char *piece;
    int id;
} piece_ref;

struct qtc_tokenizer {
    int vocab;
    char **pieces;     /* with plain spaces, as text has them */
    float *scores;
    piece_ref *sorted; /* ordinary pieces by text, for lookup */
    int n_sorted;
    int byte_id[256];  /* the <0xXX> token of each byte, or -1 */
    int16_t *byte_of;  /* per token: the byte it stands for, or -1 */
    int bos, eos;
};

void qtc_tokenizer_free(qtc_tokenizer *t)
{
    if (!t)
        return;
    for (int i = 0; t->pieces && i < t->vocab; i++)
        free(t->pieces[i]);
    free(t->pieces);
    free(t->scores);
    free(t->sorted);
    free(t->byte_of);
    free(t);
}

static int by_piece(const void *a, const void *b)
{
    return strcmp(((const piece_ref *)a)->piece, ((const piece_ref *)b)->piece);
}

/* A tokenizer from GGUF tokenizer.ggml.* keys of model "llama". */
static qtc_tokenizer *from_kvs(const qtc_kvs *kv, const char *what, qtc_error *err)
{
    const char *model = qtc_kvs_str(kv, "tokenizer.ggml.model");
    const qtc_kv *tokens = qtc_kvs_get(kv, "tokenizer.ggml.tokens"), *scores = qtc_kvs_get(kv, "tokenizer.ggml.scores");
    const qtc_kv *types = qtc_kvs_get(kv, "tokenizer.ggml.token_type");
    if (!model || strcmp(model, "llama") != 0 || !tokens || tokens->elem_type != QTC_KV_STRING) {
        qtc_error_set(err, QTC_ERR_INPUT, "%s: tokenizer model '%s' is not supported yet (qtc reads SentencePiece-style \"llama\" vocabularies)",
                      what, model ? model : "?");
        return NULL;
    }
    int n = (int)tokens->count;
    if ((scores && scores->count != tokens->count) || (types && types->count != tokens->count) || n <= 0 || n > (1 << 24)) {
        qtc_error_set(err, QTC_ERR_INPUT, "%s: tokenizer arrays disagree in length", what);
        return NULL;
    }
    qtc_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        goto nomem;
    t->vocab = n;
    t->bos = (int)qtc_kvs_num(kv, "tokenizer.ggml.bos_token_id", 1);
    t->eos = (int)qtc_kvs_num(kv, "tokenizer.ggml.eos_token_id", 2);
    t->pieces = calloc((size_t)n, sizeof *t->pieces);
    t->scores = calloc((size_t)n, sizeof *t->scores);
    t->sorted = calloc((size_t)n, sizeof *t->sorted);
    t->byte_of = malloc((size_t)n * sizeof *t->byte_of);
    if (!t->pieces || !t->scores || !t->sorted || !t->byte_of)
        goto nomem;
    for (int b = 0; b < 256; b++)
        t->byte_id[b] = -1;
    for (int i = 0; i < n; i++) {
        const qtc_str *src = (const qtc_str *)tokens->vals + i;
        char *p = malloc(src->len + 1);
        if (!p)
            goto nomem;
        size_t o = 0; /* U+2581 back to a space */
        for (uint64_t j = 0; j < src->len; j++) {
            if (j + 2 < src->len && !memcmp(src->ptr + j, "\xe2\x96\x81", 3)) {
                p[o++] = ' ';
                j += 2;
            } else
                p[o++] = src->ptr[j];
        }
        p[o] = '\0';
        t->pieces[i] = p;
        t->scores[i] = scores ? (float)qtc_kv_num_at(scores, (uint64_t)i) : 0;
        int type = types ? (int)qtc_kv_num_at(types, (uint64_t)i) : 1;
        unsigned int byte;
        t->byte_of[i] = -1;
        if (type == 6 && o == 6 && sscanf(p, "<0x%02X>", &byte) == 1) {
            t->byte_id[byte] = i;
            t->byte_of[i] = (int16_t)byte;
        }
        else if (type == 1 || type == 4) /* ordinary and user-defined pieces match text */
            t->sorted[t->n_sorted++] = (piece_ref){p, i};
    }
    qsort(t->sorted, (size_t)t->n_sorted, sizeof *t->sorted, by_piece);
    return t;
nomem:
    qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    qtc_tokenizer_free(t);
    return NULL;
}

qtc_tokenizer *qtc_tokenizer_load_llama2c(const char *path, int vocab, qtc_error *err)
{
    qtc_kvs kv = {0};
    qtc_tokenizer *t = NULL;
    if (qtc_tokenizer_kvs_from_llama2c(&kv, path, vocab, err) == QTC_OK)
        t = from_kvs(&kv, path, err);
    qtc_kvs_free(&kv);
    return t;
}

qtc_tokenizer *qtc_tokenizer_for_model(const qtc_model_file *m, qtc_error *err)
{
    qtc_kvs kv = {0};
    qtc_tokenizer *t = NULL;
    if (qtc_model_tokenizer_kvs(m, &kv, err) == QTC_OK)
        t = from_kvs(&kv, m->path, err);
    qtc_kvs_free(&kv);
    return t;
}

int qtc_tokenizer_vocab(const qtc_tokenizer *t)
{
    return t->vocab;
}

int qtc_tokenizer_bos(const qtc_tokenizer *t)
{
    return t->bos;
}

int qtc_tokenizer_eos(const qtc_tokenizer *t)
{
    return t->eos;
}

static int lookup(const qtc_tokenizer *t, const char *s)
{
    piece_ref key = {s, 0};
    const piece_ref *r = bsearch(&key, t->sorted, (size_t)t->n_sorted, sizeof key, by_piece);
    return r ? r->id : -1;
}

int64_t qtc_tokenizer_encode(const qtc_tokenizer *t, const char *text, int bos, int eos, int32_t *ids, int64_t cap,
                             qtc_error *err)
{
    size_t len = strlen(text);
    int64_t n = 0, room = (int64_t)len + 3;
    int32_t *tok = malloc((size_t)room * sizeof *tok);
    char *buf = malloc(2 * 64 + 8);
    if (!tok || !buf) {
        free(tok);
        free(buf);
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        return -1;
    }
    if (bos)
        tok[n++] = t->bos;
    if (len) { /* SentencePiece's dummy prefix */
        int sp = lookup(t, " ");
        if (sp >= 0)
            tok[n++] = sp;
    }
    for (size_t i = 0; i < len;) {
        size_t clen = 1; /* one UTF-8 character (a stray continuation byte stands alone) */
        while (i + clen < len && clen < 4 && ((unsigned char)text[i + clen] & 0xC0) == 0x80)
            clen++;
        memcpy(buf, text + i, clen);
        buf[clen] = '\0';
        int id = lookup(t, buf);
        if (id >= 0) {
            tok[n++] = id;
        } else {
            for (size_t b = 0; b < clen; b++) { /* byte fallback */
                int bid = t->byte_id[(unsigned char)text[i + b]];
                if (bid < 0) {
                    free(tok);
                    free(buf);
                    qtc_error_set(err, QTC_ERR_INPUT, "byte 0x%02x at offset %zu has no token", (unsigned char)text[i + b], i + b);
                    return -1;
                }
                tok[n++] = bid;
            }
        }
        i += clen;
    }
    int64_t first = bos ? 1 : 0;
    for (;;) { /* merge the best-scoring adjacent pair */
        float best = -1e30f;
        int64_t at = -1;
        int best_id = -1;
        for (int64_t i = first; i + 1 < n; i++) {
            size_t la = strlen(t->pieces[tok[i]]), lb = strlen(t->pieces[tok[i + 1]]);
            if (la + lb > 64)
                continue;
            memcpy(buf, t->pieces[tok[i]], la);
            memcpy(buf + la, t->pieces[tok[i + 1]], lb + 1);
            int id = lookup(t, buf);
            if (id >= 0 && t->scores[id] > best) {
                best = t->scores[id];
                at = i;
                best_id = id;
            }
        }
        if (at < 0)
            break;
        tok[at] = best_id;
        memmove(tok + at + 1, tok + at + 2, (size_t)(n - at - 2) * sizeof *tok);
        n--;
    }
    if (eos)
        tok[n++] = t->eos;
    for (int64_t i = 0; i < n && i < cap; i++)
        ids[i] = tok[i];
    free(tok);
    free(buf);
    return n;
}

const char *qtc_tokenizer_piece(const qtc_tokenizer *t, int32_t prev, int32_t id, char buf[8])
{
    if (id < 0 || id >= t->vocab)
        return "";
    if (t->byte_of[id] >= 0) { /* a byte token is its byte */
        buf[0] = (char)t->byte_of[id];
        buf[1] = '\0';
        return buf;
    }
    const char *p = t->pieces[id];
    if (prev == t->bos && p[0] == ' ')
        p++;
    return p;
}
