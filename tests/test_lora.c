/* test_lora.c: adapters, quantized bases, adapter files and merging, each
 * against an independent reference: the double-precision llama of
 * llama_ref.c with the adapters written out in plain loops, finite
 * differences of it, bitsandbytes' published NF4 code, and merges recomputed
 * here in double. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "llama_ref.h"
#include "qtc/lora.h"
#include "qtc/train.h"

static const qtc_llama_config small = {.dim = 32, .hidden = 48, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                                       .vocab = 40, .ctx = 16, .head_dim = 8, .n_rot = 8, .norm_eps = 1e-5f,
                                       .rope_theta = 10000.0f, .tied = 1};

static void fill_uniform(float *x, int64_t n, uint64_t seed, float lo, float hi)
{
    qtc_rng r;
    qtc_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * qtc_rng_uniform(&r);
}

static double *to_double(const qtc_tensor *t)
{
    if (!t)
        return NULL;
    int64_t n = qtc_tensor_numel(t);
    double *d = malloc((size_t)n * sizeof *d);
    for (int64_t i = 0; i < n; i++)
        d[i] = ((const float *)t->data)[i];
    return d;
}

/* The double twin of p's tensors. */
static void ref_peft_from(ref_peft *a, const qtc_peft *p)
{
    memset(a, 0, sizeof *a);
    a->lora_scale = p->scaling;
    a->r = p->c.r;
    for (int i = 0; p->lora_a && i < p->mc.n_layers * QTC_N_LINEAR; i++) {
        a->A[i] = to_double(p->lora_a[i]);
        a->B[i] = to_double(p->lora_b[i]);
    }
    for (int i = 0; p->down && i < 2 * p->mc.n_layers; i++) {
        a->down[i] = to_double(p->down[i]);
        a->down_b[i] = to_double(p->down_b[i]);
        a->up[i] = to_double(p->up[i]);
        a->up_b[i] = to_double(p->up_b[i]);
    }
    a->prefix_len = p->prefix_k ? p->c.prefix_len : 0;
    for (int l = 0; p->prefix_k && l < p->mc.n_layers; l++) {
        a->pk[l] = to_double(p->prefix_k[l]);
        a->pv[l] = to_double(p->prefix_v[l]);
    }
}

static void ref_peft_free(ref_peft *a)
{
    for (int i = 0; i < 64 * 7; i++) {
        free(a->A[i]);
        free(a->B[i]);
    }
    for (int i = 0; i < 128; i++) {
        free(a->down[i]);
        free(a->down_b[i]);
        free(a->up[i]);
        free(a->up_b[i]);
    }
    for (int i = 0; i < 64; i++) {
        free(a->pk[i]);
        free(a->pv[i]);
    }
}

/* Every trainable tensor gets random values (B and U start at zero, which
 * would hide mistakes in the forward). */
static void randomize(qtc_peft *p, uint64_t seed)
{
    qtc_tensor *ps[512];
    int n = qtc_peft_params(p, ps, 512);
    for (int i = 0; i < n; i++)
        fill_uniform(ps[i]->data, qtc_tensor_numel(ps[i]), seed + (uint64_t)i, -0.3f, 0.3f);
}

/* The double parameter that mirrors trainable tensor i of p, in a. */
static double *ref_param(ref_peft *a, const qtc_peft *p, int i)
{
    qtc_tensor *ps[512];
    qtc_peft_params(p, ps, 512);
    for (int s = 0; p->lora_a && s < p->mc.n_layers * QTC_N_LINEAR; s++) {
        if (ps[i] == p->lora_a[s])
            return a->A[s];
        if (ps[i] == p->lora_b[s])
            return a->B[s];
    }
    for (int s = 0; p->down && s < 2 * p->mc.n_layers; s++) {
        if (ps[i] == p->down[s])
            return a->down[s];
        if (ps[i] == p->down_b[s])
            return a->down_b[s];
        if (ps[i] == p->up[s])
            return a->up[s];
        if (ps[i] == p->up_b[s])
            return a->up_b[s];
    }
    for (int l = 0; p->prefix_k && l < p->mc.n_layers; l++) {
        if (ps[i] == p->prefix_k[l])
            return a->pk[l];
        if (ps[i] == p->prefix_v[l])
            return a->pv[l];
    }
    return NULL;
}

/* Runs a method on a small random llama (optionally on an NF4 base): logits
 * against the double model, and every trainable tensor's gradient at a few
 * entries against central differences of the double loss. */
static void check_method(qtc_peft_config c, int quantized_base)
{
    qtc_error err;
    qtc_llama *m = test_random_llama(small, 5);
    CHECK(m);
    ref_llama ref;
    ref_from_llama(&ref, m); /* before quantizing: replaced by the dequantized weights below */
    qtc_peft *p = qtc_peft_new(&m->c, &c, 9, &err);
    CHECK_MSG(p, "%s", err.msg);
    randomize(p, 100);
    if (quantized_base) {
        qtc_qscheme nf4;
        CHECK(qtc_qscheme_parse("nf4", &nf4) == 0);
        CHECK_MSG(qtc_peft_quantize_base(p, m, &nf4, QTC_F32, &err) == QTC_OK, "%s", err.msg);
        for (int l = 0; l < small.n_layers; l++)
            for (int k = 0; k < QTC_N_LINEAR; k++) {
                const qtc_qmatrix *q = &p->base[l * QTC_N_LINEAR + k];
                CHECK(m->layers[l].wq == NULL);
                float *w = malloc((size_t)(q->rows * q->cols) * sizeof *w);
                qtc_qmatrix_rows(q, 0, q->rows, w);
                double *dst = ref.p[1 + 9 * l + 1 + (k < 4 ? k : k + 1)]; /* skip ffn_norm */
                for (int64_t j = 0; j < q->rows * q->cols; j++)
                    dst[j] = w[j];
                free(w);
            }
    }
    qtc_peft_attach(p, m);
    ref_peft a;
    ref_peft_from(&a, p);
    ref.peft = &a;
    enum { T = 7 };
    int32_t tok[T] = {1, 5, 17, 3, 39, 22, 8}, tgt[T] = {5, 17, 3, 39, 22, 8, 0};
    qtc_tensor ids = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(1, T), tok);
    qtc_tensor targets = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(1, T), tgt);
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *logits = qtc_llama_forward(m, g, &ids, 0);
    double *want = ref_forward(&ref, tok, T);
    CHECK_CLOSE("logits with the adapter", (const float *)logits->data, want, T * small.vocab, 1e-4, 1e-4);
    free(want);
    qtc_tensor *loss = qtc_cross_entropy(g, logits, &targets);
    CHECK(qtc_graph_backward(g, loss, &err) == QTC_OK);
    qtc_tensor *ps[512];
    int n = qtc_peft_params(p, ps, 512);
    for (int i = 0; i < n; i += 1 + n / 12) {
        int64_t numel = qtc_tensor_numel(ps[i]);
        for (int64_t j = 0; j < numel; j += numel / 3 + 1) {
            double *w = &ref_param(&a, p, i)[j], w0 = *w, h = 1e-5;
            *w = w0 + h;
            double lp = ref_loss(&ref, tok, tgt, 1, T);
            *w = w0 - h;
            double lm = ref_loss(&ref, tok, tgt, 1, T);
            *w = w0;
            double num = (lp - lm) / (2 * h), got = ((float *)ps[i]->grad->data)[j];
            CHECK_MSG(fabs(got - num) <= 2e-3 * fabs(num) + 2e-6, "%s[%lld]: gradient %.8g, finite difference %.8g",
                      qtc_peft_param_name(p, i, (char[QTC_NAME_MAX]){0}, QTC_NAME_MAX), (long long)j, got, num);
        }
    }
    qtc_graph_free(g);
    ref_peft_free(&a);
    ref_free(&ref);
    qtc_peft_free(p);
    qtc_llama_free(m);
}

TEST(lora_forward_and_gradients_match_the_double_model)
{
    check_method((qtc_peft_config){.method = QTC_PEFT_LORA, .r = 4, .alpha = 8, .target = "all-linear"}, 0);
}

TEST(rslora_on_some_modules_matches_the_double_model)
{
    check_method((qtc_peft_config){.method = QTC_PEFT_LORA, .r = 3, .alpha = 6, .rslora = 1,
                                   .target = "model\\.layers\\.1\\.self_attn\\.(q|v)_proj|.*down_proj"}, 0);
}

TEST(qlora_on_an_nf4_base_matches_the_double_model_of_the_dequantized_weights)
{
    check_method((qtc_peft_config){.method = QTC_PEFT_LORA, .r = 4, .alpha = 16, .target = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"}, 1);
}

TEST(bottleneck_adapter_forward_and_gradients_match_the_double_model)
{
    check_method((qtc_peft_config){.method = QTC_PEFT_ADAPTER, .r = 5}, 0);
}

TEST(prefix_tuning_forward_and_gradients_match_the_double_model)
{
    check_method((qtc_peft_config){.method = QTC_PEFT_PREFIX, .prefix_len = 3}, 0);
}

TEST(prefix_tuning_on_an_nf4_base_matches_the_double_model)
{
    check_method((qtc_peft_config){.method = QTC_PEFT_PREFIX, .prefix_len = 2}, 1);
}

TEST(lora_targets_follow_names_lists_and_regexes)
{
    CHECK(qtc_peft_targets("q_proj,v_proj", 3, QTC_LIN_Q) == 1);
    CHECK(qtc_peft_targets("q_proj,v_proj", 3, QTC_LIN_K) == 0);
    CHECK(qtc_peft_targets("q_proj,v_proj", 3, QTC_LIN_V) == 1);
    CHECK(qtc_peft_targets("q_proj,v_proj", 3, QTC_LIN_OUTPUT) == 0);
    CHECK(qtc_peft_targets("all-linear", 0, QTC_LIN_DOWN) == 1);
    CHECK(qtc_peft_targets(".*mlp.*", 0, QTC_LIN_DOWN) == 1);
    CHECK(qtc_peft_targets(".*mlp.*", 0, QTC_LIN_Q) == 0);
    CHECK(qtc_peft_targets("model\\.layers\\.1\\..*", 0, QTC_LIN_Q) == 0); /* a fullmatch, as PEFT's */
    CHECK(qtc_peft_targets("model\\.layers\\.1\\..*", 1, QTC_LIN_Q) == 1);
    CHECK(qtc_peft_targets("(", 1, QTC_LIN_Q) == -1);
    qtc_error err;
    qtc_peft_config c = {.method = QTC_PEFT_LORA, .r = 2, .alpha = 4, .target = "nothing_proj"};
    CHECK(qtc_peft_new(&small, &c, 1, &err) == NULL && err.code == QTC_ERR_USAGE && strstr(err.msg, "nothing_proj"));
    c.r = 0;
    CHECK(qtc_peft_new(&small, &c, 1, &err) == NULL && err.code == QTC_ERR_USAGE);
}

TEST(lora_initialisation_is_peft_s)
{
    qtc_error err;
    qtc_peft_config c = {.method = QTC_PEFT_LORA, .r = 8, .alpha = 16, .target = "q_proj"};
    qtc_peft *p = qtc_peft_new(&small, &c, 3, &err);
    CHECK(p);
    /* kaiming_uniform_(a=sqrt(5)) on (r, in): bound = sqrt(6 / ((1 + 5) * in)) = 1/sqrt(in) */
    const qtc_tensor *A = p->lora_a[0], *B = p->lora_b[0];
    double bound = 1 / sqrt((double)small.dim), mx = 0;
    for (int64_t i = 0; i < qtc_tensor_numel(A); i++)
        mx = fmax(mx, fabs(((float *)A->data)[i]));
    CHECK_MSG(mx <= bound && mx > 0.8 * bound, "max |A| %g, bound %g", mx, bound);
    for (int64_t i = 0; i < qtc_tensor_numel(B); i++)
        CHECK(((float *)B->data)[i] == 0);
    CHECK(fabsf(p->scaling - 2.0f) < 1e-7f);
    qtc_peft_free(p);
}

TEST(quantized_matrix_rows_equal_each_schemes_dequantization)
{
    qtc_error err;
    enum { R = 37, C = 96 };
    float *w = malloc(R * C * sizeof *w), *got = malloc(R * C * sizeof *got), *want = malloc(R * C * sizeof *want);
    fill_uniform(w, R * C, 7, -1.5f, 1.0f);
    const char *schemes[] = {"nf4", "nf4-single", "int4-g32", "int4-g32-asym", "int8", "int3-g16", "int8-tensor"};
    for (size_t k = 0; k < sizeof schemes / sizeof *schemes; k++) {
        qtc_qscheme s;
        CHECK(qtc_qscheme_parse(schemes[k], &s) == 0);
        qtc_qmatrix q;
        qtc_qweight qw;
        CHECK(qtc_qmatrix_quantize(w, R, C, &s, QTC_F32, &q, &err) == QTC_OK);
        CHECK(qtc_qweight_quantize(w, R, C, &s, &qw, &err) == QTC_OK);
        qtc_qweight_dequantize(&qw, want);
        for (int64_t r = 0; r < R; r += 5) /* row ranges, not only the whole matrix */
            qtc_qmatrix_rows(&q, r, r + 5 <= R ? 5 : R - r, got + r * C);
        CHECK_MSG(memcmp(got, want, sizeof(float) * R * C) == 0, "%s: rows differ from the scheme's dequantization", schemes[k]);
        if (s.kind == QTC_QK_NF4 && s.double_quant) {
            /* bitsandbytes' layout: codes two to a byte, the first in the high nibble; published code values */
            static const double code[16] = {-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                                            -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                                            0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                                            0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                                            0.7229568362236023, 1.0};
            float map[256];
            qtc_dynamic_map(map);
            for (int64_t i = 0; i < R * C; i++) {
                int nib = i % 2 ? q.data[i / 2] & 15 : q.data[i / 2] >> 4;
                float absmax = map[q.absmax_q[i / 64]] * q.nested_absmax[i / 64 / 256] + q.nested_offset;
                CHECK_MSG((float)(code[nib] * absmax) == got[i] || fabs(code[nib] * absmax - got[i]) < 1e-7 * fabs(absmax),
                          "element %lld: %g, reference %g", (long long)i, got[i], code[nib] * absmax);
            }
            double bytes = (double)qtc_qmatrix_bytes(&q), f32 = 4.0 * R * C;
            CHECK_MSG(bytes / f32 < 0.14, "NF4 holds %.0f bytes for %.0f bytes of f32", bytes, f32);
        }
        qtc_qweight_free(&qw);
        qtc_qmatrix_free(&q);
    }
    qtc_dtype types[] = {QTC_Q4_0, QTC_Q8_0, QTC_Q5_1, QTC_F16};
    for (size_t k = 0; k < sizeof types / sizeof *types; k++) {
        qtc_qmatrix q;
        CHECK(qtc_qmatrix_quantize(w, R, C, NULL, types[k], &q, &err) == QTC_OK);
        qtc_qmatrix_rows(&q, 0, R, got);
        size_t row = qtc_dtype_row_size(types[k], C);
        unsigned char *blocks = malloc(row);
        for (int64_t r = 0; r < R; r++) {
            CHECK(qtc_quantize_row(types[k], w + r * C, blocks, C, &err) == QTC_OK);
            qtc_dequantize_row(types[k], blocks, want + r * C, C);
        }
        free(blocks);
        CHECK_MSG(memcmp(got, want, sizeof(float) * R * C) == 0, "%s rows differ", qtc_dtype_info(types[k])->name);
        qtc_qmatrix_free(&q);
    }
    qtc_qmatrix q;
    CHECK(qtc_qmatrix_quantize(w, R, 90, NULL, QTC_Q4_0, &q, &err) == QTC_ERR_USAGE);
    w[100] = NAN;
    qtc_qscheme s;
    qtc_qscheme_parse("nf4", &s);
    CHECK(qtc_qmatrix_quantize(w, R, C, &s, QTC_F32, &q, &err) == QTC_ERR_NUMERIC);
    free(w);
    free(got);
    free(want);
}

TEST(quantized_matmul_and_its_input_gradient_match_double_loops_across_tiles)
{
    qtc_error err;
    enum { B = 3, T = 5, K = 96, N = 1500 }; /* N rows need three tiles of 682 */
    float *w = malloc((size_t)N * K * sizeof *w), *wd = malloc((size_t)N * K * sizeof *wd);
    fill_uniform(w, (int64_t)N * K, 8, -1, 1);
    qtc_qscheme s;
    qtc_qscheme_parse("nf4", &s);
    qtc_qmatrix q;
    CHECK(qtc_qmatrix_quantize(w, N, K, &s, QTC_F32, &q, &err) == QTC_OK);
    qtc_qmatrix_rows(&q, 0, N, wd);
    qtc_tensor *x = qtc_tensor_new(QTC_F32, 3, QTC_SHAPE(B, T, K), &err);
    fill_uniform(x->data, B * T * K, 9, -2, 2);
    CHECK(qtc_tensor_require_grad(x, &err) == QTC_OK);
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *y = qtc_qmatmul(g, x, &q);
    CHECK(y && y->ndim == 3 && y->ne[2] == N);
    /* loss = sum(y * c): dx = c W */
    float *c = malloc((size_t)B * T * N * sizeof *c);
    fill_uniform(c, (int64_t)B * T * N, 10, -1, 1);
    qtc_tensor ct = qtc_tensor_borrow(QTC_F32, 3, QTC_SHAPE(B, T, N), c);
    qtc_tensor *loss = qtc_sum(g, qtc_mul(g, y, &ct));
    CHECK(qtc_graph_backward(g, loss, &err) == QTC_OK);
    double *want_y = malloc((size_t)B * T * N * sizeof *want_y), *want_dx = calloc((size_t)B * T * K, sizeof *want_dx);
    const float *xv = x->data;
    for (int64_t m = 0; m < B * T; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = 0;
            for (int64_t k = 0; k < K; k++)
                acc += (double)xv[m * K + k] * wd[n * K + k];
            want_y[m * N + n] = acc;
            for (int64_t k = 0; k < K; k++)
                want_dx[m * K + k] += (double)c[m * N + n] * wd[n * K + k];
        }
    CHECK_CLOSE("y", (const float *)y->data, want_y, B * T * N, 1e-5, 1e-5);
    CHECK_CLOSE("dx", (const float *)x->grad->data, want_dx, B * T * K, 1e-5, 1e-4);
    free(want_y);
    free(want_dx);
    free(c);
    qtc_graph_free(g);
    qtc_tensor_free(x);
    qtc_qmatrix_free(&q);
    free(w);
    free(wd);
}

TEST(dropout_keeps_the_expected_share_scales_and_passes_gradients_through_its_mask)
{
    qtc_error err;
    enum { N = 20000 };
    qtc_tensor *x = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(N), &err);
    for (int i = 0; i < N; i++)
        ((float *)x->data)[i] = 1.0f + (float)(i % 7);
    CHECK(qtc_tensor_require_grad(x, &err) == QTC_OK);
    qtc_rng r;
    qtc_rng_seed(&r, 4);
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *y = qtc_dropout(g, x, 0.25f, &r);
    CHECK(qtc_graph_backward(g, qtc_sum(g, y), &err) == QTC_OK);
    int kept = 0;
    for (int i = 0; i < N; i++) {
        float yi = ((float *)y->data)[i], xi = ((float *)x->data)[i], gi = ((float *)x->grad->data)[i];
        CHECK(yi == 0 || yi == xi * (1.0f / 0.75f));
        CHECK(gi == (yi == 0 ? 0.0f : 1 / 0.75f));
        kept += yi != 0;
    }
    CHECK_MSG(fabs(kept / (double)N - 0.75) < 0.015, "kept %d of %d", kept, N);
    qtc_graph_free(g);
    qtc_tensor_free(x);
}

/* Every trainable tensor of a and b equal bit for bit. */
static int same_adapter(const qtc_peft *a, const qtc_peft *b)
{
    qtc_tensor *pa[512], *pb[512];
    int na = qtc_peft_params(a, pa, 512), nb = qtc_peft_params(b, pb, 512);
    if (na != nb)
        return 0;
    for (int i = 0; i < na; i++)
        if (qtc_tensor_nbytes(pa[i]) != qtc_tensor_nbytes(pb[i]) || memcmp(pa[i]->data, pb[i]->data, qtc_tensor_nbytes(pa[i])))
            return 0;
    return 1;
}

TEST(adapters_round_trip_through_peft_folders_and_gguf)
{
    qtc_error err;
    char dir[] = "/tmp/qtc-lora-XXXXXX";
    CHECK(mkdtemp(dir));
    char path[256];
    qtc_peft_config cs[] = {{.method = QTC_PEFT_LORA, .r = 4, .alpha = 8, .target = "q_proj,k_proj,down_proj"},
                            {.method = QTC_PEFT_LORA, .r = 2, .alpha = 3, .rslora = 1, .target = "model\\.layers\\.0\\..*"},
                            {.method = QTC_PEFT_ADAPTER, .r = 6},
                            {.method = QTC_PEFT_PREFIX, .prefix_len = 3}};
    for (size_t k = 0; k < sizeof cs / sizeof *cs; k++) {
        qtc_peft *p = qtc_peft_new(&small, &cs[k], 2, &err);
        CHECK(p);
        randomize(p, 50 + k);
        for (int gguf = 0; gguf <= (cs[k].method == QTC_PEFT_LORA); gguf++) {
            snprintf(path, sizeof path, "%s/a%zu%s", dir, k, gguf ? ".gguf" : "");
            CHECK_MSG(qtc_peft_save(p, path, gguf, "stories260K", &err) == QTC_OK, "%s", err.msg);
            qtc_peft *back = qtc_peft_load(path, &small, &err);
            CHECK_MSG(back, "%s: %s", path, err.msg);
            CHECK_MSG(same_adapter(p, back), "%s: tensors differ after the round trip", path);
            CHECK(back->c.method == p->c.method && fabsf(back->scaling - p->scaling) < 1e-6f * p->scaling + 1e-12f);
            qtc_peft_free(back);
        }
        qtc_peft_free(p);
    }
    /* a model of another shape is refused by name */
    qtc_llama_config other = small;
    other.hidden = 64;
    snprintf(path, sizeof path, "%s/a0", dir);
    CHECK(qtc_peft_load(path, &other, &err) == NULL && err.code == QTC_ERR_INPUT && strstr(err.msg, "mlp.down_proj"));
    other = small;
    other.n_layers = 1;
    qtc_peft *one = qtc_peft_load(path, &other, &err);
    CHECK_MSG(!one && err.code == QTC_ERR_INPUT && strstr(err.msg, "layers.1"), "%s", one ? "loaded" : err.msg);
    /* a lying rank */
    snprintf(path, sizeof path, "%s/a0/adapter_config.json", dir);
    char *text = test_read_file(path, NULL);
    CHECK(text && strstr(text, "\"r\":\t4"));
    char *at = strstr(text, "\"r\":\t4");
    at[5] = '5';
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    free(text);
    snprintf(path, sizeof path, "%s/a0", dir);
    CHECK(qtc_peft_load(path, &small, &err) == NULL && err.code == QTC_ERR_INPUT && strstr(err.msg, "lora_A"));
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

/* The full delta of adapter p at slot, in double, times w. */
static void ref_delta(const qtc_peft *p, int slot, double w, double *d)
{
    const qtc_tensor *A = p->lora_a[slot], *B = p->lora_b[slot];
    int64_t r = A->ne[0], in = A->ne[1], out = B->ne[0];
    for (int64_t o = 0; o < out; o++)
        for (int64_t i = 0; i < in; i++) {
            double s = 0;
            for (int64_t k = 0; k < r; k++)
                s += (double)((float *)B->data)[o * r + k] * ((float *)A->data)[k * in + i];
            d[o * in + i] = w * p->scaling * s;
        }
}

TEST(merge_sum_cat_ties_and_dare_match_reference_computations)
{
    qtc_error err;
    qtc_peft *ad[3];
    qtc_peft_config cs[3] = {{.method = QTC_PEFT_LORA, .r = 4, .alpha = 8, .target = "all-linear"},
                             {.method = QTC_PEFT_LORA, .r = 2, .alpha = 2, .target = "q_proj,v_proj"},
                             {.method = QTC_PEFT_LORA, .r = 3, .alpha = 9, .rslora = 1, .target = "q_proj"}};
    for (int i = 0; i < 3; i++) {
        CHECK((ad[i] = qtc_peft_new(&small, &cs[i], 30 + (uint64_t)i, &err)));
        randomize(ad[i], 70 + 10 * (uint64_t)i);
    }
    const float w[3] = {0.7f, 0.3f, -0.5f};
    const int rows = small.n_heads * small.head_dim, cols = small.dim, n = rows * cols;
    float *got = malloc((size_t)n * sizeof *got), *cat = malloc((size_t)n * sizeof *cat);
    double *d[3], *want = calloc((size_t)n, sizeof *want);
    for (int i = 0; i < 3; i++) {
        d[i] = malloc((size_t)n * sizeof **d);
        ref_delta(ad[i], 1 * QTC_N_LINEAR + QTC_LIN_Q, w[i], d[i]);
    }
    qtc_merge_opts o = {QTC_MERGE_SUM, 1, 0};
    CHECK(qtc_merge_delta(ad, w, 3, 1, QTC_LIN_Q, &o, got, &err) == QTC_OK);
    for (int j = 0; j < n; j++)
        want[j] = d[0][j] + d[1][j] + d[2][j];
    CHECK_CLOSE("sum", (const float *)got, want, n, 1e-5, 1e-6);
    o.method = QTC_MERGE_CAT;
    CHECK(qtc_merge_delta(ad, w, 3, 1, QTC_LIN_Q, &o, cat, &err) == QTC_OK);
    CHECK_CLOSE("cat", (const float *)cat, want, n, 1e-5, 1e-6);
    /* TIES at density 0.3: keep each delta's top 30% by magnitude, elect signs by the sum, mean of the agreeing */
    o.method = QTC_MERGE_TIES;
    o.density = 0.3f;
    CHECK(qtc_merge_delta(ad, w, 3, 1, QTC_LIN_Q, &o, got, &err) == QTC_OK);
    double *kept[3];
    for (int i = 0; i < 3; i++) {
        kept[i] = malloc((size_t)n * sizeof **kept);
        int k = (int)(0.3f * (float)n), above = 0;
        for (int j = 0; j < n; j++) { /* rank of |d| among the entries (ties: by index) */
            int rank = 0;
            for (int t = 0; t < n; t++)
                rank += fabs(d[i][t]) > fabs(d[i][j]) || (fabs(d[i][t]) == fabs(d[i][j]) && t < j);
            kept[i][j] = rank < k ? d[i][j] : 0;
            above += rank < k;
        }
        CHECK(above == k);
    }
    for (int j = 0; j < n; j++) {
        double s = kept[0][j] + kept[1][j] + kept[2][j], acc = 0;
        int cnt = 0;
        for (int i = 0; i < 3; i++)
            if (kept[i][j] != 0 && s != 0 && (kept[i][j] > 0) == (s > 0)) {
                acc += kept[i][j];
                cnt++;
            }
        want[j] = cnt ? acc / cnt : 0;
    }
    CHECK_CLOSE("ties", (const float *)got, want, n, 1e-4, 1e-6);
    /* DARE at density 0.5: about half of each delta survives, scaled by 2; sum of the survivors */
    o.method = QTC_MERGE_DARE;
    o.density = 0.5f;
    o.seed = 99;
    CHECK(qtc_merge_delta(ad, w, 1, 1, QTC_LIN_Q, &o, got, &err) == QTC_OK);
    int survivors = 0;
    for (int j = 0; j < n; j++) {
        CHECK_MSG(got[j] == 0 || fabs(got[j] - 2 * d[0][j]) <= 1e-5 * fabs(d[0][j]) + 1e-7, "entry %d: %g vs 2 * %g", j, got[j], d[0][j]);
        survivors += got[j] != 0;
    }
    CHECK_MSG(survivors > 0.4 * n && survivors < 0.6 * n, "%d of %d survive", survivors, n);
    float *again = malloc((size_t)n * sizeof *again);
    CHECK(qtc_merge_delta(ad, w, 1, 1, QTC_LIN_Q, &o, again, &err) == QTC_OK);
    CHECK(memcmp(got, again, (size_t)n * sizeof *got) == 0); /* seeded: repeatable */
    free(again);
    for (int i = 0; i < 3; i++) {
        free(d[i]);
        free(kept[i]);
        qtc_peft_free(ad[i]);
    }
    free(want);
    free(got);
    free(cat);
}

TEST(merged_model_logits_equal_the_base_with_its_adapter)
{
    qtc_error err;
    const char *base = shared_path("models/stories260K/stories260K.bin");
    qtc_model_file *f = qtc_model_open(base, &err);
    CHECK_MSG(f, "%s", err.msg);
    qtc_peft_config c = {.method = QTC_PEFT_LORA, .r = 4, .alpha = 8, .target = "all-linear"};
    qtc_peft *p = qtc_peft_new(&f->config, &c, 5, &err);
    CHECK(p);
    randomize(p, 123);
    char out[] = "/tmp/qtc-merged-XXXXXX.safetensors";
    int fd = mkstemps(out, 12);
    CHECK(fd >= 0);
    close(fd);
    qtc_merge_opts o = {QTC_MERGE_SUM, 1, 0};
    float one = 1;
    qtc_convert_summary s;
    CHECK_MSG(qtc_merge_model(f, &p, &one, 1, &o, out, QTC_FMT_SAFETENSORS, 0, NULL, &s, &err) == QTC_OK, "%s", err.msg);
    qtc_llama *merged = qtc_llama_load(out, &err), *with = qtc_llama_from_model(f, &err);
    CHECK(merged && with);
    qtc_peft_attach(p, with);
    int32_t tok[12] = {1, 403, 261, 378, 274, 260, 307, 281, 359, 318, 262, 280};
    qtc_tensor ids = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(1, 12), tok);
    qtc_graph *g1 = qtc_graph_new(&err), *g2 = qtc_graph_new(&err);
    qtc_graph_set_recording(g1, 0);
    qtc_graph_set_recording(g2, 0);
    qtc_tensor *a = qtc_llama_forward(merged, g1, &ids, 0), *b = qtc_llama_forward(with, g2, &ids, 0);
    int64_t n = qtc_tensor_numel(a);
    double *want = malloc((size_t)n * sizeof *want), scale = 0;
    for (int64_t i = 0; i < n; i++) {
        want[i] = ((float *)b->data)[i];
        scale = fmax(scale, fabs(want[i]));
    }
    CHECK_CLOSE("merged logits", (const float *)a->data, want, n, 1e-4, 1e-4 * scale);
    free(want);
    /* an adapter for a model that is not this one is refused, and nothing is written */
    qtc_llama_config other = f->config;
    other.hidden = 2 * other.hidden;
    qtc_peft *q = qtc_peft_new(&other, &c, 5, &err);
    unlink(out);
    CHECK(qtc_merge_model(f, &q, &one, 1, &o, out, QTC_FMT_SAFETENSORS, 0, NULL, &s, &err) == QTC_ERR_INPUT);
    CHECK(access(out, F_OK) != 0);
    qtc_peft_free(q);
    qtc_graph_free(g1);
    qtc_graph_free(g2);
    qtc_llama_free(merged);
    qtc_llama_free(with);
    qtc_peft_free(p);
    qtc_model_close(f);
}

TEST(sft_jsonl_masks_the_loss_to_responses)
{
    qtc_error err;
    qtc_tokenizer *t = qtc_tokenizer_load_llama2c(shared_path("models/stories260K/tok512.bin"), 512, &err);
    CHECK(t);
    char path[] = "/tmp/qtc-sft-XXXXXX.jsonl";
    int fd = mkstemps(path, 6);
    CHECK(fd >= 0);
    const char *text = "{\"prompt\": \"Once upon a time\", \"response\": \"there was a cat.\"}\n\n"
                       "{\"prompt\": \"Lily said\", \"response\": \"hello\"}\n";
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    qtc_tokens d;
    CHECK_MSG(qtc_tokens_load(t, path, 512, &d, &err) == QTC_OK, "%s", err.msg);
    CHECK(d.loss_mask);
    int32_t p1[64], r1[64];
    int64_t np = qtc_tokenizer_encode(t, "Once upon a time", 0, 0, p1, 64, &err);
    int64_t nr = qtc_tokenizer_encode(t, "there was a cat.", 0, 0, r1, 64, &err);
    CHECK(d.ids[0] == qtc_tokenizer_bos(t) && d.loss_mask[0] == 0);
    for (int64_t i = 0; i < np; i++)
        CHECK(d.ids[1 + i] == p1[i] && d.loss_mask[1 + i] == 0);
    for (int64_t i = 0; i < nr; i++)
        CHECK(d.ids[1 + np + i] == r1[i] && d.loss_mask[1 + np + i] == 1);
    CHECK(d.ids[1 + np + nr] == qtc_tokenizer_eos(t) && d.loss_mask[1 + np + nr] == 1);
    /* the batch's targets are -1 wherever the mask is 0 */
    int32_t tok[4 * 5], tgt[4 * 5];
    qtc_train_batch(&d, 4, 5, 1, 0, tok, tgt);
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < 5; i++) {
            int64_t s = -1; /* find the window's start */
            for (int64_t k = 0; k + 5 < d.n && s < 0; k++)
                if (memcmp(d.ids + k, tok + b * 5, 5 * sizeof *tok) == 0)
                    s = k;
            CHECK(s >= 0);
            CHECK(tgt[b * 5 + i] == (d.loss_mask[s + 1 + i] ? d.ids[s + 1 + i] : -1));
        }
    qtc_tokens_free(&d);
    FILE *f = fopen(path, "w");
    fputs("{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": 3}\n", f);
    fclose(f);
    CHECK(qtc_tokens_load(t, path, 512, &d, &err) == QTC_ERR_INPUT && strstr(err.msg, "line 2"));
    unlink(path);
    qtc_tokenizer_free(t);
}

/* --- frozen bases: mapped, f16, quantized embedding and head ----------------------------- */

TEST(quantized_embedding_and_fused_head_match_the_f32_ops_on_the_dequantized_table)
{
    qtc_error err;
    enum { V = 301, D = 64, B = 2, T = 9 }; /* V is no multiple of the tiles below */
    float *w = malloc((size_t)V * D * sizeof *w);
    fill_uniform(w, (int64_t)V * D, 31, -1, 1);
    qtc_qscheme nf4;
    qtc_qscheme_parse("nf4", &nf4);
    const struct { const qtc_qscheme *s; qtc_dtype t; } types[] = {{&nf4, QTC_F32}, {NULL, QTC_Q8_0}, {NULL, QTC_F16}};
    int32_t ids[B * T], tg[B * T];
    for (int i = 0; i < B * T; i++) {
        ids[i] = (int32_t)((i * 97 + 13) % V);
        tg[i] = i % 5 == 3 ? -1 : (int32_t)((i * 53 + 7) % V); /* some ignored */
    }
    qtc_tensor idt = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(B, T), ids), tgt = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(B, T), tg);
    for (size_t k = 0; k < sizeof types / sizeof *types; k++) {
        qtc_qmatrix q;
        CHECK_MSG(qtc_qmatrix_quantize(w, V, D, types[k].s, types[k].t, &q, &err) == QTC_OK, "%s", err.msg);
        qtc_tensor *wd = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(V, D), &err);
        qtc_qmatrix_rows(&q, 0, V, wd->data);
        qtc_graph *g = qtc_graph_new(&err), *g2 = qtc_graph_new(&err);
        /* the looked-up rows are exactly the dequantized table's */
        qtc_tensor *e = qtc_qembedding(g, &q, &idt), *e2 = qtc_embedding(g2, wd, &idt);
        CHECK(e && e->ndim == 3 && e->ne[2] == D && memcmp(e->data, e2->data, sizeof(float) * B * T * D) == 0);
        for (int64_t tile = 0; tile <= 37; tile += 37) { /* the default (one tile) and 9 tiles */
            qtc_graph_reset(g);
            qtc_graph_reset(g2);
            qtc_tensor *x = qtc_tensor_new(QTC_F32, 3, QTC_SHAPE(B, T, D), &err),
                       *x2 = qtc_tensor_new(QTC_F32, 3, QTC_SHAPE(B, T, D), &err);
            fill_uniform(x->data, B * T * D, 32, -1, 1);
            memcpy(x2->data, x->data, sizeof(float) * B * T * D);
            CHECK(qtc_tensor_require_grad(x, &err) == QTC_OK && qtc_tensor_require_grad(x2, &err) == QTC_OK);
            qtc_tensor *l = qtc_qlinear_cross_entropy(g, x, &q, &tgt, tile), *l2 = qtc_linear_cross_entropy(g2, x2, wd, &tgt, 0);
            CHECK(l && l2);
            double want = ((float *)l2->data)[0];
            CHECK_CLOSE("fused quantized head loss", (const float *)l->data, &want, 1, 1e-6, 0);
            CHECK(qtc_graph_backward(g, l, &err) == QTC_OK && qtc_graph_backward(g2, l2, &err) == QTC_OK);
            double *dx = to_double(x2->grad);
            CHECK_CLOSE("x gradient", (const float *)x->grad->data, dx, B * T * D, 1e-5, 1e-7);
            free(dx);
            qtc_tensor_free(x);
            qtc_tensor_free(x2);
        }
        /* every target ignored: the loss is 0 and the backward adds nothing */
        int32_t none[B * T];
        for (int i = 0; i < B * T; i++)
            none[i] = -1;
        qtc_tensor nt = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(B, T), none);
        qtc_graph_reset(g);
        qtc_tensor *x = qtc_tensor_new(QTC_F32, 3, QTC_SHAPE(B, T, D), &err);
        CHECK(qtc_tensor_require_grad(x, &err) == QTC_OK);
        qtc_tensor *l = qtc_qlinear_cross_entropy(g, x, &q, &nt, 0);
        CHECK(l && ((float *)l->data)[0] == 0.0f && qtc_graph_backward(g, l, &err) == QTC_OK);
        for (int64_t i = 0; i < B * T * D; i++)
            CHECK(((float *)x->grad->data)[i] == 0.0f);
        qtc_tensor_free(x);
        qtc_graph_free(g);
        qtc_graph_free(g2);
        qtc_tensor_free(wd);
        qtc_qmatrix_free(&q);
    }
    free(w);
}

/* One training step's loss (fused head) and the adapter's gradients. */
static float train_step(qtc_llama *m, qtc_peft *p, qtc_graph *g, const qtc_tensor *tok, const qtc_tensor *tg)
{
    qtc_error err;
    qtc_tensor *ps[512];
    int n = qtc_peft_params(p, ps, 512);
    for (int i = 0; i < n; i++)
        qtc_tensor_zero_grad(ps[i]);
    qtc_graph_reset(g);
    qtc_graph_set_recording(g, 1);
    qtc_lm_loss loss = {m, NULL, NULL, NULL, NULL, 1};
    qtc_tensor *l = qtc_lm_loss_fn(&loss, g, tok, tg);
    if (!l || qtc_graph_backward(g, l, &err) != QTC_OK)
        return NAN;
    return ((float *)l->data)[0];
}

static void step_tokens(int32_t *tok, int32_t *tg, int n, int vocab)
{
    for (int i = 0; i < n; i++) {
        tok[i] = (int32_t)((i * 37 + 5) % vocab);
        tg[i] = (int32_t)((i * 37 + 42) % vocab);
    }
}

TEST(lora_on_a_mapped_f32_base_is_bit_identical_to_the_copied_base)
{
    qtc_error err;
    qtc_model_file *f = qtc_model_open(shared_path("models/stories260K-hf"), &err);
    CHECK_MSG(f, "%s", err.msg);
    qtc_peft_config c = {.method = QTC_PEFT_LORA, .r = 4, .alpha = 8, .target = "all-linear"};
    qtc_peft *pa = qtc_peft_new(&f->config, &c, 5, &err), *pb = qtc_peft_new(&f->config, &c, 5, &err);
    CHECK(pa && pb);
    randomize(pa, 77);
    randomize(pb, 77);
    qtc_llama *a = qtc_llama_from_model(f, &err), *b = qtc_peft_load_frozen(pb, f, NULL, NULL, &err);
    CHECK_MSG(a && b, "%s", err.msg);
    qtc_model_close(f); /* b and pb hold the file: its mapping outlives the opener's close */
    /* every frozen weight of b views the mapping; a's are copies */
    qtc_tensor *wa[128], *wb[128];
    int n = qtc_llama_params(a, wa, 128);
    CHECK(qtc_llama_params(b, wb, 128) == n);
    for (int i = 0; i < n; i++) {
        CHECK(qtc_tensor_owns_data(wa[i]) && !qtc_tensor_owns_data(wb[i]));
        CHECK(!(wb[i]->flags & QTC_TENSOR_REQUIRES_GRAD) && !wb[i]->grad); /* no gradient for frozen weights */
    }
    qtc_peft_attach(pa, a);
    qtc_peft_attach(pb, b);
    enum { B = 2, T = 12 };
    int32_t tok[B * T], tg[B * T];
    step_tokens(tok, tg, B * T, 512);
    qtc_tensor tt = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(B, T), tok), gt = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(B, T), tg);
    qtc_graph *g = qtc_graph_new(&err);
    float la = train_step(a, pa, g, &tt, &gt), lb = train_step(b, pb, g, &tt, &gt);
    CHECK_MSG(memcmp(&la, &lb, sizeof la) == 0, "loss %.9g on the copies, %.9g on the mapping", la, lb);
    qtc_tensor *ga[512], *gb[512];
    int np = qtc_peft_params(pa, ga, 512);
    qtc_peft_params(pb, gb, 512);
    for (int i = 0; i < np; i++)
        CHECK_MSG(memcmp(ga[i]->grad->data, gb[i]->grad->data, qtc_tensor_nbytes(ga[i])) == 0, "gradient %d differs", i);
    qtc_graph_free(g);
    qtc_llama_free(a);
    qtc_llama_free(b);
    qtc_peft_free(pa);
    qtc_peft_free(pb);
}

/* stories260K-hf written with every matrix in f16 (norms stay f32), at path. */
static int write_f16_model(char *path)
{
    qtc_error err;
    int fd = mkstemps(path, 12);
    if (fd < 0)
        return 0;
    close(fd);
    qtc_model_file *f = qtc_model_open(shared_path("models/stories260K-hf"), &err);
    qtc_target to = {0, QTC_F16, {0}};
    qtc_convert_summary s;
    int ok = f && qtc_convert(f, path, QTC_FMT_SAFETENSORS, 0, &to, NULL, 0, NULL, &s, &err) == QTC_OK;
    qtc_model_close(f);
    return ok;
}

TEST(an_f16_base_is_used_as_stored_and_matches_its_f32_conversion)
{
    qtc_error err;
    char path[] = "/tmp/qtc-f16-XXXXXX.safetensors";
    CHECK(write_f16_model(path));
    qtc_model_file *f = qtc_model_open(path, &err);
    CHECK_MSG(f, "%s", err.msg);
    qtc_peft_config c = {.method = QTC_PEFT_LORA, .r = 4, .alpha = 8, .target = "all-linear"};
    qtc_peft *pa = qtc_peft_new(&f->config, &c, 5, &err), *pb = qtc_peft_new(&f->config, &c, 5, &err);
    randomize(pa, 78);
    randomize(pb, 78);
    qtc_llama *a = qtc_llama_from_model(f, &err), *b = qtc_peft_load_frozen(pb, f, NULL, NULL, &err);
    CHECK_MSG(a && b, "%s", err.msg);
    qtc_model_close(f);
    unlink(path); /* the mapping stays readable */
    /* b's matrices stay f16 views of the file: in the adapter's base and its embedding (tied head) */
    CHECK(!b->layers[0].wq && pb->base[0].dtype == QTC_F16 && pb->base[0].borrowed);
    CHECK(!b->embed && !b->output && pb->base_embed && pb->base_head == pb->base_embed && pb->base_embed->dtype == QTC_F16);
    qtc_peft_attach(pa, a);
    qtc_peft_attach(pb, b);
    enum { B = 2, T = 12 };
    int32_t tok[B * T], tg[B * T];
    step_tokens(tok, tg, B * T, 512);
    qtc_tensor tt = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(B, T), tok), gt = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(B, T), tg);
    qtc_graph *g = qtc_graph_new(&err), *g2 = qtc_graph_new(&err);
    /* logits through the linear hook (generation and evaluation) */
    qtc_graph_set_recording(g, 0);
    qtc_graph_set_recording(g2, 0);
    qtc_tensor *ya = qtc_llama_forward(a, g, &tt, 0), *yb = qtc_llama_forward(b, g2, &tt, 0);
    CHECK(ya && yb);
    double *want = to_double(ya);
    CHECK_CLOSE("logits", (const float *)yb->data, want, qtc_tensor_numel(ya), 1e-5, 1e-5);
    free(want);
    float la = train_step(a, pa, g, &tt, &gt), lb = train_step(b, pb, g2, &tt, &gt);
    double wl = la;
    CHECK_CLOSE("loss", &lb, &wl, 1, 1e-6, 0);
    qtc_tensor *ga[512], *gb[512];
    int np = qtc_peft_params(pa, ga, 512);
    qtc_peft_params(pb, gb, 512);
    for (int i = 0; i < np; i++) {
        double *gw = to_double(ga[i]->grad);
        /* the two heads' exps differ (libm's in the tiled head, the vector kernels' in
         * the f32 one): a few ulp per logit, up to ~5e-6 where a gradient cancels */
        CHECK_CLOSE("adapter gradient", (const float *)gb[i]->grad->data, gw, qtc_tensor_numel(ga[i]), 1e-4, 1e-5);
        free(gw);
    }
    /* generation reads the f16 table through the hooks too */
    const float *s1 = qtc_llama_step(a, g, 1, 0, &err);
    CHECK(s1);
    double *ws = malloc(512 * sizeof *ws);
    for (int i = 0; i < 512; i++)
        ws[i] = s1[i];
    const float *s2 = qtc_llama_step(b, g2, 1, 0, &err);
    CHECK(s2);
    CHECK_CLOSE("step logits", s2, ws, 512, 1e-5, 1e-5);
    free(ws);
    qtc_graph_free(g);
    qtc_graph_free(g2);
    qtc_llama_free(a);
    qtc_llama_free(b);
    qtc_peft_free(pa);
    qtc_peft_free(pb);
}

TEST(an_f16_model_with_a_nan_weight_is_refused_naming_the_tensor)
{
    qtc_error err;
    char path[] = "/tmp/qtc-f16n-XXXXXX.safetensors";
    CHECK(write_f16_model(path));
    qtc_model_file *f = qtc_model_open(path, &err);
    CHECK_MSG(f, "%s", err.msg);
    int i = qtc_model_find(f, "model.layers.1.mlp.up_proj.weight");
    CHECK(i >= 0 && f->tensors[i].dtype == QTC_F16);
    long off = (long)(f->tensors[i].data - f->inputs[f->tensors[i].input].data) + 2 * 7; /* element 7 */
    qtc_model_close(f);
    FILE *fp = fopen(path, "r+b");
    CHECK(fp && fseek(fp, off, SEEK_SET) == 0 && fputc(0x00, fp) != EOF && fputc(0x7e, fp) != EOF); /* f16 NaN, little endian */
    fclose(fp);
    f = qtc_model_open(path, &err);
    CHECK_MSG(f, "%s", err.msg);
    qtc_peft_config c = {.method = QTC_PEFT_LORA, .r = 4, .alpha = 8, .target = "all-linear"};
    qtc_peft *p = qtc_peft_new(&f->config, &c, 5, &err);
    CHECK(p);
    qtc_llama *m = qtc_peft_load_frozen(p, f, NULL, NULL, &err);
    CHECK(!m && err.code == QTC_ERR_NUMERIC);
    CHECK_MSG(strstr(err.msg, "model.layers.1.mlp.up_proj.weight") && strstr(err.msg, "element 7"), "%s", err.msg);
    qtc_peft_free(p);
    qtc_model_close(f);
    unlink(path);
}
