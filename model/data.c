/* data.c: text files as token streams. */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/io.h"
#include "qtc/model.h"

void qtc_tokens_free(qtc_tokens *d)
{
    free(d->ids);
    free(d->loss_mask);
    d->ids = NULL;
    d->loss_mask = NULL;
    d->n = 0;
}

/* Appends the tokens of one document (trimmed; skipped when empty). */
static qtc_status add_document(const qtc_tokenizer *t, const char *text, size_t len, qtc_tokens *out, int64_t *cap,
                               const char *path, size_t offset, qtc_error *err)
{
    while (len && isspace((unsigned char)*text)) {
        text++;
        len--;
        offset++;
    }
    while (len && isspace((unsigned char)text[len - 1]))
        len--;
    if (!len)
        return QTC_OK;
    char *doc = malloc(len + 1);
    if (!doc)
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    memcpy(doc, text, len);
    doc[len] = '\0';
    if (strlen(doc) != len) {
        free(doc);
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: a NUL byte in the text near byte %zu", path, offset);
    }
    int64_t need = (int64_t)len + 3; /* at most one token per byte, plus BOS and the dummy prefix */
    if (out->n + need > *cap) {
        int64_t c = *cap ? *cap : 1 << 16;
        while (c < out->n + need)
            c *= 2;
        int32_t *ids = realloc(out->ids, (size_t)c * sizeof *ids);
        if (!ids) {
            free(doc);
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        }
        out->ids = ids;
        *cap = c;
    }
    int64_t n = qtc_tokenizer_encode(t, doc, 1, 0, out->ids + out->n, *cap - out->n, err);
    free(doc);
    if (n < 0)
        return qtc_error_prefix(err, "%s: the document at byte %zu", path, offset);
    out->n += n;
    return QTC_OK;
}

qtc_status qtc_tokens_from_text(const qtc_tokenizer *t, const char *path, qtc_tokens *out, qtc_error *err)
{
    static const char sep[] = "<|endoftext|>";
    qtc_in in;
    memset(out, 0, sizeof *out);
    if (qtc_in_open(&in, path, err) != QTC_OK)
        return err->code;
    const char *s = (const char *)in.data;
    size_t size = in.size;
    int stories = 0; /* does any line read exactly <|endoftext|>? */
    for (const char *p = s; p && (size_t)(p - s) < size;) {
        const char *nl = memchr(p, '\n', size - (size_t)(p - s));
        size_t len = nl ? (size_t)(nl - p) : size - (size_t)(p - s);
        if (len >= sizeof sep - 1 && !memcmp(p, sep, sizeof sep - 1) && (len == sizeof sep - 1 || p[len - 1] == '\r')) {
            stories = 1;
            break;
        }
        p = nl ? nl + 1 : NULL;
    }
    int64_t cap = 0;
    qtc_status rc = QTC_OK;
    size_t doc_start = 0;
    for (size_t at = 0; at <= size && rc == QTC_OK;) {
        const char *nl = at < size ? memchr(s + at, '\n', size - at) : NULL;
        size_t end = nl ? (size_t)(nl - s) : size, len = end - at;
        int is_sep = len >= sizeof sep - 1 && !memcmp(s + at, sep, sizeof sep - 1);
        if (!stories) { /* a line is a document */
            rc = add_document(t, s + at, len, out, &cap, path, at, err);
        } else if (is_sep || !nl) {
            size_t doc_end = is_sep ? at : end;
            rc = add_document(t, s + doc_start, doc_end - doc_start, out, &cap, path, doc_start, err);
            doc_start = end + 1;
        }
        if (!nl)
            break;
        at = end + 1;
    }
    qtc_in_close(&in);
    if (rc != QTC_OK)
        qtc_tokens_free(out);
    else if (out->n == 0)
        rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: no text to tokenize", path);
    return rc;
}

#define TOKENS_MAGIC "QTCTOKS"

qtc_status qtc_tokens_save(const qtc_tokens *d, const char *path, qtc_error *err)
{
    uint32_t width = 2;
    for (int64_t i = 0; i < d->n; i++)
        if (d->ids[i] < 0 || d->ids[i] > 0xFFFF)
            width = 4;
    unsigned char head[24] = TOKENS_MAGIC;
    uint32_t version = 1;
    uint64_t count = (uint64_t)d->n;
    memcpy(head + 8, &version, 4);
    memcpy(head + 12, &width, 4);
    memcpy(head + 16, &count, 8);
    qtc_out *o = qtc_out_open(path, qtc_path_wants_zstd(path), err);
    if (!o)
        return err->code;
    qtc_status rc = qtc_out_pwrite(o, head, sizeof head, 0, err);
    enum { CHUNK = 1 << 16 };
    unsigned char buf[CHUNK * 4];
    for (int64_t i = 0; i < d->n && rc == QTC_OK; i += CHUNK) {
        int64_t k = d->n - i < CHUNK ? d->n - i : CHUNK;
        for (int64_t j = 0; j < k; j++) {
            uint32_t v = (uint32_t)d->ids[i + j];
            if (width == 2) {
                uint16_t h = (uint16_t)v;
                memcpy(buf + 2 * j, &h, 2);
            } else
                memcpy(buf + 4 * j, &v, 4);
        }
        rc = qtc_out_pwrite(o, buf, (size_t)k * width, sizeof head + (uint64_t)i * width, err);
    }
    if (rc != QTC_OK) {
        qtc_out_abort(o);
        return rc;
    }
    return qtc_out_commit(o, err);
}

qtc_status qtc_tokens_load(const qtc_tokenizer *t, const char *path, int vocab, qtc_tokens *out, qtc_error *err)
{
    qtc_in in;
    memset(out, 0, sizeof *out);
    if (qtc_in_open(&in, path, err) != QTC_OK)
        return err->code;
    if (in.size < 8 || memcmp(in.data, TOKENS_MAGIC, 8) != 0) { /* not a token file: JSON lines or text */
        size_t k = 0;
        while (k < in.size && isspace(in.data[k]))
            k++;
        int jsonl = k < in.size && in.data[k] == '{';
        qtc_in_close(&in);
        if (!t)
            return qtc_error_set(err, QTC_ERR_INPUT, "%s: not a qtc token file, and no tokenizer to read it as text", path);
        return jsonl ? qtc_tokens_from_jsonl(t, path, out, err) : qtc_tokens_from_text(t, path, out, err);
    }
    qtc_status rc = QTC_OK;
    uint32_t version, width;
    uint64_t count;
    if (in.size < 24) {
        rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: a token file header needs 24 bytes, the file has %zu", path, in.size);
        goto done;
    }
    memcpy(&version, in.data + 8, 4);
    memcpy(&width, in.data + 12, 4);
    memcpy(&count, in.data + 16, 8);
    if (version != 1 || (width != 2 && width != 4)) {
        rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: token file version %u with %u-byte ids (qtc reads version 1, 2 or 4 bytes)",
                           path, version, width);
        goto done;
    }
    if (count > (in.size - 24) / width || count * width != in.size - 24) {
        rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: the header counts %llu ids but the file holds %zu bytes of them", path,
                           (unsigned long long)count, in.size - 24);
        goto done;
    }
    out->ids = malloc((size_t)(count ? count : 1) * sizeof *out->ids);
    if (!out->ids) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (uint64_t i = 0; i < count; i++) {
        uint32_t v = 0;
        if (width == 2) {
            uint16_t h;
            memcpy(&h, in.data + 24 + 2 * i, 2);
            v = h;
        } else
            memcpy(&v, in.data + 24 + 4 * i, 4);
        if (v > INT32_MAX || (vocab > 0 && v >= (uint32_t)vocab)) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: id %llu is %u, outside the vocabulary of %d", path,
                               (unsigned long long)i, v, vocab);
            goto done;
        }
        out->ids[i] = (int32_t)v;
    }
    out->n = (int64_t)count;
done:
    qtc_in_close(&in);
    if (rc != QTC_OK)
        qtc_tokens_free(out);
    return rc;
}
