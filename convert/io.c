/* io.c: mapped input (with spooling for pipes and zstd) and atomic output. */
#include "qtc/io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

static const unsigned char zstd_magic[4] = {0x28, 0xb5, 0x2f, 0xfd};

int qtc_path_is_dir(const char *path)
{
    struct stat st;
    return strcmp(path, "-") != 0 && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int qtc_path_wants_zstd(const char *path)
{
    size_t n = strlen(path);
    return n > 4 && strcmp(path + n - 4, ".zst") == 0;
}

static qtc_status write_all(int fd, const void *p, size_t n, const char *what, qtc_error *err)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return qtc_error_set(err, QTC_ERR_IO, "%s: write failed: %s", what, strerror(errno));
        c += w;
        n -= (size_t)w;
    }
    return QTC_OK;
}

static ssize_t read_some(int fd, void *p, size_t n)
{
    ssize_t r;
    do
        r = read(fd, p, n);
    while (r < 0 && errno == EINTR);
    return r;
}

qtc_status qtc_path_join(char *buf, const char *dir, const char *name, qtc_error *err)
{
    if ((size_t)snprintf(buf, QTC_PATH_MAX, "%s/%s", dir, name) >= QTC_PATH_MAX)
        return qtc_error_set(err, QTC_ERR_USAGE, "a path longer than %d bytes: %s/%s", QTC_PATH_MAX - 1, dir, name);
    return QTC_OK;
}

/* An unlinked temporary file for spooling. */
static int temp_fd(qtc_error *err)
{
    const char *dir = getenv("TMPDIR");
    char path[QTC_PATH_MAX];
    if (qtc_path_join(path, dir && *dir ? dir : "/tmp", "qtc-spool-XXXXXX", err) != QTC_OK)
        return -1;
    int fd = mkstemp(path);
    if (fd < 0) {
        qtc_error_set(err, QTC_ERR_IO, "cannot create a temporary file in %s: %s", dir ? dir : "/tmp", strerror(errno));
        return -1;
    }
    unlink(path);
    return fd;
}

/* Copies fd (from its current position; `head` bytes already read come first)
 * into a new temporary file, decompressing when it is zstd. */
static int spool(int fd, const unsigned char *head, size_t head_n, int is_zstd, const char *name,
                 qtc_error *err)
{
    int out = temp_fd(err);
    if (out < 0)
        return -1;
    size_t in_cap = ZSTD_DStreamInSize(), out_cap = ZSTD_DStreamOutSize();
    unsigned char *ibuf = malloc(in_cap), *obuf = malloc(out_cap);
    ZSTD_DCtx *dctx = is_zstd ? ZSTD_createDCtx() : NULL;
    size_t last_ret = 0;
    int ok = ibuf && obuf && (!is_zstd || dctx);
    if (!ok)
        qtc_error_set(err, QTC_ERR_NOMEM, "%s: out of memory", name);
    size_t pending = head_n;
    while (ok) {
        size_t n;
        if (pending) {
            memcpy(ibuf, head, pending);
            n = pending;
            pending = 0;
        } else {
            ssize_t r = read_some(fd, ibuf, in_cap);
            if (r < 0) {
                qtc_error_set(err, QTC_ERR_IO, "%s: read failed: %s", name, strerror(errno));
                ok = 0;
                break;
            }
            if (r == 0)
                break;
            n = (size_t)r;
        }
        if (!is_zstd) {
            ok = write_all(out, ibuf, n, "temporary file", err) == QTC_OK;
            continue;
        }
        ZSTD_inBuffer zin = {ibuf, n, 0};
        while (ok && zin.pos < zin.size) {
            ZSTD_outBuffer zout = {obuf, out_cap, 0};
            last_ret = ZSTD_decompressStream(dctx, &zout, &zin);
            if (ZSTD_isError(last_ret)) {
                qtc_error_set(err, QTC_ERR_INPUT, "%s: corrupt zstd data: %s", name, ZSTD_getErrorName(last_ret));
                ok = 0;
            } else {
                ok = write_all(out, obuf, zout.pos, "temporary file", err) == QTC_OK;
            }
        }
    }
    if (ok && is_zstd && last_ret != 0) {
        qtc_error_set(err, QTC_ERR_INPUT, "%s: the zstd frame is truncated", name);
        ok = 0;
    }
    ZSTD_freeDCtx(dctx);
    free(ibuf);
    free(obuf);
    if (!ok) {
        close(out);
        return -1;
    }
    return out;
}

static qtc_status map_fd(qtc_in *in, int fd, qtc_error *err)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return qtc_error_set(err, QTC_ERR_IO, "%s: %s", in->name, strerror(errno));
    in->size = (size_t)st.st_size;
    if (in->size == 0) {
        in->data = (const unsigned char *)"";
        return QTC_OK;
    }
    void *m = mmap(NULL, in->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED)
        return qtc_error_set(err, QTC_ERR_IO, "%s: cannot map %zu bytes: %s", in->name, in->size, strerror(errno));
    in->map = m;
    in->map_size = in->size;
    in->data = m;
    return QTC_OK;
}

qtc_status qtc_in_open(qtc_in *in, const char *path, qtc_error *err)
{
    memset(in, 0, sizeof *in);
    int is_stdin = strcmp(path, "-") == 0;
    snprintf(in->name, sizeof in->name, "%s", is_stdin ? "<stdin>" : path);
    int fd = is_stdin ? STDIN_FILENO : open(path, O_RDONLY);
    if (fd < 0)
        return qtc_error_set(err, errno == ENOENT ? QTC_ERR_INPUT : QTC_ERR_IO, "%s: cannot open: %s",
                             path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
        if (!is_stdin)
            close(fd);
        return qtc_error_set(err, QTC_ERR_INPUT, "%s: not a regular file or stream", path);
    }
    unsigned char head[4];
    size_t head_n = 0;
    qtc_status rc = QTC_OK;
    if (S_ISREG(st.st_mode)) {
        head_n = (size_t)pread(fd, head, 4, 0) == 4 ? 4 : 0;
        if (head_n == 4 && memcmp(head, zstd_magic, 4) == 0) {
            int sp = spool(fd, NULL, 0, 1, in->name, err);
            if (sp < 0)
                rc = err ? err->code : QTC_ERR_IO;
            else {
                rc = map_fd(in, sp, err);
                close(sp);
                in->was_zstd = 1;
            }
        } else {
            rc = map_fd(in, fd, err);
        }
    } else { /* a pipe or terminal: read the first bytes to see what it is */
        while (head_n < 4) {
            ssize_t r = read_some(fd, head + head_n, 4 - head_n);
            if (r <= 0)
                break;
            head_n += (size_t)r;
        }
        int z = head_n == 4 && memcmp(head, zstd_magic, 4) == 0;
        int sp = spool(fd, head, head_n, z, in->name, err);
        if (sp < 0)
            rc = err ? err->code : QTC_ERR_IO;
        else {
            rc = map_fd(in, sp, err);
            close(sp);
            in->was_zstd = z;
        }
    }
    if (!is_stdin)
        close(fd);
    if (rc != QTC_OK)
        qtc_in_close(in);
    return rc;
}

void qtc_in_close(qtc_in *in)
{
    if (in->map)
        munmap(in->map, in->map_size);
    in->map = NULL;
    in->data = NULL;
    in->size = 0;
}

/* --- output ---------------------------------------------------------------------- */

struct qtc_out {
    int fd;
    int to_stdout, compress;
    char path[QTC_PATH_MAX], tmp[QTC_PATH_MAX];
};

qtc_out *qtc_out_open(const char *path, int compress, qtc_error *err)
{
    qtc_out *o = calloc(1, sizeof *o);
    if (!o) {
        qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        return NULL;
    }
    o->to_stdout = strcmp(path, "-") == 0;
    o->compress = compress;
    if (strlen(path) + sizeof ".tmp-XXXXXX" > QTC_PATH_MAX) {
        qtc_error_set(err, QTC_ERR_USAGE, "output path longer than %d bytes", (int)(QTC_PATH_MAX - sizeof ".tmp-XXXXXX"));
        free(o);
        return NULL;
    }
    if (o->to_stdout && isatty(STDOUT_FILENO)) {
        qtc_error_set(err, QTC_ERR_USAGE, "refusing to write a binary model to a terminal (redirect it, or use -o FILE)");
        free(o);
        return NULL;
    }
    snprintf(o->path, sizeof o->path, "%s", path);
    if (o->to_stdout) {
        o->fd = temp_fd(err);
        if (o->fd < 0) {
            free(o);
            return NULL;
        }
        return o;
    }
    /* the temporary file sits beside the destination so rename() is atomic */
    snprintf(o->tmp, sizeof o->tmp, "%s.tmp-XXXXXX", path);
    o->fd = mkstemp(o->tmp);
    if (o->fd < 0) {
        qtc_error_set(err, QTC_ERR_IO, "%s: cannot create the output: %s", path, strerror(errno));
        free(o);
        return NULL;
    }
    return o;
}

qtc_status qtc_out_pwrite(qtc_out *o, const void *p, size_t n, uint64_t offset, qtc_error *err)
{
    const char *c = p;
    while (n) {
        ssize_t w = pwrite(o->fd, c, n, (off_t)offset);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return qtc_error_set(err, QTC_ERR_IO, "%s: write failed: %s", o->path, strerror(errno));
        c += w;
        n -= (size_t)w;
        offset += (uint64_t)w;
    }
    return QTC_OK;
}

/* Streams the temporary file from the start to fd, through zstd when asked. */
static qtc_status copy_out(qtc_out *o, int fd, qtc_error *err)
{
    if (lseek(o->fd, 0, SEEK_SET) < 0)
        return qtc_error_set(err, QTC_ERR_IO, "%s: %s", o->path, strerror(errno));
    size_t cap = 1 << 20, zcap = ZSTD_CStreamOutSize();
    unsigned char *buf = malloc(cap), *zbuf = o->compress ? malloc(zcap) : NULL;
    ZSTD_CCtx *cctx = o->compress ? ZSTD_createCCtx() : NULL;
    qtc_status rc = QTC_OK;
    if (!buf || (o->compress && (!zbuf || !cctx)))
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    if (cctx) /* level 3, zstd's default; checksummed so corruption is detected */
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
    for (int done = 0; rc == QTC_OK && !done;) {
        ssize_t r = read_some(o->fd, buf, cap);
        if (r < 0) {
            rc = qtc_error_set(err, QTC_ERR_IO, "%s: %s", o->path, strerror(errno));
            break;
        }
        done = r == 0;
        if (!o->compress) {
            rc = write_all(fd, buf, (size_t)r, o->path, err);
            continue;
        }
        ZSTD_inBuffer zin = {buf, (size_t)r, 0};
        ZSTD_EndDirective mode = done ? ZSTD_e_end : ZSTD_e_continue;
        size_t left;
        do {
            ZSTD_outBuffer zout = {zbuf, zcap, 0};
            left = ZSTD_compressStream2(cctx, &zout, &zin, mode);
            if (ZSTD_isError(left)) {
                rc = qtc_error_set(err, QTC_ERR_IO, "zstd: %s", ZSTD_getErrorName(left));
                break;
            }
            rc = write_all(fd, zbuf, zout.pos, o->path, err);
        } while (rc == QTC_OK && (done ? left != 0 : zin.pos < zin.size));
    }
    ZSTD_freeCCtx(cctx);
    free(buf);
    free(zbuf);
    return rc;
}

qtc_status qtc_out_commit(qtc_out *o, qtc_error *err)
{
    qtc_status rc = QTC_OK;
    if (o->to_stdout) {
        rc = copy_out(o, STDOUT_FILENO, err);
        close(o->fd);
        free(o);
        return rc;
    }
    if (o->compress) { /* compress into a second temporary file, then swap it in */
        char ztmp[sizeof o->tmp];
        memcpy(ztmp, o->tmp, strlen(o->tmp)); /* paths are at most 4000 + 11 bytes here */
        memcpy(ztmp + strlen(o->tmp), ".zst-XXXXXX", 12);
        int zfd = mkstemp(ztmp);
        if (zfd < 0)
            rc = qtc_error_set(err, QTC_ERR_IO, "%s: %s", o->path, strerror(errno));
        else {
            rc = copy_out(o, zfd, err);
            if (rc == QTC_OK && fsync(zfd) != 0)
                rc = qtc_error_set(err, QTC_ERR_IO, "%s: %s", o->path, strerror(errno));
            close(zfd);
            unlink(o->tmp);
            memcpy(o->tmp, ztmp, strlen(ztmp) + 1);
            if (rc != QTC_OK) {
                unlink(o->tmp);
                close(o->fd);
                free(o);
                return rc;
            }
        }
    } else if (fsync(o->fd) != 0) {
        rc = qtc_error_set(err, QTC_ERR_IO, "%s: %s", o->path, strerror(errno));
    }
    close(o->fd);
    if (rc == QTC_OK) {
        mode_t mask = umask(0); /* mkstemp makes 0600 files; give the usual 0666 & ~umask */
        umask(mask);
        chmod(o->tmp, 0666 & ~mask);
        if (rename(o->tmp, o->path) != 0)
            rc = qtc_error_set(err, QTC_ERR_IO, "%s: cannot rename the finished output into place: %s",
                               o->path, strerror(errno));
    }
    if (rc != QTC_OK)
        unlink(o->tmp);
    free(o);
    return rc;
}

void qtc_out_abort(qtc_out *o)
{
    if (!o)
        return;
    close(o->fd);
    if (!o->to_stdout)
        unlink(o->tmp);
    free(o);
}

qtc_status qtc_write_file(const char *path, const void *data, size_t n, qtc_error *err)
{
    qtc_out *o = qtc_out_open(path, 0, err);
    if (!o)
        return err->code;
    if (qtc_out_pwrite(o, data, n, 0, err) != QTC_OK) {
        qtc_out_abort(o);
        return err->code;
    }
    return qtc_out_commit(o, err);
}
