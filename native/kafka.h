#ifndef SHIPPER_KAFKA_H
#define SHIPPER_KAFKA_H
#include "buf.h"
/* Adds kafka_records to the module. */
int kafka_register(PyObject *module);
#endif
