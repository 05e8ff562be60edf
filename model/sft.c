/* sft.c: prompt/response pairs (JSON lines) as a token stream whose loss
 * mask covers the responses only. */
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/io.h"
#include "qtc/model.h"

/* Appends ids (with mask value m) to out, growing the arrays. */
static qtc_status append(qtc_tokens *out, int64_t *cap, const int32_t *ids, int64_t n, uint8_t m, qtc_error *err)
{
    if (out->n + n > *cap) {
        int64_t c = *cap ? *cap : 1 << 14;
        while (c < out->n + n)
            c *= 2;
        int32_t *i2 = realloc(out->ids, (size_t)c * sizeof *i2);
        if (i2)
            out->ids = i2;
        uint8_t *m2 = i2 ? realloc(out->loss_mask, (size_t)c) : NULL;
        if (!m2)
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        out->loss_mask = m2;
        *cap = c;
    }
    memcpy(out->ids + out->n, ids, (size_t)n * sizeof *ids);
    memset(out->loss_mask + out->n, m, (size_t)n);
    out->n += n;
    return QTC_OK;
}

/* The tokens of one string (no BOS/EOS) into a malloc'd array; -1 on error. */
static int64_t encode(const qtc_tokenizer *t, const char *s, int32_t **ids, qtc_error *err)
{
    int64_t cap = (int64_t)strlen(s) + 2;
    *ids = malloc((size_t)cap * sizeof **ids);
    if (!*ids)
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory"), -1;
    return qtc_tokenizer_encode(t, s, 0, 0, *ids, cap, err);
}

qtc_status qtc_tokens_from_jsonl(const qtc_tokenizer *t, const char *path, qtc_tokens *out, qtc_error *err)
{
    memset(out, 0, sizeof *out);
    qtc_in in;
    if (qtc_in_open(&in, path, err) != QTC_OK)
        return err->code;
    qtc_status rc = QTC_OK;
    int64_t cap = 0, line_no = 0, pairs = 0, response_tokens = 0;
    const int32_t bos = qtc_tokenizer_bos(t), eos = qtc_tokenizer_eos(t);
    for (size_t at = 0; at < in.size && rc == QTC_OK;) {
        const unsigned char *nl = memchr(in.data + at, '\n', in.size - at);
        size_t len = nl ? (size_t)(nl - (in.data + at)) : in.size - at;
        line_no++;
        size_t k = 0;
        while (k < len && (in.data[at + k] == ' ' || in.data[at + k] == '\t' || in.data[at + k] == '\r'))
            k++;
        if (k == len) {
            at += len + 1;
            continue;
        }
        cJSON *o = cJSON_ParseWithLength((const char *)in.data + at, len);
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "prompt"), *r = cJSON_GetObjectItemCaseSensitive(o, "response");
        if (!cJSON_IsString(p) || !cJSON_IsString(r)) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: line %lld: %s", path, (long long)line_no,
                               o ? "needs string fields \"prompt\" and \"response\"" : "not valid JSON");
            cJSON_Delete(o);
            break;
        }
        int32_t *pi = NULL, *ri = NULL;
        int64_t np = encode(t, p->valuestring, &pi, err), nr = np >= 0 ? encode(t, r->valuestring, &ri, err) : -1;
        if (np < 0 || nr < 0) {
            rc = qtc_error_prefix(err, "%s: line %lld", path, (long long)line_no);
        } else if ((bos >= 0 && (rc = append(out, &cap, &bos, 1, 0, err)) != QTC_OK) ||
                   (rc = append(out, &cap, pi, np, 0, err)) != QTC_OK || (rc = append(out, &cap, ri, nr, 1, err)) != QTC_OK ||
                   (eos >= 0 && (rc = append(out, &cap, &eos, 1, 1, err)) != QTC_OK)) {
            /* rc set */
        } else {
            pairs++;
            response_tokens += nr;
        }
        free(pi);
        free(ri);
        cJSON_Delete(o);
        at += len + 1;
    }
    qtc_in_close(&in);
    if (rc == QTC_OK && (!pairs || !response_tokens))
        rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: no prompt/response pair with a response to learn", path);
    if (rc != QTC_OK)
        qtc_tokens_free(out);
    return rc;
}
