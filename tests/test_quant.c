/* test_quant.c: ggml block types against ggml's own output (golden files),
 * round-trip error bounds, special inputs and the fallback policy. */
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
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    *size = (size_t)n;
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
