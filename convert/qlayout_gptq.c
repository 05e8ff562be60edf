/* qlayout_gptq.c: GPTQ's own layout in safetensors (AutoGPTQ's v1
 * checkpoint_format: qweight packed along the input, qzeros holding zero - 1,
 * f16 scales, g_idx), written and folded back into one weight on reading. */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert_private.h"

int qtc_gptq_layout_entries(const qtc_qscheme *s, const char *weight_name, int64_t rows, int64_t cols, qtc_out_entry *out,
                            char *why, size_t cap)
{
    if (s->kind != QTC_QK_INT || (s->bits != 2 && s->bits != 4 && s->bits != 8) || s->group < 0)
        return snprintf(why, cap, "GPTQ's layout holds 2, 4 or 8-bit integers per group or channel"), -1;
    const int per = qlayout_per_word(s->bits);
    if (cols % per || rows % per)
        return snprintf(why, cap, "GPTQ's layout needs both dimensions (%lld x %lld) a multiple of %d at %d bits; the compressed-tensors layout takes any shape", (long long)rows, (long long)cols, per, s->bits), -1;
    char m[QTC_NAME_MAX];
    qlayout_module_of(weight_name, m, sizeof m);
    int64_t g = qlayout_groups_of(s, cols);
    int ok = qlayout_entry(&out[0], m, ".qweight", QTC_I32, 2, cols / per, rows) &&
             qlayout_entry(&out[1], m, ".qzeros", QTC_I32, 2, g, rows / per) && qlayout_entry(&out[2], m, ".scales", QTC_F16, 2, g, rows) &&
             qlayout_entry(&out[3], m, ".g_idx", QTC_I32, 1, cols, 0);
    if (!ok)
        return snprintf(why, cap, "the names of its parts are too long"), -1;
    return 0;
}

qtc_status qtc_gptq_layout_pack(const qtc_qweight *q, const char *weight_name, qtc_tensor **out, qtc_error *err)
{
    const qtc_qscheme *s = &q->s;
    qtc_out_entry e[QTC_GPTQ_PARTS];
    char why[192];
    if (qtc_gptq_layout_entries(s, weight_name, q->rows, q->cols, e, why, sizeof why) != 0)
        return qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': %s", weight_name, why);
    for (int i = 0; i < QTC_GPTQ_PARTS; i++)
        out[i] = NULL;
    const int bits = s->bits, per = qlayout_per_word(bits), bias = 1 << (bits - 1);
    const uint32_t mask = (1u << bits) - 1;
    const int64_t g = q->n_groups, group = s->group > 0 ? s->group : q->cols;
    for (int64_t j = 0; j < q->rows * g; j++) /* v1 stores zero - 1, which cannot be negative */
        if ((s->symmetric ? bias : q->zero[j] + bias) == 0)
            return qtc_error_set(err, QTC_ERR_USAGE,
                                 "tensor '%s': a zero point at the bottom of the range, which GPTQ's v1 layout cannot store "
                                 "(use the compressed-tensors layout)", weight_name);
    for (int i = 0; i < QTC_GPTQ_PARTS; i++)
        if (!(out[i] = qlayout_new_like(&e[i], err)))
            goto fail;
    uint32_t *qw = out[0]->data, *qz = out[1]->data;
    uint16_t *sc = out[2]->data;
    int32_t *gi = out[3]->data;
    for (int64_t r = 0; r < q->rows; r++) /* r: output, c: input */
        for (int64_t c = 0; c < q->cols; c++)
            qw[(c / per) * q->rows + r] |= ((uint32_t)(q->q[r * q->cols + c] + bias) & mask) << (bits * (int)(c % per));
    for (int64_t k = 0; k < g; k++)
        for (int64_t r = 0; r < q->rows; r++) {
            int z = s->symmetric ? bias : q->zero[r * g + k] + bias;
            qz[k * (q->rows / per) + r / per] |= ((uint32_t)(z - 1) & mask) << (bits * (int)(r % per));
            sc[k * q->rows + r] = qtc_f32_to_f16(q->scale[r * g + k]);
        }
    for (int64_t c = 0; c < q->cols; c++)
        gi[c] = (int32_t)(c / group);
    return QTC_OK;
fail:
    for (int i = 0; i < QTC_GPTQ_PARTS; i++)
        qtc_tensor_free(out[i]);
    return err->code;
}

char *qtc_gptq_layout_config(const qtc_qscheme *s, int desc_act, double damp, int true_sequential)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "quant_method", "gptq");
    cJSON_AddNumberToObject(o, "bits", s->bits);
    cJSON_AddNumberToObject(o, "group_size", s->group > 0 ? s->group : -1);
    cJSON_AddBoolToObject(o, "desc_act", desc_act);
    cJSON_AddBoolToObject(o, "sym", s->symmetric);
    cJSON_AddNumberToObject(o, "damp_percent", damp);
    cJSON_AddBoolToObject(o, "static_groups", desc_act); /* act-order here keeps the plain groups */
    cJSON_AddBoolToObject(o, "true_sequential", true_sequential);
    cJSON_AddStringToObject(o, "checkpoint_format", "gptq");
    char *j = cJSON_PrintUnformatted(o), *s2 = j ? strdup(j) : NULL;
    cJSON_free(j);
    cJSON_Delete(o);
    return s2;
}

/* The bits and group of a GPTQ quantization_config; 0 when it is not one. */
int qlayout_gptq_scheme(const char *config_json, qtc_qscheme *s)
{
    cJSON *o = config_json ? cJSON_Parse(config_json) : NULL;
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(o, "quantization_config");
    const char *method = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(qc, "quant_method"));
    int ok = method && strcmp(method, "gptq") == 0;
    if (ok) {
        memset(s, 0, sizeof *s);
        s->kind = QTC_QK_INT;
        s->bits = (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(qc, "bits"));
        int g = (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(qc, "group_size"));
        s->group = g > 0 ? g : 0;
        s->symmetric = !cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(qc, "sym"));
        ok = s->bits == 2 || s->bits == 4 || s->bits == 8;
    }
    cJSON_Delete(o);
    return ok;
}

/* Folds one GPTQ weight; qi is its qweight entry. */
qtc_status qlayout_fold_gptq(qtc_model_file *m, int qi, const qtc_qscheme *cfg, char *hide, qtc_error *err)
{
    char mod[QTC_NAME_MAX];
    const qtc_tensor_entry *qe = &m->tensors[qi];
    const char *file = m->inputs[qe->input].name;
    snprintf(mod, sizeof mod, "%.*s", (int)(strlen(qe->name) - strlen(".qweight")), qe->name);
    int zi = qlayout_find_part(m, mod, ".qzeros");
    int si = qlayout_find_part(m, mod, ".scales");
    int gi = qlayout_find_part(m, mod, ".g_idx");
    qtc_qscheme s = *cfg;
    const int per = qlayout_per_word(s.bits), bias = 1 << (s.bits - 1);
    int64_t cols = qe->ndim == 2 ? qe->ne[0] * per : 0, rows = qe->ndim == 2 ? qe->ne[1] : 0;
    int64_t g = qlayout_groups_of(&s, cols);
    int ok = qe->dtype == QTC_I32 && rows > 0 && cols > 0 && rows % per == 0 && rows <= QTC_MAX_NUMEL / cols && zi >= 0 &&
             si >= 0 && qlayout_is_shape(&m->tensors[zi], QTC_I32, 2, g, rows / per) && qlayout_is_shape(&m->tensors[si], QTC_F16, 2, g, rows) &&
             (gi < 0 || qlayout_is_shape(&m->tensors[gi], QTC_I32, 1, cols, 0));
    if (!ok)
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: '%s': GPTQ parts (qweight, qzeros, scales, g_idx) missing or with inconsistent shapes",
                             file, mod);
    const int32_t *gix = gi >= 0 ? (const int32_t *)m->tensors[gi].data : NULL;
    const int64_t group = s.group > 0 ? s.group : cols;
    for (int64_t c = 0; gix && c < cols; c++) {
        int32_t v;
        memcpy(&v, gix + c, 4);
        if (v != c / group)
            return qtc_error_set(err, QTC_ERR_INPUT, "%s: '%s': g_idx[%lld] is %d, not %lld: act-order groups are not supported",
                                 file, mod, (long long)c, v, (long long)(c / group));
    }
    const unsigned char *zb = m->tensors[zi].data;
    const uint32_t mask = (1u << s.bits) - 1;
    s.symmetric = 1; /* symmetric when every zero point is the middle of the range */
    for (int64_t k = 0; k < g * rows && s.symmetric; k++) {
        uint32_t w;
        memcpy(&w, zb + 4 * (size_t)(k / per), 4);
        s.symmetric = (int)(((w >> (s.bits * (int)(k % per))) & mask) + 1) == bias;
    }
    qtc_tensor_entry *e = &m->tensors[qi];
    memset(&e->qparts, 0, sizeof e->qparts);
    e->qparts.scheme_set = 1;
    e->qparts.gptq = 1;
    e->qparts.packed = e->data;
    e->qparts.zero = zb;
    e->qparts.scale = m->tensors[si].data;
    e->qparts.g_idx = gix ? m->tensors[gi].data : NULL;
    e->scheme = s;
    qlayout_join(e->name, mod, ".weight");
    e->dtype = QTC_F32;
    e->ndim = 2;
    e->ne[0] = rows;
    e->ne[1] = cols;
    hide[zi] = hide[si] = 1;
    if (gi >= 0)
        hide[gi] = 1;
    return QTC_OK;
}

/* A GPTQ weight's codes, scales and zero points. */
void qlayout_gptq_unpack(const qtc_qparts *p, qtc_qweight *q)
{
    const int bits = q->s.bits, per = qlayout_per_word(bits), bias = 1 << (bits - 1);
    const uint32_t mask = (1u << bits) - 1;
    const int64_t g = q->n_groups;
    for (int64_t r = 0; r < q->rows; r++)
        for (int64_t c = 0; c < q->cols; c++) {
            uint32_t w;
            memcpy(&w, p->packed + 4 * (size_t)((c / per) * q->rows + r), 4);
            q->q[r * q->cols + c] = (int8_t)((int)((w >> (bits * (int)(c % per))) & mask) - bias);
        }
    for (int64_t k = 0; k < g; k++)
        for (int64_t r = 0; r < q->rows; r++) {
            uint16_t h;
            memcpy(&h, p->scale + 2 * (size_t)(k * q->rows + r), 2);
            q->scale[r * g + k] = qtc_f16_to_f32(h);
            if (q->zero) {
                uint32_t w;
                memcpy(&w, p->zero + 4 * (size_t)(k * (q->rows / per) + r / per), 4);
                q->zero[r * g + k] = (int8_t)((int)(((w >> (bits * (int)(r % per))) & mask) + 1) - bias);
            }
        }
}
