/* qtc/error.h: status codes and the caller-owned error every libqtc function fills.
 *
 * The library never prints and never exits. A function that can fail returns a
 * qtc_status and, when it fails, writes a message naming the context (file,
 * tensor, byte offset) into the qtc_error the caller passed. A NULL error
 * pointer is allowed: the status alone is returned. Tools print err.msg and
 * exit with qtc_exit_code(err.code).
 */
#ifndef QTC_ERROR_H
#define QTC_ERROR_H

#include <stdarg.h>

#include "qtc/export.h"

QTC_API_BEGIN

typedef enum qtc_status {
    QTC_OK = 0,
    QTC_ERR_USAGE = 1,   /* bad arguments from the caller (flags, options) */
    QTC_ERR_INPUT = 2,   /* bad input data: malformed file, lying header, absurd shape */
    QTC_ERR_IO = 3,      /* read/write/open failure */
    QTC_ERR_NUMERIC = 4, /* NaN, Inf, divergence */
    QTC_ERR_NOMEM = 5    /* allocation failed */
} qtc_status;

#define QTC_ERROR_MSG_MAX 1024

typedef struct qtc_error {
    qtc_status code;
    char msg[QTC_ERROR_MSG_MAX];
} qtc_error;

/* Sets code and a printf-style message; returns code so callers can write
 * `return qtc_error_set(err, QTC_ERR_INPUT, "...")`. err may be NULL. */
qtc_status qtc_error_set(qtc_error *err, qtc_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
qtc_status qtc_error_vset(qtc_error *err, qtc_status code, const char *fmt, va_list ap);

/* Prepends "context: " to an existing message (e.g. the file name once a
 * lower layer has named the tensor). Keeps the code; returns it. */
qtc_status qtc_error_prefix(qtc_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Resets err to QTC_OK with an empty message. */
void qtc_error_clear(qtc_error *err);

/* The process exit status DESIGN.md documents for a status:
 * 0 done, 1 usage, 2 bad input, 3 I/O (and out of memory), 4 numerical failure. */
int qtc_exit_code(qtc_status code);

/* A short name for a status ("bad input", "I/O error", ...). */
const char *qtc_status_name(qtc_status code);

QTC_API_END

#endif
