#ifndef SHIPPER_PARSE_H
#define SHIPPER_PARSE_H
#include "buf.h"

/* One entry the native CRI loop parsed, left inside the data it was read from (cri_rows): what
 * shipper.parse.Entries keeps in `raw` and the seal loop reads without a Python object per line. */
typedef struct {
    int64_t ordinal;            /* its place among all entries of the Entries */
    int64_t offset;             /* file offset of the line */
    int64_t time_pos, time_n;   /* the runtime's timestamp, in data */
    int64_t stream;             /* 0 stdout, 1 stderr */
    int64_t body_pos, body_n;   /* the message, in data */
} raw_row_t;

/* Adds cri_rows to the module. */
int parse_register(PyObject *module);
#endif
