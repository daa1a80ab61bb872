#ifndef SHIPPER_SEAL_H
#define SHIPPER_SEAL_H
#include "buf.h"
/* Adds seal_entries and the redaction prefilter to the module. */
int seal_register(PyObject *module);
#endif
