/* test_qat.c: fake quantization against what quant/ stores, the straight-through
 * estimator's boundary cases, and LSQ's scale and zero-point gradients against a
 * double-precision evaluation of PyTorch's formulas. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qtc/qat.h"
#include "qtc/rng.h"

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
