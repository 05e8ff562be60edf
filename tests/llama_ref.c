/* llama_ref.c: the double-precision llama of llama_ref.h. */
#include "llama_ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/rng.h"

void ref_from_llama(ref_llama *r, qtc_llama *m)
{
    qtc_tensor *ps[64];
    memset(r, 0, sizeof *r);
    r->c = m->c;
    r->n = qtc_llama_params(m, ps, 64);
    for (int i = 0; i < r->n; i++) {
        r->len[i] = qtc_tensor_numel(ps[i]);
        r->p[i] = malloc((size_t)r->len[i] * sizeof(double));
        for (int64_t j = 0; j < r->len[i]; j++)
            r->p[i][j] = ((float *)ps[i]->data)[j];
    }
}

void ref_free(ref_llama *r)
{
    for (int i = 0; i < r->n; i++)
        free(r->p[i]);
}

static void d_rmsnorm(const double *x, const double *w, double *y, int D, double eps)
{
    double ss = 0;
    for (int i = 0; i < D; i++)
        ss += x[i] * x[i];
    double k = 1 / sqrt(ss / D + eps);
    for (int i = 0; i < D; i++)
        y[i] = x[i] * k * w[i];
}

static void d_linear(const double *W, const double *x, double *y, int out, int in)
{
    for (int o = 0; o < out; o++) {
        double s = 0;
        for (int i = 0; i < in; i++)
            s += W[(int64_t)o * in + i] * x[i];
        y[o] = s;
    }
}

/* HF rotate-half rotation of each head of v at position pos */
static void d_rope(double *v, int n_head, int hd, int pos, double theta)
{
    for (int h = 0; h < n_head; h++)
        for (int i = 0; i < hd / 2; i++) {
            double a = pos * pow(theta, -2.0 * i / hd), *x = v + h * hd;
            double x0 = x[i], x1 = x[i + hd / 2];
            x[i] = x0 * cos(a) - x1 * sin(a);
            x[i + hd / 2] = x0 * sin(a) + x1 * cos(a);
        }
}

/* y = W x, plus LoRA's s B A x when the module has an adapter */
static void d_proj(const ref_peft *a, int slot, const double *W, const double *x, double *y, int out, int in)
{
    d_linear(W, x, y, out, in);
    if (!a || !a->A[slot])
        return;
    double *ax = malloc((size_t)a->r * sizeof *ax), *bax = malloc((size_t)out * sizeof *bax);
    d_linear(a->A[slot], x, ax, a->r, in);
    d_linear(a->B[slot], ax, bax, out, a->r);
    for (int o = 0; o < out; o++)
        y[o] += a->lora_scale * bax[o];
    free(ax);
    free(bax);
}

/* a sublayer's output o becomes o + U silu(D o + d) + u under a bottleneck adapter */
static void d_bottleneck(const ref_peft *a, int slot, double *o, int D)
{
    if (!a || !a->down[slot])
        return;
    double *h = malloc((size_t)a->r * sizeof *h), *y = malloc((size_t)D * sizeof *y);
    d_linear(a->down[slot], o, h, a->r, D);
    for (int i = 0; i < a->r; i++) {
        double z = h[i] + a->down_b[slot][i];
        h[i] = z / (1 + exp(-z));
    }
    d_linear(a->up[slot], h, y, D, a->r);
    for (int i = 0; i < D; i++)
        o[i] += y[i] + a->up_b[slot][i];
    free(h);
    free(y);
}

double *ref_forward(const ref_llama *r, const int32_t *tok, int T)
{
    const ref_peft *a = r->peft;
    const int NP = a ? a->prefix_len : 0;
    const qtc_llama_config *c = &r->c;
    int D = c->dim, H = c->hidden, nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim, V = c->vocab;
    /* parameter order: embed, then per layer 9 (attn_norm wq wk wv wo ffn_norm gate up down), norm, [output] */
    const double *E = r->p[0], *nw = r->p[1 + 9 * c->n_layers];
    const double *W = r->n > 2 + 9 * c->n_layers ? r->p[2 + 9 * c->n_layers] : E;
    double *x = calloc((size_t)T * D, sizeof *x), *h = malloc((size_t)D * sizeof *h);
    double *q = malloc((size_t)T * nh * hd * sizeof *q), *k = malloc((size_t)T * nkv * hd * sizeof *k);
    double *v = malloc((size_t)T * nkv * hd * sizeof *v), *att = malloc((size_t)nh * hd * sizeof *att);
    double *g = malloc((size_t)H * sizeof *g), *u = malloc((size_t)H * sizeof *u), *o = malloc((size_t)D * sizeof *o);
    double *sc = malloc((size_t)(T + NP) * sizeof *sc), *logits = malloc((size_t)T * V * sizeof *logits);
    for (int t = 0; t < T; t++)
        memcpy(x + (int64_t)t * D, E + (int64_t)tok[t] * D, (size_t)D * sizeof *x);
    for (int l = 0; l < c->n_layers; l++) {
        double *const *P = r->p + 1 + 9 * l;
        const double *an = P[0], *wq = P[1], *wk = P[2], *wv = P[3], *wo = P[4], *fn = P[5], *wg = P[6], *wu = P[7],
                     *wd = P[8];
        for (int t = 0; t < T; t++) {
            d_rmsnorm(x + (int64_t)t * D, an, h, D, c->norm_eps);
            d_proj(a, 7 * l + 0, wq, h, q + (int64_t)t * nh * hd, nh * hd, D);
            d_proj(a, 7 * l + 1, wk, h, k + (int64_t)t * nkv * hd, nkv * hd, D);
            d_proj(a, 7 * l + 2, wv, h, v + (int64_t)t * nkv * hd, nkv * hd, D);
            d_rope(q + (int64_t)t * nh * hd, nh, hd, t, c->rope_theta);
            d_rope(k + (int64_t)t * nkv * hd, nkv, hd, t, c->rope_theta);
        }
        for (int t = 0; t < T; t++) {
            for (int hh = 0; hh < nh; hh++) {
                int kvh = hh / (nh / nkv);
                double mx = -1e300, sum = 0;
                /* key j < NP is prefix key j (not rotated), then the window's keys 0..t */
                for (int j = 0; j <= t + NP; j++) {
                    const double *kj = j < NP ? a->pk[l] + ((int64_t)j * nkv + kvh) * hd : k + ((int64_t)(j - NP) * nkv + kvh) * hd;
                    double s = 0;
                    for (int i = 0; i < hd; i++)
                        s += q[((int64_t)t * nh + hh) * hd + i] * kj[i];
                    sc[j] = s / sqrt((double)hd);
                    mx = fmax(mx, sc[j]);
                }
                for (int j = 0; j <= t + NP; j++)
                    sum += (sc[j] = exp(sc[j] - mx));
                for (int i = 0; i < hd; i++) {
                    double acc = 0;
                    for (int j = 0; j <= t + NP; j++)
                        acc += sc[j] / sum * (j < NP ? a->pv[l][((int64_t)j * nkv + kvh) * hd + i] : v[((int64_t)(j - NP) * nkv + kvh) * hd + i]);
                    att[hh * hd + i] = acc;
                }
            }
            d_proj(a, 7 * l + 3, wo, att, o, D, nh * hd);
            d_bottleneck(a, 2 * l, o, D);
            for (int i = 0; i < D; i++)
                x[(int64_t)t * D + i] += o[i];
            d_rmsnorm(x + (int64_t)t * D, fn, h, D, c->norm_eps);
            d_proj(a, 7 * l + 4, wg, h, g, H, D);
            d_proj(a, 7 * l + 5, wu, h, u, H, D);
            for (int i = 0; i < H; i++)
                g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            d_proj(a, 7 * l + 6, wd, g, o, D, H);
            d_bottleneck(a, 2 * l + 1, o, D);
            for (int i = 0; i < D; i++)
                x[(int64_t)t * D + i] += o[i];
        }
    }
    for (int t = 0; t < T; t++) {
        d_rmsnorm(x + (int64_t)t * D, nw, h, D, c->norm_eps);
        d_linear(W, h, logits + (int64_t)t * V, V, D);
    }
    free(x); free(h); free(q); free(k); free(v); free(att); free(g); free(u); free(o); free(sc);
    return logits;
}

double ref_loss(const ref_llama *r, const int32_t *tok, const int32_t *tgt, int B, int T)
{
    int V = r->c.vocab;
    double total = 0;
    for (int b = 0; b < B; b++) {
        double *lg = ref_forward(r, tok + (int64_t)b * T, T);
        for (int t = 0; t < T; t++) {
            double mx = -1e300, s = 0;
            for (int j = 0; j < V; j++)
                mx = fmax(mx, lg[t * V + j]);
            for (int j = 0; j < V; j++)
                s += exp(lg[t * V + j] - mx);
            total += mx + log(s) - lg[t * V + tgt[(int64_t)b * T + t]];
        }
        free(lg);
    }
    return total / (B * T);
}

qtc_llama *test_random_llama(qtc_llama_config c, uint64_t seed)
{
    qtc_error err;
    return qtc_llama_new_random(&c, seed, 0.3f, &err);
}
