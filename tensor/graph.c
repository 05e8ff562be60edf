/* graph.c: the autograd tape, its arena and activation checkpointing.
 *
 * The arena is a list of chunks; qtc_graph_reset rewinds it and, when a step
 * needed more than one chunk, replaces them by one chunk of the total size,
 * so a steady training loop runs out of a single block with no malloc.
 * qtc_grad_checkpoint runs its segments on a second graph the first owns. */
#include "qtc/graph.h"

#include <stdlib.h>
#include <string.h>

#define ARENA_MIN_CHUNK ((size_t)4 << 20)

typedef struct chunk {
    struct chunk *next;
    size_t size, used;
    char *mem;
} chunk;

struct qtc_graph {
    chunk *chunks, *cur;
    qtc_node **nodes;
    int n_nodes, cap_nodes;
    int recording;
    qtc_error err; /* first failure since the last reset */
    struct qtc_graph *scratch; /* qtc_grad_checkpoint's segments run here; made on first use */
};

static chunk *chunk_new(size_t size)
{
    chunk *c = calloc(1, sizeof *c);
    void *mem = NULL;
    if (!c || posix_memalign(&mem, 64, size) != 0) {
        free(c);
        return NULL;
    }
    c->mem = mem;
    c->size = size;
    return c;
}

static void chunks_free(chunk *c)
{
    while (c) {
        chunk *next = c->next;
        free(c->mem);
        free(c);
        c = next;
    }
}

qtc_graph *qtc_graph_new(qtc_error *err)
{
    qtc_graph *g = calloc(1, sizeof *g);
    if (!g || !(g->chunks = chunk_new(ARENA_MIN_CHUNK))) {
        free(g);
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory creating a graph");
        return NULL;
    }
    g->cur = g->chunks;
    g->recording = 1;
    return g;
}

void qtc_graph_free(qtc_graph *g)
{
    if (!g)
        return;
    qtc_graph_free(g->scratch);
    chunks_free(g->chunks);
    free(g->nodes);
    free(g);
}

void qtc_graph_reset(qtc_graph *g)
{
    if (g->chunks->next) {
        size_t total = 0;
        for (chunk *c = g->chunks; c; c = c->next)
            total += c->size;
        chunk *one = chunk_new(total);
        if (one) { /* if that fails, keep the list: it still works */
            chunks_free(g->chunks);
            g->chunks = one;
        }
    }
    for (chunk *c = g->chunks; c; c = c->next)
        c->used = 0;
    g->cur = g->chunks;
    g->n_nodes = 0;
    qtc_error_clear(&g->err);
}

void qtc_graph_set_recording(qtc_graph *g, int on)
{
    g->recording = on;
}

qtc_status qtc_graph_status(const qtc_graph *g, qtc_error *err)
{
    if (g->err.code != QTC_OK && err)
        *err = g->err;
    return g->err.code;
}

size_t qtc_graph_arena_bytes(const qtc_graph *g)
{
    size_t total = 0;
    for (chunk *c = g->chunks; c; c = c->next)
        total += c->size;
    return total + (g->scratch ? qtc_graph_arena_bytes(g->scratch) : 0);
}

static void fail_nomem(qtc_graph *g, size_t bytes)
{
    if (g->err.code == QTC_OK)
        qtc_error_set(&g->err, QTC_ERR_NOMEM, "out of memory: the graph needed %zu more bytes", bytes);
}

void *qtc_graph_alloc(qtc_graph *g, size_t bytes)
{
    bytes = (bytes + 63) / 64 * 64;
    for (;;) {
        chunk *c = g->cur;
        if (c->size - c->used >= bytes) {
            void *p = c->mem + c->used;
            c->used += bytes;
            return p;
        }
        if (!c->next)
            break;
        g->cur = c->next;
    }
    size_t size = g->cur->size * 2;
    if (size < bytes)
        size = bytes;
    chunk *c = chunk_new(size);
    if (!c) {
        fail_nomem(g, bytes);
        return NULL;
    }
    g->cur->next = c;
    g->cur = c;
    c->used = bytes;
    return c->mem;
}

qtc_tensor *qtc_graph_new_tensor(qtc_graph *g, int ndim, const int64_t *shape)
{
    qtc_tensor *t = qtc_graph_alloc(g, sizeof *t);
    if (!t)
        return NULL;
    memset(t, 0, sizeof *t);
    t->dtype = QTC_F32;
    t->ndim = ndim;
    int64_t stride = 1;
    for (int d = QTC_MAX_DIMS - 1; d >= 0; d--) {
        t->ne[d] = d < ndim ? shape[d] : 1;
        t->nb[d] = d < ndim ? stride : 1;
        if (d < ndim)
            stride *= t->ne[d];
    }
    t->flags = QTC_TENSOR_GRAPH;
    t->data = qtc_graph_alloc(g, (size_t)stride * sizeof(float));
    return t->data ? t : NULL;
}

int qtc_graph_needs_grad(const qtc_graph *g, const qtc_tensor *t)
{
    return g->recording && t && (t->flags & QTC_TENSOR_REQUIRES_GRAD);
}

/* Appends a node for out whatever its inputs need. */
static qtc_node *append_node(qtc_graph *g, const char *op, qtc_backward_fn backward, qtc_tensor *out, int n_in,
                             qtc_tensor *const *in)
{
    if (g->n_nodes == g->cap_nodes) {
        int cap = g->cap_nodes ? 2 * g->cap_nodes : 256;
        qtc_node **nodes = realloc(g->nodes, (size_t)cap * sizeof *nodes);
        if (!nodes) {
            fail_nomem(g, (size_t)cap * sizeof *nodes);
            return NULL;
        }
        g->nodes = nodes;
        g->cap_nodes = cap;
    }
    qtc_node *n = qtc_graph_alloc(g, sizeof *n);
    if (!n)
        return NULL;
    memset(n, 0, sizeof *n);
    n->op = op;
    n->backward = backward;
    n->out = out;
    for (int i = 0; i < n_in; i++)
        n->in[i] = in[i];
    out->flags |= QTC_TENSOR_REQUIRES_GRAD;
    g->nodes[g->n_nodes++] = n;
    return n;
}

qtc_node *qtc_graph_record(qtc_graph *g, const char *op, qtc_backward_fn backward,
                           qtc_tensor *out, int n_in, qtc_tensor *const *in)
{
    int any = 0;
    for (int i = 0; i < n_in; i++)
        any |= qtc_graph_needs_grad(g, in[i]);
    return any ? append_node(g, op, backward, out, n_in, in) : NULL;
}

float *qtc_graph_grad(qtc_graph *g, qtc_tensor *t)
{
    if (!t->grad) {
        /* only graph tensors get here: leaves received theirs in require_grad */
        qtc_tensor *gt = qtc_graph_new_tensor(g, t->ndim, t->ne);
        if (!gt)
            return NULL;
        memset(gt->data, 0, (size_t)qtc_tensor_numel(t) * sizeof(float));
        t->grad = gt;
    }
    return t->grad->data;
}

qtc_status qtc_graph_backward(qtc_graph *g, qtc_tensor *loss, qtc_error *err)
{
    if (g->err.code != QTC_OK)
        return qtc_graph_status(g, err);
    if (qtc_tensor_numel(loss) != 1)
        return qtc_error_set(err, QTC_ERR_USAGE, "backward needs a one-element loss, not %lld elements",
                             (long long)qtc_tensor_numel(loss));
    if (!(loss->flags & QTC_TENSOR_REQUIRES_GRAD))
        return QTC_OK; /* nothing trainable reached the loss */
    float *seed = qtc_graph_grad(g, loss);
    if (!seed)
        return qtc_graph_status(g, err);
    seed[0] += 1.0f;
    return qtc_graph_backward_from(g, loss, err);
}

qtc_status qtc_graph_backward_from(qtc_graph *g, qtc_tensor *t, qtc_error *err)
{
    if (g->err.code != QTC_OK)
        return qtc_graph_status(g, err);
    if (!t->grad)
        return qtc_error_set(err, QTC_ERR_USAGE, "backward from a tensor without a gradient");
    for (int i = g->n_nodes - 1; i >= 0; i--) {
        qtc_node *n = g->nodes[i];
        if (!n->out->grad)
            continue; /* nothing downstream of this node reached the loss */
        n->backward(g, n);
        if (g->err.code != QTC_OK)
            return qtc_graph_status(g, err);
    }
    return QTC_OK;
}

/* --- activation checkpointing ------------------------------------------------ */

typedef struct segment {
    qtc_segment_fn fn;
    void *ctx;
    int x_needs_grad; /* as the forward found it */
} segment;

/* The first error of the scratch graph s becomes g's (when g has none). */
static void take_error(qtc_graph *g, const qtc_graph *s)
{
    if (s->err.code != QTC_OK && g->err.code == QTC_OK)
        g->err = s->err;
}

static void fail_usage(qtc_graph *g, const char *msg)
{
    if (g->err.code == QTC_OK)
        qtc_error_set(&g->err, QTC_ERR_USAGE, "%s", msg);
}

static int arena_holds(const qtc_graph *g, const void *p)
{
    const char *c = p;
    for (const chunk *k = g->chunks; k; k = k->next)
        if (c >= k->mem && c < k->mem + k->size)
            return 1;
    return 0;
}

/* What a segment starts from on s: a graph tensor over x's data that needs a
 * gradient when x does, with none yet (s allocates it in the backward). */
static qtc_tensor *segment_input(qtc_graph *s, const qtc_tensor *x, int needs_grad)
{
    qtc_tensor *t = qtc_graph_alloc(s, sizeof *t);
    if (!t)
        return NULL;
    *t = *x;
    t->buf = NULL;
    t->grad = NULL;
    t->flags = QTC_TENSOR_GRAPH | (needs_grad ? QTC_TENSOR_REQUIRES_GRAD : 0);
    return t;
}

/* 1 when every tensor the segment's nodes on s want a gradient for is s's own,
 * its input xs, or a leaf: a tensor of another graph would get a gradient in
 * s's arena, gone at the next reset. */
static int segment_is_closed(const qtc_graph *s, const qtc_tensor *xs)
{
    for (int i = 0; i < s->n_nodes; i++)
        for (int k = 0; k < QTC_NODE_MAX_INPUTS; k++) {
            const qtc_tensor *t = s->nodes[i]->in[k];
            if (t && t != xs && qtc_graph_needs_grad(s, t) && (t->flags & QTC_TENSOR_GRAPH) && !arena_holds(s, t))
                return 0;
        }
    return 1;
}

static void checkpoint_backward(qtc_graph *g, qtc_node *n)
{
    const segment *sg = n->saved;
    qtc_tensor *x = n->in[0];
    qtc_graph *s = g->scratch;
    qtc_graph_reset(s);
    qtc_graph_set_recording(s, 1);
    qtc_tensor *xs = segment_input(s, x, sg->x_needs_grad);
    qtc_tensor *out = xs ? sg->fn(sg->ctx, s, xs, 1) : NULL;
    if (out && s->err.code == QTC_OK) {
        if (!(out->flags & QTC_TENSOR_REQUIRES_GRAD) || qtc_tensor_numel(out) != qtc_tensor_numel(n->out)) {
            fail_usage(g, "a checkpointed segment computed something else when it was recomputed");
        } else {
            float *seed = qtc_graph_grad(s, out);
            qtc_error e;
            if (seed) {
                /* the result's gradient as g's tape holds it: the same bits the
                 * segment's last op would have seen without checkpointing */
                memcpy(seed, n->out->grad->data, (size_t)qtc_tensor_numel(out) * sizeof(float));
                if (qtc_graph_backward_from(s, out, &e) == QTC_OK && xs->grad) {
                    float *dx = qtc_graph_grad(g, x);
                    const float *d = xs->grad->data;
                    for (int64_t i = 0; dx && i < qtc_tensor_numel(x); i++)
                        dx[i] += d[i];
                }
            }
        }
    } else if (!out && s->err.code == QTC_OK) {
        fail_usage(g, "a checkpointed segment gave no result when it was recomputed");
    }
    take_error(g, s);
    qtc_graph_reset(s);
}

qtc_tensor *qtc_grad_checkpoint(qtc_graph *g, qtc_segment_fn fn, void *ctx, qtc_tensor *x)
{
    if (!x)
        return NULL;
    if (!g->recording)
        return fn(ctx, g, x, 0);
    if (!g->scratch) {
        qtc_error e;
        if (!(g->scratch = qtc_graph_new(&e))) {
            fail_nomem(g, ARENA_MIN_CHUNK);
            return NULL;
        }
    }
    /* recorded like the recomputation, so both run the same code and the
     * result says whether anything in the segment is trainable */
    qtc_graph *s = g->scratch;
    qtc_graph_reset(s);
    qtc_graph_set_recording(s, 1);
    const int needs = qtc_graph_needs_grad(g, x);
    qtc_tensor *xs = segment_input(s, x, needs);
    qtc_tensor *out = xs ? fn(ctx, s, xs, 0) : NULL;
    qtc_tensor *y = NULL;
    int trainable = 0;
    if (out && s->err.code == QTC_OK) {
        if (!segment_is_closed(s, xs)) {
            fail_usage(g, "a checkpointed segment reads a tensor of another graph that needs a gradient");
        } else if ((y = qtc_graph_new_tensor(g, out->ndim, out->ne))) {
            memcpy(y->data, out->data, (size_t)qtc_tensor_numel(out) * sizeof(float));
            trainable = (out->flags & QTC_TENSOR_REQUIRES_GRAD) != 0;
        }
    } else if (!out && s->err.code == QTC_OK) {
        fail_usage(g, "a checkpointed segment gave no result");
    }
    take_error(g, s);
    qtc_graph_reset(s);
    if (!y || !trainable)
        return y;
    segment *sg = qtc_graph_alloc(g, sizeof *sg);
    qtc_node *n = sg ? append_node(g, "checkpoint", checkpoint_backward, y, 1, &x) : NULL;
    if (!n)
        return NULL;
    *sg = (segment){fn, ctx, needs};
    n->saved = sg;
    return y;
}
