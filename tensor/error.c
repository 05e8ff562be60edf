/* error.c: filling the caller-owned qtc_error. */
#include "qtc/error.h"

#include <stdio.h>
#include <string.h>

qtc_status qtc_error_vset(qtc_error *err, qtc_status code, const char *fmt, va_list ap)
{
    if (err) {
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    }
    return code;
}

qtc_status qtc_error_set(qtc_error *err, qtc_status code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    qtc_error_vset(err, code, fmt, ap);
    va_end(ap);
    return code;
}

qtc_status qtc_error_prefix(qtc_error *err, const char *fmt, ...)
{
    if (!err)
        return QTC_OK;
    char head[QTC_ERROR_MSG_MAX], joined[2 * QTC_ERROR_MSG_MAX + 2];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    snprintf(joined, sizeof joined, "%s: %s", head, err->msg);
    memcpy(err->msg, joined, sizeof err->msg - 1); /* truncate: a message, not data */
    err->msg[sizeof err->msg - 1] = '\0';
    return err->code;
}

void qtc_error_clear(qtc_error *err)
{
    if (err) {
        err->code = QTC_OK;
        err->msg[0] = '\0';
    }
}

int qtc_exit_code(qtc_status code)
{
    switch (code) {
    case QTC_OK: return 0;
    case QTC_ERR_USAGE: return 1;
    case QTC_ERR_INPUT: return 2;
    case QTC_ERR_IO: return 3;
    case QTC_ERR_NUMERIC: return 4;
    case QTC_ERR_NOMEM: return 3;
    }
    return 2;
}

const char *qtc_status_name(qtc_status code)
{
    switch (code) {
    case QTC_OK: return "ok";
    case QTC_ERR_USAGE: return "usage error";
    case QTC_ERR_INPUT: return "bad input";
    case QTC_ERR_IO: return "I/O error";
    case QTC_ERR_NUMERIC: return "numerical failure";
    case QTC_ERR_NOMEM: return "out of memory";
    }
    return "unknown error";
}
