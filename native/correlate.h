/* Correlation ids and severity of an ASCII log body, in C: the same answer as
 * shipper.enrich.correlation.Correlator.extract (the reference), for the bodies it accepts. */
#ifndef SHIPPER_CORRELATE_H
#define SHIPPER_CORRELATE_H

#include "buf.h"

/* Adds the type `Correlator` to the module. */
int correlate_register(PyObject *module);

/* Whether `object` is a _native.Correlator (ask while holding the GIL). */
int correlate_is(PyObject *object);

/* `correlator` is a _native.Correlator. Appends the top-level members and the attribute members
 * (exactly the two strings Correlator.extract returns) to `top` and `attrs`, and returns 1; returns 0
 * (buffers unchanged) for a body the native code does not take (non-ASCII), which then goes to the
 * Python reference; -1 when memory runs out. Touches no Python object: callable without the GIL. */
int correlate_extract(PyObject *correlator, const char *body, Py_ssize_t len, buf_t *top, buf_t *attrs);

#endif
