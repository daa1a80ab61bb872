/* Appending leaves to an RFC 6962 Merkle tree kept as its frontier: byte for byte what
 * shipper.merkle.merkle_extend_py returns (the reference, which the tests compare against).
 *
 * It runs once per shipped record, so each hash is one or two SHA-256 compression calls on blocks
 * padded here once: a leaf hash (0x00 || 32 bytes) fits one block, a node hash (0x01 || 64 bytes) two.
 * SHA256_Transform is OpenSSL's block function (SHA-NI where the CPU has it) without the buffering
 * and finalisation of SHA256_Update/Final; nothing is allocated per leaf. */
#include "merkle.h"

#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

/* Below this many leaves the hashing is shorter than handing the GIL over and back. */
#define RELEASE_GIL_LEAVES 256

static SHA256_CTX INITIAL;   /* the SHA-256 initial state, copied for every hash */

typedef struct {
    unsigned char leaf[64];           /* 0x00 || leaf data || padding for 33 bytes */
    unsigned char node[2][64];        /* 0x01 || left || right || padding for 65 bytes */
} blocks_t;

static void blocks_init(blocks_t *b) {
    memset(b, 0, sizeof *b);
    b->leaf[0] = 0x00;
    b->leaf[33] = 0x80;
    b->leaf[62] = (33 * 8) >> 8;      /* the message length in bits, big-endian */
    b->leaf[63] = (33 * 8) & 0xff;
    b->node[0][0] = 0x01;
    b->node[1][1] = 0x80;
    b->node[1][62] = (65 * 8) >> 8;
    b->node[1][63] = (65 * 8) & 0xff;
}

static inline void digest_of(const SHA256_CTX *c, unsigned char *out) {
    for (int i = 0; i < 8; i++) {
        uint32_t w = __builtin_bswap32((uint32_t)c->h[i]);
        memcpy(out + 4 * i, &w, 4);
    }
}

/* SHA256_Transform reads and writes only the chaining value h; the rest of the context stays unset. */
static inline void start(SHA256_CTX *c) { memcpy(c->h, INITIAL.h, sizeof c->h); }

static inline void leaf_hash(blocks_t *b, const unsigned char *data, unsigned char *out) {
    SHA256_CTX c;
    start(&c);
    memcpy(b->leaf + 1, data, 32);
    SHA256_Transform(&c, b->leaf);
    digest_of(&c, out);
}

/* `out` may be `left` or `right`: both are copied into the blocks before it is written. */
static inline void node_hash(blocks_t *b, const unsigned char *left, const unsigned char *right, unsigned char *out) {
    SHA256_CTX c;
    start(&c);
    memcpy(b->node[0] + 1, left, 32);
    memcpy(b->node[0] + 33, right, 31);
    b->node[1][0] = right[31];
    SHA256_Transform(&c, b->node[0]);
    SHA256_Transform(&c, b->node[1]);
    digest_of(&c, out);
}

/* The frontier after appending `count` leaves to a tree of `size` leaves: stack[0..depth) holds the
 * perfect subtree roots, largest first; returns the new depth. Touches no Python object. */
static int extend(unsigned char (*stack)[32], int depth, uint64_t size, const unsigned char *leaves, Py_ssize_t count) {
    blocks_t b;
    blocks_init(&b);
    for (Py_ssize_t i = 0; i < count; i++, size++) {
        unsigned char *top = stack[depth];
        leaf_hash(&b, leaves + 32 * i, top);
        /* Each trailing 1 bit of size is a perfect subtree as large as the one being built: merge. */
        for (uint64_t carry = size; carry & 1; carry >>= 1) {
            depth--;
            node_hash(&b, stack[depth], top, stack[depth]);
            top = stack[depth];
        }
        depth++;
    }
    return depth;
}

/* merkle_extend(nodes: bytes, size: int, leaves: bytes) -> bytes
 * nodes: the frontier of a tree of `size` leaves (32 bytes per 1 bit of size); leaves: 32-byte leaf
 * datas, concatenated. Returns the frontier of the tree of size + len(leaves) / 32 leaves. */
static PyObject *merkle_extend(PyObject *self, PyObject *args) {
    Py_buffer nodes, leaves;
    PyObject *size_o, *result = NULL;
    if (!PyArg_ParseTuple(args, "y*Oy*", &nodes, &size_o, &leaves))
        return NULL;
    unsigned long long size = PyLong_AsUnsignedLongLong(size_o);
    if (size == (unsigned long long)-1 && PyErr_Occurred())
        goto done;
    Py_ssize_t count = leaves.len / 32;
    int depth = __builtin_popcountll(size);
    if (nodes.len != 32 * (Py_ssize_t)depth) {
        PyErr_SetString(PyExc_ValueError, "a frontier holds 32 bytes per 1 bit of the tree size");
        goto done;
    }
    if (leaves.len % 32 != 0) {
        PyErr_SetString(PyExc_ValueError, "packed leaves are a multiple of 32 bytes");
        goto done;
    }
    if ((unsigned long long)count > UINT64_MAX - size) {
        PyErr_SetString(PyExc_OverflowError, "a tree has fewer than 2**64 leaves");
        goto done;
    }
    /* One slot per bit of the size, and one for the leaf being merged. */
    unsigned char stack[65][32];
    memcpy(stack, nodes.buf, (size_t)nodes.len);
    if (count >= RELEASE_GIL_LEAVES) {
        Py_BEGIN_ALLOW_THREADS
        depth = extend(stack, depth, size, leaves.buf, count);
        Py_END_ALLOW_THREADS
    } else {
        depth = extend(stack, depth, size, leaves.buf, count);
    }
    result = PyBytes_FromStringAndSize((const char *)stack, 32 * (Py_ssize_t)depth);
done:
    PyBuffer_Release(&nodes);
    PyBuffer_Release(&leaves);
    return result;
}

static PyMethodDef MERKLE_METHODS[] = {
    {"merkle_extend", merkle_extend, METH_VARARGS,
     "Append packed 32-byte leaves to a Merkle frontier (see merkle.py)."},
    {NULL, NULL, 0, NULL},
};

int merkle_register(PyObject *module) {
    SHA256_Init(&INITIAL);
    return PyModule_AddFunctions(module, MERKLE_METHODS);
}
