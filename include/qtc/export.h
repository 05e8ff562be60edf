/* qtc/export.h: what libqtc.so exports.
 *
 * The library is compiled with -fvisibility=hidden, so only what a public
 * header declares between QTC_API_BEGIN and QTC_API_END is exported from the
 * shared library; every public header wraps its declarations in the pair.
 * Functions shared by the files of one folder are declared in that folder's
 * private header and stay hidden. A program using the headers sees no
 * difference; a C++ program gets C linkage.
 */
#ifndef QTC_EXPORT_H
#define QTC_EXPORT_H

/* C linkage for a C++ caller, then the visibility */
#ifdef __cplusplus
#define QTC_API_LINKAGE_BEGIN extern "C" {
#define QTC_API_LINKAGE_END }
#else
#define QTC_API_LINKAGE_BEGIN
#define QTC_API_LINKAGE_END
#endif
#if defined(__GNUC__)
#define QTC_API_BEGIN QTC_API_LINKAGE_BEGIN _Pragma("GCC visibility push(default)")
#define QTC_API_END _Pragma("GCC visibility pop") QTC_API_LINKAGE_END
#else
#define QTC_API_BEGIN QTC_API_LINKAGE_BEGIN
#define QTC_API_END QTC_API_LINKAGE_END
#endif

#endif
