/* checkpoint.c: saving and restoring a training run (see qtc/train.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qtc/train.h"

qtc_status qtc_checkpoint_path(const char *dir, const char *out, int create, char *path, size_t cap, qtc_error *err)
{
    char d[QTC_PATH_MAX];
    if ((size_t)snprintf(d, sizeof d, "%s%s", dir ? dir : out, dir ? "" : ".ckpt") >= sizeof d)
        return qtc_error_set(err, QTC_ERR_USAGE, "%s: the checkpoint path is too long", dir ? dir : out);
    snprintf(d, sizeof d, "%s", dir ? dir : out);
    size_t len = strlen(d);
    while (len > 1 && d[len - 1] == '/')
        d[--len] = '\0';
    if (!dir)
        snprintf(d + len, sizeof d - len, ".ckpt");
    if (create && mkdir(d, 0777) != 0 && errno != EEXIST)
        return qtc_error_set(err, QTC_ERR_IO, "%s: cannot create the checkpoint folder: %s", d, strerror(errno));
    if ((size_t)snprintf(path, cap, "%s/checkpoint.safetensors", d) >= cap)
        return qtc_error_set(err, QTC_ERR_USAGE, "%s: the checkpoint path is too long", d);
    return QTC_OK;
}

/* Runs save (src non-NULL or not) or load over the llama's named parameters. */
static qtc_status over_llama(const char *path, const qtc_model_file *src, int saving, qtc_llama *m, qtc_adamw *opt,
                             int64_t step, int64_t *step_out, qtc_error *err)
{
    const int n = qtc_llama_params(m, NULL, 0);
    char (*names)[QTC_NAME_MAX] = malloc((size_t)n * sizeof *names);
    const char **np = malloc((size_t)n * sizeof *np);
    qtc_tensor **ps = malloc((size_t)n * sizeof *ps);
    qtc_status rc = !names || !np || !ps ? qtc_error_set(err, QTC_ERR_NOMEM, "out of memory") : QTC_OK;
    if (rc == QTC_OK)
        qtc_llama_params(m, ps, n);
    for (int i = 0; rc == QTC_OK && i < n; i++)
        np[i] = qtc_llama_param_name(m, i, names[i], QTC_NAME_MAX);
    if (rc == QTC_OK)
        rc = saving ? qtc_checkpoint_save_params(path, src, ps, np, n, opt, step, err)
                    : qtc_checkpoint_load_params(path, ps, np, n, opt, step_out, err);
    free(names);
    free(np);
    free(ps);
    return rc;
}

qtc_status qtc_checkpoint_save(const char *path, const qtc_model_file *src, qtc_llama *m, qtc_adamw *opt, int64_t step,
                               qtc_error *err)
{
    return over_llama(path, src, 1, m, opt, step, NULL, err);
}

qtc_status qtc_checkpoint_load(const char *path, qtc_llama *m, qtc_adamw *opt, int64_t *step, qtc_error *err)
{
    return over_llama(path, NULL, 0, m, opt, 0, step, err);
}

qtc_status qtc_checkpoint_save_params(const char *path, const qtc_model_file *src, qtc_tensor *const *ps,
                                      const char *const *names, int n, qtc_adamw *opt, int64_t step, qtc_error *err)
{
    qtc_out_entry *e = calloc((size_t)(3 * n), sizeof *e);
    qtc_kvs meta = {0};
    char value[32];
    qtc_status rc = QTC_OK;
    if (!e) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory");
        goto done;
    }
    snprintf(value, sizeof value, "%lld", (long long)step);
    qtc_kvs_set_str(&meta, "qtc.checkpoint.step", value);
    for (int i = 0; i < n; i++) {
        const char *name = names[i];
        for (int k = 0; k < 3; k++) {
            qtc_out_entry *x = &e[3 * i + k];
            snprintf(x->name, sizeof x->name, "%s%.*s", k == 0 ? "" : k == 1 ? "adamw.m." : "adamw.v.",
                     (int)(sizeof x->name - 10), name);
            x->dtype = QTC_F32;
            x->ndim = ps[i]->ndim;
            memcpy(x->ne, ps[i]->ne, sizeof x->ne);
        }
    }
    qtc_model_writer *w = qtc_writer_open(path, QTC_FMT_SAFETENSORS, 0, src, e, 3 * n, &meta, err);
    if (!w) {
        rc = err->code;
        goto done;
    }
    for (int i = 0; i < n && rc == QTC_OK; i++)
        for (int k = 0; k < 3 && rc == QTC_OK; k++) {
            const float *mo = k ? qtc_adamw_moment(opt, i, k) : NULL;
            /* a parameter frozen all along has no moments: they are zero */
            qtc_tensor *t = k == 0 ? ps[i]
                            : mo   ? qtc_tensor_wrap(QTC_F32, ps[i]->ndim, ps[i]->ne, (void *)(uintptr_t)mo, NULL, err)
                                   : qtc_tensor_new(QTC_F32, ps[i]->ndim, ps[i]->ne, err);
            rc = t ? qtc_writer_put(w, 3 * i + k, t, err) : err->code;
            if (k)
                qtc_tensor_free(t);
        }
    if (rc == QTC_OK)
        rc = qtc_writer_commit(w, err);
    else
        qtc_writer_abort(w);
done:
    qtc_kvs_free(&meta);
    free(e);
    return rc;
}

qtc_status qtc_checkpoint_load_params(const char *path, qtc_tensor *const *ps, const char *const *names, int n,
                                      qtc_adamw *opt, int64_t *step, qtc_error *err)
{
    qtc_model_file *f = qtc_model_open(path, err);
    if (!f)
        return err->code;
    qtc_status rc = QTC_OK;
    const char *s = qtc_kvs_str(&f->meta, "qtc.checkpoint.step");
    char *end = NULL;
    long long st = s ? strtoll(s, &end, 10) : -1;
    if (!s || *end || st < 0) {
        rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: not a qtc checkpoint (no qtc.checkpoint.step)", path);
        goto done;
    }
    for (int i = 0; i < n && rc == QTC_OK; i++) {
        char full[QTC_NAME_MAX + 16];
        const char *name = names[i];
        for (int k = 0; k < 3 && rc == QTC_OK; k++) {
            snprintf(full, sizeof full, "%s%s", k == 0 ? "" : k == 1 ? "adamw.m." : "adamw.v.", name);
            int j = qtc_model_find(f, full);
            const qtc_tensor_entry *x = j >= 0 ? &f->tensors[j] : NULL;
            if (!x || x->dtype != QTC_F32 || x->nbytes != qtc_tensor_nbytes(ps[i])) {
                rc = qtc_error_set(err, QTC_ERR_INPUT, "%s: tensor '%s' is missing or does not match the model", path, full);
                break;
            }
            float *to = k == 0 ? ps[i]->data : qtc_adamw_moment(opt, i, k);
            if (to) /* a frozen parameter's moments are not kept */
                memcpy(to, x->data, x->nbytes);
        }
    }
    if (rc == QTC_OK) {
        qtc_adamw_set_steps(opt, st);
        *step = st;
    }
done:
    qtc_model_close(f);
    return rc;
}
