/* test_tensor.c: dtypes, f16/bf16 conversion, tensors, views, ownership, conversion. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qtc/rng.h"
#include "qtc/tensor.h"

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

TEST(f16_every_bit_pattern_roundtrips_through_f32)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = qtc_f16_to_f32((uint16_t)h);
        uint16_t back = qtc_f32_to_f16(f);
        CHECK_MSG(back == h, "f16 0x%04x -> %g -> 0x%04x", h, f, back);
        int nan = ((h & 0x7c00) == 0x7c00) && (h & 0x3ff);
        CHECK_MSG(nan == (int)isnan(f), "f16 0x%04x NaN-ness lost", h);
    }
}

/* Independent of the bit tricks: the value of an f16 pattern computed with ldexp. */
static double f16_value(uint16_t h)
{
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

TEST(f16_decodes_to_the_value_ldexp_gives)
{
    for (uint32_t h = 0; h < 65536; h++) {
        double want = f16_value((uint16_t)h), got = qtc_f16_to_f32((uint16_t)h);
        if (isnan(want))
            CHECK(isnan(got));
        else
            CHECK_MSG(got == want, "f16 0x%04x: got %g want %g", h, got, want);
    }
}

/* The compiler's _Float16 conversion is an independent round-to-nearest-even. */
static uint16_t compiler_f16(float f)
{
    _Float16 h = (_Float16)f;
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}

TEST(f16_rounding_matches_the_compilers_float16_at_every_midpoint)
{
    /* the exact midpoint between each pair of neighbours and one float ulp either side */
    for (uint32_t h = 0; h < 0x7c00; h++) {
        double lo = f16_value((uint16_t)h), hi = h + 1 < 0x7c00 ? f16_value((uint16_t)(h + 1)) : 65536.0;
        float mid = (float)((lo + hi) / 2);
        float probes[3] = {nextafterf(mid, 0), mid, nextafterf(mid, INFINITY)};
        for (int k = 0; k < 3; k++)
            for (int s = 0; s < 2; s++) {
                float f = s ? -probes[k] : probes[k];
                uint16_t got = qtc_f32_to_f16(f), want = compiler_f16(f);
                CHECK_MSG(got == want, "f32 %.9g (0x%08x): got 0x%04x want 0x%04x", f, bits(f), got, want);
            }
    }
}

TEST(f16_rounding_matches_the_compilers_float16_on_random_floats)
{
    qtc_rng r;
    qtc_rng_seed(&r, 1);
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = (uint32_t)qtc_rng_u64(&r);
        float f = from_bits(u);
        if (isnan(f))
            continue;
        uint16_t got = qtc_f32_to_f16(f), want = compiler_f16(f);
        CHECK_MSG(got == want, "f32 0x%08x: got 0x%04x want 0x%04x", u, got, want);
    }
    CHECK(qtc_f32_to_f16(65519.99f) == 0x7bff);
    CHECK(qtc_f32_to_f16(65520.0f) == 0x7c00);
    CHECK(qtc_f32_to_f16(-INFINITY) == 0xfc00);
    CHECK((qtc_f32_to_f16(NAN) & 0x7c00) == 0x7c00 && (qtc_f32_to_f16(NAN) & 0x3ff));
}

TEST(bf16_every_bit_pattern_roundtrips_through_f32)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = qtc_bf16_to_f32((uint16_t)h);
        CHECK_MSG(qtc_f32_to_bf16(f) == h, "bf16 0x%04x", h);
    }
}

/* Reference: the nearer of the two bf16 neighbours in double, ties to the even one. */
static uint16_t ref_bf16(float f)
{
    uint32_t u = bits(f);
    uint16_t down = (uint16_t)(u >> 16), up = (uint16_t)(down + 1);
    double dd = fabs((double)f - (double)qtc_bf16_to_f32(down));
    double du = fabs((double)qtc_bf16_to_f32(up) - (double)f);
    if ((u & 0xffff) == 0)
        return down;
    if (isinf(qtc_bf16_to_f32(up)) || isnan(qtc_bf16_to_f32(up)))
        du = fabs(ldexp(1.0, 128) - fabs((double)f)); /* Inf sits where 2^128 would be */
    if (dd < du)
        return down;
    if (du < dd)
        return up;
    return (down & 1) ? up : down;
}

TEST(bf16_rounds_to_nearest_even_on_random_floats_and_keeps_nan)
{
    qtc_rng r;
    qtc_rng_seed(&r, 2);
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = (uint32_t)qtc_rng_u64(&r);
        if (i % 4 == 0)
            u = (u & 0xffff0000u) | 0x8000u; /* a tie */
        float f = from_bits(u);
        if (isnan(f)) {
            CHECK(isnan(qtc_bf16_to_f32(qtc_f32_to_bf16(f))));
            continue;
        }
        uint16_t got = qtc_f32_to_bf16(f), want = ref_bf16(f);
        CHECK_MSG(got == want, "f32 0x%08x: got 0x%04x want 0x%04x", u, got, want);
    }
    CHECK(isnan(qtc_bf16_to_f32(qtc_f32_to_bf16(from_bits(0x7f800001u))))); /* payload only in the low bits */
    CHECK(qtc_f32_to_bf16(INFINITY) == 0x7f80);
    CHECK(qtc_f32_to_bf16(from_bits(0x7f7fffffu)) == 0x7f80); /* FLT_MAX rounds up to Inf */
}

TEST(tensor_new_is_zeroed_contiguous_and_owned)
{
    qtc_error err;
    qtc_tensor *t = qtc_tensor_new(QTC_F32, 3, QTC_SHAPE(2, 3, 5), &err);
    CHECK(t);
    CHECK(qtc_tensor_numel(t) == 30 && qtc_tensor_nbytes(t) == 120);
    CHECK(t->nb[0] == 15 && t->nb[1] == 5 && t->nb[2] == 1);
    CHECK(qtc_tensor_is_contiguous(t) && qtc_tensor_owns_data(t));
    CHECK(((uintptr_t)t->data & 63) == 0);
    for (int i = 0; i < 30; i++)
        CHECK(((float *)t->data)[i] == 0.0f);
    qtc_tensor_free(t);
    qtc_tensor_free(NULL);
}

TEST(tensor_new_rejects_absurd_shapes_without_overflow)
{
    qtc_error err;
    qtc_tensor *t = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE((int64_t)1 << 40, (int64_t)1 << 40), &err);
    CHECK(!t && err.code == QTC_ERR_INPUT && strstr(err.msg, "absurd"));
    t = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(-1), &err);
    CHECK(!t && err.code == QTC_ERR_INPUT);
    t = qtc_tensor_new(QTC_F32, 5, QTC_SHAPE(1, 1, 1, 1, 1), &err);
    CHECK(!t && err.code == QTC_ERR_INPUT);
    t = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(0), &err); /* empty is fine */
    CHECK(t && qtc_tensor_nbytes(t) == 0);
    qtc_tensor_free(t);
}

static int released;
static void count_release(void *ctx, void *ptr, size_t size)
{
    (void)ptr;
    (void)size;
    released += *(int *)ctx;
}

TEST(a_borrowed_tensor_has_the_shape_and_strides_of_a_wrapped_one)
{
    qtc_error err;
    int32_t mem[24] = {0};
    qtc_tensor b = qtc_tensor_borrow(QTC_I32, 3, QTC_SHAPE(2, 3, 4), mem);
    qtc_tensor *w = qtc_tensor_wrap(QTC_I32, 3, QTC_SHAPE(2, 3, 4), mem, NULL, &err);
    CHECK(w && b.dtype == QTC_I32 && b.ndim == 3 && b.data == mem && !b.buf && !b.grad && b.flags == 0);
    CHECK(memcmp(b.ne, w->ne, sizeof b.ne) == 0 && memcmp(b.nb, w->nb, sizeof b.nb) == 0);
    CHECK(b.nb[0] == 12 && b.nb[1] == 4 && b.nb[2] == 1 && b.ne[3] == 1 && qtc_tensor_is_contiguous(&b));
    qtc_tensor_free(w);
}

TEST(views_share_memory_and_the_last_reference_releases_external_buffers)
{
    qtc_error err;
    float mem[24];
    for (int i = 0; i < 24; i++)
        mem[i] = (float)i;
    int one = 1;
    released = 0;
    qtc_buffer *b = qtc_buffer_new_external(mem, sizeof mem, count_release, &one, &err);
    CHECK(b);
    qtc_tensor *t = qtc_tensor_wrap(QTC_F32, 3, QTC_SHAPE(2, 3, 4), mem, b, &err);
    qtc_buffer_unref(b); /* the tensor holds its own reference */
    CHECK(t && !qtc_tensor_owns_data(t) && released == 0);

    qtc_tensor *s = qtc_tensor_view_slice(t, 1, 1, 2, &err); /* t[:, 1:3, :] */
    CHECK(s && s->ne[1] == 2 && !qtc_tensor_is_contiguous(s));
    CHECK(qtc_tensor_get(s, 0) == 4 && qtc_tensor_get(s, 8) == 16 && qtc_tensor_get(s, 15) == 23);

    qtc_tensor *tr = qtc_tensor_view_transpose(t, 1, 2, &err); /* (2, 4, 3) */
    CHECK(tr && tr->ne[1] == 4 && tr->ne[2] == 3);
    CHECK(qtc_tensor_get(tr, 1) == 4 && qtc_tensor_get(tr, 3) == 1 && qtc_tensor_get(tr, 12) == 12);

    qtc_tensor *rs = qtc_tensor_view_reshape(t, 2, QTC_SHAPE(6, 4), &err);
    CHECK(rs && rs->data == t->data && qtc_tensor_get(rs, 23) == 23);
    CHECK(!qtc_tensor_view_reshape(tr, 2, QTC_SHAPE(8, 3), &err) && err.code == QTC_ERR_USAGE);
    CHECK(!qtc_tensor_view_slice(t, 0, 1, 2, &err) && err.code == QTC_ERR_USAGE);

    /* a contiguous copy of the transposed view */
    qtc_tensor *c = qtc_tensor_convert(tr, QTC_F32, &err);
    CHECK(c && qtc_tensor_owns_data(c) && ((float *)c->data)[1] == 4 && ((float *)c->data)[3] == 1);

    qtc_tensor_free(t);
    qtc_tensor_free(s);
    qtc_tensor_free(tr);
    CHECK(released == 0);
    qtc_tensor_free(rs);
    CHECK(released == 1);
    qtc_tensor_free(c);
}

TEST(convert_to_integers_rounds_half_even_saturates_and_rejects_nan)
{
    qtc_error err;
    float v[8] = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, 300.0f, -300.0f, 127.49f};
    int8_t want[8] = {0, 2, 2, 0, -2, 127, -128, 127};
    qtc_tensor *t = qtc_tensor_wrap(QTC_F32, 1, QTC_SHAPE(8), v, NULL, &err);
    qtc_tensor *i8 = qtc_tensor_convert(t, QTC_I8, &err);
    CHECK(i8);
    CHECK(memcmp(i8->data, want, 8) == 0);
    qtc_tensor *back = qtc_tensor_convert(i8, QTC_BF16, &err);
    CHECK(back && qtc_tensor_get(back, 6) == -128);
    v[3] = NAN;
    qtc_tensor_set_name(t, "w");
    CHECK(!qtc_tensor_convert(t, QTC_I32, &err) && err.code == QTC_ERR_NUMERIC && strstr(err.msg, "'w'"));
    qtc_tensor *h = qtc_tensor_convert(t, QTC_F16, &err); /* NaN survives to a float type */
    CHECK(h && isnan(qtc_tensor_get(h, 3)) && qtc_tensor_get(h, 5) == 300);
    qtc_tensor_free(t);
    qtc_tensor_free(i8);
    qtc_tensor_free(back);
    qtc_tensor_free(h);
}

TEST(dtype_names_and_row_sizes)
{
    CHECK(qtc_dtype_from_name("BF16") == QTC_BF16 && qtc_dtype_from_name("nope") == -1);
    CHECK(qtc_dtype_row_size(QTC_F16, 172) == 344);
    CHECK(qtc_dtype_row_size(QTC_F32, -1) == SIZE_MAX);
    CHECK(qtc_dtype_info((qtc_dtype)99) == NULL);
}

TEST(errors_carry_code_message_and_context)
{
    qtc_error err;
    qtc_error_clear(&err);
    CHECK(qtc_error_set(&err, QTC_ERR_INPUT, "tensor '%s': data ends at byte %d of %d", "w", 91234, 91000) == QTC_ERR_INPUT);
    qtc_error_prefix(&err, "%s", "model.safetensors");
    CHECK(strcmp(err.msg, "model.safetensors: tensor 'w': data ends at byte 91234 of 91000") == 0);
    CHECK(qtc_exit_code(QTC_ERR_INPUT) == 2 && qtc_exit_code(QTC_ERR_NUMERIC) == 4 &&
          qtc_exit_code(QTC_ERR_NOMEM) == 3 && qtc_exit_code(QTC_OK) == 0);
    CHECK(qtc_error_set(NULL, QTC_ERR_IO, "x") == QTC_ERR_IO);
}
