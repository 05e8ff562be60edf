/* test_fused.c: qtc_linear_cross_entropy against the unfused
 * qtc_cross_entropy(qtc_matmul(x, w, 0, 1)) on the same inputs (loss and both
 * gradients), and qtc_linear_kl_div against the unfused
 * qtc_kl_div(qtc_matmul(x, w), qtc_matmul(x_ref, w_ref)) (loss and all four
 * gradients), both against central finite differences of a double-precision
 * loop, and for what they must not do: give frozen inputs a gradient, depend
 * on the thread count, or hold the whole (rows, V) logits. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "harness.h"
#include "qtc/graph.h"
#include "qtc/rng.h"
#include "qtc/runtime.h"

#define DY 2.5f /* d(total)/d(loss): the backward must honour the incoming gradient */

typedef struct lce_case {
    int64_t rows, D, V, chunk;
    int all_ignored, freeze_x, freeze_w;
} lce_case;

typedef struct lce_inputs {
    qtc_tensor *x, *w, *tg;
} lce_inputs;

static void inputs_new(lce_inputs *in, const lce_case *c, uint64_t seed)
{
    qtc_error err;
    qtc_rng r;
    qtc_rng_seed(&r, seed);
    in->x = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(c->rows, c->D), &err);
    in->w = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(c->V, c->D), &err);
    in->tg = qtc_tensor_new(QTC_I32, 1, QTC_SHAPE(c->rows), &err);
    qtc_rng_fill_normal(&r, in->x, 0, 1);
    qtc_rng_fill_normal(&r, in->w, 0, 0.7f);
    int32_t *t = in->tg->data;
    for (int64_t i = 0; i < c->rows; i++)
        t[i] = c->all_ignored || i % 4 == 2 ? -1 : (int32_t)qtc_rng_below(&r, (uint64_t)c->V);
    /* x frozen: never trainable (no gradient buffer at all); w frozen: trainable
     * once, then frozen (its buffer exists and must stay zero) */
    if (!c->freeze_x)
        qtc_tensor_require_grad(in->x, &err);
    qtc_tensor_require_grad(in->w, &err);
    if (c->freeze_w)
        qtc_tensor_set_trainable(in->w, 0);
}

static void inputs_free(lce_inputs *in)
{
    qtc_tensor_free(in->x);
    qtc_tensor_free(in->w);
    qtc_tensor_free(in->tg);
}

/* loss = DY * op(x, w); backward; the loss and copies of the gradients
 * (NULL where the input has no gradient buffer). chunk < 0: the unfused op. */
static int run_loss(lce_inputs *in, int64_t chunk, float *loss, double **dx, double **dw)
{
    qtc_error err;
    qtc_graph *g = qtc_graph_new(&err);
    if (in->x->grad)
        qtc_tensor_zero_grad(in->x);
    qtc_tensor_zero_grad(in->w);
    qtc_tensor *l = chunk < 0 ? qtc_cross_entropy(g, qtc_matmul(g, in->x, in->w, 0, 1), in->tg)
                              : qtc_linear_cross_entropy(g, in->x, in->w, in->tg, chunk);
    int ok = l && qtc_graph_backward(g, qtc_scale(g, l, DY), &err) == QTC_OK;
    if (ok) {
        *loss = ((float *)l->data)[0];
        qtc_tensor *t[2] = {in->x, in->w};
        double **out[2] = {dx, dw};
        for (int k = 0; k < 2; k++) {
            *out[k] = NULL;
            if (!t[k]->grad)
                continue;
            int64_t n = qtc_tensor_numel(t[k]);
            *out[k] = malloc((size_t)n * sizeof(double));
            for (int64_t i = 0; i < n; i++)
                (*out[k])[i] = ((float *)t[k]->grad->data)[i];
        }
    }
    qtc_graph_free(g);
    return ok;
}

static double max_abs(const double *v, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        m = fmax(m, fabs(v[i]));
    return m;
}

static int all_zero(const double *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (v[i] != 0)
            return 0;
    return 1;
}

/* The fused op against the unfused one on the same inputs: loss and gradients
 * within 1e-5 relative (gradients judged against their largest element, since
 * chunking reorders dW's sum over rows). */
static int check_case(const lce_case *c)
{
    char what[160];
    snprintf(what, sizeof what, "rows %lld D %lld V %lld chunk %lld%s%s%s", (long long)c->rows,
             (long long)c->D, (long long)c->V, (long long)c->chunk,
             c->all_ignored ? " all ignored" : "", c->freeze_x ? " x frozen" : "",
             c->freeze_w ? " w frozen" : "");
    lce_inputs in;
    inputs_new(&in, c, 77 + (uint64_t)(c->rows * 131 + c->D * 7 + c->V));
    float lu = 0, lf = 0;
    double *dxu = NULL, *dwu = NULL, *dxf = NULL, *dwf = NULL;
    int ok = 0;
    int64_t nx = c->rows * c->D, nw = c->V * c->D;
    if (!run_loss(&in, -1, &lu, &dxu, &dwu) || !run_loss(&in, c->chunk, &lf, &dxf, &dwf)) {
        test_fail(__FILE__, __LINE__, "%s: an op or its backward failed", what);
        goto done;
    }
    if (!(fabsf(lf - lu) <= 1e-5f * fabsf(lu)) || (c->all_ignored && lf != 0.0f)) {
        test_fail(__FILE__, __LINE__, "%s: loss %.9g, unfused %.9g", what, lf, lu);
        goto done;
    }
    if (c->freeze_x && (dxf || dxu)) {
        test_fail(__FILE__, __LINE__, "%s: frozen x got a gradient buffer", what);
        goto done;
    }
    if (c->freeze_w && !all_zero(dwf, nw)) {
        test_fail(__FILE__, __LINE__, "%s: frozen w got a gradient", what);
        goto done;
    }
    if (c->all_ignored && ((dxf && !all_zero(dxf, nx)) || !all_zero(dwf, nw))) {
        test_fail(__FILE__, __LINE__, "%s: all targets ignored but a gradient is not zero", what);
        goto done;
    }
    char name[200];
    if (dxf) {
        snprintf(name, sizeof name, "%s dx", what);
        if (!check_close_d(name, dxf, dxu, nx, 1e-5, 1e-5 * max_abs(dxu, nx)))
            goto done;
    }
    snprintf(name, sizeof name, "%s dW", what);
    if (!check_close_d(name, dwf, dwu, nw, 1e-5, 1e-5 * max_abs(dwu, nw)))
        goto done;
    if (!c->all_ignored && !c->freeze_w && max_abs(dwu, nw) == 0) {
        test_fail(__FILE__, __LINE__, "%s: the reference dW is zero: the case checks nothing", what);
        goto done;
    }
    ok = 1;
done:
    if (!ok && !test_failed())
        test_fail(__FILE__, __LINE__, "%s failed", what);
    free(dxu);
    free(dwu);
    free(dxf);
    free(dwf);
    inputs_free(&in);
    return ok;
}

TEST(linear_cross_entropy_matches_unfused_at_awkward_sizes_and_chunks)
{
    const int64_t rows[] = {1, 7, 37}, Ds[] = {5, 48}, Vs[] = {3, 97, 1000};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 2; b++)
            for (int v = 0; v < 3; v++) {
                const int64_t chunks[] = {1, 3, rows[a], rows[a] + 5, 0};
                for (int k = 0; k < 5; k++) {
                    lce_case c = {.rows = rows[a], .D = Ds[b], .V = Vs[v], .chunk = chunks[k]};
                    if (!check_case(&c))
                        return;
                }
            }
}

TEST(linear_cross_entropy_all_ignored_is_zero_with_zero_gradients)
{
    lce_case c = {.rows = 7, .D = 5, .V = 97, .chunk = 3, .all_ignored = 1};
    lce_case d = {.rows = 37, .D = 48, .V = 3, .chunk = 0, .all_ignored = 1};
    if (check_case(&c))
        check_case(&d);
}

TEST(linear_cross_entropy_gives_frozen_inputs_no_gradient)
{
    lce_case fw = {.rows = 37, .D = 48, .V = 97, .chunk = 3, .freeze_w = 1};
    lce_case fx = {.rows = 37, .D = 5, .V = 1000, .chunk = 7, .freeze_x = 1};
    if (check_case(&fw))
        check_case(&fx);
}

/* mean over non-ignored rows of lse(x_r W^T) - x_r . w_t, all in double */
static double ref_loss(const double *x, const double *w, const int32_t *t, int64_t rows, int64_t D,
                       int64_t V)
{
    double total = 0, *z = malloc((size_t)V * sizeof(double));
    int64_t valid = 0;
    for (int64_t r = 0; r < rows; r++) {
        if (t[r] < 0)
            continue;
        double mx = -INFINITY, s = 0;
        for (int64_t v = 0; v < V; v++) {
            z[v] = 0;
            for (int64_t j = 0; j < D; j++)
                z[v] += x[r * D + j] * w[v * D + j];
            mx = fmax(mx, z[v]);
        }
        for (int64_t v = 0; v < V; v++)
            s += exp(z[v] - mx);
        total += mx + log(s) - z[t[r]];
        valid++;
    }
    free(z);
    return valid ? total / (double)valid : 0;
}

TEST(linear_cross_entropy_gradients_match_finite_differences)
{
    lce_case c = {.rows = 6, .D = 4, .V = 7, .chunk = 4};
    lce_inputs in;
    inputs_new(&in, &c, 5);
    float loss = 0;
    double *dx = NULL, *dw = NULL;
    int64_t n[2] = {c.rows * c.D, c.V * c.D};
    double *p[2] = {malloc((size_t)n[0] * sizeof(double)), malloc((size_t)n[1] * sizeof(double))};
    double *num = malloc((size_t)n[1] * sizeof(double));
    const qtc_tensor *src[2] = {in.x, in.w};
    for (int k = 0; k < 2; k++)
        for (int64_t i = 0; i < n[k]; i++)
            p[k][i] = ((const float *)src[k]->data)[i];
    const int32_t *t = in.tg->data;
    int ok = run_loss(&in, c.chunk, &loss, &dx, &dw);
    if (ok) {
        double want = ref_loss(p[0], p[1], t, c.rows, c.D, c.V);
        ok = fabs(loss - want) <= 1e-5 * fabs(want);
        if (!ok)
            test_fail(__FILE__, __LINE__, "loss %.9g, double loop %.9g", loss, want);
    }
    const double *got[2] = {dx, dw};
    for (int k = 0; k < 2 && ok; k++) {
        for (int64_t i = 0; i < n[k]; i++) {
            double v0 = p[k][i], h = 1e-6 * fmax(1.0, fabs(v0));
            p[k][i] = v0 + h;
            double lp = ref_loss(p[0], p[1], t, c.rows, c.D, c.V);
            p[k][i] = v0 - h;
            double lm = ref_loss(p[0], p[1], t, c.rows, c.D, c.V);
            p[k][i] = v0;
            num[i] = DY * (lp - lm) / (2 * h);
        }
        ok = check_close_d(k ? "dW vs finite differences" : "dx vs finite differences", got[k], num,
                           n[k], 1e-4, 1e-5 * fmax(max_abs(num, n[k]), 1e-3));
        if (!ok)
            test_fail(__FILE__, __LINE__, "gradient %d differs", k);
    }
    free(p[0]);
    free(p[1]);
    free(num);
    free(dx);
    free(dw);
    inputs_free(&in);
}

/* Only the OpenMP thread count varies: OpenBLAS 0.3.21 itself gives sgemm
 * results that differ in the last bits between 1 and 2 threads at some shapes
 * (a 300x1000 by 1000x16 product here, the unfused qtc_matmul's dx as well),
 * so its count stays at 1 and this checks the op's own loops. */
TEST(linear_cross_entropy_is_bitwise_the_same_for_any_openmp_thread_count)
{
    /* rows * V large enough that the softmax loops run threaded */
    lce_case c = {.rows = 300, .D = 16, .V = 1000, .chunk = 128};
    lce_inputs in;
    inputs_new(&in, &c, 9);
    float loss[2] = {0};
    double *dx[2] = {0}, *dw[2] = {0};
    int ok = 1;
    for (int run = 0; run < 2 && ok; run++) {
        qtc_set_threads(1);
#ifdef _OPENMP
        omp_set_num_threads(run ? 1 : 2);
#endif
        ok = run_loss(&in, c.chunk, &loss[run], &dx[run], &dw[run]);
    }
    qtc_set_threads(0);
    if (!ok)
        test_fail(__FILE__, __LINE__, "op or backward failed");
    else if (loss[0] != loss[1] ||
             memcmp(dx[0], dx[1], (size_t)(c.rows * c.D) * sizeof(double)) != 0 ||
             memcmp(dw[0], dw[1], (size_t)(c.V * c.D) * sizeof(double)) != 0)
        test_fail(__FILE__, __LINE__, "1 and 2 OpenMP threads differ");
    for (int run = 0; run < 2; run++) {
        free(dx[run]);
        free(dw[run]);
    }
    inputs_free(&in);
}

/* Arena bytes a graph holds after forward + backward (chunk < 0: unfused);
 * the fused op's chunk scratch is outside the arena and freed by then. */
static size_t arena_after_step(lce_inputs *in, int64_t chunk)
{
    qtc_error err;
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *l = chunk < 0 ? qtc_cross_entropy(g, qtc_matmul(g, in->x, in->w, 0, 1), in->tg)
                              : qtc_linear_cross_entropy(g, in->x, in->w, in->tg, chunk);
    size_t bytes = l && qtc_graph_backward(g, l, &err) == QTC_OK ? qtc_graph_arena_bytes(g) : 0;
    qtc_graph_free(g);
    return bytes;
}

TEST(linear_cross_entropy_default_chunk_never_holds_the_full_logits)
{
    /* 512 x 32768 logits are 64 MiB (the unfused op holds them and their
     * gradient); the default chunk, 128 rows, is 16 MiB of scratch */
    lce_case c = {.rows = 512, .D = 8, .V = 32768};
    lce_inputs in;
    inputs_new(&in, &c, 3);
    size_t logits = (size_t)(c.rows * c.V) * sizeof(float);
    size_t fused = arena_after_step(&in, 0), unfused = arena_after_step(&in, -1);
    CHECK_MSG(fused > 0 && unfused > 0, "a step failed");
    CHECK_MSG(unfused >= logits, "unfused arena %zu < logits %zu", unfused, logits);
    CHECK_MSG(fused <= logits / 2, "fused arena %zu bytes, logits %zu", fused, logits);
    if (getenv("QTC_TEST_VERBOSE"))
        fprintf(stderr, "linear_cross_entropy arena: fused %zu, unfused %zu, logits %zu bytes\n",
                fused, unfused, logits);
    inputs_free(&in);
}

/* --- qtc_linear_kl_div: the distillation KL fused with both output heads ---------- */

typedef struct lkl_case {
    int64_t rows, D, Dr, V, chunk;
    int frozen[4]; /* x, w, x_ref, w_ref */
} lkl_case;

/* x (rows, D), w (V, D), x_ref (rows, Dr), w_ref (V, Dr); trainable unless frozen */
static void lkl_inputs_new(qtc_tensor *t[4], const lkl_case *c, uint64_t seed)
{
    qtc_error err;
    qtc_rng r;
    qtc_rng_seed(&r, seed);
    t[0] = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(c->rows, c->D), &err);
    t[1] = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(c->V, c->D), &err);
    t[2] = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(c->rows, c->Dr), &err);
    t[3] = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(c->V, c->Dr), &err);
    for (int i = 0; i < 4; i++) {
        qtc_rng_fill_normal(&r, t[i], 0, i % 2 ? 0.7f : 1.0f);
        if (!c->frozen[i])
            qtc_tensor_require_grad(t[i], &err);
    }
}

/* loss = DY * op; backward; the loss and copies of the four gradients (NULL
 * where an input has none). chunk < 0: the unfused ops. */
static int lkl_run(qtc_tensor *t[4], int64_t chunk, float *loss, double *grad[4])
{
    qtc_error err;
    qtc_graph *g = qtc_graph_new(&err);
    for (int i = 0; i < 4; i++)
        if (t[i]->grad)
            qtc_tensor_zero_grad(t[i]);
    qtc_tensor *l = chunk < 0 ? qtc_kl_div(g, qtc_matmul(g, t[0], t[1], 0, 1), qtc_matmul(g, t[2], t[3], 0, 1))
                              : qtc_linear_kl_div(g, t[0], t[1], t[2], t[3], chunk);
    int ok = l && qtc_graph_backward(g, qtc_scale(g, l, DY), &err) == QTC_OK;
    for (int i = 0; i < 4; i++) {
        grad[i] = NULL;
        if (!ok || !t[i]->grad)
            continue;
        int64_t n = qtc_tensor_numel(t[i]);
        grad[i] = malloc((size_t)n * sizeof(double));
        for (int64_t j = 0; j < n; j++)
            grad[i][j] = ((float *)t[i]->grad->data)[j];
    }
    if (ok)
        *loss = ((float *)l->data)[0];
    qtc_graph_free(g);
    return ok;
}

static int lkl_check(const lkl_case *c)
{
    char what[160];
    snprintf(what, sizeof what, "linear_kl_div rows %lld D %lld/%lld V %lld chunk %lld frozen %d%d%d%d",
             (long long)c->rows, (long long)c->D, (long long)c->Dr, (long long)c->V,
             (long long)c->chunk, c->frozen[0], c->frozen[1], c->frozen[2], c->frozen[3]);
    qtc_tensor *t[4];
    lkl_inputs_new(t, c, 31 + (uint64_t)(c->rows * 17 + c->D * 5 + c->V));
    float lu = 0, lf = 0;
    double *gu[4], *gf[4];
    int ok = lkl_run(t, -1, &lu, gu) && lkl_run(t, c->chunk, &lf, gf);
    if (!ok)
        test_fail(__FILE__, __LINE__, "%s: an op or its backward failed", what);
    else if (!(fabsf(lf - lu) <= 1e-5f * fabsf(lu)) || !(lu > 0)) {
        test_fail(__FILE__, __LINE__, "%s: loss %.9g, unfused %.9g", what, lf, lu);
        ok = 0;
    }
    for (int i = 0; i < 4 && ok; i++) {
        int64_t n = qtc_tensor_numel(t[i]);
        char name[200];
        snprintf(name, sizeof name, "%s d/d(%s)", what, (const char *[]){"x", "w", "x_ref", "w_ref"}[i]);
        if (c->frozen[i]) {
            ok = !gf[i] && !gu[i];
            if (!ok)
                test_fail(__FILE__, __LINE__, "%s: frozen input got a gradient", name);
        } else if (!(ok = check_close_d(name, gf[i], gu[i], n, 1e-5, 1e-5 * max_abs(gu[i], n))))
            test_fail(__FILE__, __LINE__, "%s differs", name);
        else if (max_abs(gu[i], n) == 0) {
            test_fail(__FILE__, __LINE__, "%s: the unfused gradient is zero: checks nothing", name);
            ok = 0;
        }
    }
    for (int i = 0; i < 4; i++) {
        free(gu[i]);
        free(gf[i]);
        qtc_tensor_free(t[i]);
    }
    return ok;
}

TEST(linear_kl_div_matches_unfused_at_awkward_sizes_and_chunks)
{
    const int64_t rows[] = {1, 7, 37}, Vs[] = {3, 97, 1000};
    const int64_t D[][2] = {{5, 5}, {48, 12}}; /* a teacher of another width too */
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 2; b++)
            for (int v = 0; v < 3; v++) {
                const int64_t chunks[] = {1, 3, rows[a], rows[a] + 5, 0};
                for (int k = 0; k < 5; k++) {
                    lkl_case c = {.rows = rows[a], .D = D[b][0], .Dr = D[b][1], .V = Vs[v],
                                  .chunk = chunks[k]};
                    if (!lkl_check(&c))
                        return;
                }
            }
}

TEST(linear_kl_div_gives_frozen_inputs_no_gradient)
{
    const lkl_case cases[] = {
        {.rows = 37, .D = 48, .Dr = 48, .V = 97, .chunk = 5, .frozen = {0, 0, 1, 1}}, /* distillation */
        {.rows = 7, .D = 5, .Dr = 12, .V = 1000, .chunk = 3, .frozen = {0, 1, 1, 1}},
        {.rows = 7, .D = 5, .Dr = 5, .V = 97, .chunk = 0, .frozen = {1, 1, 0, 1}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        if (!lkl_check(&cases[i]))
            return;
}

/* mean over rows of KL(softmax(x_ref W_ref^T) || softmax(x W^T)), in double */
static double ref_kl_loss(double *const p[4], int64_t rows, int64_t D, int64_t Dr, int64_t V)
{
    double total = 0, *z = malloc((size_t)(2 * V) * sizeof(double));
    for (int64_t r = 0; r < rows; r++) {
        double lse[2];
        for (int m = 0; m < 2; m++) {
            int64_t d = m ? Dr : D;
            const double *x = p[2 * m] + r * d, *w = p[2 * m + 1];
            double mx = -INFINITY, s = 0;
            for (int64_t v = 0; v < V; v++) {
                double zz = 0;
                for (int64_t j = 0; j < d; j++)
                    zz += x[j] * w[v * d + j];
                z[m * V + v] = zz;
                mx = fmax(mx, zz);
            }
            for (int64_t v = 0; v < V; v++)
                s += exp(z[m * V + v] - mx);
            lse[m] = mx + log(s);
        }
        for (int64_t v = 0; v < V; v++) {
            double lq = z[V + v] - lse[1], lp = z[v] - lse[0];
            total += exp(lq) * (lq - lp);
        }
    }
    free(z);
    return total / (double)rows;
}

TEST(linear_kl_div_value_and_gradients_match_finite_differences)
{
    lkl_case c = {.rows = 5, .D = 4, .Dr = 3, .V = 7, .chunk = 2};
    qtc_tensor *t[4];
    lkl_inputs_new(t, &c, 12);
    float loss = 0;
    double *grad[4], *p[4];
    for (int i = 0; i < 4; i++) {
        int64_t n = qtc_tensor_numel(t[i]);
        p[i] = malloc((size_t)n * sizeof(double));
        for (int64_t j = 0; j < n; j++)
            p[i][j] = ((float *)t[i]->data)[j];
    }
    int ok = lkl_run(t, c.chunk, &loss, grad);
    double want = ok ? ref_kl_loss(p, c.rows, c.D, c.Dr, c.V) : 0;
    if (ok && !(fabs(loss - want) <= 1e-5 * fabs(want))) {
        test_fail(__FILE__, __LINE__, "loss %.9g, double loop %.9g", loss, want);
        ok = 0;
    }
    for (int i = 0; i < 4 && ok; i++) {
        int64_t n = qtc_tensor_numel(t[i]);
        double num[64];
        for (int64_t j = 0; j < n; j++) {
            double v0 = p[i][j], h = 1e-6 * fmax(1.0, fabs(v0));
            p[i][j] = v0 + h;
            double lp = ref_kl_loss(p, c.rows, c.D, c.Dr, c.V);
            p[i][j] = v0 - h;
            double lm = ref_kl_loss(p, c.rows, c.D, c.Dr, c.V);
            p[i][j] = v0;
            num[j] = DY * (lp - lm) / (2 * h);
        }
        ok = check_close_d("linear_kl_div vs finite differences", grad[i], num, n, 1e-4,
                           1e-5 * fmax(max_abs(num, n), 1e-3));
        if (!ok)
            test_fail(__FILE__, __LINE__, "gradient of input %d differs", i);
    }
    for (int i = 0; i < 4; i++) {
        free(grad[i]);
        free(p[i]);
        qtc_tensor_free(t[i]);
    }
}

TEST(linear_kl_div_is_bitwise_the_same_for_any_openmp_thread_count)
{
    lkl_case c = {.rows = 300, .D = 16, .Dr = 16, .V = 1000, .chunk = 128};
    qtc_tensor *t[4];
    lkl_inputs_new(t, &c, 4);
    float loss[2] = {0};
    double *grad[2][4] = {{0}};
    int ok = 1;
    for (int run = 0; run < 2 && ok; run++) {
        qtc_set_threads(1); /* OpenBLAS's own sums differ between thread counts: see above */
#ifdef _OPENMP
        omp_set_num_threads(run ? 1 : 2);
#endif
        ok = lkl_run(t, c.chunk, &loss[run], grad[run]);
    }
    qtc_set_threads(0);
    int same = ok && loss[0] == loss[1];
    for (int i = 0; i < 4 && same; i++)
        same = memcmp(grad[0][i], grad[1][i], (size_t)qtc_tensor_numel(t[i]) * sizeof(double)) == 0;
    for (int run = 0; run < 2; run++)
        for (int i = 0; i < 4; i++)
            free(grad[run][i]);
    for (int i = 0; i < 4; i++)
        qtc_tensor_free(t[i]);
    CHECK_MSG(same, "an op failed, or 1 and 2 OpenMP threads differ");
}

TEST(linear_kl_div_default_chunk_never_holds_the_full_logits)
{
    /* 512 x 32768 logits are 64 MiB per model; the unfused ops hold both and
     * the student's gradient; the fused op's two chunks are scratch outside the arena */
    lkl_case c = {.rows = 512, .D = 8, .Dr = 8, .V = 32768, .frozen = {0, 0, 1, 1}};
    qtc_tensor *t[4];
    lkl_inputs_new(t, &c, 3);
    size_t logits = (size_t)(c.rows * c.V) * sizeof(float), bytes[2];
    for (int fused = 0; fused < 2; fused++) {
        qtc_error err;
        qtc_graph *g = qtc_graph_new(&err);
        qtc_tensor *l = fused ? qtc_linear_kl_div(g, t[0], t[1], t[2], t[3], 0)
                              : qtc_kl_div(g, qtc_matmul(g, t[0], t[1], 0, 1), qtc_matmul(g, t[2], t[3], 0, 1));
        bytes[fused] = l && qtc_graph_backward(g, l, &err) == QTC_OK ? qtc_graph_arena_bytes(g) : 0;
        qtc_graph_free(g);
    }
    for (int i = 0; i < 4; i++)
        qtc_tensor_free(t[i]);
    CHECK_MSG(bytes[0] >= 2 * logits, "unfused arena %zu < both logits %zu", bytes[0], 2 * logits);
    CHECK_MSG(bytes[1] > 0 && bytes[1] <= logits / 2, "fused arena %zu bytes, logits %zu", bytes[1], logits);
}
