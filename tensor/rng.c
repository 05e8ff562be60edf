/* rng.c: xoshiro256** (Blackman and Vigna) with splitmix64 seeding. */
#include "qtc/rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void qtc_rng_seed(qtc_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t qtc_rng_u64(qtc_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float qtc_rng_uniform(qtc_rng *r)
{
    return (float)(qtc_rng_u64(r) >> 40) * (1.0f / 16777216.0f);
}

uint64_t qtc_rng_below(qtc_rng *r, uint64_t n)
{
    uint64_t limit = UINT64_MAX - UINT64_MAX % n; /* reject the uneven tail */
    uint64_t x;
    do
        x = qtc_rng_u64(r);
    while (x >= limit);
    return x % n;
}

double qtc_rng_normal(qtc_rng *r)
{
    /* u1 in (0, 1] so the log is finite */
    double u1 = ((double)(qtc_rng_u64(r) >> 11) + 1.0) * 0x1.0p-53;
    double u2 = (double)(qtc_rng_u64(r) >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void qtc_rng_fill_uniform(qtc_rng *r, qtc_tensor *t, float lo, float hi)
{
    float *x = t->data;
    int64_t n = qtc_tensor_numel(t);
    for (int64_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * qtc_rng_uniform(r);
}

void qtc_rng_fill_normal(qtc_rng *r, qtc_tensor *t, float mean, float std)
{
    float *x = t->data;
    int64_t n = qtc_tensor_numel(t);
    for (int64_t i = 0; i < n; i++)
        x[i] = mean + std * (float)qtc_rng_normal(r);
}

void qtc_rng_kaiming_uniform(qtc_rng *r, qtc_tensor *t, double a)
{
    int64_t fan_in = t->ndim ? t->ne[t->ndim - 1] : 1;
    float bound = (float)sqrt(6.0 / ((1.0 + a * a) * (double)(fan_in ? fan_in : 1)));
    qtc_rng_fill_uniform(r, t, -bound, bound);
}
