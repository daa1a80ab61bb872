/* A growable byte buffer shared by the native hot-path files. Header-only: every function is small
 * and inlined into its caller's loop. Usable without the GIL (raw allocator); a failed allocation
 * returns -1, and sets a Python MemoryError only when the calling thread holds the GIL. */
#ifndef SHIPPER_BUF_H
#define SHIPPER_BUF_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} buf_t;

static inline void buf_init(buf_t *b) { b->data = NULL; b->len = 0; b->cap = 0; }

static inline void buf_free(buf_t *b) { PyMem_RawFree(b->data); buf_init(b); }

static inline int buf_reserve(buf_t *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    char *data = PyMem_RawRealloc(b->data, (size_t)cap);
    if (data == NULL) {
        if (PyGILState_Check())
            PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline int buf_put(buf_t *b, const void *src, Py_ssize_t n) {
    if (n == 0)
        return 0;
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

static inline int buf_putc(buf_t *b, char c) {
    if (buf_reserve(b, 1) < 0)
        return -1;
    b->data[b->len++] = c;
    return 0;
}

#define buf_lit(b, s) buf_put((b), (s), (Py_ssize_t)(sizeof(s) - 1))

/* Decimal digits of `value` into dst (room for 21 bytes); returns their count. snprintf costs more than
 * the rest of a record's rendering. */
static inline int buf_decimal(char *dst, long long value) {
    char tmp[24];
    int n = 0, k = 0;
    unsigned long long v = value < 0 ? 0ULL - (unsigned long long)value : (unsigned long long)value;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (value < 0)
        dst[k++] = '-';
    while (n)
        dst[k++] = tmp[--n];
    return k;
}

/* Whether s[0:n] is all ASCII, eight bytes at a time. */
static inline int is_ascii(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    uint64_t high = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t word;
        memcpy(&word, s + i, 8);
        high |= word;
    }
    for (; i < n; i++)
        high |= s[i];
    return (high & UINT64_C(0x8080808080808080)) == 0;
}

#endif
