/* The verifier's bulk decoder: record values -> the columns of shipper.verify.scan (which documents the
 * layout and holds verify_scan_py, the json.loads reference this must agree with).
 *
 * A strict parser of our record JSON, not a general one: it pulls seal.chain/seq/prev/hash, type, schema,
 * event_id, the body evidence (time, stream, body) and five resource fields, and validates everything
 * else only as far as json.loads would reject it (syntax, escapes, control characters, UTF-8,
 * integer length). Whatever json.loads might read differently is SLOW, and the caller decodes that
 * record in Python: a duplicate or escaped key where we look (json.loads keeps the last duplicate and
 * unescapes keys), a non-string field, a seq that is not a plain decimal below 10**18 (1e3 is a float
 * there, -0 is 0), a lone surrogate in an extracted string (its UTF-8 encoding fails in Python),
 * NaN/Infinity, nesting deeper than MAX_DEPTH. Values are never trusted: every read is bounds-checked
 * and no input can make the scan fail; only a failed allocation of the outputs raises.
 *
 * The scan itself touches no Python object and runs without the GIL. */
#include "verify.h"

#include "kafka_read.h"

#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define SCAN_OK 1
#define SCAN_SLOW 2
#define SCAN_ALTERED 4
#define SCAN_SCHEMA_OK 8
#define SCAN_EVENT_ID_OK 16
#define SCAN_RESOURCE 32
#define SCAN_FOLLOWS 64

#define MAX_DEPTH 64
#define MAX_NUMBER_CHARS 1000      /* json.loads refuses integers of more than 4300 digits */
#define MAX_SEQ_DIGITS 18          /* seq < 10**18: fits int64 with room */
#define RELEASE_GIL_RECORDS 32
#define IDENTITY_FIELDS 5

typedef const unsigned char *cursor;

static unsigned char SPECIAL[256];   /* bytes that end a run of plain string bytes */
static signed char HEXVAL[256];
static uint64_t HASH_SEED;

static const char *const TYPE_NAMES[] = {"", "gap", "checkpoint", "close", "manifest"};
static const char *const IDENTITY_NAMES[IDENTITY_FIELDS] = {
    "k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid", "k8s.container.name", "k8s.node.name"};
static const char SCHEMA[] = "audit-shipper/v1";
static const char SCHEMA_V2[] = "audit-shipper/v2";
_Static_assert(sizeof SCHEMA == sizeof SCHEMA_V2, "envelope_ok compares either schema in as many bytes");

/* What a Kafka record's envelope is judged against (verify_records): the format the value names and
 * whether it has an event_id member at all (a v2 value must not). */
typedef struct {
    int format;                        /* 1: "audit-shipper/v1", 2: "audit-shipper/v2", 0: another */
    int has_event_id;
} value_envelope_t;

/* A string value: its bytes in the record when it holds no escape, else decoded in the arena. */
typedef struct {
    Py_ssize_t off;
    Py_ssize_t len;
    int in_arena;
    int present;
    int escaped;
} span_t;

typedef struct {
    cursor base;
    cursor end;
    buf_t *arena;
} input_t;

enum {
    K_SCHEMA, K_EVENT_ID, K_TYPE, K_TIME, K_STREAM, K_BODY, K_RESOURCE, K_SEAL,
    K_CHAIN, K_SEQ, K_PREV, K_HASH, K_IDENTITY /* ... + IDENTITY_FIELDS */
};

typedef struct {
    uint32_t seen;                     /* 1 << K_*: a second one is a duplicate key */
    span_t schema, event_id, type, time, stream, body, chain;
    span_t identity[IDENTITY_FIELDS];
    long long seq;
    unsigned char prev[32], hash[32];
} record_t;

/* -- lexing ---------------------------------------------------------------------------------------- */

static inline cursor skip_ws(cursor p, cursor end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

/* The first byte at or after p that is '"', '\\', a control character or non-ASCII. */
static inline cursor find_special(cursor p, cursor end) {
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        /* signed: bytes >= 0x80 are negative, so one compare takes control characters and non-ASCII */
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
                                   _mm_cmplt_epi8(x, space));
        int mask = _mm_movemask_epi8(hit);
        if (mask)
            return p + __builtin_ctz((unsigned)mask);
        p += 16;
    }
#endif
    while (p < end && !SPECIAL[*p])
        p++;
    return p;
}

/* Length of the well-formed UTF-8 sequence at p (2..4), or 0: what Python's strict decoder accepts
 * (no overlong forms, no surrogates, nothing above U+10FFFF). */
static inline int utf8_sequence(cursor p, cursor end) {
    unsigned char a = p[0];
    Py_ssize_t left = end - p;
    if (a >= 0xC2 && a <= 0xDF)
        return left >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (a >= 0xE0 && a <= 0xEF) {
        if (left < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
            return 0;
        if ((a == 0xE0 && p[1] < 0xA0) || (a == 0xED && p[1] > 0x9F))
            return 0;
        return 3;
    }
    if (a >= 0xF0 && a <= 0xF4) {
        if (left < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        if ((a == 0xF0 && p[1] < 0x90) || (a == 0xF4 && p[1] > 0x8F))
            return 0;
        return 4;
    }
    return 0;
}

static inline int hex4(cursor p) {
    int a = HEXVAL[p[0]], b = HEXVAL[p[1]], c = HEXVAL[p[2]], d = HEXVAL[p[3]];
    if ((a | b | c | d) < 0)
        return -1;
    return (a << 12) | (b << 8) | (c << 4) | d;
}

static inline int put_utf8(buf_t *b, uint32_t cp) {
    char out[4];
    int n;
    if (cp < 0x80) {
        out[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        out[0] = (char)(0xF0 | (cp >> 18));
        out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return buf_put(b, out, n);
}

/* A string whose opening quote is just before p; returns the position after its closing quote, or NULL
 * (SLOW). decode=0 only validates (json.loads accepts a lone surrogate escape in a string we do not
 * read); decode=1 also unescapes into the arena, and a lone surrogate is SLOW (str.encode refuses it). */
static cursor scan_string(input_t *in, cursor p, span_t *out, int decode) {
    cursor end = in->end;
    cursor start = p, chunk = p;
    Py_ssize_t arena_start = -1;
    int escaped = 0;
    for (;;) {
        p = find_special(p, end);
        if (p >= end)
            return NULL;
        unsigned char ch = *p;
        if (ch == '"') {
            if (arena_start < 0) {
                out->off = start - in->base;
                out->len = p - start;
                out->in_arena = 0;
            } else {
                if (buf_put(in->arena, chunk, p - chunk) < 0)
                    return NULL;
                out->off = arena_start;
                out->len = in->arena->len - arena_start;
                out->in_arena = 1;
            }
            out->present = 1;
            out->escaped = escaped;
            return p + 1;
        }
        if (ch >= 0x80) {
            int k = utf8_sequence(p, end);
            if (!k)
                return NULL;
            p += k;
            continue;
        }
        if (ch != '\\')
            return NULL;   /* a raw control character */
        escaped = 1;
        if (end - p < 2)
            return NULL;
        uint32_t cp;
        cursor next;
        switch (p[1]) {
        case '"': cp = '"'; next = p + 2; break;
        case '\\': cp = '\\'; next = p + 2; break;
        case '/': cp = '/'; next = p + 2; break;
        case 'b': cp = '\b'; next = p + 2; break;
        case 'f': cp = '\f'; next = p + 2; break;
        case 'n': cp = '\n'; next = p + 2; break;
        case 'r': cp = '\r'; next = p + 2; break;
        case 't': cp = '\t'; next = p + 2; break;
        case 'u': {
            if (end - p < 6)
                return NULL;
            int unit = hex4(p + 2);
            if (unit < 0)
                return NULL;
            next = p + 6;
            cp = (uint32_t)unit;
            if (decode && unit >= 0xD800 && unit <= 0xDFFF) {
                if (unit >= 0xDC00 || end - next < 6 || next[0] != '\\' || next[1] != 'u')
                    return NULL;
                int low = hex4(next + 2);
                if (low < 0xDC00 || low > 0xDFFF)
                    return NULL;
                cp = 0x10000 + (((uint32_t)unit - 0xD800) << 10) + ((uint32_t)low - 0xDC00);
                next += 6;
            }
            break;
        }
        default:
            return NULL;
        }
        if (decode) {
            if (arena_start < 0)
                arena_start = in->arena->len;
            if (buf_put(in->arena, chunk, p - chunk) < 0 || put_utf8(in->arena, cp) < 0)
                return NULL;
            chunk = next;
        }
        p = next;
    }
}

static inline cursor literal(cursor p, cursor end, const char *text, Py_ssize_t n) {
    return end - p >= n && memcmp(p, text, (size_t)n) == 0 ? p + n : NULL;
}

static inline int is_digit(cursor p, cursor end) { return p < end && *p >= '0' && *p <= '9'; }

/* A JSON number, strictly; json.loads refuses or reads differently whatever this refuses (NaN and
 * Infinity it accepts are SLOW here). */
static cursor number(cursor p, cursor end) {
    cursor start = p;
    if (p < end && *p == '-')
        p++;
    if (!is_digit(p, end))
        return NULL;
    if (*p == '0')
        p++;
    else
        while (is_digit(p, end))
            p++;
    if (p < end && *p == '.') {
        p++;
        if (!is_digit(p, end))
            return NULL;
        while (is_digit(p, end))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (!is_digit(p, end))
            return NULL;
        while (is_digit(p, end))
            p++;
    }
    return p - start > MAX_NUMBER_CHARS ? NULL : p;
}

static cursor skip_value(input_t *in, cursor p, int depth);

static cursor skip_container(input_t *in, cursor p, int depth, unsigned char close, int keyed) {
    cursor end = in->end;
    if (depth > MAX_DEPTH)
        return NULL;
    p = skip_ws(p, end);
    if (p < end && *p == close)
        return p + 1;
    for (;;) {
        if (keyed) {
            span_t key;
            if (p >= end || *p != '"' || (p = scan_string(in, p + 1, &key, 0)) == NULL)
                return NULL;
            p = skip_ws(p, end);
            if (p >= end || *p != ':')
                return NULL;
            p = skip_ws(p + 1, end);
        }
        if ((p = skip_value(in, p, depth)) == NULL)
            return NULL;
        p = skip_ws(p, end);
        if (p >= end)
            return NULL;
        if (*p == close)
            return p + 1;
        if (*p != ',')
            return NULL;
        p = skip_ws(p + 1, end);
    }
}

static cursor skip_value(input_t *in, cursor p, int depth) {
    cursor end = in->end;
    if (p >= end)
        return NULL;
    switch (*p) {
    case '"': {
        span_t ignored;
        return scan_string(in, p + 1, &ignored, 0);
    }
    case '{': return skip_container(in, p + 1, depth + 1, '}', 1);
    case '[': return skip_container(in, p + 1, depth + 1, ']', 0);
    case 't': return literal(p, end, "true", 4);
    case 'f': return literal(p, end, "false", 5);
    case 'n': return literal(p, end, "null", 4);
    default: return number(p, end);
    }
}

/* -- the record ------------------------------------------------------------------------------------ */

static inline int key_is(const span_t *key, cursor base, const char *name, Py_ssize_t n) {
    return key->len == n && memcmp(base + key->off, name, (size_t)n) == 0;
}

/* Which field a raw key (no escapes) names at this level; -1 for one we only validate. */
static int top_key(const span_t *key, cursor base) {
    switch (key->len) {
    case 4:
        if (key_is(key, base, "time", 4)) return K_TIME;
        if (key_is(key, base, "type", 4)) return K_TYPE;
        if (key_is(key, base, "body", 4)) return K_BODY;
        if (key_is(key, base, "seal", 4)) return K_SEAL;
        return -1;
    case 6:
        if (key_is(key, base, "schema", 6)) return K_SCHEMA;
        if (key_is(key, base, "stream", 6)) return K_STREAM;
        return -1;
    case 8:
        if (key_is(key, base, "event_id", 8)) return K_EVENT_ID;
        if (key_is(key, base, "resource", 8)) return K_RESOURCE;
        return -1;
    default:
        return -1;
    }
}

static int seal_key(const span_t *key, cursor base) {
    switch (key->len) {
    case 3: return key_is(key, base, "seq", 3) ? K_SEQ : -1;
    case 4: return key_is(key, base, "hash", 4) ? K_HASH : key_is(key, base, "prev", 4) ? K_PREV : -1;
    case 5: return key_is(key, base, "chain", 5) ? K_CHAIN : -1;
    default: return -1;
    }
}

static Py_ssize_t IDENTITY_LENGTHS[IDENTITY_FIELDS];

static int resource_key(const span_t *key, cursor base) {
    if (key->len < 11 || memcmp(base + key->off, "k8s.", 4) != 0)
        return -1;
    for (int i = 0; i < IDENTITY_FIELDS; i++)
        if (key_is(key, base, IDENTITY_NAMES[i], IDENTITY_LENGTHS[i]))
            return K_IDENTITY + i;
    return -1;
}

static cursor hex32(cursor p, cursor end, unsigned char *out) {
    if (end - p < 66 || *p != '"' || p[65] != '"')
        return NULL;
    p++;
    for (int i = 0; i < 32; i++) {
        int hi = HEXVAL[p[2 * i]], lo = HEXVAL[p[2 * i + 1]];
        if ((hi | lo) < 0)
            return NULL;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return p + 65;
}

static cursor seq_value(cursor p, cursor end, long long *out) {
    if (p >= end || *p < '1' || *p > '9')
        return NULL;
    long long value = 0;
    int digits = 0;
    while (is_digit(p, end)) {
        if (++digits > MAX_SEQ_DIGITS)
            return NULL;
        value = value * 10 + (*p - '0');
        p++;
    }
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E'))
        return NULL;   /* a float to json.loads */
    *out = value;
    return p;
}

/* The value of a field we read, given which one `field` is (K_*, or -1 to validate and skip it). */
static cursor field_value(input_t *in, cursor p, record_t *r, int field, int depth);

/* The members of an object whose '{' is just before p, at `level` 0 (the record), 1 (seal) or 2
 * (resource). */
static cursor members(input_t *in, cursor p, record_t *r, int level, int depth) {
    cursor end = in->end;
    if (depth > MAX_DEPTH)
        return NULL;
    p = skip_ws(p, end);
    if (p < end && *p == '}')
        return p + 1;
    for (;;) {
        span_t key;
        if (p >= end || *p != '"' || (p = scan_string(in, p + 1, &key, 0)) == NULL || key.escaped)
            return NULL;   /* an escaped key might unescape to one we read */
        p = skip_ws(p, end);
        if (p >= end || *p != ':')
            return NULL;
        p = skip_ws(p + 1, end);
        int field = level == 0 ? top_key(&key, in->base) : level == 1 ? seal_key(&key, in->base)
                                                                      : resource_key(&key, in->base);
        if (field >= 0) {
            if (r->seen & (1u << field))
                return NULL;   /* json.loads keeps the last of duplicate keys */
            r->seen |= 1u << field;
        }
        if ((p = field_value(in, p, r, field, depth)) == NULL)
            return NULL;
        p = skip_ws(p, end);
        if (p >= end)
            return NULL;
        if (*p == '}')
            return p + 1;
        if (*p != ',')
            return NULL;
        p = skip_ws(p + 1, end);
    }
}

static inline cursor string_field(input_t *in, cursor p, span_t *out) {
    if (p >= in->end || *p != '"')
        return NULL;
    return scan_string(in, p + 1, out, 1);
}

static cursor field_value(input_t *in, cursor p, record_t *r, int field, int depth) {
    cursor end = in->end;
    switch (field) {
    case K_SCHEMA:
    case K_EVENT_ID: {
        /* anything goes (a mismatch is the judge's); only a string is compared */
        span_t *out = field == K_SCHEMA ? &r->schema : &r->event_id;
        if (p < end && *p == '"')
            return scan_string(in, p + 1, out, 1);
        return skip_value(in, p, depth);
    }
    case K_TYPE: return string_field(in, p, &r->type);
    case K_TIME: return string_field(in, p, &r->time);
    case K_STREAM: return string_field(in, p, &r->stream);
    case K_BODY: return string_field(in, p, &r->body);
    case K_SEAL:
        if (p >= end || *p != '{')
            return NULL;
        return members(in, p + 1, r, 1, depth + 1);
    case K_RESOURCE:
        if (p >= end || *p != '{')
            return NULL;
        return members(in, p + 1, r, 2, depth + 1);
    case K_CHAIN: return string_field(in, p, &r->chain);
    case K_SEQ: return seq_value(p, end, &r->seq);
    case K_PREV: return hex32(p, end, r->prev);
    case K_HASH: return hex32(p, end, r->hash);
    default:
        if (field >= K_IDENTITY)
            return string_field(in, p, &r->identity[field - K_IDENTITY]);
        return skip_value(in, p, depth);
    }
}

#define REQUIRED ((1u << K_SEAL) | (1u << K_CHAIN) | (1u << K_SEQ) | (1u << K_PREV) | (1u << K_HASH) \
                  | (1u << K_TIME) | (1u << K_STREAM) | (1u << K_BODY))

/* 0 when the value is one of ours, read completely and exactly; -1: SLOW. */
static int parse_record(input_t *in, record_t *r) {
    memset(r, 0, sizeof *r);
    cursor p = skip_ws(in->base, in->end);
    if (p >= in->end || *p != '{')
        return -1;
    p = members(in, p + 1, r, 0, 1);
    if (p == NULL || skip_ws(p, in->end) != in->end)
        return -1;
    if ((r->seen & REQUIRED) != REQUIRED || r->chain.len == 0)
        return -1;
    return 0;
}

static inline cursor span_data(const input_t *in, const span_t *s) {
    return s->in_arena ? (cursor)in->arena->data + s->off : in->base + s->off;
}

static inline int span_equals(const input_t *in, const span_t *s, const char *text, Py_ssize_t n) {
    return s->present && s->len == n && memcmp(span_data(in, s), text, (size_t)n) == 0;
}

static int type_code(const input_t *in, const span_t *type) {
    if (!type->present)
        return 0;
    for (int i = 0; i < (int)(sizeof TYPE_NAMES / sizeof TYPE_NAMES[0]); i++)
        if (span_equals(in, type, TYPE_NAMES[i], (Py_ssize_t)strlen(TYPE_NAMES[i])))
            return i;
    return -1;   /* unknown types are judged in Python */
}

static inline void netstring(SHA256_CTX *sha, cursor data, Py_ssize_t n) {
    char head[24];
    int k = buf_decimal(head, (long long)n);
    head[k++] = ':';
    SHA256_Update(sha, head, (size_t)k);
    SHA256_Update(sha, data, (size_t)n);
    SHA256_Update(sha, ",", 1);
}

/* -- interning: chain -> index, identity -> index, per call ---------------------------------------- */

typedef struct {
    uint64_t hash;
    Py_ssize_t key_off;
    Py_ssize_t key_len;
    long long last_seq;                /* the chain's last scanned record, for FOLLOWS */
    uint64_t last_epoch;
    unsigned char last_hash[32];
    int has_last;
} entry_t;

typedef struct {
    buf_t keys;
    entry_t *entries;
    Py_ssize_t count, entries_cap;
    uint32_t *slots;                   /* entry index + 1; 0 = empty */
    Py_ssize_t slots_cap;              /* a power of two */
    Py_ssize_t last;                   /* the entry found last: consecutive records usually share it */
} table_t;

static void table_init(table_t *t) {
    memset(t, 0, sizeof *t);
    buf_init(&t->keys);
    t->last = -1;
}

static void table_free(table_t *t) {
    buf_free(&t->keys);
    PyMem_RawFree(t->entries);
    PyMem_RawFree(t->slots);
}

/* Seeded per process: chain names come from the topic, and a fixed hash would let a writer make every
 * lookup collide. */
static inline uint64_t hash_bytes(cursor p, Py_ssize_t n) {
    uint64_t h = HASH_SEED ^ ((uint64_t)n * 0x9E3779B97F4A7C15ULL);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, (size_t)n);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ULL;
    return h ^ (h >> 29);
}

static int table_grow(table_t *t) {
    Py_ssize_t cap = t->slots_cap ? 2 * t->slots_cap : 64;
    uint32_t *slots = PyMem_RawCalloc((size_t)cap, sizeof *slots);
    if (slots == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < t->count; i++) {
        Py_ssize_t at = (Py_ssize_t)(t->entries[i].hash & (uint64_t)(cap - 1));
        while (slots[at])
            at = (at + 1) & (cap - 1);
        slots[at] = (uint32_t)(i + 1);
    }
    PyMem_RawFree(t->slots);
    t->slots = slots;
    t->slots_cap = cap;
    return 0;
}

/* The entry of key, added when new; -1 when memory ran out. */
static Py_ssize_t table_find(table_t *t, cursor key, Py_ssize_t n) {
    if (t->last >= 0) {
        entry_t *e = &t->entries[t->last];
        if (e->key_len == n && memcmp(t->keys.data + e->key_off, key, (size_t)n) == 0)
            return t->last;
    }
    if (2 * (t->count + 1) > t->slots_cap && table_grow(t) < 0)
        return -1;
    uint64_t h = hash_bytes(key, n);
    Py_ssize_t at = (Py_ssize_t)(h & (uint64_t)(t->slots_cap - 1));
    while (t->slots[at]) {
        Py_ssize_t index = t->slots[at] - 1;
        entry_t *e = &t->entries[index];
        if (e->hash == h && e->key_len == n && memcmp(t->keys.data + e->key_off, key, (size_t)n) == 0)
            return t->last = index;
        at = (at + 1) & (t->slots_cap - 1);
    }
    if (t->count == t->entries_cap) {
        Py_ssize_t cap = t->entries_cap ? 2 * t->entries_cap : 16;
        entry_t *entries = PyMem_RawRealloc(t->entries, (size_t)cap * sizeof *entries);
        if (entries == NULL)
            return -1;
        t->entries = entries;
        t->entries_cap = cap;
    }
    entry_t *e = &t->entries[t->count];
    memset(e, 0, sizeof *e);
    e->hash = h;
    e->key_off = t->keys.len;
    e->key_len = n;
    if (buf_put(&t->keys, key, n) < 0)
        return -1;
    t->slots[at] = (uint32_t)(t->count + 1);
    return t->last = t->count++;
}

/* An identity as one key: per field a presence byte, then its length (4 bytes) and bytes. */
static int identity_key(const input_t *in, const record_t *r, buf_t *out) {
    out->len = 0;
    for (int i = 0; i < IDENTITY_FIELDS; i++) {
        const span_t *s = &r->identity[i];
        char present = (char)s->present;
        if (buf_put(out, &present, 1) < 0)
            return -1;
        if (!s->present)
            continue;
        uint32_t n = (uint32_t)s->len;
        if (buf_put(out, &n, 4) < 0 || buf_put(out, span_data(in, s), s->len) < 0)
            return -1;
    }
    return 0;
}

/* -- the scan -------------------------------------------------------------------------------------- */

typedef struct {
    unsigned char *flags, *types, *prevs, *hashes;
    uint32_t *chains, *idents;
    int64_t *seqs;
    uint64_t *prefixes;
} columns_t;

typedef struct {
    table_t chains, identities;
    buf_t arena, scratch;
    uint64_t epoch;                    /* SLOW records so far: a run never spans one */
} scan_t;

static void mark_slow(scan_t *s, const columns_t *out, Py_ssize_t i) {
    out->flags[i] = SCAN_SLOW;
    out->types[i] = 0;
    out->chains[i] = out->idents[i] = 0;
    out->seqs[i] = 0;
    out->prefixes[i] = 0;
    memset(out->prevs + 32 * i, 0, 32);
    memset(out->hashes + 32 * i, 0, 32);
    s->epoch++;
}

/* Record i of the columns from the value data[0:len] (data NULL: not bytes, SLOW); `envelope`, when given,
 * receives what the value says of its format (left zero for a SLOW record). */
static void scan_one(scan_t *s, cursor data, Py_ssize_t len, const columns_t *out, Py_ssize_t i,
                     value_envelope_t *envelope) {
    record_t r;
    s->arena.len = 0;
    input_t in = {data, data + len, &s->arena};
    if (data == NULL || parse_record(&in, &r) < 0) {
        mark_slow(s, out, i);
        return;
    }
    int type = type_code(&in, &r.type);
    if (type < 0) {
        mark_slow(s, out, i);
        return;
    }
    unsigned char flags = SCAN_OK;
    cursor chain = span_data(&in, &r.chain);
    char seq_text[24];
    int seq_len = buf_decimal(seq_text, r.seq);
    if (span_equals(&in, &r.schema, SCHEMA, (Py_ssize_t)sizeof SCHEMA - 1))
        flags |= SCAN_SCHEMA_OK;
    if (envelope != NULL) {
        envelope->format = (flags & SCAN_SCHEMA_OK) ? 1
                           : span_equals(&in, &r.schema, SCHEMA_V2, (Py_ssize_t)sizeof SCHEMA_V2 - 1) ? 2 : 0;
        envelope->has_event_id = (r.seen & (1u << K_EVENT_ID)) != 0;
    }
    if (r.event_id.present && r.event_id.len == r.chain.len + 1 + seq_len) {
        cursor id = span_data(&in, &r.event_id);
        if (memcmp(id, chain, (size_t)r.chain.len) == 0 && id[r.chain.len] == ':'
            && memcmp(id + r.chain.len + 1, seq_text, (size_t)seq_len) == 0)
            flags |= SCAN_EVENT_ID_OK;
    }
    if (r.seen & (1u << K_RESOURCE))
        flags |= SCAN_RESOURCE;

    unsigned char digest[32];
    SHA256_CTX sha;
    SHA256_Init(&sha);
    SHA256_Update(&sha, r.prev, 32);
    netstring(&sha, (cursor)seq_text, seq_len);
    netstring(&sha, span_data(&in, &r.time), r.time.len);
    netstring(&sha, span_data(&in, &r.stream), r.stream.len);
    netstring(&sha, span_data(&in, &r.body), r.body.len);
    netstring(&sha, (cursor)TYPE_NAMES[type], (Py_ssize_t)strlen(TYPE_NAMES[type]));
    SHA256_Final(digest, &sha);
    if (memcmp(digest, r.hash, 32) != 0)
        flags |= SCAN_ALTERED;

    Py_ssize_t chain_index = table_find(&s->chains, chain, r.chain.len);
    if (chain_index < 0 || identity_key(&in, &r, &s->scratch) < 0) {
        mark_slow(s, out, i);   /* out of memory: Python can still judge it */
        return;
    }
    Py_ssize_t ident_index = table_find(&s->identities, (cursor)s->scratch.data, s->scratch.len);
    if (ident_index < 0) {
        mark_slow(s, out, i);
        return;
    }
    entry_t *e = &s->chains.entries[chain_index];
    if (e->has_last && e->last_epoch == s->epoch && e->last_seq == r.seq - 1 && memcmp(e->last_hash, r.prev, 32) == 0)
        flags |= SCAN_FOLLOWS;
    e->has_last = 1;
    e->last_epoch = s->epoch;
    e->last_seq = r.seq;
    memcpy(e->last_hash, r.hash, 32);

    uint64_t prefix = 0;
    for (int k = 0; k < 8; k++)
        prefix = prefix << 8 | r.hash[k];
    out->flags[i] = flags;
    out->types[i] = (unsigned char)type;
    out->chains[i] = (uint32_t)chain_index;
    out->idents[i] = (uint32_t)ident_index;
    out->seqs[i] = r.seq;
    out->prefixes[i] = prefix ? prefix : 1;
    memcpy(out->prevs + 32 * i, r.prev, 32);
    memcpy(out->hashes + 32 * i, r.hash, 32);
}

static PyObject *chain_names(const table_t *t) {
    PyObject *list = PyList_New(t->count);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < t->count; i++) {
        const entry_t *e = &t->entries[i];
        PyObject *name = PyUnicode_DecodeUTF8(t->keys.data + e->key_off, e->key_len, "strict");
        if (name == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, name);
    }
    return list;
}

static PyObject *identity_tuples(const table_t *t) {
    PyObject *list = PyList_New(t->count);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < t->count; i++) {
        const entry_t *e = &t->entries[i];
        const char *p = t->keys.data + e->key_off;
        PyObject *tuple = PyTuple_New(IDENTITY_FIELDS);
        if (tuple == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, tuple);
        for (int k = 0; k < IDENTITY_FIELDS; k++) {
            PyObject *field;
            if (*p++) {
                uint32_t n;
                memcpy(&n, p, 4);
                p += 4;
                field = PyUnicode_DecodeUTF8(p, (Py_ssize_t)n, "strict");
                p += n;
                if (field == NULL) {
                    Py_DECREF(list);
                    return NULL;
                }
            } else {
                field = Py_NewRef(Py_None);
            }
            PyTuple_SET_ITEM(tuple, k, field);
        }
    }
    return list;
}

static PyObject *column(Py_ssize_t count, Py_ssize_t width, unsigned char **data) {
    PyObject *bytes = PyBytes_FromStringAndSize(NULL, count * width);
    if (bytes != NULL)
        *data = (unsigned char *)PyBytes_AS_STRING(bytes);
    return bytes;
}

#define SCAN_COLUMNS 8

/* The eight column objects of `count` records, with `out` pointing into them; -1 (and cols released)
 * when memory ran out. */
static int columns_new(Py_ssize_t count, PyObject *cols[SCAN_COLUMNS], columns_t *out) {
    static const Py_ssize_t widths[SCAN_COLUMNS] = {1, 1, 4, 4, 8, 8, 32, 32};
    unsigned char *data[SCAN_COLUMNS];
    for (int c = 0; c < SCAN_COLUMNS; c++) {
        if ((cols[c] = column(count, widths[c], &data[c])) == NULL) {
            for (int k = 0; k < c; k++)
                Py_CLEAR(cols[k]);
            return -1;
        }
    }
    out->flags = data[0];
    out->types = data[1];
    out->chains = (uint32_t *)data[2];
    out->idents = (uint32_t *)data[3];
    out->seqs = (int64_t *)data[4];
    out->prefixes = (uint64_t *)data[5];
    out->prevs = data[6];
    out->hashes = data[7];
    return 0;
}

static void scan_init(scan_t *s) {
    table_init(&s->chains);
    table_init(&s->identities);
    buf_init(&s->arena);
    buf_init(&s->scratch);
    s->epoch = 0;
}

static void scan_free(scan_t *s) {
    table_free(&s->chains);
    table_free(&s->identities);
    buf_free(&s->arena);
    buf_free(&s->scratch);
}

/* The scan's result tuple: the columns (taken over: cols are cleared), the chain names and identities,
 * then `extra` further objects (taken over too); NULL when memory ran out (everything released). */
static PyObject *scan_result(const scan_t *s, PyObject *cols[SCAN_COLUMNS], PyObject **extra, int n_extra) {
    PyObject *names = chain_names(&s->chains);
    PyObject *identities = names ? identity_tuples(&s->identities) : NULL;
    PyObject *result = identities ? PyTuple_New(SCAN_COLUMNS + 2 + n_extra) : NULL;
    if (result == NULL) {
        Py_XDECREF(names);
        Py_XDECREF(identities);
        for (int c = 0; c < SCAN_COLUMNS; c++)
            Py_CLEAR(cols[c]);
        for (int k = 0; k < n_extra; k++)
            Py_CLEAR(extra[k]);
        return NULL;
    }
    for (int c = 0; c < SCAN_COLUMNS; c++) {
        PyTuple_SET_ITEM(result, c, cols[c]);
        cols[c] = NULL;
    }
    PyTuple_SET_ITEM(result, SCAN_COLUMNS, names);
    PyTuple_SET_ITEM(result, SCAN_COLUMNS + 1, identities);
    for (int k = 0; k < n_extra; k++) {
        PyTuple_SET_ITEM(result, SCAN_COLUMNS + 2 + k, extra[k]);
        extra[k] = NULL;
    }
    return result;
}

PyDoc_STRVAR(verify_scan_doc,
"verify_scan(values) -> (flags, types, chains, idents, seqs, prefixes, prevs, hashes, chain_names, identities)\n\n"
"The columns of shipper.verify.scan.verify_scan_py for a sequence of record values (bytes; anything\n"
"else is SLOW), computed without the GIL.");

static PyObject *verify_scan(PyObject *self, PyObject *arg) {
    /* a tuple of our own: the values stay alive and in place while the GIL is released */
    PyObject *values = PySequence_Tuple(arg);
    if (values == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(values);
    PyObject *cols[SCAN_COLUMNS] = {NULL};
    PyObject *result = NULL;
    columns_t out;
    struct { cursor data; Py_ssize_t len; } *items = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *items);
    if (items == NULL) {
        Py_DECREF(values);
        return PyErr_NoMemory();
    }
    if (columns_new(n, cols, &out) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(values, i);
        if (PyBytes_CheckExact(item)) {
            items[i].data = (cursor)PyBytes_AS_STRING(item);
            items[i].len = PyBytes_GET_SIZE(item);
        } else {
            items[i].data = NULL;
            items[i].len = 0;
        }
    }
    scan_t s;
    scan_init(&s);
    if (n >= RELEASE_GIL_RECORDS) {
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++)
            scan_one(&s, items[i].data, items[i].len, &out, i, NULL);
        Py_END_ALLOW_THREADS
    } else {
        for (Py_ssize_t i = 0; i < n; i++)
            scan_one(&s, items[i].data, items[i].len, &out, i, NULL);
    }
    result = scan_result(&s, cols, NULL, 0);
    scan_free(&s);
done:
    PyMem_Free(items);
    Py_DECREF(values);
    return result;
}

/* -- Kafka record batches -> the same columns, plus where each record sits -------------------------- */

#define SCAN_ENVELOPE_OK 128       /* the value's schema and event_id, the key and headers as feed wants them */
/* A record a run may hold: scanned, a log record, its hash and its envelope as the seal says. */
#define RUN_MASK (SCAN_OK | SCAN_SLOW | SCAN_ALTERED | SCAN_ENVELOPE_OK)
#define RUN_WANT (SCAN_OK | SCAN_ENVELOPE_OK)

typedef struct {
    kread_record_t record;
    int64_t offset;
    uint32_t batch, start;             /* the batch it is in, and where it starts in the batch's records */
} found_t;

typedef struct {
    uint32_t batch, index;             /* the batch, and the index of the record that could not be read */
    int32_t code;                      /* KREAD_* */
} read_error_t;

typedef struct {
    Py_buffer view;
    long long base_offset;
    Py_ssize_t count;
} batch_in_t;

static int push(buf_t *b, const void *item, Py_ssize_t size) {
    return buf_put(b, item, size);
}

/* Every record of every batch, in order (those below min_offset read but left out); a batch that cannot
 * be read to its end stops at the record that fails, noted in errors. -1 only when memory ran out. */
static int read_batches(const batch_in_t *batches, Py_ssize_t n_batches, long long min_offset, buf_t *found,
                        buf_t *errors) {
    for (Py_ssize_t b = 0; b < n_batches; b++) {
        kread_cursor data = batches[b].view.buf, p = data, end = data + batches[b].view.len;
        long long base = batches[b].base_offset;
        read_error_t error = {(uint32_t)b, 0, KREAD_OK};
        Py_ssize_t k = 0;
        for (; k < batches[b].count; k++) {
            found_t f;
            kread_cursor start = p;
            if (p == end) {
                error.code = KREAD_COUNT;
                break;
            }
            if ((error.code = kread_record(&p, end, &f.record)) != KREAD_OK)
                break;
            if (base > 0 && f.record.offset_delta > INT64_MAX - base) {
                error.code = KREAD_OFFSET;
                break;
            }
            f.offset = base + f.record.offset_delta;
            if (f.offset < min_offset)
                continue;
            f.batch = (uint32_t)b;
            f.start = (uint32_t)(start - data);
            if (push(found, &f, sizeof f) < 0)
                return -1;
        }
        if (error.code == KREAD_OK && p != end) {
            error.code = KREAD_TRAILING;
        }
        if (error.code != KREAD_OK) {
            error.index = (uint32_t)k;
            if (push(errors, &error, sizeof error) < 0)
                return -1;
        }
    }
    return 0;
}

/* The envelope as Verifier.feed judges it, true when feed would find nothing to check: the value's own
 * (a v1 value's event_id is "<chain>:<seq>", a v2 value has no event_id member), the key null or the
 * chain, and among the headers the last `schema` names the value's format and the last `event_id` is
 * "<chain>:<seq>". Only for a record that scanned OK. */
static int envelope_ok(const scan_t *s, const columns_t *out, Py_ssize_t i, const kread_record_t *r,
                       const value_envelope_t *value) {
    if (value->format == 1 ? !(out->flags[i] & SCAN_EVENT_ID_OK) : value->format != 2 || value->has_event_id)
        return 0;
    const entry_t *e = &s->chains.entries[out->chains[i]];
    cursor chain = (cursor)s->chains.keys.data + e->key_off;
    Py_ssize_t chain_len = e->key_len;
    if (r->key != NULL && (r->key_len != chain_len || memcmp(r->key, chain, (size_t)chain_len) != 0))
        return 0;
    kread_cursor p = r->headers;
    kread_header_t schema = {NULL, 0, NULL, 0}, event = {NULL, 0, NULL, 0};
    for (int64_t k = 0; k < r->header_count; k++) {
        kread_header_t header;
        if (kread_header(&p, r->end, &header) != KREAD_OK)
            return 0;
        if (header.key_len == 6 && memcmp(header.key, "schema", 6) == 0)
            schema = header;
        else if (header.key_len == 8 && memcmp(header.key, "event_id", 8) == 0)
            event = header;
    }
    const char *format = value->format == 1 ? SCHEMA : SCHEMA_V2;    /* both of sizeof SCHEMA - 1 bytes */
    if (schema.value == NULL || schema.value_len != (int64_t)sizeof SCHEMA - 1
        || memcmp(schema.value, format, sizeof SCHEMA - 1) != 0)
        return 0;
    char seq_text[24];
    int seq_len = buf_decimal(seq_text, out->seqs[i]);
    return event.value != NULL && event.value_len == chain_len + 1 + seq_len
           && memcmp(event.value, chain, (size_t)chain_len) == 0 && event.value[chain_len] == ':'
           && memcmp(event.value + chain_len + 1, seq_text, (size_t)seq_len) == 0;
}

/* Runs: maximal stretches of consecutive records a run may hold, of one chain and one identity, each
 * after the first FOLLOWS the one before. As (start, end) pairs. */
static int find_runs(const columns_t *out, Py_ssize_t n, buf_t *runs) {
    Py_ssize_t open = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        int candidate = (out->flags[i] & RUN_MASK) == RUN_WANT && out->types[i] == 0;
        if (candidate && open >= 0 && out->chains[i] == out->chains[i - 1] && out->idents[i] == out->idents[i - 1]
            && (out->flags[i] & SCAN_FOLLOWS))
            continue;
        if (open >= 0) {
            uint32_t pair[2] = {(uint32_t)open, (uint32_t)i};
            if (push(runs, pair, sizeof pair) < 0)
                return -1;
        }
        open = candidate ? i : -1;
    }
    if (open >= 0) {
        uint32_t pair[2] = {(uint32_t)open, (uint32_t)n};
        if (push(runs, pair, sizeof pair) < 0)
            return -1;
    }
    return 0;
}

static void scan_found(scan_t *s, const found_t *found, Py_ssize_t n, const columns_t *out, int64_t *offsets,
                       uint32_t *locations) {
    for (Py_ssize_t i = 0; i < n; i++) {
        const found_t *f = &found[i];
        value_envelope_t value = {0, 0};
        scan_one(s, f->record.value, f->record.value ? (Py_ssize_t)f->record.value_len : 0, out, i, &value);
        if ((out->flags[i] & SCAN_OK) && envelope_ok(s, out, i, &f->record, &value))
            out->flags[i] |= SCAN_ENVELOPE_OK;
        offsets[i] = f->offset;
        locations[2 * i] = f->batch;
        locations[2 * i + 1] = f->start;
    }
}

static PyObject *bytes_of(const buf_t *b) {
    return PyBytes_FromStringAndSize(b->data ? b->data : "", b->len);
}

static PyObject *error_list(const buf_t *errors) {
    Py_ssize_t n = errors->len / (Py_ssize_t)sizeof(read_error_t);
    PyObject *list = PyList_New(n);
    for (Py_ssize_t i = 0; list != NULL && i < n; i++) {
        const read_error_t *e = (const read_error_t *)errors->data + i;
        PyObject *item = Py_BuildValue("(IIi)", e->batch, e->index, (int)e->code);
        if (item == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, item);
    }
    return list;
}

PyDoc_STRVAR(verify_records_doc,
"verify_records(batches, min_offset) -> (flags, types, chains, idents, seqs, prefixes, prevs, hashes,\n"
"    chain_names, identities, offsets, locations, runs, errors)\n\n"
"The records of Kafka v2 record batches (batches: [(records, base_offset, count)], records the\n"
"decompressed records section) at offsets >= min_offset, scanned like verify_scan, with their envelope\n"
"judged, as shipper.verify.batches.verify_records_py; without the GIL.");

static PyObject *verify_records(PyObject *self, PyObject *args) {
    PyObject *batches_arg;
    long long min_offset;
    if (!PyArg_ParseTuple(args, "OL", &batches_arg, &min_offset))
        return NULL;
    PyObject *batches = PySequence_Tuple(batches_arg);
    if (batches == NULL)
        return NULL;
    Py_ssize_t n_batches = PyTuple_GET_SIZE(batches), held = 0;
    if (n_batches > UINT32_MAX) {
        Py_DECREF(batches);
        PyErr_SetString(PyExc_ValueError, "too many batches");
        return NULL;
    }
    batch_in_t *in = PyMem_Calloc((size_t)(n_batches ? n_batches : 1), sizeof *in);
    PyObject *result = NULL, *cols[SCAN_COLUMNS] = {NULL}, *extra[4] = {NULL};
    buf_t found, errors, runs;
    buf_init(&found);
    buf_init(&errors);
    buf_init(&runs);
    if (in == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; held < n_batches; held++) {
        PyObject *item = PyTuple_GET_ITEM(batches, held);
        if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "y*Ln", &in[held].view, &in[held].base_offset,
                                                      &in[held].count)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "a batch is a tuple (records, base_offset, count)");
            goto done;
        }
        if (in[held].view.len > UINT32_MAX) {
            held++;
            PyErr_SetString(PyExc_ValueError, "a batch's records are larger than 4 GiB");
            goto done;
        }
    }
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = read_batches(in, n_batches, min_offset, &found, &errors);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t n = found.len / (Py_ssize_t)sizeof(found_t);
    columns_t out;
    unsigned char *offsets, *locations;
    if (columns_new(n, cols, &out) < 0 || (extra[0] = column(n, 8, &offsets)) == NULL
        || (extra[1] = column(n, 8, &locations)) == NULL)
        goto done;
    scan_t s;
    scan_init(&s);
    Py_BEGIN_ALLOW_THREADS
    scan_found(&s, (const found_t *)found.data, n, &out, (int64_t *)offsets, (uint32_t *)locations);
    failed = find_runs(&out, n, &runs);
    Py_END_ALLOW_THREADS
    if (failed) {
        scan_free(&s);
        PyErr_NoMemory();
        goto done;
    }
    if ((extra[2] = bytes_of(&runs)) == NULL || (extra[3] = error_list(&errors)) == NULL) {
        scan_free(&s);
        goto done;
    }
    result = scan_result(&s, cols, extra, 4);
    scan_free(&s);
done:
    for (int c = 0; c < SCAN_COLUMNS; c++)
        Py_XDECREF(cols[c]);
    for (int k = 0; k < 4; k++)
        Py_XDECREF(extra[k]);
    for (Py_ssize_t b = 0; b < held; b++)
        PyBuffer_Release(&in[b].view);
    PyMem_Free(in);
    buf_free(&found);
    buf_free(&errors);
    buf_free(&runs);
    Py_DECREF(batches);
    return result;
}

static PyMethodDef verify_methods[] = {
    {"verify_scan", verify_scan, METH_O, verify_scan_doc},
    {"verify_records", verify_records, METH_VARARGS, verify_records_doc},
    {NULL, NULL, 0, NULL},
};

int verify_register(PyObject *module) {
    for (int c = 0; c < 256; c++) {
        SPECIAL[c] = c == '"' || c == '\\' || c < 0x20 || c >= 0x80;
        HEXVAL[c] = c >= '0' && c <= '9' ? (signed char)(c - '0')
                  : c >= 'a' && c <= 'f' ? (signed char)(c - 'a' + 10)
                  : c >= 'A' && c <= 'F' ? (signed char)(c - 'A' + 10) : -1;
    }
    for (int i = 0; i < IDENTITY_FIELDS; i++)
        IDENTITY_LENGTHS[i] = (Py_ssize_t)strlen(IDENTITY_NAMES[i]);
    if (getrandom(&HASH_SEED, sizeof HASH_SEED, GRND_NONBLOCK) != (ssize_t)sizeof HASH_SEED)
        HASH_SEED = (uint64_t)(uintptr_t)&HASH_SEED * 0x9E3779B97F4A7C15ULL;
    return PyModule_AddFunctions(module, verify_methods);
}
