/* unicode_classes.h: Unicode general categories as ranges (private to model/). */
#ifndef QTC_UNICODE_CLASSES_H
#define QTC_UNICODE_CLASSES_H

#include <stdint.h>

typedef struct qtc_ucp_range {
    uint32_t first, last;
    uint8_t cls; /* 0 unassigned, 1 letter, 2 number, 3 other assigned */
} qtc_ucp_range;

extern const qtc_ucp_range qtc_ucp_ranges[];
extern const int qtc_ucp_n_ranges;

#endif
