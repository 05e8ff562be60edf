/* test_optim.c: AdamW, clipping, schedules, the RNG and thread control. */
#include <math.h>
#include <string.h>

#include "harness.h"
#include "qtc/optim.h"
#include "qtc/rng.h"

/* Two AdamW steps worked by hand (PyTorch's update order):
 * p0 = 1, lr 0.1, weight decay 0.01, betas (0.9, 0.999), eps 1e-8.
 * step 1, g = 0.5:   p = 1 * (1 - 0.001) = 0.999; m = 0.05; v = 0.00025;
 *   denom = sqrt(0.00025) / sqrt(0.001) + 1e-8 = 0.5 + 1e-8; step size 0.1 / 0.1 = 1;
 *   p = 0.999 - 0.05 / (0.5 + 1e-8) = 0.899000002.
 * step 2, g = -0.25: p = 0.899000002 * 0.999 = 0.898101002; m = 0.045 - 0.025 = 0.02;
 *   v = 0.00024975 + 0.0000625 = 0.00031225; bc1 = 0.19; bc2 = 0.001999;
 *   denom = sqrt(0.00031225 / 0.001999) + 1e-8 = 0.39522...; step size 0.1 / 0.19;
 *   p = 0.898101002 - (0.1 / 0.19) * 0.02 / 0.395225 = 0.871467... (the test recomputes
 *   this line in double). */
TEST(adamw_matches_two_hand_computed_steps)
{
    qtc_error err;
    qtc_tensor *p = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(1), &err);
    CHECK(p && qtc_tensor_require_grad(p, &err) == QTC_OK);
    ((float *)p->data)[0] = 1.0f;
    qtc_adamw_config cfg = {0.9f, 0.999f, 1e-8f, 0.01f};
    qtc_adamw *opt = qtc_adamw_new(&p, 1, cfg, &err);
    CHECK(opt);
    ((float *)p->grad->data)[0] = 0.5f;
    qtc_adamw_step(opt, 0.1f);
    double want1 = 0.999 - 0.05 / (0.5 + 1e-8);
    CHECK_MSG(fabs(((float *)p->data)[0] - want1) < 1e-6, "step 1: %.9g vs %.9g", ((float *)p->data)[0], want1);
    CHECK(fabs(want1 - 0.899000002) < 1e-9);
    ((float *)p->grad->data)[0] = -0.25f;
    qtc_adamw_step(opt, 0.1f);
    double p2 = want1 * 0.999, m = 0.02, v = 0.00031225;
    double want2 = p2 - (0.1 / 0.19) * m / (sqrt(v / 0.001999) + 1e-8);
    CHECK_MSG(fabs(((float *)p->data)[0] - want2) < 1e-6, "step 2: %.9g vs %.9g", ((float *)p->data)[0], want2);
    CHECK(fabs(want2 - 0.8714672) < 1e-6);
    CHECK(qtc_adamw_steps(opt) == 2);
    qtc_adamw_free(opt);
    qtc_tensor_free(p);
}

TEST(adamw_matches_a_double_reference_over_many_steps_and_skips_frozen)
{
    qtc_error err;
    enum { N = 37, STEPS = 50 };
    qtc_tensor *p = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(1, N), &err);
    qtc_tensor *frozen = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(3), &err);
    CHECK(p && frozen);
    CHECK(qtc_tensor_require_grad(p, &err) == QTC_OK && qtc_tensor_require_grad(frozen, &err) == QTC_OK);
    qtc_tensor_set_trainable(frozen, 0);
    qtc_rng r;
    qtc_rng_seed(&r, 7);
    qtc_rng_fill_normal(&r, p, 0, 1);
    double w[N], m[N] = {0}, v[N] = {0};
    for (int i = 0; i < N; i++)
        w[i] = ((float *)p->data)[i];
    qtc_tensor *params[2] = {p, frozen};
    qtc_adamw_config cfg = {0.9f, 0.95f, 1e-8f, 0.1f};
    qtc_adamw *opt = qtc_adamw_new(params, 2, cfg, &err);
    CHECK(opt);
    for (int s = 1; s <= STEPS; s++) {
        float lr = 0.01f * (float)s / STEPS;
        for (int i = 0; i < N; i++) /* the gradient of sum(p^2)/2 plus noise */
            ((float *)p->grad->data)[i] = ((float *)p->data)[i] + 0.1f * (float)qtc_rng_normal(&r);
        ((float *)frozen->grad->data)[0] = 1.0f;
        for (int i = 0; i < N; i++) {
            double gi = ((float *)p->grad->data)[i];
            w[i] *= 1.0 - (double)lr * 0.1;
            m[i] = 0.9 * m[i] + 0.1 * gi;
            v[i] = 0.95 * v[i] + 0.05 * gi * gi;
            double mh = m[i] / (1 - pow(0.9, s)), vh = v[i] / (1 - pow(0.95, s));
            w[i] -= lr * mh / (sqrt(vh) + 1e-8);
        }
        qtc_adamw_step(opt, lr);
    }
    CHECK_CLOSE("adamw weights", (float *)p->data, w, N, 1e-4, 1e-6);
    CHECK(((float *)frozen->data)[0] == 0.0f);
    /* moments exist for the trainable parameter only */
    CHECK(qtc_adamw_moment(opt, 0, 1) && qtc_adamw_moment(opt, 0, 2));
    CHECK(!qtc_adamw_moment(opt, 1, 1) && !qtc_adamw_moment(opt, 1, 2));
    /* unfrozen, it gets zeroed moments: its first step is a fresh AdamW's first (decay 0.1, then
     * m/(1-b1^t) over sqrt(v/(1-b2^t)) with t the optimizer's step count) */
    qtc_tensor_set_trainable(frozen, 1);
    ((float *)frozen->data)[0] = 1.0f;
    qtc_adamw_step(opt, 0.01f);
    double m1 = 0.1, v1 = 0.05, t = STEPS + 1;
    double want = 1.0 * (1 - 0.01 * 0.1) - 0.01 * (m1 / (1 - pow(0.9, t))) / (sqrt(v1 / (1 - pow(0.95, t))) + 1e-8);
    CHECK_CLOSE("unfrozen parameter", (float *)frozen->data, &want, 1, 1e-5, 1e-7);
    CHECK(qtc_adamw_moment(opt, 1, 1));
    qtc_adamw_free(opt);
    qtc_tensor_free(p);
    qtc_tensor_free(frozen);
}

TEST(clip_grad_norm_scales_to_the_limit_like_pytorch)
{
    qtc_error err;
    qtc_tensor *a = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(2), &err);
    qtc_tensor *b = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(1), &err);
    CHECK(qtc_tensor_require_grad(a, &err) == QTC_OK && qtc_tensor_require_grad(b, &err) == QTC_OK);
    float *ga = a->grad->data, *gb = b->grad->data;
    ga[0] = 3;
    ga[1] = 0;
    gb[0] = 4;
    qtc_tensor *ps[2] = {a, b};
    CHECK(fabs(qtc_clip_grad_norm(ps, 2, 10.0) - 5.0) < 1e-12);
    CHECK(ga[0] == 3 && gb[0] == 4);
    CHECK(fabs(qtc_clip_grad_norm(ps, 2, 1.0) - 5.0) < 1e-12);
    CHECK(fabs(ga[0] - 3.0 / (5.0 + 1e-6)) < 1e-7 && fabs(gb[0] - 4.0 / (5.0 + 1e-6)) < 1e-7);
    CHECK(fabs(qtc_grad_norm(ps, 2) - 1.0) < 1e-6);
    qtc_tensor_free(a);
    qtc_tensor_free(b);
}

TEST(lr_schedule_warmup_then_cosine_to_the_floor)
{
    qtc_lr_schedule s = {QTC_LR_COSINE, 1.0f, 10, 110, 0.1f};
    CHECK(fabsf(qtc_lr_at(&s, 0) - 0.1f) < 1e-7f);
    CHECK(fabsf(qtc_lr_at(&s, 9) - 1.0f) < 1e-7f);
    CHECK(fabsf(qtc_lr_at(&s, 10) - 1.0f) < 1e-7f);
    CHECK(fabsf(qtc_lr_at(&s, 60) - 0.55f) < 1e-6f);
    CHECK(fabsf(qtc_lr_at(&s, 35) - (float)(0.1 + 0.9 * 0.5 * (1 + cos(M_PI * 0.25)))) < 1e-6f);
    CHECK(fabsf(qtc_lr_at(&s, 110) - 0.1f) < 1e-7f && fabsf(qtc_lr_at(&s, 500) - 0.1f) < 1e-7f);
    qtc_lr_schedule c = {QTC_LR_CONSTANT, 3e-4f, 0, 0, 0};
    CHECK(qtc_lr_at(&c, 0) == 3e-4f && qtc_lr_at(&c, 1000) == 3e-4f);
}

TEST(rng_xoshiro256starstar_matches_the_reference_sequence)
{
    /* state {1, 2, 3, 4}: the reference implementation's first outputs */
    qtc_rng r = {{1, 2, 3, 4}};
    const uint64_t want[6] = {11520ull, 0ull, 1509978240ull, 1215971899390074240ull,
                              1216172134540287360ull, 607988272756665600ull};
    for (int i = 0; i < 6; i++) {
        uint64_t got = qtc_rng_u64(&r);
        CHECK_MSG(got == want[i], "output %d: %llu, want %llu", i, (unsigned long long)got,
                  (unsigned long long)want[i]);
    }
}

TEST(rng_seeds_repeat_and_distributions_have_the_right_moments)
{
    qtc_rng a, b;
    qtc_rng_seed(&a, 42);
    qtc_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++)
        CHECK(qtc_rng_u64(&a) == qtc_rng_u64(&b));
    qtc_rng_seed(&b, 43);
    CHECK(qtc_rng_u64(&a) != qtc_rng_u64(&b));
    enum { N = 400000 };
    double su = 0, suu = 0, sn = 0, snn = 0;
    int below[10] = {0};
    for (int i = 0; i < N; i++) {
        double u = qtc_rng_uniform(&a), z = qtc_rng_normal(&a);
        CHECK(u >= 0 && u < 1);
        su += u;
        suu += u * u;
        sn += z;
        snn += z * z;
        below[qtc_rng_below(&a, 10)]++;
    }
    CHECK(fabs(su / N - 0.5) < 0.005 && fabs(suu / N - su * su / N / N - 1.0 / 12) < 0.002);
    CHECK(fabs(sn / N) < 0.01 && fabs(snn / N - 1) < 0.01);
    for (int k = 0; k < 10; k++)
        CHECK(fabs(below[k] / (double)N - 0.1) < 0.003);
}

TEST(kaiming_uniform_bound_is_pytorchs)
{
    qtc_error err;
    qtc_tensor *t = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(64, 100), &err);
    qtc_rng r;
    qtc_rng_seed(&r, 3);
    qtc_rng_kaiming_uniform(&r, t, sqrt(5.0));
    float mx = 0;
    for (int i = 0; i < 6400; i++)
        mx = fmaxf(mx, fabsf(((float *)t->data)[i]));
    CHECK_MSG(mx <= 0.1f && mx > 0.099f, "max |w| %g for bound 1/sqrt(100)", mx);
    qtc_tensor_free(t);
}
