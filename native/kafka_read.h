/* Reading Kafka v2 records, the inverse of kafka.c: the records section of one record batch (after the
 * batch header, decompressed) -> one record at a time, its offset delta, key, value and headers pointing
 * into the caller's bytes. shipper.verify.batches.read_record_py is the reference and names the errors
 * the same way (ERROR_MESSAGES there, by these codes).
 *
 * Never trusts its input: every read is bounds-checked against the record's own stated length, a varint
 * is at most 10 bytes, and a length that runs past its record is an error, never a read. No Python object
 * is touched (callers run it without the GIL). Header-only: inlined into the verifier's loop. */
#ifndef SHIPPER_KAFKA_READ_H
#define SHIPPER_KAFKA_READ_H

#include <stdint.h>
#include <stddef.h>

enum {
    KREAD_OK = 0,
    KREAD_TRUNCATED = 1,    /* a field runs past the end of its record (or the record's length past the data) */
    KREAD_VARINT = 2,       /* a varint longer than 10 bytes */
    KREAD_LENGTH = 3,       /* a negative record length, or one past the end of the data */
    KREAD_NEGATIVE = 4,     /* a key or value length below -1, a header count or header key length below 0 */
    KREAD_OFFSET = 5,       /* an offset delta outside 0..2**31-1, or an offset past 2**63-1 */
    KREAD_SIZE = 6,         /* the record's fields end before its stated length */
    KREAD_COUNT = 7,        /* the data ends before the record count of the batch header */
    KREAD_TRAILING = 8,     /* bytes after the last record the batch header counts */
};

typedef const unsigned char *kread_cursor;

typedef struct {
    int64_t offset_delta;
    kread_cursor key;           /* NULL: a null key */
    int64_t key_len;
    kread_cursor value;         /* NULL: a null value */
    int64_t value_len;
    kread_cursor headers;       /* the first header; `header_count` of them, validated, end at `end` */
    int64_t header_count;
    kread_cursor end;           /* the end of the record */
} kread_record_t;

typedef struct {
    kread_cursor key;
    int64_t key_len;
    kread_cursor value;         /* NULL: a null value */
    int64_t value_len;
} kread_header_t;

/* Kafka's varint: 7 bits a byte, low first, then zigzag; bits past 64 are dropped (as the reference does). */
static inline int kread_varint(kread_cursor *at, kread_cursor end, int64_t *out) {
    kread_cursor p = *at;
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (p >= end)
            return KREAD_TRUNCATED;
        unsigned char b = *p++;
        v |= (uint64_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) {
            *out = (int64_t)((v >> 1) ^ (0 - (v & 1)));
            *at = p;
            return KREAD_OK;
        }
    }
    return KREAD_VARINT;
}

/* A byte string of a varint length: -1 is null (when `nullable`), other negatives are errors. */
static inline int kread_bytes(kread_cursor *at, kread_cursor end, int nullable, kread_cursor *data, int64_t *len) {
    int64_t n;
    int error = kread_varint(at, end, &n);
    if (error)
        return error;
    if (n == -1 && nullable) {
        *data = NULL;
        *len = -1;
        return KREAD_OK;
    }
    if (n < 0)
        return KREAD_NEGATIVE;
    if (n > end - *at)
        return KREAD_TRUNCATED;
    *data = *at;
    *len = n;
    *at += n;
    return KREAD_OK;
}

/* One header of a record kafka_read_record accepted (so it cannot fail there; it is checked all the same). */
static inline int kread_header(kread_cursor *at, kread_cursor end, kread_header_t *out) {
    int error = kread_bytes(at, end, 0, &out->key, &out->key_len);
    return error ? error : kread_bytes(at, end, 1, &out->value, &out->value_len);
}

/* The record at *at (its length varint first), within [*at, end). On success *at moves past it. */
static inline int kread_record(kread_cursor *at, kread_cursor end, kread_record_t *out) {
    kread_cursor p = *at;
    int64_t length, ignored;
    int error = kread_varint(&p, end, &length);
    if (error)
        return error;
    if (length < 0 || length > end - p)
        return KREAD_LENGTH;
    kread_cursor stop = p + length;
    if (p >= stop)
        return KREAD_TRUNCATED;
    p++;   /* attributes: unused in v2 records */
    if ((error = kread_varint(&p, stop, &ignored)) != KREAD_OK)   /* timestamp delta */
        return error;
    if ((error = kread_varint(&p, stop, &out->offset_delta)) != KREAD_OK)
        return error;
    if (out->offset_delta < 0 || out->offset_delta > INT32_MAX)
        return KREAD_OFFSET;
    if ((error = kread_bytes(&p, stop, 1, &out->key, &out->key_len)) != KREAD_OK)
        return error;
    if ((error = kread_bytes(&p, stop, 1, &out->value, &out->value_len)) != KREAD_OK)
        return error;
    if ((error = kread_varint(&p, stop, &out->header_count)) != KREAD_OK)
        return error;
    if (out->header_count < 0)
        return KREAD_NEGATIVE;
    out->headers = p;
    for (int64_t i = 0; i < out->header_count; i++) {
        kread_header_t header;
        if ((error = kread_header(&p, stop, &header)) != KREAD_OK)
            return error;
    }
    if (p != stop)
        return KREAD_SIZE;
    out->end = stop;
    *at = stop;
    return KREAD_OK;
}

#endif
