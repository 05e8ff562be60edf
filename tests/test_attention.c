/* test_attention.c: the tiled attention op (FlashAttention's online softmax,
 * probabilities recomputed in the backward) against the op it replaced
 * (attention_ref.c, which kept every probability), against a double-precision
 * loop, and its gradients against central finite differences of that loop, at
 * awkward lengths (around the 32-query and 64-key tiles), head sizes,
 * grouped-query layouts and prefixes (Tk > Tq). Also: the result does not
 * depend on the thread count, inference gives the training forward's output,
 * and the graph keeps no T x T buffer. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "attention_ref.h"
#include "harness.h"
#include "qtc/graph.h"
#include "qtc/rng.h"
#include "qtc/runtime.h"

typedef struct attn_case {
    int64_t B, Tq, Tk;
    int H, Hkv, D;
    int frozen[3]; /* q, k, v not trainable */
} attn_case;

typedef qtc_tensor *(*attn_op)(qtc_graph *g, qtc_tensor *q, qtc_tensor *k, qtc_tensor *v,
                               int n_head, int n_kv_head);

/* q, k, v and the loss weights G (loss = sum(out * G)), as floats and doubles */
typedef struct attn_inputs {
    qtc_tensor *t[3], *G;
    double *d[3], *dG;
    int64_t n[4];
} attn_inputs;

static void inputs_new(attn_inputs *in, const attn_case *c, uint64_t seed)
{
    qtc_error err;
    qtc_rng r;
    qtc_rng_seed(&r, seed);
    int64_t qshape[3] = {c->B, c->Tq, (int64_t)c->H * c->D};
    int64_t kshape[3] = {c->B, c->Tk, (int64_t)c->Hkv * c->D};
    for (int i = 0; i < 4; i++) {
        qtc_tensor *t = qtc_tensor_new(QTC_F32, 3, i == 1 || i == 2 ? kshape : qshape, &err);
        qtc_rng_fill_normal(&r, t, 0, 1);
        in->n[i] = qtc_tensor_numel(t);
        double *d = malloc((size_t)(in->n[i] + 1) * sizeof(double));
        for (int64_t j = 0; j < in->n[i]; j++)
            d[j] = ((float *)t->data)[j];
        if (i < 3) {
            in->t[i] = t;
            in->d[i] = d;
            qtc_tensor_require_grad(t, &err);
            if (c->frozen[i])
                qtc_tensor_set_trainable(t, 0);
        } else {
            in->G = t;
            in->dG = d;
        }
    }
}

static void inputs_free(attn_inputs *in)
{
    for (int i = 0; i < 3; i++) {
        qtc_tensor_free(in->t[i]);
        free(in->d[i]);
    }
    qtc_tensor_free(in->G);
    free(in->dG);
}

/* sum_i G[b,t,h,i] * out[b,t,h,i] of one query row, in double */
static double ref_row(const attn_case *c, const double *q, const double *k, const double *v,
                      const double *G, int64_t b, int h, int64_t t, double *out_row)
{
    int kvh = h / (c->H / c->Hkv), D = c->D;
    int64_t n = t + c->Tk - c->Tq + 1, qs = (int64_t)c->H * D, kvs = (int64_t)c->Hkv * D;
    const double *qt = q + (b * c->Tq + t) * qs + h * D;
    double *s = malloc((size_t)n * sizeof *s), mx = -INFINITY, sum = 0, loss = 0;
    for (int64_t j = 0; j < n; j++) {
        const double *kj = k + (b * c->Tk + j) * kvs + kvh * D;
        s[j] = 0;
        for (int i = 0; i < D; i++)
            s[j] += qt[i] * kj[i];
        s[j] /= sqrt((double)D);
        mx = fmax(mx, s[j]);
    }
    for (int64_t j = 0; j < n; j++)
        sum += (s[j] = exp(s[j] - mx));
    for (int i = 0; i < D; i++) {
        double o = 0;
        for (int64_t j = 0; j < n; j++)
            o += s[j] / sum * v[(b * c->Tk + j) * kvs + kvh * D + i];
        if (out_row)
            out_row[i] = o;
        loss += G[(b * c->Tq + t) * qs + h * D + i] * o;
    }
    free(s);
    return loss;
}

static void ref_forward(const attn_case *c, const attn_inputs *in, double *out)
{
    int64_t qs = (int64_t)c->H * c->D;
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t t = 0; t < c->Tq; t++)
            for (int h = 0; h < c->H; h++)
                ref_row(c, in->d[0], in->d[1], in->d[2], in->dG, b, h, t,
                        out + (b * c->Tq + t) * qs + h * c->D);
}

/* The part of the double loss that element j of input i changes: the one
 * query row it belongs to (q), or every row of the heads reading its kv head
 * from the key's first reader on (k, v). */
static double ref_loss_of(const attn_case *c, const attn_inputs *in, int i, int64_t j)
{
    int64_t qs = (int64_t)c->H * c->D, kvs = (int64_t)c->Hkv * c->D;
    const double *q = in->d[0], *k = in->d[1], *v = in->d[2];
    if (i == 0) {
        int64_t row = j / qs;
        return ref_row(c, q, k, v, in->dG, row / c->Tq, (int)(j % qs / c->D), row % c->Tq, NULL);
    }
    int64_t b = j / kvs / c->Tk, key = j / kvs % c->Tk, first = key - (c->Tk - c->Tq);
    int kvh = (int)(j % kvs / c->D), group = c->H / c->Hkv;
    double loss = 0;
    for (int h = kvh * group; h < (kvh + 1) * group; h++)
        for (int64_t t = first > 0 ? first : 0; t < c->Tq; t++)
            loss += ref_row(c, q, k, v, in->dG, b, h, t, NULL);
    return loss;
}

/* out and the three gradients of loss = sum(op(q, k, v) * G), as doubles
 * (grad[i] NULL where input i has no gradient); 0 when the op failed. */
static int run_op(attn_op op, const attn_case *c, attn_inputs *in, double **out, double *grad[3])
{
    qtc_error err;
    qtc_graph *g = qtc_graph_new(&err);
    for (int i = 0; i < 3; i++)
        qtc_tensor_zero_grad(in->t[i]);
    qtc_tensor *o = op(g, in->t[0], in->t[1], in->t[2], c->H, c->Hkv);
    int ok = o && qtc_graph_backward(g, qtc_sum(g, qtc_mul(g, o, in->G)), &err) == QTC_OK;
    if (ok) {
        *out = malloc((size_t)in->n[0] * sizeof(double));
        for (int64_t j = 0; j < in->n[0]; j++)
            (*out)[j] = ((float *)o->data)[j];
        for (int i = 0; i < 3; i++) {
            grad[i] = NULL;
            if (!in->t[i]->grad)
                continue; /* a frozen input may have no buffer at all */
            grad[i] = malloc((size_t)in->n[i] * sizeof(double));
            for (int64_t j = 0; j < in->n[i]; j++)
                grad[i][j] = ((float *)in->t[i]->grad->data)[j];
        }
    }
    qtc_graph_free(g);
    return ok;
}

static double max_abs(const double *x, int64_t n)
{
    double m = 0;
    for (int64_t j = 0; j < n; j++)
        m = fmax(m, fabs(x[j]));
    return m;
}

static const attn_case cases[] = {
    {.B = 2, .Tq = 1, .Tk = 1, .H = 8, .Hkv = 4, .D = 8},
    {.B = 1, .Tq = 3, .Tk = 3, .H = 6, .Hkv = 6, .D = 48},
    {.B = 2, .Tq = 17, .Tk = 22, .H = 8, .Hkv = 4, .D = 64},   /* a 5-key prefix */
    {.B = 1, .Tq = 129, .Tk = 193, .H = 6, .Hkv = 6, .D = 8},  /* a 64-key prefix */
    {.B = 1, .Tq = 129, .Tk = 129, .H = 8, .Hkv = 4, .D = 48},
    {.B = 1, .Tq = 300, .Tk = 307, .H = 8, .Hkv = 4, .D = 64},
    {.B = 2, .Tq = 300, .Tk = 300, .H = 6, .Hkv = 6, .D = 48},
    {.B = 1, .Tq = 1, .Tk = 300, .H = 8, .Hkv = 4, .D = 64},   /* one token after a KV cache */
    {.B = 1, .Tq = 3, .Tk = 129, .H = 6, .Hkv = 6, .D = 8},
    {.B = 1, .Tq = 17, .Tk = 17, .H = 6, .Hkv = 3, .D = 8, .frozen = {0, 0, 1}},
    {.B = 1, .Tq = 17, .Tk = 20, .H = 4, .Hkv = 1, .D = 8, .frozen = {1, 0, 0}},
};
#define N_CASES (sizeof cases / sizeof *cases)

TEST(tiled_attention_matches_the_stored_probability_op_and_double_precision)
{
    for (size_t ci = 0; ci < N_CASES; ci++) {
        const attn_case *c = &cases[ci];
        attn_inputs in;
        inputs_new(&in, c, 100 + ci);
        double *out[2] = {0}, *grad[2][3] = {{0}};
        double *want = malloc((size_t)in.n[0] * sizeof(double));
        ref_forward(c, &in, want);
        int ok = run_op(qtc_attention, c, &in, &out[0], grad[0]) &&
                 run_op(ref_attention_stored, c, &in, &out[1], grad[1]);
        char what[96];
        snprintf(what, sizeof what, "case %zu (T %lld/%lld, %d/%d heads of %d) out vs stored op",
                 ci, (long long)c->Tq, (long long)c->Tk, c->H, c->Hkv, c->D);
        double s = max_abs(out[1], in.n[0]);
        ok = ok && check_close_d(what, out[0], out[1], in.n[0], 1e-5, 1e-5 * s);
        snprintf(what, sizeof what, "case %zu out vs double", ci);
        ok = ok && check_close_d(what, out[0], want, in.n[0], 1e-5, 1e-5 * max_abs(want, in.n[0]));
        for (int i = 0; i < 3 && ok; i++) {
            if (c->frozen[i]) {
                ok = !grad[0][i] || max_abs(grad[0][i], in.n[i]) == 0;
                if (!ok)
                    fprintf(stderr, "  case %zu: frozen input %d got a gradient\n", ci, i);
                continue;
            }
            snprintf(what, sizeof what, "case %zu d/d(%c) vs stored op", ci, "qkv"[i]);
            ok = check_close_d(what, grad[0][i], grad[1][i], in.n[i], 1e-4,
                               1e-5 * max_abs(grad[1][i], in.n[i]));
        }
        for (int r = 0; r < 2; r++) {
            free(out[r]);
            for (int i = 0; i < 3; i++)
                free(grad[r][i]);
        }
        free(want);
        inputs_free(&in);
        CHECK_MSG(ok, "case %zu differs", ci);
    }
}

TEST(tiled_attention_gradients_match_finite_differences_of_double_loop)
{
    for (size_t ci = 0; ci < N_CASES; ci++) {
        const attn_case *c = &cases[ci];
        attn_inputs in;
        inputs_new(&in, c, 200 + ci);
        double *out = NULL, *grad[3] = {0};
        int ok = run_op(qtc_attention, c, &in, &out, grad);
        qtc_rng r;
        qtc_rng_seed(&r, 7 + ci);
        for (int i = 0; i < 3 && ok; i++) {
            if (c->frozen[i])
                continue;
            /* every element of a small input; 12 sampled ones (the first and last among them) of a big one */
            int64_t n = in.n[i], m = n <= 64 ? n : 12;
            double num[64], got[64];
            for (int64_t s = 0; s < m; s++) {
                int64_t j = m == n ? s : s == 0 ? 0 : s == 1 ? n - 1 : (int64_t)qtc_rng_below(&r, (uint64_t)n);
                double x0 = in.d[i][j], h = 1e-6 * fmax(1.0, fabs(x0));
                in.d[i][j] = x0 + h;
                double lp = ref_loss_of(c, &in, i, j);
                in.d[i][j] = x0 - h;
                double lm = ref_loss_of(c, &in, i, j);
                in.d[i][j] = x0;
                num[s] = (lp - lm) / (2 * h);
                got[s] = grad[i][j];
            }
            char what[96];
            snprintf(what, sizeof what, "case %zu (T %lld/%lld, %d/%d heads of %d) d/d(%c)", ci,
                     (long long)c->Tq, (long long)c->Tk, c->H, c->Hkv, c->D, "qkv"[i]);
            ok = check_close_d(what, got, num, m, 1e-3, 1e-5 * fmax(max_abs(grad[i], n), 1e-3));
        }
        free(out);
        for (int i = 0; i < 3; i++)
            free(grad[i]);
        inputs_free(&in);
        CHECK_MSG(ok, "case %zu differs", ci);
    }
}

TEST(tiled_attention_is_bitwise_the_same_for_any_thread_count)
{
    const attn_case c = {.B = 2, .Tq = 129, .Tk = 140, .H = 8, .Hkv = 4, .D = 48};
    attn_inputs in;
    inputs_new(&in, &c, 5);
    double *out[2] = {0}, *grad[2][3] = {{0}};
    int ok = 1;
    for (int run = 0; run < 2 && ok; run++) {
#ifdef _OPENMP
        omp_set_num_threads(run ? 1 : 2);
#endif
        ok = run_op(qtc_attention, &c, &in, &out[run], grad[run]);
    }
    qtc_set_threads(0);
    if (!ok)
        test_fail(__FILE__, __LINE__, "op or backward failed");
    else {
        int same = memcmp(out[0], out[1], (size_t)in.n[0] * sizeof(double)) == 0;
        for (int i = 0; i < 3; i++)
            same = same && memcmp(grad[0][i], grad[1][i], (size_t)in.n[i] * sizeof(double)) == 0;
        if (!same)
            test_fail(__FILE__, __LINE__, "1 and 2 threads differ");
    }
    for (int r = 0; r < 2; r++) {
        free(out[r]);
        for (int i = 0; i < 3; i++)
            free(grad[r][i]);
    }
    inputs_free(&in);
}

TEST(tiled_attention_inference_gives_the_training_forward_bitwise)
{
    const attn_case c = {.B = 2, .Tq = 70, .Tk = 75, .H = 6, .Hkv = 2, .D = 8};
    attn_inputs in;
    inputs_new(&in, &c, 6);
    qtc_error err;
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *train = qtc_attention(g, in.t[0], in.t[1], in.t[2], c.H, c.Hkv);
    qtc_graph_set_recording(g, 0);
    qtc_tensor *infer = qtc_attention(g, in.t[0], in.t[1], in.t[2], c.H, c.Hkv);
    CHECK(train && infer);
    int same = memcmp(train->data, infer->data, (size_t)in.n[0] * sizeof(float)) == 0;
    qtc_graph_free(g);
    inputs_free(&in);
    CHECK_MSG(same, "recorded and unrecorded outputs differ");
}

/* Arena bytes after forward + backward of loss = sum(op(q, k, v) * G). */
static size_t arena_after_step(attn_op op, const attn_case *c, attn_inputs *in)
{
    qtc_error err;
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *o = op(g, in->t[0], in->t[1], in->t[2], c->H, c->Hkv);
    size_t bytes = o && qtc_graph_backward(g, qtc_sum(g, qtc_mul(g, o, in->G)), &err) == QTC_OK
                       ? qtc_graph_arena_bytes(g) : 0;
    qtc_graph_free(g);
    return bytes;
}

TEST(tiled_attention_keeps_no_t_by_t_buffer)
{
    /* 4 heads at T = 1024 hold 16 MiB of probabilities; the inputs, output,
     * gradients and per-row sums are under 1 MiB (the arena grows by 4 MiB) */
    const attn_case c = {.B = 1, .Tq = 1024, .Tk = 1024, .H = 4, .Hkv = 2, .D = 8};
    attn_inputs in;
    inputs_new(&in, &c, 8);
    size_t P = (size_t)(c.B * c.H * c.Tq * c.Tk) * sizeof(float);
    size_t tiled = arena_after_step(qtc_attention, &c, &in);
    size_t stored = arena_after_step(ref_attention_stored, &c, &in);
    inputs_free(&in);
    CHECK_MSG(tiled > 0 && stored >= P, "stored op arena %zu < P %zu", stored, P);
    CHECK_MSG(tiled <= P / 4, "tiled op arena %zu bytes, P %zu", tiled, P);
    if (getenv("QTC_TEST_VERBOSE"))
        fprintf(stderr, "attention arena at T=1024: tiled %zu, stored %zu bytes\n", tiled, stored);
}

/* Every instruction-set path the CPU has gives the baseline path's output and
 * gradients to a few ulp (the vector kernels fuse multiply-adds). */
TEST(tiled_attention_vector_paths_match_the_baseline_path)
{
    const attn_case c = {.B = 2, .Tq = 129, .Tk = 140, .H = 8, .Hkv = 4, .D = 48};
    attn_inputs in;
    inputs_new(&in, &c, 9);
    qtc_cpu_path saved = qtc_cpu_get();
    double *base = NULL, *bgrad[3] = {0};
    int ok = qtc_cpu_set(QTC_CPU_BASELINE) == 0 && run_op(qtc_attention, &c, &in, &base, bgrad);
    for (int p = 1; ok && p <= (int)qtc_cpu_best(); p++) {
        double *out = NULL, *grad[3] = {0};
        ok = qtc_cpu_set((qtc_cpu_path)p) == 0 && run_op(qtc_attention, &c, &in, &out, grad);
        char what[64];
        snprintf(what, sizeof what, "%s out vs baseline", qtc_cpu_name((qtc_cpu_path)p));
        ok = ok && check_close_d(what, out, base, in.n[0], 1e-5, 1e-6 * max_abs(base, in.n[0]));
        for (int i = 0; i < 3 && ok; i++) {
            snprintf(what, sizeof what, "%s d/d(%c) vs baseline", qtc_cpu_name((qtc_cpu_path)p), "qkv"[i]);
            ok = check_close_d(what, grad[i], bgrad[i], in.n[i], 1e-5, 1e-6 * max_abs(bgrad[i], in.n[i]));
        }
        free(out);
        for (int i = 0; i < 3; i++)
            free(grad[i]);
    }
    qtc_cpu_set(saved);
    free(base);
    for (int i = 0; i < 3; i++)
        free(bgrad[i]);
    inputs_free(&in);
    CHECK_MSG(ok, "a vector path differs from the baseline path");
}
