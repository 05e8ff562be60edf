/* qtc/io.h: bytes in and out for the format readers and writers.
 *
 * Input is always random access: a regular file is mapped; standard input, a
 * pipe, or any zstd frame (recognised by its magic, never by the name) is
 * first spooled into an unlinked temporary file, decompressing on the way,
 * and that file is mapped. Memory therefore stays near one tensor whatever
 * the model's size; a pipe costs disk, not RAM.
 *
 * Output goes to a temporary file beside the destination and is written at
 * explicit offsets, so a writer can lay tensors out in any order. Only
 * qtc_out_commit makes it visible: it renames the file into place, or
 * streams it to standard output, compressing with zstd when asked. A run
 * that fails calls qtc_out_abort, which removes the temporary file: no
 * partial output ever carries the destination's name.
 */
#ifndef QTC_IO_H
#define QTC_IO_H

#include <stddef.h>
#include <stdint.h>

#include "qtc/error.h"
#include "qtc/export.h"

QTC_API_BEGIN

typedef struct qtc_in {
    const unsigned char *data; /* the whole input, read-only */
    size_t size;
    char name[512];            /* for messages: the path, or "<stdin>" */
    int was_zstd;              /* the input was a zstd frame */
    /* private */
    void *map;
    size_t map_size;
} qtc_in;

/* Paths qtc builds (a folder's files, temporary files) fit in QTC_PATH_MAX
 * bytes; a longer one is refused with an error rather than cut short. */
#define QTC_PATH_MAX 4096
/* dir "/" name into buf (QTC_PATH_MAX bytes); QTC_ERR_USAGE when it does not
 * fit (the reason first: a message cuts a long path short). */
qtc_status qtc_path_join(char *buf, const char *dir, const char *name, qtc_error *err);

/* Opens path ("-" for standard input). The qtc_in is caller-owned; on
 * failure it is left closed. */
qtc_status qtc_in_open(qtc_in *in, const char *path, qtc_error *err);
void qtc_in_close(qtc_in *in);
/* 1 when path is a directory. */
int qtc_path_is_dir(const char *path);

typedef struct qtc_out qtc_out;

/* A new output bound for path ("-" for standard output); compress wraps the
 * result in one zstd frame. Refuses to write binary data to a terminal. */
qtc_out *qtc_out_open(const char *path, int compress, qtc_error *err);
/* Writes n bytes at offset (anywhere, any order). */
qtc_status qtc_out_pwrite(qtc_out *o, const void *p, size_t n, uint64_t offset, qtc_error *err);
/* Finishes: flush, fsync, then rename into place or stream to stdout. Frees o. */
qtc_status qtc_out_commit(qtc_out *o, qtc_error *err);
/* Drops the output: removes the temporary file. Frees o. NULL is a no-op. */
void qtc_out_abort(qtc_out *o);
/* Writes n bytes to path atomically (qtc_out_open, pwrite, commit): small
 * files such as JSON configurations and SVG pages. */
qtc_status qtc_write_file(const char *path, const void *data, size_t n, qtc_error *err);
/* 1 when a path names compressed output by its extension (.zst). */
int qtc_path_wants_zstd(const char *path);

QTC_API_END

#endif
