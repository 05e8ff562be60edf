/* attention_ref.h: qtc's attention op as it was before the tiled kernel:
 * every probability (B * H * Tq * Tk floats) computed once and kept for the
 * backward. Checked against double precision in test_ops.c's history; here
 * it is the float reference the tiled op is compared with (tests), and the
 * baseline it is timed against (bench/bench_attention.c). Same contract as
 * qtc_attention. */
#ifndef QTC_TEST_ATTENTION_REF_H
#define QTC_TEST_ATTENTION_REF_H

#include "qtc/graph.h"

qtc_tensor *ref_attention_stored(qtc_graph *g, qtc_tensor *q, qtc_tensor *k, qtc_tensor *v,
                                 int n_head, int n_kv_head);

#endif
