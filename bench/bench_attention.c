/* bench_attention.c: the tiled attention op (qtc_attention: online softmax,
 * probabilities recomputed in the backward) against the op it replaced (every
 * probability kept, tests/attention_ref.c) on the 15M llama's heads (6 of 48)
 * at B16 x T256 and B4 x T1024, both timed in the same run: forward (recording
 * on), forward + backward, and the graph arena a step holds.
 * `bench_attention tiled|stored` runs one op's step only, for /usr/bin/time -v. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../tests/attention_ref.c"
#include "bench.h"
#include "cli.h"
#include "qtc/graph.h"
#include "qtc/rng.h"
#include "qtc/runtime.h"

typedef qtc_tensor *(*attn_op)(qtc_graph *g, qtc_tensor *q, qtc_tensor *k, qtc_tensor *v,
                               int n_head, int n_kv_head);

/* one training step of the op alone: forward, loss = sum(out * G), backward;
 * returns the arena bytes it held */
static size_t step(attn_op op, qtc_tensor **in, qtc_tensor *G, int backward)
{
    qtc_error err;
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *o = op(g, in[0], in[1], in[2], 6, 6);
    if (o && backward)
        qtc_graph_backward(g, qtc_sum(g, qtc_mul(g, o, G)), &err);
    size_t bytes = qtc_graph_arena_bytes(g);
    qtc_graph_free(g);
    return bytes;
}

int main(int argc, char **argv)
{
    cli_process_setup(argv);
    qtc_set_threads(0);
    const char *only = argc > 1 ? argv[1] : NULL;
    const int64_t shapes[][2] = {{16, 256}, {4, 1024}};
    qtc_error err;
    qtc_rng r;
    qtc_rng_seed(&r, 1);
    if (!only)
        printf("threads %d; attention of 6 heads of 48 (the 15M llama), fwd = forward with recording on\n"
               "%-12s %9s %9s %7s %11s %11s %7s %12s %12s\n", qtc_get_threads(), "B x T",
               "stored", "tiled", "ratio", "stored f+b", "tiled f+b", "ratio", "stored MiB", "tiled MiB");
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int64_t B = shapes[s][0], T = shapes[s][1];
        qtc_tensor *in[3], *G = qtc_tensor_new(QTC_F32, 3, QTC_SHAPE(B, T, 288), &err);
        for (int i = 0; i < 3; i++) {
            in[i] = qtc_tensor_new(QTC_F32, 3, QTC_SHAPE(B, T, 288), &err);
            qtc_rng_fill_normal(&r, in[i], 0, 1);
            qtc_tensor_require_grad(in[i], &err);
        }
        qtc_rng_fill_normal(&r, G, 0, 1);
        if (only) {
            size_t bytes = step(strcmp(only, "stored") ? qtc_attention : ref_attention_stored, in, G, 1);
            printf("%s B%lld x T%lld: arena %.1f MiB\n", only, (long long)B, (long long)T,
                   (double)bytes / (1 << 20));
        } else {
            size_t mem[2];
            double fwd[2], both[2];
            attn_op ops[2] = {ref_attention_stored, qtc_attention};
            for (int o = 0; o < 2; o++) {
                fwd[o] = BENCH_BEST(2.0, step(ops[o], in, G, 0));
                both[o] = BENCH_BEST(3.0, mem[o] = step(ops[o], in, G, 1));
            }
            char what[32];
            snprintf(what, sizeof what, "B%lld x T%lld", (long long)B, (long long)T);
            printf("%-12s %8.3fs %8.3fs %6.2fx %10.3fs %10.3fs %6.2fx %12.1f %12.1f\n", what, fwd[0],
                   fwd[1], fwd[0] / fwd[1], both[0], both[1], both[0] / both[1],
                   (double)mem[0] / (1 << 20), (double)mem[1] / (1 << 20));
        }
        for (int i = 0; i < 3; i++)
            qtc_tensor_free(in[i]);
        qtc_tensor_free(G);
    }
    return 0;
}
