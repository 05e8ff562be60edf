/* test_quant.c: ggml block types against ggml's own output (golden files),
 * round-trip error bounds, special inputs and the fallback policy. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "harness.h"
#include "qtc/quant.h"
#include "quant_input.h"

static const qtc_dtype ggml_types[] = {QTC_Q4_0, QTC_Q4_1, QTC_Q5_0, QTC_Q5_1,
                                       QTC_Q8_0, QTC_Q4_K, QTC_Q5_K, QTC_Q6_K};
#define N_GGML_TYPES (sizeof ggml_types / sizeof *ggml_types)

/* Reads a whole file (decompressing a .zst) into a malloc'd buffer. */
static void *slurp(const char *path, size_t *size)
{
    char *buf = test_read_file(path, size);
    if (!buf)
        return NULL;
    size_t n = *size;
    size_t len = strlen(path);
    if (len > 4 && strcmp(path + len - 4, ".zst") == 0) {
        unsigned long long raw = ZSTD_getFrameContentSize(buf, (size_t)n);
        char *out = malloc(raw);
        *size = ZSTD_decompress(out, raw, buf, (size_t)n);
        free(buf);
        if (ZSTD_isError(*size)) {
            free(out);
            return NULL;
        }
        return out;
    }
    return buf;
}

static const char *golden(const char *type, const char *suffix)
{
    static char path[256];
    snprintf(path, sizeof path, "tests/golden/ggml-%s%s", type, suffix);
    return path;
}

TEST(ggml_block_quantizers_write_ggmls_reference_bytes)
{
    static float x[QUANT_INPUT_N];
    quant_input(x);
    for (size_t k = 0; k < N_GGML_TYPES; k++) {
        qtc_dtype t = ggml_types[k];
        const qtc_dtype_traits *tr = qtc_dtype_info(t);
        size_t want_size = 0;
        unsigned char *want = slurp(golden(tr->name, ".bin"), &want_size);
        CHECK_MSG(want, "missing %s", golden(tr->name, ".bin"));
        size_t size = qtc_dtype_row_size(t, QUANT_INPUT_N);
        CHECK(size == want_size);
        unsigned char *got = malloc(size);
        CHECK(qtc_quantize_row(t, x, got, QUANT_INPUT_N, NULL) == QTC_OK);
        for (size_t b = 0; b < size / (size_t)tr->type_size; b++) {
            size_t off = b * (size_t)tr->type_size;
            if (memcmp(got + off, want + off, (size_t)tr->type_size) != 0) {
                size_t i = off;
                while (got[i] == want[i])
                    i++;
                test_fail(__FILE__, __LINE__, "%s: block %zu differs from ggml's at byte %zu (0x%02x, want 0x%02x)",
                          tr->name, b, i - off, got[i], want[i]);
                free(got);
                free(want);
                return;
            }
        }
        free(got);
        free(want);
    }
}

TEST(ggml_block_dequantizers_give_ggmls_floats)
{
    for (size_t k = 0; k < N_GGML_TYPES; k++) {
        const qtc_dtype_traits *tr = qtc_dtype_info(ggml_types[k]);
        size_t qsize, fsize;
        unsigned char *q = slurp(golden(tr->name, ".bin"), &qsize);
        float *want = slurp(golden(tr->name, ".f32.zst"), &fsize);
        CHECK(q && want && fsize == QUANT_INPUT_N * sizeof(float));
        float *got = malloc(fsize);
        qtc_dequantize_row(ggml_types[k], q, got, QUANT_INPUT_N);
        for (int i = 0; i < QUANT_INPUT_N; i++)
            if (memcmp(&got[i], &want[i], 4) != 0) {
                test_fail(__FILE__, __LINE__, "%s: element %d: %.9g, ggml %.9g", tr->name, i, got[i], want[i]);
                break;
            }
        free(q);
        free(want);
        free(got);
    }
}

TEST(ggml_types_roundtrip_gaussian_weights_within_their_bit_width_bounds)
{
    /* measured relative RMS error on N(0, 1) rows, with headroom; a scheme
     * that got worse (or a broken packing) fails */
    static const struct {
        qtc_dtype t;
        double bound;
    } b[] = {{QTC_Q8_0, 0.006}, {QTC_Q6_K, 0.02}, {QTC_Q5_1, 0.045}, {QTC_Q5_0, 0.05},
             {QTC_Q5_K, 0.04}, {QTC_Q4_1, 0.09}, {QTC_Q4_0, 0.10}, {QTC_Q4_K, 0.085}};
    enum { N = 4096 };
    static float x[N], y[N];
    qtc_rng r;
    qtc_rng_seed(&r, 99);
    for (int i = 0; i < N; i++)
        x[i] = (float)qtc_rng_normal(&r);
    unsigned char *q = malloc(N * 4);
    double last = 0;
    for (size_t k = 0; k < sizeof b / sizeof *b; k++) {
        CHECK(qtc_quantize_row(b[k].t, x, q, N, NULL) == QTC_OK);
        qtc_dequantize_row(b[k].t, q, y, N);
        qtc_quant_error e = qtc_quant_error_of(x, y, N);
        CHECK_MSG(e.rms_rel < b[k].bound && e.rms_rel > b[k].bound / 4,
                  "%s: relative RMS error %.4f, bound %.4f", qtc_dtype_info(b[k].t)->name, e.rms_rel, b[k].bound);
        if (k == 0)
            last = e.rms_rel;
    }
    CHECK(last > 0);
    free(q);
}

TEST(quantizing_nan_or_inf_is_a_numeric_error_naming_tensor_and_element)
{
    qtc_error err;
    qtc_tensor *t = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(4, 64), &err);
    qtc_tensor_set_name(t, "model.layers.0.mlp.up_proj.weight");
    ((float *)t->data)[130] = NAN;
    CHECK(!qtc_tensor_quantize(t, QTC_Q8_0, &err));
    CHECK(err.code == QTC_ERR_NUMERIC && strstr(err.msg, "up_proj") && strstr(err.msg, "element 130"));
    ((float *)t->data)[130] = INFINITY;
    CHECK(!qtc_tensor_quantize(t, QTC_Q4_0, &err) && strstr(err.msg, "infinite"));
    ((float *)t->data)[130] = 0;
    qtc_tensor *q = qtc_tensor_quantize(t, QTC_Q4_0, &err); /* all zeros: d = 0, no division by zero */
    CHECK(q && qtc_tensor_nbytes(q) == 4 * 2 * 18);
    qtc_tensor *back = qtc_tensor_to_f32(q, &err);
    for (int i = 0; i < 256; i++)
        CHECK(((float *)back->data)[i] == 0.0f);
    qtc_tensor_free(q);
    qtc_tensor_free(back);
    qtc_tensor_free(t);
}

TEST(block_types_fall_back_to_the_nearest_type_that_fits_the_rows)
{
    CHECK(qtc_dtype_fallback(QTC_Q4_K, 4096) == QTC_Q4_K);
    CHECK(qtc_dtype_fallback(QTC_Q4_K, 288) == QTC_Q5_0);
    CHECK(qtc_dtype_fallback(QTC_Q5_K, 64) == QTC_Q5_1);
    CHECK(qtc_dtype_fallback(QTC_Q6_K, 96) == QTC_Q8_0);
    CHECK(qtc_dtype_fallback(QTC_Q8_0, 172) == QTC_F16);
    CHECK(qtc_dtype_fallback(QTC_Q4_K, 172) == QTC_F16);
    CHECK(qtc_dtype_fallback(QTC_F32, 3) == QTC_F32);
}

TEST(bits_per_weight_and_ggml_ids_are_ggmls)
{
    CHECK(qtc_dtype_bpw(QTC_Q4_0) == 4.5 && qtc_dtype_bpw(QTC_Q4_K) == 4.5);
    CHECK(qtc_dtype_bpw(QTC_Q6_K) == 6.5625 && qtc_dtype_bpw(QTC_Q8_0) == 8.5 && qtc_dtype_bpw(QTC_Q5_K) == 5.5);
    CHECK(qtc_dtype_to_ggml(QTC_Q8_0) == 8 && qtc_dtype_to_ggml(QTC_BF16) == 30 && qtc_dtype_to_ggml(QTC_Q6_K) == 14);
    CHECK(qtc_dtype_from_ggml(12) == QTC_Q4_K && qtc_dtype_from_ggml(16) == -1);
}

TEST(tensor_quantize_reads_strided_and_half_inputs)
{
    qtc_error err;
    qtc_tensor *t = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(32, 64), &err);
    qtc_rng r;
    qtc_rng_seed(&r, 4);
    qtc_rng_fill_normal(&r, t, 0, 1);
    qtc_tensor *tt = qtc_tensor_view_transpose(t, 0, 1, &err); /* (64, 32), strided */
    qtc_tensor *c = qtc_tensor_convert(tt, QTC_F32, &err);     /* the same, contiguous */
    qtc_tensor *a = qtc_tensor_quantize(tt, QTC_Q8_0, &err), *b = qtc_tensor_quantize(c, QTC_Q8_0, &err);
    CHECK(a && b && memcmp(a->data, b->data, qtc_tensor_nbytes(a)) == 0);
    qtc_tensor *h = qtc_tensor_convert(c, QTC_BF16, &err);
    qtc_tensor *hq = qtc_tensor_quantize(h, QTC_F16, &err);
    CHECK(hq && hq->dtype == QTC_F16 && fabs(qtc_tensor_get(hq, 5) - qtc_tensor_get(h, 5)) < 1e-2);
    qtc_tensor_free(t);
    qtc_tensor_free(tt);
    qtc_tensor_free(c);
    qtc_tensor_free(a);
    qtc_tensor_free(b);
    qtc_tensor_free(h);
    qtc_tensor_free(hq);
}

/* --- integer and NF4 schemes ------------------------------------------------------- */

TEST(scheme_names_parse_and_print_back)
{
    const char *names[] = {"int8", "int8-tensor", "int4-g32", "int4-g64-asym", "int8-g128", "int3-g32",
                           "int2-g64-asym", "int8-tensor-asym", "nf4", "nf4-single"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        qtc_qscheme s;
        char back[64];
        CHECK_MSG(qtc_qscheme_parse(names[i], &s) == 0, "%s", names[i]);
        qtc_qscheme_name(&s, back, sizeof back);
        CHECK_MSG(strcmp(back, names[i]) == 0, "%s printed as %s", names[i], back);
    }
    qtc_qscheme s;
    CHECK(qtc_qscheme_parse("int9", &s) != 0 && qtc_qscheme_parse("int4-g0", &s) != 0 &&
          qtc_qscheme_parse("int4-gx", &s) != 0 && qtc_qscheme_parse("q4_0", &s) != 0);
    qtc_qscheme_parse("int4-g32", &s);
    CHECK(fabs(qtc_qscheme_bpw(&s, 64, 64) - 5.0) < 1e-12); /* 4 bits + an f32 scale per 32 */
    qtc_qscheme_parse("nf4", &s);
    CHECK(fabs(qtc_qscheme_bpw(&s, 4096, 4096) - (4 + (8 + 32.0 / 256) / 64)) < 1e-9); /* 4.127 */
}

TEST(int_qparams_are_pytorchs_minmax_observer_values)
{
    float x[5] = {-1.0f, 0.25f, 3.0f, 0.5f, -0.5f};
    float s;
    int z;
    qtc_int_qparams(x, 5, 8, 1, &s, &z); /* max |x| / 127.5 */
    CHECK(s == 3.0f / 127.5f && z == 0);
    qtc_int_qparams(x, 5, 8, 0, &s, &z); /* (3 - -1) / 255, z = -128 - round(-1 / s) */
    CHECK(s == 4.0f / 255.0f && z == -128 - (int)nearbyintf(-1.0f / s));
    float pos[3] = {1.0f, 2.0f, 4.0f}; /* the range is widened to include 0 */
    qtc_int_qparams(pos, 3, 4, 0, &s, &z);
    CHECK(s == 4.0f / 15.0f && z == -8);
    float zeros[4] = {0};
    qtc_int_qparams(zeros, 4, 4, 1, &s, &z);
    CHECK(s == FLT_EPSILON && z == 0);
    /* rounding half to even through the float reciprocal, clamped (the QAT boundary cases) */
    CHECK(qtc_int_quantize_one(63.7f, 2.0f, 0, 8) == 127 && qtc_int_quantize_one(63.75f, 2.0f, 0, 8) == 127);
    CHECK(qtc_int_quantize_one(-64.25f, 2.0f, 0, 8) == -128 && qtc_int_quantize_one(-64.3f, 2.0f, 0, 8) == -128);
    CHECK(qtc_int_quantize_one(0.25f, 2.0f, 0, 8) == 0 && qtc_int_quantize_one(0.75f, 2.0f, 0, 8) == 2);
    CHECK(qtc_int_quantize_one(1e30f, 1e10f, 3, 4) == 7 && qtc_int_quantize_one(-1e30f, 1e10f, 3, 4) == -8);
}

/* The same quantization written plainly in double precision: scale and zero
 * point per group, q = clamp(round(x / s) + z). Equal to qtc's except where
 * x / s sits within 1e-4 of a rounding tie (float and double may disagree). */
static int int_matches_reference(const float *w, int64_t rows, int64_t cols, const qtc_qscheme *s, const qtc_qweight *q)
{
    int qmin = QTC_QMIN(s->bits), qmax = QTC_QMAX(s->bits);
    int64_t g = s->group > 0 ? s->group : s->group == 0 ? cols : rows * cols;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c0 = 0; c0 < cols; c0 += g) {
            const float *x = s->group < 0 ? w : w + r * cols + c0;
            int64_t len = s->group < 0 ? rows * cols : (c0 + g <= cols ? g : cols - c0);
            double lo = 0, hi = 0;
            for (int64_t j = 0; j < len; j++) {
                lo = fmin(lo, x[j]);
                hi = fmax(hi, x[j]);
            }
            double sc = s->symmetric ? fmax(-lo, hi) / ((qmax - qmin) / 2.0) : (hi - lo) / (qmax - qmin);
            sc = fmax(sc, FLT_EPSILON);
            double z = s->symmetric ? 0 : fmin(qmax, fmax(qmin, qmin - nearbyint(lo / sc)));
            for (int64_t j = 0; j < len; j++) {
                double t = x[j] / sc;
                int want = (int)fmin(qmax, fmax(qmin, nearbyint(t) + z));
                int64_t at = s->group < 0 ? j : r * cols + c0 + j;
                if (q->q[at] != want && fabs(fabs(t - floor(t)) - 0.5) > 1e-4) {
                    test_fail(__FILE__, __LINE__, "element %lld: q %d, reference %d (x/s = %.6f)", (long long)at, q->q[at], want, t);
                    return 0;
                }
            }
            if (s->group < 0)
                return 1;
        }
    return 1;
}

TEST(int_schemes_match_a_double_reference_with_partial_last_groups)
{
    const char *names[] = {"int8", "int8-tensor", "int8-tensor-asym", "int4-g32", "int4-g32-asym", "int4-g64",
                           "int4-g128-asym", "int3-g32", "int2-g32-asym", "int8-g32"};
    enum { R = 7, C = 172 }; /* stories260K's down-projection width: 172 = 5 * 32 + 12 */
    static float w[R * C], back[R * C];
    qtc_rng r;
    qtc_rng_seed(&r, 17);
    for (int i = 0; i < R * C; i++)
        w[i] = (float)(qtc_rng_normal(&r) * (i % 13 == 0 ? 4 : 1) + (i % 5 == 0 ? 0.3 : 0));
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        qtc_qscheme s;
        qtc_qweight q;
        qtc_error err;
        CHECK(qtc_qscheme_parse(names[k], &s) == 0);
        CHECK_MSG(qtc_qweight_quantize(w, R, C, &s, &q, &err) == QTC_OK, "%s", err.msg);
        if (!int_matches_reference(w, R, C, &s, &q)) {
            test_fail(__FILE__, __LINE__, "%s", names[k]);
            qtc_qweight_free(&q);
            return;
        }
        qtc_qweight_dequantize(&q, back);
        /* every value is within half a step of its group's scale (unless clamped at qmax) */
        qtc_quant_error e = qtc_quant_error_of(w, back, R * C);
        double bound = 1.1 * 4.0 / (1 << s.bits) * (s.group < 0 ? 2.5 : 1.3);
        CHECK_MSG(e.rms_rel < bound, "%s: relative RMS error %.4f > %.4f", names[k], e.rms_rel, bound);
        qtc_qweight_free(&q);
    }
}

TEST(int_per_group_beats_per_channel_and_asymmetric_wins_on_skewed_rows)
{
    enum { R = 16, C = 256 };
    static float w[R * C], back[R * C];
    qtc_rng r;
    qtc_rng_seed(&r, 23);
    for (int i = 0; i < R * C; i++) /* an outlier every 128 values, and a positive skew */
        w[i] = (float)(fabs(qtc_rng_normal(&r)) + (i % 128 == 5 ? 12 : 0));
    double err[4];
    const char *names[4] = {"int4", "int4-g32", "int4-g32-asym", "int4-tensor"};
    for (int k = 0; k < 4; k++) {
        qtc_qscheme s;
        qtc_qweight q;
        qtc_qscheme_parse(names[k], &s);
        CHECK(qtc_qweight_quantize(w, R, C, &s, &q, NULL) == QTC_OK);
        qtc_qweight_dequantize(&q, back);
        err[k] = qtc_quant_error_of(w, back, R * C).rms_rel;
        qtc_qweight_free(&q);
    }
    CHECK_MSG(err[1] < err[0] && err[2] < err[1] && err[0] < err[3], "errors %g %g %g %g", err[0], err[1], err[2], err[3]);
}

TEST(nf4_codes_are_bitsandbytes_published_values)
{
    /* QLoRA's NF4 table as bitsandbytes hard-codes it */
    const double want[16] = {-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                             -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                             0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                             0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0};
    for (int i = 0; i < 16; i++)
        CHECK(qtc_nf4_code[i] == (float)want[i]);
    float map[256];
    qtc_dynamic_map(map);
    int zeros = 0;
    for (int i = 0; i < 256; i++) {
        if (i)
            CHECK(map[i] >= map[i - 1]);
        zeros += map[i] == 0.0f;
    }
    CHECK(map[255] == 1.0f && zeros == 1 && map[0] > -1.0f && map[0] < -0.99f);
    CHECK(fabsf(map[128] - 1e-6f * 0.55f) < 1e-9f); /* the smallest positive value: 1e-6 * mean(0.1, 1) */
}

TEST(nf4_picks_the_nearest_code_per_block_and_double_quant_keeps_absmax_close)
{
    enum { R = 12, C = 100 }; /* 1200 values: 18 full blocks of 64 and a partial one */
    static float w[R * C], back[R * C];
    qtc_rng r;
    qtc_rng_seed(&r, 31);
    for (int i = 0; i < R * C; i++)
        w[i] = (float)(0.02 * qtc_rng_normal(&r) * (1 + i / 300));
    qtc_qscheme single, dq;
    qtc_qscheme_parse("nf4-single", &single);
    qtc_qscheme_parse("nf4", &dq);
    qtc_qweight q;
    CHECK(qtc_qweight_quantize(w, R, C, &single, &q, NULL) == QTC_OK);
    CHECK(q.n_blocks == 19);
    for (int64_t b = 0; b < q.n_blocks; b++) {
        double am = 0;
        for (int64_t j = b * 64; j < (b + 1) * 64 && j < R * C; j++)
            am = fmax(am, fabs(w[j]));
        CHECK(q.scale[b] == (float)am);
        for (int64_t j = b * 64; j < (b + 1) * 64 && j < R * C; j++) { /* nearest code, in double */
            double v = w[j] / am, best = 1e9;
            int bi = 0;
            for (int c = 0; c < 16; c++)
                if (fabs(v - qtc_nf4_code[c]) < best) {
                    best = fabs(v - qtc_nf4_code[c]);
                    bi = c;
                }
            double gap = fabs(fabs(v - qtc_nf4_code[bi]) - fabs(v - qtc_nf4_code[(uint8_t)q.q[j]]));
            CHECK_MSG(q.q[j] == bi || gap < 1e-6, "element %lld: code %d, nearest %d", (long long)j, q.q[j], bi);
        }
    }
    qtc_qweight_dequantize(&q, back);
    double e_single = qtc_quant_error_of(w, back, R * C).rms_rel;
    qtc_qweight_free(&q);
    CHECK(qtc_qweight_quantize(w, R, C, &dq, &q, NULL) == QTC_OK);
    float map[256];
    qtc_dynamic_map(map);
    for (int64_t b = 0; b < q.n_blocks; b++) { /* the absmax a reader rebuilds, within the map's resolution */
        float rebuilt = map[q.absmax_q[b]] * q.nested_absmax[0] + q.nested_offset;
        CHECK(q.scale[b] == rebuilt);
    }
    qtc_qweight_dequantize(&q, back);
    double e_dq = qtc_quant_error_of(w, back, R * C).rms_rel;
    CHECK_MSG(e_single < 0.12 && e_dq < e_single * 1.05, "nf4 errors: single %g, double %g", e_single, e_dq);
    qtc_qweight_free(&q);
}
