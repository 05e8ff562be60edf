/* llama_ref.h: a llama in double precision, written independently of model/
 * (plain loops), for tests: its parameters are double arrays so finite
 * differences are exact to ~1e-9. */
#ifndef QTC_TEST_LLAMA_REF_H
#define QTC_TEST_LLAMA_REF_H

#include "qtc/model.h"

typedef struct ref_llama {
    qtc_llama_config c;
    int n;           /* parameter tensors, in qtc_llama_params order */
    double *p[64];
    int64_t len[64];
} ref_llama;

/* A double copy of m's parameters (in qtc_llama_params order). */
void ref_from_llama(ref_llama *r, qtc_llama *m);
void ref_free(ref_llama *r);
/* logits (T, vocab) of tokens at positions 0..T-1 (malloc'd) */
double *ref_forward(const ref_llama *r, const int32_t *tok, int T);
/* mean cross-entropy of each window's next tokens, B windows of T */
double ref_loss(const ref_llama *r, const int32_t *tok, const int32_t *tgt, int B, int T);
/* A small llama with random weights (tied embeddings). */
qtc_llama *test_random_llama(qtc_llama_config c, uint64_t seed);

#endif
