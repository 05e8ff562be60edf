/* llama.c: the llama family (RMSNorm, rotary embeddings in HF's rotate-half
 * layout, grouped-query attention, SwiGLU MLP, tied or separate output head)
 * built from qtc_graph ops, and token-by-token decoding with a KV cache.
 * Left out for now: biases (Mistral/Qwen2), rope scaling, sliding windows. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/model.h"
#include "qtc/rng.h"

/* A layer's nine weights in qtc_llama_params order: the norms by their
 * module paths, the projections by kind (the one table of their paths is
 * qtc_linear_path's). */
enum { LAYER_TENSORS = 9 };
static const int layer_kind[LAYER_TENSORS] = {-1, QTC_LIN_Q, QTC_LIN_K, QTC_LIN_V, QTC_LIN_O, -1, QTC_LIN_GATE, QTC_LIN_UP,
                                              QTC_LIN_DOWN};

static const char *layer_part(int k)
{
    return layer_kind[k] >= 0 ? qtc_linear_path((qtc_linear_kind)layer_kind[k])
                              : k == 0 ? "input_layernorm" : "post_attention_layernorm";
}

const char *qtc_linear_path(qtc_linear_kind kind)
{
    static const char *const path[QTC_N_LINEAR] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                    "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                    "mlp.down_proj"};
    return kind < QTC_N_LINEAR ? path[kind] : kind == QTC_LIN_EMBED ? "embed_tokens" : "lm_head";
}

const char *qtc_linear_weight_name(int layer, qtc_linear_kind kind, char *buf, size_t cap)
{
    return qtc_layer_weight_name(layer, qtc_linear_path(kind), buf, cap);
}

qtc_tensor **qtc_llama_linear_slot(qtc_llama *m, int layer, qtc_linear_kind kind)
{
    qtc_llama_layer *L = &m->layers[layer];
    qtc_tensor **w[QTC_N_LINEAR] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    return kind < QTC_N_LINEAR ? w[kind] : kind == QTC_LIN_EMBED ? &m->embed : &m->output;
}

qtc_tensor *qtc_llama_linear_weight(const qtc_llama *m, int layer, qtc_linear_kind kind)
{
    return *qtc_llama_linear_slot((qtc_llama *)m, layer, kind);
}

void qtc_llama_free(qtc_llama *m)
{
    if (!m)
        return;
    if (m->output != m->embed)
        qtc_tensor_free(m->output);
    qtc_tensor_free(m->embed);
    qtc_tensor_free(m->norm);
    for (int l = 0; m->layers && l < m->c.n_layers; l++) {
        qtc_llama_layer *L = &m->layers[l];
        qtc_tensor *all[] = {L->attn_norm, L->wq, L->wk, L->wv, L->wo, L->ffn_norm, L->w_gate, L->w_up, L->w_down};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++)
            qtc_tensor_free(all[i]);
    }
    free(m->layers);
    free(m->k_cache);
    free(m->v_cache);
    qtc_model_close(m->file); /* after the views of its mapping */
    free(m);
}

/* Index of the first NaN or Inf among n f16 (bf16 when bf) values, or -1:
 * an all-ones exponent. */
static int64_t find_nonfinite16(const uint16_t *h, int64_t n, int bf)
{
    const uint16_t exp = bf ? 0x7f80 : 0x7c00;
    for (int64_t i = 0; i < n; i++)
        if ((h[i] & exp) == exp)
            return i;
    return -1;
}

static int little_endian(void)
{
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* Loads tensor `name` of the expected shape: a contiguous f32 copy or, when
 * frozen, what can be used as stored: a view of f32 data (aligned, little
 * endian) or the f16/bf16 tensor itself. Every value is checked finite. */
static qtc_tensor *take(const qtc_model_file *f, const char *name, int64_t rows, int64_t cols, int frozen,
                        qtc_error *err)
{
    int i = qtc_model_find(f, name);
    if (i < 0) {
        qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s' is missing", f->path, name);
        return NULL;
    }
    const qtc_tensor_entry *e = &f->tensors[i];
    int ndim = cols ? 2 : 1;
    if (e->ndim != ndim || e->ne[0] != rows || (cols && e->ne[1] != cols)) {
        qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s' has shape [%lld, %lld], the configuration needs [%lld, %lld]",
                      f->path, name, (long long)e->ne[0], (long long)(e->ndim > 1 ? e->ne[1] : 0), (long long)rows,
                      (long long)cols);
        return NULL;
    }
    qtc_tensor *t = qtc_model_tensor(f, i, err);
    if (!t)
        return NULL;
    int64_t bad = -1;
    int half = t->dtype == QTC_F16 || t->dtype == QTC_BF16;
    int usable = qtc_tensor_is_contiguous(t) && little_endian() &&
                 (t->dtype == QTC_F32 ? (uintptr_t)t->data % sizeof(float) == 0 && (frozen || qtc_tensor_owns_data(t))
                                      : frozen && half && (uintptr_t)t->data % 2 == 0);
    if (usable) { /* scanned in place: the mapping is not copied */
        bad = half ? find_nonfinite16(t->data, qtc_tensor_numel(t), t->dtype == QTC_BF16) : qtc_tensor_find_nonfinite(t);
    } else {
        qtc_tensor *x = qtc_tensor_to_f32(t, err);
        qtc_tensor_free(t);
        if (!(t = x))
            return NULL;
        bad = qtc_tensor_find_nonfinite(t);
    }
    if (bad >= 0) {
        qtc_error_set(err, QTC_ERR_NUMERIC, "%s: tensor '%s': element %lld is not finite", f->path, name, (long long)bad);
        qtc_tensor_free(t);
        return NULL;
    }
    return t;
}

/* Offers w (layer, kind) to keep: 1 when kept (w freed, *slot NULL), 0 when
 * the llama holds it (as f32: an f16/bf16 one is converted now), -1 on error. */
static int offer(const qtc_model_file *f, const char *name, qtc_llama_weight_fn keep, void *keep_ctx, int layer,
                 qtc_linear_kind kind, qtc_tensor **slot, qtc_error *err)
{
    int kept = keep ? keep(keep_ctx, layer, kind, *slot, err) : 0;
    if (kept) {
        if (kept > 0) {
            qtc_tensor_free(*slot);
            *slot = NULL;
            qtc_model_forget(f, qtc_model_find(f, name));
        }
        return kept;
    }
    if ((*slot)->dtype != QTC_F32) {
        qtc_tensor *x = qtc_tensor_to_f32(*slot, err);
        qtc_tensor_free(*slot);
        if (!(*slot = x))
            return -1;
    }
    return 0;
}

static qtc_llama *from_model(const qtc_model_file *f, qtc_llama_weight_fn keep, void *keep_ctx, int frozen,
                             qtc_error *err)
{
    if (!f->has_config) {
        qtc_error_set(err, QTC_ERR_INPUT, "%s: no llama configuration (config.json, GGUF llama.* keys or a llama2.c header)", f->path);
        return NULL;
    }
    qtc_llama *m = calloc(1, sizeof *m);
    if (!m || !(m->layers = calloc((size_t)f->config.n_layers, sizeof *m->layers))) {
        free(m);
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        return NULL;
    }
    m->c = f->config;
    if (frozen) /* views of the mapping stay valid as long as the llama */
        m->file = qtc_model_ref(f);
    const qtc_llama_config *c = &m->c;
    const int64_t D = c->dim, H = c->hidden, QD = (int64_t)c->n_heads * c->head_dim,
                  KV = (int64_t)c->n_kv_heads * c->head_dim;
    char name[QTC_NAME_MAX];
    /* the embedding and head are offered only by the frozen loader (keep's
     * older callers expect the layers' projections alone) */
    qtc_llama_weight_fn keep_io = frozen ? keep : NULL;
    const int tied = qtc_model_find(f, "lm_head.weight") < 0;
    if (!(m->embed = take(f, "model.embed_tokens.weight", c->vocab, D, frozen, err)) ||
        offer(f, "model.embed_tokens.weight", keep_io, keep_ctx, -1, QTC_LIN_EMBED, &m->embed, err) < 0 ||
        !(m->norm = take(f, "model.norm.weight", D, 0, frozen, err)) ||
        offer(f, "model.norm.weight", NULL, NULL, -1, QTC_LIN_OUTPUT, &m->norm, err) < 0)
        goto fail;
    if (!tied) {
        if (!(m->output = take(f, "lm_head.weight", c->vocab, D, frozen, err)) ||
            offer(f, "lm_head.weight", keep_io, keep_ctx, -1, QTC_LIN_OUTPUT, &m->output, err) < 0)
            goto fail;
    } else {
        m->output = m->embed;
    }
    for (int l = 0; l < c->n_layers; l++) {
        qtc_llama_layer *L = &m->layers[l];
        struct {
            qtc_tensor **dst;
            int64_t rows, cols;
        } want[LAYER_TENSORS] = {
            {&L->attn_norm, D, 0}, {&L->wq, QD, D},       {&L->wk, KV, D},   {&L->wv, KV, D},    {&L->wo, D, QD},
            {&L->ffn_norm, D, 0},  {&L->w_gate, H, D},    {&L->w_up, H, D},  {&L->w_down, D, H},
        };
        for (int k = 0; k < LAYER_TENSORS; k++) {
            qtc_layer_weight_name(l, layer_part(k), name, sizeof name);
            if (!(*want[k].dst = take(f, name, want[k].rows, want[k].cols, frozen, err)) ||
                offer(f, name, layer_kind[k] >= 0 ? keep : NULL, keep_ctx, l, (qtc_linear_kind)layer_kind[k],
                      want[k].dst, err) < 0)
                goto fail;
        }
    }
    return m;
fail:
    qtc_llama_free(m);
    return NULL;
}

qtc_llama *qtc_llama_from_model(const qtc_model_file *f, qtc_error *err)
{
    return from_model(f, NULL, NULL, 0, err);
}

qtc_llama *qtc_llama_from_model_with(const qtc_model_file *f, qtc_llama_weight_fn keep, void *keep_ctx, qtc_error *err)
{
    return from_model(f, keep, keep_ctx, 0, err);
}

qtc_llama *qtc_llama_from_model_frozen(const qtc_model_file *f, qtc_llama_weight_fn keep, void *keep_ctx,
                                       qtc_error *err)
{
    return from_model(f, keep, keep_ctx, 1, err);
}

/* A new (rows, cols) matrix ~ N(0, std^2), or with cols 0 a norm weight ~ N(1, 0.1^2). */
static qtc_tensor *random_weight(qtc_rng *r, int64_t rows, int64_t cols, float std, qtc_error *err)
{
    qtc_tensor *t = qtc_tensor_new(QTC_F32, cols ? 2 : 1, QTC_SHAPE(rows, cols ? cols : 1), err);
    if (t)
        qtc_rng_fill_normal(r, t, cols ? 0.0f : 1.0f, cols ? std : 0.1f);
    return t;
}

qtc_llama *qtc_llama_new_random(const qtc_llama_config *c, uint64_t seed, float std, qtc_error *err)
{
    qtc_rng r;
    qtc_rng_seed(&r, seed);
    qtc_llama *m = calloc(1, sizeof *m);
    if (!m || !(m->layers = calloc((size_t)c->n_layers, sizeof *m->layers))) {
        free(m);
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        return NULL;
    }
    m->c = *c;
    m->c.tied = 1;
    const int64_t qd = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    int ok = (m->embed = random_weight(&r, c->vocab, c->dim, std, err)) && (m->norm = random_weight(&r, c->dim, 0, std, err));
    for (int l = 0; ok && l < c->n_layers; l++) {
        qtc_llama_layer *L = &m->layers[l];
        ok = (L->attn_norm = random_weight(&r, c->dim, 0, std, err)) && (L->wq = random_weight(&r, qd, c->dim, std, err)) &&
             (L->wk = random_weight(&r, kv, c->dim, std, err)) && (L->wv = random_weight(&r, kv, c->dim, std, err)) &&
             (L->wo = random_weight(&r, c->dim, qd, std, err)) && (L->ffn_norm = random_weight(&r, c->dim, 0, std, err)) &&
             (L->w_gate = random_weight(&r, c->hidden, c->dim, std, err)) &&
             (L->w_up = random_weight(&r, c->hidden, c->dim, std, err)) &&
             (L->w_down = random_weight(&r, c->dim, c->hidden, std, err));
    }
    m->output = m->embed;
    if (!ok) {
        qtc_llama_free(m);
        return NULL;
    }
    return m;
}

qtc_llama *qtc_llama_load(const char *path, qtc_error *err)
{
    qtc_model_file *f = qtc_model_open(path, err);
    if (!f)
        return NULL;
    qtc_llama *m = qtc_llama_from_model(f, err);
    qtc_model_close(f);
    return m;
}

const char *qtc_llama_param_name(const qtc_llama *m, int i, char *buf, size_t cap)
{
    int layer_params = LAYER_TENSORS * m->c.n_layers;
    if (i == 0)
        snprintf(buf, cap, "model.embed_tokens.weight");
    else if (i <= layer_params)
        qtc_layer_weight_name((i - 1) / LAYER_TENSORS, layer_part((i - 1) % LAYER_TENSORS), buf, cap);
    else if (i == layer_params + 1)
        snprintf(buf, cap, "model.norm.weight");
    else
        snprintf(buf, cap, "lm_head.weight");
    return buf;
}

int qtc_llama_params(qtc_llama *m, qtc_tensor **out, int cap)
{
    int n = 0;
#define ADD(t) do { if (n < cap) out[n] = (t); n++; } while (0) /* counts past cap */
    ADD(m->embed);
    for (int l = 0; l < m->c.n_layers; l++) {
        qtc_llama_layer *L = &m->layers[l];
        ADD(L->attn_norm);
        ADD(L->wq);
        ADD(L->wk);
        ADD(L->wv);
        ADD(L->wo);
        ADD(L->ffn_norm);
        ADD(L->w_gate);
        ADD(L->w_up);
        ADD(L->w_down);
    }
    ADD(m->norm);
    if (m->output != m->embed)
        ADD(m->output);
#undef ADD
    return n;
}

/* The embedding rows of ids, from a hook's table when the llama has none. */
static qtc_tensor *embed(const qtc_llama *m, qtc_graph *g, const qtc_tensor *ids)
{
    return m->embed ? qtc_embedding(g, m->embed, ids) : m->embed_rows(m->hook_ctx, g, ids);
}

static qtc_tensor *linear(const qtc_llama *m, qtc_graph *g, qtc_tensor *x, qtc_tensor *w, int layer, qtc_linear_kind kind)
{
    if (m->linear)
        return m->linear(m->linear_ctx, g, x, w, layer, kind);
    return qtc_matmul(g, x, w, 0, 1);
}

/* The first half of a block: the attention inputs of x (B, T, dim), with q and
 * k rotated for positions pos0 + t. */
static void qkv(const qtc_llama *m, qtc_graph *g, int l, qtc_tensor *x, int64_t pos0, qtc_tensor **q, qtc_tensor **k,
                qtc_tensor **v)
{
    const qtc_llama_config *c = &m->c;
    const qtc_llama_layer *L = &m->layers[l];
    qtc_tensor *h = qtc_rmsnorm(g, x, L->attn_norm, c->norm_eps);
    *q = qtc_rope(g, linear(m, g, h, L->wq, l, QTC_LIN_Q), c->n_heads, c->n_rot, pos0, c->rope_theta, QTC_ROPE_HALF);
    *k = qtc_rope(g, linear(m, g, h, L->wk, l, QTC_LIN_K), c->n_kv_heads, c->n_rot, pos0, c->rope_theta, QTC_ROPE_HALF);
    *v = linear(m, g, h, L->wv, l, QTC_LIN_V);
}

/* The second half: attention of q over keys k and values v (this window's, or
 * a cache's), the output projection and the MLP, both residual. */
static qtc_tensor *attend_and_mlp(const qtc_llama *m, qtc_graph *g, int l, qtc_tensor *x, qtc_tensor *q, qtc_tensor *k,
                                  qtc_tensor *v)
{
    const qtc_llama_config *c = &m->c;
    const qtc_llama_layer *L = &m->layers[l];
    if (m->extend_kv)
        m->extend_kv(m->hook_ctx, g, l, &k, &v);
    qtc_tensor *a = linear(m, g, qtc_attention(g, q, k, v, c->n_heads, c->n_kv_heads), L->wo, l, QTC_LIN_O);
    if (m->sublayer)
        a = m->sublayer(m->hook_ctx, g, a, l, 0);
    x = qtc_add(g, x, a);
    qtc_tensor *h = qtc_rmsnorm(g, x, L->ffn_norm, c->norm_eps);
    qtc_tensor *mlp = qtc_swiglu(g, linear(m, g, h, L->w_gate, l, QTC_LIN_GATE), linear(m, g, h, L->w_up, l, QTC_LIN_UP));
    mlp = linear(m, g, mlp, L->w_down, l, QTC_LIN_DOWN);
    if (m->sublayer)
        mlp = m->sublayer(m->hook_ctx, g, mlp, l, 1);
    return qtc_add(g, x, mlp);
}

qtc_tensor *qtc_llama_block(qtc_llama *m, qtc_graph *g, int layer, qtc_tensor *x, int64_t pos0)
{
    qtc_tensor *q, *k, *v;
    qkv(m, g, layer, x, pos0, &q, &k, &v);
    return attend_and_mlp(m, g, layer, x, q, k, v);
}

/* A block as a checkpointed segment; the hooks' state as the block's forward
 * found it follows (state_bytes of it). */
typedef struct block_segment {
    qtc_llama *m;
    int layer;
    int64_t pos0;
    size_t state_bytes;
    unsigned char state[];
} block_segment;

static qtc_tensor *block_segment_fn(void *ctx, qtc_graph *g, qtc_tensor *x, int replay)
{
    block_segment *b = ctx;
    qtc_llama *m = b->m;
    if (!b->state_bytes)
        return qtc_llama_block(m, g, b->layer, x, b->pos0);
    if (!replay) {
        m->hook_state(m->hook_ctx, b->state, 1);
        return qtc_llama_block(m, g, b->layer, x, b->pos0);
    }
    /* the recomputation draws what the forward drew, then the hooks go on
     * from where they are now */
    void *now = qtc_graph_alloc(g, b->state_bytes);
    if (!now)
        return NULL;
    m->hook_state(m->hook_ctx, now, 1);
    m->hook_state(m->hook_ctx, b->state, 0);
    qtc_tensor *y = qtc_llama_block(m, g, b->layer, x, b->pos0);
    m->hook_state(m->hook_ctx, now, 0);
    return y;
}

static qtc_tensor *checkpointed_block(qtc_llama *m, qtc_graph *g, int layer, qtc_tensor *x, int64_t pos0)
{
    size_t state = m->hook_state ? m->hook_state(m->hook_ctx, NULL, 1) : 0;
    block_segment *b = x ? qtc_graph_alloc(g, sizeof *b + state) : NULL;
    if (!b)
        return NULL;
    b->m = m;
    b->layer = layer;
    b->pos0 = pos0;
    b->state_bytes = state;
    return qtc_grad_checkpoint(g, block_segment_fn, b, x);
}

qtc_tensor *qtc_llama_hidden(qtc_llama *m, qtc_graph *g, const qtc_tensor *tokens, int64_t pos0)
{
    qtc_tensor *x = embed(m, g, tokens);
    for (int l = 0; l < m->c.n_layers; l++)
        x = m->grad_checkpoint ? checkpointed_block(m, g, l, x, pos0) : qtc_llama_block(m, g, l, x, pos0);
    return qtc_rmsnorm(g, x, m->norm, m->c.norm_eps);
}

qtc_tensor *qtc_llama_forward(qtc_llama *m, qtc_graph *g, const qtc_tensor *tokens, int64_t pos0)
{
    return linear(m, g, qtc_llama_hidden(m, g, tokens, pos0), m->output, -1, QTC_LIN_OUTPUT);
}

const float *qtc_llama_step(qtc_llama *m, qtc_graph *g, int32_t token, int64_t pos, qtc_error *err)
{
    const qtc_llama_config *c = &m->c;
    const int64_t kv = (int64_t)c->n_kv_heads * c->head_dim, ctx = c->ctx;
    if (pos < 0 || pos >= ctx)
        return qtc_error_set(err, QTC_ERR_USAGE, "position %lld is outside the model's context of %lld", (long long)pos,
                             (long long)ctx), NULL;
    if (token < 0 || token >= c->vocab)
        return qtc_error_set(err, QTC_ERR_INPUT, "token %d is outside the vocabulary of %d", token, c->vocab), NULL;
    if (!m->k_cache) {
        m->k_cache = calloc((size_t)(c->n_layers * ctx * kv), sizeof(float));
        m->v_cache = calloc((size_t)(c->n_layers * ctx * kv), sizeof(float));
        if (!m->k_cache || !m->v_cache)
            return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory for the KV cache"), NULL;
    }
    qtc_graph_reset(g);
    qtc_graph_set_recording(g, 0);
    qtc_tensor ids = qtc_tensor_borrow(QTC_I32, 2, QTC_SHAPE(1, 1), &token);
    qtc_tensor *x = embed(m, g, &ids);
    for (int l = 0; l < c->n_layers && x; l++) {
        float *kc = m->k_cache + (int64_t)l * ctx * kv, *vc = m->v_cache + (int64_t)l * ctx * kv;
        /* the cache up to and including this position, as (1, pos + 1, kv) views */
        qtc_tensor kall = qtc_tensor_borrow(QTC_F32, 3, QTC_SHAPE(1, pos + 1, kv), kc);
        qtc_tensor vall = qtc_tensor_borrow(QTC_F32, 3, QTC_SHAPE(1, pos + 1, kv), vc);
        /* k and v of this token go into the cache before attention reads it */
        qtc_tensor *q, *k, *v;
        qkv(m, g, l, x, pos, &q, &k, &v);
        if (!k || !v)
            break;
        memcpy(kc + pos * kv, k->data, (size_t)kv * sizeof(float));
        memcpy(vc + pos * kv, v->data, (size_t)kv * sizeof(float));
        x = attend_and_mlp(m, g, l, x, q, &kall, &vall);
    }
    x = qtc_rmsnorm(g, x, m->norm, c->norm_eps);
    qtc_tensor *logits = linear(m, g, x, m->output, -1, QTC_LIN_OUTPUT);
    if (qtc_graph_status(g, err) != QTC_OK || !logits)
        return NULL;
    m->cache_len = pos + 1;
    return logits->data;
}
