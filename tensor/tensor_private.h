/* tensor_private.h: what the files of tensor/ share (private to tensor/,
 * hidden in libqtc.so). */
#ifndef QTC_TENSOR_PRIVATE_H
#define QTC_TENSOR_PRIVATE_H

#include <stdint.h>

/* ops_basic.c: C = op(A) op(B) + beta C, row-major f32 (op: transposed when
 * ta / tb), through cblas_sgemm; every matrix product of the ops. */
void tensor_gemm(int ta, int tb, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                 int64_t ldb, float beta, float *C, int64_t ldc);

#endif
