/* cli.h: what every tool's main() shares (not part of libqtc).
 *
 * The library never prints or exits; the tools do, and they do it the same
 * way: messages on standard error prefixed with the tool's name, usage errors
 * exit 1 after the usage text, library errors map to exit codes through
 * qtc_exit_code (0 ok, 1 usage, 2 bad input, 3 I/O, 4 numerical failure).
 */
#ifndef QTC_TOOLS_CLI_H
#define QTC_TOOLS_CLI_H

#include "qtc/error.h"

/* For main(), before anything else: remembers the tool's name and usage text
 * and sets the process up (cli_process_setup). */
void cli_init(const char *tool, const char *usage, char **argv);

/* libgomp reads OMP_WAIT_POLICY when the program loads, and its default (idle
 * workers spin) halves throughput here, where qtc's OpenMP loops alternate
 * with OpenBLAS's own threads on few cores. When the user has not chosen a
 * policy, this re-executes the program once with OMP_WAIT_POLICY=PASSIVE; it
 * returns when nothing needed doing or the re-execution was not possible (the
 * program then runs as it is). The benchmarks call it too. */
void cli_process_setup(char **argv);

/* "tool: MSG" and the usage text on standard error, then exit 1. */
_Noreturn void cli_usage(const char *msg);
/* "tool: error: MSG" for a library error; returns its exit code. */
int cli_fail(const qtc_error *err);
/* "tool: error: FMT..." for the tool's own errors; returns code. */
int cli_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "tool: FMT..." on standard error (a newline is added). */
void cli_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
