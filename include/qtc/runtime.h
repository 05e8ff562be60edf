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

QTC_API_END

#endif
