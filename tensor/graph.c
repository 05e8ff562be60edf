/* graph.c: the autograd tape and its arena.
 *
 * The arena is a list of chunks; qtc_graph_reset rewinds it and, when a step
 * needed more than one chunk, replaces them by one chunk of the total size,
 * so a steady training loop runs out of a single block with no malloc. */
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
    return total;
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

qtc_node *qtc_graph_record(qtc_graph *g, const char *op, qtc_backward_fn backward,
                           qtc_tensor *out, int n_in, qtc_tensor *const *in)
{
    int any = 0;
    for (int i = 0; i < n_in; i++)
        any |= qtc_graph_needs_grad(g, in[i]);
    if (!any)
        return NULL;
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
