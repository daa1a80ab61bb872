#ifndef SHIPPER_MERKLE_H
#define SHIPPER_MERKLE_H
#include <Python.h>
/* Adds merkle_extend to the module. */
int merkle_register(PyObject *module);
#endif
