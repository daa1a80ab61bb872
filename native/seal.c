/* The sealing loop in C: entries of one chain -> `audit-shipper/v1` or `/v2` record values, byte for byte
 * what shipper.records.seal_entries_py builds (the reference, which the tests compare against).
 *
 * Fast path, per entry: an ASCII body that the built-in redaction prefilter clears and the native
 * correlator takes is quoted, hashed and rendered here without a Python object beyond the record's
 * bytes. Every other entry (non-ASCII or invalid UTF-8, a redaction candidate, configured redaction
 * rules, JSON body fields) asks the Python `slow_entry(body, process_body)` for its body and members,
 * and is then hashed and rendered here the same way. */
#include "seal.h"
#include "correlate.h"
#include "parse.h"

#include <openssl/sha.h>
#include <stdint.h>

/* EntryFlag bits (shipper/parse.py) that become attributes, in the reference's order. */
static const struct {
    long flag;
    const char *member;
} FLAG_MEMBERS[] = {
    {8, "\"log.parse_error\":\"cri_header\""},
    {16, "\"log.parse_error\":\"docker_json\""},
    {32, "\"log.invalid_utf8\":true"},
    {2, "\"log.truncated\":true"},
    {4, "\"log.continued\":true"},
    {64, "\"log.multiline\":true"},
    {128, "\"log.unterminated\":true"},
};
#define ATTRIBUTE_FLAGS (8 | 16 | 32 | 2 | 4 | 64 | 128)
#define FLAG_BAD_UTF8 32

/* Could a built-in redaction rule (shipper.enrich.redact.DEFAULT_RULES) change this ASCII body? A "no"
 * must be certain: the body then skips the rules. It is sharper than the Python prefilter (which it may
 * only ever narrow), so trace ids do not send one line in sixty to the Python rules:
 *   bearer_token           `earer` or `EARER`;
 *   aws_access_key_id      `AKIA` or `ASIA`;
 *   aws_secret_access_key  `ccess_` or `CCESS_` (the rule takes `access_Key` and `ACCESS_key` too);
 *   url_password           `://` with an `@` somewhere after it;
 *   credit_card            13 digits, single spaces or dashes allowed between them, the first not glued
 *                          to a letter or digit before it (the rule's look-behind); a run inside a hex
 *                          id starts glued to a letter and cannot match.
 * One branch-light pass: digit runs by table, the literal triggers checked only where their first two
 * bytes occur. */
/* PAIR_SECOND[x]: the byte after x that begins a trigger (`ea`, `EA`, `IA`, `:/`, `cc`, `CC`), or 0. */
static unsigned char IS_DIGIT[256], IS_ALNUM[256], IS_SEPARATOR[256], PAIR_SECOND[256];

static void classes_init(void) {
    for (int c = 0; c < 256; c++) {
        IS_DIGIT[c] = c >= '0' && c <= '9';
        IS_ALNUM[c] = IS_DIGIT[c] || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    }
    IS_SEPARATOR[' '] = IS_SEPARATOR['-'] = 1;
    static const char *const pairs[] = {"ea", "EA", "IA", ":/", "cc", "CC"};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
        PAIR_SECOND[(unsigned char)pairs[i][0]] = (unsigned char)pairs[i][1];
}

static int starts(const unsigned char *p, Py_ssize_t left, const char *lit, Py_ssize_t k) {
    return left >= k && memcmp(p, lit, (size_t)k) == 0;
}

/* The trigger whose first two bytes are at b[i], if it is there. */
static int trigger_at(const unsigned char *b, Py_ssize_t n, Py_ssize_t i) {
    const unsigned char *p = b + i;
    Py_ssize_t left = n - i;
    switch (p[0]) {
    case 'e': return starts(p, left, "earer", 5);
    case 'E': return starts(p, left, "EARER", 5);
    case 'c': return starts(p, left, "ccess_", 6);
    case 'C': return starts(p, left, "CCESS_", 6);
    case ':': return starts(p, left, "://", 3) && memchr(p + 3, '@', (size_t)(left - 3)) != NULL;
    case 'I': return i >= 2 && b[i - 2] == 'A' && (b[i - 1] == 'K' || b[i - 1] == 'S');   /* `AKIA`, `ASIA` */
    default:  return 1;
    }
}

static int default_candidate_exact(const char *s, Py_ssize_t n) {
    const unsigned char *b = (const unsigned char *)s;
    /* Branch-free run arithmetic (hex ids mix digits and letters unpredictably): a digit extends a run,
     * or starts one when the byte before is not alphanumeric; one separator keeps the run, anything
     * else (or a second separator) ends it. */
    unsigned run = 0, prev = 0, prev_separator = 0, longest = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned c = b[i];
        unsigned digit = IS_DIGIT[c], separator = IS_SEPARATOR[c];
        unsigned extended = run ? run + 1 : 1u - IS_ALNUM[prev];
        unsigned kept = prev_separator ? 0 : run;
        run = digit * extended + separator * kept;
        longest |= run >= 13;
        prev_separator = separator;
        if (__builtin_expect(c == PAIR_SECOND[prev], 0) && c && trigger_at(b, n, i - 1))
            return 1;
        prev = c;
    }
    return longest != 0;
}

#ifdef __SSE2__
#include <emmintrin.h>

static inline __m128i is(__m128i block, char c) { return _mm_cmpeq_epi8(block, _mm_set1_epi8(c)); }

static inline unsigned eq16(__m128i block, char c) { return (unsigned)_mm_movemask_epi8(is(block, c)); }

/* Bit i set where p[i] is in [lo, hi]. */
static inline unsigned in_range16(__m128i block, char lo, char hi) {
    __m128i above = _mm_cmpgt_epi8(block, _mm_set1_epi8((char)(lo - 1)));
    __m128i below = _mm_cmplt_epi8(block, _mm_set1_epi8((char)(hi + 1)));
    return (unsigned)_mm_movemask_epi8(_mm_and_si128(above, below));
}


/* Bytes at p[0..15] + k, lower-cased as far as the triggers need (| 0x20 folds A-Z onto a-z; ':', '/'
 * and digits keep their value; '_' becomes 0x7f, which nothing else here becomes). */
static inline __m128i folded(const unsigned char *p) {
    return _mm_or_si128(_mm_loadu_si128((const __m128i *)p), _mm_set1_epi8(0x20));
}


/* A quick "certainly not", 16 bytes at a time: no 13 bytes in a row that are digits, spaces or dashes
 * (a card needs that), and no trigger in any casing (`earer`, `ccess_`, `://`, `ia`). Anything else goes
 * to the exact check. */
static int default_candidate(const char *s, Py_ssize_t n) {
    const unsigned char *b = (const unsigned char *)s;
    unsigned carry = 0;                     /* digit/separator bytes in a row ending the previous block */
    Py_ssize_t i = 0;
    for (; i + 21 <= n; i += 16) {
        const unsigned char *p = b + i;
        __m128i f0 = folded(p), f1 = folded(p + 1), f2 = folded(p + 2), f3 = folded(p + 3), f4 = folded(p + 4),
                f5 = folded(p + 5);
        __m128i hit = _mm_and_si128(_mm_and_si128(is(f0, 'e'), is(f1, 'a')),
                                    _mm_and_si128(_mm_and_si128(is(f2, 'r'), is(f3, 'e')), is(f4, 'r')));
        hit = _mm_or_si128(hit, _mm_and_si128(_mm_and_si128(_mm_and_si128(is(f0, 'c'), is(f1, 'c')), is(f2, 'e')),
                                              _mm_and_si128(_mm_and_si128(is(f3, 's'), is(f4, 's')),
                                                            is(f5, 0x7f))));
        hit = _mm_or_si128(hit, _mm_and_si128(_mm_and_si128(is(f0, ':'), is(f1, '/')), is(f2, '/')));
        hit = _mm_or_si128(hit, _mm_and_si128(is(f0, 'i'), is(f1, 'a')));
        if (_mm_movemask_epi8(hit))
            return default_candidate_exact(s, n);
        __m128i block = _mm_loadu_si128((const __m128i *)p);
        unsigned run = in_range16(block, '0', '9') | eq16(block, ' ') | eq16(block, '-');
        if (run == 0xFFFF) {
            carry += 16;
        } else {
            unsigned leading = (unsigned)__builtin_ctz(~run);          /* from the block's first byte */
            unsigned r = run;
            for (int k = 1; k < 13 && r; k++)
                r &= run >> k;                                          /* bit i: 13 in a row from i */
            if (carry + leading >= 13 || r)
                return default_candidate_exact(s, n);
            carry = (unsigned)__builtin_clz(~(run << 16));              /* ones at the block's end */
        }
        if (carry >= 13)
            return default_candidate_exact(s, n);
    }
    /* The tail, exactly, from the last block on: a run reaching into it started there (a longer one has
     * returned already), and its triggers get 16 bytes of context before them. */
    Py_ssize_t from = i >= 16 ? i - 16 : 0;
    return i < n ? default_candidate_exact(s + from, n - from) : 0;
}
#else
#define default_candidate default_candidate_exact
#endif

/* json.encoder.encode_basestring of an ASCII string (quotes included). */
static const char HEX[] = "0123456789abcdef";

static int put_quoted_ascii(buf_t *out, const char *s, Py_ssize_t n) {
    if (buf_reserve(out, n * 6 + 2) < 0)
        return -1;
    char *p = out->data + out->len;
    *p++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *p++ = (char)c;
            continue;
        }
        *p++ = '\\';
        switch (c) {
        case '"': *p++ = '"'; break;
        case '\\': *p++ = '\\'; break;
        case '\n': *p++ = 'n'; break;
        case '\r': *p++ = 'r'; break;
        case '\t': *p++ = 't'; break;
        case '\b': *p++ = 'b'; break;
        case '\f': *p++ = 'f'; break;
        default:
            *p++ = 'u'; *p++ = '0'; *p++ = '0';
            *p++ = HEX[c >> 4]; *p++ = HEX[c & 15];
        }
    }
    *p++ = '"';
    out->len = p - out->data;
    return 0;
}

static int put_utf8(buf_t *out, PyObject *text) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(text, &n);
    return s == NULL ? -1 : buf_put(out, s, n);
}

static int put_int(buf_t *out, long long value) {
    char tmp[24];
    return buf_put(out, tmp, buf_decimal(tmp, value));
}

static void hex32(char *dst, const unsigned char *digest) {
    for (int i = 0; i < 32; i++) {
        dst[2 * i] = HEX[digest[i] >> 4];
        dst[2 * i + 1] = HEX[digest[i] & 15];
    }
}

static void sha_netstring(SHA256_CTX *ctx, const char *s, Py_ssize_t n) {
    char len[24];
    int k = buf_decimal(len, n);
    len[k++] = ':';
    SHA256_Update(ctx, len, (size_t)k);
    SHA256_Update(ctx, s, (size_t)n);
    SHA256_Update(ctx, ",", 1);
}

static int bytes_of(PyObject *list, Py_ssize_t i, const char **s, Py_ssize_t *n) {
    PyObject *item = PyList_GET_ITEM(list, i);
    if (!PyBytes_Check(item)) {
        PyErr_SetString(PyExc_TypeError, "entries hold bytes");
        return -1;
    }
    *s = PyBytes_AS_STRING(item);
    *n = PyBytes_GET_SIZE(item);
    return 0;
}

static int str_of(PyObject *obj, const char **s, Py_ssize_t *n) {
    *s = PyUnicode_AsUTF8AndSize(obj, n);
    return *s == NULL ? -1 : 0;
}

/* One entry as the loop sees it: pointers into the bytes objects of the caller's lists, which stay
 * alive (and immutable) for the whole call. */
typedef struct {
    const char *time, *stream, *body;
    Py_ssize_t time_n, stream_n, body_n;
    long long offset;
    long flags;
    Py_ssize_t py_index;    /* index in the caller's lists, or -1 for a raw row (parse.h) */
} entry_t;

typedef struct {
    unsigned char prev[32];
    char prev_hex[64];
    long long seq;
    const char *head, *source, *source_rest, *seal, *observed;
    Py_ssize_t head_n, source_n, source_rest_n, seal_n, observed_n;
    int compact;        /* audit-shipper/v2: no event_id member, no empty attributes */
    int rendered;       /* records rendered in this call: the first takes `source`, the others `source_rest` */
} chain_t;

/* Hashes one entry onto the chain and renders its record at the end of `out`; `body` is the body as
 * hashed, quoted/top/attrs its JSON pieces. No Python API: runs with or without the GIL. */
static int render(chain_t *c, const entry_t *e, long flags, const char *body, Py_ssize_t body_n,
                  const buf_t *quoted, const buf_t *top, const buf_t *attrs, buf_t *out) {
    c->seq++;
    char seq_s[24];
    int seq_n = buf_decimal(seq_s, c->seq);
    const char *time = e->time_n ? e->time : c->observed;
    Py_ssize_t time_n = e->time_n ? e->time_n : c->observed_n;
    SHA256_CTX ctx;
    unsigned char digest[32];
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, c->prev, 32);
    sha_netstring(&ctx, seq_s, seq_n);
    sha_netstring(&ctx, time, time_n);
    sha_netstring(&ctx, e->stream, e->stream_n);
    sha_netstring(&ctx, body, body_n);
    SHA256_Update(&ctx, "0:,", 3);
    SHA256_Final(digest, &ctx);

    int ok = buf_put(out, c->head, c->head_n) == 0
             && (c->compact || (buf_put(out, seq_s, seq_n) == 0 && buf_putc(out, '"') == 0))
             && buf_lit(out, ",\"time\":\"") == 0 && buf_put(out, time, time_n) == 0
             && buf_lit(out, "\",\"observed_time\":\"") == 0 && buf_put(out, c->observed, c->observed_n) == 0
             && buf_lit(out, "\",\"stream\":\"") == 0 && buf_put(out, e->stream, e->stream_n) == 0
             && buf_lit(out, "\",\"body\":") == 0 && buf_put(out, quoted->data, quoted->len) == 0
             && buf_put(out, top->data, top->len) == 0;
    int attributes = !c->compact || (flags & ATTRIBUTE_FLAGS) || attrs->len;
    ok = ok && (!attributes || buf_lit(out, ",\"attributes\":{") == 0);
    if (ok && (flags & ATTRIBUTE_FLAGS)) {
        int first = 1;
        for (size_t f = 0; ok && f < sizeof FLAG_MEMBERS / sizeof FLAG_MEMBERS[0]; f++) {
            if (flags & FLAG_MEMBERS[f].flag) {
                ok = (first || buf_putc(out, ',') == 0)
                     && buf_put(out, FLAG_MEMBERS[f].member, (Py_ssize_t)strlen(FLAG_MEMBERS[f].member)) == 0;
                first = 0;
            }
        }
        if (ok && attrs->len)
            ok = buf_putc(out, ',') == 0;
    }
    const char *source = c->rendered ? c->source_rest : c->source;
    Py_ssize_t source_n = c->rendered ? c->source_rest_n : c->source_n;
    ok = ok && (!attributes || (buf_put(out, attrs->data, attrs->len) == 0 && buf_putc(out, '}') == 0))
         && buf_put(out, source, source_n) == 0 && put_int(out, e->offset) == 0
         && buf_put(out, c->seal, c->seal_n) == 0 && buf_put(out, seq_s, seq_n) == 0
         && buf_lit(out, ",\"prev\":\"") == 0 && buf_put(out, c->prev_hex, 64) == 0
         && buf_lit(out, "\",\"hash\":\"") == 0;
    if (!ok)
        return -1;
    memcpy(c->prev, digest, 32);
    hex32(c->prev_hex, c->prev);
    c->rendered++;
    return buf_put(out, c->prev_hex, 64) == 0 && buf_lit(out, "\"}}") == 0 ? 0 : -1;
}

static int entry_at(PyObject *offsets, PyObject *times, PyObject *streams, PyObject *bodies, PyObject *flags,
                    Py_ssize_t i, entry_t *e) {
    if (bytes_of(times, i, &e->time, &e->time_n) < 0 || bytes_of(streams, i, &e->stream, &e->stream_n) < 0
        || bytes_of(bodies, i, &e->body, &e->body_n) < 0)
        return -1;
    e->offset = PyLong_AsLongLong(PyList_GET_ITEM(offsets, i));
    e->flags = PyLong_AsLong(PyList_GET_ITEM(flags, i));
    e->py_index = i;
    return PyErr_Occurred() ? -1 : 0;
}

/* Raw rows (shipper.parse.Entries.raw: entries the native CRI loop left inside `data`) and the ordinals
 * of the list entries: every entry goes to entries[its ordinal], each slot exactly once. */
typedef struct {
    Py_buffer data, rows, ordinals;
    int held;
} raw_t;

static void raw_release(raw_t *raw) {
    if (raw->held) {
        PyBuffer_Release(&raw->data);
        PyBuffer_Release(&raw->rows);
        PyBuffer_Release(&raw->ordinals);
        raw->held = 0;
    }
}

static int place(entry_t *entries, char *filled, Py_ssize_t count, long long ordinal, const entry_t *e) {
    if (ordinal < 0 || ordinal >= count || filled[ordinal]) {
        PyErr_SetString(PyExc_ValueError, "entry ordinals are not 0..n-1 each once");
        return -1;
    }
    filled[ordinal] = 1;
    entries[ordinal] = *e;
    return 0;
}

static int gather(PyObject *offsets, PyObject *times, PyObject *streams, PyObject *bodies, PyObject *flags,
                  raw_t *raw, entry_t *entries, Py_ssize_t count) {
    Py_ssize_t n_py = PyList_GET_SIZE(bodies);
    char *filled = PyMem_RawCalloc((size_t)(count ? count : 1), 1);
    if (filled == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    const int64_t *ordinals = raw->held ? raw->ordinals.buf : NULL;
    int ok = 1;
    for (Py_ssize_t i = 0; ok && i < n_py; i++) {
        entry_t e;
        ok = entry_at(offsets, times, streams, bodies, flags, i, &e) == 0
             && place(entries, filled, count, ordinals ? ordinals[i] : i, &e) == 0;
    }
    if (ok && raw->held) {
        const raw_row_t *rows = raw->rows.buf;
        const char *data = raw->data.buf;
        for (Py_ssize_t r = 0; ok && r < count - n_py; r++) {
            const raw_row_t *row = &rows[r];
            if (row->time_pos < 0 || row->time_n < 0 || row->time_pos + row->time_n > raw->data.len
                || row->body_pos < 0 || row->body_n < 0 || row->body_pos + row->body_n > raw->data.len) {
                PyErr_SetString(PyExc_ValueError, "a raw row points outside its data");
                ok = 0;
                break;
            }
            entry_t e = {data + row->time_pos, row->stream ? "stderr" : "stdout", data + row->body_pos,
                         (Py_ssize_t)row->time_n, 6, (Py_ssize_t)row->body_n, (long long)row->offset, 0, -1};
            ok = place(entries, filled, count, row->ordinal, &e) == 0;
        }
    }
    PyMem_RawFree(filled);
    return ok ? 0 : -1;
}

/* seal_entries(prev_hash, seq, offsets, times, streams, bodies, flags, head_tpl, source_tpl, source_rest_tpl,
 *              seal_tpl, compact, observed, correlator, native_body, process_body, slow_entry, packed,
 *              raw_data, raw_rows, ordinals)
 *   -> (values, last_seq, last_hash, invalid_utf8, hashes)
 * The templates are records.Templates: source_tpl for the call's first record, source_rest_tpl for the
 * others; compact: audit-shipper/v2 (no event_id member, no empty attributes).
 * values: a list of bytes, one per record; with `packed`, (all records in one bytes, their lengths as
 * native uint32 in one bytes), which spares an allocation per record. hashes: every record's hash,
 * 32 bytes each, in seq order (the leaves of the chain's Merkle tree, see shipper/merkle.py).
 * raw_data, raw_rows, ordinals (optional): entries the native CRI loop left inside raw_data (parse.h rows,
 * from cri_rows), and the int64 ordinal of each list entry: all are sealed in ordinal order.
 * correlator: a _native.Correlator or None; native_body: whether the fast path may run the body stage
 * (built-in redaction only, no JSON body fields); process_body: the Python body stage or None.
 *
 * Entries on the fast path are sealed with the GIL released (the event loop sends meanwhile); an
 * entry for the Python body stage takes the GIL back for its call. */
static PyObject *seal_entries(PyObject *self, PyObject *args) {
    Py_buffer prev_view;
    long long seq;
    PyObject *offsets, *times, *streams, *bodies, *flags;
    PyObject *head_o, *source_o, *source_rest_o, *seal_o, *observed_o, *correlator, *process_body, *slow_entry;
    PyObject *raw_data = Py_None, *raw_rows = Py_None, *raw_ordinals = Py_None;
    int native_body, compact, packed = 0;
    if (!PyArg_ParseTuple(args, "y*LO!O!O!O!O!UUUUpUOpOO|pOOO", &prev_view, &seq, &PyList_Type, &offsets,
                          &PyList_Type, &times, &PyList_Type, &streams, &PyList_Type, &bodies, &PyList_Type,
                          &flags, &head_o, &source_o, &source_rest_o, &seal_o, &compact, &observed_o, &correlator,
                          &native_body, &process_body, &slow_entry, &packed, &raw_data, &raw_rows, &raw_ordinals))
        return NULL;
    raw_t raw = {.held = 0};
    PyObject *values = NULL, *result = NULL;
    buf_t out, quoted, top, attrs;
    buf_init(&out);
    buf_init(&quoted);
    buf_init(&top);
    buf_init(&attrs);
    entry_t *entries = NULL;
    Py_ssize_t *ends = NULL;
    PyObject *hashes = NULL;
    chain_t chain;
    long long invalid_utf8 = 0;
    Py_ssize_t count = PyList_GET_SIZE(bodies);
    if (raw_data != Py_None) {
        /* Raw rows hold their place by ordinal; the list entries' ordinals come as int64s. */
        if (PyObject_GetBuffer(raw_data, &raw.data, PyBUF_SIMPLE) < 0)
            goto done;
        if (PyObject_GetBuffer(raw_rows, &raw.rows, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&raw.data);
            goto done;
        }
        if (PyObject_GetBuffer(raw_ordinals, &raw.ordinals, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&raw.data);
            PyBuffer_Release(&raw.rows);
            goto done;
        }
        raw.held = 1;
        if (raw.rows.len % (Py_ssize_t)sizeof(raw_row_t) != 0 || raw.ordinals.len != count * 8) {
            PyErr_SetString(PyExc_ValueError, "raw rows or ordinals of the wrong size");
            goto done;
        }
        count += raw.rows.len / (Py_ssize_t)sizeof(raw_row_t);
    }

    if (prev_view.len != 32) {
        PyErr_SetString(PyExc_ValueError, "prev hash is 32 bytes");
        goto done;
    }
    memcpy(chain.prev, prev_view.buf, 32);
    hex32(chain.prev_hex, chain.prev);
    chain.seq = seq;
    chain.compact = compact;
    chain.rendered = 0;
    Py_ssize_t n_py = PyList_GET_SIZE(bodies);
    if (PyList_GET_SIZE(offsets) != n_py || PyList_GET_SIZE(times) != n_py || PyList_GET_SIZE(streams) != n_py
        || PyList_GET_SIZE(flags) != n_py) {
        PyErr_SetString(PyExc_ValueError, "entries lists differ in length");
        goto done;
    }
    if (str_of(head_o, &chain.head, &chain.head_n) < 0 || str_of(source_o, &chain.source, &chain.source_n) < 0
        || str_of(source_rest_o, &chain.source_rest, &chain.source_rest_n) < 0 || str_of(seal_o, &chain.seal, &chain.seal_n) < 0 || str_of(observed_o, &chain.observed, &chain.observed_n) < 0)
        goto done;
    entries = PyMem_RawMalloc(sizeof(entry_t) * (size_t)(count ? count : 1));
    ends = PyMem_RawMalloc(sizeof(Py_ssize_t) * (size_t)(count ? count : 1));
    if (entries == NULL || ends == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    hashes = PyBytes_FromStringAndSize(NULL, 32 * count);
    if (hashes == NULL)
        goto done;
    unsigned char *hash_out = (unsigned char *)PyBytes_AS_STRING(hashes);
    if (gather(offsets, times, streams, bodies, flags, &raw, entries, count) < 0)
        goto done;
    /* Room for the records up front (growing the buffer by doubling copied it about twice over): the
     * fixed parts, the body with some escaping, and ids; rare longer records still grow it. */
    Py_ssize_t estimate = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        estimate += entries[i].body_n + entries[i].body_n / 4 + entries[i].time_n + entries[i].stream_n + 400;
    estimate += count * (chain.head_n + chain.source_rest_n + chain.seal_n + chain.observed_n) + chain.source_n;
    if (buf_reserve(&out, estimate) < 0)
        goto done;
    int fast_body = native_body && correlator != Py_None;
    if (fast_body && !correlate_is(correlator)) {
        PyErr_SetString(PyExc_TypeError, "correlator is a shipper._native.Correlator or None");
        goto done;
    }

    PyThreadState *released = PyEval_SaveThread();
    int failed = 0;
    for (Py_ssize_t i = 0; i < count && !failed; i++) {
        const entry_t *e = &entries[i];
        top.len = attrs.len = quoted.len = 0;
        int handled = 0;
        if (is_ascii((const unsigned char *)e->body, e->body_n)) {
            if (process_body == Py_None)
                handled = 1;
            else if (fast_body && !default_candidate(e->body, e->body_n))
                handled = correlate_extract(correlator, e->body, e->body_n, &top, &attrs);
        }
        if (handled > 0) {
            failed = put_quoted_ascii(&quoted, e->body, e->body_n) < 0
                     || render(&chain, e, e->flags, e->body, e->body_n, &quoted, &top, &attrs, &out) < 0;
            if (failed)
                PyEval_RestoreThread(released);
        } else {
            PyEval_RestoreThread(released);
            if (handled < 0) {
                failed = 1;
                if (!PyErr_Occurred())
                    PyErr_NoMemory();
                break;
            }
            top.len = attrs.len = 0;
            /* (body bytes, quoted body, top members, attribute members, invalid utf-8) */
            PyObject *body_o = e->py_index >= 0 ? Py_NewRef(PyList_GET_ITEM(bodies, e->py_index))
                                                : PyBytes_FromStringAndSize(e->body, e->body_n);
            PyObject *slow = body_o ? PyObject_CallFunctionObjArgs(slow_entry, body_o, process_body, NULL) : NULL;
            Py_XDECREF(body_o);
            if (slow == NULL || !PyTuple_Check(slow) || PyTuple_GET_SIZE(slow) != 5
                || !PyBytes_Check(PyTuple_GET_ITEM(slow, 0))) {
                if (slow != NULL)
                    PyErr_SetString(PyExc_TypeError, "slow_entry returns (bytes, str, str, str, bool)");
                Py_XDECREF(slow);
                failed = 1;
                break;
            }
            long entry_flags = e->flags;
            if (PyObject_IsTrue(PyTuple_GET_ITEM(slow, 4))) {
                entry_flags |= FLAG_BAD_UTF8;
                invalid_utf8++;
            }
            failed = put_utf8(&quoted, PyTuple_GET_ITEM(slow, 1)) < 0 || put_utf8(&top, PyTuple_GET_ITEM(slow, 2)) < 0
                     || put_utf8(&attrs, PyTuple_GET_ITEM(slow, 3)) < 0
                     || render(&chain, e, entry_flags, PyBytes_AS_STRING(PyTuple_GET_ITEM(slow, 0)),
                               PyBytes_GET_SIZE(PyTuple_GET_ITEM(slow, 0)), &quoted, &top, &attrs, &out) < 0;
            Py_DECREF(slow);
            if (failed) {
                if (!PyErr_Occurred())
                    PyErr_NoMemory();
                break;
            }
            released = PyEval_SaveThread();
        }
        ends[i] = out.len;
        memcpy(hash_out + 32 * i, chain.prev, 32);
    }
    if (failed) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto done;
    }
    PyEval_RestoreThread(released);

    if (packed) {
        PyObject *lengths = PyBytes_FromStringAndSize(NULL, count * (Py_ssize_t)sizeof(uint32_t));
        PyObject *blob = lengths ? PyBytes_FromStringAndSize(out.data ? out.data : "", out.len) : NULL;
        if (blob == NULL) {
            Py_XDECREF(lengths);
            goto done;
        }
        uint32_t *length = (uint32_t *)PyBytes_AS_STRING(lengths);
        for (Py_ssize_t i = 0, start = 0; i < count; start = ends[i], i++)
            length[i] = (uint32_t)(ends[i] - start);
        values = Py_BuildValue("(NN)", blob, lengths);
        if (values == NULL)
            goto done;
        result = Py_BuildValue("(OLy#LO)", values, chain.seq, (const char *)chain.prev, (Py_ssize_t)32, invalid_utf8,
                               hashes);
        goto done;
    }
    values = PyList_New(count);
    if (values == NULL)
        goto done;
    for (Py_ssize_t i = 0, start = 0; i < count; start = ends[i], i++) {
        PyObject *value = PyBytes_FromStringAndSize(out.data + start, ends[i] - start);
        if (value == NULL)
            goto done;
        PyList_SET_ITEM(values, i, value);
    }
    result = Py_BuildValue("(OLy#LO)", values, chain.seq, (const char *)chain.prev, (Py_ssize_t)32, invalid_utf8,
                           hashes);
done:
    Py_XDECREF(values);
    Py_XDECREF(hashes);
    PyMem_RawFree(entries);
    PyMem_RawFree(ends);
    buf_free(&out);
    buf_free(&quoted);
    buf_free(&top);
    buf_free(&attrs);
    PyBuffer_Release(&prev_view);
    raw_release(&raw);
    return result;
}

static PyObject *py_default_candidate(PyObject *self, PyObject *arg) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(arg, &n);
    if (s == NULL)
        return NULL;
    return PyBool_FromLong(default_candidate(s, n));
}

static PyMethodDef SEAL_METHODS[] = {
    {"seal_entries", seal_entries, METH_VARARGS, "Seal a batch of entries of one chain (see records.py)."},
    {"default_candidate", py_default_candidate, METH_O, "Could a built-in redaction rule match this body?"},
    {NULL, NULL, 0, NULL},
};

int seal_register(PyObject *module) {
    classes_init();
    return PyModule_AddFunctions(module, SEAL_METHODS);
}
