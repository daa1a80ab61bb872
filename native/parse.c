/* The CRI parser's common case in C: well-formed `<time> <stream> F <message>` lines become entries,
 * exactly as StreamParser._add_cri_lines_fast does it in Python (the reference). The first line that
 * is anything else (a partial, a malformed header, an over-long message) stops the loop and goes to
 * the Python parser, which owns every state (open partial groups, cut lines). */
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

static PyObject *STDOUT, *STDERR, *ZERO;

/* cri_lines(data, pos, end, line_offset, max_entry, offsets, times, streams, bodies, flags)
 *   -> (pos, line_offset, lines)
 * Parses the complete lines of data[pos:end] (end is just past a newline) while they are plain F
 * lines, appending an entry for each; returns where it stopped (== end when all were taken) and the
 * file offset of that line, and how many lines it took. */
static PyObject *cri_lines(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos, end, max_entry;
    long long line_offset;
    PyObject *lists[5];
    if (!PyArg_ParseTuple(args, "y*nnLnO!O!O!O!O!", &view, &pos, &end, &line_offset, &max_entry, &PyList_Type,
                          &lists[0], &PyList_Type, &lists[1], &PyList_Type, &lists[2], &PyList_Type, &lists[3],
                          &PyList_Type, &lists[4]))
        return NULL;
    const char *data = view.buf;
    if (pos < 0 || end > view.len || pos > end) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_IndexError, "positions outside the data");
        return NULL;
    }
    Py_ssize_t lines = 0;
    while (pos < end) {
        const char *line = data + pos;
        const char *nl = memchr(line, '\n', (size_t)(end - pos));
        if (nl == NULL)
            break;
        Py_ssize_t len = nl - line;
        const char *sp1 = memchr(line, ' ', (size_t)len);
        if (sp1 == NULL)
            break;
        const char *sp2 = memchr(sp1 + 1, ' ', (size_t)(nl - sp1 - 1));
        if (sp2 == NULL || sp2 + 2 >= nl || sp2[1] != 'F' || sp2[2] != ' ')
            break;                                  /* not `<a> <b> F <message>` */
        PyObject *stream;
        Py_ssize_t stream_n = sp2 - sp1 - 1;
        if (stream_n == 6 && memcmp(sp1 + 1, "stdout", 6) == 0)
            stream = STDOUT;
        else if (stream_n == 6 && memcmp(sp1 + 1, "stderr", 6) == 0)
            stream = STDERR;
        else
            break;
        const char *message = sp2 + 3;
        Py_ssize_t message_n = nl - message;
        if (message_n > max_entry || !is_timestamp(line, sp1 - line))
            break;
        PyObject *offset = PyLong_FromLongLong(line_offset);
        PyObject *time = PyBytes_FromStringAndSize(line, sp1 - line);
        PyObject *body = PyBytes_FromStringAndSize(message, message_n);
        int failed = offset == NULL || time == NULL || body == NULL || PyList_Append(lists[0], offset) < 0
                     || PyList_Append(lists[1], time) < 0 || PyList_Append(lists[2], stream) < 0
                     || PyList_Append(lists[3], body) < 0 || PyList_Append(lists[4], ZERO) < 0;
        Py_XDECREF(offset);
        Py_XDECREF(time);
        Py_XDECREF(body);
        if (failed) {
            PyBuffer_Release(&view);
            return NULL;
        }
        line_offset += len + 1;
        pos += len + 1;
        lines++;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(nLn)", pos, line_offset, lines);
}

static PyMethodDef PARSE_METHODS[] = {
    {"cri_lines", cri_lines, METH_VARARGS, "Plain CRI F lines to entries (see parse.py)."},
    {NULL, NULL, 0, NULL},
};

int parse_register(PyObject *module) {
    STDOUT = PyBytes_FromString("stdout");
    STDERR = PyBytes_FromString("stderr");
    ZERO = PyLong_FromLong(0);
    if (STDOUT == NULL || STDERR == NULL || ZERO == NULL)
        return -1;
    return PyModule_AddFunctions(module, PARSE_METHODS);
}
