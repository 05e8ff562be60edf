/* qlayout.c: quantized weights in safetensors (see qtc/convert.h): integer
 * schemes in compressed-tensors' layout and NF4 in bitsandbytes', each
 * described (entries), packed and given its quantization_config; the static
 * input scales of a W8A8 model read back; and, on reading any model, the
 * stored parts of each weight folded into one entry under the weight's own
 * name (GPTQ's layout through qlayout_gptq.c), so every tool sees plain
 * weights whose quantized ones dequantize on load, or hand their codes over
 * as stored (qtc_model_qweight). */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert_private.h"

/* the module path: the weight name without ".weight" */
void qlayout_module_of(const char *weight_name, char *out, size_t cap)
{
    size_t n = strlen(weight_name);
    if (n > 7 && strcmp(weight_name + n - 7, ".weight") == 0)
        n -= 7;
    snprintf(out, cap, "%.*s", (int)n, weight_name);
}

int qlayout_per_word(int bits)
{
    return 32 / bits;
}

int64_t qlayout_groups_of(const qtc_qscheme *s, int64_t cols)
{
    return s->group > 0 ? (cols + s->group - 1) / s->group : 1;
}

/* a + b into out (QTC_NAME_MAX bytes); 0 when it does not fit */
int qlayout_join(char *out, const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la + lb >= QTC_NAME_MAX)
        return 0;
    memcpy(out, a, la);
    memcpy(out + la, b, lb + 1);
    return 1;
}

/* Fills an entry; 0 when its name is too long. */
int qlayout_entry(qtc_out_entry *e, const char *module, const char *suffix, qtc_dtype t, int ndim, int64_t a, int64_t b)
{
    int fits = qlayout_join(e->name, module, suffix);
    e->dtype = t;
    e->ndim = ndim;
    e->ne[0] = a;
    e->ne[1] = ndim > 1 ? b : 1;
    e->ne[2] = e->ne[3] = 1;
    return fits;
}

/* bitsandbytes' quant_state JSON; its length does not depend on the offset
 * (printed as %.9e, enough digits for any float32). */
static int nf4_state_json(const qtc_qscheme *s, int64_t rows, int64_t cols, float offset, char *buf, size_t cap)
{
    if (s->double_quant)
        return snprintf(buf, cap,
                        "{\"quant_type\": \"nf4\", \"blocksize\": %d, \"dtype\": \"float32\", \"shape\": [%lld, %lld], "
                        "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": %.9e}",
                        s->group, (long long)rows, (long long)cols, (double)offset);
    return snprintf(buf, cap, "{\"quant_type\": \"nf4\", \"blocksize\": %d, \"dtype\": \"float32\", \"shape\": [%lld, %lld]}",
                    s->group, (long long)rows, (long long)cols);
}

int qtc_qlayout_count(const qtc_qscheme *s)
{
    if (s->kind == QTC_QK_NF4)
        return s->double_quant ? 6 : 4;
    return (s->bits == 8 ? 2 : 3) + !s->symmetric;
}

int qtc_qlayout_entries(const qtc_qscheme *s, const char *weight_name, int64_t rows, int64_t cols, qtc_out_entry *out)
{
    int ok = 1;
    char m[QTC_NAME_MAX];
    qlayout_module_of(weight_name, m, sizeof m);
    if (s->kind == QTC_QK_NF4) {
        int64_t n = rows * cols, nb = (n + s->group - 1) / s->group;
        char json[512];
        int len = nf4_state_json(s, rows, cols, 0, json, sizeof json);
        ok &= qlayout_entry(&out[0], m, ".weight", QTC_U8, 2, (n + 1) / 2, 1);
        ok &= qlayout_entry(&out[1], m, ".weight.absmax", s->double_quant ? QTC_U8 : QTC_F32, 1, nb, 0);
        ok &= qlayout_entry(&out[2], m, ".weight.quant_map", QTC_F32, 1, 16, 0);
        int k = 3;
        if (s->double_quant) {
            ok &= qlayout_entry(&out[k++], m, ".weight.nested_absmax", QTC_F32, 1, (nb + 255) / 256, 0);
            ok &= qlayout_entry(&out[k++], m, ".weight.nested_quant_map", QTC_F32, 1, 256, 0);
        }
        ok &= qlayout_entry(&out[k], m, ".weight.quant_state.bitsandbytes__nf4", QTC_U8, 1, len, 0);
        return ok ? 0 : -1;
    }
    int64_t g = qlayout_groups_of(s, cols), srows = s->group < 0 ? 1 : rows;
    int k = 0;
    if (s->bits == 8)
        ok &= qlayout_entry(&out[k++], m, ".weight", QTC_I8, 2, rows, cols);
    else
        ok &= qlayout_entry(&out[k++], m, ".weight_packed", QTC_I32, 2, rows, (cols + qlayout_per_word(s->bits) - 1) / qlayout_per_word(s->bits));
    if (s->group < 0)
        ok &= qlayout_entry(&out[k++], m, ".weight_scale", QTC_F32, 1, 1, 0);
    else
        ok &= qlayout_entry(&out[k++], m, ".weight_scale", QTC_F32, 2, rows, g);
    if (s->bits != 8)
        ok &= qlayout_entry(&out[k++], m, ".weight_shape", QTC_I32, 1, 2, 0);
    if (!s->symmetric) {
        if (s->bits == 8)
            ok &= qlayout_entry(&out[k++], m, ".weight_zero_point", QTC_I8, out[1].ndim, out[1].ne[0], out[1].ne[1]);
        else if (s->group < 0)
            ok &= qlayout_entry(&out[k++], m, ".weight_zero_point", QTC_I32, 1, 1, 0);
        else
            ok &= qlayout_entry(&out[k++], m, ".weight_zero_point", QTC_I32, 2, (srows + qlayout_per_word(s->bits) - 1) / qlayout_per_word(s->bits), g);
    }
    return ok ? 0 : -1;
}

qtc_tensor *qlayout_new_like(const qtc_out_entry *e, qtc_error *err)
{
    qtc_tensor *t = qtc_tensor_new(e->dtype, e->ndim, e->ne, err);
    if (t)
        qtc_tensor_set_name(t, e->name);
    return t;
}

qtc_status qtc_qlayout_pack(const qtc_qweight *q, const char *weight_name, qtc_tensor **out, qtc_error *err)
{
    const qtc_qscheme *s = &q->s;
    int n_out = qtc_qlayout_count(s);
    qtc_out_entry e[8];
    if (qtc_qlayout_entries(s, weight_name, q->rows, q->cols, e) != 0)
        return qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': its quantized parts' names are too long", weight_name);
    for (int i = 0; i < n_out; i++)
        out[i] = NULL;
    for (int i = 0; i < n_out; i++)
        if (!(out[i] = qlayout_new_like(&e[i], err)))
            goto fail;
    int64_t n = q->rows * q->cols;
    if (s->kind == QTC_QK_NF4) {
        uint8_t *p = out[0]->data;
        for (int64_t i = 0; i < n; i += 2) /* the first value in the high nibble */
            p[i / 2] = (uint8_t)(((uint8_t)q->q[i] << 4) | (i + 1 < n ? (uint8_t)q->q[i + 1] : 0));
        if (s->double_quant)
            memcpy(out[1]->data, q->absmax_q, (size_t)q->n_blocks);
        else
            memcpy(out[1]->data, q->scale, (size_t)q->n_blocks * sizeof(float));
        memcpy(out[2]->data, qtc_nf4_code, sizeof qtc_nf4_code);
        int k = 3;
        if (s->double_quant) {
            memcpy(out[k++]->data, q->nested_absmax, (size_t)((q->n_blocks + 255) / 256) * sizeof(float));
            qtc_dynamic_map(out[k++]->data);
        }
        char json[512];
        int len = nf4_state_json(s, q->rows, q->cols, q->nested_offset, json, sizeof json);
        if (len != out[k]->ne[0]) {
            qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s': quant state JSON changed length", weight_name);
            goto fail;
        }
        memcpy(out[k]->data, json, (size_t)len);
        return QTC_OK;
    }
    const int bias = 1 << (s->bits - 1), per = qlayout_per_word(s->bits);
    int k = 0;
    if (s->bits == 8) {
        memcpy(out[k++]->data, q->q, (size_t)n);
    } else {
        uint32_t *w = out[k++]->data;
        int64_t words = (q->cols + per - 1) / per;
        for (int64_t r = 0; r < q->rows; r++)
            for (int64_t c = 0; c < q->cols; c++)
                w[r * words + c / per] |= (uint32_t)(q->q[r * q->cols + c] + bias) << (s->bits * (int)(c % per));
    }
    int64_t ns = s->group < 0 ? 1 : q->rows * q->n_groups;
    memcpy(out[k++]->data, q->scale, (size_t)ns * sizeof(float));
    if (s->bits != 8) {
        int32_t *shape = out[k++]->data;
        shape[0] = (int32_t)q->rows;
        shape[1] = (int32_t)q->cols;
    }
    if (!s->symmetric) {
        if (s->bits == 8) {
            memcpy(out[k]->data, q->zero, (size_t)ns);
        } else { /* packed along dimension 0 */
            uint32_t *w = out[k]->data;
            int64_t srows = s->group < 0 ? 1 : q->rows, g = s->group < 0 ? 1 : q->n_groups;
            for (int64_t r = 0; r < srows; r++)
                for (int64_t j = 0; j < g; j++)
                    w[(r / per) * g + j] |= (uint32_t)(q->zero[r * g + j] + bias) << (s->bits * (int)(r % per));
        }
    }
    return QTC_OK;
fail:
    for (int i = 0; i < n_out; i++)
        qtc_tensor_free(out[i]);
    return err ? err->code : QTC_ERR_NOMEM;
}

char *qtc_qlayout_hf_config(const qtc_qscheme *s, int input_bits)
{
    cJSON *o = cJSON_CreateObject();
    if (s->kind == QTC_QK_NF4) {
        cJSON_AddStringToObject(o, "quant_method", "bitsandbytes");
        cJSON_AddBoolToObject(o, "load_in_4bit", 1);
        cJSON_AddBoolToObject(o, "load_in_8bit", 0);
        cJSON_AddStringToObject(o, "bnb_4bit_quant_type", "nf4");
        cJSON_AddBoolToObject(o, "bnb_4bit_use_double_quant", s->double_quant);
        cJSON_AddStringToObject(o, "bnb_4bit_compute_dtype", "float32");
        cJSON_AddStringToObject(o, "bnb_4bit_quant_storage", "uint8");
        cJSON *skip = cJSON_AddArrayToObject(o, "llm_int8_skip_modules");
        cJSON_AddItemToArray(skip, cJSON_CreateString("lm_head"));
    } else {
        cJSON_AddStringToObject(o, "quant_method", "compressed-tensors");
        cJSON_AddStringToObject(o, "format", s->bits == 8 ? "int-quantized" : "pack-quantized");
        cJSON_AddStringToObject(o, "quantization_status", "compressed");
        cJSON *groups = cJSON_AddObjectToObject(o, "config_groups");
        cJSON *g0 = cJSON_AddObjectToObject(groups, "group_0");
        cJSON *targets = cJSON_AddArrayToObject(g0, "targets");
        cJSON_AddItemToArray(targets, cJSON_CreateString("Linear"));
        cJSON *w = cJSON_AddObjectToObject(g0, "weights");
        cJSON_AddNumberToObject(w, "num_bits", s->bits);
        cJSON_AddStringToObject(w, "type", "int");
        cJSON_AddBoolToObject(w, "symmetric", s->symmetric);
        cJSON_AddStringToObject(w, "strategy", s->group > 0 ? "group" : s->group == 0 ? "channel" : "tensor");
        if (s->group > 0)
            cJSON_AddNumberToObject(w, "group_size", s->group);
        else
            cJSON_AddNullToObject(w, "group_size");
        cJSON_AddBoolToObject(w, "dynamic", 0);
        cJSON_AddNullToObject(w, "actorder");
        cJSON_AddStringToObject(w, "observer", "minmax");
        if (input_bits > 0) { /* static per-tensor ranges from calibration */
            cJSON *a = cJSON_AddObjectToObject(g0, "input_activations");
            cJSON_AddNumberToObject(a, "num_bits", input_bits);
            cJSON_AddStringToObject(a, "type", "int");
            cJSON_AddBoolToObject(a, "symmetric", 0);
            cJSON_AddStringToObject(a, "strategy", "tensor");
            cJSON_AddNullToObject(a, "group_size");
            cJSON_AddBoolToObject(a, "dynamic", 0);
            cJSON_AddNullToObject(a, "actorder");
            cJSON_AddStringToObject(a, "observer", "minmax");
        } else {
            cJSON_AddNullToObject(g0, "input_activations");
        }
        cJSON_AddNullToObject(g0, "output_activations");
        cJSON *ignore = cJSON_AddArrayToObject(o, "ignore");
        cJSON_AddItemToArray(ignore, cJSON_CreateString("lm_head"));
        cJSON_AddNullToObject(o, "kv_cache_scheme");
    }
    char *j = cJSON_PrintUnformatted(o), *s2 = j ? strdup(j) : NULL;
    cJSON_free(j);
    cJSON_Delete(o);
    return s2;
}

int qlayout_find_part(const qtc_model_file *m, const char *module, const char *suffix)
{
    char name[QTC_NAME_MAX + 32];
    if ((size_t)snprintf(name, sizeof name, "%s%s", module, suffix) >= sizeof name)
        return -1;
    return qtc_model_find(m, name);
}

int qlayout_is_shape(const qtc_tensor_entry *e, qtc_dtype t, int ndim, int64_t a, int64_t b)
{
    return e->dtype == t && e->ndim == ndim && e->ne[0] == a && (ndim < 2 || e->ne[1] == b);
}

/* --- reading ------------------------------------------------------------------------ */

qtc_status qtc_model_input_quant(const qtc_model_file *m, qtc_input_quant *out, qtc_error *err)
{
    memset(out, 0, sizeof *out);
    const char *cj = m->config_json ? m->config_json : qtc_kvs_str(&m->meta, "qtc.config");
    cJSON *o = cj ? cJSON_Parse(cj) : NULL;
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, "quantization_config"), "config_groups");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(g ? g->child : NULL, "input_activations");
    const cJSON *nb = cJSON_GetObjectItemCaseSensitive(a, "num_bits");
    out->bits = cJSON_IsNumber(nb) ? nb->valueint : 8;
    cJSON_Delete(o);
    int n = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        size_t len = strlen(m->tensors[i].name);
        n += len > 12 && strcmp(m->tensors[i].name + len - 12, ".input_scale") == 0;
    }
    if (!n)
        return QTC_OK;
    if (out->bits < 2 || out->bits > 8)
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: input_activations of %d bits (2..8)", m->path, out->bits);
    out->weights = calloc((size_t)n, sizeof *out->weights);
    out->scale = calloc((size_t)n, sizeof *out->scale);
    out->zero = calloc((size_t)n, sizeof *out->zero);
    if (!out->weights || !out->scale || !out->zero) {
        qtc_input_quant_free(out);
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < m->n_tensors; i++) {
        const qtc_tensor_entry *e = &m->tensors[i];
        size_t len = strlen(e->name);
        if (len <= 12 || strcmp(e->name + len - 12, ".input_scale") != 0)
            continue;
        char zname[QTC_NAME_MAX + 8];
        snprintf(zname, sizeof zname, "%.*s.input_zero_point", (int)(len - 12), e->name);
        int z = qtc_model_find(m, zname);
        float scale = 0;
        int zero = 0;
        qtc_tensor *st = qtc_model_tensor(m, i, err), *sf = st ? qtc_tensor_to_f32(st, err) : NULL;
        if (sf && qtc_tensor_numel(sf) == 1)
            scale = ((float *)sf->data)[0];
        qtc_tensor_free(st);
        qtc_tensor_free(sf);
        if (z >= 0) {
            qtc_tensor *zt = qtc_model_tensor(m, z, err);
            if (zt && qtc_tensor_numel(zt) == 1)
                zero = (int)qtc_tensor_get(zt, 0);
            else
                zero = INT32_MIN;
            qtc_tensor_free(zt);
        }
        if (!(scale > 0) || !isfinite(scale) || zero < QTC_QMIN(out->bits) || zero > QTC_QMAX(out->bits))
        {
            qtc_input_quant_free(out);
            return qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': not a positive scale with a zero point in [%d, %d]",
                                 m->path, e->name, QTC_QMIN(out->bits), QTC_QMAX(out->bits));
        }
        snprintf(out->weights[out->n], QTC_NAME_MAX, "%.*s.weight", (int)(len - 12), e->name);
        out->scale[out->n] = scale;
        out->zero[out->n++] = zero;
    }
    return QTC_OK;
}

void qtc_input_quant_free(qtc_input_quant *q)
{
    free(q->weights);
    free(q->scale);
    free(q->zero);
    memset(q, 0, sizeof *q);
}

/* The integer scheme a compressed-tensors quantization_config declares, if any. */
static int scheme_from_config(const char *config_json, qtc_qscheme *s)
{
    cJSON *o = config_json ? cJSON_Parse(config_json) : NULL;
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(o, "quantization_config");
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(qc, "config_groups");
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(g ? g->child : NULL, "weights");
    int ok = 0;
    if (cJSON_IsObject(w)) {
        const cJSON *strategy = cJSON_GetObjectItemCaseSensitive(w, "strategy");
        memset(s, 0, sizeof *s);
        s->kind = QTC_QK_INT;
        s->bits = (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(w, "num_bits"));
        s->symmetric = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(w, "symmetric"));
        const char *st = cJSON_GetStringValue(strategy);
        s->group = st && strcmp(st, "group") == 0 ? (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(w, "group_size"))
                   : st && strcmp(st, "tensor") == 0 ? -1 : 0;
        ok = s->bits >= 2 && s->bits <= 8 && s->group != INT32_MIN && !(st && strcmp(st, "group") == 0 && s->group <= 0);
    }
    cJSON_Delete(o);
    return ok;
}

/* Folds the parts of one bitsandbytes weight; i is its quant_state entry. */
static qtc_status fold_nf4(qtc_model_file *m, int i, char *hide, qtc_error *err)
{
    const qtc_tensor_entry *st = &m->tensors[i];
    const char *file = m->inputs[st->input].name;
    char base[QTC_NAME_MAX];
    snprintf(base, sizeof base, "%.*s", (int)(strlen(st->name) - strlen(".quant_state.bitsandbytes__nf4")), st->name);
    char *json = malloc(st->nbytes + 1);
    if (!json)
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    memcpy(json, st->data, st->nbytes);
    json[st->nbytes] = '\0';
    cJSON *o = cJSON_Parse(json);
    free(json);
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(o, "shape");
    int blocksize = (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(o, "blocksize"));
    int nested = cJSON_GetObjectItemCaseSensitive(o, "nested_offset") != NULL;
    double offset = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(o, "nested_offset"));
    int64_t rows = (int64_t)cJSON_GetNumberValue(cJSON_GetArrayItem(shape, 0));
    int64_t cols = (int64_t)cJSON_GetNumberValue(cJSON_GetArrayItem(shape, 1));
    const char *qt = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "quant_type"));
    int good = qt && strcmp(qt, "nf4") == 0 && cJSON_GetArraySize(shape) == 2 && rows > 0 && cols > 0 &&
               rows <= QTC_MAX_NUMEL / cols && blocksize > 0 && blocksize <= 4096 && (!nested || isfinite(offset));
    int nested_bs = nested ? (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(o, "nested_blocksize")) : 256;
    cJSON_Delete(o);
    if (!good || nested_bs != 256)
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': a bitsandbytes quant state qtc cannot read (NF4, 2-D, nested blocks of 256)",
                             file, st->name);
    int64_t n = rows * cols, nb = (n + blocksize - 1) / blocksize;
    int w = qtc_model_find(m, base);
    int a = qlayout_find_part(m, base, ".absmax");
    int qm = qlayout_find_part(m, base, ".quant_map");
    int na = qlayout_find_part(m, base, ".nested_absmax");
    int nm = qlayout_find_part(m, base, ".nested_quant_map");
    if (w < 0 || a < 0 || qm < 0 || !qlayout_is_shape(&m->tensors[w], QTC_U8, 2, (n + 1) / 2, 1) ||
        !qlayout_is_shape(&m->tensors[qm], QTC_F32, 1, 16, 0) ||
        !qlayout_is_shape(&m->tensors[a], nested ? QTC_U8 : QTC_F32, 1, nb, 0) ||
        (nested && (na < 0 || nm < 0 || !qlayout_is_shape(&m->tensors[na], QTC_F32, 1, (nb + 255) / 256, 0) ||
                    !qlayout_is_shape(&m->tensors[nm], QTC_F32, 1, 256, 0))))
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': its bitsandbytes parts are missing or have the wrong shapes",
                             file, base);
    qtc_tensor_entry *e = &m->tensors[w];
    e->qparts.scheme_set = 1;
    e->qparts.packed = e->data;
    e->qparts.absmax = m->tensors[a].data;
    e->qparts.quant_map = m->tensors[qm].data;
    e->qparts.nested_absmax = nested ? m->tensors[na].data : NULL;
    e->qparts.nested_map = nested ? m->tensors[nm].data : NULL;
    e->qparts.nested_offset = (float)offset;
    memset(&e->scheme, 0, sizeof e->scheme);
    e->scheme.kind = QTC_QK_NF4;
    e->scheme.bits = 4;
    e->scheme.group = blocksize;
    e->scheme.double_quant = nested;
    e->dtype = QTC_F32;
    e->ndim = 2;
    e->ne[0] = rows;
    e->ne[1] = cols;
    e->nbytes = m->tensors[w].nbytes;
    hide[i] = hide[a] = hide[qm] = 1;
    if (nested)
        hide[na] = hide[nm] = 1;
    return QTC_OK;
}

/* Folds one compressed-tensors weight; sc is its weight_scale entry. */
static qtc_status fold_int(qtc_model_file *m, int sc, const qtc_qscheme *cfg, int have_cfg, char *hide, qtc_error *err)
{
    char mod[QTC_NAME_MAX];
    const qtc_tensor_entry *se = &m->tensors[sc];
    const char *file = m->inputs[se->input].name;
    snprintf(mod, sizeof mod, "%.*s", (int)(strlen(se->name) - strlen(".weight_scale")), se->name);
    int packed = qlayout_find_part(m, mod, ".weight_packed");
    int w8 = qlayout_find_part(m, mod, ".weight");
    int zp = qlayout_find_part(m, mod, ".weight_zero_point");
    int shp = qlayout_find_part(m, mod, ".weight_shape");
    qtc_qscheme s = have_cfg ? *cfg : (qtc_qscheme){QTC_QK_INT, packed >= 0 ? 4 : 8, 0, 1, 0};
    s.symmetric = zp < 0;
    int64_t rows, cols;
    if (packed >= 0) {
        if (shp < 0 || !qlayout_is_shape(&m->tensors[shp], QTC_I32, 1, 2, 0))
            return qtc_error_set(err, QTC_ERR_INPUT, "%s: '%s': packed weights without a weight_shape", file, mod);
        int32_t sh[2];
        memcpy(sh, m->tensors[shp].data, 8);
        rows = sh[0];
        cols = sh[1];
        if (!have_cfg)
            return qtc_error_set(err, QTC_ERR_INPUT, "%s: '%s': packed weights but no quantization_config says their bits", file, mod);
    } else if (w8 >= 0 && m->tensors[w8].dtype == QTC_I8 && m->tensors[w8].ndim == 2) {
        rows = m->tensors[w8].ne[0];
        cols = m->tensors[w8].ne[1];
        s.bits = 8;
    } else {
        return 0; /* a scale without int weights: not a layout qtc knows; leave the tensors as they are */
    }
    if (!have_cfg) /* without a config the scale's shape tells the granularity */
        s.group = se->ndim == 1 ? -1 : se->ne[1] == 1 ? 0 : (int)((cols + se->ne[1] - 1) / se->ne[1]);
    int per = 32 / s.bits;
    int64_t g = s.group > 0 ? (cols + s.group - 1) / s.group : 1;
    int ok = rows > 0 && cols > 0 && rows <= QTC_MAX_NUMEL / cols &&
             (s.group < 0 ? qlayout_is_shape(se, QTC_F32, 1, 1, 0) : qlayout_is_shape(se, QTC_F32, 2, rows, g)) &&
             (packed < 0 || qlayout_is_shape(&m->tensors[packed], QTC_I32, 2, rows, (cols + per - 1) / per));
    if (ok && zp >= 0) {
        const qtc_tensor_entry *z = &m->tensors[zp];
        int64_t srows = s.group < 0 ? 1 : rows;
        ok = s.bits == 8 ? z->dtype == QTC_I8 && z->nbytes == (size_t)(s.group < 0 ? 1 : rows * g)
                         : (s.group < 0 ? qlayout_is_shape(z, QTC_I32, 1, 1, 0) : qlayout_is_shape(z, QTC_I32, 2, (srows + per - 1) / per, g));
    }
    if (!ok)
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: '%s': compressed-tensors parts with inconsistent shapes", file, mod);
    /* the logical weight takes the name <module>.weight */
    int target = w8 >= 0 ? w8 : packed;
    qtc_tensor_entry *e = &m->tensors[target];
    e->qparts.scheme_set = 1;
    e->qparts.packed = m->tensors[target].data;
    e->qparts.scale = se->data;
    e->qparts.zero = zp >= 0 ? m->tensors[zp].data : NULL;
    e->scheme = s;
    qlayout_join(e->name, mod, ".weight"); /* fits: mod came from a longer name */
    e->dtype = QTC_F32;
    e->ndim = 2;
    e->ne[0] = rows;
    e->ne[1] = cols;
    hide[sc] = 1;
    if (zp >= 0)
        hide[zp] = 1;
    if (shp >= 0)
        hide[shp] = 1;
    return QTC_OK;
}

qtc_status qlayout_fold(qtc_model_file *m, qtc_error *err)
{
    char *hide = calloc((size_t)(m->n_tensors ? m->n_tensors : 1), 1);
    if (!hide)
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    qtc_qscheme cfg, gptq;
    const char *cj = m->config_json ? m->config_json : qtc_kvs_str(&m->meta, "qtc.config");
    int have_cfg = scheme_from_config(cj, &cfg), have_gptq = qlayout_gptq_scheme(cj, &gptq);
    qtc_status rc = QTC_OK;
    int n = m->n_tensors;
    for (int i = 0; i < n && rc == QTC_OK; i++) {
        const char *name = m->tensors[i].name;
        size_t len = strlen(name);
        if (len > 30 && strcmp(name + len - 30, ".quant_state.bitsandbytes__nf4") == 0)
            rc = fold_nf4(m, i, hide, err);
        else if (len > 13 && strcmp(name + len - 13, ".weight_scale") == 0)
            rc = fold_int(m, i, &cfg, have_cfg, hide, err);
        else if (have_gptq && len > 8 && strcmp(name + len - 8, ".qweight") == 0)
            rc = qlayout_fold_gptq(m, i, &gptq, hide, err);
    }
    if (rc == QTC_OK) { /* drop the parts now held by their weights */
        int k = 0;
        for (int i = 0; i < n; i++)
            if (!hide[i])
                m->tensors[k++] = m->tensors[i];
        m->n_tensors = k;
    }
    free(hide);
    return rc;
}

qtc_status qtc_model_qweight(const qtc_model_file *m, int i, qtc_qweight *q, qtc_error *err)
{
    const qtc_tensor_entry *e = &m->tensors[i];
    memset(q, 0, sizeof *q);
    if (!e->qparts.scheme_set)
        return qtc_error_set(err, QTC_ERR_USAGE, "tensor '%s' is not stored quantized", e->name);
    q->s = e->scheme;
    q->rows = e->ne[0];
    q->cols = e->ne[1];
    if (qtc_qweight_alloc(q, err) != QTC_OK)
        return QTC_ERR_NOMEM;
    const qtc_qparts *p = &e->qparts;
    int64_t n = q->rows * q->cols;
    if (q->s.kind == QTC_QK_NF4) {
        for (int64_t k = 0; k < n; k++)
            q->q[k] = (int8_t)(k % 2 ? p->packed[k / 2] & 0xF : p->packed[k / 2] >> 4);
        /* the code and maps come from the file, as bitsandbytes reads them */
        float code[16], map[256];
        memcpy(code, p->quant_map, sizeof code);
        if (memcmp(code, qtc_nf4_code, sizeof code) != 0) {
            qtc_qweight_free(q);
            return qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s': quant_map is not NF4's", m->inputs[e->input].name, e->name);
        }
        if (q->s.double_quant) {
            memcpy(map, p->nested_map, sizeof map);
            memcpy(q->absmax_q, p->absmax, (size_t)q->n_blocks);
            memcpy(q->nested_absmax, p->nested_absmax, (size_t)((q->n_blocks + 255) / 256) * sizeof(float));
            q->nested_offset = p->nested_offset;
            for (int64_t b = 0; b < q->n_blocks; b++)
                q->scale[b] = map[q->absmax_q[b]] * q->nested_absmax[b / 256] + q->nested_offset;
        } else {
            memcpy(q->scale, p->absmax, (size_t)q->n_blocks * sizeof(float));
        }
        return QTC_OK;
    }
    if (p->gptq) {
        qlayout_gptq_unpack(p, q);
        return QTC_OK;
    }
    const int bias = 1 << (q->s.bits - 1), per = 32 / q->s.bits;
    const uint32_t mask = (1u << q->s.bits) - 1;
    if (q->s.bits == 8) {
        memcpy(q->q, p->packed, (size_t)n);
    } else {
        int64_t words = (q->cols + per - 1) / per;
        for (int64_t r = 0; r < q->rows; r++)
            for (int64_t c = 0; c < q->cols; c++) {
                uint32_t w;
                memcpy(&w, p->packed + 4 * (size_t)(r * words + c / per), 4);
                q->q[r * q->cols + c] = (int8_t)((int)((w >> (q->s.bits * (int)(c % per))) & mask) - bias);
            }
    }
    int64_t ns = q->s.group < 0 ? 1 : q->rows * q->n_groups;
    memcpy(q->scale, p->scale, (size_t)ns * sizeof(float));
    if (p->zero) {
        if (q->s.bits == 8) {
            memcpy(q->zero, p->zero, (size_t)ns);
        } else {
            int64_t srows = q->s.group < 0 ? 1 : q->rows, g = q->s.group < 0 ? 1 : q->n_groups;
            for (int64_t r = 0; r < srows; r++)
                for (int64_t j = 0; j < g; j++) {
                    uint32_t w;
                    memcpy(&w, p->zero + 4 * (size_t)((r / per) * g + j), 4);
                    q->zero[r * g + j] = (int8_t)((int)((w >> (q->s.bits * (int)(r % per))) & mask) - bias);
                }
        }
    }
    return QTC_OK;
}
