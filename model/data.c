/* data.c: text files as token streams. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/io.h"
#include "qtc/model.h"

void qtc_tokens_free(qtc_tokens *d)
{
    free(d->ids);
    d->ids = NULL;
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
