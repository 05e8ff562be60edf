/* llama_export.c: a llama's (trained) weights written out through qtc_convert. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qtc/model.h"

/* The f32 weights as a safetensors twin of src at path. */
static qtc_status write_twin(qtc_llama *m, const qtc_model_file *src, const char *path, qtc_error *err)
{
    int n = qtc_llama_params(m, NULL, 0);
    qtc_tensor **ps = malloc((size_t)n * sizeof *ps);
    qtc_out_entry *e = calloc((size_t)n, sizeof *e);
    if (!ps || !e) {
        free(ps);
        free(e);
        return qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    }
    qtc_llama_params(m, ps, n);
    for (int i = 0; i < n; i++) {
        qtc_llama_param_name(m, i, e[i].name, sizeof e[i].name);
        e[i].dtype = QTC_F32;
        e[i].ndim = ps[i]->ndim;
        memcpy(e[i].ne, ps[i]->ne, sizeof e[i].ne);
    }
    qtc_status rc = QTC_OK;
    qtc_model_writer *w = qtc_writer_open(path, QTC_FMT_SAFETENSORS, 0, src, e, n, NULL, err);
    if (!w)
        rc = err->code;
    for (int i = 0; w && i < n && rc == QTC_OK; i++)
        rc = qtc_writer_put(w, i, ps[i], err);
    if (w && rc != QTC_OK)
        qtc_writer_abort(w);
    else if (w)
        rc = qtc_writer_commit(w, err);
    free(e);
    free(ps);
    return rc;
}

qtc_status qtc_llama_export(qtc_llama *m, const qtc_model_file *src, const char *out, qtc_format fmt, int compress,
                            const qtc_target *to, const qtc_convert_hooks *hooks, qtc_convert_summary *summary,
                            qtc_error *err)
{
    char tmp[QTC_PATH_MAX];
    const char *dir = getenv("TMPDIR");
    if (qtc_path_join(tmp, dir && *dir ? dir : "/tmp", "qat-trained-XXXXXX", err) != QTC_OK)
        return err->code;
    int fd = mkstemp(tmp);
    if (fd < 0)
        return qtc_error_set(err, QTC_ERR_IO, "%s: cannot create a temporary file", tmp);
    close(fd);
    if (write_twin(m, src, tmp, err) != QTC_OK) {
        unlink(tmp);
        return err->code;
    }
    qtc_model_file *t = qtc_model_open(tmp, err);
    qtc_status rc = t ? QTC_OK : err->code;
    if (t && src->tokenizer_bin && !t->tokenizer_bin && !(t->tokenizer_bin = strdup(src->tokenizer_bin)))
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
    if (rc == QTC_OK)
        rc = qtc_convert(t, out, fmt, compress, to, NULL, 0, hooks, summary, err);
    qtc_model_close(t);
    unlink(tmp);
    return rc;
}
