/* qtc/runtime.h: the library version and thread control.
 *
 * One setting drives both OpenMP (qtc's own loops) and OpenBLAS (matrix
 * products), so a tool's --threads N means N cores, not N squared. Results of
 * every op are independent of the thread count.
 */
#ifndef QTC_RUNTIME_H
#define QTC_RUNTIME_H

#define QTC_VERSION "0.1.0"

/* For a tool's main(), before anything else. libgomp reads OMP_WAIT_POLICY when
 * the program loads, and its default (idle workers spin) halves throughput
 * here, where qtc's OpenMP loops alternate with OpenBLAS's own threads on few
 * cores. When the user has not chosen a policy, this re-executes the program
 * once with OMP_WAIT_POLICY=PASSIVE; it returns when nothing needed doing or
 * the re-execution was not possible (the program then runs as it is). */
void qtc_runtime_setup(char **argv);

/* Sets the threads used by qtc's loops and by OpenBLAS; n <= 0 means all cores. */
void qtc_set_threads(int n);
int qtc_get_threads(void);
const char *qtc_version(void);

#endif
