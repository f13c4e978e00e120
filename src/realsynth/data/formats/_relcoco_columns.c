/* Columns of a clean relcoco file, read in one pass without a Python object per entry.
 *
 * relcoco_columns(buffer, trust_keys, absent, release) -> dict | None
 *
 * The buffer holds the whole JSON file; with `release` it is a read-only mapping of the file,
 * whose pages are given back to the system as they are read (never pass other memory). The result, for a file this reader vouches for:
 *   {"images": {"id", "width", "height": int64 bytes, "names": ASCII bytes, "name_ends": int64},
 *    "annotations": {"id", "image_id", "category_id": int64 bytes, "bbox": float64 bytes [N*4]},
 *    "relationships": {"subject", "object", "predicate", "image_id": int64 (absent -> `absent`)},
 *    "categories" / "predicates": {"id": int64 bytes, "name": list of str}}
 * None means "not vouched for": the file is not valid JSON, holds a string with a backslash or a
 * byte outside ASCII, a value of an unexpected type, a missing or repeated key, a trust field
 * (`trust_keys`) in an annotation or relationship, an integer outside int64, or lacks a list.
 * The Python reader then decides, and it names what is wrong. Values of keys this reader does
 * not use are checked as JSON and skipped, as the Python fast path skips them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define DOUBT 1    /* not vouched for: the caller returns None */
#define FAILED 2   /* a Python exception is set (memory) */
#define MAX_DEPTH 512
#define RELEASE_BYTES (64 << 20)

typedef struct {
    PyObject *bytes; /* a bytes object filled in place, resized at the end */
    Py_ssize_t len;
} Column;

typedef struct {
    const char *start, *p, *end;
    const char *released; /* pages before this were given back (madvise) */
    PyObject *trust_keys; /* tuple of bytes */
    int release;          /* the buffer maps a file: give read pages back */
} Scanner;

static int column_put(Column *c, const void *src, Py_ssize_t n) {
    if (c->bytes == NULL) {
        c->bytes = PyBytes_FromStringAndSize(NULL, 1 << 16);
        if (c->bytes == NULL) return FAILED;
    }
    Py_ssize_t cap = PyBytes_GET_SIZE(c->bytes);
    if (c->len + n > cap) {
        while (c->len + n > cap) cap *= 2;
        if (_PyBytes_Resize(&c->bytes, cap) < 0) return FAILED;
    }
    memcpy(PyBytes_AS_STRING(c->bytes) + c->len, src, (size_t)n);
    c->len += n;
    return 0;
}

static PyObject *column_finish(Column *c) {
    if (c->bytes == NULL) return PyBytes_FromStringAndSize(NULL, 0);
    if (_PyBytes_Resize(&c->bytes, c->len) < 0) return NULL;
    PyObject *out = c->bytes;
    c->bytes = NULL;
    return out;
}

/* The hot loops read through a local pointer: the compiler keeps it in a register. */
static void skip_space(Scanner *s) {
    const char *p = s->p, *end = s->end;
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    s->p = p;
}

/* Gives the pages of the file read so far back to the system: the resident memory of a
 * gigabyte-sized mapping stays at what is being read. */
static void release_read(Scanner *s) {
    if (!s->release || s->p - s->released < RELEASE_BYTES) return;
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t from = ((uintptr_t)s->released + page - 1) / page * page;
    uintptr_t to = (uintptr_t)s->p / page * page;
    if (to > from && from >= (uintptr_t)s->start) {
        madvise((void *)from, to - from, MADV_DONTNEED);
        s->released = (const char *)to; /* the page holding p is given back next time */
    }
}

/* A string of ASCII text without escapes: [*text, *text + *len). */
static int scan_string(Scanner *s, const char **text, Py_ssize_t *len) {
    if (s->p >= s->end || *s->p != '"') return DOUBT;
    const char *q = ++s->p, *end = s->end;
    while (q < end) {
        unsigned char c = (unsigned char)*q;
        if (c == '"') break;
        if (c == '\\' || c < 0x20 || c >= 0x80) return DOUBT;
        q++;
    }
    if (q >= end) return DOUBT;
    *text = s->p;
    *len = q - s->p;
    s->p = q + 1;
    return 0;
}

static int digits(Scanner *s) {
    const char *from = s->p, *p = s->p, *end = s->end;
    while (p < end && *p >= '0' && *p <= '9') p++;
    s->p = p;
    return p > from ? 0 : DOUBT;
}

/* A JSON number; *is_int when it has no fraction and no exponent (its digits are read once,
 * as they are scanned). Integers outside int64 and other tokens over 63 characters are
 * doubted. */
static int scan_number(Scanner *s, int *is_int, int64_t *ival, double *dval) {
    const char *from = s->p;
    int negative = s->p < s->end && *s->p == '-';
    s->p += negative;
    if (s->p >= s->end) return DOUBT;
    uint64_t value = 0, limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    int overflow = 0;
    if (*s->p == '0') {
        s->p++;
    } else if (*s->p >= '1' && *s->p <= '9') {
        const char *p = s->p, *end = s->end;
        while (p < end && *p >= '0' && *p <= '9') {
            uint64_t digit = (uint64_t)(*p++ - '0');
            if (value > (limit - digit) / 10) overflow = 1;
            else value = value * 10 + digit;
        }
        s->p = p;
    } else {
        return DOUBT;
    }
    *is_int = 1;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (digits(s)) return DOUBT;
        *is_int = 0;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-')) s->p++;
        if (digits(s)) return DOUBT;
        *is_int = 0;
    }
    if (*is_int) {
        if (overflow) return DOUBT;
        *ival = negative ? (int64_t)(0 - value) : (int64_t)value;
        *dval = (double)*ival;
        return 0;
    }
    Py_ssize_t n = s->p - from;
    if (n > 63) return DOUBT;
    char token[64];
    memcpy(token, from, (size_t)n);
    token[n] = '\0';
    /* Python's own conversion: correctly rounded, whatever the C locale's decimal point. */
    *dval = PyOS_string_to_double(token, NULL, NULL);
    if (*dval == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return DOUBT;
    }
    return 0;
}

static int skip_value(Scanner *s, int depth);

#define CLOSED 3 /* next_item: the closing bracket was read */

/* Steps to the next item of an object or array whose opening bracket was read: past the ','
 * (but before the first). Returns 0 at the item, CLOSED past `close`, or DOUBT. */
static int next_item(Scanner *s, int *first, char close) {
    skip_space(s);
    if (s->p >= s->end) return DOUBT;
    if (*s->p == close) {
        s->p++;
        return CLOSED;
    }
    if (!*first) {
        if (*s->p != ',') return DOUBT;
        s->p++;
        skip_space(s);
    }
    *first = 0;
    return 0;
}

/* The next member of an object: its key and the ':' after it (see next_item). */
static int next_member(Scanner *s, int *first, const char **key, Py_ssize_t *len) {
    int rc = next_item(s, first, '}');
    if (rc) return rc;
    if (scan_string(s, key, len)) return DOUBT;
    skip_space(s);
    if (s->p >= s->end || *s->p != ':') return DOUBT;
    s->p++;
    skip_space(s);
    return 0;
}

static int skip_object(Scanner *s, int depth) {
    s->p++;
    int first = 1, rc;
    const char *key;
    Py_ssize_t len;
    while ((rc = next_member(s, &first, &key, &len)) == 0)
        if ((rc = skip_value(s, depth + 1))) return rc;
    return rc == CLOSED ? 0 : rc;
}

static int skip_array(Scanner *s, int depth) {
    s->p++;
    int first = 1, rc;
    while ((rc = next_item(s, &first, ']')) == 0)
        if ((rc = skip_value(s, depth + 1))) return rc;
    return rc == CLOSED ? 0 : rc;
}

static int literal(Scanner *s, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0) return DOUBT;
    s->p += n;
    return 0;
}

/* Any JSON value, checked and passed over. */
static int skip_value(Scanner *s, int depth) {
    if (depth > MAX_DEPTH || s->p >= s->end) return DOUBT;
    switch (*s->p) {
    case '{': return skip_object(s, depth);
    case '[': return skip_array(s, depth);
    case '"': {
        const char *text;
        Py_ssize_t len;
        return scan_string(s, &text, &len);
    }
    case 't': return literal(s, "true");
    case 'f': return literal(s, "false");
    case 'n': return literal(s, "null");
    default: {
        int is_int;
        int64_t i;
        double d;
        return scan_number(s, &is_int, &i, &d);
    }
    }
}

enum Kind { K_INT, K_BBOX, K_NAME_BUFFER, K_NAME_LIST };

typedef struct {
    const char *key; /* as in the file; the column is named by `column` */
    const char *column;
    enum Kind kind;
    int required;
    size_t key_len; /* set when a scan starts */
} Field;

#define MAX_FIELDS 4

typedef struct {
    const char *name;
    Field fields[MAX_FIELDS];
    int count;
    int check_trust;
    Column columns[MAX_FIELDS];
    Column name_ends;   /* K_NAME_BUFFER: where each name ends in its column */
    PyObject *names;    /* K_NAME_LIST */
    Py_ssize_t rows;
    int seen;
} List;

/* One value of one row, before the row is known whole. */
typedef struct {
    int64_t ival;
    double box[4];
    const char *text;
    Py_ssize_t len;
} Value;

static int scan_int(Scanner *s, int64_t *out) {
    int is_int;
    double unused;
    if (s->p < s->end && (*s->p == 't' || *s->p == 'f' || *s->p == 'n')) return DOUBT;
    if (scan_number(s, &is_int, out, &unused) || !is_int) return DOUBT;
    return 0;
}

static int scan_box(Scanner *s, double box[4]) {
    if (s->p >= s->end || *s->p != '[') return DOUBT;
    s->p++;
    for (int k = 0; k < 4; k++) {
        int is_int;
        int64_t unused;
        skip_space(s);
        if (scan_number(s, &is_int, &unused, &box[k])) return DOUBT;
        skip_space(s);
        if (s->p >= s->end || *s->p != (k == 3 ? ']' : ',')) return DOUBT;
        s->p++;
    }
    return 0;
}

static int is_trust_key(Scanner *s, const char *key, Py_ssize_t len) {
    Py_ssize_t n = PyTuple_GET_SIZE(s->trust_keys);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyTuple_GET_ITEM(s->trust_keys, i);
        if (PyBytes_GET_SIZE(k) == len && memcmp(PyBytes_AS_STRING(k), key, (size_t)len) == 0)
            return 1;
    }
    return 0;
}

static int scan_field(Scanner *s, const Field *f, Value *v) {
    if (f->kind == K_INT) return scan_int(s, &v->ival);
    if (f->kind == K_BBOX) return scan_box(s, v->box);
    return scan_string(s, &v->text, &v->len);
}

static int append_row(List *list, const Value *values, const int *seen, int64_t absent) {
    for (int k = 0; k < list->count; k++) {
        const Field *f = &list->fields[k];
        const Value *v = &values[k];
        int64_t number = seen[k] ? v->ival : absent;
        if (f->kind == K_INT) {
            if (column_put(&list->columns[k], &number, sizeof number)) return FAILED;
        } else if (f->kind == K_BBOX) {
            if (column_put(&list->columns[k], v->box, sizeof v->box)) return FAILED;
        } else if (f->kind == K_NAME_BUFFER) {
            if (column_put(&list->columns[k], v->text, v->len)) return FAILED;
            int64_t end = list->columns[k].len;
            if (column_put(&list->name_ends, &end, sizeof end)) return FAILED;
        } else {
            PyObject *name = PyUnicode_DecodeASCII(v->text, v->len, NULL);
            if (name == NULL || PyList_Append(list->names, name) < 0) {
                Py_XDECREF(name);
                return FAILED;
            }
            Py_DECREF(name);
        }
    }
    list->rows++;
    return 0;
}

/* The position of `key` among the list's fields (trying `from` first), or list->count. */
static int find_field(const List *list, const char *key, Py_ssize_t len, int from) {
    for (int i = 0; i < list->count; i++) {
        int k = (from + i) % list->count;
        const Field *f = &list->fields[k];
        if (f->key_len == (size_t)len && memcmp(f->key, key, (size_t)len) == 0) return k;
    }
    return list->count;
}

/* One element of a list: an object with the list's fields (others checked and skipped). */
static int scan_row(Scanner *s, List *list, int64_t absent) {
    Value values[MAX_FIELDS];
    int seen[MAX_FIELDS] = {0};
    int next = 0; /* the field expected next: files list an entry's keys in one order */
    if (s->p >= s->end || *s->p != '{') return DOUBT;
    s->p++;
    int first = 1, rc;
    const char *key;
    Py_ssize_t len;
    while ((rc = next_member(s, &first, &key, &len)) == 0) {
        int k = find_field(list, key, len, next);
        next = k + 1 < list->count ? k + 1 : 0;
        if (k < list->count) {
            if (seen[k]) return DOUBT; /* a repeated key: the last would win in Python */
            seen[k] = 1;
            rc = scan_field(s, &list->fields[k], &values[k]);
        } else if (list->check_trust && is_trust_key(s, key, len)) {
            return DOUBT; /* per-instance trust: the full reader */
        } else {
            rc = skip_value(s, 2);
        }
        if (rc) return rc;
    }
    if (rc != CLOSED) return rc;
    for (int k = 0; k < list->count; k++)
        if (list->fields[k].required && !seen[k]) return DOUBT;
    return append_row(list, values, seen, absent);
}

static int scan_list(Scanner *s, List *list, int64_t absent) {
    if (list->seen || s->p >= s->end || *s->p != '[') return DOUBT;
    list->seen = 1;
    s->p++;
    int first = 1, rc;
    while ((rc = next_item(s, &first, ']')) == 0) {
        if ((rc = scan_row(s, list, absent))) return rc;
        release_read(s);
    }
    return rc == CLOSED ? 0 : rc;
}

static const List TEMPLATES[] = {
    {.name = "images",
     .fields = {{"id", "id", K_INT, 1},
                {"file_name", "names", K_NAME_BUFFER, 1},
                {"width", "width", K_INT, 1},
                {"height", "height", K_INT, 1}},
     .count = 4},
    {.name = "annotations",
     .fields = {{"id", "id", K_INT, 1},
                {"image_id", "image_id", K_INT, 1},
                {"category_id", "category_id", K_INT, 1},
                {"bbox", "bbox", K_BBOX, 1}},
     .count = 4,
     .check_trust = 1},
    {.name = "relationships",
     .fields = {{"subject_id", "subject", K_INT, 1},
                {"object_id", "object", K_INT, 1},
                {"predicate_id", "predicate", K_INT, 1},
                {"image_id", "image_id", K_INT, 0}},
     .count = 4,
     .check_trust = 1},
    {.name = "categories",
     .fields = {{"id", "id", K_INT, 1}, {"name", "name", K_NAME_LIST, 1}},
     .count = 2},
    {.name = "predicates",
     .fields = {{"id", "id", K_INT, 1}, {"name", "name", K_NAME_LIST, 1}},
     .count = 2},
};
#define NUM_LISTS ((int)(sizeof TEMPLATES / sizeof TEMPLATES[0]))

static int scan_file(Scanner *s, List *lists, int64_t absent) {
    skip_space(s);
    if (s->p >= s->end || *s->p != '{') return DOUBT;
    s->p++;
    int first = 1, rc;
    const char *key;
    Py_ssize_t len;
    while ((rc = next_member(s, &first, &key, &len)) == 0) {
        int k = 0;
        while (k < NUM_LISTS && !(strlen(lists[k].name) == (size_t)len &&
                                  memcmp(lists[k].name, key, (size_t)len) == 0))
            k++;
        if ((rc = k < NUM_LISTS ? scan_list(s, &lists[k], absent) : skip_value(s, 1))) return rc;
    }
    if (rc != CLOSED) return rc;
    skip_space(s);
    if (s->p != s->end) return DOUBT; /* only whitespace may follow the object */
    for (int k = 0; k < NUM_LISTS; k++)
        if (!lists[k].seen) return DOUBT;
    return lists[0].rows > 0 ? 0 : DOUBT;
}

static PyObject *list_result(List *list) {
    PyObject *out = PyDict_New();
    if (out == NULL) return NULL;
    for (int k = 0; k < list->count; k++) {
        const Field *f = &list->fields[k];
        PyObject *value = f->kind == K_NAME_LIST ? Py_NewRef(list->names)
                                                 : column_finish(&list->columns[k]);
        if (value == NULL || PyDict_SetItemString(out, f->column, value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(value);
        if (f->kind == K_NAME_BUFFER) {
            PyObject *ends = column_finish(&list->name_ends);
            if (ends == NULL || PyDict_SetItemString(out, "name_ends", ends) < 0) {
                Py_XDECREF(ends);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(ends);
        }
    }
    return out;
}

static PyObject *results(List *lists) {
    PyObject *out = PyDict_New();
    for (int k = 0; out != NULL && k < NUM_LISTS; k++) {
        PyObject *one = list_result(&lists[k]);
        if (one == NULL || PyDict_SetItemString(out, lists[k].name, one) < 0) Py_CLEAR(out);
        Py_XDECREF(one);
    }
    return out;
}

static PyObject *relcoco_columns(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer view;
    PyObject *trust_keys;
    long long absent;
    int release;
    if (!PyArg_ParseTuple(args, "y*O!Lp", &view, &PyTuple_Type, &trust_keys, &absent, &release))
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(trust_keys); i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(trust_keys, i))) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_TypeError, "relcoco_columns: trust_keys must be bytes");
            return NULL;
        }
    }
    List lists[NUM_LISTS];
    memcpy(lists, TEMPLATES, sizeof lists);
    int rc = 0;
    for (int k = 0; k < NUM_LISTS; k++)
        for (int f = 0; f < lists[k].count; f++)
            lists[k].fields[f].key_len = strlen(lists[k].fields[f].key);
    for (int k = 0; k < NUM_LISTS && !rc; k++)
        if ((lists[k].names = PyList_New(0)) == NULL) rc = FAILED;
    Scanner s = {.start = view.buf,
                 .p = view.buf,
                 .end = (const char *)view.buf + view.len,
                 .released = view.buf,
                 .trust_keys = trust_keys,
                 .release = release};
    if (!rc) rc = scan_file(&s, lists, (int64_t)absent);
    PyObject *out = rc ? NULL : results(lists);
    for (int k = 0; k < NUM_LISTS; k++) {
        Py_XDECREF(lists[k].names);
        for (int f = 0; f < MAX_FIELDS; f++) Py_XDECREF(lists[k].columns[f].bytes);
        Py_XDECREF(lists[k].name_ends.bytes);
    }
    PyBuffer_Release(&view);
    if (rc == DOUBT) Py_RETURN_NONE;
    return out;
}

static PyMethodDef METHODS[] = {
    {"relcoco_columns", relcoco_columns, METH_VARARGS,
     "relcoco_columns(buffer, trust_keys, absent, release) -> dict | None: a clean relcoco file's "
     "columns, or None when this reader does not vouch for the file."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, .m_name = "_relcoco_columns", .m_size = -1, .m_methods = METHODS};

PyMODINIT_FUNC PyInit__relcoco_columns(void) { return PyModule_Create(&MODULE); }
