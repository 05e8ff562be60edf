/* tokenizer.c: the llama2.c tokenizer (SentencePiece-style BPE over a scored
 * vocabulary with byte fallback), encoding and decoding as llama2.c's run.c
 * does: a leading space is added to non-empty text, the text is split into
 * UTF-8 characters (unknown ones become their bytes, ids 3 + byte), and the
 * adjacent pair whose merge has the highest score is merged until none can be.
 * Left out for now: GGUF vocabularies and HF tokenizer.json (issue: model). */
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
    char **pieces;
    float *scores;
    piece_ref *sorted; /* by piece, for lookup */
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
    free(t);
}

static int by_piece(const void *a, const void *b)
{
    return strcmp(((const piece_ref *)a)->piece, ((const piece_ref *)b)->piece);
}

qtc_tokenizer *qtc_tokenizer_load_llama2c(const char *path, int vocab, qtc_error *err)
{
    qtc_in in;
    if (qtc_in_open(&in, path, err) != QTC_OK)
        return NULL;
    qtc_tokenizer *t = calloc(1, sizeof *t);
    if (!t || vocab <= 0 || vocab > (1 << 24))
        goto nomem;
    t->vocab = vocab;
    t->bos = 1;
    t->eos = 2;
    t->pieces = calloc((size_t)vocab, sizeof *t->pieces);
    t->scores = calloc((size_t)vocab, sizeof *t->scores);
    t->sorted = calloc((size_t)vocab, sizeof *t->sorted);
    if (!t->pieces || !t->scores || !t->sorted)
        goto nomem;
    size_t pos = 4;
    for (int i = 0; i < vocab; i++) {
        int32_t len;
        if (in.size < pos + 8) {
            qtc_error_set(err, QTC_ERR_INPUT, "%s: token %d: the file ends at byte %zu", path, i, in.size);
            goto fail;
        }
        memcpy(&t->scores[i], in.data + pos, 4);
        memcpy(&len, in.data + pos + 4, 4);
        pos += 8;
        if (len < 0 || (size_t)len > in.size - pos) {
            qtc_error_set(err, QTC_ERR_INPUT, "%s: token %d: length %d runs past the end", path, i, len);
            goto fail;
        }
        if (!(t->pieces[i] = malloc((size_t)len + 1)))
            goto nomem;
        memcpy(t->pieces[i], in.data + pos, (size_t)len);
        t->pieces[i][len] = '\0';
        pos += (size_t)len;
        t->sorted[i] = (piece_ref){t->pieces[i], i};
    }
    qsort(t->sorted, (size_t)vocab, sizeof *t->sorted, by_piece);
    qtc_in_close(&in);
    return t;
nomem:
    qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
fail:
    qtc_in_close(&in);
    qtc_tokenizer_free(t);
    return NULL;
}

qtc_tokenizer *qtc_tokenizer_for_model(const qtc_model_file *m, qtc_error *err)
{
    if (m->tokenizer_bin)
        return qtc_tokenizer_load_llama2c(m->tokenizer_bin, m->config.vocab, err);
    qtc_error_set(err, QTC_ERR_INPUT, "%s: no tokenizer qtc can use (give --tokenizer FILE, a llama2.c tokenizer.bin)", m->path);
    return NULL;
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
    const piece_ref *r = bsearch(&key, t->sorted, (size_t)t->vocab, sizeof key, by_piece);
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
            for (size_t b = 0; b < clen; b++) { /* byte fallback: <0x00> is id 3 */
                int bid = (unsigned char)text[i + b] + 3;
                if (bid >= t->vocab) {
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
    const char *p = t->pieces[id];
    if (prev == t->bos && p[0] == ' ')
        p++;
    unsigned int byte;
    if (strlen(p) == 6 && sscanf(p, "<0x%02X>", &byte) == 1) {
        buf[0] = (char)byte;
        buf[1] = '\0';
        return buf;
    }
    return p;
}
