/* quant_private.h: the functions the files of quant/ share (private to
 * quant/, hidden in libqtc.so). ggml_blocks.h holds ggml's block layouts. */
#ifndef QTC_QUANT_PRIVATE_H
#define QTC_QUANT_PRIVATE_H

#include "qtc/quant.h"

/* nf4.c: the NF4 scheme behind qtc_qweight_quantize/_dequantize (intq.c), on
 * a q those have checked and allocated. */
qtc_status nf4_quantize(const float *w, qtc_qweight *q);
void nf4_dequantize(const qtc_qweight *q, float *w);

#endif
