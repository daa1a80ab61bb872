/* Correlation ids and severity of an ASCII log body: the native twin of
 * shipper.enrich.correlation.Correlator.extract, which stays the specification.
 *
 * The Python code runs two regular expressions with findall. Each is re-done here as a hand-written
 * matcher that makes the choices the regex engine makes: matches are leftmost and non-overlapping (the
 * scan resumes at the end of a match, so an `=` or `"` inside a taken value starts nothing), the
 * alternatives are tried in their order, and where backtracking could change the answer it is
 * reproduced (the key alternatives, the timestamp before a leading level word). Where backtracking can
 * not change the answer (a greedy run followed by a character the run excludes), the matcher takes the
 * maximal run once.
 *
 * Only ASCII bodies are taken: for them \s, \d, \w and case folding are the small ASCII sets below.
 * Any other body is left to the Python reference (return 0). Nothing here creates a Python object per
 * line; the configured names are copied to C strings once, by the constructor.
 */
#include "correlate.h"

#include <stdint.h>

#define MAX_ID_CHARS 256           /* MAX_ID_CHARS of correlation.py: caps of values, runs, escapes */
#define MAX_LEVEL_LETTERS 16       /* `[A-Za-z]{1,16}` of a level value */

/* Character classes, as Python's str patterns define them for ASCII. */
enum {
    CL_SPACE = 1 << 0,        /* \s: \t \n \v \f \r, \x1c-\x1f and space */
    CL_DIGIT = 1 << 1,        /* \d */
    CL_LETTER = 1 << 2,       /* [A-Za-z] */
    CL_WORD_DASH = 1 << 3,    /* [\w-]: what may not follow an id or a level word */
    CL_KEY_GLUE = 1 << 4,     /* [\w.-]: a key preceded by one of these is not a whole key */
    CL_HEX = 1 << 5,          /* [0-9a-fA-F] */
    CL_LOWER_HEX = 1 << 6,    /* [0-9a-f]: a traceparent's digits */
    CL_PARENT_GLUE = 1 << 7,  /* [0-9a-zA-Z-]: what may not touch a traceparent */
    CL_TEXT = 1 << 8,         /* _TEXT_CHAR: a key=value value character */
    CL_STAMP = 1 << 9,        /* [\d\-:T.,Z+ ]: a timestamp before a leading level word */
    CL_JSON_PLAIN = 1 << 10,  /* [^"\\\x00-\x1f]: an unescaped JSON string character */
};

static uint16_t char_class[256];

#define IS(c, cl) (char_class[(unsigned char)(c)] & (cl))

static void init_char_classes(void) {
    for (int c = 0; c < 128; c++) {
        uint16_t f = 0;
        int digit = c >= '0' && c <= '9';
        int letter = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
        int word = digit || letter || c == '_';
        if ((c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f) || c == ' ')
            f |= CL_SPACE;
        if (digit)
            f |= CL_DIGIT;
        if (letter)
            f |= CL_LETTER;
        if (word || c == '-')
            f |= CL_WORD_DASH;
        if (word || c == '-' || c == '.')
            f |= CL_KEY_GLUE;
        if (digit || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))
            f |= CL_HEX;
        if (digit || (c >= 'a' && c <= 'f'))
            f |= CL_LOWER_HEX;
        if (digit || letter || c == '-')
            f |= CL_PARENT_GLUE;
        if (c > 0x1f && c != 0x7f && c != ' ' && !strchr("\"\\,;&'<>()[]{}", c))
            f |= CL_TEXT;
        if (digit || (c && strchr("-:T.,Z+ ", c)))
            f |= CL_STAMP;
        if (c > 0x1f && c != '"' && c != '\\')
            f |= CL_JSON_PLAIN;
        char_class[c] = f;
    }
    /* Bytes >= 0x80 never reach a matcher (non-ASCII bodies are refused first); class 0. */
}

/* ---- configuration ------------------------------------------------------------------------------ */

typedef struct {
    const unsigned char *text;   /* UTF-8 (a name with non-ASCII never matches an ASCII body) */
    Py_ssize_t len;
    Py_ssize_t kind;             /* attribute names: index of their kind */
} name_t;

#define N(s) {(const unsigned char *)(s), (Py_ssize_t)(sizeof(s) - 1), 0}
/* LEVEL_FIELDS and TEXT_LEVEL_KEYS of correlation.py, in its order (the tests build their bodies from
 * the Python tuples, so a change there that is not made here fails them). */
static const name_t json_level_fields[] = {N("level"), N("severity"), N("lvl"), N("loglevel"),
                                           N("severity_text"), N("log.level")};
static const name_t text_level_keys[] = {N("level"), N("lvl"), N("severity")};
/* LEVEL_WORDS: only one can match at a position (each must end the [\w-] run), so order is free. */
static const name_t level_words[] = {N("TRACE"), N("DEBUG"), N("INFO"), N("NOTICE"), N("WARN"), N("WARNING"),
                                     N("ERROR"), N("ERR"), N("CRITICAL"), N("CRIT"), N("FATAL"), N("PANIC"),
                                     N("ALERT"), N("EMERG"), N("EMERGENCY")};
#undef N
#define COUNT(a) ((Py_ssize_t)(sizeof(a) / sizeof((a)[0])))
#define LONGEST_LEVEL_WORD 9

enum json_branch { J_TRACE, J_SPAN, J_LEVEL, J_ATTRIBUTE };

typedef struct {
    const name_t *name;
    enum json_branch branch;
} json_key_t;

typedef struct {
    PyObject_HEAD
    name_t *trace;               /* trace id keys, configured order */
    Py_ssize_t n_trace;
    name_t *span;
    Py_ssize_t n_span;
    name_t *attribute;           /* attribute keys, kind by kind in kind order, then configured order */
    Py_ssize_t n_attribute;
    name_t *prefix;              /* per attribute kind: `"<kind>":"` (json.encoder.encode_basestring_ascii) */
    Py_ssize_t n_kinds;
    /* The JSON key alternatives by the byte after the opening `"` (an empty key: its closing `"`),
     * each list in the pattern's order: json_keys[json_first[c] .. json_first[c + 1]). */
    json_key_t *json_keys;
    Py_ssize_t json_first[257];
    unsigned char text_last[256];   /* byte before a `=` that can end a key=value key */
    int text_empty_key;             /* an empty key is configured: every `=` must be tried */
    buf_t out_top, out_attrs;       /* reused by the Python-level extract() */
} CorrelatorObject;

static PyTypeObject CorrelatorType;

/* ---- one body -------------------------------------------------------------------------------------- */

enum match_kind { M_TRACE, M_SPAN, M_LEVEL, M_ATTRIBUTE, M_LEADING };

typedef struct {
    enum match_kind kind;
    Py_ssize_t value, value_len;    /* the captured group, as offsets in the body */
    Py_ssize_t attribute_kind;
    Py_ssize_t end;                 /* where findall resumes */
} match_t;

typedef struct {
    const unsigned char *b;
    Py_ssize_t n;
    const unsigned char *trace, *span;  /* found ids (32 / 16 hex digits), NULL for none */
    char severity[MAX_LEVEL_LETTERS];   /* severity_text, "" for none */
    Py_ssize_t severity_len;
    buf_t *attrs;
    Py_ssize_t attrs_start;             /* this body's attribute members begin here in attrs */
} scan_t;

static int all_char(const unsigned char *s, Py_ssize_t len, char c) {
    for (Py_ssize_t i = 0; i < len; i++)
        if (s[i] != (unsigned char)c)
            return 0;
    return 1;
}

static int all_class(const unsigned char *s, Py_ssize_t len, int cl) {
    for (Py_ssize_t i = 0; i < len; i++)
        if (!IS(s[i], cl))
            return 0;
    return 1;
}

/* Correlator.severity: klog letters first (its cache is seeded with them), then pino numbers, then the
 * word in upper case. */
static void set_severity(scan_t *st, const unsigned char *word, Py_ssize_t len) {
    static const char *const klog[] = {"INFO", "WARN", "ERROR", "FATAL"};
    static const char *const pino[] = {"TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"};
    const char *text = NULL;
    if (len == 1) {
        const char *at = memchr("IWEF", word[0], 4);
        if (at != NULL)
            text = klog[at - "IWEF"];
    }
    if (text == NULL && len > 0 && all_class(word, len, CL_DIGIT)) {
        text = "";
        if (len == 2 && word[1] == '0' && word[0] >= '1' && word[0] <= '6')
            text = pino[word[0] - '1'];
    }
    if (text != NULL) {
        st->severity_len = (Py_ssize_t)strlen(text);
        memcpy(st->severity, text, (size_t)st->severity_len);
        return;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char c = word[i];
        st->severity[i] = (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
    }
    st->severity_len = len;
}

/* `prefix not in attributes`, on the attribute members this body has built so far. */
static int attributes_contain(const scan_t *st, const name_t *prefix) {
    const char *at = st->attrs->data + st->attrs_start;
    Py_ssize_t len = st->attrs->len - st->attrs_start;
    while (len >= prefix->len) {
        const char *quote = memchr(at, prefix->text[0], (size_t)(len - prefix->len + 1));
        if (quote == NULL)
            return 0;
        if (memcmp(quote, prefix->text, (size_t)prefix->len) == 0)
            return 1;
        len -= quote + 1 - at;
        at = quote + 1;
    }
    return 0;
}

/* A kind's first value wins. An empty JSON value falls through to `severity("")` in Python, which
 * adds nothing. */
static int take_attribute(scan_t *st, const name_t *prefix, const match_t *m) {
    if (m->value_len == 0 || attributes_contain(st, prefix))
        return 0;
    buf_t *a = st->attrs;
    if ((a->len > st->attrs_start && buf_putc(a, ',') < 0) || buf_put(a, prefix->text, prefix->len) < 0
        || buf_put(a, st->b + m->value, m->value_len) < 0 || buf_putc(a, '"') < 0)
        return -1;
    return 0;
}

/* What extract / _from_text do with one findall tuple. */
static int apply(const CorrelatorObject *c, scan_t *st, const match_t *m) {
    const unsigned char *value = st->b + m->value;
    switch (m->kind) {
    case M_LEADING:              /* only ever the first match; it overrides nothing */
        set_severity(st, value, m->value_len);
        break;
    case M_TRACE:
        if (st->trace == NULL && !all_char(value, 32, '0'))
            st->trace = value;
        break;
    case M_SPAN:
        if (st->span == NULL && !all_char(value, 16, '0'))
            st->span = value;
        break;
    case M_LEVEL:
        if (st->severity_len == 0)
            set_severity(st, value, m->value_len);
        break;
    case M_ATTRIBUTE:
        return take_attribute(st, &c->prefix[m->attribute_kind], m);
    }
    return 0;
}

/* ---- the JSON pattern: `"(?:<trace keys>":\s*"hex32"|<span keys>...|<level fields>...|(<attr keys>)...)` */

/* After `"` at t-1: `<name>":\s*`, the position after the spaces, or -1. */
static Py_ssize_t json_key(const unsigned char *b, Py_ssize_t n, Py_ssize_t t, const name_t *name) {
    Py_ssize_t k = t + name->len;
    /* The quote and colon after the name reject most keys of another length before any memcmp. */
    if (k + 2 > n || b[k] != '"' || b[k + 1] != ':'
        || (name->len && (b[t] != name->text[0] || memcmp(b + t, name->text, (size_t)name->len) != 0)))
        return -1;
    k += 2;
    while (k < n && IS(b[k], CL_SPACE))
        k++;
    return k;
}

/* `"([0-9a-fA-F]{digits})"` at k. */
static int json_hex(const unsigned char *b, Py_ssize_t n, Py_ssize_t k, Py_ssize_t digits, match_t *m) {
    if (k + digits + 2 > n || b[k] != '"' || b[k + digits + 1] != '"' || !all_class(b + k + 1, digits, CL_HEX))
        return 0;
    m->value = k + 1;
    m->value_len = digits;
    m->end = k + digits + 2;
    return 1;
}

/* `(?:"([A-Za-z]{1,16})"|(\d{2})(?![\d.]))` at k. */
static int json_level(const unsigned char *b, Py_ssize_t n, Py_ssize_t k, match_t *m) {
    if (k >= n)
        return 0;
    if (b[k] == '"') {
        Py_ssize_t r = k + 1;
        while (r < n && r - (k + 1) <= MAX_LEVEL_LETTERS && IS(b[r], CL_LETTER))
            r++;
        Py_ssize_t len = r - (k + 1);
        if (len < 1 || len > MAX_LEVEL_LETTERS || r >= n || b[r] != '"')
            return 0;
        m->value = k + 1;
        m->value_len = len;
        m->end = r + 1;
        return 1;
    }
    if (k + 2 > n || !IS(b[k], CL_DIGIT) || !IS(b[k + 1], CL_DIGIT)
        || (k + 2 < n && (IS(b[k + 2], CL_DIGIT) || b[k + 2] == '.')))
        return 0;
    m->value = k;
    m->value_len = 2;
    m->end = k + 2;
    return 1;
}

/* `_JSON_STRING` then `"`, from m: the index of the closing quote, or -1. The regex's runs can only be
 * split at a backslash, so its tokenisation is unique and the caps apply to each plain run (at most
 * 256 characters) and to the number of escapes (at most 256). */
static Py_ssize_t json_string_end(const unsigned char *b, Py_ssize_t n, Py_ssize_t m) {
    Py_ssize_t run = 0, escapes = 0;
    while (m < n) {
        unsigned char c = b[m];
        if (IS(c, CL_JSON_PLAIN)) {
            if (++run > MAX_ID_CHARS)
                return -1;
            m++;
        } else if (c == '"') {
            return m;
        } else if (c == '\\') {
            if (++escapes > MAX_ID_CHARS || m + 1 >= n)
                return -1;
            unsigned char e = b[m + 1];
            if (e && strchr("\"\\/bfnrt", e))
                m += 2;
            else if (e == 'u' && m + 6 <= n && all_class(b + m + 2, 4, CL_HEX))
                m += 6;
            else
                return -1;
            run = 0;
        } else {
            return -1;           /* a raw control character */
        }
    }
    return -1;
}

/* The JSON pattern at the `"` at index i. The regex backtracks through the key alternatives in order;
 * only those starting with the byte at i + 1 can match, and json_keys lists them in that order. */
static int json_match_at(const CorrelatorObject *c, const unsigned char *b, Py_ssize_t n, Py_ssize_t i,
                         match_t *m) {
    Py_ssize_t t = i + 1;
    if (t >= n)
        return 0;
    const json_key_t *key = c->json_keys + c->json_first[b[t]], *last = c->json_keys + c->json_first[b[t] + 1];
    for (; key < last; key++) {
        Py_ssize_t k = json_key(b, n, t, key->name), close;
        if (k < 0)
            continue;
        switch (key->branch) {
        case J_TRACE:
            if (json_hex(b, n, k, 32, m)) {
                m->kind = M_TRACE;
                return 1;
            }
            break;
        case J_SPAN:
            if (json_hex(b, n, k, 16, m)) {
                m->kind = M_SPAN;
                return 1;
            }
            break;
        case J_LEVEL:
            if (json_level(b, n, k, m)) {
                m->kind = M_LEVEL;
                return 1;
            }
            break;
        case J_ATTRIBUTE:
            if (k < n && b[k] == '"' && (close = json_string_end(b, n, k + 1)) >= 0) {
                m->kind = M_ATTRIBUTE;
                m->attribute_kind = key->name->kind;
                m->value = k + 1;
                m->value_len = close - (k + 1);
                m->end = close + 1;
                return 1;
            }
            break;
        }
    }
    return 0;
}

static int json_scan(const CorrelatorObject *c, scan_t *st) {
    const unsigned char *b = st->b;
    Py_ssize_t n = st->n, pos = 0;
    while (pos < n) {
        const unsigned char *quote = memchr(b + pos, '"', (size_t)(n - pos));
        if (quote == NULL)
            break;
        Py_ssize_t i = quote - b;
        match_t m;
        if (json_match_at(c, b, n, i, &m)) {
            if (apply(c, st, &m) < 0)
                return -1;
            pos = m.end;
        } else {
            pos = i + 1;
        }
    }
    return 0;
}

/* ---- the key=value pattern, searched over "=" + body ----------------------------------------------- */

/* In body offsets the `=` is at j (j = -1 is the `=` put in front of the body). The look-behinds
 * `(?<=name=)(?<![\w.-]name=)`: the name ends right before the `=` and nothing of [\w.-] precedes it;
 * the leading `=` counts as text for both. */
static int key_before(const unsigned char *b, Py_ssize_t j, const name_t *name) {
    Py_ssize_t start = j - name->len;
    if (name->len > 0) {
        if (start >= 0) {
            if (b[start] != name->text[0] || memcmp(b + start, name->text, (size_t)name->len) != 0)
                return 0;
        } else if (start == -1) {
            if (name->text[0] != '=' || memcmp(b, name->text + 1, (size_t)name->len - 1) != 0)
                return 0;
        } else {
            return 0;
        }
    }
    return !(start - 1 >= 0 && IS(b[start - 1], CL_KEY_GLUE));
}

static int any_key_before(const unsigned char *b, Py_ssize_t j, const name_t *names, Py_ssize_t count) {
    for (Py_ssize_t x = 0; x < count; x++)
        if (key_before(b, j, &names[x]))
            return 1;
    return 0;
}

/* `"?([0-9a-fA-F]{digits})(?![\w-])` at v. */
static int text_hex(const unsigned char *b, Py_ssize_t n, Py_ssize_t v, Py_ssize_t digits, match_t *m) {
    if (v < n && b[v] == '"')
        v++;
    if (v + digits > n || !all_class(b + v, digits, CL_HEX) || (v + digits < n && IS(b[v + digits], CL_WORD_DASH)))
        return 0;
    m->value = v;
    m->value_len = digits;
    m->end = v + digits;
    return 1;
}

/* The length of the run of `cl` characters at v, counted up to limit + 1. */
static Py_ssize_t run_of(const unsigned char *b, Py_ssize_t n, Py_ssize_t v, int cl, Py_ssize_t limit) {
    Py_ssize_t r = v;
    while (r < n && r - v <= limit && IS(b[r], cl))
        r++;
    return r - v;
}

/* `"?([A-Za-z]{1,16})(?![\w-])|(\d{2})(?![\d.])` at v. */
static int text_level(const unsigned char *b, Py_ssize_t n, Py_ssize_t v, match_t *m) {
    Py_ssize_t w = v < n && b[v] == '"' ? v + 1 : v;
    Py_ssize_t len = run_of(b, n, w, CL_LETTER, MAX_LEVEL_LETTERS);
    if (len >= 1 && len <= MAX_LEVEL_LETTERS && !(w + len < n && IS(b[w + len], CL_WORD_DASH))) {
        m->value = w;
        m->value_len = len;
        m->end = w + len;
        return 1;
    }
    if (v + 2 > n || !IS(b[v], CL_DIGIT) || !IS(b[v + 1], CL_DIGIT)
        || (v + 2 < n && (IS(b[v + 2], CL_DIGIT) || b[v + 2] == '.')))
        return 0;
    m->value = v;
    m->value_len = 2;
    m->end = v + 2;
    return 1;
}

/* `_TEXT_VALUE`: `"?(T{1,256})(?!T)` at v. */
static int text_value(const unsigned char *b, Py_ssize_t n, Py_ssize_t v, match_t *m) {
    if (v < n && b[v] == '"')
        v++;
    Py_ssize_t len = run_of(b, n, v, CL_TEXT, MAX_ID_CHARS);
    if (len < 1 || len > MAX_ID_CHARS)
        return 0;
    m->value = v;
    m->value_len = len;
    m->end = v + len;
    return 1;
}

/* `\[?` then a level word, case-insensitive, followed by no [\w-]: the word has to be the whole [\w-]
 * run, so at most one level word can match and the order of the alternation does not matter. */
static int level_word_at(const unsigned char *b, Py_ssize_t n, Py_ssize_t q, match_t *m) {
    if (q < n && b[q] == '[')
        q++;
    Py_ssize_t len = run_of(b, n, q, CL_WORD_DASH, LONGEST_LEVEL_WORD);
    for (Py_ssize_t x = 0; x < COUNT(level_words); x++) {
        const name_t *word = &level_words[x];
        if (word->len != len)
            continue;
        Py_ssize_t i = 0;
        while (i < len && (b[q + i] & ~0x20) == word->text[i])
            i++;
        if (i == len) {
            m->value = q;
            m->value_len = len;
            m->end = q + len;
            return 1;
        }
    }
    return 0;
}

/* `(?<=\A=)` + _LEADING_LEVEL_WORD: `(?:\[?\d[\d\-:T.,Z+ ]*\]?\s+)?\[?(<level word>)(?![\w-])`.
 * The timestamp class holds a space, so the regex backtracks through every end k of the class run,
 * longest first, and takes the first k after which `\]?\s+` and the word match. (A shorter `\s+`
 * never helps: the word cannot start with a space.) */
static int leading_level(const unsigned char *b, Py_ssize_t n, match_t *m) {
    Py_ssize_t d = n > 0 && b[0] == '[' ? 1 : 0;
    if (d < n && IS(b[d], CL_DIGIT)) {
        Py_ssize_t e = d + 1;
        while (e < n && IS(b[e], CL_STAMP))
            e++;
        Py_ssize_t spaces_end_next = -1;    /* end of the \s run at k + 1, when b[k + 1] is a space */
        for (Py_ssize_t k = e; k > d; k--) {
            Py_ssize_t spaces_end = -1;     /* end of the \s run at k, when b[k] is a space */
            if (k < n && IS(b[k], CL_SPACE)) {
                if (spaces_end_next >= 0) {
                    spaces_end = spaces_end_next;
                } else {
                    spaces_end = k + 1;
                    while (spaces_end < n && IS(b[spaces_end], CL_SPACE))
                        spaces_end++;
                }
            }
            Py_ssize_t word = spaces_end;
            if (k < n && b[k] == ']' && k + 1 < n && IS(b[k + 1], CL_SPACE)) {
                word = k + 2;
                while (word < n && IS(b[word], CL_SPACE))
                    word++;
            }
            if (word >= 0 && level_word_at(b, n, word, m))
                return 1;
            spaces_end_next = spaces_end;
        }
    }
    return level_word_at(b, n, 0, m);
}

/* `(?<=\A=)([IWEF])\d{4} \d\d:` */
static int klog_level(const unsigned char *b, Py_ssize_t n, match_t *m) {
    if (n < 9 || !memchr("IWEF", b[0], 4) || !all_class(b + 1, 4, CL_DIGIT) || b[5] != ' '
        || !all_class(b + 6, 2, CL_DIGIT) || b[8] != ':')
        return 0;
    m->value = 0;
    m->value_len = 1;
    m->end = 9;
    return 1;
}

/* The text pattern at the `=` at j, its alternatives in order: trace, span, level key (word, then
 * number), attribute kinds, and at the leading `=` the leading level word and klog's letter. */
static int text_match_at(const CorrelatorObject *c, const unsigned char *b, Py_ssize_t n, Py_ssize_t j,
                         match_t *m) {
    int maybe_key = c->text_empty_key || (j >= 1 ? c->text_last[b[j - 1]] : j == 0 ? c->text_last['='] : 0);
    if (maybe_key) {
        Py_ssize_t v = j + 1;
        if (any_key_before(b, j, c->trace, c->n_trace) && text_hex(b, n, v, 32, m)) {
            m->kind = M_TRACE;
            return 1;
        }
        if (any_key_before(b, j, c->span, c->n_span) && text_hex(b, n, v, 16, m)) {
            m->kind = M_SPAN;
            return 1;
        }
        if (any_key_before(b, j, text_level_keys, COUNT(text_level_keys)) && text_level(b, n, v, m)) {
            m->kind = M_LEVEL;
            return 1;
        }
        if (c->n_attribute > 0 && text_value(b, n, v, m)) {
            for (Py_ssize_t x = 0; x < c->n_attribute; x++)
                if (key_before(b, j, &c->attribute[x])) {
                    m->kind = M_ATTRIBUTE;
                    m->attribute_kind = c->attribute[x].kind;
                    return 1;
                }
        }
    }
    if (j == -1 && (leading_level(b, n, m) || klog_level(b, n, m))) {
        m->kind = M_LEADING;
        return 1;
    }
    return 0;
}

/* 1 when the text pattern found anything (then the JSON pattern is not tried), 0, or -1. */
static int text_scan(const CorrelatorObject *c, scan_t *st) {
    const unsigned char *b = st->b;
    Py_ssize_t n = st->n, pos = 0;
    int found = 0;
    match_t m;
    if (text_match_at(c, b, n, -1, &m)) {
        if (apply(c, st, &m) < 0)
            return -1;
        found = 1;
        pos = m.end;
    }
    while (pos < n) {
        const unsigned char *eq = memchr(b + pos, '=', (size_t)(n - pos));
        if (eq == NULL)
            break;
        Py_ssize_t j = eq - b;
        if (text_match_at(c, b, n, j, &m)) {
            if (apply(c, st, &m) < 0)
                return -1;
            found = 1;
            pos = m.end;
        } else {
            pos = j + 1;
        }
    }
    return found;
}

/* _TRACEPARENT.search: the leftmost `00-<32>-<16>-<2>` in lower-case hex that touches no
 * [0-9a-zA-Z-]; its trace id offset, or -1. */
static Py_ssize_t traceparent(const unsigned char *b, Py_ssize_t n) {
    Py_ssize_t from = 2;
    while (from < n) {
        const unsigned char *dash = memchr(b + from, '-', (size_t)(n - from));
        if (dash == NULL)
            return -1;
        Py_ssize_t i = dash - b - 2;
        from = i + 3;
        if (b[i] != '0' || b[i + 1] != '0' || (i > 0 && IS(b[i - 1], CL_PARENT_GLUE)))
            continue;
        if (i + 55 > n)
            return -1;           /* every later candidate is shorter still */
        if (all_class(b + i + 3, 32, CL_LOWER_HEX) && b[i + 35] == '-' && all_class(b + i + 36, 16, CL_LOWER_HEX)
            && b[i + 52] == '-' && all_class(b + i + 53, 2, CL_LOWER_HEX)
            && !(i + 55 < n && IS(b[i + 55], CL_PARENT_GLUE)))
            return i + 3;
    }
    return -1;
}


/* `hex` holds only [0-9a-fA-F] and len is a multiple of 8: setting bit 0x20 lowers A-F and leaves the
 * digits as they are, eight at a time. */
static int put_lower_hex(buf_t *out, const unsigned char *hex, Py_ssize_t len) {
    if (buf_reserve(out, len) < 0)
        return -1;
    for (Py_ssize_t i = 0; i < len; i += 8) {
        uint64_t word;
        memcpy(&word, hex + i, 8);
        word |= UINT64_C(0x2020202020202020);
        memcpy(out->data + out->len + i, &word, 8);
    }
    out->len += len;
    return 0;
}

/* Runs without the GIL (the sealing loop releases it): no Python API here, only reads of the immutable
 * configuration. Allocation goes through buf.h. Anything but a Correlator is "not taken" (0), so the
 * Python reference answers for it. */
int correlate_extract(PyObject *correlator, const char *body, Py_ssize_t len, buf_t *top, buf_t *attrs) {
    if (!Py_IS_TYPE(correlator, &CorrelatorType))
        return 0;
    const CorrelatorObject *c = (const CorrelatorObject *)correlator;
    const unsigned char *b = (const unsigned char *)body;
    if (!is_ascii(b, len))
        return 0;
    scan_t st = {.b = b, .n = len, .attrs = attrs, .attrs_start = attrs->len};
    int found = 0;
    if (len > 0 && b[0] == '{') {
        found = json_scan(c, &st);
    } else {
        found = text_scan(c, &st);
        if (found == 0 && memchr(b, '{', (size_t)len) != NULL)
            found = json_scan(c, &st);
    }
    if (found < 0)
        return -1;
    if (st.trace == NULL) {
        Py_ssize_t parent = traceparent(b, len);
        if (parent >= 0 && !all_char(b + parent, 32, '0') && !all_char(b + parent + 33, 16, '0')) {
            st.trace = b + parent;
            if (st.span == NULL)
                st.span = b + parent + 33;
        }
    }
    if (st.severity_len > 0
        && (buf_lit(top, ",\"severity_text\":\"") < 0 || buf_put(top, st.severity, st.severity_len) < 0
            || buf_putc(top, '"') < 0))
        return -1;
    if (st.trace != NULL
        && (buf_lit(top, ",\"trace_id\":\"") < 0 || put_lower_hex(top, st.trace, 32) < 0 || buf_putc(top, '"') < 0))
        return -1;
    if (st.span != NULL
        && (buf_lit(top, ",\"span_id\":\"") < 0 || put_lower_hex(top, st.span, 16) < 0 || buf_putc(top, '"') < 0))
        return -1;
    return 1;
}

/* ---- the Python type --------------------------------------------------------------------------------- */

static void free_names(name_t *names, Py_ssize_t count) {
    if (names == NULL)
        return;
    for (Py_ssize_t i = 0; i < count; i++)
        PyMem_Free((void *)names[i].text);
    PyMem_Free(names);
}

static void correlator_dealloc(CorrelatorObject *self) {
    free_names(self->trace, self->n_trace);
    free_names(self->span, self->n_span);
    free_names(self->attribute, self->n_attribute);
    free_names(self->prefix, self->n_kinds);
    PyMem_Free(self->json_keys);
    buf_free(&self->out_top);
    buf_free(&self->out_attrs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A str as a C string; lone surrogates pass through as bytes >= 0x80, which no ASCII body holds,
 * just as such a name never matches an ASCII body in the regex. */
static int copy_name(PyObject *text, name_t *out) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "correlation field names must be str");
        return -1;
    }
    PyObject *bytes = PyUnicode_AsEncodedString(text, "utf-8", "surrogatepass");
    if (bytes == NULL)
        return -1;
    Py_ssize_t len = PyBytes_GET_SIZE(bytes);
    unsigned char *copy = PyMem_Malloc((size_t)len + 1);
    if (copy == NULL) {
        Py_DECREF(bytes);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(copy, PyBytes_AS_STRING(bytes), (size_t)len + 1);
    Py_DECREF(bytes);
    out->text = copy;
    out->len = len;
    return 0;
}

/* Appends every str of `names` to (*array, *count), with attribute kind `kind`. */
static int copy_names(PyObject *names, name_t **array, Py_ssize_t *count, Py_ssize_t kind) {
    PyObject *seq = PySequence_Fast(names, "field names must be a sequence of str");
    if (seq == NULL)
        return -1;
    Py_ssize_t more = PySequence_Fast_GET_SIZE(seq);
    name_t *grown = PyMem_Realloc(*array, sizeof(name_t) * (size_t)(*count + more + 1));
    if (grown == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    *array = grown;
    for (Py_ssize_t i = 0; i < more; i++) {
        if (copy_name(PySequence_Fast_GET_ITEM(seq, i), &grown[*count]) < 0) {
            Py_DECREF(seq);
            return -1;
        }
        grown[(*count)++].kind = kind;
    }
    Py_DECREF(seq);
    return 0;
}

static int add_prefix(CorrelatorObject *self, PyObject *kind, PyObject *encode) {
    PyObject *quoted = PyObject_CallOneArg(encode, kind);
    if (quoted == NULL)
        return -1;
    PyObject *prefix = PyUnicode_FromFormat("%U:\"", quoted);
    Py_DECREF(quoted);
    if (prefix == NULL)
        return -1;
    PyObject *one = PyTuple_Pack(1, prefix);
    Py_DECREF(prefix);
    if (one == NULL)
        return -1;
    int r = copy_names(one, &self->prefix, &self->n_kinds, 0);
    Py_DECREF(one);
    return r;
}

static int configure(CorrelatorObject *self, PyObject *trace, PyObject *span, PyObject *kinds) {
    if (copy_names(trace, &self->trace, &self->n_trace, 0) < 0 || copy_names(span, &self->span, &self->n_span, 0) < 0)
        return -1;
    PyObject *json_encoder = PyImport_ImportModule("json.encoder");
    if (json_encoder == NULL)
        return -1;
    PyObject *encode = PyObject_GetAttrString(json_encoder, "encode_basestring_ascii");
    Py_DECREF(json_encoder);
    if (encode == NULL)
        return -1;
    PyObject *seq = PySequence_Fast(kinds, "attribute_kinds must be a sequence of (kind, names)");
    int r = seq == NULL ? -1 : 0;
    for (Py_ssize_t i = 0; r == 0 && i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *kind, *names;
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(pair) || !PyArg_ParseTuple(pair, "UO", &kind, &names)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "attribute_kinds items must be (kind, names) tuples");
            r = -1;
        } else if (add_prefix(self, kind, encode) < 0 || copy_names(names, &self->attribute, &self->n_attribute,
                                                                   self->n_kinds - 1) < 0) {
            r = -1;
        }
    }
    Py_XDECREF(seq);
    Py_DECREF(encode);
    if (r < 0)
        return -1;

    /* The JSON key alternatives grouped by first byte (a counting sort keeps the pattern's order),
     * and what can end a text key before its `=`: one table look-up rejects most quotes and equals. */
    const name_t *groups[] = {self->trace, self->span, json_level_fields, self->attribute, text_level_keys};
    Py_ssize_t sizes[] = {self->n_trace, self->n_span, COUNT(json_level_fields), self->n_attribute,
                          COUNT(text_level_keys)};
    const enum json_branch branches[] = {J_TRACE, J_SPAN, J_LEVEL, J_ATTRIBUTE};
    Py_ssize_t n_json = self->n_trace + self->n_span + COUNT(json_level_fields) + self->n_attribute;
    self->json_keys = PyMem_Malloc(sizeof(json_key_t) * (size_t)(n_json + 1));
    if (self->json_keys == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t fill[257] = {0};
    for (int pass = 0; pass < 2; pass++) {
        for (int g = 0; g < 4; g++)
            for (Py_ssize_t x = 0; x < sizes[g]; x++) {
                const name_t *name = &groups[g][x];
                unsigned char first = name->len ? name->text[0] : '"';
                if (pass == 0) {
                    self->json_first[first + 1]++;
                } else {
                    json_key_t *slot = &self->json_keys[fill[first]++];
                    slot->name = name;
                    slot->branch = branches[g];
                }
            }
        if (pass == 0)
            for (int byte = 0; byte < 256; byte++) {
                self->json_first[byte + 1] += self->json_first[byte];
                fill[byte] = self->json_first[byte];
            }
    }
    for (int g = 0; g < 5; g++) {
        if (g == 2)
            continue;             /* JSON-only level fields */
        for (Py_ssize_t x = 0; x < sizes[g]; x++) {
            const name_t *name = &groups[g][x];
            if (name->len)
                self->text_last[name->text[name->len - 1]] = 1;
            else
                self->text_empty_key = 1;
        }
    }
    return 0;
}

static PyObject *correlator_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"trace_names", "span_names", "attribute_kinds", NULL};
    PyObject *trace, *span, *kinds;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO:Correlator", keywords, &trace, &span, &kinds))
        return NULL;
    CorrelatorObject *self = (CorrelatorObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    /* tp_alloc zeroes the object: every array is NULL and every count 0 until configured. */
    if (configure(self, trace, span, kinds) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *ascii_str(const buf_t *b, Py_ssize_t start) {
    return PyUnicode_DecodeASCII(b->len > start ? b->data + start : "", b->len - start, NULL);
}

static PyObject *correlator_extract(CorrelatorObject *self, PyObject *body) {
    if (!PyUnicode_Check(body)) {
        PyErr_SetString(PyExc_TypeError, "body must be str");
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(body))
        Py_RETURN_NONE;
    /* The buffers keep earlier answers (up to a bound), so every call also proves that the C entry
     * appends and reads back only what it wrote for this body. */
    buf_t *top_buf = &self->out_top, *attrs_buf = &self->out_attrs;
    if (top_buf->len > 65536 || attrs_buf->len > 65536)
        top_buf->len = attrs_buf->len = 0;
    Py_ssize_t top_start = top_buf->len, attrs_start = attrs_buf->len;
    int r = correlate_extract((PyObject *)self, (const char *)PyUnicode_DATA(body), PyUnicode_GET_LENGTH(body),
                              top_buf, attrs_buf);
    if (r < 0)
        return NULL;
    if (r == 0)
        Py_RETURN_NONE;
    PyObject *top = ascii_str(top_buf, top_start);
    PyObject *attrs = top == NULL ? NULL : ascii_str(attrs_buf, attrs_start);
    PyObject *pair = attrs == NULL ? NULL : PyTuple_Pack(2, top, attrs);
    Py_XDECREF(top);
    Py_XDECREF(attrs);
    return pair;
}

static PyMethodDef correlator_methods[] = {
    {"extract", (PyCFunction)correlator_extract, METH_O,
     "extract(body) -> (top_level_members, attribute_members), as Correlator.extract; None for a body "
     "left to the Python reference (non-ASCII)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CorrelatorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shipper._native.Correlator",
    .tp_basicsize = sizeof(CorrelatorObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Correlator(trace_names, span_names, attribute_kinds): the native twin of "
              "shipper.enrich.correlation.Correlator; build it with "
              "Correlator(*python_correlator.native_arguments()).",
    .tp_new = correlator_new,
    .tp_dealloc = (destructor)correlator_dealloc,
    .tp_methods = correlator_methods,
};

int correlate_register(PyObject *module) {
    init_char_classes();
    if (PyType_Ready(&CorrelatorType) < 0)
        return -1;
    Py_INCREF(&CorrelatorType);
    if (PyModule_AddObject(module, "Correlator", (PyObject *)&CorrelatorType) < 0) {
        Py_DECREF(&CorrelatorType);
        return -1;
    }
    return 0;
}

int correlate_is(PyObject *object) { return PyObject_TypeCheck(object, &CorrelatorType); }
