/* cli.c: what every tool's main() shares; see cli.h. */
#include "cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static const char *tool_name = "qtc";
static const char *tool_usage = "";

void cli_process_setup(char **argv)
{
    if (getenv("OMP_WAIT_POLICY"))
        return;
    if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0)
        return;
    execv("/proc/self/exe", argv); /* returns only on failure */
}

void cli_init(const char *tool, const char *usage, char **argv)
{
    tool_name = tool;
    tool_usage = usage;
    cli_process_setup(argv);
}

void cli_usage(const char *msg)
{
    fprintf(stderr, "%s: %s\n%s", tool_name, msg, tool_usage);
    exit(1);
}

int cli_fail(const qtc_error *err)
{
    fprintf(stderr, "%s: error: %s\n", tool_name, err->msg);
    return qtc_exit_code(err->code);
}

int cli_error(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: error: ", tool_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

void cli_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", tool_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}
