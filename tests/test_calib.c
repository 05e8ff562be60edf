/* test_calib.c: calibration statistics and what is computed from them,
 * against references written here: a histogram built directly at the final
 * range, quantiles and clipping errors over the raw samples in double, known
 * distributions, round-to-nearest for GPTQ and qtc_gptq itself for GPTQ run
 * over a llama a layer at a time, FIPS 180-4's test vectors, an
 * independent capture of a model's linear inputs for the imatrix, and, for
 * scales folded into a llama, every weight scaled in double and the logits of
 * the double-precision llama of llama_ref.c. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "llama_ref.h"
#include "qtc/calib.h"
#include "qtc/calibrate.h"

static double normal(qtc_rng *r)
{
    double u1 = qtc_rng_uniform(r), u2 = qtc_rng_uniform(r);
    return sqrt(-2 * log(u1 + 1e-300)) * cos(6.283185307179586 * u2);
}

static qtc_act_stats *stats_of(const float *x, int64_t n, int batches)
{
    qtc_act_stats *s = calloc(1, sizeof *s);
    s->in = 1;
    s->sum_sq = calloc(1, sizeof(double));
    s->sum_abs = calloc(1, sizeof(double));
    s->amax = calloc(1, sizeof(double));
    for (int b = 0; b < batches; b++) {
        int64_t lo = n * b / batches, hi = n * (b + 1) / batches;
        qtc_act_stats_add(s, x + lo, hi - lo);
    }
    return s;
}

static void stats_free(qtc_act_stats *s)
{
    free(s->sum_sq);
    free(s->sum_abs);
    free(s->amax);
    free(s);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

TEST(sha256_matches_fips_180_4_test_vectors)
{
    unsigned char out[32];
    char hex[65];
    const char *msg[] = {"abc", "", "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"};
    const char *want[] = {"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                          "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"};
    for (int k = 0; k < 3; k++) {
        qtc_sha256(msg[k], strlen(msg[k]), out);
        for (int i = 0; i < 32; i++)
            snprintf(hex + 2 * i, 3, "%02x", out[i]);
        CHECK_MSG(strcmp(hex, want[k]) == 0, "sha256('%s') = %s", msg[k], hex);
    }
    char *a = malloc(1000000);
    memset(a, 'a', 1000000);
    char path[] = "/tmp/qtc-sha-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, a, 1000000) == 1000000);
    close(fd);
    qtc_error err;
    CHECK(qtc_sha256_file(path, hex, &err) == QTC_OK);
    CHECK_MSG(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0, "a million a: %s", hex);
    unlink(path);
    free(a);
}

TEST(running_histogram_equals_one_built_at_the_final_range)
{
    enum { N = 200000 };
    float *x = malloc(N * sizeof *x);
    qtc_rng r;
    qtc_rng_seed(&r, 3);
    for (int i = 0; i < N; i++) /* batches of growing magnitude force several doublings */
        x[i] = (float)(normal(&r) * (i < N / 4 ? 0.01 : i < N / 2 ? 0.3 : i < 3 * N / 4 ? 2.0 : 40.0));
    qtc_act_stats *s = stats_of(x, N, 4);
    CHECK(s->rows == N);
    double want[QTC_HIST_BINS] = {0}, mn = x[0], mx = x[0], sq = 0;
    for (int i = 0; i < N; i++) {
        int b = (int)floor(((double)x[i] + s->range) * QTC_HIST_BINS / (2 * s->range));
        want[b] += 1;
        mn = fmin(mn, x[i]);
        mx = fmax(mx, x[i]);
        sq += (double)x[i] * x[i];
    }
    for (int b = 0; b < QTC_HIST_BINS; b++)
        CHECK_MSG(s->hist[b] == want[b], "bin %d: %g, direct %g (range %g)", b, s->hist[b], want[b], s->range);
    CHECK(s->min == mn && s->max == mx);
    CHECK(fabs(s->sum_sq[0] - sq) <= 1e-9 * sq);
    double lo, hi;
    qtc_act_range(s, QTC_RANGE_MINMAX, 0, 8, &lo, &hi);
    CHECK(lo == mn && hi == mx);
    stats_free(s);
    free(x);
}

TEST(percentile_ranges_match_the_samples_quantiles)
{
    enum { N = 1000000 };
    float *x = malloc(N * sizeof *x), *sorted = malloc(N * sizeof *sorted);
    qtc_rng r;
    qtc_rng_seed(&r, 4);
    for (int i = 0; i < N; i++)
        x[i] = (float)normal(&r);
    memcpy(sorted, x, N * sizeof *x);
    qsort(sorted, N, sizeof *sorted, cmp_float);
    qtc_act_stats *s = stats_of(x, N, 3);
    const double width = 2 * s->range / QTC_HIST_BINS;
    const double ps[] = {99.99, 99.9, 99.0};
    for (size_t k = 0; k < 3; k++) {
        double lo, hi;
        qtc_act_range(s, QTC_RANGE_PERCENTILE, ps[k], 8, &lo, &hi);
        double tail = (100 - ps[k]) / 100;
        double want_hi = sorted[(int64_t)((1 - tail) * N)], want_lo = sorted[(int64_t)(tail * N)];
        CHECK_MSG(fabs(hi - want_hi) <= width && fabs(lo - want_lo) <= width, "p%g: [%g, %g], samples [%g, %g], bin %g",
                  ps[k], lo, hi, want_lo, want_hi, width);
    }
    /* the known Gaussian quantile: 99.99% two-sided tail point is 3.719 sigma */
    double lo, hi;
    qtc_act_range(s, QTC_RANGE_PERCENTILE, 99.99, 8, &lo, &hi);
    CHECK_MSG(fabs(hi - 3.719) < 0.05 && fabs(lo + 3.719) < 0.05, "[%g, %g]", lo, hi);
    stats_free(s);
    free(x);
    free(sorted);
}

/* The squared error of symmetric b-bit quantization clipped at t over the raw samples, in double. */
static double sample_mse(const float *x, int64_t n, double t, int bits)
{
    double levels = ((1 << bits) - 1) / 2.0, step = t / levels, e = 0;
    for (int64_t i = 0; i < n; i++) {
        double c = fmax(-t, fmin(t, x[i])), q = fmax(-levels * step, fmin(levels * step, nearbyint(c / step) * step));
        e += (x[i] - q) * (x[i] - q);
    }
    return e;
}

TEST(mse_range_is_near_the_brute_force_optimum_over_the_samples)
{
    enum { N = 100000 };
    float *x = malloc(N * sizeof *x);
    qtc_rng r;
    qtc_rng_seed(&r, 5);
    for (int dist = 0; dist < 2; dist++) {
        for (int i = 0; i < N; i++) { /* Gaussian; Laplacian with 0.1% outliers at 30x */
            double u = qtc_rng_uniform(&r) - 0.5;
            x[i] = dist == 0 ? (float)normal(&r) : (float)(-copysign(1.0, u) * log(1 - 2 * fabs(u)) * (i % 1000 == 0 ? 30 : 1));
        }
        qtc_act_stats *s = stats_of(x, N, 2);
        double lo, hi, amax = fmax(-s->min, s->max);
        qtc_act_range(s, QTC_RANGE_MSE, 0, 4, &lo, &hi);
        CHECK(hi > 0 && hi <= amax && lo >= s->min && (lo == -hi || lo == s->min || hi == s->max));
        double best_t = amax, best = INFINITY;
        for (int k = 1; k <= 400; k++) {
            double t = amax * k / 400.0, e = sample_mse(x, N, t, 4);
            if (e < best) {
                best = e;
                best_t = t;
            }
        }
        double got = sample_mse(x, N, hi, 4);
        CHECK_MSG(got <= best * 1.02, "dist %d: threshold %g has error %g, the samples' best %g at %g", dist, hi, got, best, best_t);
        CHECK_MSG(dist == 0 || hi < 0.5 * amax, "Laplacian with outliers: threshold %g of max %g clips nothing", hi, amax);
        stats_free(s);
    }
    free(x);
}

TEST(kl_range_clips_outliers_and_keeps_a_uniform_range)
{
    enum { N = 200000 };
    float *x = malloc(N * sizeof *x);
    qtc_rng r;
    qtc_rng_seed(&r, 6);
    for (int i = 0; i < N; i++)
        x[i] = (float)(2 * qtc_rng_uniform(&r) - 1);
    qtc_act_stats *s = stats_of(x, N, 1);
    double lo, hi;
    qtc_act_range(s, QTC_RANGE_KL, 0, 8, &lo, &hi);
    CHECK_MSG(hi > 0.97 * s->max, "uniform: threshold %g of max %g", hi, s->max);
    stats_free(s);
    for (int i = 0; i < N; i++) { /* Laplacian, 0.05% outliers at 50x */
        double u = qtc_rng_uniform(&r) - 0.5;
        x[i] = (float)(-copysign(1.0, u) * log(1 - 2 * fabs(u)) * (i % 2000 == 0 ? 50 : 1));
    }
    s = stats_of(x, N, 1);
    qtc_act_range(s, QTC_RANGE_KL, 0, 8, &lo, &hi);
    double p99lo, p99hi;
    qtc_act_range(s, QTC_RANGE_PERCENTILE, 99, 8, &p99lo, &p99hi);
    CHECK_MSG((lo == -hi || lo == s->min) && hi < 0.5 * fmax(-s->min, s->max) && hi > p99hi, "Laplacian: threshold %g, max %g, p99 %g", hi,
              fmax(-s->min, s->max), p99hi);
    stats_free(s);
    free(x);
}

/* ||W X^T - Wq X^T||^2 over the rows of x (n x cols). */
static double output_error(const float *w, const qtc_qweight *q, const float *x, int64_t n, int64_t rows, int64_t cols)
{
    float *wq = malloc((size_t)(rows * cols) * sizeof *wq);
    qtc_qweight_dequantize(q, wq);
    double e = 0;
    for (int64_t t = 0; t < n; t++)
        for (int64_t r = 0; r < rows; r++) {
            double a = 0, b = 0;
            for (int64_t c = 0; c < cols; c++) {
                a += (double)w[r * cols + c] * x[t * cols + c];
                b += (double)wq[r * cols + c] * x[t * cols + c];
            }
            e += (a - b) * (a - b);
        }
    free(wq);
    return e;
}

TEST(gptq_beats_round_to_nearest_and_is_round_to_nearest_for_a_diagonal_hessian)
{
    qtc_error err;
    enum { R = 48, C = 96, N = 512 };
    float *w = malloc(R * C * sizeof *w), *x = malloc(N * C * sizeof *x);
    qtc_rng r;
    qtc_rng_seed(&r, 7);
    for (int i = 0; i < R * C; i++)
        w[i] = (float)normal(&r) * 0.1f;
    /* correlated inputs with channels of different scales: x = z M */
    double *m = malloc(C * C * sizeof *m);
    for (int i = 0; i < C * C; i++)
        m[i] = normal(&r) * (i / C == i % C ? 2.0 : 0.3);
    for (int t = 0; t < N; t++) {
        double z[C];
        for (int c = 0; c < C; c++)
            z[c] = normal(&r) * (1 + (c % 7));
        for (int c = 0; c < C; c++) {
            double a = 0;
            for (int k = 0; k < C; k++)
                a += z[k] * m[k * C + c];
            x[t * C + c] = (float)a;
        }
    }
    double *xtx = calloc(C * C, sizeof *xtx), *diag = calloc(C * C, sizeof *diag);
    for (int t = 0; t < N; t++)
        for (int a = 0; a < C; a++)
            for (int b = 0; b < C; b++)
                xtx[a * C + b] += (double)x[t * C + a] * x[t * C + b];
    for (int a = 0; a < C; a++)
        diag[a * C + a] = xtx[a * C + a];
    const char *schemes[] = {"int4-g32", "int4", "int3-g16", "int4-g32-asym", "int2-g32", "int4-tensor"};
    for (size_t k = 0; k < sizeof schemes / sizeof *schemes; k++) {
        qtc_qscheme s;
        CHECK(qtc_qscheme_parse(schemes[k], &s) == 0);
        qtc_qweight rtn, g, ga, gd;
        CHECK(qtc_qweight_quantize(w, R, C, &s, &rtn, &err) == QTC_OK);
        qtc_gptq_opts o = {0.01, 0}, oa = {0.01, 1}, o0 = {0.0, 0};
        CHECK_MSG(qtc_gptq(w, R, C, xtx, N, &s, &o, &g, &err) == QTC_OK, "%s", err.msg);
        CHECK_MSG(qtc_gptq(w, R, C, xtx, N, &s, &oa, &ga, &err) == QTC_OK, "%s", err.msg);
        double e_rtn = output_error(w, &rtn, x, N, R, C), e_g = output_error(w, &g, x, N, R, C),
               e_ga = output_error(w, &ga, x, N, R, C);
        CHECK_MSG(e_g < 0.9 * e_rtn && e_ga < 0.9 * e_rtn, "%s: GPTQ %g, act-order %g, round-to-nearest %g", schemes[k], e_g, e_ga, e_rtn);
        /* a diagonal H spreads no error: exactly round-to-nearest */
        CHECK_MSG(qtc_gptq(w, R, C, diag, N, &s, &o0, &gd, &err) == QTC_OK, "%s", err.msg);
        CHECK_MSG(memcmp(gd.q, rtn.q, R * C) == 0, "%s: diagonal H differs from round-to-nearest", schemes[k]);
        int64_t ns = s.group < 0 ? 1 : R * rtn.n_groups;
        CHECK(memcmp(gd.scale, rtn.scale, (size_t)ns * sizeof(float)) == 0);
        qtc_qweight_free(&rtn);
        qtc_qweight_free(&g);
        qtc_qweight_free(&ga);
        qtc_qweight_free(&gd);
    }
    /* a channel never seen gets weight 0 */
    for (int b = 0; b < C; b++)
        xtx[5 * C + b] = xtx[b * C + 5] = 0;
    qtc_qscheme s;
    qtc_qscheme_parse("int4-g32", &s);
    qtc_qweight g;
    qtc_gptq_opts o = {0.01, 0};
    CHECK(qtc_gptq(w, R, C, xtx, N, &s, &o, &g, &err) == QTC_OK);
    float *back = malloc(R * C * sizeof *back);
    qtc_qweight_dequantize(&g, back);
    for (int rr = 0; rr < R; rr++)
        CHECK(back[rr * C + 5] == 0);
    free(back);
    qtc_qweight_free(&g);
    free(w);
    free(x);
    free(m);
    free(xtx);
    free(diag);
}

/* An independent capture of every linear input: mean x^2 per channel, in double. */
typedef struct capture {
    double *sum[64 * 7];
    int64_t rows[64 * 7];
} capture;

static qtc_tensor *capture_linear(void *ctx, qtc_graph *g, qtc_tensor *x, qtc_tensor *w, int layer, qtc_linear_kind kind)
{
    capture *c = ctx;
    if (layer >= 0) {
        int i = layer * 7 + kind;
        int64_t in = x->ne[x->ndim - 1], rows = qtc_tensor_numel(x) / in;
        if (!c->sum[i])
            c->sum[i] = calloc((size_t)in, sizeof(double));
        for (int64_t t = 0; t < rows * in; t++)
            c->sum[i][t % in] += (double)((float *)x->data)[t] * ((float *)x->data)[t];
        c->rows[i] += rows;
    }
    return qtc_matmul(g, x, w, 0, 1);
}

TEST(imatrix_reads_back_as_the_mean_square_of_each_linear_input)
{
    qtc_error err;
    qtc_llama *m = qtc_llama_load(shared_path("models/stories260K/stories260K.bin"), &err);
    CHECK_MSG(m, "%s", err.msg);
    qtc_tokenizer *t = qtc_tokenizer_load_llama2c(shared_path("models/stories260K/tok512.bin"), 512, &err);
    qtc_tokens d;
    CHECK(qtc_tokens_load(t, shared_path("data/tinystories-eval.txt"), 512, &d, &err) == QTC_OK);
    qtc_calib *cb = qtc_calib_new(&m->c, 0, &err);
    CHECK(cb);
    CHECK(qtc_calib_run(cb, m, &d, 64, 3, 64 * 7, NULL, &err) == QTC_OK);
    CHECK(cb->windows == 7 && cb->tokens == 448);
    char path[] = "/tmp/qtc-imatrix-XXXXXX.gguf";
    int fd = mkstemps(path, 5);
    close(fd);
    CHECK_MSG(qtc_imatrix_save(cb, &m->c, path, "tinystories-eval.txt", 64, &err) == QTC_OK, "%s", err.msg);
    qtc_imatrix im;
    CHECK_MSG(qtc_imatrix_load(path, &im, &err) == QTC_OK, "%s", err.msg);
    CHECK(im.n == 35 && im.chunk_count == 7 && im.chunk_size == 64);
    /* the same windows through an independent hook */
    capture c;
    memset(&c, 0, sizeof c);
    m->linear = capture_linear;
    m->linear_ctx = &c;
    qtc_graph *g = qtc_graph_new(&err);
    qtc_graph_set_recording(g, 0);
    for (int w0 = 0; w0 < 7; w0++) {
        qtc_tensor ids = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(1, 64), d.ids + w0 * 64);
        qtc_graph_reset(g);
        qtc_llama_forward(m, g, &ids, 0);
    }
    for (int i = 0; i < 35; i++) {
        char name[QTC_NAME_MAX];
        snprintf(name, sizeof name, "model.layers.%d.%s.weight", i / 7, qtc_linear_path((qtc_linear_kind)(i % 7)));
        CHECK(c.rows[i] == 448);
        int64_t in = i % 7 == 6 ? m->c.hidden : m->c.dim;
        const float *got = qtc_imatrix_find(&im, name, in);
        CHECK_MSG(got, "%s missing from the imatrix", name);
        double *want = malloc((size_t)in * sizeof *want);
        for (int64_t k = 0; k < in; k++)
            want[k] = c.sum[i][k] / 448.0;
        CHECK_CLOSE(name, got, want, in, 1e-5, 1e-9);
        free(want);
        free(c.sum[i]);
    }
    qtc_graph_free(g);
    qtc_imatrix_free(&im);
    unlink(path);
    /* the calibration file: ranges and their int8 parameters */
    char jpath[] = "/tmp/qtc-calib-XXXXXX.json";
    fd = mkstemps(jpath, 5);
    close(fd);
    qtc_calib_source src = {"x.txt", "ab", 448, 64, 9};
    CHECK(qtc_calib_save_json(cb, jpath, QTC_RANGE_PERCENTILE, 99.9, 8, 0, &src, &err) == QTC_OK);
    char *text = test_read_file(jpath, NULL);
    cJSON *o = cJSON_Parse(text);
    const cJSON *e = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "tensors"), "model.layers.3.mlp.down_proj.weight"), "input");
    CHECK(e);
    double lo = cJSON_GetObjectItem(e, "min")->valuedouble, hi = cJSON_GetObjectItem(e, "max")->valuedouble;
    double scale = cJSON_GetObjectItem(e, "scale")->valuedouble, zero = cJSON_GetObjectItem(e, "zero_point")->valuedouble;
    CHECK(lo < 0 && hi > 0 && lo >= cJSON_GetObjectItem(e, "observed_min")->valuedouble);
    CHECK_MSG(fabs(scale - (hi - lo) / 255) < 1e-6 * scale && fabs(zero - (-128 - nearbyint(lo / scale))) < 1e-9, "scale %g zero %g for [%g, %g]",
              scale, zero, lo, hi);
    CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "source"), "tokens")->valuedouble == 448);
    cJSON_Delete(o);
    free(text);
    unlink(jpath);
    qtc_calib_free(cb);
    qtc_tokens_free(&d);
    qtc_tokenizer_free(t);
    qtc_llama_free(m);
}

/* layer_done for the test below: checks that only this layer's x x^T sums
 * exist, that their diagonals are the sums of x^2, and halves w_down when asked. */
typedef struct layer_check {
    int calls, bad, halve_down;
} layer_check;

static qtc_status check_layer(void *ctx, qtc_calib *cb, qtc_llama *m, int l, unsigned kinds, qtc_error *err)
{
    (void)kinds;
    (void)err;
    layer_check *lc = ctx;
    lc->calls++;
    for (int i = 0; i < cb->n_layers * QTC_N_LINEAR; i++) {
        const qtc_act_stats *a = &cb->s[i];
        if ((i / QTC_N_LINEAR == l) != (a->xtx != NULL)) {
            lc->bad++;
            continue;
        }
        for (int64_t j = 0; a->xtx && j < a->in; j++)
            if (fabs(a->xtx[j * a->in + j] - a->sum_sq[j]) > 1e-4 * a->sum_sq[j] + 1e-9)
                lc->bad++;
    }
    if (lc->halve_down)
        for (int64_t j = 0; j < qtc_tensor_numel(m->layers[l].w_down); j++)
            ((float *)m->layers[l].w_down->data)[j] *= 0.5f;
    return QTC_OK;
}

static int same_stats(const qtc_calib *a, const qtc_calib *b)
{
    for (int i = 0; i < a->n_layers * QTC_N_LINEAR; i++) {
        const qtc_act_stats *x = &a->s[i], *y = &b->s[i];
        if (x->rows != y->rows || x->min != y->min || x->max != y->max || x->range != y->range ||
            memcmp(x->hist, y->hist, sizeof x->hist) != 0 || memcmp(x->sum_sq, y->sum_sq, (size_t)x->in * sizeof(double)) != 0 ||
            memcmp(x->amax, y->amax, (size_t)x->in * sizeof(double)) != 0)
            return 0;
    }
    return 1;
}

TEST(a_layer_at_a_time_gives_the_whole_models_statistics_and_later_layers_see_changes)
{
    qtc_error err;
    const char *model = shared_path("models/stories260K/stories260K.bin");
    qtc_llama *m = qtc_llama_load(model, &err), *halved = qtc_llama_load(model, &err);
    CHECK_MSG(m && halved, "%s", err.msg);
    qtc_tokenizer *t = qtc_tokenizer_load_llama2c(shared_path("models/stories260K/tok512.bin"), 512, &err);
    qtc_tokens d;
    CHECK(qtc_tokens_load(t, shared_path("data/tinystories-eval.txt"), 512, &d, &err) == QTC_OK);
    qtc_calib *whole = qtc_calib_new(&m->c, 0, &err), *layers = qtc_calib_new(&m->c, 1, &err);
    CHECK(qtc_calib_run(whole, m, &d, 64, 3, 64 * 7, NULL, &err) == QTC_OK);
    layer_check lc = {0, 0, 0};
    qtc_calib_hooks h = {NULL, check_layer, 0, 0, &lc};
    CHECK_MSG(qtc_calib_run(layers, m, &d, 64, 3, 64 * 7, &h, &err) == QTC_OK, "%s", err.msg);
    CHECK(lc.calls == m->c.n_layers && lc.bad == 0);
    CHECK(layers->tokens == 448 && layers->s[0].xtx == NULL);
    CHECK_MSG(same_stats(whole, layers), "a layer at a time differs from the whole model");
    /* a layer changed in layer_done: the layers after it are calibrated on the changed model */
    qtc_calib *seq = qtc_calib_new(&m->c, 0, &err), *ref = qtc_calib_new(&m->c, 0, &err);
    layer_check halve = {0, 0, 1};
    qtc_calib_hooks hs = {NULL, check_layer, 1, 0, &halve};
    CHECK(qtc_calib_run(seq, m, &d, 64, 3, 64 * 7, &hs, &err) == QTC_OK);
    for (int l = 0; l < halved->c.n_layers; l++)
        for (int64_t j = 0; j < qtc_tensor_numel(halved->layers[l].w_down); j++)
            ((float *)halved->layers[l].w_down->data)[j] *= 0.5f;
    CHECK(qtc_calib_run(ref, halved, &d, 64, 3, 64 * 7, NULL, &err) == QTC_OK);
    CHECK_MSG(same_stats(seq, ref), "sequential calibration differs from the changed model's");
    CHECK(!same_stats(seq, whole));
    qtc_calib_free(whole);
    qtc_calib_free(layers);
    qtc_calib_free(seq);
    qtc_calib_free(ref);
    qtc_tokens_free(&d);
    qtc_tokenizer_free(t);
    qtc_llama_free(m);
    qtc_llama_free(halved);
}

/* sum_j imp_j (w_j - wq_j)^2 over a row range, in double */
static double weighted_error(const float *w, const float *wq, const float *imp, int64_t rows, int64_t cols)
{
    double e = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            double d = (double)w[r * cols + c] - wq[r * cols + c];
            e += imp[c] * d * d;
        }
    return e;
}

TEST(importance_weighted_scales_never_lose_to_min_max_on_the_weighted_error)
{
    qtc_error err;
    enum { R = 40, C = 96 };
    float *w = malloc(R * C * sizeof *w), *imp = malloc(C * sizeof *imp), *a = malloc(R * C * sizeof *a),
          *b = malloc(R * C * sizeof *b);
    qtc_rng r;
    qtc_rng_seed(&r, 8);
    for (int i = 0; i < R * C; i++)
        w[i] = (float)normal(&r) * (i % 17 == 0 ? 4.0f : 1.0f);
    for (int c = 0; c < C; c++)
        imp[c] = (float)(0.01 + (c % 5 == 0 ? 10.0 : 1.0) * qtc_rng_uniform(&r));
    const char *schemes[] = {"int4-g32", "int4", "int3-g16-asym", "int8", "int4-tensor"};
    for (size_t k = 0; k < sizeof schemes / sizeof *schemes; k++) {
        qtc_qscheme s;
        qtc_qscheme_parse(schemes[k], &s);
        qtc_qweight q0, q1;
        CHECK(qtc_qweight_quantize(w, R, C, &s, &q0, &err) == QTC_OK);
        CHECK(qtc_qweight_quantize_weighted(w, R, C, &s, imp, &q1, &err) == QTC_OK);
        qtc_qweight_dequantize(&q0, a);
        qtc_qweight_dequantize(&q1, b);
        /* group by group: the weighted choice is at least as good as min-max on the weighted error */
        int64_t g = s.group > 0 ? s.group : C;
        for (int64_t row = 0; s.group >= 0 && row < R; row++)
            for (int64_t c0 = 0; c0 < C; c0 += g) {
                double e0 = 0, e1 = 0;
                for (int64_t c = c0; c < c0 + g && c < C; c++) {
                    double d0 = (double)w[row * C + c] - a[row * C + c], d1 = (double)w[row * C + c] - b[row * C + c];
                    e0 += (imp[c] + 1e-8) * d0 * d0;
                    e1 += (imp[c] + 1e-8) * d1 * d1;
                }
                CHECK_MSG(e1 <= e0 * (1 + 1e-6), "%s row %lld group at %lld: %g > min-max %g", schemes[k], (long long)row,
                          (long long)c0, e1, e0);
            }
        double e0 = weighted_error(w, a, imp, R, C), e1 = weighted_error(w, b, imp, R, C);
        CHECK_MSG(e1 < e0, "%s: weighted %g, min-max %g", schemes[k], e1, e0);
        qtc_qweight_free(&q0);
        qtc_qweight_free(&q1);
    }
    free(w);
    free(imp);
    free(a);
    free(b);
}


/* The importance-weighted error of n values of x stored as t. */
static double block_weighted_error(qtc_dtype t, const float *x, const void *y, const float *imp, int64_t rows, int64_t n)
{
    float *back = malloc((size_t)n * sizeof *back);
    double e = 0;
    for (int64_t r = 0; r < rows; r++) {
        qtc_dequantize_row(t, (const char *)y + (size_t)r * qtc_dtype_row_size(t, n), back, n);
        for (int64_t j = 0; j < n; j++)
            e += imp[j] * ((double)x[r * n + j] - back[j]) * ((double)x[r * n + j] - back[j]);
    }
    free(back);
    return e;
}

TEST(ggml_importance_weighted_blocks_fit_their_scales_by_weighted_least_squares)
{
    qtc_error err;
    enum { R = 24, N = 512 };
    float *x = malloc(R * N * sizeof *x), imp[N];
    qtc_rng r;
    qtc_rng_seed(&r, 21);
    for (int i = 0; i < R * N; i++)
        x[i] = (float)normal(&r) * (i % 23 == 0 ? 3.0f : 1.0f);
    for (int j = 0; j < N; j++) /* a few channels matter far more, as in real imatrices */
        imp[j] = (float)((j % 7 == 0 ? 50.0 : 1.0) * (0.1 + qtc_rng_uniform(&r)));
    const qtc_dtype types[] = {QTC_Q4_0, QTC_Q4_1, QTC_Q5_0, QTC_Q5_1, QTC_Q4_K, QTC_Q5_K, QTC_Q6_K, QTC_Q8_0};
    for (size_t k = 0; k < sizeof types / sizeof *types; k++) {
        qtc_dtype t = types[k];
        size_t row = qtc_dtype_row_size(t, N);
        char *plain = malloc(R * row), *weighted = malloc(R * row), *none = malloc(R * row);
        for (int i = 0; i < R; i++) {
            CHECK(qtc_quantize_row(t, x + i * N, plain + i * row, N, &err) == QTC_OK);
            CHECK(qtc_quantize_row_weighted(t, x + i * N, weighted + i * row, N, imp, &err) == QTC_OK);
            CHECK(qtc_quantize_row_weighted(t, x + i * N, none + i * row, N, NULL, &err) == QTC_OK);
        }
        CHECK(memcmp(plain, none, R * row) == 0); /* no importance: ggml's reference quantizer */
        double e0 = block_weighted_error(t, x, plain, imp, R, N), e1 = block_weighted_error(t, x, weighted, imp, R, N);
        const char *name = qtc_dtype_info(t)->name;
        if (qtc_dtype_takes_importance(t))
            CHECK_MSG(e1 < 0.9 * e0, "%s: weighted error %g with importance, %g without", name, e1, e0);
        else
            CHECK(memcmp(plain, weighted, R * row) == 0);
        if (t == QTC_Q4_0 || t == QTC_Q5_0) {
            /* each block's scale is the weighted least-squares scale of its own levels, with llama.cpp's
             * weights importance * sqrt(sigma^2 + x^2), sigma^2 the row's mean square (in double here) */
            const int half = t == QTC_Q4_0 ? 8 : 16;
            float back[32];
            int worst = 0;
            for (int i = 0; i < R; i++) {
                double s2 = 0;
                for (int j = 0; j < N; j++)
                    s2 += (double)x[i * N + j] * x[i * N + j];
                s2 /= N;
                for (int b = 0; b < N / 32; b++) {
                    const char *blk = weighted + i * row + (size_t)b * qtc_dtype_info(t)->type_size;
                    uint16_t dh;
                    memcpy(&dh, blk, 2);
                    double d = qtc_f16_to_f32(dh);
                    qtc_dequantize_row(t, blk, back, 32);
                    double slx = 0, sl2 = 0;
                    for (int j = 0; j < 32; j++) {
                        const double xv = x[i * N + b * 32 + j], l = d ? nearbyint(back[j] / d) : 0;
                        const double w = imp[b * 32 + j] * sqrt(s2 + xv * xv);
                        CHECK(l >= -half && l < half);
                        slx += w * xv * l;
                        sl2 += w * l * l;
                    }
                    double ls = sl2 > 0 ? slx / sl2 : 0;
                    if (fabs(d - ls) > 1e-3 * fabs(ls) + 1e-12)
                        worst++;
                }
            }
            CHECK_MSG(worst == 0, "%s: %d blocks whose scale is not the weighted least-squares one", name, worst);
        }
        free(plain);
        free(weighted);
        free(none);
    }
    free(x);
}
TEST(awq_scales_lower_the_output_error_when_a_few_channels_carry_large_activations)
{
    qtc_error err;
    enum { R = 32, C = 64, N = 400 };
    float *w = malloc(R * C * sizeof *w);
    double *xtx = calloc(C * C, sizeof *xtx), *mean_abs = calloc(C, sizeof *mean_abs);
    qtc_rng r;
    qtc_rng_seed(&r, 9);
    for (int i = 0; i < R * C; i++)
        w[i] = (float)normal(&r);
    for (int t = 0; t < N; t++) {
        double x[C];
        for (int c = 0; c < C; c++)
            x[c] = normal(&r) * (c % 16 == 3 ? 20.0 : 1.0); /* salient channels, as AWQ's paper describes */
        for (int a = 0; a < C; a++) {
            mean_abs[a] += fabs(x[a]) / N;
            for (int b = 0; b < C; b++)
                xtx[a * C + b] += x[a] * x[b];
        }
    }
    qtc_qscheme s;
    qtc_qscheme_parse("int4-g32", &s);
    const float *ws[1] = {w};
    int64_t rows[1] = {R};
    float sc[C];
    double alpha = -1, e = 0, e0 = 0;
    CHECK(qtc_awq_search(ws, rows, 1, C, xtx, mean_abs, &s, 20, sc, &alpha, &e, &e0, &err) == QTC_OK);
    /* the round-to-nearest error computed here directly */
    qtc_qweight q;
    float back[R * C];
    CHECK(qtc_qweight_quantize(w, R, C, &s, &q, &err) == QTC_OK);
    qtc_qweight_dequantize(&q, back);
    qtc_qweight_free(&q);
    double want0 = 0;
    for (int rr = 0; rr < R; rr++)
        for (int a = 0; a < C; a++)
            for (int b = 0; b < C; b++)
                want0 += ((double)w[rr * C + a] - back[rr * C + a]) * xtx[a * C + b] * ((double)w[rr * C + b] - back[rr * C + b]);
    CHECK_MSG(fabs(e0 - want0) <= 1e-9 * want0, "round-to-nearest error %g, direct %g", e0, want0);
    CHECK_MSG(alpha > 0 && e < 0.8 * e0, "alpha %g: error %g vs round-to-nearest %g", alpha, e, e0);
    CHECK(sc[3] > sc[4] && sc[19] > sc[20]); /* the salient channels are scaled up */
    free(w);
    free(xtx);
    free(mean_abs);
}

TEST(awq_clipping_picks_each_groups_best_clamp_as_the_real_quantizer_rounds_it)
{
    qtc_error err;
    enum { R = 12, C = 64, G = 16, NG = C / G, N = 300 };
    float *w = malloc(R * C * sizeof *w), *cw = malloc(R * C * sizeof *cw), *back = malloc(R * C * sizeof *back);
    double *H = calloc(C * C, sizeof *H), *Hs = calloc(C * C, sizeof *Hs);
    float clip[R * NG], clip_s[R * NG], in_scale[C];
    qtc_rng r;
    qtc_rng_seed(&r, 33);
    for (int i = 0; i < R * C; i++)
        w[i] = (float)normal(&r) * (qtc_rng_uniform(&r) < 0.03 ? 5.0f : 1.0f); /* a few outliers to clip */
    for (int t = 0; t < N; t++) {
        double x[C];
        for (int a = 0; a < C; a++)
            x[a] = normal(&r) * (a % 9 == 0 ? 3 : 1);
        for (int a = 0; a < C; a++)
            for (int b = 0; b < C; b++)
                H[a * C + b] += x[a] * x[b];
    }
    qtc_qscheme s;
    qtc_qscheme_parse("int3-g16", &s);
    double before, after;
    CHECK(qtc_awq_clip(w, R, C, H, NULL, &s, clip, &before, &after, &err) == QTC_OK);
    CHECK_MSG(after < 0.97 * before, "clipping error %g, unclipped %g", after, before);
    /* every candidate clamp applied to all groups, rounded by qtc_qweight_quantize, scored per group in double */
    double best[R * NG], chosen[R * NG];
    for (int g = 0; g < R * NG; g++)
        best[g] = INFINITY, chosen[g] = -1;
    for (int i = 0; i < 10; i++) {
        for (int row = 0; row < R; row++)
            for (int g = 0; g < NG; g++) {
                float amax = 0;
                for (int j = 0; j < G; j++)
                    amax = fmaxf(amax, fabsf(w[row * C + g * G + j]));
                float m = amax * (1.0f - (float)i / 20.0f);
                for (int j = 0; j < G; j++)
                    cw[row * C + g * G + j] = fminf(fmaxf(w[row * C + g * G + j], -m), m);
                if (m == clip[row * NG + g])
                    chosen[row * NG + g] = i;
            }
        qtc_qweight q;
        CHECK(qtc_qweight_quantize(cw, R, C, &s, &q, &err) == QTC_OK);
        qtc_qweight_dequantize(&q, back);
        qtc_qweight_free(&q);
        for (int row = 0; row < R; row++)
            for (int g = 0; g < NG; g++) {
                double e = 0;
                for (int a = g * G; a < g * G + G; a++)
                    for (int b = g * G; b < g * G + G; b++)
                        e += ((double)w[row * C + a] - back[row * C + a]) * H[a * C + b] * ((double)w[row * C + b] - back[row * C + b]);
                if (e < best[row * NG + g] * (1 - 1e-12))
                    best[row * NG + g] = e;
                if (chosen[row * NG + g] == i)
                    chosen[row * NG + g] = -2 - e; /* its error, marked as found */
            }
    }
    int wrong = 0, clipped = 0;
    for (int g = 0; g < R * NG; g++) {
        double e = -2 - chosen[g];
        if (chosen[g] > -2 || fabs(e - best[g]) > 1e-9 * best[g] + 1e-12)
            wrong++;
        float amax = 0;
        for (int j = 0; j < G; j++)
            amax = fmaxf(amax, fabsf(w[(g / NG) * C + (g % NG) * G + j]));
        clipped += clip[g] < amax;
    }
    CHECK_MSG(wrong == 0, "%d of %d groups did not get their best clamp", wrong, R * NG);
    CHECK_MSG(clipped > 0, "no group was clipped");
    /* with AWQ's input scales the inputs are x / s: the same as H through diag(1/s) */
    for (int a = 0; a < C; a++)
        in_scale[a] = (float)(0.5 + qtc_rng_uniform(&r));
    for (int a = 0; a < C; a++)
        for (int b = 0; b < C; b++)
            Hs[a * C + b] = H[a * C + b] / ((double)in_scale[a] * in_scale[b]);
    CHECK(qtc_awq_clip(w, R, C, H, in_scale, &s, clip, &before, &after, &err) == QTC_OK);
    CHECK(qtc_awq_clip(w, R, C, Hs, NULL, &s, clip_s, &before, &after, &err) == QTC_OK);
    CHECK(memcmp(clip, clip_s, sizeof clip) == 0);
    free(w);
    free(cw);
    free(back);
    free(H);
    free(Hs);
}

/* layer_done group by group: records the order of the groups and halves v_proj once q/k/v are done. */
typedef struct group_check {
    unsigned order[64];
    int calls;
} group_check;

static qtc_status halve_v_after_qkv(void *ctx, qtc_calib *cb, qtc_llama *m, int l, unsigned kinds, qtc_error *err)
{
    (void)cb;
    (void)err;
    group_check *gc = ctx;
    if (gc->calls < 64)
        gc->order[gc->calls] = kinds;
    gc->calls++;
    if (kinds >> QTC_LIN_V & 1)
        for (int64_t j = 0; j < qtc_tensor_numel(m->layers[l].wv); j++)
            ((float *)m->layers[l].wv->data)[j] *= 0.5f;
    return QTC_OK;
}

TEST(group_by_group_calibration_records_each_group_after_the_earlier_groups_changes)
{
    qtc_error err;
    const char *model = shared_path("models/stories260K/stories260K.bin");
    qtc_llama *m = qtc_llama_load(model, &err), *halved = qtc_llama_load(model, &err);
    CHECK_MSG(m && halved, "%s", err.msg);
    qtc_tokenizer *t = qtc_tokenizer_load_llama2c(shared_path("models/stories260K/tok512.bin"), 512, &err);
    qtc_tokens d;
    CHECK(qtc_tokens_load(t, shared_path("data/tinystories-eval.txt"), 512, &d, &err) == QTC_OK);
    qtc_calib *seq = qtc_calib_new(&m->c, 1, &err), *ref = qtc_calib_new(&m->c, 0, &err);
    group_check gc;
    memset(&gc, 0, sizeof gc);
    qtc_calib_hooks h = {NULL, halve_v_after_qkv, 1, 1, &gc};
    CHECK_MSG(qtc_calib_run(seq, m, &d, 64, 3, 64 * 7, &h, &err) == QTC_OK, "%s", err.msg);
    CHECK(gc.calls == 4 * m->c.n_layers);
    const unsigned want[4] = {1u << QTC_LIN_Q | 1u << QTC_LIN_K | 1u << QTC_LIN_V, 1u << QTC_LIN_O,
                              1u << QTC_LIN_GATE | 1u << QTC_LIN_UP, 1u << QTC_LIN_DOWN};
    for (int i = 0; i < gc.calls && i < 64; i++)
        CHECK(gc.order[i] == want[i % 4]);
    /* o_proj's inputs (and everything after) were recorded with v halved: as a model halved beforehand */
    for (int l = 0; l < halved->c.n_layers; l++)
        for (int64_t j = 0; j < qtc_tensor_numel(halved->layers[l].wv); j++)
            ((float *)halved->layers[l].wv->data)[j] *= 0.5f;
    CHECK(qtc_calib_run(ref, halved, &d, 64, 3, 64 * 7, NULL, &err) == QTC_OK);
    CHECK_MSG(same_stats(seq, ref), "group-by-group statistics differ from the changed model's");
    qtc_calib_free(seq);
    qtc_calib_free(ref);
    qtc_tokens_free(&d);
    qtc_tokenizer_free(t);
    qtc_llama_free(m);
    qtc_llama_free(halved);
}

/* --- scales folded into a llama (model/fold.c) ------------------------------------------ */

/* q, k, v and o of one width unless n_kv_heads < 4 (grouped-query attention) */
static qtc_llama_config fold_config(int n_kv_heads)
{
    return (qtc_llama_config){.dim = 16, .hidden = 24, .n_layers = 2, .n_heads = 4, .n_kv_heads = n_kv_heads,
                              .vocab = 48, .ctx = 16, .head_dim = 4, .n_rot = 4, .norm_eps = 1e-5f,
                              .rope_theta = 10000.0f, .tied = 1, .bos_id = 1, .eos_id = 2};
}

/* layer l's tensor j in qtc_llama_params order: 0 attn_norm, 1-4 q k v o, 5 ffn_norm, 6-8 gate up down */
#define LP(l, j) (1 + 9 * (l) + (j))

/* the columns (input width) of layer tensor j; a norm's length */
static int64_t fold_cols(const qtc_llama_config *c, int j)
{
    return j == 0 || j == 5 ? c->dim : j == 4 ? (int64_t)c->n_heads * c->head_dim : j == 8 ? c->hidden : c->dim;
}

static qtc_tokens fold_tokens(int64_t n, int vocab, uint64_t seed)
{
    qtc_tokens d = {malloc((size_t)n * sizeof(int32_t)), n, NULL};
    qtc_rng r;
    qtc_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++)
        d.ids[i] = (int32_t)qtc_rng_below(&r, (uint64_t)vocab);
    return d;
}

/* A few input channels five times larger than the rest (what AWQ and SmoothQuant are for):
 * the RMSNorm weights of channels 0, 5, 10 and 15. */
static void fold_outliers(qtc_llama *m)
{
    for (int l = 0; l < m->c.n_layers; l++)
        for (int ch = 0; ch < m->c.dim; ch += 5) {
            ((float *)m->layers[l].attn_norm->data)[ch] *= 5;
            ((float *)m->layers[l].ffn_norm->data)[ch] *= 5;
        }
}

static double max_abs(const double *x, int64_t n)
{
    double v = 0;
    for (int64_t i = 0; i < n; i++)
        v = fmax(v, fabs(x[i]));
    return v;
}

/* Checks layer l of `now` against `was` with scales sq (q/k/v input), so (o's), sg (gate/up's)
 * and sd (down's): consumers' columns times s, producers (norms, v and up rows) over s; in double. */
static int folded_as(const ref_llama *now, const ref_llama *was, int l, const double *sq, const double *so,
                     const double *sg, const double *sd, double rtol)
{
    for (int j = 0; j < 9; j++) {
        const int p = LP(l, j);
        const int64_t n = was->len[p], cols = fold_cols(&was->c, j);
        double *e = malloc((size_t)n * sizeof *e);
        for (int64_t i = 0; i < n; i++) {
            const int64_t r = i / cols, col = i % cols;
            const double w = was->p[p][i];
            switch (j) {
            case 0: e[i] = w / sq[i]; break;
            case 1: case 2: e[i] = w * sq[col]; break;
            case 3: e[i] = so ? w * sq[col] / so[r] : w * sq[col]; break;
            case 4: e[i] = so ? w * so[col] : w; break;
            case 5: e[i] = w / sg[i]; break;
            case 6: e[i] = w * sg[col]; break;
            case 7: e[i] = w * sg[col] / sd[r]; break;
            default: e[i] = w * sd[col]; break;
            }
        }
        char what[64];
        snprintf(what, sizeof what, "layer %d tensor %d", l, j);
        int ok = check_close_d(what, now->p[p], e, n, rtol, 0);
        free(e);
        if (!ok)
            return 0;
    }
    return 1;
}

TEST(fold_scales_keep_the_logits_and_scale_each_weight_as_a_double_loop_does)
{
    qtc_error err;
    const qtc_llama_config c = fold_config(4);
    qtc_llama *m = test_random_llama(c, 11);
    CHECK(m);
    int32_t tok[16];
    for (int t = 0; t < 16; t++)
        tok[t] = (t * 7 + 3) % c.vocab;
    ref_llama r0, r1;
    ref_from_llama(&r0, m);
    double *want = ref_forward(&r0, tok, 16);
    const qtc_linear_kind inputs[4] = {QTC_LIN_Q, QTC_LIN_O, QTC_LIN_GATE, QTC_LIN_DOWN};
    const int64_t width[4] = {c.dim, (int64_t)c.n_heads * c.head_dim, c.dim, c.hidden};
    qtc_rng rng;
    qtc_rng_seed(&rng, 5);
    float s[2][4][32];
    double sd[2][4][32];
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < 4; k++) {
            for (int64_t i = 0; i < width[k]; i++) {
                s[l][k][i] = expf(2.8f * qtc_rng_uniform(&rng) - 1.4f); /* 1/4 .. 4 */
                sd[l][k][i] = s[l][k][i];
            }
            CHECK_MSG(qtc_fold_scales(m, l, inputs[k], s[l][k], &err) == QTC_OK, "%s", err.msg);
        }
    ref_from_llama(&r1, m);
    for (int l = 0; l < 2; l++)
        CHECK(folded_as(&r1, &r0, l, sd[l][0], sd[l][1], sd[l][2], sd[l][3], 3e-7));
    CHECK(memcmp(r1.p[0], r0.p[0], (size_t)r0.len[0] * sizeof(double)) == 0);          /* the embedding */
    CHECK(memcmp(r1.p[LP(2, 0)], r0.p[LP(2, 0)], (size_t)c.dim * sizeof(double)) == 0); /* the final norm */
    double *got = ref_forward(&r1, tok, 16);
    CHECK_CLOSE("logits after folding", got, want, 16 * c.vocab, 0, 1e-5 * max_abs(want, 16 * c.vocab));
    /* not an input group's first projection, a layer the model lacks, o under grouped-query attention */
    CHECK(qtc_fold_scales(m, 0, QTC_LIN_K, s[0][0], &err) == QTC_ERR_USAGE);
    CHECK(qtc_fold_scales(m, 2, QTC_LIN_Q, s[0][0], &err) == QTC_ERR_USAGE);
    qtc_llama *g = test_random_llama(fold_config(2), 11);
    ref_llama g0, g1;
    ref_from_llama(&g0, g);
    CHECK(qtc_fold_scales(g, 0, QTC_LIN_O, s[0][1], &err) == QTC_ERR_USAGE && strstr(err.msg, "grouped-query"));
    ref_from_llama(&g1, g);
    for (int i = 0; i < g0.n; i++)
        CHECK(memcmp(g0.p[i], g1.p[i], (size_t)g0.len[i] * sizeof(double)) == 0);
    ref_free(&g0);
    ref_free(&g1);
    qtc_llama_free(g);
    free(got);
    free(want);
    ref_free(&r0);
    ref_free(&r1);
    qtc_llama_free(m);
}

TEST(awq_fold_keeps_the_float_logits_and_clips_only_what_it_chose_to)
{
    qtc_error err;
    const qtc_llama_config c = fold_config(4);
    qtc_llama *m = test_random_llama(c, 21);
    CHECK(m);
    fold_outliers(m);
    qtc_tokens d = fold_tokens(8 * 16, c.vocab, 3);
    const int64_t nl = 16 * c.vocab;
    ref_llama r0, r1, r2;
    ref_from_llama(&r0, m);
    double *want = ref_forward(&r0, d.ids, 16), scale = max_abs(want, nl);
    float *before = qtc_fold_logits(m, &d, 16, &err);
    CHECK_MSG(before, "%s", err.msg);
    CHECK_CLOSE("the first window's logits", before, want, nl, 0, 1e-4 * scale);
    qtc_calib *cb = qtc_calib_new(&m->c, 1, &err);
    CHECK(cb);
    const qtc_qscheme sch = {QTC_QK_INT, 4, 8, 1, 0};
    qtc_awq_fold a;
    CHECK(qtc_awq_fold_init(&a, c.n_layers, &sch, 1, &err) == QTC_OK && a.clip && a.clips);
    qtc_calib_hooks h = {NULL, qtc_awq_fold_layer, 0, 0, &a};
    CHECK_MSG(qtc_calib_run(cb, m, &d, 16, 3, 0, &h, &err) == QTC_OK, "%s", err.msg);
    CHECK_MSG(a.err_rtn > 0 && a.err_awq < a.err_rtn, "AWQ's output error %g, round to nearest's %g", a.err_awq, a.err_rtn);
    CHECK_MSG(a.err_clip_before > 0 && a.err_clip_after <= a.err_clip_before, "clipping: %g -> %g", a.err_clip_before,
              a.err_clip_after);
    double moved = -1;
    CHECK(qtc_fold_moved(m, &d, 16, before, &moved, &err) == QTC_OK);
    CHECK_MSG(moved >= 0 && moved <= 1e-5 * scale, "folding moved the logits by %g (largest %g)", moved, scale);
    ref_from_llama(&r1, m);
    double *got = ref_forward(&r1, d.ids, 16);
    CHECK_CLOSE("the folded model's logits in double", got, want, nl, 0, 1e-5 * scale);
    /* each group's scales, read off one producer (a norm) or one consumer row (o, down), explain every other
     * weight of the layer; those of q/k/v and gate/up differ from 1 (the large channels scaled up) */
    for (int l = 0; l < c.n_layers; l++) {
        double sq[16], sg[16], so[16], sdn[24], far_q = 0, far_g = 0;
        for (int i = 0; i < c.dim; i++) {
            sq[i] = r0.p[LP(l, 0)][i] / r1.p[LP(l, 0)][i];
            sg[i] = r0.p[LP(l, 5)][i] / r1.p[LP(l, 5)][i];
            so[i] = r1.p[LP(l, 4)][i] / r0.p[LP(l, 4)][i];
            far_q = fmax(far_q, fabs(sq[i] - 1));
            far_g = fmax(far_g, fabs(sg[i] - 1));
        }
        for (int i = 0; i < c.hidden; i++)
            sdn[i] = r1.p[LP(l, 8)][i] / r0.p[LP(l, 8)][i];
        CHECK_MSG(far_q > 0.05 && far_g > 0.05, "layer %d: scales within %g (q/k/v) and %g (gate/up) of 1", l, far_q, far_g);
        CHECK(folded_as(&r1, &r0, l, sq, so, sg, sdn, 1e-6));
    }
    /* clamps for every weight but q and k, applied only now: each group clamped to its own */
    static const int param_of[QTC_N_LINEAR] = {1, 2, 3, 4, 6, 7, 8};
    int64_t clipped = 0;
    qtc_awq_apply_clips(&a, m);
    ref_from_llama(&r2, m);
    for (int l = 0; l < c.n_layers; l++)
        for (int k = 0; k < QTC_N_LINEAR; k++) {
            const float *clip = a.clips[l * QTC_N_LINEAR + k];
            CHECK_MSG((clip != NULL) == (k != QTC_LIN_Q && k != QTC_LIN_K), "layer %d kind %d: clamps %p", l, k, (void *)clip);
            const int p = LP(l, param_of[k]);
            const int64_t cols = fold_cols(&c, param_of[k]), ng = (cols + 7) / 8;
            for (int64_t i = 0; i < r1.len[p]; i++) {
                const int64_t r = i / cols, col = i % cols;
                double w = r1.p[p][i], e = w;
                if (clip) {
                    double gmax = 0, mm = clip[r * ng + col / 8];
                    for (int64_t j = col / 8 * 8; j < col / 8 * 8 + 8 && j < cols; j++)
                        gmax = fmax(gmax, fabs(r1.p[p][r * cols + j]));
                    CHECK_MSG(mm <= gmax * (1 + 1e-6) && mm >= 0.55 * gmax * (1 - 1e-6), "clamp %g of a group up to %g", mm, gmax);
                    e = fmin(fmax(w, -mm), mm);
                }
                CHECK_MSG(r2.p[p][i] == e, "layer %d kind %d [%lld]: %.9g after clipping, want %.9g", l, k, (long long)i,
                          r2.p[p][i], e);
                clipped += e != w;
            }
        }
    CHECK(a.err_clip_after == a.err_clip_before || clipped > 0);
    /* written out: layer tensors as the llama holds them, the rest as the file has them */
    qtc_tensor *like = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(c.hidden, c.dim), &err), *out = NULL;
    CHECK(qtc_folded_weight(m, "model.layers.1.mlp.up_proj.weight", like, &out, &err) == 1);
    CHECK(out && memcmp(out->data, m->layers[1].w_up->data, qtc_tensor_nbytes(out)) == 0);
    qtc_tensor_free(out);
    out = NULL;
    CHECK(qtc_folded_weight(m, "model.embed_tokens.weight", like, &out, &err) == 0 && !out);
    CHECK(qtc_folded_weight(m, "model.layers.0.input_layernorm.weight", like, &out, &err) == -1);
    CHECK_MSG(strstr(err.msg, "model.layers.0.input_layernorm.weight"), "%s", err.msg);
    qtc_tensor_free(like);
    qtc_awq_fold_free(&a);
    qtc_calib_free(cb);
    free(before);
    free(got);
    free(want);
    ref_free(&r0);
    ref_free(&r1);
    ref_free(&r2);
    qtc_tokens_free(&d);
    qtc_llama_free(m);
}

TEST(smoothquant_fold_divides_the_norms_by_max_x_over_max_w_and_keeps_the_logits)
{
    qtc_error err;
    const qtc_llama_config c = fold_config(2); /* grouped-query attention: v and o are not touched anyway */
    qtc_llama *m = test_random_llama(c, 31);
    CHECK(m);
    fold_outliers(m);
    qtc_tokens d = fold_tokens(6 * 16, c.vocab, 4);
    const int64_t nl = 16 * c.vocab;
    qtc_calib *cb = qtc_calib_new(&m->c, 0, &err);
    CHECK(cb && qtc_calib_run(cb, m, &d, 16, 4, 0, NULL, &err) == QTC_OK);
    ref_llama r0, r1;
    ref_from_llama(&r0, m);
    double *want = ref_forward(&r0, d.ids, 16), scale = max_abs(want, nl), moved = -1;
    float *before = qtc_fold_logits(m, &d, 16, &err);
    CHECK(before && qtc_fold_moved(m, &d, 16, before, &moved, &err) == QTC_OK && moved == 0);
    const double alpha = 0.75;
    CHECK_MSG(qtc_smoothquant_fold(cb, m, alpha, &err) == QTC_OK, "%s", err.msg);
    ref_from_llama(&r1, m);
    for (int l = 0; l < c.n_layers; l++) {
        /* s = max|x|^alpha / max|W|^(1 - alpha) per input channel, over q/k/v and over gate/up */
        double sq[16], sg[16], far = 0;
        for (int i = 0; i < c.dim; i++) {
            double wq = 0, wg = 0;
            for (int j = 1; j <= 3; j++)
                for (int64_t r = 0; r < r0.len[LP(l, j)] / c.dim; r++)
                    wq = fmax(wq, fabs(r0.p[LP(l, j)][r * c.dim + i]));
            for (int j = 6; j <= 7; j++)
                for (int64_t r = 0; r < c.hidden; r++)
                    wg = fmax(wg, fabs(r0.p[LP(l, j)][r * c.dim + i]));
            const double xq = cb->s[l * QTC_N_LINEAR + QTC_LIN_Q].amax[i], xg = cb->s[l * QTC_N_LINEAR + QTC_LIN_GATE].amax[i];
            CHECK(xq > 0 && xg > 0);
            sq[i] = fmax(pow(xq, alpha) / pow(wq, 1 - alpha), 1e-5);
            sg[i] = fmax(pow(xg, alpha) / pow(wg, 1 - alpha), 1e-5);
            far = fmax(far, fmax(fabs(sq[i] - 1), fabs(sg[i] - 1)));
        }
        CHECK(far > 0.05);
        double ones[24];
        for (int i = 0; i < 24; i++)
            ones[i] = 1;
        CHECK(folded_as(&r1, &r0, l, sq, NULL, sg, ones, 3e-7)); /* o, down and up's rows as they were */
        CHECK(memcmp(r1.p[LP(l, 4)], r0.p[LP(l, 4)], (size_t)r0.len[LP(l, 4)] * sizeof(double)) == 0);
        CHECK(memcmp(r1.p[LP(l, 8)], r0.p[LP(l, 8)], (size_t)r0.len[LP(l, 8)] * sizeof(double)) == 0);
    }
    double *got = ref_forward(&r1, d.ids, 16);
    CHECK_CLOSE("the smoothed model's logits in double", got, want, nl, 0, 1e-5 * scale);
    CHECK(qtc_fold_moved(m, &d, 16, before, &moved, &err) == QTC_OK);
    CHECK_MSG(moved > 0 && moved <= 1e-5 * scale, "smoothing moved the logits by %g (largest %g)", moved, scale);
    /* fewer tokens than one window: an error, as calibration gives */
    qtc_tokens few = {d.ids, 15, NULL};
    CHECK(!qtc_fold_logits(m, &few, 16, &err) && err.code == QTC_ERR_INPUT && strstr(err.msg, "not one window of 16"));
    free(before);
    free(got);
    free(want);
    ref_free(&r0);
    ref_free(&r1);
    qtc_calib_free(cb);
    qtc_tokens_free(&d);
    qtc_llama_free(m);
}

/* --- GPTQ of a llama a layer at a time (model/gptq_run.c) --------------------------------- */

/* Bit for bit: the same codes, scales and zero points. */
static int same_qweight(const qtc_qweight *a, const qtc_qweight *b)
{
    if (memcmp(&a->s, &b->s, sizeof a->s) != 0 || a->rows != b->rows || a->cols != b->cols || a->n_groups != b->n_groups ||
        !a->q || !b->q || (a->zero == NULL) != (b->zero == NULL))
        return 0;
    const int64_t ns = a->s.group < 0 ? 1 : a->rows * a->n_groups;
    return memcmp(a->q, b->q, (size_t)(a->rows * a->cols)) == 0 && memcmp(a->scale, b->scale, (size_t)ns * sizeof(float)) == 0 &&
           (!a->zero || memcmp(a->zero, b->zero, (size_t)ns) == 0);
}

/* layer_done around qtc_gptq_layer: before it, each weight it is given and its
 * x x^T sums copied; after it, its result against qtc_gptq run here on the
 * copies, the weight in the llama (dequantized or left alone), and which
 * results exist so far. */
typedef struct gptq_check {
    qtc_gptq_run *g;
    qtc_qscheme s;
    qtc_gptq_opts o;
    int sequential;
    unsigned seen[8]; /* per layer: kinds given so far */
    int calls, bad;
    char what[160];   /* the first failure */
} gptq_check;

static void gptq_bad(gptq_check *c, int l, int k, const char *why)
{
    if (!c->bad++)
        snprintf(c->what, sizeof c->what, "layer %d kind %d: %s", l, k, why);
}

static qtc_status check_gptq_layer(void *ctx, qtc_calib *cb, qtc_llama *m, int l, unsigned kinds, qtc_error *err)
{
    gptq_check *c = ctx;
    c->calls++;
    float *w0[QTC_N_LINEAR] = {0};
    double *xtx[QTC_N_LINEAR] = {0};
    for (int k = 0; k < QTC_N_LINEAR; k++) {
        if (!(kinds >> k & 1))
            continue;
        const qtc_tensor *w = qtc_llama_linear_weight(m, l, (qtc_linear_kind)k);
        const qtc_act_stats *a = &cb->s[l * QTC_N_LINEAR + k];
        w0[k] = malloc((size_t)qtc_tensor_nbytes(w));
        memcpy(w0[k], w->data, (size_t)qtc_tensor_nbytes(w));
        xtx[k] = malloc((size_t)(a->in * a->in) * sizeof(double));
        memcpy(xtx[k], a->xtx, (size_t)(a->in * a->in) * sizeof(double));
    }
    qtc_status rc = qtc_gptq_layer(c->g, cb, m, l, kinds, err);
    for (int k = 0; k < QTC_N_LINEAR && rc == QTC_OK; k++) {
        const int i = l * QTC_N_LINEAR + k;
        const unsigned want_done = (c->seen[l] | kinds) >> k & 1;
        if ((c->g->q[i].q != NULL) != want_done)
            gptq_bad(c, l, k, want_done ? "no result" : "a result before its inputs were given");
        if (!(kinds >> k & 1))
            continue;
        const qtc_tensor *w = qtc_llama_linear_weight(m, l, (qtc_linear_kind)k);
        const qtc_act_stats *a = &cb->s[i];
        qtc_qweight want;
        if (qtc_gptq(w0[k], w->ne[0], w->ne[1], xtx[k], a->rows, &c->s, &c->o, &want, err) != QTC_OK) {
            rc = err->code;
            break;
        }
        if (!same_qweight(&c->g->q[i], &want))
            gptq_bad(c, l, k, "differs from qtc_gptq on its recorded x x^T");
        float *dq = malloc((size_t)qtc_tensor_nbytes(w));
        qtc_qweight_dequantize(&want, dq);
        if (memcmp(w->data, c->sequential ? dq : w0[k], (size_t)qtc_tensor_nbytes(w)) != 0)
            gptq_bad(c, l, k, c->sequential ? "the llama's weight is not the result dequantized" : "the float weight changed");
        free(dq);
        qtc_qweight_free(&want);
    }
    c->seen[l] |= kinds;
    for (int k = 0; k < QTC_N_LINEAR; k++) {
        free(w0[k]);
        free(xtx[k]);
    }
    return rc;
}

TEST(gptq_hooks_quantize_each_recorded_weight_as_qtc_gptq_does_and_hand_each_result_over_once)
{
    qtc_error err;
    const qtc_llama_config c = fold_config(2); /* grouped-query attention: k and v narrower than q */
    const qtc_qscheme sch = {QTC_QK_INT, 4, 8, 0, 0};
    const qtc_gptq_opts o = {0.01, 1};
    qtc_tokens d = fold_tokens(8 * 16, c.vocab, 5);
    qtc_gptq_run runs[2];
    const int n = c.n_layers * QTC_N_LINEAR;
    for (int seq = 0; seq < 2; seq++) {
        qtc_llama *m = test_random_llama(c, 33), *orig = test_random_llama(c, 33);
        CHECK(m && orig);
        qtc_gptq_run *g = &runs[seq];
        CHECK(qtc_gptq_run_init(g, c.n_layers, &sch, &o, seq, &err) == QTC_OK && g->n == n && g->q && g->handed == 0);
        gptq_check chk;
        memset(&chk, 0, sizeof chk);
        chk.g = g;
        chk.s = sch;
        chk.o = o;
        chk.sequential = seq;
        qtc_calib *cb = qtc_calib_new(&c, 1, &err);
        CHECK(cb);
        qtc_calib_hooks h = {NULL, check_gptq_layer, seq, seq, &chk};
        CHECK_MSG(qtc_calib_run(cb, m, &d, 16, 3, 0, &h, &err) == QTC_OK, "%s", err.msg);
        CHECK_MSG(chk.bad == 0, "%s (%d failures, sequential %d)", chk.what, chk.bad, seq);
        CHECK(chk.calls == (seq ? 4 : 1) * c.n_layers);
        for (int l = 0; l < c.n_layers; l++)
            CHECK(chk.seen[l] == (1u << QTC_N_LINEAR) - 1);
        /* what the llama holds once done: the results dequantized, or the float weights as they were */
        for (int i = 0; i < n; i++) {
            const qtc_tensor *w = qtc_llama_linear_weight(m, i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR));
            const qtc_tensor *w0 = qtc_llama_linear_weight(orig, i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR));
            float *dq = malloc((size_t)qtc_tensor_nbytes(w));
            qtc_qweight_dequantize(&g->q[i], dq);
            const int is_dq = memcmp(w->data, dq, (size_t)qtc_tensor_nbytes(w)) == 0;
            const int is_float = memcmp(w->data, w0->data, (size_t)qtc_tensor_nbytes(w)) == 0;
            free(dq);
            CHECK_MSG(seq ? is_dq && !is_float : is_float && !is_dq, "weight %d: sequential %d, dequantized %d, float %d", i,
                      seq, is_dq, is_float);
        }
        qtc_calib_free(cb);
        qtc_llama_free(m);
        qtc_llama_free(orig);
    }
    /* layer 0's q/k/v read the same inputs either way; every weight after sees quantized ones when sequential */
    for (int i = 0; i < n; i++) {
        const int same = same_qweight(&runs[0].q[i], &runs[1].q[i]);
        CHECK_MSG(same == (i < QTC_LIN_O), "weight %d: sequential and not %s", i, same ? "agree" : "differ");
    }
    /* inputs without x x^T sums: an error naming the first weight */
    {
        qtc_llama *m = test_random_llama(c, 33);
        qtc_calib *cb = qtc_calib_new(&c, 0, &err);
        qtc_calib_hooks h = {NULL, qtc_gptq_layer, 0, 0, &runs[0]};
        CHECK(m && cb && qtc_calib_run(cb, m, &d, 16, 3, 0, &h, &err) == QTC_ERR_USAGE);
        CHECK_MSG(strstr(err.msg, "model.layers.0.self_attn.q_proj.weight") && strstr(err.msg, "x x^T"), "%s", err.msg);
        qtc_calib_free(cb);
        qtc_llama_free(m);
    }
    /* the qweight hook: each result once, in the run's scheme only, and nothing for other names */
    qtc_gptq_run *g = &runs[1];
    const qtc_qscheme other = {QTC_QK_INT, 4, 8, 1, 0};
    qtc_qweight q;
    memset(&q, 0, sizeof q);
    CHECK(qtc_gptq_weight(g, "model.layers.0.self_attn.q_proj.weight", &other, &q, &err) == 0 && !q.q);
    CHECK(qtc_gptq_weight(g, "model.embed_tokens.weight", &sch, &q, &err) == 0 && !q.q);
    CHECK(qtc_gptq_weight(g, "model.layers.2.self_attn.q_proj.weight", &sch, &q, &err) == 0 && !q.q);
    CHECK(qtc_gptq_weight(g, "model.layers.0.input_layernorm.weight", &sch, &q, &err) == 0 && !q.q);
    CHECK(g->handed == 0);
    for (int i = n - 1; i >= 0; i--) { /* in another order than recorded */
        char name[QTC_NAME_MAX];
        qtc_linear_weight_name(i / QTC_N_LINEAR, (qtc_linear_kind)(i % QTC_N_LINEAR), name, sizeof name);
        const qtc_qweight held = g->q[i];
        CHECK_MSG(qtc_gptq_weight(g, name, &sch, &q, &err) == 1, "%s", name);
        CHECK_MSG(q.q == held.q && q.scale == held.scale && q.zero == held.zero && q.rows == held.rows && q.cols == held.cols,
                  "%s: not the result held", name);
        CHECK(g->handed == n - i && !g->q[i].q);
        qtc_qweight_free(&q);
        memset(&q, 0, sizeof q);
        CHECK_MSG(qtc_gptq_weight(g, name, &sch, &q, &err) == 0 && !q.q, "%s handed over twice", name);
    }
    CHECK(g->handed == n);
    qtc_gptq_run_free(&runs[0]);
    qtc_gptq_run_free(&runs[1]);
    CHECK(!runs[1].q);
    qtc_gptq_run_free(&runs[1]); /* twice: nothing left to free */
    qtc_tokens_free(&d);
}
