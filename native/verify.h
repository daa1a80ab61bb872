#ifndef SHIPPER_VERIFY_H
#define SHIPPER_VERIFY_H
#include "buf.h"
/* Adds verify_scan (the verifier's bulk record decoder) to the module. */
int verify_register(PyObject *module);
#endif
