/* kv.c: the typed key/value metadata container (GGUF's model of metadata). */
#include <stdlib.h>
#include <string.h>

#include "qtc/convert.h"

int qtc_kv_type_size(uint32_t type)
{
    switch (type) {
    case QTC_KV_U8: case QTC_KV_I8: case QTC_KV_BOOL: return 1;
    case QTC_KV_U16: case QTC_KV_I16: return 2;
    case QTC_KV_U32: case QTC_KV_I32: case QTC_KV_F32: return 4;
    case QTC_KV_U64: case QTC_KV_I64: case QTC_KV_F64: return 8;
    case QTC_KV_STRING: return (int)sizeof(qtc_str);
    default: return 0;
    }
}

static void kv_clear(qtc_kv *kv)
{
    uint32_t t = kv->type == QTC_KV_ARRAY ? kv->elem_type : kv->type;
    if (t == QTC_KV_STRING && kv->vals)
        for (uint64_t i = 0; i < kv->count; i++)
            free(((qtc_str *)kv->vals)[i].ptr);
    free(kv->vals);
    free(kv->key);
    memset(kv, 0, sizeof *kv);
}

void qtc_kvs_free(qtc_kvs *k)
{
    for (int i = 0; i < k->n; i++)
        kv_clear(&k->kv[i]);
    free(k->kv);
    memset(k, 0, sizeof *k);
}

const qtc_kv *qtc_kvs_get(const qtc_kvs *k, const char *key)
{
    for (int i = 0; i < k->n; i++)
        if (strcmp(k->kv[i].key, key) == 0)
            return &k->kv[i];
    return NULL;
}

double qtc_kv_num_at(const qtc_kv *kv, uint64_t i)
{
    uint32_t t = kv->type == QTC_KV_ARRAY ? kv->elem_type : kv->type;
    const unsigned char *p = (const unsigned char *)kv->vals + i * (uint64_t)qtc_kv_type_size(t);
    union {
        uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
        float f32; uint64_t u64; int64_t i64; double f64;
    } v;
    memcpy(&v, p, (size_t)qtc_kv_type_size(t));
    switch (t) {
    case QTC_KV_U8: case QTC_KV_BOOL: return v.u8;
    case QTC_KV_I8: return v.i8;
    case QTC_KV_U16: return v.u16;
    case QTC_KV_I16: return v.i16;
    case QTC_KV_U32: return v.u32;
    case QTC_KV_I32: return v.i32;
    case QTC_KV_F32: return v.f32;
    case QTC_KV_U64: return (double)v.u64;
    case QTC_KV_I64: return (double)v.i64;
    case QTC_KV_F64: return v.f64;
    default: return 0;
    }
}

double qtc_kvs_num(const qtc_kvs *k, const char *key, double fallback)
{
    const qtc_kv *kv = qtc_kvs_get(k, key);
    if (!kv || kv->type == QTC_KV_ARRAY || kv->type == QTC_KV_STRING)
        return fallback;
    return qtc_kv_num_at(kv, 0);
}

const char *qtc_kvs_str(const qtc_kvs *k, const char *key)
{
    const qtc_kv *kv = qtc_kvs_get(k, key);
    return kv && kv->type == QTC_KV_STRING ? ((qtc_str *)kv->vals)[0].ptr : NULL;
}

/* The slot for key: the existing one (cleared) or a new one. */
static qtc_kv *slot(qtc_kvs *k, const char *key)
{
    for (int i = 0; i < k->n; i++)
        if (strcmp(k->kv[i].key, key) == 0) {
            kv_clear(&k->kv[i]);
            k->kv[i].key = strdup(key);
            return k->kv[i].key ? &k->kv[i] : NULL;
        }
    if (k->n == k->cap) {
        int cap = k->cap ? 2 * k->cap : 32;
        qtc_kv *kv = realloc(k->kv, (size_t)cap * sizeof *kv);
        if (!kv)
            return NULL;
        k->kv = kv;
        k->cap = cap;
    }
    qtc_kv *kv = &k->kv[k->n];
    memset(kv, 0, sizeof *kv);
    kv->key = strdup(key);
    if (!kv->key)
        return NULL;
    k->n++;
    return kv;
}

static qtc_status fill(qtc_kv *kv, uint32_t type, uint32_t elem, uint64_t count, const void *vals)
{
    kv->type = type;
    kv->elem_type = elem;
    kv->count = count;
    uint32_t t = type == QTC_KV_ARRAY ? elem : type;
    size_t sz = (size_t)qtc_kv_type_size(t);
    kv->vals = calloc(count ? count : 1, sz);
    if (!kv->vals)
        return QTC_ERR_NOMEM;
    if (t != QTC_KV_STRING) {
        memcpy(kv->vals, vals, count * sz);
        return QTC_OK;
    }
    const qtc_str *src = vals;
    qtc_str *dst = kv->vals;
    for (uint64_t i = 0; i < count; i++) {
        dst[i].ptr = malloc(src[i].len + 1);
        if (!dst[i].ptr)
            return QTC_ERR_NOMEM;
        memcpy(dst[i].ptr, src[i].ptr, src[i].len);
        dst[i].ptr[src[i].len] = '\0';
        dst[i].len = src[i].len;
    }
    return QTC_OK;
}

qtc_status qtc_kvs_set_num(qtc_kvs *k, const char *key, uint32_t type, double v)
{
    qtc_kv *kv = slot(k, key);
    if (!kv)
        return QTC_ERR_NOMEM;
    union {
        uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
        float f32; uint64_t u64; int64_t i64; double f64;
    } u;
    memset(&u, 0, sizeof u);
    switch (type) {
    case QTC_KV_U8: case QTC_KV_BOOL: u.u8 = (uint8_t)v; break;
    case QTC_KV_I8: u.i8 = (int8_t)v; break;
    case QTC_KV_U16: u.u16 = (uint16_t)v; break;
    case QTC_KV_I16: u.i16 = (int16_t)v; break;
    case QTC_KV_U32: u.u32 = (uint32_t)v; break;
    case QTC_KV_I32: u.i32 = (int32_t)v; break;
    case QTC_KV_F32: u.f32 = (float)v; break;
    case QTC_KV_U64: u.u64 = (uint64_t)v; break;
    case QTC_KV_I64: u.i64 = (int64_t)v; break;
    default: u.f64 = v; type = QTC_KV_F64; break;
    }
    return fill(kv, type, 0, 1, &u);
}

qtc_status qtc_kvs_set_str(qtc_kvs *k, const char *key, const char *v)
{
    qtc_kv *kv = slot(k, key);
    if (!kv)
        return QTC_ERR_NOMEM;
    qtc_str s = {strlen(v), (char *)(uintptr_t)v};
    return fill(kv, QTC_KV_STRING, 0, 1, &s);
}

qtc_status qtc_kvs_set_array(qtc_kvs *k, const char *key, uint32_t elem_type, uint64_t count,
                             const void *vals)
{
    qtc_kv *kv = slot(k, key);
    if (!kv)
        return QTC_ERR_NOMEM;
    return fill(kv, QTC_KV_ARRAY, elem_type, count, vals);
}

qtc_status qtc_kvs_copy(qtc_kvs *dst, const qtc_kv *src)
{
    qtc_kv *kv = slot(dst, src->key);
    if (!kv)
        return QTC_ERR_NOMEM;
    return fill(kv, src->type, src->elem_type, src->count, src->vals);
}
