/* nf4.c: bitsandbytes' 4-bit NormalFloat with double quantization, computed as
 * its reference (default-backend) kernels do: absmax per block of 64 over the
 * flattened weight, x * (1 / absmax) clamped to [-1, 1], the code whose
 * bucket holds it (bucketize at the float midpoints of the sorted code, a
 * value on a midpoint going to the lower code); with double quantization the
 * absmax values minus their mean are quantized the same way to the signed
 * dynamic 8-bit map in blocks of 256. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/quant.h"
#include "quant_private.h"

const float qtc_nf4_code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
    -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
    0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
    0.7229568362236023f, 1.0f,
};

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* torch.linspace(0.1, 1, steps, float32) as its CPU kernel computes it: the
 * first half counted up from the start, the second half down from the end. */
static void linspace(float *out, int steps)
{
    const float start = 0.1f, end = 1.0f, step = (end - start) / (float)(steps - 1);
    for (int i = 0; i < steps; i++)
        out[i] = i < steps / 2 ? start + step * (float)i : end - step * (float)(steps - i - 1);
}

void qtc_dynamic_map(float map[256])
{
    /* create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) */
    int n = 0;
    float b[130];
    for (int i = 0; i < 7; i++) {
        int items = (1 << i) + 1; /* 2^(i + 7 - 7) + 1 fraction boundaries */
        linspace(b, items);
        float p = (float)pow(10.0, -6 + i);
        for (int j = 0; j + 1 < items; j++) {
            float mean = (b[j] + b[j + 1]) / 2.0f;
            map[n++] = p * mean;
            map[n++] = -(p * mean);
        }
    }
    /* additional_items = 2^(7 - 7) - 1 = 0: none */
    map[n++] = 0.0f;
    map[n++] = 1.0f;
    while (n < 256)
        map[n++] = 0.0f;
    qsort(map, 256, sizeof *map, cmp_float);
}

/* The number of midpoints strictly below v (torch.bucketize, right=False). */
static int bucket(float v, const float *mid, int n_mid)
{
    int lo = 0, hi = n_mid;
    while (lo < hi) {
        int m = (lo + hi) / 2;
        if (mid[m] < v)
            lo = m + 1;
        else
            hi = m;
    }
    return lo;
}

/* Blockwise: absmax per block (at least 1e-38) and the bucket of each scaled value. */
static void blockwise(const float *x, int64_t n, int64_t block, const float *code, int n_code, uint8_t *q,
                      float *absmax)
{
    float mid[255];
    for (int i = 0; i + 1 < n_code; i++)
        mid[i] = (code[i] + code[i + 1]) / 2;
    int64_t blocks = (n + block - 1) / block;
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t b0 = b * block, len = b0 + block <= n ? block : n - b0;
        float am = 0;
        for (int64_t j = 0; j < len; j++)
            am = fmaxf(am, fabsf(x[b0 + j]));
        absmax[b] = am;
        float inv = 1.0f / fmaxf(am, 1e-38f);
        for (int64_t j = 0; j < len; j++) {
            float v = x[b0 + j] * inv;
            v = v < -1 ? -1 : v > 1 ? 1 : v;
            q[b0 + j] = (uint8_t)bucket(v, mid, n_code - 1);
        }
    }
}

qtc_status nf4_quantize(const float *w, qtc_qweight *q)
{
    int64_t n = q->rows * q->cols;
    blockwise(w, n, q->s.group, qtc_nf4_code, 16, (uint8_t *)q->q, q->scale);
    if (!q->s.double_quant)
        return QTC_OK;
    double sum = 0;
    for (int64_t b = 0; b < q->n_blocks; b++)
        sum += q->scale[b];
    q->nested_offset = (float)(sum / (double)q->n_blocks);
    float *centered = malloc((size_t)q->n_blocks * sizeof *centered), map[256];
    if (!centered)
        return QTC_ERR_NOMEM;
    for (int64_t b = 0; b < q->n_blocks; b++)
        centered[b] = q->scale[b] - q->nested_offset;
    qtc_dynamic_map(map);
    blockwise(centered, q->n_blocks, 256, map, 256, q->absmax_q, q->nested_absmax);
    /* from here on the absmax values are the ones a reader reconstructs */
    for (int64_t b = 0; b < q->n_blocks; b++)
        q->scale[b] = map[q->absmax_q[b]] * q->nested_absmax[b / 256] + q->nested_offset;
    free(centered);
    return QTC_OK;
}

void nf4_dequantize(const qtc_qweight *q, float *w)
{
    int64_t n = q->rows * q->cols, block = q->s.group;
    const quant_vec_ops *qv = quant_vec();
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t b = 0; b < (n + block - 1) / block; b++) {
        int64_t i = b * block;
        qv->lut_bytes((const uint8_t *)q->q + i, qtc_nf4_code, q->scale[b], w + i, n - i < block ? n - i : block);
    }
}
