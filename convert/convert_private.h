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

/* qlayout.c: quantized layouts in safetensors */
/* Folds the stored parts of each quantized weight among m's entries into one
 * entry under the weight's own name. */
qtc_status qlayout_fold(qtc_model_file *m, qtc_error *err);
/* What the layouts share: a weight's module path (its name without
 * ".weight"), codes per 32-bit word, groups per row, a + b into a
 * QTC_NAME_MAX name (0 when it does not fit), an entry named module + suffix
 * (0 when the name does not fit), a tensor shaped as an entry, and whether an
 * entry has a type and shape. */
void qlayout_module_of(const char *weight_name, char *out, size_t cap);
int qlayout_per_word(int bits);
int64_t qlayout_groups_of(const qtc_qscheme *s, int64_t cols);
int qlayout_join(char *out, const char *a, const char *b);
int qlayout_entry(qtc_out_entry *e, const char *module, const char *suffix, qtc_dtype t, int ndim, int64_t a, int64_t b);
qtc_tensor *qlayout_new_like(const qtc_out_entry *e, qtc_error *err);
int qlayout_is_shape(const qtc_tensor_entry *e, qtc_dtype t, int ndim, int64_t a, int64_t b);
/* The entry named module + suffix (".qzeros"), or -1. */
int qlayout_find_part(const qtc_model_file *m, const char *module, const char *suffix);

/* qlayout_gptq.c: GPTQ's layout */
/* The bits and group of a GPTQ quantization_config; 0 when it is not one. */
int qlayout_gptq_scheme(const char *config_json, qtc_qscheme *s);
/* Folds one GPTQ weight (qi: its qweight entry); its other parts are marked in hide. */
qtc_status qlayout_fold_gptq(qtc_model_file *m, int qi, const qtc_qscheme *cfg, char *hide, qtc_error *err);
/* A folded GPTQ weight's codes, scales and zero points into q. */
void qlayout_gptq_unpack(const qtc_qparts *p, qtc_qweight *q);

/* carry.c: metadata carried along by conversions */
/* An HF config.json for a llama configuration (malloc'd). */
char *carry_config_json(const qtc_llama_config *c);
/* The KVs whose keys start with prefix, as JSON (malloc'd), and back. */
char *carry_kvs_to_json(const qtc_kvs *kv, const char *prefix);
qtc_status carry_kvs_from_json(qtc_kvs *kv, const char *json, const char *what, qtc_error *err);

#endif
