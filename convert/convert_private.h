/* convert_private.h: the functions the files of convert/ share (private to
 * convert/, hidden in libqtc.so). */
#ifndef QTC_CONVERT_PRIVATE_H
#define QTC_CONVERT_PRIVATE_H

#include "qtc/convert.h"

/* model.c */
/* Appends a tensor entry to m (growing the array). */
qtc_tensor_entry *model_add_entry(qtc_model_file *m, qtc_error *err);
/* Adds an input to m and opens it; returns its index or -1. */
int model_add_input(qtc_model_file *m, const char *path, qtc_error *err);

/* safetensors.c, gguf.c, llama2c.c: each parser reads input `in` of m and
 * appends its tensors (and metadata). */
qtc_status safetensors_parse(qtc_model_file *m, int in, qtc_error *err);
qtc_status gguf_parse(qtc_model_file *m, int in, qtc_error *err);
qtc_status llama2c_parse(qtc_model_file *m, int in, qtc_error *err);
/* 1 when in's size is what a llama2.c checkpoint of its header's
 * configuration takes (llama2.c files have no magic). */
int llama2c_detect(const qtc_in *in);

/* safetensors.c */
/* The JSON header of a safetensors file for entries laid out in the
 * reference writer's order: fills order[] (entry indices in file order) and
 * offsets[] (relative to the data section) and returns a malloc'd header
 * (space-padded to a multiple of 8) of *len bytes, or NULL. */
char *safetensors_header(const qtc_out_entry *e, int n, const qtc_kvs *meta, int *order,
                         uint64_t *offsets, uint64_t *len, qtc_error *err);
const char *safetensors_dtype_name(qtc_dtype t);
/* Bytes of a tensor of this type and shape, or SIZE_MAX on overflow or a row
 * that is not whole blocks. */
size_t entry_nbytes(qtc_dtype t, int ndim, const int64_t *ne);

/* qlayout.c */
/* Folds the stored parts of each quantized weight among m's entries into one
 * entry under the weight's own name. */
qtc_status qlayout_fold(qtc_model_file *m, qtc_error *err);

/* carry.c: metadata carried along by conversions */
/* An HF config.json for a llama configuration (malloc'd). */
char *carry_config_json(const qtc_llama_config *c);
/* The KVs whose keys start with prefix, as JSON (malloc'd), and back. */
char *carry_kvs_to_json(const qtc_kvs *kv, const char *prefix);
qtc_status carry_kvs_from_json(qtc_kvs *kv, const char *json, const char *what, qtc_error *err);

#endif
