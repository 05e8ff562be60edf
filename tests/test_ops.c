/* test_ops.c: every op's forward against a plain double-precision loop, and
 * every backward against central finite differences of that double-precision
 * reference (so the numerical gradient is accurate to ~1e-9 and the tolerance
 * measures only the float kernels). Sizes are awkward on purpose. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qtc/graph.h"
#include "qtc/rng.h"
#include "qtc/runtime.h"

typedef struct op_case op_case;
typedef qtc_tensor *(*run_fn)(qtc_graph *g, qtc_tensor **in, const op_case *c);
typedef void (*ref_fn)(const double *const *in, double *out, const op_case *c);

struct op_case {
    const char *name;
    int n_in;
    int ndim[4];
    int64_t shape[4][4];
    int frozen[4];        /* inputs that are not trainable: must get no gradient */
    run_fn run;
    ref_fn ref;
    int ta, tb, n_head, n_kv, n_rot, layout;
    int64_t pos0;
    float theta, eps, s;
    qtc_tensor *ids;      /* i32 ids or targets */
    float spread;         /* inputs ~ N(0, spread^2); 0 means 1 */
};

static int64_t numel_of(const op_case *c, int i)
{
    int64_t n = 1;
    for (int d = 0; d < c->ndim[i]; d++)
        n *= c->shape[i][d];
    return n;
}

/* Runs the case: forward vs reference, then (grad) backward vs finite differences. */
static int check_op(const op_case *c, double fwd_rtol, int grad, double grad_rtol)
{
    qtc_error err;
    qtc_rng r;
    qtc_rng_seed(&r, 1234);
    qtc_tensor *in[4] = {0};
    double *din[4] = {0};
    int ok = 0;
    qtc_graph *g = qtc_graph_new(&err);
    double *ref_out = NULL, *gw = NULL, *num = NULL;
    qtc_tensor *G = NULL;
    for (int i = 0; i < c->n_in; i++) {
        in[i] = qtc_tensor_new(QTC_F32, c->ndim[i], c->shape[i], &err);
        qtc_rng_fill_normal(&r, in[i], 0, c->spread ? c->spread : 1.0f);
        if (grad && !c->frozen[i])
            qtc_tensor_require_grad(in[i], &err);
        int64_t n = qtc_tensor_numel(in[i]);
        din[i] = malloc((size_t)(n ? n : 1) * sizeof(double));
        for (int64_t j = 0; j < n; j++)
            din[i][j] = ((float *)in[i]->data)[j];
    }
    qtc_tensor *out = c->run(g, in, c);
    if (!out) {
        test_fail(__FILE__, __LINE__, "%s: op returned NULL", c->name);
        goto done;
    }
    int64_t n_out = qtc_tensor_numel(out);
    ref_out = calloc((size_t)n_out + 1, sizeof(double));
    c->ref((const double *const *)din, ref_out, c);
    char what[128];
    snprintf(what, sizeof what, "%s forward", c->name);
    double out_scale = 0; /* sums cancel: judge absolute errors against the output's scale */
    for (int64_t j = 0; j < n_out; j++)
        out_scale = fmax(out_scale, fabs(ref_out[j]));
    if (!check_close_f(what, out->data, ref_out, n_out, fwd_rtol, fwd_rtol * out_scale + 1e-30))
        goto done;
    if (!grad) {
        ok = 1;
        goto done;
    }
    /* loss = sum(out * G) for a random G; d loss / d out = G */
    G = qtc_tensor_new(QTC_F32, out->ndim, out->ne, &err);
    qtc_rng_fill_normal(&r, G, 0, 1);
    gw = malloc((size_t)n_out * sizeof(double));
    for (int64_t j = 0; j < n_out; j++)
        gw[j] = ((float *)G->data)[j];
    qtc_tensor *loss = qtc_sum(g, qtc_mul(g, out, G));
    if (qtc_graph_backward(g, loss, &err) != QTC_OK) {
        test_fail(__FILE__, __LINE__, "%s: backward: %s", c->name, err.msg);
        goto done;
    }
    for (int i = 0; i < c->n_in; i++) {
        int64_t n = numel_of(c, i);
        if (c->frozen[i]) {
            if (in[i]->grad) {
                test_fail(__FILE__, __LINE__, "%s: frozen input %d got a gradient", c->name, i);
                goto done;
            }
            continue;
        }
        free(num);
        num = malloc((size_t)(n ? n : 1) * sizeof(double));
        for (int64_t j = 0; j < n; j++) {
            double x0 = din[i][j], h = 1e-6 * fmax(1.0, fabs(x0)), lp = 0, lm = 0;
            din[i][j] = x0 + h;
            c->ref((const double *const *)din, ref_out, c);
            for (int64_t k = 0; k < n_out; k++)
                lp += gw[k] * ref_out[k];
            din[i][j] = x0 - h;
            c->ref((const double *const *)din, ref_out, c);
            for (int64_t k = 0; k < n_out; k++)
                lm += gw[k] * ref_out[k];
            din[i][j] = x0;
            num[j] = (lp - lm) / (2 * h);
        }
        double scale = 0;
        for (int64_t j = 0; j < n; j++)
            scale = fmax(scale, fabs(num[j]));
        snprintf(what, sizeof what, "%s d/d(input %d)", c->name, i);
        if (!check_close_f(what, in[i]->grad->data, num, n, grad_rtol, 1e-5 * fmax(scale, 1e-3)))
            goto done;
    }
    ok = 1;
done:
    if (!ok && !test_failed())
        test_fail(__FILE__, __LINE__, "%s failed", c->name);
    for (int i = 0; i < c->n_in; i++) {
        qtc_tensor_free(in[i]);
        free(din[i]);
    }
    qtc_tensor_free(G);
    free(ref_out);
    free(gw);
    free(num);
    qtc_graph_free(g);
    return ok;
}

/* --- matmul ------------------------------------------------------------------ */

static qtc_tensor *run_matmul(qtc_graph *g, qtc_tensor **in, const op_case *c)
{
    return qtc_matmul(g, in[0], in[1], c->ta, c->tb);
}

static void ref_matmul(const double *const *in, double *out, const op_case *c)
{
    int an = c->ndim[0], bn = c->ndim[1];
    int64_t ar = c->shape[0][an - 2], ac = c->shape[0][an - 1];
    int64_t br = c->shape[1][bn - 2], bc = c->shape[1][bn - 1];
    int64_t M = c->ta ? ac : ar, K = c->ta ? ar : ac, N = c->tb ? br : bc;
    int64_t batch = numel_of(c, 0) / (ar * ac);
    for (int64_t b = 0; b < batch; b++) {
        const double *A = in[0] + b * ar * ac, *B = in[1] + (bn == 2 ? 0 : b * br * bc);
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double s = 0;
                for (int64_t k = 0; k < K; k++)
                    s += (c->ta ? A[k * ac + i] : A[i * ac + k]) *
                         (c->tb ? B[j * bc + k] : B[k * bc + j]);
                out[(b * M + i) * N + j] = s;
            }
    }
}

TEST(matmul_forward_matches_double_loop_at_awkward_sizes)
{
    const int64_t sizes[] = {1, 3, 17, 31, 33, 172, 255};
    for (int a = 0; a < 7; a++)
        for (int t = 0; t < 4; t++) {
            int64_t M = sizes[a], K = sizes[(a + 3) % 7], N = sizes[(a + 5) % 7];
            op_case c = {.name = "matmul", .n_in = 2, .ndim = {2, 2}, .run = run_matmul,
                         .ref = ref_matmul, .ta = t & 1, .tb = t >> 1};
            c.shape[0][0] = c.ta ? K : M;
            c.shape[0][1] = c.ta ? M : K;
            c.shape[1][0] = c.tb ? N : K;
            c.shape[1][1] = c.tb ? K : N;
            if (!check_op(&c, 1e-5, 0, 0))
                return;
        }
}

TEST(matmul_backward_matches_finite_differences_for_every_transpose_and_batching)
{
    for (int t = 0; t < 4; t++)
        for (int batched_b = 0; batched_b < 2; batched_b++) {
            int64_t B = 2, M = 3, K = 5, N = 4;
            op_case c = {.name = "matmul", .n_in = 2, .run = run_matmul, .ref = ref_matmul,
                         .ta = t & 1, .tb = t >> 1};
            c.ndim[0] = 3;
            c.shape[0][0] = B;
            c.shape[0][1] = c.ta ? K : M;
            c.shape[0][2] = c.ta ? M : K;
            c.ndim[1] = batched_b ? 3 : 2;
            int64_t *bs = c.shape[1];
            if (batched_b)
                *bs++ = B;
            bs[0] = c.tb ? N : K;
            bs[1] = c.tb ? K : N;
            if (!check_op(&c, 1e-5, 1, 1e-4))
                return;
        }
}

TEST(matmul_skips_the_gradient_of_a_frozen_weight)
{
    op_case c = {.name = "matmul frozen W", .n_in = 2, .ndim = {3, 2},
                 .shape = {{2, 17, 31}, {33, 31}}, .frozen = {0, 1}, .run = run_matmul,
                 .ref = ref_matmul, .tb = 1};
    check_op(&c, 1e-5, 1, 1e-4);
}

/* --- elementwise, reductions, reshape ------------------------------------------- */

static qtc_tensor *run_add(qtc_graph *g, qtc_tensor **in, const op_case *c)
{
    (void)c;
    return qtc_add(g, in[0], in[1]);
}

static void ref_add(const double *const *in, double *out, const op_case *c)
{
    int64_t na = numel_of(c, 0), nb = numel_of(c, 1);
    for (int64_t i = 0; i < na; i++)
        out[i] = in[0][i] + in[1][i % nb];
}

static qtc_tensor *run_mul(qtc_graph *g, qtc_tensor **in, const op_case *c)
{
    (void)c;
    return qtc_mul(g, in[0], in[1]);
}

static void ref_mul(const double *const *in, double *out, const op_case *c)
{
    int64_t na = numel_of(c, 0), nb = numel_of(c, 1);
    for (int64_t i = 0; i < na; i++)
        out[i] = in[0][i] * in[1][i % nb];
}

static qtc_tensor *run_scale(qtc_graph *g, qtc_tensor **in, const op_case *c)
{
    return qtc_scale(g, in[0], c->s);
}

static void ref_scale(const double *const *in, double *out, const op_case *c)
{
    for (int64_t i = 0; i < numel_of(c, 0); i++)
        out[i] = (double)c->s * in[0][i];
}

static qtc_tensor *run_sum(qtc_graph *g, qtc_tensor **in, const op_case *c)
{
    return c->s ? qtc_mean(g, in[0]) : qtc_sum(g, in[0]);
}

static void ref_sum(const double *const *in, double *out, const op_case *c)
{
    double s = 0;
    for (int64_t i = 0; i < numel_of(c, 0); i++)
        s += in[0][i];
    out[0] = c->s ? s / (double)numel_of(c, 0) : s;
}

static qtc_tensor *run_reshape(qtc_graph *g, qtc_tensor **in, const op_case *c)
{
    (void)c;
    qtc_tensor *y = qtc_reshape(g, in[0], 2, QTC_SHAPE(17, 6));
    return qtc_scale(g, y, 1.0f); /* a consumer that reads the reshaped view */
}

static void ref_reshape(const double *const *in, double *out, const op_case *c)
{
    memcpy(out, in[0], (size_t)numel_of(c, 0) * sizeof(double));
}

TEST(elementwise_ops_and_reductions_match_reference_and_gradients)
{
    op_case cases[] = {
        {.name = "add same shape", .n_in = 2, .ndim = {2, 2}, .shape = {{17, 31}, {17, 31}}, .run = run_add, .ref = ref_add},
        {.name = "add broadcast bias", .n_in = 2, .ndim = {3, 1}, .shape = {{3, 5, 33}, {33}}, .run = run_add, .ref = ref_add},
        {.name = "mul same shape", .n_in = 2, .ndim = {1, 1}, .shape = {{255}, {255}}, .run = run_mul, .ref = ref_mul},
        {.name = "mul broadcast rows", .n_in = 2, .ndim = {3, 2}, .shape = {{2, 3, 17}, {3, 17}}, .run = run_mul, .ref = ref_mul},
        {.name = "scale", .n_in = 1, .ndim = {2}, .shape = {{31, 3}}, .run = run_scale, .ref = ref_scale, .s = -0.37f},
        {.name = "sum", .n_in = 1, .ndim = {3}, .shape = {{3, 17, 5}}, .run = run_sum, .ref = ref_sum},
        {.name = "mean", .n_in = 1, .ndim = {1}, .shape = {{172}}, .run = run_sum, .ref = ref_sum, .s = 1},
        {.name = "reshape", .n_in = 1, .ndim = {3}, .shape = {{3, 17, 2}}, .run = run_reshape, .ref = ref_reshape},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        if (!check_op(&cases[i], 1e-6, 1, 1e-4))
            return;
}

/* --- SiLU, SwiGLU --------------------------------------------------------------- */

static double dsig(double x)
{
    return 1 / (1 + exp(-x));
}

static qtc_tensor *run_silu(qtc_graph *g, qtc_tensor **in, const op_case *c)
{
    (void)c;
    return qtc_silu(g, in[0]);
}

static void ref_silu(const double *const *in, double *out, const op_case *c)
{
    for (int64_t i = 0; i < numel_of(c, 0); i++)
        out[i] = in[0][i] * dsig(in[0][i]);
}

static qtc_tensor *run_swiglu(qtc_graph *g, qtc_tensor **in, const op_case *c)
{
    (void)c;
    return qtc_swiglu(g, in[0], in[1]);
}

static void ref_swiglu(const double *const *in, double *out, const op_case *c)
{
    for (int64_t i = 0; i < numel_of(c, 0); i++)
        out[i] = in[0][i] * dsig(in[0][i]) * in[1][i];
}

TEST(silu_and_swiglu_match_reference_and_gradients)
{
    op_case a = {.name = "silu", .n_in = 1, .ndim = {2}, .shape = {{17, 33}}, .run = run_silu, .ref = ref_silu, .spread = 4};
    op_case b = {.name = "swiglu", .n_in = 2, .ndim = {2, 2}, .shape = {{3, 172}, {3, 172}}, .run = run_swiglu, .ref = ref_swiglu, .spread = 3};
    op_case f = {.name = "swiglu frozen up", .n_in = 2, .ndim = {1, 1}, .shape = {{31}, {31}}, .frozen = {0, 1}, .run = run_swiglu, .ref = ref_swiglu};
    if (check_op(&a, 1e-6, 1, 1e-4) && check_op(&b, 1e-6, 1, 1e-4))
        check_op(&f, 1e-6, 1, 1e-4);
}

/* --- RMSNorm --------------------------------------------------------------------- */

static qtc_tensor *run_rmsnorm(qtc_graph *g, qtc_tensor **in, const op_case *c)
{
    return qtc_rmsnorm(g, in[0], c->n_in > 1 ? in[1] : NULL, c->eps);
}

static void ref_rmsnorm(const double *const *in, double *out, const op_case *c)
{
    int64_t D = c->shape[0][c->ndim[0] - 1], rows = numel_of(c, 0) / D;
    for (int64_t r = 0; r < rows; r++) {
        double ss = 0;
        for (int64_t j = 0; j < D; j++)
            ss += in[0][r * D + j] * in[0][r * D + j];
        double rs = 1 / sqrt(ss / (double)D + (double)c->eps);
        for (int64_t j = 0; j < D; j++)
            out[r * D + j] = in[0][r * D + j] * rs * (c->n_in > 1 ? in[1][j] : 1.0);
    }
}

TEST(rmsnorm_matches_reference_and_gradients)
{
    op_case cases[] = {
        {.name = "rmsnorm", .n_in = 2, .ndim = {3, 1}, .shape = {{2, 3, 17}, {17}}, .run = run_rmsnorm, .ref = ref_rmsnorm, .eps = 1e-5f},
        {.name = "rmsnorm wide", .n_in = 2, .ndim = {2, 1}, .shape = {{3, 255}, {255}}, .run = run_rmsnorm, .ref = ref_rmsnorm, .eps = 1e-6f, .spread = 0.01f},
        {.name = "rmsnorm no weight", .n_in = 1, .ndim = {2}, .shape = {{5, 33}}, .run = run_rmsnorm, .ref = ref_rmsnorm, .eps = 1e-5f},
        {.name = "rmsnorm one", .n_in = 2, .ndim = {2, 1}, .shape = {{1, 1}, {1}}, .run = run_rmsnorm, .ref = ref_rmsnorm, .eps = 0.5f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        if (!check_op(&cases[i], 1e-5, 1, 1e-3))
            return;
}

/* --- RoPE ------------------------------------------------------------------------- */

static qtc_tensor *run_rope(qtc_graph *g, qtc_tensor **in, const op_case *c)
{
    return qtc_rope(g, in[0], c->n_head, c->n_rot, c->pos0, c->theta, (qtc_rope_layout)c->layout);
}

static void ref_rope(const double *const *in, double *out, const op_case *c)
{
    int64_t B = c->shape[0][0], T = c->shape[0][1], W = c->shape[0][2];
    int hd = (int)(W / c->n_head), nr = c->n_rot ? c->n_rot : hd;
    memcpy(out, in[0], (size_t)(B * T * W) * sizeof(double));
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int h = 0; h < c->n_head; h++) {
                const double *x = in[0] + (b * T + t) * W + h * hd;
                double *y = out + (b * T + t) * W + h * hd;
                for (int i = 0; i < nr / 2; i++) {
                    double ang = (double)(c->pos0 + t) / pow(c->theta, 2.0 * i / nr);
                    int i0 = c->layout ? i : 2 * i, i1 = c->layout ? i + nr / 2 : 2 * i + 1;
                    y[i0] = x[i0] * cos(ang) - x[i1] * sin(ang);
                    y[i1] = x[i0] * sin(ang) + x[i1] * cos(ang);
                }
            }
}

TEST(rope_both_layouts_match_reference_and_gradients)
{
    for (int layout = 0; layout < 2; layout++) {
        op_case c = {.name = layout ? "rope half" : "rope interleaved", .n_in = 1, .ndim = {3},
                     .shape = {{2, 17, 24}}, .run = run_rope, .ref = ref_rope, .n_head = 3,
                     .layout = layout, .pos0 = 5, .theta = 10000.0f};
        op_case partial = c;
        partial.name = "rope partial";
        partial.n_rot = 4;
        partial.theta = 500000.0f;
        op_case far = c;
        far.name = "rope far positions";
        far.pos0 = 2000;
        far.shape[0][1] = 3;
        if (!check_op(&c, 1e-5, 1, 1e-4) || !check_op(&partial, 1e-5, 1, 1e-4) ||
            !check_op(&far, 1e-5, 1, 1e-4))
            return;
    }
}

TEST(rope_layouts_agree_after_the_hf_row_permutation)
{
    /* HF's rotate-half on the permuted head equals llama2.c's interleaved rotation:
     * interleaved dim 2i sits at i, 2i+1 at i + hd/2 */
    qtc_error err;
    int hd = 8, H = 2;
    qtc_tensor *x = qtc_tensor_new(QTC_F32, 3, QTC_SHAPE(1, 4, 16), &err);
    qtc_tensor *xp = qtc_tensor_new(QTC_F32, 3, QTC_SHAPE(1, 4, 16), &err);
    qtc_rng r;
    qtc_rng_seed(&r, 9);
    qtc_rng_fill_normal(&r, x, 0, 1);
    float *a = x->data, *b = xp->data;
    for (int t = 0; t < 4; t++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < hd / 2; i++) {
                b[t * 16 + h * hd + i] = a[t * 16 + h * hd + 2 * i];
                b[t * 16 + h * hd + i + hd / 2] = a[t * 16 + h * hd + 2 * i + 1];
            }
    qtc_graph *g = qtc_graph_new(&err);
    float *ya = qtc_rope(g, x, H, 0, 3, 10000.0f, QTC_ROPE_INTERLEAVED)->data;
    float *yb = qtc_rope(g, xp, H, 0, 3, 10000.0f, QTC_ROPE_HALF)->data;
    for (int t = 0; t < 4; t++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < hd / 2; i++) {
                CHECK(ya[t * 16 + h * hd + 2 * i] == yb[t * 16 + h * hd + i]);
                CHECK(ya[t * 16 + h * hd + 2 * i + 1] == yb[t * 16 + h * hd + i + hd / 2]);
            }
    qtc_graph_free(g);
    qtc_tensor_free(x);
    qtc_tensor_free(xp);
}

/* --- attention --------------------------------------------------------------------- */

static qtc_tensor *run_attention(qtc_graph *g, qtc_tensor **in, const op_case *c)
{
    return qtc_attention(g, in[0], in[1], in[2], c->n_head, c->n_kv);
}

static void ref_attention(const double *const *in, double *out, const op_case *c)
{
    int64_t B = c->shape[0][0], Tq = c->shape[0][1], Tk = c->shape[1][1];
    int H = c->n_head, Hkv = c->n_kv, D = (int)(c->shape[0][2] / H);
    double *s = malloc((size_t)Tk * sizeof *s);
    for (int64_t b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kvh = h / (H / Hkv);
            for (int64_t t = 0; t < Tq; t++) {
                const double *q = in[0] + (b * Tq + t) * H * D + h * D;
                int64_t n = t + Tk - Tq + 1;
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < n; j++) {
                    const double *k = in[1] + (b * Tk + j) * Hkv * D + kvh * D;
                    s[j] = 0;
                    for (int i = 0; i < D; i++)
                        s[j] += q[i] * k[i];
                    s[j] /= sqrt((double)D);
                    mx = fmax(mx, s[j]);
                }
                for (int64_t j = 0; j < n; j++)
                    sum += (s[j] = exp(s[j] - mx));
                double *o = out + (b * Tq + t) * H * D + h * D;
                for (int i = 0; i < D; i++) {
                    o[i] = 0;
                    for (int64_t j = 0; j < n; j++)
                        o[i] += s[j] / sum * in[2][(b * Tk + j) * Hkv * D + kvh * D + i];
                }
            }
        }
    free(s);
}

TEST(attention_matches_reference_and_gradients_with_grouped_heads)
{
    op_case cases[] = {
        {.name = "attention mha", .n_in = 3, .ndim = {3, 3, 3}, .shape = {{2, 5, 12}, {2, 5, 12}, {2, 5, 12}}, .n_head = 4, .n_kv = 4},
        {.name = "attention gqa", .n_in = 3, .ndim = {3, 3, 3}, .shape = {{2, 7, 12}, {2, 7, 6}, {2, 7, 6}}, .n_head = 4, .n_kv = 2, .spread = 2},
        {.name = "attention mqa, queries after a cache", .n_in = 3, .ndim = {3, 3, 3}, .shape = {{1, 3, 9}, {1, 8, 3}, {1, 8, 3}}, .n_head = 3, .n_kv = 1},
        {.name = "attention one token", .n_in = 3, .ndim = {3, 3, 3}, .shape = {{1, 1, 4}, {1, 1, 4}, {1, 1, 4}}, .n_head = 1, .n_kv = 1},
        {.name = "attention frozen v", .n_in = 3, .ndim = {3, 3, 3}, .shape = {{1, 4, 8}, {1, 4, 8}, {1, 4, 8}}, .n_head = 2, .n_kv = 2, .frozen = {0, 0, 1}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cases[i].run = run_attention;
        cases[i].ref = ref_attention;
        if (!check_op(&cases[i], 1e-5, 1, 1e-3))
            return;
    }
}

TEST(attention_forward_at_awkward_lengths_with_and_without_recording)
{
    const int64_t T[] = {1, 3, 17, 31, 33, 172, 255};
    for (int i = 0; i < 7; i++) {
        op_case c = {.name = "attention long", .n_in = 3, .ndim = {3, 3, 3}, .n_head = 8, .n_kv = 4,
                     .run = run_attention, .ref = ref_attention};
        int64_t shp[3][3] = {{1, T[i], 64}, {1, T[i], 32}, {1, T[i], 32}};
        memcpy(c.shape[0], shp[0], sizeof shp[0]);
        memcpy(c.shape[1], shp[1], sizeof shp[1]);
        memcpy(c.shape[2], shp[2], sizeof shp[2]);
        if (!check_op(&c, 1e-5, 0, 0)) /* not recording */
            return;
        c.frozen[0] = 0;
        qtc_error err;
        qtc_graph *g = qtc_graph_new(&err);
        qtc_tensor *in[3];
        double *din[3];
        qtc_rng r;
        qtc_rng_seed(&r, 1234);
        for (int k = 0; k < 3; k++) {
            in[k] = qtc_tensor_new(QTC_F32, 3, c.shape[k], &err);
            qtc_rng_fill_normal(&r, in[k], 0, 1);
            qtc_tensor_require_grad(in[k], &err);
            int64_t n = qtc_tensor_numel(in[k]);
            din[k] = malloc((size_t)n * sizeof(double));
            for (int64_t j = 0; j < n; j++)
                din[k][j] = ((float *)in[k]->data)[j];
        }
        qtc_tensor *o = run_attention(g, in, &c); /* recording: the log-sum-exps kept */
        double *want = malloc((size_t)qtc_tensor_numel(o) * sizeof(double));
        ref_attention((const double *const *)din, want, &c);
        int ok = check_close_f("attention recorded", o->data, want, qtc_tensor_numel(o), 1e-5, 1e-6);
        for (int k = 0; k < 3; k++) {
            qtc_tensor_free(in[k]);
            free(din[k]);
        }
        free(want);
        qtc_graph_free(g);
        CHECK(ok);
    }
}

/* --- embedding ------------------------------------------------------------------------ */

static qtc_tensor *run_embedding(qtc_graph *g, qtc_tensor **in, const op_case *c)
{
    return qtc_embedding(g, in[0], c->ids);
}

static void ref_embedding(const double *const *in, double *out, const op_case *c)
{
    int64_t D = c->shape[0][1], n = qtc_tensor_numel(c->ids);
    for (int64_t i = 0; i < n; i++)
        memcpy(out + i * D, in[0] + ((int32_t *)c->ids->data)[i] * D, (size_t)D * sizeof(double));
}

TEST(embedding_gathers_rows_and_scatters_repeated_gradients)
{
    qtc_error err;
    int32_t id[6] = {3, 0, 16, 3, 3, 7};
    qtc_tensor *ids = qtc_tensor_wrap(QTC_I32, 2, QTC_SHAPE(2, 3), id, NULL, &err);
    op_case c = {.name = "embedding", .n_in = 1, .ndim = {2}, .shape = {{17, 5}}, .run = run_embedding,
                 .ref = ref_embedding, .ids = ids};
    check_op(&c, 0, 1, 1e-5);
    qtc_tensor_free(ids);
}

/* --- losses ----------------------------------------------------------------------------- */

static qtc_tensor *run_ce(qtc_graph *g, qtc_tensor **in, const op_case *c)
{
    return qtc_cross_entropy(g, in[0], c->ids);
}

static double ref_lse(const double *x, int64_t V)
{
    double mx = -INFINITY, s = 0;
    for (int64_t j = 0; j < V; j++)
        mx = fmax(mx, x[j]);
    for (int64_t j = 0; j < V; j++)
        s += exp(x[j] - mx);
    return mx + log(s);
}

static void ref_ce(const double *const *in, double *out, const op_case *c)
{
    int64_t V = c->shape[0][c->ndim[0] - 1], rows = numel_of(c, 0) / V, valid = 0;
    const int32_t *t = c->ids->data;
    double s = 0;
    for (int64_t r = 0; r < rows; r++)
        if (t[r] >= 0) {
            s += ref_lse(in[0] + r * V, V) - in[0][r * V + t[r]];
            valid++;
        }
    out[0] = valid ? s / (double)valid : 0;
}

TEST(cross_entropy_matches_reference_ignores_negative_targets)
{
    qtc_error err;
    int32_t tg[6] = {4, 0, -1, 30, 30, 2};
    qtc_tensor *t = qtc_tensor_wrap(QTC_I32, 2, QTC_SHAPE(2, 3), tg, NULL, &err);
    op_case c = {.name = "cross_entropy", .n_in = 1, .ndim = {3}, .shape = {{2, 3, 31}}, .run = run_ce,
                 .ref = ref_ce, .ids = t, .spread = 3};
    check_op(&c, 1e-6, 1, 1e-4);
    qtc_tensor_free(t);
}

TEST(cross_entropy_is_stable_for_huge_logits_and_known_for_uniform)
{
    qtc_error err;
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *x = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(2, 512), &err);
    float *d = x->data;
    d[7] = 1e30f; /* row 0: one enormous logit, the target */
    int32_t tg[2] = {7, 100};
    qtc_tensor *t = qtc_tensor_wrap(QTC_I32, 1, QTC_SHAPE(2), tg, NULL, &err);
    float loss = ((float *)qtc_cross_entropy(g, x, t)->data)[0];
    /* row 0 loss 0, row 1 uniform: log(512) */
    CHECK_MSG(fabsf(loss - (float)(log(512.0) / 2)) < 1e-6f, "loss %g", loss);
    qtc_graph_free(g);
    qtc_tensor_free(x);
    qtc_tensor_free(t);
}

static qtc_tensor *run_kl(qtc_graph *g, qtc_tensor **in, const op_case *c)
{
    (void)c;
    return qtc_kl_div(g, in[0], in[1]);
}

static void ref_kl(const double *const *in, double *out, const op_case *c)
{
    int64_t V = c->shape[0][c->ndim[0] - 1], rows = numel_of(c, 0) / V;
    double s = 0;
    for (int64_t r = 0; r < rows; r++) {
        double lp = ref_lse(in[0] + r * V, V), lq = ref_lse(in[1] + r * V, V);
        for (int64_t j = 0; j < V; j++) {
            double a = in[1][r * V + j] - lq, b = in[0][r * V + j] - lp;
            s += exp(a) * (a - b);
        }
    }
    out[0] = s / (double)rows;
}

TEST(kl_divergence_matches_reference_for_student_and_teacher)
{
    op_case both = {.name = "kl_div", .n_in = 2, .ndim = {2, 2}, .shape = {{5, 17}, {5, 17}}, .run = run_kl, .ref = ref_kl, .spread = 2};
    op_case teacher_frozen = {.name = "kl_div frozen teacher", .n_in = 2, .ndim = {3, 3}, .shape = {{2, 3, 33}, {2, 3, 33}}, .frozen = {0, 1}, .run = run_kl, .ref = ref_kl};
    if (check_op(&both, 1e-5, 1, 1e-3))
        check_op(&teacher_frozen, 1e-5, 1, 1e-3);
}

TEST(kl_divergence_of_identical_logits_is_zero)
{
    qtc_error err;
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *x = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(3, 255), &err);
    qtc_rng r;
    qtc_rng_seed(&r, 5);
    qtc_rng_fill_normal(&r, x, 0, 5);
    float kl = ((float *)qtc_kl_div(g, x, x)->data)[0];
    CHECK_MSG(fabsf(kl) < 1e-6f, "KL(p||p) = %g", kl);
    qtc_graph_free(g);
    qtc_tensor_free(x);
}

/* --- the graph itself ----------------------------------------------------------------------- */

/* A two-layer net trained a step: shared by the reuse and thread tests. */
static void tiny_step(qtc_graph *g, qtc_tensor *w1, qtc_tensor *w2, qtc_tensor *x, qtc_tensor *tg,
                      float *loss_out)
{
    qtc_tensor *h = qtc_rmsnorm(g, qtc_matmul(g, x, w1, 0, 1), NULL, 1e-5f);
    qtc_tensor *q = qtc_reshape(g, qtc_silu(g, h), 3, QTC_SHAPE(2, 17, 24));
    qtc_tensor *a = qtc_attention(g, qtc_rope(g, q, 4, 0, 0, 10000.0f, QTC_ROPE_HALF), q, q, 4, 4);
    qtc_tensor *logits = qtc_matmul(g, a, w2, 0, 1);
    qtc_tensor *loss = qtc_cross_entropy(g, logits, tg);
    *loss_out = ((float *)loss->data)[0];
    qtc_graph_backward(g, loss, NULL);
}

TEST(graph_reset_reuses_its_arena_and_repeats_results_bitwise_for_any_thread_count)
{
    qtc_error err;
    qtc_tensor *w1 = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(24, 33), &err);
    qtc_tensor *w2 = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(31, 24), &err);
    qtc_tensor *x = qtc_tensor_new(QTC_F32, 3, QTC_SHAPE(2, 17, 33), &err);
    qtc_tensor *tg = qtc_tensor_new(QTC_I32, 2, QTC_SHAPE(2, 17), &err);
    qtc_rng r;
    qtc_rng_seed(&r, 11);
    qtc_rng_fill_normal(&r, w1, 0, 0.2f);
    qtc_rng_fill_normal(&r, w2, 0, 0.2f);
    qtc_rng_fill_normal(&r, x, 0, 1);
    for (int i = 0; i < 34; i++)
        ((int32_t *)tg->data)[i] = (int32_t)qtc_rng_below(&r, 31);
    qtc_tensor_require_grad(w1, &err);
    qtc_tensor_require_grad(w2, &err);
    qtc_graph *g = qtc_graph_new(&err);
    float loss[3], g1[3][24 * 33];
    size_t arena = 0;
    for (int run = 0; run < 3; run++) {
        qtc_set_threads(run == 2 ? 1 : 2);
        qtc_tensor_zero_grad(w1);
        qtc_tensor_zero_grad(w2);
        tiny_step(g, w1, w2, x, tg, &loss[run]);
        CHECK(qtc_graph_status(g, &err) == QTC_OK);
        memcpy(g1[run], w1->grad->data, sizeof g1[run]);
        qtc_graph_reset(g);
        if (run == 0)
            arena = qtc_graph_arena_bytes(g);
        else
            CHECK(qtc_graph_arena_bytes(g) == arena);
    }
    qtc_set_threads(0);
    CHECK(loss[0] == loss[1] && loss[0] == loss[2]);
    CHECK(memcmp(g1[0], g1[1], sizeof g1[0]) == 0 && memcmp(g1[0], g1[2], sizeof g1[0]) == 0);
    /* not recording: same loss, no gradient */
    qtc_graph_set_recording(g, 0);
    qtc_tensor_zero_grad(w1);
    float l;
    tiny_step(g, w1, w2, x, tg, &l);
    CHECK(l == loss[0]);
    for (int i = 0; i < 24 * 33; i++)
        CHECK(((float *)w1->grad->data)[i] == 0.0f);
    qtc_graph_free(g);
    qtc_tensor_free(w1);
    qtc_tensor_free(w2);
    qtc_tensor_free(x);
    qtc_tensor_free(tg);
}

TEST(backward_accumulates_into_a_leaf_used_twice_and_rejects_non_scalar_losses)
{
    qtc_error err;
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *w = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(3), &err);
    float *wd = w->data;
    wd[0] = 1;
    wd[1] = 2;
    wd[2] = 3;
    qtc_tensor_require_grad(w, &err);
    qtc_tensor *y = qtc_sum(g, qtc_mul(g, w, w)); /* d/dw sum(w^2) = 2w */
    CHECK(qtc_graph_backward(g, y, &err) == QTC_OK);
    CHECK(((float *)w->grad->data)[2] == 6.0f);
    CHECK(qtc_graph_backward(g, qtc_mul(g, w, w), &err) == QTC_ERR_USAGE);
    qtc_graph_free(g);
    qtc_tensor_free(w);
}
