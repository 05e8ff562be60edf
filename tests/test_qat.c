/* test_qat.c: fake quantization against what quant/ stores, the straight-through
 * estimator's boundary cases, and LSQ's scale and zero-point gradients against a
 * double-precision evaluation of PyTorch's formulas; then qtc_qat_attach on a
 * small random llama: its logits against a llama holding the dequantized
 * weights or a hook calling the fake-quant ops with the parameters set by the
 * test, the observers against moving averages of the inputs they saw, and
 * LSQ's gradients and export. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "qtc/qat.h"
#include "qtc/rng.h"
#include "qtc/train.h"

TEST(fake_quant_equals_the_stored_quantization_bit_for_bit)
{
    const char *names[] = {"int8", "int8-tensor", "int4-g32", "int4-g32-asym", "int3-g64", "int2-g32-asym", "int4-tensor-asym", "nf4"};
    enum { R = 9, C = 172 };
    qtc_error err;
    qtc_rng r;
    qtc_rng_seed(&r, 3);
    qtc_tensor *w = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(R, C), &err);
    qtc_rng_fill_normal(&r, w, 0.01f, 0.05f);
    static float want[R * C];
    qtc_graph *g = qtc_graph_new(&err);
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        qtc_qscheme s;
        qtc_qweight q;
        CHECK(qtc_qscheme_parse(names[k], &s) == 0);
        CHECK(qtc_qweight_quantize(w->data, R, C, &s, &q, &err) == QTC_OK);
        qtc_qweight_dequantize(&q, want);
        qtc_qweight_free(&q);
        qtc_tensor *y = s.kind == QTC_QK_NF4 ? qtc_fake_quant_nf4(g, w, &s) : qtc_fake_quant(g, w, &s, NULL, NULL, 0);
        CHECK(y);
        CHECK_MSG(memcmp(y->data, want, sizeof want) == 0, "%s: fake quantization differs from the stored values", names[k]);
    }
    qtc_graph_free(g);
    qtc_tensor_free(w);
}

TEST(straight_through_estimator_passes_gradients_exactly_inside_the_range)
{
    /* s = 0.5, z = 0, int8: 63.7 -> 127.4 -> 127 (in), 63.75 -> 127.5 -> 128 (out),
     * -64.25 -> -128.5 -> -128 (even: in), -64.3 -> -128.6 -> -129 (out) */
    qtc_error err;
    float xv[6] = {63.7f, 63.75f, -64.25f, -64.3f, 0.25f, 1000.0f};
    float want_dx[6] = {1, 0, 1, 0, 1, 0}, want_y[6] = {63.5f, 63.5f, -64.0f, -64.0f, 0.0f, 63.5f};
    qtc_tensor *x = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(6), &err), *s = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(1), &err);
    memcpy(x->data, xv, sizeof xv);
    ((float *)s->data)[0] = 0.5f;
    qtc_tensor_require_grad(x, &err);
    qtc_qscheme sch;
    qtc_qscheme_parse("int8-tensor", &sch);
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *y = qtc_fake_quant(g, x, &sch, s, NULL, 1.0f);
    CHECK(memcmp(y->data, want_y, sizeof want_y) == 0);
    CHECK(qtc_graph_backward(g, qtc_sum(g, y), &err) == QTC_OK);
    CHECK(memcmp(x->grad->data, want_dx, sizeof want_dx) == 0);
    qtc_graph_free(g);
    qtc_tensor_free(x);
    qtc_tensor_free(s);
}

TEST(learnable_scale_and_zero_point_gradients_are_pytorchs)
{
    qtc_error err;
    enum { R = 5, C = 40, G = 16 }; /* groups of 16: 3 per row, the last partial */
    qtc_qscheme sch;
    qtc_qscheme_parse("int4-g16-asym", &sch);
    qtc_rng r;
    qtc_rng_seed(&r, 8);
    qtc_tensor *x = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(R, C), &err);
    qtc_tensor *s = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(R * 3), &err), *z = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(R * 3), &err);
    qtc_rng_fill_normal(&r, x, 0, 1);
    qtc_fake_quant_init_params(x, &sch, s, z);
    for (int k = 0; k < R * 3; k++) { /* shrink the scales so some values clamp, nudge the zero points */
        ((float *)s->data)[k] *= 0.7f;
        ((float *)z->data)[k] += 0.3f;
    }
    qtc_tensor_require_grad(x, &err);
    qtc_tensor_require_grad(s, &err);
    qtc_tensor_require_grad(z, &err);
    qtc_tensor *dy = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(R, C), &err);
    qtc_rng_fill_normal(&r, dy, 0, 1);
    qtc_graph *g = qtc_graph_new(&err);
    float gf = 0.125f;
    qtc_tensor *y = qtc_fake_quant(g, x, &sch, s, z, gf);
    CHECK(qtc_graph_backward(g, qtc_sum(g, qtc_mul(g, y, dy)), &err) == QTC_OK);
    double ws[R * 3] = {0}, wz[R * 3] = {0}, wx[R * C];
    int clamped = 0;
    for (int i = 0; i < R; i++)
        for (int c = 0; c < C; c++) {
            int k = i * 3 + c / G;
            double sc = ((float *)s->data)[k], zz = fmin(7, fmax(-8, nearbyint(((float *)z->data)[k])));
            double xv = ((float *)x->data)[i * C + c], d = ((float *)dy->data)[i * C + c];
            double t = xv * (double)(1.0f / (float)sc), q = nearbyint(t) + zz;
            int in = q >= -8 && q <= 7;
            clamped += !in;
            wx[i * C + c] = in ? d : 0;
            ws[k] += d * (in ? (q - zz) - t : q < -8 ? -8 - zz : 7 - zz) * gf;
            wz[k] += in ? 0 : d * -sc * gf;
        }
    CHECK_MSG(clamped > 5, "only %d values clamped: the test would not reach the clamped branches", clamped);
    CHECK_CLOSE("dx", (float *)x->grad->data, wx, R * C, 0, 0);
    CHECK_CLOSE("dscale", (float *)s->grad->data, ws, R * 3, 1e-5, 1e-6);
    CHECK_CLOSE("dzero", (float *)z->grad->data, wz, R * 3, 1e-5, 1e-6);
    qtc_graph_free(g);
    qtc_tensor_free(x);
    qtc_tensor_free(s);
    qtc_tensor_free(z);
    qtc_tensor_free(dy);
}

TEST(per_column_fake_quant_uses_each_columns_parameters_for_every_row)
{
    /* 3 rows x 4 columns, int8, each column its own scale and zero point; references in double */
    qtc_error err;
    const float sc[4] = {0.5f, 0.01f, 2.0f, 0.1f}, zp[4] = {0, -20, 5, 127};
    qtc_tensor *x = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(3, 4), &err);
    float *xv = x->data;
    for (int i = 0; i < 12; i++)
        xv[i] = (float)((i * 37 % 11) - 5) * (i % 4 == 1 ? 0.4f : 3.7f);
    xv[1] = 5.0f; /* far above column 1's range: clamped, no gradient */
    qtc_tensor_require_grad(x, &err);
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *y = qtc_fake_quant_columns(g, x, 8, sc, zp);
    CHECK(y);
    float want_dx[12];
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) {
            double q = nearbyint((double)xv[r * 4 + c] * (double)(1.0f / sc[c])) + zp[c];
            int inside = q >= -128 && q <= 127;
            q = q < -128 ? -128 : q > 127 ? 127 : q;
            double want = (q - zp[c]) * sc[c];
            CHECK_MSG(fabs(((float *)y->data)[r * 4 + c] - want) <= 1e-6 * fabs(want), "row %d col %d: %g, want %g", r, c,
                      ((float *)y->data)[r * 4 + c], want);
            want_dx[r * 4 + c] = inside ? 1.0f : 0.0f;
        }
    CHECK(want_dx[1] == 0);
    CHECK(qtc_graph_backward(g, qtc_sum(g, y), &err) == QTC_OK);
    CHECK(memcmp(x->grad->data, want_dx, sizeof want_dx) == 0);
    qtc_graph_free(g);
    qtc_tensor_free(x);
}

/* --- qtc_qat_attach on a small llama --------------------------------------------------- */

static const qtc_llama_config small = {.dim = 32, .hidden = 48, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                                       .vocab = 40, .ctx = 16, .head_dim = 8, .n_rot = 8, .norm_eps = 1e-5f,
                                       .rope_theta = 10000.0f, .tied = 1, .bos_id = 1, .eos_id = 2};
enum { N_LIN = 2 * QTC_N_LINEAR, WB = 2, WT = 9 };
static const int32_t windows[2][WB * WT] = {
    {1, 7, 33, 12, 5, 39, 20, 3, 17, 1, 25, 8, 30, 14, 2, 11, 36, 9},
    {1, 4, 21, 38, 16, 6, 27, 13, 31, 1, 19, 10, 35, 22, 29, 15, 24, 18}};

static qtc_llama *small_llama(void)
{
    qtc_error err;
    return qtc_llama_new_random(&small, 21, 0.3f, &err);
}

/* The logits (WB, WT, vocab) of windows[which] (malloc'd). */
static float *logits_of(qtc_llama *m, int which)
{
    qtc_error err;
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *ids = qtc_tensor_wrap(QTC_I32, 2, QTC_SHAPE(WB, WT), (void *)windows[which], NULL, &err);
    qtc_graph_set_recording(g, 0);
    qtc_tensor *y = qtc_llama_forward(m, g, ids, 0);
    size_t n = (size_t)WB * WT * small.vocab;
    float *out = y ? malloc(n * sizeof *out) : NULL;
    if (out)
        memcpy(out, y->data, n * sizeof *out);
    qtc_tensor_free(ids);
    qtc_graph_free(g);
    return out;
}

static int same_floats(const float *a, const float *b, size_t n)
{
    return a && b && memcmp(a, b, n * sizeof *a) == 0;
}
#define N_LOGITS ((size_t)WB * WT * 40)

/* A hook around another that records the range of every projection input it is given (in double). */
typedef struct spy {
    qtc_linear_fn inner;
    void *inner_ctx;
    double lo[N_LIN], hi[N_LIN];
    int calls[N_LIN];
} spy;

static qtc_tensor *spy_linear(void *ctx, qtc_graph *g, qtc_tensor *x, qtc_tensor *w, int layer, qtc_linear_kind kind)
{
    spy *s = ctx;
    if (layer >= 0) {
        int i = layer * QTC_N_LINEAR + (int)kind;
        const float *v = x->data;
        double lo = v[0], hi = v[0];
        for (int64_t k = 0; k < qtc_tensor_numel(x); k++) {
            lo = fmin(lo, v[k]);
            hi = fmax(hi, v[k]);
        }
        s->lo[i] = lo;
        s->hi[i] = hi;
        s->calls[i]++;
    }
    return s->inner ? s->inner(s->inner_ctx, g, x, w, layer, kind) : qtc_matmul(g, x, w, 0, 1);
}

static void spy_on(spy *s, qtc_llama *m)
{
    memset(s, 0, sizeof *s);
    s->inner = m->linear;
    s->inner_ctx = m->linear_ctx;
    m->linear = spy_linear;
    m->linear_ctx = s;
}

TEST(attached_weight_fake_quant_gives_the_logits_of_the_dequantized_llama)
{
    const char *names[] = {"int4-g20-asym", "int8", "int3-tensor-asym", "nf4"}; /* groups of 20: partial ones too */
    qtc_error err;
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        qtc_qat_options o = {.weights = 1};
        CHECK(qtc_qscheme_parse(names[k], &o.scheme) == 0);
        qtc_llama *m = small_llama(), *ref = small_llama();
        for (int i = 0; i < N_LIN; i++) { /* ref: every projection stored and read back */
            qtc_tensor *w = qtc_llama_linear_weight(ref, i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR));
            qtc_qweight q;
            CHECK(qtc_qweight_quantize(w->data, w->ne[0], w->ne[1], &o.scheme, &q, &err) == QTC_OK);
            qtc_qweight_dequantize(&q, w->data);
            qtc_qweight_free(&q);
        }
        float *plain = logits_of(m, 0);
        qtc_qat *q = qtc_qat_attach(m, &o, &err);
        CHECK_MSG(q, "%s", err.msg);
        CHECK(m->linear && m->linear_ctx == q && qtc_qat_params(q, NULL, 0) == 0);
        float *got = logits_of(m, 0), *want = logits_of(ref, 0);
        CHECK_MSG(same_floats(got, want, N_LOGITS), "%s: the logits differ from the dequantized llama's", names[k]);
        CHECK_MSG(!same_floats(got, plain, N_LOGITS), "%s: the weights were not quantized", names[k]);
        free(plain);
        free(got);
        free(want);
        qtc_qat_free(q);
        qtc_llama_free(m);
        qtc_llama_free(ref);
    }
}

TEST(freeing_the_qat_restores_the_float_forward)
{
    qtc_error err;
    qtc_llama *m = small_llama();
    float *plain = logits_of(m, 1);
    qtc_qat_options o = {.weights = 1, .inputs = QTC_QAT_INPUTS_PER_TOKEN, .abits = 8};
    qtc_qscheme_parse("int4-g16", &o.scheme);
    qtc_qat *q = qtc_qat_attach(m, &o, &err);
    CHECK(q);
    float *fq = logits_of(m, 1);
    CHECK(!same_floats(fq, plain, N_LOGITS));
    qtc_qat *again = qtc_qat_attach(m, &o, &err); /* one hook at a time */
    CHECK(!again && err.code == QTC_ERR_USAGE);
    qtc_qat_free(q);
    CHECK(m->linear == NULL && m->linear_ctx == NULL);
    float *after = logits_of(m, 1);
    CHECK(same_floats(after, plain, N_LOGITS));
    free(plain);
    free(fq);
    free(after);
    qtc_llama_free(m);
}

/* want = first ? x : want + 0.01 (x - want), in double */
static void moving(double *want, const double *x, int first)
{
    for (int i = 0; i < N_LIN; i++)
        want[i] = first ? x[i] : want[i] + 0.01 * (x[i] - want[i]);
}

static int ranges_are(const qtc_qat *q, const double *lo, const double *hi)
{
    for (int i = 0; i < N_LIN; i++) {
        float mn, mx;
        if (!qtc_qat_input_range(q, i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR), &mn, &mx) ||
            fabs(mn - lo[i]) > 1e-6 * fabs(lo[i]) + 1e-7 || fabs(mx - hi[i]) > 1e-6 * fabs(hi[i]) + 1e-7) {
            test_fail(__FILE__, __LINE__, "input %d: range [%.9g, %.9g], want [%.9g, %.9g]", i, mn, mx, lo[i], hi[i]);
            return 0;
        }
    }
    return 1;
}

TEST(observers_keep_a_moving_average_of_training_inputs_and_freeze)
{
    qtc_error err;
    qtc_llama *m = small_llama();
    qtc_qat_options o = {.weights = 1, .inputs = QTC_QAT_INPUTS_OBSERVED, .abits = 8, .observer_steps = 2};
    qtc_qscheme_parse("int4-g16-asym", &o.scheme);
    qtc_qat *q = qtc_qat_attach(m, &o, &err);
    CHECK_MSG(q, "%s", err.msg);
    float mn, mx;
    CHECK(qtc_qat_input_range(q, 0, QTC_LIN_Q, &mn, &mx) == 0); /* nothing seen yet */
    spy s;
    spy_on(&s, m);
    double lo[N_LIN], hi[N_LIN];
    qtc_qat_set_training(q, 1); /* step 0: the first batch sets the ranges */
    free(logits_of(m, 0));
    moving(lo, s.lo, 1);
    moving(hi, s.hi, 1);
    CHECK(s.calls[N_LIN - 1] == 1 && ranges_are(q, lo, hi));
    qtc_qat_set_step(q, 1); /* step 1: moved 1% towards the new batch's */
    free(logits_of(m, 1));
    moving(lo, s.lo, 0);
    moving(hi, s.hi, 0);
    CHECK(ranges_are(q, lo, hi));
    for (int i = 0; i < N_LIN; i++) /* the test would notice a constant other than 0.01 */
        CHECK(fabs(lo[i] - s.lo[i]) > 1e-3 || fabs(hi[i] - s.hi[i]) > 1e-3);
    qtc_qat_set_training(q, 0); /* an evaluation forward does not observe */
    free(logits_of(m, 0));
    CHECK(ranges_are(q, lo, hi));
    qtc_qat_set_training(q, 1);
    qtc_qat_set_step(q, 2); /* frozen at observer_steps */
    free(logits_of(m, 0));
    CHECK(s.calls[0] == 4 && ranges_are(q, lo, hi));
    qtc_qat_set_step(q, 1); /* and observing once more before then */
    free(logits_of(m, 0));
    double slo[N_LIN], shi[N_LIN];
    memcpy(slo, s.lo, sizeof slo);
    memcpy(shi, s.hi, sizeof shi);
    moving(lo, slo, 0);
    moving(hi, shi, 0);
    CHECK(ranges_are(q, lo, hi));
    m->linear = s.inner;
    m->linear_ctx = s.inner_ctx;
    qtc_qat_free(q);
    qtc_llama_free(m);
}

TEST(warm_up_observes_the_batch_training_would_draw)
{
    enum { B = 3, T = 8, STEP = 5 };
    qtc_error err;
    qtc_tokens data = {malloc(200 * sizeof(int32_t)), 200, NULL};
    for (int i = 0; i < 200; i++)
        data.ids[i] = (int32_t)((i * 7 + 3) % small.vocab);
    qtc_qat_options o = {.inputs = QTC_QAT_INPUTS_OBSERVED, .abits = 8};
    qtc_llama *a = small_llama(), *b = small_llama();
    qtc_qat *qa = qtc_qat_attach(a, &o, &err), *qb = qtc_qat_attach(b, &o, &err);
    CHECK(qa && qb);
    CHECK(qtc_qat_warm_up(qa, &data, B, T, 77, STEP, &err) == QTC_OK);
    int32_t tk[B * T], tg[B * T];
    qtc_train_batch(&data, B, T, 77, STEP, tk, tg);
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *ids = qtc_tensor_wrap(QTC_I32, 2, QTC_SHAPE(B, T), tk, NULL, &err);
    qtc_graph_set_recording(g, 0);
    qtc_qat_set_training(qb, 1);
    CHECK(qtc_llama_forward(b, g, ids, 0));
    for (int i = 0; i < N_LIN; i++) {
        float al, ah, bl, bh;
        CHECK(qtc_qat_input_range(qa, i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR), &al, &ah));
        CHECK(qtc_qat_input_range(qb, i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR), &bl, &bh));
        CHECK_MSG(al == bl && ah == bh, "input %d: warm-up [%g, %g], the batch's [%g, %g]", i, al, ah, bl, bh);
    }
    qtc_qat_options none = {.weights = 1, .scheme = {QTC_QK_INT, 4, 16, 1, 0}};
    qtc_llama *c = small_llama();
    qtc_qat *qc = qtc_qat_attach(c, &none, &err);
    CHECK(qc && qtc_qat_warm_up(qc, &data, B, T, 77, STEP, &err) == QTC_OK); /* nothing to observe */
    qtc_tensor_free(ids);
    qtc_graph_free(g);
    qtc_qat_free(qa);
    qtc_qat_free(qb);
    qtc_qat_free(qc);
    qtc_llama_free(a);
    qtc_llama_free(b);
    qtc_llama_free(c);
    qtc_tokens_free(&data);
}

/* The reference for static inputs: each projection input fake-quantized by
 * qtc_fake_quant (or qtc_fake_quant_columns) with parameters set here. */
typedef struct static_ref {
    int bits;
    int on[N_LIN];
    float scale[N_LIN], zero[N_LIN];
    const float *ch_scale[N_LIN], *ch_zero[N_LIN];
    qtc_tensor *st[N_LIN], *zt[N_LIN];
} static_ref;

static qtc_tensor *static_ref_linear(void *ctx, qtc_graph *g, qtc_tensor *x, qtc_tensor *w, int layer, qtc_linear_kind kind)
{
    static_ref *r = ctx;
    int i = layer * QTC_N_LINEAR + (int)kind;
    if (layer >= 0 && r->ch_scale[i])
        x = qtc_fake_quant_columns(g, x, r->bits, r->ch_scale[i], r->ch_zero[i]);
    else if (layer >= 0 && r->on[i]) {
        qtc_qscheme a = {QTC_QK_INT, r->bits, -1, 0, 0};
        qtc_error err;
        if (!r->st[i]) {
            r->st[i] = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(1), &err);
            r->zt[i] = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(1), &err);
            ((float *)r->st[i]->data)[0] = r->scale[i];
            ((float *)r->zt[i]->data)[0] = r->zero[i];
        }
        x = qtc_fake_quant(g, x, &a, r->st[i], r->zt[i], 0);
    }
    return qtc_matmul(g, x, w, 0, 1);
}

/* logits of windows[1] with m's linear hook replaced by the reference */
static float *static_ref_logits(static_ref *r)
{
    qtc_llama *m = small_llama();
    m->linear = static_ref_linear;
    m->linear_ctx = r;
    float *y = logits_of(m, 1);
    qtc_llama_free(m);
    for (int i = 0; i < N_LIN; i++) {
        qtc_tensor_free(r->st[i]);
        qtc_tensor_free(r->zt[i]);
        r->st[i] = r->zt[i] = NULL;
    }
    return y;
}

static float *qat_logits(const qtc_qat_options *o, qtc_error *err)
{
    qtc_llama *m = small_llama();
    qtc_qat *q = qtc_qat_attach(m, o, err);
    float *y = q ? logits_of(m, 1) : NULL;
    qtc_qat_free(q);
    qtc_llama_free(m);
    return y;
}

TEST(static_inputs_are_fake_quantized_with_the_given_parameters)
{
    qtc_error err;
    /* the float model's input ranges, shrunk so that some values clamp */
    qtc_llama *m = small_llama();
    spy s;
    spy_on(&s, m);
    free(logits_of(m, 1));
    qtc_llama_free(m);
    float *plain = NULL;
    {
        qtc_llama *f = small_llama();
        plain = logits_of(f, 1);
        qtc_llama_free(f);
    }
    qtc_act_qparams p[N_LIN];
    static float ch_scale[N_LIN][48], ch_zero_f[N_LIN][48];
    static int ch_zero[N_LIN][48];
    static_ref r;
    memset(p, 0, sizeof p);
    memset(&r, 0, sizeof r);
    r.bits = 8;
    for (int i = 0; i < N_LIN; i++) {
        p[i].min = (float)(0.7 * s.lo[i]);
        p[i].max = (float)(0.7 * s.hi[i]);
        int z;
        float range[2] = {p[i].min, p[i].max};
        qtc_int_qparams(range, 2, 8, 0, &p[i].scale, &z);
        p[i].zero = z;
        r.on[i] = 1;
        r.scale[i] = p[i].scale;
        r.zero[i] = (float)z;
        p[i].scale = 1.0f; /* RANGES takes the range, not these */
        p[i].zero = 3;
    }
    /* RANGES: each range's scale and zero point, as the observers compute them */
    qtc_qat_options o = {.inputs = QTC_QAT_INPUTS_RANGES, .abits = 8, .calib = p};
    float *got = qat_logits(&o, &err), *want = static_ref_logits(&r);
    CHECK_MSG(got, "%s", err.msg);
    CHECK(same_floats(got, want, N_LOGITS) && !same_floats(got, plain, N_LOGITS));
    free(got);
    free(want);
    /* STATIC: the parameters as given (not the ranges'), per channel where there are channels */
    for (int i = 0; i < N_LIN; i++) {
        p[i].scale = r.scale[i] * 1.3f;
        p[i].zero = ((int)r.zero[i] + 5) % 100;
        r.scale[i] = p[i].scale;
        r.zero[i] = (float)p[i].zero;
        if (i % 3 == 1) {
            qtc_linear_kind kind = (qtc_linear_kind)(i % QTC_N_LINEAR);
            int64_t in = kind == QTC_LIN_DOWN ? small.hidden : small.dim;
            for (int64_t k = 0; k < in; k++) {
                ch_scale[i][k] = p[i].scale * (0.5f + 0.02f * (float)k);
                ch_zero[i][k] = (int)(k % 9) - 4;
                ch_zero_f[i][k] = (float)ch_zero[i][k];
            }
            p[i].channels = in;
            p[i].ch_scale = ch_scale[i];
            p[i].ch_zero = ch_zero[i];
            r.ch_scale[i] = ch_scale[i];
            r.ch_zero[i] = ch_zero_f[i];
        }
    }
    o.inputs = QTC_QAT_INPUTS_STATIC;
    got = qat_logits(&o, &err);
    want = static_ref_logits(&r);
    CHECK_MSG(got, "%s", err.msg);
    CHECK(same_floats(got, want, N_LOGITS));
    free(got);
    free(want);
    p[4].channels = 31; /* not the input's width */
    p[4].ch_scale = ch_scale[4];
    p[4].ch_zero = ch_zero[4];
    qtc_llama *bad = small_llama();
    CHECK(!qtc_qat_attach(bad, &o, &err) && err.code == QTC_ERR_INPUT && strstr(err.msg, "layer 0 mlp.gate_proj: 31 channels"));
    CHECK(bad->linear == NULL);
    qtc_llama_free(bad);
    /* MODEL: the inputs a model's scales name, the others float */
    char names[3][QTC_NAME_MAX];
    float sc[3];
    int zp[3];
    const int named[3] = {0, 9, 13};
    memset(&r, 0, sizeof r);
    r.bits = 8;
    for (int k = 0; k < 3; k++) {
        int i = named[k];
        qtc_linear_weight_name(i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR), names[k], QTC_NAME_MAX);
        sc[k] = r.scale[i] = p[i].scale;
        zp[k] = p[i].zero;
        r.zero[i] = (float)p[i].zero;
        r.on[i] = 1;
    }
    qtc_input_quant iq = {.bits = 8, .n = 3, .weights = names, .scale = sc, .zero = zp};
    qtc_qat_options mo = {.inputs = QTC_QAT_INPUTS_MODEL, .abits = 8, .input_quant = &iq};
    got = qat_logits(&mo, &err);
    want = static_ref_logits(&r);
    CHECK_MSG(got, "%s", err.msg);
    CHECK(same_floats(got, want, N_LOGITS) && !same_floats(got, plain, N_LOGITS));
    free(got);
    free(want);
    free(plain);
}

TEST(lsq_parameters_get_gradients_and_export_as_learned)
{
    qtc_error err;
    qtc_qat_options o = {.weights = 1, .lsq = 1};
    qtc_qscheme_parse("int4-g20-asym", &o.scheme);
    qtc_llama *m = small_llama(), *minmax = small_llama();
    qtc_qat *q = qtc_qat_attach(m, &o, &err);
    CHECK_MSG(q, "%s", err.msg);
    qtc_tensor *ps[2 * N_LIN + 1];
    CHECK(qtc_qat_params(q, ps, 2 * N_LIN + 1) == 2 * N_LIN); /* a scale and a zero point per weight */
    /* the scales start at the min-max ones */
    qtc_qat_options mo = {.weights = 1, .scheme = o.scheme};
    qtc_qat *qm = qtc_qat_attach(minmax, &mo, &err);
    float *got = logits_of(m, 0), *want = logits_of(minmax, 0);
    CHECK(same_floats(got, want, N_LOGITS));
    free(got);
    free(want);
    qtc_qat_free(qm);
    qtc_llama_free(minmax);
    for (int k = 0; k < 2 * N_LIN; k++) { /* "learned": scales shrunk so that values clamp, zero points moved */
        CHECK((ps[k]->flags & QTC_TENSOR_REQUIRES_GRAD) != 0);
        float *v = ps[k]->data;
        for (int64_t j = 0; j < qtc_tensor_numel(ps[k]); j++)
            v[j] = k % 2 == 0 ? v[j] * (0.6f + 0.01f * (float)(j % 7)) : v[j] + 1.4f;
    }
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *ids = qtc_tensor_wrap(QTC_I32, 2, QTC_SHAPE(WB, WT), (void *)windows[0], NULL, &err);
    qtc_tensor *logits = qtc_llama_forward(m, g, ids, 0);
    CHECK(qtc_graph_backward(g, qtc_sum(g, qtc_mul(g, logits, logits)), &err) == QTC_OK);
    for (int k = 0; k < 2 * N_LIN; k++) {
        int nonzero = 0;
        for (int64_t j = 0; ps[k]->grad && j < qtc_tensor_numel(ps[k]); j++)
            nonzero += ((float *)ps[k]->grad->data)[j] != 0;
        CHECK_MSG(nonzero > 0, "weight %d's %s has no gradient", k / 2, k % 2 ? "zero point" : "scale");
    }
    /* the export: each projection stored with its learned parameters, anything else left to qtc_convert */
    qtc_convert_hooks h = qtc_qat_convert_hooks(q);
    CHECK(h.qweight == qtc_qat_qweight && h.ctx == q);
    qtc_llama *ref = small_llama(); /* ref: the weights as exported, read back */
    for (int i = 0; i < N_LIN; i++) {
        char name[QTC_NAME_MAX];
        qtc_linear_weight_name(i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR), name, sizeof name);
        const qtc_tensor *w = qtc_llama_linear_weight(m, i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR));
        qtc_qweight a, b;
        CHECK(h.qweight(h.ctx, name, &o.scheme, &a, &err) == 1);
        CHECK(qtc_qweight_quantize_with(w->data, w->ne[0], w->ne[1], &o.scheme, ps[2 * i]->data, ps[2 * i + 1]->data, &b,
                                        &err) == QTC_OK);
        int64_t n = a.rows * a.n_groups;
        CHECK_MSG(a.rows == b.rows && a.n_groups == b.n_groups && memcmp(a.q, b.q, (size_t)(a.rows * a.cols)) == 0 &&
                      memcmp(a.scale, b.scale, (size_t)n * sizeof(float)) == 0 && a.zero && b.zero &&
                      memcmp(a.zero, b.zero, (size_t)n) == 0,
                  "%s: exported differently from its learned scales", name);
        qtc_qweight_dequantize(&a, qtc_llama_linear_weight(ref, i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR))->data);
        qtc_qweight_free(&a);
        qtc_qweight_free(&b);
        qtc_qscheme other = o.scheme;
        other.group = 32;
        CHECK(h.qweight(h.ctx, name, &other, &a, &err) == 0); /* another scheme: quantized afresh */
    }
    qtc_qweight unused;
    CHECK(h.qweight(h.ctx, "model.norm.weight", &o.scheme, &unused, &err) == 0);
    /* the forward saw exactly the weights the export stores */
    got = logits_of(m, 1);
    want = logits_of(ref, 1);
    CHECK(same_floats(got, want, N_LOGITS));
    free(got);
    free(want);
    qtc_llama_free(ref);
    /* symmetric schemes learn scales only; LSQ needs integer weights */
    qtc_qat_free(q);
    qtc_qscheme_parse("int4-g16", &o.scheme);
    CHECK((q = qtc_qat_attach(m, &o, &err)) && qtc_qat_params(q, NULL, 0) == N_LIN);
    qtc_qat_free(q);
    qtc_qscheme_parse("nf4", &o.scheme);
    CHECK(!qtc_qat_attach(m, &o, &err) && err.code == QTC_ERR_USAGE);
    qtc_tensor_free(ids);
    qtc_graph_free(g);
    qtc_llama_free(m);
}

TEST(an_lsq_model_exported_through_qtc_convert_holds_its_learned_weights)
{
    qtc_error err;
    qtc_model_file *src = qtc_model_open(shared_path("models/stories260K/stories260K.bin"), &err);
    CHECK_MSG(src, "%s", err.msg);
    qtc_llama *m = qtc_llama_from_model(src, &err);
    qtc_qat_options o = {.weights = 1, .lsq = 1};
    qtc_qscheme_parse("int4-g32-asym", &o.scheme);
    qtc_qat *q = qtc_qat_attach(m, &o, &err);
    CHECK(m && q);
    int n = qtc_qat_params(q, NULL, 0);
    qtc_tensor **ps = malloc((size_t)n * sizeof *ps);
    qtc_qat_params(q, ps, n);
    for (int k = 0; k < n; k += 2) {
        float *v = ps[k]->data;
        for (int64_t j = 0; j < qtc_tensor_numel(ps[k]); j++)
            v[j] *= 0.8f;
    }
    char out[] = "/tmp/qtc-qat-XXXXXX.safetensors";
    int fd = mkstemps(out, 12);
    CHECK(fd >= 0);
    close(fd);
    qtc_target to = {.is_scheme = 1, .scheme = o.scheme};
    qtc_convert_hooks h = qtc_qat_convert_hooks(q);
    qtc_convert_summary s;
    CHECK_MSG(qtc_llama_export(m, src, out, QTC_FMT_SAFETENSORS, 0, &to, &h, &s, &err) == QTC_OK, "%s", err.msg);
    qtc_llama *back = qtc_llama_load(out, &err);
    unlink(out);
    CHECK_MSG(back, "%s", err.msg);
    for (int i = 0; i < m->c.n_layers * QTC_N_LINEAR; i++) {
        const qtc_tensor *w = qtc_llama_linear_weight(m, i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR));
        qtc_qweight want;
        CHECK(qtc_qweight_quantize_with(w->data, w->ne[0], w->ne[1], &o.scheme, ps[2 * i]->data, ps[2 * i + 1]->data,
                                        &want, &err) == QTC_OK);
        float *d = malloc((size_t)qtc_tensor_numel(w) * sizeof *d);
        qtc_qweight_dequantize(&want, d);
        qtc_qweight_free(&want);
        int same = memcmp(d, qtc_llama_linear_weight(back, i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR))->data,
                          (size_t)qtc_tensor_numel(w) * sizeof *d) == 0;
        free(d);
        CHECK_MSG(same, "linear %d: the exported weight is not the learned one", i);
    }
    free(ps);
    qtc_llama_free(back);
    qtc_qat_free(q);
    qtc_llama_free(m);
    qtc_model_close(src);
}
