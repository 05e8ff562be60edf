/* qtc/convert.h: model files in and out (safetensors, GGUF v3, llama2.c, HF
 * folders), their metadata, and the llama configuration they describe.
 *
 * Reading: qtc_model_open recognises the format by its bytes (a folder is an
 * HF folder) and lists the tensors under their canonical HF names and HF
 * layouts: llama2.c and GGUF names are mapped, and their interleaved rotary
 * q/k rows are permuted into HF's rotate-half order when a tensor is loaded.
 * Every header field is checked against the file size before use; a bad file
 * gives QTC_ERR_INPUT with the file, the tensor and the offset.
 *
 * Writing: qtc_writer_open takes the full list of output tensors (names, types,
 * shapes) up front, lays out the file, and then accepts the tensors one at a
 * time in any order (qtc_writer_put), so memory stays near one tensor. GGUF
 * output maps names to llama.cpp's and permutes q/k rows back. Nothing is
 * visible at the destination until qtc_writer_commit.
 */
#ifndef QTC_CONVERT_H
#define QTC_CONVERT_H

#include <regex.h>
#include <stdint.h>

#include "qtc/export.h"
#include "qtc/io.h"
#include "qtc/quant.h"
#include "qtc/tensor.h"

QTC_API_BEGIN

typedef enum qtc_format {
    QTC_FMT_UNKNOWN = 0,
    QTC_FMT_SAFETENSORS,
    QTC_FMT_GGUF,
    QTC_FMT_LLAMA2C,
    QTC_FMT_HF /* a folder: config.json + model.safetensors or shards */
} qtc_format;

const char *qtc_format_name(qtc_format f);
/* "safetensors", "gguf", "hf"; QTC_FMT_UNKNOWN when not a writable format. */
qtc_format qtc_format_from_name(const char *name);
/* The format a path's extension asks for (.gguf, .safetensors, a trailing '/'
 * for an HF folder; a .zst suffix is looked through); QTC_FMT_UNKNOWN if none. */
qtc_format qtc_format_from_path(const char *path);

/* --- metadata: GGUF's typed key/value pairs ------------------------------------ */

enum {
    QTC_KV_U8 = 0, QTC_KV_I8 = 1, QTC_KV_U16 = 2, QTC_KV_I16 = 3, QTC_KV_U32 = 4, QTC_KV_I32 = 5,
    QTC_KV_F32 = 6, QTC_KV_BOOL = 7, QTC_KV_STRING = 8, QTC_KV_ARRAY = 9, QTC_KV_U64 = 10,
    QTC_KV_I64 = 11, QTC_KV_F64 = 12
};

typedef struct qtc_str {
    uint64_t len;
    char *ptr; /* owned by the qtc_kvs; NUL-terminated for convenience */
} qtc_str;

typedef struct qtc_kv {
    char *key;
    uint32_t type;      /* QTC_KV_*; for arrays, QTC_KV_ARRAY */
    uint32_t elem_type; /* arrays: the element type (not nested arrays) */
    uint64_t count;     /* arrays: elements; scalars: 1 */
    void *vals;         /* numbers: count packed little-endian values; strings: count qtc_str */
} qtc_kv;

typedef struct qtc_kvs {
    qtc_kv *kv;
    int n, cap;
} qtc_kvs;

void qtc_kvs_free(qtc_kvs *k);
const qtc_kv *qtc_kvs_get(const qtc_kvs *k, const char *key);
/* Reads a scalar number (any numeric type) as double / int64; 0 when the key is
 * missing or not a number (use qtc_kvs_get to tell). */
double qtc_kvs_num(const qtc_kvs *k, const char *key, double fallback);
/* A string value, or NULL. */
const char *qtc_kvs_str(const qtc_kvs *k, const char *key);
/* Setters replace an existing key. They return QTC_ERR_NOMEM on failure. */
qtc_status qtc_kvs_set_num(qtc_kvs *k, const char *key, uint32_t type, double v);
qtc_status qtc_kvs_set_str(qtc_kvs *k, const char *key, const char *v);
/* Copies an array (numbers: count values of elem_type; strings: count qtc_str). */
qtc_status qtc_kvs_set_array(qtc_kvs *k, const char *key, uint32_t elem_type, uint64_t count,
                             const void *vals);
qtc_status qtc_kvs_copy(qtc_kvs *dst, const qtc_kv *kv);
int qtc_kv_type_size(uint32_t type);
/* A value as double (numbers, bools). */
double qtc_kv_num_at(const qtc_kv *kv, uint64_t i);

/* --- the llama configuration ---------------------------------------------------------- */

typedef struct qtc_llama_config {
    int dim, hidden, n_layers, n_heads, n_kv_heads, vocab, ctx;
    int head_dim;       /* dim / n_heads unless the config says otherwise */
    int n_rot;          /* rotary dims per head (head_dim unless partial) */
    float norm_eps, rope_theta;
    int tied;           /* the output head is the token embedding */
    int bos_id, eos_id; /* -1 when unknown */
} qtc_llama_config;

/* --- reading -------------------------------------------------------------------------- */

/* The stored parts of a weight kept in a quantized layout (compressed-tensors
 * or bitsandbytes), checked for size when the file was opened. */
typedef struct qtc_qparts {
    int scheme_set;                  /* 1 when the entry is a quantized weight */
    const unsigned char *packed;     /* INT: i8 values or i32 words; NF4: nibble pairs */
    const unsigned char *scale;      /* INT: f32 scales */
    const unsigned char *zero;       /* INT asymmetric: i8 values or i32 words (dim 0) */
    const unsigned char *absmax;     /* NF4: f32, or u8 codes when double-quantized */
    int gptq;                        /* INT in GPTQ's layout: packed is qweight, scale f16 scales,
                                        zero qzeros (v1), g_idx each input's group */
    const unsigned char *g_idx;
    const unsigned char *nested_absmax, *nested_map, *quant_map; /* NF4: f32 */
    float nested_offset;             /* NF4 double quant */
} qtc_qparts;

typedef struct qtc_tensor_entry {
    char name[QTC_NAME_MAX]; /* canonical (HF) name */
    qtc_dtype dtype;
    int ndim;
    int64_t ne[QTC_MAX_DIMS];  /* HF order, outermost first */
    const unsigned char *data; /* the stored bytes, inside a mapped input */
    size_t nbytes;
    int rope_heads;            /* >0: rows are interleaved-rotary for this many heads */
    int input;                 /* index into the model's inputs (for messages) */
    int hidden;                /* a part of a quantized weight, listed under that weight */
    qtc_qscheme scheme;        /* for a quantized weight (qparts.scheme_set): dtype is f32,
                                  the logical type, and qtc_model_tensor dequantizes */
    qtc_qparts qparts;
} qtc_tensor_entry;

typedef struct qtc_model_file {
    qtc_format format;
    char path[4096];
    qtc_in *inputs;
    int n_inputs;
    qtc_tensor_entry *tensors;
    int n_tensors;
    qtc_llama_config config;
    int has_config;
    qtc_kvs meta;        /* GGUF KVs, or safetensors __metadata__ (strings) */
    char *config_json;   /* an HF folder's config.json, carried along */
    char *tokenizer_json;/* an HF folder's tokenizer.json, carried along */
    char *tokenizer_bin; /* a llama2.c tokenizer beside the checkpoint (path), or NULL */
    int refs;            /* holders beyond the opener (qtc_model_ref) */
} qtc_model_file;

qtc_model_file *qtc_model_open(const char *path, qtc_error *err);
/* Drops the caller's hold: the file is unmapped and freed when the last
 * holder (the opener, or one of qtc_model_ref's) closes it. */
void qtc_model_close(qtc_model_file *m);
/* One more hold on m (for a model whose weights view m's mapping); returns m.
 * Released with qtc_model_close. The count is not atomic: one thread. */
qtc_model_file *qtc_model_ref(const qtc_model_file *m);
/* Index of a tensor by canonical name, or -1. */
int qtc_model_find(const qtc_model_file *m, const char *name);
/* Tensor i in HF layout: a view of the mapped bytes, or a copy when its rows
 * had to be permuted. Free with qtc_tensor_free. */
qtc_tensor *qtc_model_tensor(const qtc_model_file *m, int i, qtc_error *err);

/* The stored form of quantized weight i (qparts.scheme_set): unpacked into q
 * (caller frees with qtc_qweight_free). */
qtc_status qtc_model_qweight(const qtc_model_file *m, int i, qtc_qweight *q, qtc_error *err);

/* The model's tokenizer as GGUF tokenizer.ggml.* keys, from whatever it has: a
 * GGUF's keys (or a qtc safetensors file's copy), an HF tokenizer.json, or a
 * llama2.c tokenizer.bin beside the checkpoint. QTC_ERR_INPUT when none. */
qtc_status qtc_model_tokenizer_kvs(const qtc_model_file *m, qtc_kvs *out, qtc_error *err);

/* tokenizer.ggml.* keys from an HF tokenizer.json's text (BPE: SentencePiece
 * style or byte level); c gives the vocabulary size, BOS and EOS (may be NULL). */
qtc_status qtc_tokenizer_kvs_from_json(qtc_kvs *kv, const char *json, const qtc_llama_config *c, qtc_error *err);

/* tokenizer.ggml.* keys from a llama2.c tokenizer.bin of `vocab` tokens
 * (spaces become U+2581; <s> and </s> lose llama2.c's wrapping newlines). */
qtc_status qtc_tokenizer_kvs_from_llama2c(qtc_kvs *kv, const char *path, int vocab, qtc_error *err);

/* Tells the kernel tensor i's mapped pages are not needed any more, so a
 * conversion that visits each tensor once keeps its resident memory near one
 * tensor (the pages are read again if touched). */
void qtc_model_forget(const qtc_model_file *m, int i);

/* Parses an HF config.json (LlamaForCausalLM and close relatives). */
qtc_status qtc_config_from_json(qtc_llama_config *c, const char *json, const char *what, qtc_error *err);
/* Reads llama.* keys of GGUF metadata. */
qtc_status qtc_config_from_gguf(qtc_llama_config *c, const qtc_kvs *kv, const char *what, qtc_error *err);

/* The q/k row permutations between HF's rotate-half layout and the
 * interleaved one (llama2.c, GGUF), for rows of row_bytes bytes grouped in
 * n_head heads: within a head, interleaved row 2i+s is HF row s*hd/2 + i. */
void qtc_rope_rows_to_hf(const void *src, void *dst, int64_t rows, size_t row_bytes, int n_head);
void qtc_rope_rows_from_hf(const void *src, void *dst, int64_t rows, size_t row_bytes, int n_head);

/* --- writing -------------------------------------------------------------------------- */

typedef struct qtc_out_entry {
    char name[QTC_NAME_MAX]; /* canonical (HF) name */
    qtc_dtype dtype;
    int ndim;
    int64_t ne[QTC_MAX_DIMS];
} qtc_out_entry;

typedef struct qtc_model_writer qtc_model_writer;

/* Lays out the output. src supplies the configuration, tokenizer and metadata
 * to carry along (may be NULL); extra holds metadata to add (safetensors:
 * string values go into __metadata__; GGUF: KVs). For safetensors the tensors
 * are ordered as the reference writer orders them (alignment, then name). */
qtc_model_writer *qtc_writer_open(const char *path, qtc_format fmt, int compress,
                                  const qtc_model_file *src, const qtc_out_entry *entries, int n,
                                  const qtc_kvs *extra, qtc_error *err);
/* Writes tensor i of the list; t has the entry's dtype and shape, HF layout. */
qtc_status qtc_writer_put(qtc_model_writer *w, int i, const qtc_tensor *t, qtc_error *err);
/* Checks that every tensor was written, then makes the output visible. Frees w. */
qtc_status qtc_writer_commit(qtc_model_writer *w, qtc_error *err);
void qtc_writer_abort(qtc_model_writer *w);
/* "model.layers.LAYER.PART.weight" into buf (cap bytes; QTC_NAME_MAX holds
 * any): the HF name of a layer's weight, part being a module path such as
 * "self_attn.q_proj" or "input_layernorm". Returns buf. */
const char *qtc_layer_weight_name(int layer, const char *part, char *buf, size_t cap);
/* The llama.cpp name of an HF tensor name ("blk.0.attn_q.weight"), or NULL. */
const char *qtc_gguf_name(const char *hf_name, char *buf, size_t cap);
/* The HF name of a llama.cpp tensor name (names it does not know pass through). */
const char *qtc_hf_name(const char *gguf_name, char *buf, size_t cap);

/* --- quantized layouts in safetensors --------------------------------------------------
 * Integer schemes use compressed-tensors' layout: 8 bits as `<module>.weight` (i8) with
 * `<module>.weight_scale` (f32, [out, groups], [1] per tensor) and, when asymmetric,
 * `<module>.weight_zero_point` (i8, the scale's shape); fewer bits as
 * `<module>.weight_packed` (i32 [out, ceil(in / (32/bits))], values + 2^(bits-1), LSB
 * first along the input dimension), `weight_scale`, `weight_shape` (i32 [2]) and an
 * asymmetric `weight_zero_point` packed the same way along dimension 0.
 * NF4 uses bitsandbytes' layout: `<module>.weight` (u8 [ceil(n/2), 1], the first value in
 * the high nibble), `.weight.absmax` (f32, or u8 codes with double quantization),
 * `.weight.quant_map` (f32 [16]), `.weight.nested_absmax`, `.weight.nested_quant_map`
 * and `.weight.quant_state.bitsandbytes__nf4` (u8, the JSON of blocksize, shape, dtype,
 * nested_blocksize, nested_dtype, nested_offset). */

/* How many stored tensors a weight of this scheme becomes, and their entries
 * (-1 when a part's name would be too long). */
int qtc_qlayout_count(const qtc_qscheme *s);
int qtc_qlayout_entries(const qtc_qscheme *s, const char *weight_name, int64_t rows, int64_t cols,
                         qtc_out_entry *out);
/* The stored tensors of q, in the order of qtc_qlayout_entries (caller frees each). */
qtc_status qtc_qlayout_pack(const qtc_qweight *q, const char *weight_name, qtc_tensor **out, qtc_error *err);
/* GPTQ's own layout (AutoGPTQ's checkpoint_format "gptq", v1), for integer
 * schemes of 2, 4 or 8 bits in groups along the input or per channel:
 * `<module>.qweight` (i32 [in / (32/bits), out]: the unsigned codes, value +
 * 2^(bits-1), of each output's inputs packed LSB first), `<module>.qzeros`
 * (i32 [groups, out / (32/bits)]: unsigned zero points minus 1, packed the same
 * way along the outputs), `<module>.scales` (f16 [groups, out]) and
 * `<module>.g_idx` (i32 [in]: each input's group, i / group). Dequantized:
 * w[j][i] = scales[g][j] * (q[i][j] - (qzeros[g][j] + 1)), g = g_idx[i].
 * Read back when config.json's quantization_config says quant_method "gptq"
 * (g_idx must be the plain i / group: act-order checkpoints with permuted
 * groups are refused). */
#define QTC_GPTQ_PARTS 4
/* The four entries of a weight in GPTQ's layout; -1 with why filled when the
 * scheme or shape cannot be stored that way. */
int qtc_gptq_layout_entries(const qtc_qscheme *s, const char *weight_name, int64_t rows, int64_t cols, qtc_out_entry *out,
                            char *why, size_t cap);
qtc_status qtc_gptq_layout_pack(const qtc_qweight *q, const char *weight_name, qtc_tensor **out, qtc_error *err);
/* GPTQ's quantization_config (malloc'd JSON text). */
char *qtc_gptq_layout_config(const qtc_qscheme *s, int desc_act, double damp, int true_sequential);

/* Static input quantization of linear layers (a calibration file's ranges),
 * stored beside integer-scheme weights as compressed-tensors does:
 * `<module>.input_scale` (f32 [1]) and `<module>.input_zero_point` (i8 [1]),
 * with quantization_config's input_activations saying int, per tensor, static,
 * asymmetric. */
typedef struct qtc_input_quant {
    int bits;                       /* 2..8 */
    int n;
    char (*weights)[QTC_NAME_MAX];  /* the HF weight names whose inputs these are */
    float *scale;
    int *zero;
} qtc_input_quant;

/* The quantization_config an HF config.json gets for a model whose linear layers use s,
 * with static input quantization of input_bits (0: none) (a cJSON object as malloc'd text). */
char *qtc_qlayout_hf_config(const qtc_qscheme *s, int input_bits);
/* The static input quantization a model file stores (out->n 0 when none): its
 * `<module>.input_scale` tensors with their zero points (0 when absent), bits
 * from quantization_config's input_activations (8 when it does not say). A
 * scale that is not positive and finite, or a zero point outside the bits'
 * range, is an error naming the tensor. */
qtc_status qtc_model_input_quant(const qtc_model_file *m, qtc_input_quant *out, qtc_error *err);
void qtc_input_quant_free(qtc_input_quant *q);

/* --- converting a whole model ------------------------------------------------------------ */

/* What a tensor is stored as: a dtype (float or ggml block type), or one of
 * qtc's schemes (integer groups, NF4) for the linear layers' weights. */
typedef struct qtc_target {
    int is_scheme;
    qtc_dtype dtype;
    qtc_qscheme scheme;
} qtc_target;

/* Parses f32 f16 bf16 q8_0 ... q6_k, or a scheme name (int4-g32, nf4, ...); 0 on success. */
int qtc_target_parse(const char *name, qtc_target *t);
void qtc_target_name(const qtc_target *t, char *buf, size_t cap);

/* A --tensor-type rule: tensors whose HF name matches re get `to`. */
typedef struct qtc_convert_rule {
    regex_t re;
    qtc_target to;
} qtc_convert_rule;

/* What happened to one tensor. */
typedef struct qtc_convert_row {
    const char *name;
    char in[32], out[32], asked[32]; /* type names */
    int fell_back;                   /* out differs from asked: rows do not split into its blocks */
    double weights, bpw, rel_rms_err, max_abs_err, bytes_in, bytes_out;
    int weighted;                    /* rounded with the importance hook's values */
} qtc_convert_row;

typedef struct qtc_convert_summary {
    double weights, bits_per_weight, rel_rms_err, max_abs_err, bytes_in, bytes_out;
    int no_tokenizer; /* GGUF output without a tokenizer to carry (llama.cpp will not load it) */
    int weighted;     /* tensors rounded with the importance hook's values */
} qtc_convert_summary;

/* What a caller of qtc_convert may plug in (any member may be NULL). */
typedef struct qtc_convert_hooks {
    /* sees each tensor's row once it is written */
    void (*report)(void *ctx, const qtc_convert_row *row);
    /* supplies the stored form of a weight planned in scheme s (for example with
     * learned scales): returns 1 with q filled, 0 to let qtc_convert quantize,
     * -1 with err set to fail */
    int (*qweight)(void *ctx, const char *name, const qtc_qscheme *s, qtc_qweight *q, qtc_error *err);
    /* may replace a weight before it is stored: w is the weight as stored
     * (f32, dequantized; read-only); returns 1 with *out a new f32 tensor of
     * w's shape to store instead (quantized afresh, never copied; qtc_convert
     * frees it), 0 to keep w, -1 with err set */
    int (*transform)(void *ctx, const char *name, const qtc_tensor *w, qtc_tensor **out, qtc_error *err);
    /* the importance of each input channel of a 2-D weight with rows of row_len
     * (an imatrix's mean x^2), or NULL: integer schemes and ggml's block types
     * with an importance-weighted quantizer round with it */
    const float *(*importance)(void *ctx, const char *name, int64_t row_len);
    /* static input scales to store beside the linear weights (NULL: none); every
     * weight they name must be in the model and stored in an integer scheme */
    const qtc_input_quant *inputs;
    /* non-NULL: weights in integer schemes are stored in GPTQ's layout and this
     * is the quantization_config (qtc_gptq_layout_config) */
    const char *gptq_config;
    void *ctx;
} qtc_convert_hooks;

/* Writes every tensor of m to out in fmt: stored as `to` asks (NULL keeps the
 * types; 1-D tensors stay f32; schemes apply to *_proj.weight; rules first),
 * with block types falling back per tensor where rows do not split, NaN/Inf
 * refused (QTC_ERR_NUMERIC), and each tensor released from memory once
 * written. */
qtc_status qtc_convert(qtc_model_file *m, const char *out, qtc_format fmt, int compress, const qtc_target *to,
                       const qtc_convert_rule *rules, int n_rules, const qtc_convert_hooks *hooks,
                       qtc_convert_summary *summary, qtc_error *err);

QTC_API_END

#endif
