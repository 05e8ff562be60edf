/* llama2.c.c: the legacy llama2.c checkpoint (Karpathy's run.c format).
 *
 *   7 x i32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
 *   f32 weights: token_embedding (vocab, dim), rms_att (L, dim), wq (L, dim, dim),
 *   wk (L, kv_dim, dim), wv (L, kv_dim, dim), wo (L, dim, dim), rms_ffn (L, dim),
 *   w1 (L, hidden, dim), w2 (L, dim, hidden), w3 (L, hidden, dim), rms_final (dim),
 *   freq_cis_real and freq_cis_imag (seq_len * head_size / 2 each, unused),
 *   then wcls (vocab, dim) when vocab_size is negative (an unshared classifier).
 * There is no magic number: the header must be plausible and the file size
 * must match it exactly. q and k rows are in the interleaved rotary layout and
 * are permuted to HF's when loaded. */
#include <stdio.h>
#include <string.h>

#include "convert_private.h"

#define MAX_DIM (1 << 20)

static int32_t i32_at(const unsigned char *p)
{
    uint32_t v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    int32_t s;
    memcpy(&s, &v, 4);
    return s;
}

/* Fills c from the header; returns the expected file size, or 0 when the
 * header is not a plausible llama2.c header for a file of this size. */
static uint64_t llama2c_expected(const qtc_in *in, qtc_llama_config *c)
{
    if (in->size < 28)
        return 0;
    int32_t h[7];
    for (int i = 0; i < 7; i++)
        h[i] = i32_at(in->data + 4 * i);
    int32_t vocab = h[5] < 0 ? -h[5] : h[5];
    if (h[0] <= 0 || h[1] <= 0 || h[2] <= 0 || h[3] <= 0 || h[4] <= 0 || vocab <= 0 || h[6] <= 0 ||
        h[0] > MAX_DIM || h[1] > MAX_DIM || h[2] > 4096 || h[3] > 4096 || h[4] > h[3] || vocab > MAX_DIM ||
        h[6] > MAX_DIM || h[0] % h[3] || h[3] % h[4] || (h[0] / h[3]) % 2)
        return 0;
    uint64_t dim = (uint64_t)h[0], hid = (uint64_t)h[1], L = (uint64_t)h[2], hs = dim / (uint64_t)h[3];
    uint64_t kv = hs * (uint64_t)h[4], V = (uint64_t)vocab;
    uint64_t floats = V * dim + L * dim + L * dim * dim + 2 * L * kv * dim + L * dim * dim + L * dim +
                      3 * L * hid * dim + dim + (uint64_t)h[6] * hs;
    if (h[5] < 0)
        floats += V * dim;
    memset(c, 0, sizeof *c);
    c->dim = h[0];
    c->hidden = h[1];
    c->n_layers = h[2];
    c->n_heads = h[3];
    c->n_kv_heads = h[4];
    c->vocab = vocab;
    c->ctx = h[6];
    c->head_dim = (int)hs;
    c->n_rot = (int)hs;
    c->norm_eps = 1e-5f;
    c->rope_theta = 10000.0f;
    c->tied = h[5] > 0;
    c->bos_id = 1;
    c->eos_id = 2;
    return 28 + 4 * floats;
}

int llama2c_detect(const qtc_in *in)
{
    qtc_llama_config c;
    uint64_t want = llama2c_expected(in, &c);
    return want && want == in->size;
}

qtc_status llama2c_parse(qtc_model_file *m, int in_index, qtc_error *err)
{
    const qtc_in *in = &m->inputs[in_index];
    qtc_llama_config *c = &m->config;
    uint64_t want = llama2c_expected(in, c);
    if (!want)
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: not a plausible llama2.c header", in->name);
    if (want != in->size)
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: the llama2.c header needs %llu bytes but the file has %zu",
                             in->name, (unsigned long long)want, in->size);
    m->has_config = 1;
    const int64_t dim = c->dim, hid = c->hidden, kv = (int64_t)c->head_dim * c->n_kv_heads;
    const unsigned char *p = in->data + 28;
    /* one block of all layers at a time, in file order */
    struct {
        const char *name;    /* per layer: the module path (qtc_layer_weight_name); else the whole name */
        int per_layer;
        int64_t rows, cols;  /* per layer (cols 0: a vector of rows) */
        int rope_heads;
    } blocks[] = {
        {"model.embed_tokens.weight", 0, c->vocab, dim, 0},
        {"input_layernorm", 1, dim, 0, 0},
        {"self_attn.q_proj", 1, dim, dim, c->n_heads},
        {"self_attn.k_proj", 1, kv, dim, c->n_kv_heads},
        {"self_attn.v_proj", 1, kv, dim, 0},
        {"self_attn.o_proj", 1, dim, dim, 0},
        {"post_attention_layernorm", 1, dim, 0, 0},
        {"mlp.gate_proj", 1, hid, dim, 0},
        {"mlp.down_proj", 1, dim, hid, 0},
        {"mlp.up_proj", 1, hid, dim, 0},
        {"model.norm.weight", 0, dim, 0, 0},
    };
    for (size_t b = 0; b < sizeof blocks / sizeof *blocks; b++) {
        for (int l = 0; l < (blocks[b].per_layer ? c->n_layers : 1); l++) {
            qtc_tensor_entry *e = model_add_entry(m, err);
            if (!e)
                return QTC_ERR_NOMEM;
            if (blocks[b].per_layer)
                qtc_layer_weight_name(l, blocks[b].name, e->name, sizeof e->name);
            else
                snprintf(e->name, sizeof e->name, "%s", blocks[b].name);
            e->dtype = QTC_F32;
            e->ndim = blocks[b].cols ? 2 : 1;
            e->ne[0] = blocks[b].rows;
            e->ne[1] = blocks[b].cols ? blocks[b].cols : 1;
            e->ne[2] = e->ne[3] = 1;
            e->nbytes = (size_t)(blocks[b].rows * (blocks[b].cols ? blocks[b].cols : 1)) * 4;
            e->data = p;
            e->rope_heads = blocks[b].rope_heads;
            e->input = in_index;
            p += e->nbytes;
        }
    }
    p += (size_t)c->ctx * (size_t)c->head_dim * 4; /* freq_cis_real and _imag, unused */
    if (!c->tied) {
        qtc_tensor_entry *e = model_add_entry(m, err);
        if (!e)
            return QTC_ERR_NOMEM;
        snprintf(e->name, sizeof e->name, "lm_head.weight");
        e->dtype = QTC_F32;
        e->ndim = 2;
        e->ne[0] = c->vocab;
        e->ne[1] = dim;
        e->ne[2] = e->ne[3] = 1;
        e->nbytes = (size_t)(c->vocab * dim) * 4;
        e->data = p;
        e->input = in_index;
    }
    return QTC_OK;
}
