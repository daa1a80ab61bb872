/* The CRI parser's common case in C: well-formed `<time> <stream> F <message>` lines become entries,
 * exactly as StreamParser._add_cri_lines_fast does it in Python (the reference), left as rows into the
 * bytes read (parse.h). The first line that is anything else (a partial, a malformed header, an
 * over-long message) stops the loop and goes to the Python parser, which owns every state (open partial
 * groups, cut lines). */
#include "parse.h"

static int digits(const char *s, int n) {
    for (int i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* parse.looks_like_timestamp: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d), whole. */
static int is_timestamp(const char *s, Py_ssize_t n) {
    if (n < 20 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' || !digits(s + 8, 2)
        || s[10] != 'T' || !digits(s + 11, 2) || s[13] != ':' || !digits(s + 14, 2) || s[16] != ':'
        || !digits(s + 17, 2))
        return 0;
    Py_ssize_t i = 19;
    if (s[i] == '.') {
        Py_ssize_t start = ++i;
        while (i < n && i - start < 9 && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == start)
            return 0;
    }
    if (i < n && s[i] == 'Z')
        return i + 1 == n;
    if (i < n && (s[i] == '+' || s[i] == '-'))
        return i + 6 == n && digits(s + i + 1, 2) && s[i + 3] == ':' && digits(s + i + 4, 2);
    return 0;
}

/* One plain `<time> <stream> F <message>` line at data[pos:end] (end just past a newline): its parts as
 * offsets into data, and its length without the newline; 0 when the line is anything else. */
typedef struct {
    Py_ssize_t len, time_n, body_pos, body_n;
    int stderr_stream;
} plain_line_t;

static int plain_line(const char *data, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t max_entry, plain_line_t *out) {
    const char *line = data + pos;
    const char *nl = memchr(line, '\n', (size_t)(end - pos));
    if (nl == NULL)
        return 0;
    Py_ssize_t len = nl - line;
    const char *sp1 = memchr(line, ' ', (size_t)len);
    if (sp1 == NULL)
        return 0;
    const char *sp2 = memchr(sp1 + 1, ' ', (size_t)(nl - sp1 - 1));
    if (sp2 == NULL || sp2 + 2 >= nl || sp2[1] != 'F' || sp2[2] != ' ')
        return 0;                                   /* not `<a> <b> F <message>` */
    Py_ssize_t stream_n = sp2 - sp1 - 1;
    if (stream_n == 6 && memcmp(sp1 + 1, "stdout", 6) == 0)
        out->stderr_stream = 0;
    else if (stream_n == 6 && memcmp(sp1 + 1, "stderr", 6) == 0)
        out->stderr_stream = 1;
    else
        return 0;
    const char *message = sp2 + 3;
    Py_ssize_t message_n = nl - message;
    if (message_n > max_entry || !is_timestamp(line, sp1 - line))
        return 0;
    out->len = len;
    out->time_n = sp1 - line;
    out->body_pos = message - data;
    out->body_n = message_n;
    return 1;
}

/* cri_rows(data, pos, end, line_offset, max_entry, rows, ordinal) -> (pos, line_offset, lines)
 * Parses the complete lines of data[pos:end] (end is just past a newline) while they are plain F lines,
 * without a Python object per line: each appends one raw_row_t (parse.h) to the bytearray `rows`: its
 * ordinal in the entries (`ordinal`, `ordinal` + 1, ...), file offset, time and body as position and
 * length in `data`, and the stream. Returns where it stopped (== end when all were taken), the file
 * offset of that line, and how many lines it took. The seal loop reads the rows and `data` directly. */
static PyObject *cri_rows(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos, end, max_entry;
    long long line_offset, ordinal;
    PyObject *rows;
    if (!PyArg_ParseTuple(args, "y*nnLnO!L", &view, &pos, &end, &line_offset, &max_entry, &PyByteArray_Type,
                          &rows, &ordinal))
        return NULL;
    if (pos < 0 || end > view.len || pos > end) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_IndexError, "positions outside the data");
        return NULL;
    }
    const char *data = view.buf;
    Py_ssize_t lines = 0, used = PyByteArray_GET_SIZE(rows), cap = used;
    plain_line_t p;
    while (pos < end && plain_line(data, pos, end, max_entry, &p)) {
        if (used + (Py_ssize_t)sizeof(raw_row_t) > cap) {
            /* Room for the rest of the data at one row per 64 bytes, at least: few resizes. */
            cap = used + (Py_ssize_t)sizeof(raw_row_t) * ((end - pos) / 64 + 16);
            if (PyByteArray_Resize(rows, cap) < 0) {
                PyBuffer_Release(&view);
                return NULL;            /* the bytearray is as it was */
            }
        }
        raw_row_t *row = (raw_row_t *)(PyByteArray_AS_STRING(rows) + used);
        row->ordinal = ordinal++;
        row->offset = line_offset;
        row->time_pos = pos;
        row->time_n = p.time_n;
        row->stream = p.stderr_stream;
        row->body_pos = p.body_pos;
        row->body_n = p.body_n;
        used += (Py_ssize_t)sizeof(raw_row_t);
        line_offset += p.len + 1;
        pos += p.len + 1;
        lines++;
    }
    PyBuffer_Release(&view);
    if (PyByteArray_Resize(rows, used) < 0)
        return NULL;
    return Py_BuildValue("(nLn)", pos, line_offset, lines);
}

static PyMethodDef PARSE_METHODS[] = {
    {"cri_rows", cri_rows, METH_VARARGS, "Plain CRI F lines to raw rows into the data (see parse.py)."},
    {NULL, NULL, 0, NULL},
};

int parse_register(PyObject *module) { return PyModule_AddFunctions(module, PARSE_METHODS); }
