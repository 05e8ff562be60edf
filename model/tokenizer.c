/* tokenizer.c: tokenizers built from GGUF tokenizer.ggml.* keys (llama2.c's
 * tokenizer.bin and HF tokenizer.json reach here as the same keys).
 *
 * "llama" (SentencePiece-style BPE over scored pieces, byte fallback), as
 * llama2.c's run.c and llama.cpp encode: a space is prepended to non-empty
 * text, the text is split into UTF-8 characters (those without a piece
 * become their <0xXX> byte tokens), and the adjacent pair whose merge has the
 * highest score (the leftmost of equals) is merged until none can be.
 *
 * "gpt2" (byte-level BPE with ranked merges), as llama.cpp encodes with the
 * GPT-2 pre-tokenizer: the text is split into words ('s 't 're 've 'm 'll 'd,
 * an optional space and letters, or numbers, or other characters, and runs
 * of whitespace), each word's bytes are mapped to GPT-2's printable code
 * points, and the lowest-ranked adjacent pair is merged until none can be.
 *
 * Control and unknown tokens never match text (no special-token parsing). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/io.h"
#include "qtc/model.h"
#include "unicode_classes.h"

/* --- a string -> int map (open addressing, keys not owned) -------------------------- */

typedef struct strmap {
    uint32_t cap; /* a power of two */
    const char **key;
    uint32_t *len;
    int32_t *val;
} strmap;

static uint32_t hash(const char *s, uint32_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (uint32_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static int strmap_init(strmap *m, uint32_t n)
{
    m->cap = 16;
    while (m->cap < 2 * n + 16)
        m->cap *= 2;
    m->key = calloc(m->cap, sizeof *m->key);
    m->len = calloc(m->cap, sizeof *m->len);
    m->val = calloc(m->cap, sizeof *m->val);
    return m->key && m->len && m->val;
}

static void strmap_free(strmap *m)
{
    free(m->key);
    free(m->len);
    free(m->val);
}

/* Inserts key (the first value for a key wins). */
static void strmap_put(strmap *m, const char *key, uint32_t len, int32_t val)
{
    for (uint32_t i = hash(key, len) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (!m->key[i]) {
            m->key[i] = key;
            m->len[i] = len;
            m->val[i] = val;
            return;
        }
        if (m->len[i] == len && !memcmp(m->key[i], key, len))
            return;
    }
}

static int32_t strmap_get(const strmap *m, const char *key, uint32_t len)
{
    for (uint32_t i = hash(key, len) & (m->cap - 1); m->key[i]; i = (i + 1) & (m->cap - 1))
        if (m->len[i] == len && !memcmp(m->key[i], key, len))
            return m->val[i];
    return -1;
}

/* --- the tokenizer ---------------------------------------------------------------------- */

enum { TOK_SPM, TOK_GPT2 };

struct qtc_tokenizer {
    int kind;
    int vocab;
    char **pieces;     /* as stored (spm: spaces for U+2581; gpt2: mapped code points) */
    char **decoded;    /* the bytes each token stands for */
    float *scores;     /* spm */
    strmap ids;        /* ordinary pieces -> id */
    strmap ranks;      /* gpt2: "left right" -> merge rank */
    char **merges;     /* gpt2: the merge strings the rank map points into */
    int n_merges;
    int byte_id[256];  /* spm: the <0xXX> token of each byte, or -1 */
    int bos, eos;
};

void qtc_tokenizer_free(qtc_tokenizer *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->vocab; i++) {
        if (t->decoded && t->decoded[i] != t->pieces[i])
            free(t->decoded[i]);
        if (t->pieces)
            free(t->pieces[i]);
    }
    for (int i = 0; t->merges && i < t->n_merges; i++)
        free(t->merges[i]);
    free(t->merges);
    free(t->pieces);
    free(t->decoded);
    free(t->scores);
    strmap_free(&t->ids);
    strmap_free(&t->ranks);
    free(t);
}

static int utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The code point at s[*i] (advancing *i); invalid bytes stand for themselves. */
static uint32_t utf8_next(const char *s, size_t n, size_t *i)
{
    const unsigned char *u = (const unsigned char *)s + *i;
    size_t left = n - *i;
    int len = u[0] < 0x80 ? 1 : (u[0] & 0xE0) == 0xC0 ? 2 : (u[0] & 0xF0) == 0xE0 ? 3 : (u[0] & 0xF8) == 0xF0 ? 4 : 1;
    if ((size_t)len > left)
        len = 1;
    for (int k = 1; k < len; k++)
        if ((u[k] & 0xC0) != 0x80)
            len = 1;
    uint32_t cp = len == 1 ? u[0] : len == 2 ? (u[0] & 0x1Fu) : len == 3 ? (u[0] & 0x0Fu) : (u[0] & 0x07u);
    for (int k = 1; k < len; k++)
        cp = (cp << 6) | (u[k] & 0x3Fu);
    *i += (size_t)len;
    return cp;
}

/* GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n. */
static uint32_t gpt2_byte_cp(int b)
{
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        return (uint32_t)b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF)))
            n++;
    return 256u + (uint32_t)n;
}

static int ucp_class(uint32_t cp)
{
    int lo = 0, hi = qtc_ucp_n_ranges - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < qtc_ucp_ranges[mid].first)
            hi = mid - 1;
        else if (cp > qtc_ucp_ranges[mid].last)
            lo = mid + 1;
        else
            return qtc_ucp_ranges[mid].cls;
    }
    return 0;
}

/* Unicode's White_Space property. */
static int is_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static qtc_tokenizer *from_kvs(const qtc_kvs *kv, const char *what, qtc_error *err)
{
    const char *model = qtc_kvs_str(kv, "tokenizer.ggml.model");
    const qtc_kv *tokens = qtc_kvs_get(kv, "tokenizer.ggml.tokens"), *scores = qtc_kvs_get(kv, "tokenizer.ggml.scores");
    const qtc_kv *types = qtc_kvs_get(kv, "tokenizer.ggml.token_type"), *merges = qtc_kvs_get(kv, "tokenizer.ggml.merges");
    int kind = model && !strcmp(model, "llama") ? TOK_SPM : model && !strcmp(model, "gpt2") ? TOK_GPT2 : -1;
    if (kind < 0 || !tokens || tokens->elem_type != QTC_KV_STRING || (kind == TOK_GPT2 && !merges)) {
        qtc_error_set(err, QTC_ERR_INPUT, "%s: tokenizer model '%s' is not supported (qtc reads \"llama\" and \"gpt2\" vocabularies)",
                      what, model ? model : "?");
        return NULL;
    }
    int n = (int)tokens->count;
    if ((scores && scores->count != tokens->count) || (types && types->count != tokens->count) || n <= 0 || n > (1 << 24) ||
        (merges && merges->elem_type != QTC_KV_STRING)) {
        qtc_error_set(err, QTC_ERR_INPUT, "%s: tokenizer arrays disagree in length or type", what);
        return NULL;
    }
    qtc_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        goto nomem;
    t->kind = kind;
    t->vocab = n;
    t->bos = (int)qtc_kvs_num(kv, "tokenizer.ggml.bos_token_id", 1);
    t->eos = (int)qtc_kvs_num(kv, "tokenizer.ggml.eos_token_id", 2);
    t->pieces = calloc((size_t)n, sizeof *t->pieces);
    t->decoded = calloc((size_t)n, sizeof *t->decoded);
    t->scores = calloc((size_t)n, sizeof *t->scores);
    if (!t->pieces || !t->decoded || !t->scores || !strmap_init(&t->ids, (uint32_t)n))
        goto nomem;
    for (int b = 0; b < 256; b++)
        t->byte_id[b] = -1;
    uint32_t cp_byte[512]; /* gpt2: mapped code point -> byte */
    for (int b = 0; b < 256; b++)
        cp_byte[gpt2_byte_cp(b)] = (uint32_t)b;
    for (int i = 0; i < n; i++) {
        const qtc_str *src = (const qtc_str *)tokens->vals + i;
        char *p = malloc(src->len + 1);
        if (!p)
            goto nomem;
        size_t o = 0;
        for (uint64_t j = 0; j < src->len; j++) { /* spm: U+2581 back to a space */
            if (kind == TOK_SPM && j + 2 < src->len && !memcmp(src->ptr + j, "\xe2\x96\x81", 3)) {
                p[o++] = ' ';
                j += 2;
            } else
                p[o++] = src->ptr[j];
        }
        p[o] = '\0';
        t->pieces[i] = p;
        t->decoded[i] = p;
        t->scores[i] = scores ? (float)qtc_kv_num_at(scores, (uint64_t)i) : 0;
        int type = types ? (int)qtc_kv_num_at(types, (uint64_t)i) : 1;
        unsigned int byte;
        if (kind == TOK_SPM && type == 6 && o == 6 && sscanf(p, "<0x%02X>", &byte) == 1) {
            t->byte_id[byte] = i;
            if (!(t->decoded[i] = malloc(2)))
                goto nomem;
            t->decoded[i][0] = (char)byte;
            t->decoded[i][1] = '\0';
        } else if (type == 1 || type == 4) { /* ordinary and user-defined pieces match text */
            strmap_put(&t->ids, p, (uint32_t)o, i);
        }
        if (kind == TOK_GPT2 && (type == 1 || type == 4)) { /* mapped code points back to bytes */
            char *d = malloc(o + 1);
            if (!d)
                goto nomem;
            size_t k = 0, at = 0;
            while (at < o) {
                uint32_t cp = utf8_next(p, o, &at);
                d[k++] = cp < 512 ? (char)cp_byte[cp] : '?';
            }
            d[k] = '\0';
            t->decoded[i] = d;
        }
    }
    if (kind == TOK_GPT2) {
        t->n_merges = (int)merges->count;
        t->merges = calloc((size_t)(t->n_merges ? t->n_merges : 1), sizeof *t->merges);
        if (!t->merges || !strmap_init(&t->ranks, (uint32_t)t->n_merges))
            goto nomem;
        for (int r = 0; r < t->n_merges; r++) {
            const qtc_str *m = (const qtc_str *)merges->vals + r;
            if (!(t->merges[r] = malloc(m->len + 1)))
                goto nomem;
            memcpy(t->merges[r], m->ptr, m->len);
            t->merges[r][m->len] = '\0';
            strmap_put(&t->ranks, t->merges[r], (uint32_t)m->len, r);
        }
    }
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

qtc_tokenizer *qtc_tokenizer_load(const char *path, int vocab, qtc_error *err)
{
    qtc_in in;
    if (qtc_in_open(&in, path, err) != QTC_OK)
        return NULL;
    size_t i = 0;
    while (i < in.size && (in.data[i] == ' ' || in.data[i] == '\n' || in.data[i] == '\r' || in.data[i] == '\t'))
        i++;
    int gguf = in.size >= 4 && !memcmp(in.data, "GGUF", 4), json = i < in.size && in.data[i] == '{';
    char *text = json ? malloc(in.size + 1) : NULL;
    if (text) {
        memcpy(text, in.data, in.size);
        text[in.size] = '\0';
    }
    qtc_in_close(&in);
    qtc_tokenizer *t = NULL;
    if (gguf) {
        qtc_model_file *m = qtc_model_open(path, err);
        t = m ? qtc_tokenizer_for_model(m, err) : NULL;
        qtc_model_close(m);
    } else if (json) {
        qtc_kvs kv = {0};
        qtc_llama_config c = {.vocab = vocab, .bos_id = -1, .eos_id = -1};
        if (!text)
            qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        else if (qtc_tokenizer_kvs_from_json(&kv, text, &c, err) == QTC_OK)
            t = from_kvs(&kv, path, err);
        qtc_kvs_free(&kv);
    } else {
        t = qtc_tokenizer_load_llama2c(path, vocab, err);
    }
    free(text);
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

/* --- encoding ------------------------------------------------------------------------------ */

/* A symbol during merging: a span of a working string, in a linked list. */
typedef struct sym {
    int32_t start, len, prev, next;
} sym;

/* Merges adjacent symbols of text[0..n) until no pair qualifies. best(t, a, la,
 * b, lb, &key) gives a pair's priority (larger is better, <= -1e30 for none). */
static int32_t merge_symbols(const qtc_tokenizer *t, const char *text, sym *s, int32_t count, char *scratch,
                             double (*priority)(const qtc_tokenizer *, const char *, int32_t, const char *, int32_t, char *))
{
    for (;;) {
        double best = -1e30;
        int32_t at = -1;
        for (int32_t i = 0; i != -1 && s[i].next != -1; i = s[i].next) {
            const sym *a = &s[i], *b = &s[a->next];
            double p = priority(t, text + a->start, a->len, text + b->start, b->len, scratch);
            if (p > best) {
                best = p;
                at = i;
            }
        }
        if (at < 0)
            return count;
        sym *a = &s[at], *b = &s[a->next]; /* the pieces are adjacent in text */
        a->len += b->len;
        a->next = b->next;
        if (b->next != -1)
            s[b->next].prev = at;
        count--;
    }
}

static double spm_priority(const qtc_tokenizer *t, const char *a, int32_t la, const char *b, int32_t lb, char *scratch)
{
    (void)scratch;
    (void)b;
    int32_t id = strmap_get(&t->ids, a, (uint32_t)(la + lb)); /* a and b are contiguous */
    return id >= 0 ? t->scores[id] : -1e31;
}

static double gpt2_priority(const qtc_tokenizer *t, const char *a, int32_t la, const char *b, int32_t lb, char *scratch)
{
    memcpy(scratch, a, (size_t)la);
    scratch[la] = ' ';
    memcpy(scratch + la + 1, b, (size_t)lb);
    int32_t rank = strmap_get(&t->ranks, scratch, (uint32_t)(la + lb + 1));
    return rank >= 0 ? -(double)rank : -1e31;
}

/* Appends ids, growing the array. */
typedef struct idbuf {
    int32_t *ids;
    int64_t n, cap;
} idbuf;

static int push(idbuf *b, int32_t id)
{
    if (b->n == b->cap) {
        int64_t c = b->cap ? 2 * b->cap : 256;
        int32_t *p = realloc(b->ids, (size_t)c * sizeof *p);
        if (!p)
            return 0;
        b->ids = p;
        b->cap = c;
    }
    b->ids[b->n++] = id;
    return 1;
}

/* SentencePiece-style: the whole text (after the dummy space) merged as one sequence. */
static qtc_status encode_spm(const qtc_tokenizer *t, const char *text, size_t len, idbuf *out, qtc_error *err)
{
    size_t n = len + 1;
    char *w = malloc(n + 1), *scratch = malloc(8);
    sym *s = malloc(n * sizeof *s);
    int32_t *ids = malloc(n * sizeof *ids);
    qtc_status rc = QTC_OK;
    if (!w || !s || !ids || !scratch) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto done;
    }
    w[0] = ' ';
    memcpy(w + 1, text, len);
    int32_t count = 0;
    for (size_t i = 0; i < n;) { /* one symbol per UTF-8 character */
        size_t j = i;
        utf8_next(w, n, &j);
        s[count] = (sym){(int32_t)i, (int32_t)(j - i), count - 1, -1};
        if (count)
            s[count - 1].next = count;
        count++;
        i = j;
    }
    merge_symbols(t, w, s, count, scratch, spm_priority);
    for (int32_t i = 0; i != -1 && count; i = s[i].next) {
        int32_t id = strmap_get(&t->ids, w + s[i].start, (uint32_t)s[i].len);
        if (id >= 0) {
            if (!push(out, id))
                goto nomem;
            continue;
        }
        for (int32_t b = 0; b < s[i].len; b++) { /* byte fallback */
            int bid = t->byte_id[(unsigned char)w[s[i].start + b]];
            if (bid < 0) {
                rc = qtc_error_set(err, QTC_ERR_INPUT, "byte 0x%02x at offset %d has no token",
                                   (unsigned char)w[s[i].start + b], s[i].start + b - 1);
                goto done;
            }
            if (!push(out, bid))
                goto nomem;
        }
    }
    goto done;
nomem:
    rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
done:
    free(w);
    free(s);
    free(ids);
    free(scratch);
    return rc;
}

/* GPT-2 pre-tokenization: the end of the word starting at code point pos. */
static size_t gpt2_word_end(const uint32_t *cp, const uint8_t *cls, size_t pos, size_t n)
{
#define LETTER(i) ((i) < n && cls[i] == 1)
#define NUMBER(i) ((i) < n && cls[i] == 2)
#define SPACE(i) ((i) < n && is_space(cp[i]))
#define OTHER(i) ((i) < n && !is_space(cp[i]) && cls[i] == 3)
    uint32_t c = cp[pos];
    if (c == '\'' && pos + 1 < n) {
        uint32_t c1 = cp[pos + 1], c2 = pos + 2 < n ? cp[pos + 2] : 0;
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')
            return pos + 2;
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
            return pos + 3;
    }
    size_t q = pos + (c == ' ' && pos + 1 < n && !SPACE(pos + 1) ? 1 : 0); /* an optional leading space */
    if (LETTER(q)) {
        while (LETTER(q))
            q++;
        return q;
    }
    if (NUMBER(q)) {
        while (NUMBER(q))
            q++;
        return q;
    }
    if (OTHER(q)) {
        while (OTHER(q))
            q++;
        return q;
    }
    size_t w = 0;
    while (SPACE(pos + w))
        w++;
    if (w > 1 && pos + w < n) /* \s+(?!\S): leave the last space to the next word */
        return pos + w - 1;
    if (w > 0)
        return pos + w;
    return pos + 1; /* unassigned code points stand alone */
#undef LETTER
#undef NUMBER
#undef SPACE
#undef OTHER
}

static qtc_status encode_gpt2(const qtc_tokenizer *t, const char *text, size_t len, idbuf *out, qtc_error *err)
{
    uint32_t *cp = malloc((len + 1) * sizeof *cp);
    size_t *at = malloc((len + 2) * sizeof *at);
    uint8_t *cls = malloc(len + 1);
    char *w = malloc(2 * len + 8), *scratch = malloc(4 * len + 16);
    sym *s = malloc((len + 1) * sizeof *s);
    qtc_status rc = QTC_OK;
    if (!cp || !at || !cls || !w || !scratch || !s) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto done;
    }
    size_t n = 0;
    for (size_t i = 0; i < len; n++) {
        at[n] = i;
        cp[n] = utf8_next(text, len, &i);
        cls[n] = (uint8_t)ucp_class(cp[n]);
    }
    at[n] = len;
    for (size_t pos = 0; pos < n;) {
        size_t end = gpt2_word_end(cp, cls, pos, n);
        /* the word's bytes as GPT-2 code points, one symbol each */
        int32_t wl = 0, count = 0;
        for (size_t b = at[pos]; b < at[end]; b++) {
            int l = utf8_encode(gpt2_byte_cp((unsigned char)text[b]), w + wl);
            s[count] = (sym){wl, l, count - 1, -1};
            if (count)
                s[count - 1].next = count;
            count++;
            wl += l;
        }
        merge_symbols(t, w, s, count, scratch, gpt2_priority);
        for (int32_t i = 0; i != -1 && count; i = s[i].next) {
            int32_t id = strmap_get(&t->ids, w + s[i].start, (uint32_t)s[i].len);
            if (id < 0) {
                rc = qtc_error_set(err, QTC_ERR_INPUT, "the text near byte %zu has no token", at[pos]);
                goto done;
            }
            if (!push(out, id)) {
                rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
                goto done;
            }
        }
        pos = end;
    }
done:
    free(cp);
    free(at);
    free(cls);
    free(w);
    free(scratch);
    free(s);
    return rc;
}

int64_t qtc_tokenizer_encode(const qtc_tokenizer *t, const char *text, int bos, int eos, int32_t *ids, int64_t cap,
                             qtc_error *err)
{
    idbuf out = {0};
    size_t len = strlen(text);
    qtc_status rc = QTC_OK;
    if (bos && !push(&out, t->bos))
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    if (rc == QTC_OK && len)
        rc = t->kind == TOK_SPM ? encode_spm(t, text, len, &out, err) : encode_gpt2(t, text, len, &out, err);
    if (rc == QTC_OK && eos && !push(&out, t->eos))
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    int64_t n = rc == QTC_OK ? out.n : -1;
    for (int64_t i = 0; i < out.n && i < cap; i++)
        ids[i] = out.ids[i];
    free(out.ids);
    return n;
}

const char *qtc_tokenizer_piece(const qtc_tokenizer *t, int32_t prev, int32_t id)
{
    if (id < 0 || id >= t->vocab)
        return "";
    const char *p = t->decoded[id];
    if (t->kind == TOK_SPM && prev == t->bos && p[0] == ' ' && t->decoded[id] == t->pieces[id])
        p++; /* SentencePiece's dummy space after BOS */
    return p;
}
