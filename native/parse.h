#ifndef SHIPPER_PARSE_H
#define SHIPPER_PARSE_H
#include "buf.h"
/* Adds cri_lines to the module. */
int parse_register(PyObject *module);
#endif
