/* Kafka record-batch v2 records, built in C: the same bytes as shipper.kafka.kafka_records_py (the
 * reference). Each record carries the chain as its key and two headers, `schema` (the value's own:
 * audit-shipper/v2 when the value starts as a v2 record does, else audit-shipper/v1) and `event_id`
 * (`<chain>:<seq>`); its timestamp delta is 0 (the batch's first timestamp applies to all), its offset
 * delta its index in the batch. The batch header, CRC and compression stay with aiokafka's builder. */
#include "kafka.h"

#include <snappy-c.h>

#include <stdint.h>

static const char SCHEMA[] = "audit-shipper/v1";
static const char SCHEMA_V2[] = "audit-shipper/v2";     /* the same length as SCHEMA */
static const char V2_PREFIX[] = "{\"schema\":\"audit-shipper/v2\"";

static const char *schema_of(const char *value, Py_ssize_t n) {
    return n >= (Py_ssize_t)sizeof V2_PREFIX - 1 && memcmp(value, V2_PREFIX, sizeof V2_PREFIX - 1) == 0 ? SCHEMA_V2
                                                                                                        : SCHEMA;
}

/* Kafka's signed varint: zigzag, then 7 bits per byte, low first. */
static int varint_size(int64_t value) {
    uint64_t v = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    int n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static char *put_varint(char *p, int64_t value) {
    uint64_t v = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    while (v >= 0x80) {
        *p++ = (char)(v | 0x80);
        v >>= 7;
    }
    *p++ = (char)v;
    return p;
}

/* `out` writes into the memory of the bytearray `records` (the GIL is held throughout): grown by doubling
 * through PyByteArray_Resize, cut to its length at the end. The bytearray is what the batch builder keeps,
 * so the records are never copied out of a scratch buffer. */
static int records_reserve(PyObject *records, buf_t *out, Py_ssize_t extra) {
    if (out->len + extra <= out->cap)
        return 0;
    Py_ssize_t cap = out->cap > 256 ? out->cap : 256;
    while (cap < out->len + extra)
        cap *= 2;
    if (PyByteArray_Resize(records, cap) < 0)
        return -1;
    out->data = PyByteArray_AS_STRING(records);
    out->cap = cap;
    return 0;
}

/* kafka_records(spans, budget, limit, reserve=0) -> (records, taken, value_bytes)
 * records: a bytearray of `reserve` zero bytes (room for the batch header) and then the records.
 * spans: [(key: bytes, first_seq: int, values, start: int, stop: int)], records values[start:stop] with
 * seqs first_seq, first_seq+1, ...; values is a list of bytes, or (payload: bytes, ends: array('q')) with
 * value i at payload[ends[i]:ends[i+1]] (a run left inside its WAL frame). Records are taken in order while the records
 * section stays within `budget` bytes (the first always), and stop before a value longer than `limit`.
 * taken[i] is how many records of spans[i] were taken. */
static PyObject *kafka_records(PyObject *self, PyObject *args) {
    PyObject *spans;
    Py_ssize_t budget, limit, reserve = 0;
    if (!PyArg_ParseTuple(args, "O!nn|n", &PyList_Type, &spans, &budget, &limit, &reserve))
        return NULL;
    if (reserve < 0) {
        PyErr_SetString(PyExc_ValueError, "reserve is not negative");
        return NULL;
    }
    buf_t out;
    buf_init(&out);
    PyObject *taken = PyList_New(0), *result = NULL, *records = PyByteArray_FromStringAndSize(NULL, 0);
    if (taken == NULL || records == NULL) {
        Py_XDECREF(taken);
        Py_XDECREF(records);
        return NULL;
    }
    long long offset_delta = 0, value_bytes = 0;
    int full = 0;
    Py_buffer ends_view, payload_view; /* a packed run's offsets and payload, held while it is read */
    int holding = 0, holding_payload = 0;
    /* The header's room, then the records; sized for a full batch at once (no regrowth copies). */
    if (records_reserve(records, &out, reserve + (budget < (1 << 26) ? budget + 4096 : 1 << 16)) < 0)
        goto done;
    memset(out.data, 0, (size_t)reserve);
    out.len = reserve;
    for (Py_ssize_t s = 0; s < PyList_GET_SIZE(spans) && !full; s++) {
        PyObject *span = PyList_GET_ITEM(spans, s);
        const char *key;
        Py_ssize_t key_n, start, stop;
        long long first_seq;
        PyObject *values;
        if (!PyTuple_Check(span) || !PyArg_ParseTuple(span, "y#LOnn", &key, &key_n, &first_seq, &values, &start,
                                                      &stop))
            goto done;
        /* A packed run: the payload and its value offsets. */
        const char *payload = NULL;
        const long long *ends = NULL;
        Py_ssize_t n_values;
        if (holding) {
            PyBuffer_Release(&ends_view);
            holding = 0;
        }
        if (PyList_Check(values)) {
            n_values = PyList_GET_SIZE(values);
        } else {
            PyObject *payload_o, *ends_o;
            if (!PyTuple_Check(values) || !PyArg_ParseTuple(values, "OO", &payload_o, &ends_o))
                goto done;
            if (holding_payload) {
                PyBuffer_Release(&payload_view);
                holding_payload = 0;
            }
            if (PyObject_GetBuffer(payload_o, &payload_view, PyBUF_SIMPLE) < 0)
                goto done;
            holding_payload = 1;
            if (PyObject_GetBuffer(ends_o, &ends_view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
                goto done;
            holding = 1;
            int ok = ends_view.itemsize == 8 && ends_view.format && (ends_view.format[0] == 'q' || ends_view.format[0] == 'l')
                     && ends_view.len >= 8;
            if (ok) {
                payload = payload_view.buf;
                ends = ends_view.buf;
                n_values = ends_view.len / 8 - 1;
                for (Py_ssize_t i = 0; ok && i <= n_values; i++)
                    ok = ends[i] >= 0 && ends[i] <= payload_view.len && (i == 0 || ends[i] >= ends[i - 1]);
            }
            if (!ok) {
                PyErr_SetString(PyExc_ValueError, "a packed run is (a bytes-like payload, array('q') of ascending offsets)");
                goto done;
            }
        }
        if (start < 0 || stop > n_values || start > stop) {
            PyErr_SetString(PyExc_IndexError, "span outside its values");
            goto done;
        }
        Py_ssize_t count = 0;
        for (Py_ssize_t i = start; i < stop; i++) {
            const char *value_s;
            Py_ssize_t value_n;
            if (ends != NULL) {
                value_s = payload + ends[i];
                value_n = (Py_ssize_t)(ends[i + 1] - ends[i]);
            } else {
                PyObject *value = PyList_GET_ITEM(values, i);
                if (!PyBytes_Check(value)) {
                    PyErr_SetString(PyExc_TypeError, "values are bytes");
                    goto done;
                }
                value_s = PyBytes_AS_STRING(value);
                value_n = PyBytes_GET_SIZE(value);
            }
            if (value_n > limit) {
                full = 1;
                break;
            }
            char seq_text[24];
            int seq_n = buf_decimal(seq_text, first_seq + (i - start));
            Py_ssize_t event_n = key_n + 1 + seq_n;
            int64_t body = 1 + 1 + varint_size(offset_delta) + varint_size(key_n) + key_n + varint_size(value_n)
                           + value_n + 1 + 1 + 6 + varint_size((int64_t)sizeof SCHEMA - 1) + (int64_t)sizeof SCHEMA - 1
                           + 1 + 8 + varint_size(event_n) + event_n;
            Py_ssize_t size = (Py_ssize_t)(body + varint_size(body));
            if (offset_delta > 0 && out.len - reserve + size > budget) {
                full = 1;
                break;
            }
            if (records_reserve(records, &out, size) < 0)
                goto done;
            char *p = out.data + out.len;
            p = put_varint(p, body);
            *p++ = 0;                               /* attributes */
            *p++ = 0;                               /* timestamp delta (varint 0) */
            p = put_varint(p, offset_delta);
            p = put_varint(p, key_n);
            memcpy(p, key, (size_t)key_n);
            p += key_n;
            p = put_varint(p, value_n);
            memcpy(p, value_s, (size_t)value_n);
            p += value_n;
            p = put_varint(p, 2);                   /* headers */
            p = put_varint(p, 6);
            memcpy(p, "schema", 6);
            p += 6;
            p = put_varint(p, (int64_t)sizeof SCHEMA - 1);
            memcpy(p, schema_of(value_s, value_n), sizeof SCHEMA - 1);
            p += sizeof SCHEMA - 1;
            p = put_varint(p, 8);
            memcpy(p, "event_id", 8);
            p += 8;
            p = put_varint(p, event_n);
            memcpy(p, key, (size_t)key_n);
            p += key_n;
            *p++ = ':';
            memcpy(p, seq_text, (size_t)seq_n);
            p += seq_n;
            out.len = p - out.data;
            offset_delta++;
            value_bytes += value_n;
            count++;
        }
        PyObject *n = PyLong_FromSsize_t(count);
        if (n == NULL || PyList_Append(taken, n) < 0) {
            Py_XDECREF(n);
            goto done;
        }
        Py_DECREF(n);
    }
    if (PyByteArray_Resize(records, out.len) < 0)
        goto done;
    result = Py_BuildValue("(OOL)", records, taken, value_bytes);
done:
    if (holding)
        PyBuffer_Release(&ends_view);
    if (holding_payload)
        PyBuffer_Release(&payload_view);
    Py_DECREF(taken);
    Py_DECREF(records);
    return result;
}

/* snappy_block(buffer, start) -> bytes: buffer[start:] compressed as one raw snappy block, by libsnappy
 * with the GIL released (cramjam holds it, and the batch compression is the sender's largest cost). The
 * buffer is exported for the call, so a bytearray cannot be resized meanwhile. */
static PyObject *snappy_block(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "y*n", &view, &start))
        return NULL;
    if (start < 0 || start > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_IndexError, "start outside the buffer");
        return NULL;
    }
    size_t in_n = (size_t)(view.len - start);
    size_t out_n = snappy_max_compressed_length(in_n);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)out_n);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    snappy_status status;
    Py_BEGIN_ALLOW_THREADS
    status = snappy_compress((const char *)view.buf + start, in_n, PyBytes_AS_STRING(out), &out_n);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (status != SNAPPY_OK) {
        Py_DECREF(out);
        PyErr_Format(PyExc_RuntimeError, "snappy_compress failed (status %d)", (int)status);
        return NULL;
    }
    if (_PyBytes_Resize(&out, (Py_ssize_t)out_n) < 0)
        return NULL;
    return out;
}

static PyMethodDef KAFKA_METHODS[] = {
    {"snappy_block", snappy_block, METH_VARARGS, "buffer[start:] as one raw snappy block (GIL released)."},
    {"kafka_records", kafka_records, METH_VARARGS, "Kafka v2 records for spans of sealed values (see kafka.py)."},
    {NULL, NULL, 0, NULL},
};

int kafka_register(PyObject *module) { return PyModule_AddFunctions(module, KAFKA_METHODS); }
