/* safetensors.c: the safetensors format.
 *
 *   u64 N (little-endian) | N bytes of JSON, space-padded | byte buffer
 *   JSON: {"__metadata__": {str: str}, "name": {"dtype": "F32", "shape": [..],
 *          "data_offsets": [begin, end]}, ...}
 * Offsets are relative to the buffer, end exclusive, and the tensors cover
 * the buffer exactly: no holes, no overlaps (as the reference reader checks).
 * The reference writer orders tensors by descending dtype alignment, then
 * name, and pads the header to a multiple of 8. Deliberately left out: dtypes
 * qtc cannot compute with (BOOL, U16, U32, U64, F8_*, sub-byte types). */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert_private.h"

#define ST_MAX_HEADER 100000000ull

static const struct {
    const char *name;
    qtc_dtype dtype;
} st_dtypes[] = {
    {"F32", QTC_F32}, {"F16", QTC_F16}, {"BF16", QTC_BF16}, {"F64", QTC_F64}, {"I8", QTC_I8},
    {"U8", QTC_U8},   {"I16", QTC_I16}, {"I32", QTC_I32},   {"I64", QTC_I64},
};

const char *safetensors_dtype_name(qtc_dtype t)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof *st_dtypes; i++)
        if (st_dtypes[i].dtype == t)
            return st_dtypes[i].name;
    return NULL;
}

size_t entry_nbytes(qtc_dtype t, int ndim, const int64_t *ne)
{
    int64_t rows = 1;
    for (int d = 0; d < ndim - 1; d++) {
        if (ne[d] < 0 || (ne[d] && rows > QTC_MAX_NUMEL / ne[d]))
            return SIZE_MAX;
        rows *= ne[d];
    }
    int64_t last = ndim ? ne[ndim - 1] : 1;
    if (last < 0 || (last && rows > QTC_MAX_NUMEL / last))
        return SIZE_MAX;
    size_t row = qtc_dtype_row_size(t, last);
    if (row == SIZE_MAX)
        return SIZE_MAX;
    return (size_t)rows * row;
}

/* A JSON number that is a non-negative integer up to 2^53, or -1. */
static int64_t json_uint(const cJSON *v)
{
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != floor(d))
        return -1;
    return (int64_t)d;
}

typedef struct span {
    uint64_t begin, end;
    int entry;
} span;

static int by_begin(const void *a, const void *b)
{
    const span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

qtc_status safetensors_parse(qtc_model_file *m, int in_index, qtc_error *err)
{
    const qtc_in *in = &m->inputs[in_index];
    const char *file = in->name;
    if (in->size < 8)
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: %zu bytes: too short for a safetensors header", file, in->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | in->data[i];
    if (n > ST_MAX_HEADER)
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: header length %llu is over the 100 MB limit",
                             file, (unsigned long long)n);
    if (n > in->size - 8)
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: header of %llu bytes runs past the end of the file (%zu bytes)",
                             file, (unsigned long long)n, in->size);
    const char *json = (const char *)in->data + 8;
    if (n == 0 || json[0] != '{')
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: the header does not start with '{'", file);
    cJSON *root = cJSON_ParseWithLength(json, (size_t)n);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: the header is not a JSON object", file);
    }
    const unsigned char *buf = in->data + 8 + n;
    uint64_t buf_size = in->size - 8 - n;
    qtc_status rc = QTC_OK;
    int first = m->n_tensors, count = 0;
    span *spans = NULL;
    for (cJSON *it = root->child; it; it = it->next) {
        const char *name = it->string;
        if (strcmp(name, "__metadata__") == 0) {
            if (!cJSON_IsObject(it)) {
                rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: __metadata__ is not an object", file);
                goto done;
            }
            for (cJSON *kv = it->child; kv; kv = kv->next) {
                if (!cJSON_IsString(kv)) {
                    rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: __metadata__ value '%s' is not a string", file, kv->string);
                    goto done;
                }
                if (qtc_kvs_set_str(&m->meta, kv->string, kv->valuestring) != QTC_OK) {
                    rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
                    goto done;
                }
            }
            continue;
        }
        cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        cJSON *shape = cJSON_GetObjectItemCaseSensitive(it, "shape");
        cJSON *offs = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        if (!cJSON_IsObject(it) || !cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs) ||
            cJSON_GetArraySize(offs) != 2) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': needs dtype, shape and two data_offsets", file, name);
            goto done;
        }
        if (strlen(name) >= QTC_NAME_MAX) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor name '%.60s...' is longer than %d bytes", file, name, QTC_NAME_MAX - 1);
            goto done;
        }
        if (qtc_model_find(m, name) >= 0) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s' appears twice", file, name);
            goto done;
        }
        int dtype = -1;
        for (size_t i = 0; i < sizeof st_dtypes / sizeof *st_dtypes; i++)
            if (strcmp(dt->valuestring, st_dtypes[i].name) == 0)
                dtype = (int)st_dtypes[i].dtype;
        if (dtype < 0) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': dtype %.32s is not supported", file, name, dt->valuestring);
            goto done;
        }
        int ndim = cJSON_GetArraySize(shape);
        if (ndim > QTC_MAX_DIMS) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': %d dimensions (qtc handles up to %d)", file, name, ndim, QTC_MAX_DIMS);
            goto done;
        }
        qtc_tensor_entry *e = model_add_entry(m, err);
        if (!e) {
            rc = QTC_ERR_NOMEM;
            goto done;
        }
        snprintf(e->name, sizeof e->name, "%s", name);
        e->dtype = (qtc_dtype)dtype;
        e->ndim = ndim;
        e->input = in_index;
        for (int d = 0; d < QTC_MAX_DIMS; d++)
            e->ne[d] = 1;
        int d = 0;
        for (cJSON *s = shape->child; s; s = s->next, d++) {
            int64_t v = json_uint(s);
            if (v < 0 || v > QTC_MAX_NUMEL) {
                rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': shape dimension %d is not a sensible size", file, name, d);
                goto done;
            }
            e->ne[d] = v;
        }
        int64_t b = json_uint(cJSON_GetArrayItem(offs, 0)), en = json_uint(cJSON_GetArrayItem(offs, 1));
        size_t need = entry_nbytes(e->dtype, e->ndim, e->ne);
        if (need == SIZE_MAX) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': the shape's byte size overflows", file, name);
            goto done;
        }
        if (b < 0 || en < 0 || en < b) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': data_offsets are not an increasing pair", file, name);
            goto done;
        }
        if ((uint64_t)en > buf_size) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': data ends at byte %llu of a %llu-byte buffer",
                               file, name, (unsigned long long)en, (unsigned long long)buf_size);
            goto done;
        }
        if ((uint64_t)(en - b) != need) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': %llu bytes of data for a shape that needs %zu",
                               file, name, (unsigned long long)(en - b), need);
            goto done;
        }
        e->data = buf + b;
        e->nbytes = need;
        count++;
    }
    /* the tensors must tile the buffer */
    spans = malloc((size_t)(count ? count : 1) * sizeof *spans);
    if (!spans) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < count; i++) {
        const qtc_tensor_entry *e = &m->tensors[first + i];
        spans[i].begin = (uint64_t)(e->data - buf);
        spans[i].end = spans[i].begin + e->nbytes;
        spans[i].entry = first + i;
    }
    qsort(spans, (size_t)count, sizeof *spans, by_begin);
    uint64_t at = 0;
    for (int i = 0; i < count; i++) {
        if (spans[i].begin != at) {
            rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': data starts at byte %llu but the previous tensor ends at %llu (%s)",
                               file, m->tensors[spans[i].entry].name, (unsigned long long)spans[i].begin,
                               (unsigned long long)at, spans[i].begin < at ? "overlap" : "hole");
            goto done;
        }
        at = spans[i].end;
    }
    if (at != buf_size)
        rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: the tensors cover %llu bytes of a %llu-byte buffer", file,
                           (unsigned long long)at, (unsigned long long)buf_size);
done:
    free(spans);
    cJSON_Delete(root);
    return rc;
}

/* --- writing -------------------------------------------------------------------- */

typedef struct order_key {
    const qtc_out_entry *e;
    int index;
} order_key;

static int reference_order(const void *a, const void *b)
{
    const order_key *x = a, *y = b;
    int ax = qtc_dtype_info(x->e->dtype)->type_size, ay = qtc_dtype_info(y->e->dtype)->type_size;
    if (ax != ay)
        return ay - ax; /* larger alignment first */
    return strcmp(x->e->name, y->e->name);
}

char *safetensors_header(const qtc_out_entry *e, int n, const qtc_kvs *meta, int *order,
                         uint64_t *offsets, uint64_t *len, qtc_error *err)
{
    order_key *keys = malloc((size_t)(n ? n : 1) * sizeof *keys);
    cJSON *root = cJSON_CreateObject();
    char *text = NULL, *out = NULL;
    if (!keys || !root)
        goto nomem;
    for (int i = 0; i < n; i++) {
        if (!safetensors_dtype_name(e[i].dtype)) {
            qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': safetensors cannot store %s", e[i].name,
                          qtc_dtype_info(e[i].dtype)->name);
            goto fail;
        }
        keys[i].e = &e[i];
        keys[i].index = i;
    }
    qsort(keys, (size_t)n, sizeof *keys, reference_order);
    if (meta && meta->n) {
        cJSON *md = cJSON_AddObjectToObject(root, "__metadata__");
        if (!md)
            goto nomem;
        for (int i = 0; i < meta->n; i++)
            if (meta->kv[i].type == QTC_KV_STRING &&
                !cJSON_AddStringToObject(md, meta->kv[i].key, ((qtc_str *)meta->kv[i].vals)[0].ptr))
                goto nomem;
    }
    uint64_t at = 0;
    for (int k = 0; k < n; k++) {
        const qtc_out_entry *x = keys[k].e;
        size_t nb = entry_nbytes(x->dtype, x->ndim, x->ne);
        if (nb == SIZE_MAX) {
            qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': impossible shape", x->name);
            goto fail;
        }
        cJSON *t = cJSON_AddObjectToObject(root, x->name);
        if (!t || !cJSON_AddStringToObject(t, "dtype", safetensors_dtype_name(x->dtype)))
            goto nomem;
        cJSON *shape = cJSON_AddArrayToObject(t, "shape"), *offs = cJSON_AddArrayToObject(t, "data_offsets");
        if (!shape || !offs)
            goto nomem;
        for (int d = 0; d < x->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)x->ne[d]));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)at));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(at + nb)));
        order[k] = keys[k].index;
        offsets[keys[k].index] = at;
        at += nb;
    }
    text = cJSON_PrintUnformatted(root);
    if (!text)
        goto nomem;
    size_t tl = strlen(text), padded = (tl + 7) / 8 * 8;
    out = malloc(padded + 1);
    if (!out)
        goto nomem;
    memcpy(out, text, tl);
    memset(out + tl, ' ', padded - tl);
    out[padded] = '\0';
    *len = padded;
    cJSON_free(text);
    cJSON_Delete(root);
    free(keys);
    return out;
nomem:
    qtc_error_set(err, QTC_ERR_NOMEM, "out of memory building a safetensors header");
fail:
    cJSON_free(text);
    cJSON_Delete(root);
    free(keys);
    return NULL;
}
