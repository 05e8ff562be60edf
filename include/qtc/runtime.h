/* qtc/runtime.h: the library version and thread control.
 *
 * One setting drives both OpenMP (qtc's own loops) and OpenBLAS (matrix
 * products), so a tool's --threads N means N cores, not N squared. qtc's own
 * loops give the same results at any thread count; OpenBLAS's products may
 * differ in the last bits between thread counts (see docs/ARCHITECTURE.md).
 */
#ifndef QTC_RUNTIME_H
#define QTC_RUNTIME_H

#include "qtc/export.h"

QTC_API_BEGIN

#define QTC_VERSION "0.1.0"

/* Sets the threads used by qtc's loops and by OpenBLAS; n <= 0 means all cores. */
void qtc_set_threads(int n);
int qtc_get_threads(void);
const char *qtc_version(void);

/* The instruction set qtc's own row kernels use (RMSNorm, RoPE, SiLU/SwiGLU,
 * exp rows, fake quantization, NF4/int dequantization; OpenBLAS picks its own).
 * The default build runs on any x86-64 and chooses once, at first use, the
 * widest path the CPU supports; the environment variable QTC_CPU=baseline|avx2|
 * avx512 caps that choice (a path the CPU lacks falls back to the widest one it
 * has below it; other values are ignored). Quantization kernels give the same
 * bits on every path; float kernels agree to a few ulp (the vector paths fuse
 * multiply-adds). Off x86-64 only the baseline path exists. */
typedef enum qtc_cpu_path {
    QTC_CPU_BASELINE = 0, /* what -O3 makes of plain C for baseline x86-64 (SSE2) */
    QTC_CPU_AVX2 = 1,     /* AVX2 + FMA */
    QTC_CPU_AVX512 = 2,   /* AVX-512 F, BW, VL, DQ */
} qtc_cpu_path;

/* The path in use. */
qtc_cpu_path qtc_cpu_get(void);
/* The widest path this CPU and this build support. */
qtc_cpu_path qtc_cpu_best(void);
/* Switches paths (for tests and benchmarks; not while ops run in other
 * threads). Returns 0, or -1 and changes nothing when the path is unsupported. */
int qtc_cpu_set(qtc_cpu_path p);
/* "baseline", "avx2", "avx512" (NULL for anything else), and back: -1 when unknown. */
const char *qtc_cpu_name(qtc_cpu_path p);
int qtc_cpu_parse(const char *name, qtc_cpu_path *p);

QTC_API_END

#endif
