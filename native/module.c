/* shipper._native: the per-line hot path in C, behind the same batch APIs as the Python reference
 * implementations: the CRI line loop (StreamParser's Python loop), the sealing loop
 * (records.seal_entries_py) with the redaction prefilter (enrich.redact.default_candidate), correlation
 * ids (enrich.correlation.Correlator.extract), and the Kafka record batch body and its snappy block
 * (kafka_records_py, _snappy_block_py), and the verifier's record decoder (verify.scan.verify_scan_py)
 * with its reader of Kafka record batches (verify.batches.verify_records_py).
 * The Python code stays the specification: tests feed both the same inputs and require byte-identical
 * output. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "correlate.h"
#include "kafka.h"
#include "merkle.h"
#include "parse.h"
#include "seal.h"
#include "verify.h"

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "shipper._native", "Native hot path of audit-shipper.", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *module = PyModule_Create(&native_module);
    if (module == NULL)
        return NULL;
    if (correlate_register(module) < 0 || seal_register(module) < 0 || kafka_register(module) < 0
        || parse_register(module) < 0 || merkle_register(module) < 0
        || verify_register(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
