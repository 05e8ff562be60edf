/* carry.h: metadata carried along by conversions (private to convert/). */
#ifndef QTC_CONVERT_CARRY_H
#define QTC_CONVERT_CARRY_H

#include "qtc/convert.h"

/* An HF config.json for a llama configuration (malloc'd). */
char *carry_config_json(const qtc_llama_config *c);
/* The KVs whose keys start with prefix, as JSON (malloc'd), and back. */
char *carry_kvs_to_json(const qtc_kvs *kv, const char *prefix);
qtc_status carry_kvs_from_json(qtc_kvs *kv, const char *json, const char *what, qtc_error *err);

#endif
