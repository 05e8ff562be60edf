/* attach.c: QAT on a llama: fake quantization of its projections' weights and
 * inputs in the linear hook, the inputs' observers, LSQ's parameters and
 * their export (see qtc/qat.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/qat.h"
#include "qtc/train.h"

/* The running range of one linear input (PyTorch's moving-average min/max observer). */
typedef struct observer {
    float min, max;
    int seen;
} observer;

struct qtc_qat {
    qtc_llama *m;
    qtc_qat_options o;            /* calib and input_quant cleared: read at attach only */
    int n;                        /* linear layers: n_layers * QTC_N_LINEAR, layer * QTC_N_LINEAR + kind */
    qtc_tensor **lsq_scale, **lsq_zero; /* LSQ: per linear weight (zero NULL when symmetric) */
    observer *obs;                /* OBSERVED, RANGES */
    qtc_tensor **in_scale, **in_zero; /* per-tensor input parameters, one value each; NULL: float */
    float **ch_scale, **ch_zero;  /* STATIC: per input channel instead, or NULL */
    int64_t step;
    int training;
};

/* Fake-quantizes linear input i. */
static qtc_tensor *fq_input(qtc_qat *q, qtc_graph *g, qtc_tensor *x, int i)
{
    qtc_qscheme a = {QTC_QK_INT, q->o.abits, -1, 0, 0};
    switch (q->o.inputs) {
    case QTC_QAT_INPUTS_FLOAT:
        return x;
    case QTC_QAT_INPUTS_PER_TOKEN: /* dynamic: each token's own range */
        a.group = 0;
        return qtc_fake_quant(g, x, &a, NULL, NULL, 0);
    case QTC_QAT_INPUTS_OBSERVED:
    case QTC_QAT_INPUTS_RANGES: {
        observer *o = &q->obs[i];
        if (q->o.inputs == QTC_QAT_INPUTS_OBSERVED && q->training &&
            (q->o.observer_steps <= 0 || q->step < q->o.observer_steps)) {
            const float *v = x->data;
            float lo = v[0], hi = v[0];
            for (int64_t k = 1; k < qtc_tensor_numel(x); k++) {
                lo = fminf(lo, v[k]);
                hi = fmaxf(hi, v[k]);
            }
            o->min = o->seen ? o->min + 0.01f * (lo - o->min) : lo;
            o->max = o->seen ? o->max + 0.01f * (hi - o->max) : hi;
            o->seen = 1;
        }
        float range[2] = {o->min, o->max};
        int z;
        qtc_int_qparams(range, 2, q->o.abits, 0, (float *)q->in_scale[i]->data, &z);
        ((float *)q->in_zero[i]->data)[0] = (float)z;
        break;
    }
    case QTC_QAT_INPUTS_STATIC:
    case QTC_QAT_INPUTS_MODEL:
        if (q->ch_scale && q->ch_scale[i])
            return qtc_fake_quant_columns(g, x, q->o.abits, q->ch_scale[i], q->ch_zero[i]);
        if (!q->in_scale[i])
            return x;
        break;
    }
    return qtc_fake_quant(g, x, &a, q->in_scale[i], q->in_zero[i], 0);
}

/* The QAT linear layer: y = fq(x) fq(W)^T for the layers' projections; the
 * output head stays in float (as compressed-tensors ignores lm_head). */
static qtc_tensor *qat_linear(void *ctx, qtc_graph *g, qtc_tensor *x, qtc_tensor *w, int layer, qtc_linear_kind kind)
{
    qtc_qat *q = ctx;
    if (layer < 0 || kind == QTC_LIN_OUTPUT)
        return qtc_matmul(g, x, w, 0, 1);
    int i = layer * QTC_N_LINEAR + (int)kind;
    if (x)
        x = fq_input(q, g, x, i);
    if (q->lsq_scale)
        w = qtc_fake_quant(g, w, &q->o.scheme, q->lsq_scale[i], q->lsq_zero[i], 0);
    else if (q->o.weights)
        w = q->o.scheme.kind == QTC_QK_NF4 ? qtc_fake_quant_nf4(g, w, &q->o.scheme)
                                           : qtc_fake_quant(g, w, &q->o.scheme, NULL, NULL, 0);
    return qtc_matmul(g, x, w, 0, 1);
}

/* Input i quantized per tensor with scale and zero point. */
static qtc_status set_input_params(qtc_qat *q, int i, float scale, int zero, qtc_error *err)
{
    if (!(q->in_scale[i] = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(1), err)) ||
        !(q->in_zero[i] = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(1), err)))
        return err->code;
    ((float *)q->in_scale[i]->data)[0] = scale;
    ((float *)q->in_zero[i]->data)[0] = (float)zero;
    return QTC_OK;
}

/* The inputs' parameters and observers, as o says. */
static qtc_status setup_inputs(qtc_qat *q, const qtc_qat_options *o, qtc_error *err)
{
    if (o->inputs == QTC_QAT_INPUTS_FLOAT || o->inputs == QTC_QAT_INPUTS_PER_TOKEN)
        return QTC_OK;
    if (!(q->in_scale = calloc((size_t)q->n, sizeof *q->in_scale)) || !(q->in_zero = calloc((size_t)q->n, sizeof *q->in_zero)))
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    if (o->inputs == QTC_QAT_INPUTS_OBSERVED || o->inputs == QTC_QAT_INPUTS_RANGES) {
        if (!(q->obs = calloc((size_t)q->n, sizeof *q->obs)))
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        for (int i = 0; i < q->n; i++) {
            if (o->inputs == QTC_QAT_INPUTS_RANGES) /* used as they are: never observed */
                q->obs[i] = (observer){o->calib[i].min, o->calib[i].max, 1};
            if (set_input_params(q, i, 0, 0, err) != QTC_OK) /* set from the range in each forward */
                return err->code;
        }
        return QTC_OK;
    }
    if (o->inputs == QTC_QAT_INPUTS_MODEL) { /* the inputs the model's scales name */
        const qtc_input_quant *iq = o->input_quant;
        for (int i = 0; i < q->n; i++) {
            char name[QTC_NAME_MAX];
            qtc_linear_weight_name(i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR), name, sizeof name);
            for (int k = 0; k < iq->n; k++)
                if (strcmp(iq->weights[k], name) == 0 && set_input_params(q, i, iq->scale[k], iq->zero[k], err) != QTC_OK)
                    return err->code;
        }
        return QTC_OK;
    }
    /* STATIC: the calibration's per-tensor parameters, or its per-channel ones where it has them */
    if (!(q->ch_scale = calloc((size_t)q->n, sizeof *q->ch_scale)) || !(q->ch_zero = calloc((size_t)q->n, sizeof *q->ch_zero)))
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < q->n; i++) {
        const qtc_act_qparams *p = &o->calib[i];
        if (!p->channels) {
            if (set_input_params(q, i, p->scale, p->zero, err) != QTC_OK)
                return err->code;
            continue;
        }
        int layer = i / QTC_N_LINEAR;
        qtc_linear_kind kind = (qtc_linear_kind)(i % QTC_N_LINEAR);
        int64_t in = qtc_llama_linear_weight(q->m, layer, kind)->ne[1];
        if (p->channels != in)
            return qtc_error_set(err, QTC_ERR_INPUT, "layer %d %s: %lld channels, the input has %lld", layer,
                                 qtc_linear_path(kind), (long long)p->channels, (long long)in);
        if (!(q->ch_scale[i] = malloc((size_t)in * sizeof(float))) || !(q->ch_zero[i] = malloc((size_t)in * sizeof(float))))
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        memcpy(q->ch_scale[i], p->ch_scale, (size_t)in * sizeof(float));
        for (int64_t k = 0; k < in; k++)
            q->ch_zero[i][k] = (float)p->ch_zero[k];
    }
    return QTC_OK;
}

/* LSQ: a scale (and a zero point) per group of every projection's weight, from its min-max ones. */
static qtc_status setup_lsq(qtc_qat *q, qtc_error *err)
{
    const qtc_qscheme *s = &q->o.scheme;
    if (!(q->lsq_scale = calloc((size_t)q->n, sizeof *q->lsq_scale)) || !(q->lsq_zero = calloc((size_t)q->n, sizeof *q->lsq_zero)))
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < q->n; i++) {
        const qtc_tensor *w = qtc_llama_linear_weight(q->m, i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR));
        int64_t rows = w->ne[0], cols = w->ne[1], g = s->group > 0 ? s->group : cols;
        int64_t n = s->group < 0 ? 1 : rows * ((cols + g - 1) / g);
        if (!(q->lsq_scale[i] = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(n), err)) ||
            (!s->symmetric && !(q->lsq_zero[i] = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(n), err))))
            return err->code;
        qtc_fake_quant_init_params(w, s, q->lsq_scale[i], q->lsq_zero[i]);
        if (qtc_tensor_require_grad(q->lsq_scale[i], err) != QTC_OK ||
            (q->lsq_zero[i] && qtc_tensor_require_grad(q->lsq_zero[i], err) != QTC_OK))
            return err->code;
    }
    return QTC_OK;
}

static qtc_status check_options(const qtc_llama *m, const qtc_qat_options *o, qtc_error *err)
{
    if (m->linear)
        return qtc_error_set(err, QTC_ERR_USAGE, "the llama's linear layers already have a hook");
    if (o->weights && !(o->scheme.kind == QTC_QK_INT ? o->scheme.bits >= 2 && o->scheme.bits <= 8
                                                       : o->scheme.kind == QTC_QK_NF4))
        return qtc_error_set(err, QTC_ERR_USAGE, "QAT weights: integer schemes of 2..8 bits or NF4");
    if (o->lsq && !(o->weights && o->scheme.kind == QTC_QK_INT))
        return qtc_error_set(err, QTC_ERR_USAGE, "learned scales (LSQ) need integer weights");
    if (o->inputs < QTC_QAT_INPUTS_FLOAT || o->inputs > QTC_QAT_INPUTS_MODEL)
        return qtc_error_set(err, QTC_ERR_USAGE, "unknown kind of QAT inputs");
    if (o->inputs != QTC_QAT_INPUTS_FLOAT && (o->abits < 2 || o->abits > 8))
        return qtc_error_set(err, QTC_ERR_USAGE, "QAT inputs: %d bits (2..8)", o->abits);
    if ((o->inputs == QTC_QAT_INPUTS_RANGES || o->inputs == QTC_QAT_INPUTS_STATIC) && !o->calib)
        return qtc_error_set(err, QTC_ERR_USAGE, "calibrated QAT inputs without calibration parameters");
    if (o->inputs == QTC_QAT_INPUTS_MODEL && !o->input_quant)
        return qtc_error_set(err, QTC_ERR_USAGE, "the model's QAT inputs without its input scales");
    for (int i = 0; i < m->c.n_layers * QTC_N_LINEAR; i++)
        if (!qtc_llama_linear_weight(m, i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR)))
            return qtc_error_set(err, QTC_ERR_USAGE, "layer %d %s: the weight is held elsewhere", i / QTC_N_LINEAR,
                                 qtc_linear_path((qtc_linear_kind)(i % QTC_N_LINEAR)));
    return QTC_OK;
}

qtc_qat *qtc_qat_attach(qtc_llama *m, const qtc_qat_options *o, qtc_error *err)
{
    if (check_options(m, o, err) != QTC_OK)
        return NULL;
    qtc_qat *q = calloc(1, sizeof *q);
    if (!q) {
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        return NULL;
    }
    q->m = m;
    q->o = *o;
    q->o.calib = NULL;
    q->o.input_quant = NULL;
    q->n = m->c.n_layers * QTC_N_LINEAR;
    if (setup_inputs(q, o, err) != QTC_OK || (o->lsq && setup_lsq(q, err) != QTC_OK)) {
        qtc_qat_free(q);
        return NULL;
    }
    m->linear = qat_linear;
    m->linear_ctx = q;
    return q;
}

void qtc_qat_free(qtc_qat *q)
{
    if (!q)
        return;
    if (q->m->linear == qat_linear && q->m->linear_ctx == q) {
        q->m->linear = NULL;
        q->m->linear_ctx = NULL;
    }
    for (int i = 0; i < q->n; i++) {
        if (q->lsq_scale) {
            qtc_tensor_free(q->lsq_scale[i]);
            qtc_tensor_free(q->lsq_zero[i]);
        }
        if (q->in_scale) {
            qtc_tensor_free(q->in_scale[i]);
            qtc_tensor_free(q->in_zero[i]);
        }
        if (q->ch_scale) {
            free(q->ch_scale[i]);
            free(q->ch_zero[i]);
        }
    }
    free(q->lsq_scale);
    free(q->lsq_zero);
    free(q->in_scale);
    free(q->in_zero);
    free(q->ch_scale);
    free(q->ch_zero);
    free(q->obs);
    free(q);
}

int qtc_qat_params(qtc_qat *q, qtc_tensor **out, int cap)
{
    int n = 0;
    for (int i = 0; q->lsq_scale && i < q->n; i++) {
        qtc_tensor *t[2] = {q->lsq_scale[i], q->lsq_zero[i]};
        for (int k = 0; k < 2; k++)
            if (t[k]) {
                if (out && n < cap)
                    out[n] = t[k];
                n++;
            }
    }
    return n;
}

void qtc_qat_set_step(qtc_qat *q, int64_t step)
{
    q->step = step;
}

void qtc_qat_set_training(qtc_qat *q, int training)
{
    q->training = training;
}

qtc_status qtc_qat_warm_up(qtc_qat *q, const qtc_tokens *data, int batch, int ctx, uint64_t seed, int64_t step,
                           qtc_error *err)
{
    if (q->o.inputs != QTC_QAT_INPUTS_OBSERVED)
        return QTC_OK;
    int32_t *tk = malloc((size_t)batch * ctx * sizeof *tk), *tg = malloc((size_t)batch * ctx * sizeof *tg);
    qtc_graph *g = tk && tg ? qtc_graph_new(err) : NULL;
    qtc_tensor *ids = NULL;
    qtc_status rc = QTC_OK;
    if (!tk || !tg || !g) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto done;
    }
    qtc_train_batch(data, batch, ctx, seed, step, tk, tg);
    if (!(ids = qtc_tensor_wrap(QTC_I32, 2, QTC_SHAPE(batch, ctx), tk, NULL, err))) {
        rc = err->code;
        goto done;
    }
    qtc_graph_set_recording(g, 0);
    int training = q->training;
    q->training = 1;
    qtc_llama_forward(q->m, g, ids, 0);
    q->training = training;
    rc = qtc_graph_status(g, err);
done:
    qtc_tensor_free(ids);
    qtc_graph_free(g);
    free(tk);
    free(tg);
    return rc;
}

int qtc_qat_input_range(const qtc_qat *q, int layer, qtc_linear_kind kind, float *min, float *max)
{
    if (!q->obs || layer < 0 || layer >= q->m->c.n_layers || (int)kind >= QTC_N_LINEAR)
        return 0;
    const observer *o = &q->obs[layer * QTC_N_LINEAR + (int)kind];
    *min = o->min;
    *max = o->max;
    return o->seen;
}

int qtc_qat_qweight(void *ctx, const char *name, const qtc_qscheme *s, qtc_qweight *out, qtc_error *err)
{
    qtc_qat *q = ctx;
    for (int i = 0; q->lsq_scale && i < q->n; i++) {
        char want[QTC_NAME_MAX];
        int layer = i / QTC_N_LINEAR;
        qtc_linear_kind kind = (qtc_linear_kind)(i % QTC_N_LINEAR);
        if (strcmp(qtc_linear_weight_name(layer, kind, want, sizeof want), name) != 0)
            continue;
        if (memcmp(s, &q->o.scheme, sizeof *s) != 0)
            return 0; /* exported in another scheme: quantized afresh */
        const qtc_tensor *w = qtc_llama_linear_weight(q->m, layer, kind);
        const qtc_tensor *sc = q->lsq_scale[i], *zp = q->lsq_zero[i];
        return qtc_qweight_quantize_with(w->data, w->ne[0], w->ne[1], s, sc->data, zp ? zp->data : NULL, out, err) == QTC_OK
                   ? 1
                   : -1;
    }
    return 0;
}

qtc_convert_hooks qtc_qat_convert_hooks(qtc_qat *q)
{
    return (qtc_convert_hooks){.qweight = q->lsq_scale ? qtc_qat_qweight : NULL, .ctx = q};
}
