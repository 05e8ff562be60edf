/* qtc/graph.h: reverse-mode autograd and the ops it records.
 *
 * A qtc_graph is a tape. Each op computes its result at once (eagerly) into a
 * tensor the graph allocates from its arena, and, when any input is trainable
 * (QTC_TENSOR_REQUIRES_GRAD, directly or through earlier ops) and recording is
 * on, appends a node holding what its backward needs. qtc_graph_backward walks
 * the tape in reverse and accumulates d(loss)/d(leaf) into each trainable
 * leaf's grad; a frozen leaf (qtc_tensor_set_trainable(t, 0)) gets none, and
 * ops skip the work for it. qtc_graph_reset drops every node and intermediate
 * and keeps the arena for the next step, so a training loop allocates nothing
 * after its first step.
 *
 * Ops take contiguous f32 tensors. Shapes that do not fit an op are programmer
 * errors and assert. Running out of memory makes the op return NULL and the
 * graph remember the error; an op given a NULL input returns NULL, so a whole
 * forward pass can be written without checks and tested once with
 * qtc_graph_status. All ops are deterministic: results do not depend on the
 * thread count.
 *
 * Later modules add ops (fake quantization, LoRA, adapters) with
 * qtc_graph_new_tensor and qtc_graph_record, exactly as the ops here do.
 */
#ifndef QTC_GRAPH_H
#define QTC_GRAPH_H

#include "qtc/export.h"
#include "qtc/tensor.h"

QTC_API_BEGIN

typedef struct qtc_graph qtc_graph;

qtc_graph *qtc_graph_new(qtc_error *err);
void qtc_graph_free(qtc_graph *g);
/* Forgets every node and graph tensor (pointers to them become invalid);
 * keeps the arena's memory for reuse. Clears a remembered error. */
void qtc_graph_reset(qtc_graph *g);
/* Recording on (the default) or off (inference: no nodes, no saved state). */
void qtc_graph_set_recording(qtc_graph *g, int on);
/* QTC_OK, or the first error an op met since the last reset (copied to err). */
qtc_status qtc_graph_status(const qtc_graph *g, qtc_error *err);
/* Bytes the arena holds now, with its checkpointing scratch graph's (for
 * benchmarks and memory reports). */
size_t qtc_graph_arena_bytes(const qtc_graph *g);

/* Backpropagates from a one-element tensor produced by this graph's ops,
 * seeding d(loss)/d(loss) = 1, and adds the gradients into the leaves. */
qtc_status qtc_graph_backward(qtc_graph *g, qtc_tensor *loss, qtc_error *err);
/* Backpropagates from any graph tensor t whose gradient the caller has already
 * filled (through qtc_graph_grad): for a loss computed outside the graph. */
qtc_status qtc_graph_backward_from(qtc_graph *g, qtc_tensor *t, qtc_error *err);

/* --- ops ------------------------------------------------------------------ */

/* C = op(A) op(B); op(X) is X or its transpose (the last two dimensions).
 * a: (..., M, K), or (..., K, M) with trans_a. b: (K, N) or (N, K) with
 * trans_b, shared across a's batch, or the same with a's leading dimensions.
 * Result (..., M, N). A linear layer y = x W^T is qtc_matmul(g, x, W, 0, 1). */
qtc_tensor *qtc_matmul(qtc_graph *g, qtc_tensor *a, qtc_tensor *b, int trans_a, int trans_b);

/* a + b and a * b, elementwise; b has a's shape or a's trailing dimensions
 * (a bias or a per-channel scale) and is broadcast over the rest. */
qtc_tensor *qtc_add(qtc_graph *g, qtc_tensor *a, qtc_tensor *b);
qtc_tensor *qtc_mul(qtc_graph *g, qtc_tensor *a, qtc_tensor *b);
/* s * a. */
qtc_tensor *qtc_scale(qtc_graph *g, qtc_tensor *a, float s);
/* Sum and mean of all elements (accumulated in double): a one-element tensor. */
qtc_tensor *qtc_sum(qtc_graph *g, qtc_tensor *a);
qtc_tensor *qtc_mean(qtc_graph *g, qtc_tensor *a);
/* The same data with another shape (same element count). */
qtc_tensor *qtc_reshape(qtc_graph *g, qtc_tensor *a, int ndim, const int64_t *shape);

/* RMSNorm over the last dimension: x / sqrt(mean(x^2) + eps) * w.
 * w: (D,) or NULL for no weight. */
qtc_tensor *qtc_rmsnorm(qtc_graph *g, qtc_tensor *x, qtc_tensor *w, float eps);

typedef enum qtc_rope_layout {
    QTC_ROPE_INTERLEAVED = 0, /* llama2.c / GGUF: pairs (2i, 2i+1) */
    QTC_ROPE_HALF = 1         /* HF rotate_half: pairs (i, i + n_rot/2) */
} qtc_rope_layout;

/* Rotary position embedding. x: (B, T, n_head * head_dim); token t of every
 * sequence sits at position pos0 + t. The first n_rot dims of each head are
 * rotated (n_rot = 0 means all), pair i by angle pos * theta^(-2i/n_rot). */
qtc_tensor *qtc_rope(qtc_graph *g, qtc_tensor *x, int n_head, int n_rot, int64_t pos0,
                     float theta, qtc_rope_layout layout);

/* Causal scaled dot-product attention with grouped-query heads.
 * q: (B, Tq, n_head * D); k, v: (B, Tk, n_kv_head * D), Tk >= Tq; query t
 * attends keys 0 .. t + (Tk - Tq) (the keys end where the queries end, as
 * with a KV cache or a prefix). Head h reads kv head h / (n_head / n_kv_head).
 * Scores are scaled by 1/sqrt(D); the softmax subtracts the row maximum.
 * Result (B, Tq, n_head * D). */
qtc_tensor *qtc_attention(qtc_graph *g, qtc_tensor *q, qtc_tensor *k, qtc_tensor *v,
                          int n_head, int n_kv_head);

/* x * sigmoid(x), and silu(gate) * up (the SwiGLU MLP's product). */
qtc_tensor *qtc_silu(qtc_graph *g, qtc_tensor *x);
qtc_tensor *qtc_swiglu(qtc_graph *g, qtc_tensor *gate, qtc_tensor *up);

/* Rows of table (V, D) picked by ids (an i32 tensor of any shape, each in
 * [0, V)): result (ids' shape..., D). */
qtc_tensor *qtc_embedding(qtc_graph *g, qtc_tensor *table, const qtc_tensor *ids);

/* Mean cross-entropy of logits (..., V) against targets (i32, logits' leading
 * shape); a negative target is ignored. A one-element tensor; 0 when every
 * target is ignored. */
qtc_tensor *qtc_cross_entropy(qtc_graph *g, qtc_tensor *logits, const qtc_tensor *targets);

/* qtc_cross_entropy(g, qtc_matmul(g, x, w, 0, 1), targets) without ever
 * holding the (rows, V) logits: x (..., D), w (V, D), targets (i32, x's
 * leading shape; a negative target is ignored). Rows go through in chunks of
 * chunk_rows (<= 0: enough rows for about 4M floats of logits); the forward
 * keeps only each row's log-sum-exp, the backward recomputes each chunk's
 * logits. Gradients reach x and w when trainable. */
qtc_tensor *qtc_linear_cross_entropy(qtc_graph *g, qtc_tensor *x, qtc_tensor *w,
                                     const qtc_tensor *targets, int64_t chunk_rows);

/* Mean over rows of KL(p_ref || p), p = softmax(logits), p_ref =
 * softmax(ref_logits), both (..., V): the distillation loss (student logits,
 * teacher ref_logits). Gradients reach both when both are trainable. */
qtc_tensor *qtc_kl_div(qtc_graph *g, qtc_tensor *logits, qtc_tensor *ref_logits);

/* qtc_kl_div(g, qtc_matmul(g, x, w, 0, 1), qtc_matmul(g, x_ref, w_ref, 0, 1))
 * without ever holding either (rows, V) logits: x (..., D), w (V, D) (the
 * student's final hidden states and output head); x_ref (..., D_ref) with x's
 * rows, w_ref (V, D_ref) (the teacher's). Rows go through in chunks of
 * chunk_rows (<= 0: enough rows for about 4M floats of logits per model);
 * the forward keeps three floats per row (both log-sum-exps and the row's
 * KL), the backward recomputes both chunks' logits. Gradients reach each of
 * the four inputs that is trainable. */
qtc_tensor *qtc_linear_kl_div(qtc_graph *g, qtc_tensor *x, qtc_tensor *w, qtc_tensor *x_ref,
                              qtc_tensor *w_ref, int64_t chunk_rows);

/* --- activation checkpointing ---------------------------------------------- */

/* A segment of a forward pass for qtc_grad_checkpoint: its result built with
 * graph ops on g from x and from leaves (parameters); any other tensor of an
 * outer graph it reads must not need a gradient. It runs twice: with replay 0
 * in the forward, and with replay 1 when the backward recomputes it, where it
 * must compute exactly what the first run did (it restores whatever state the
 * first run's ops drew from, such as a dropout generator) without repeating
 * side effects (observer updates). */
typedef qtc_tensor *(*qtc_segment_fn)(void *ctx, qtc_graph *g, qtc_tensor *x, int replay);

/* fn(ctx, g, x, 0) keeping only x and the result: fn runs, recorded, on a
 * scratch graph that g owns (reset before each use, so its memory is one
 * segment's, reused by the next), and its result is copied into g. The
 * backward resets the scratch graph, runs fn(ctx, scratch, x, 1) again from
 * x, backpropagates the result's gradient through it (parameters' gradients
 * accumulate there directly, in the order g's own tape would have added them)
 * and adds x's gradient into g's. The result and every gradient are then bit
 * for bit those of fn(ctx, g, x, 0). ctx must live until g's next reset
 * (qtc_graph_alloc). When g is not recording this is fn(ctx, g, x, 0).
 * A segment that reads a tensor of g needing a gradient other than x is a
 * usage error (remembered by g: the result is NULL). */
qtc_tensor *qtc_grad_checkpoint(qtc_graph *g, qtc_segment_fn fn, void *ctx, qtc_tensor *x);

/* --- for modules that add ops ---------------------------------------------- */

/* A contiguous f32 graph tensor of the given shape (uninitialised), or NULL. */
qtc_tensor *qtc_graph_new_tensor(qtc_graph *g, int ndim, const int64_t *shape);
/* Arena memory that lives until the next reset (64-byte aligned), or NULL. */
void *qtc_graph_alloc(qtc_graph *g, size_t bytes);

/* The backward of a node: reads out->grad and adds into each input's grad
 * (qtc_graph_grad gives it, allocated and zeroed on first use) for the inputs
 * that need one (qtc_graph_needs_grad). */
typedef struct qtc_node qtc_node;
typedef void (*qtc_backward_fn)(qtc_graph *g, qtc_node *n);

#define QTC_NODE_MAX_INPUTS 4
struct qtc_node {
    const char *op;                         /* for messages: "matmul" */
    qtc_backward_fn backward;
    qtc_tensor *out;
    qtc_tensor *in[QTC_NODE_MAX_INPUTS];
    int iarg[4];
    float farg[4];
    void *saved;                            /* arena memory the forward saved */
};

/* 1 when t is trainable or depends on a trainable leaf (and recording is on). */
int qtc_graph_needs_grad(const qtc_graph *g, const qtc_tensor *t);
/* Records a node for out (when any input needs a gradient) and marks out as
 * depending on the inputs. Returns the node to fill in saved/iarg/farg, or
 * NULL when nothing needed recording or the graph is out of memory. */
qtc_node *qtc_graph_record(qtc_graph *g, const char *op, qtc_backward_fn backward,
                           qtc_tensor *out, int n_in, qtc_tensor *const *in);
/* t's gradient buffer (numel floats), allocated zeroed on first use. */
float *qtc_graph_grad(qtc_graph *g, qtc_tensor *t);

QTC_API_END

#endif
