/* llama_ref.h: a llama in double precision, written independently of model/
 * (plain loops), for tests: its parameters are double arrays so finite
 * differences are exact to ~1e-9. */
#ifndef QTC_TEST_LLAMA_REF_H
#define QTC_TEST_LLAMA_REF_H

#include "qtc/model.h"

/* Adapters in double precision (see qtc/lora.h for what each computes);
 * NULL entries are absent. */
typedef struct ref_peft {
    double lora_scale;
    int r;                        /* LoRA rank and bottleneck width */
    double *A[64 * 7], *B[64 * 7];  /* LoRA, per layer * 7 + kind */
    double *down[128], *down_b[128], *up[128], *up_b[128]; /* bottleneck, per layer * 2 + (attn, mlp) */
    int prefix_len;
    double *pk[64], *pv[64];      /* prefix keys and values, per layer: (prefix_len, n_kv_heads * head_dim) */
} ref_peft;

typedef struct ref_llama {
    qtc_llama_config c;
    int n;           /* parameter tensors, in qtc_llama_params order */
    double *p[64];
    int64_t len[64];
    const ref_peft *peft; /* NULL: the plain model */
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
