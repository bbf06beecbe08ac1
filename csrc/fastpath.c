/*
 * fastpath.c -- apccache._fastpath: the cache's operations without a Python
 * frame.
 *
 * The engine is bound with cffi, and through cffi every call costs a Python
 * method frame, a key encode, a thread-local lookup, an argument tuple, two
 * GIL switches and a slice to build the result: several times what the
 * engine itself spends.  This module is the hot path of every single-key
 * operation (fetch, store, add, exists, delete, inc, dec, cas, touch) as plain
 * CPython methods: it takes the key as given (a str's cached UTF-8 is used
 * in place), encodes and decodes the native value types itself, calls the
 * handle's serializer for the others, calls the engine, and builds the
 * value straight from the entry (one copy): a pinned one, or a hot one read
 * without a pin (APC_PEEK), whose value is dropped and read again if the
 * release says the entry changed under the copy.
 *
 * WHAT IT DOES NOT DO
 *
 * It links none of the engine.  The binding layer (apccache._bindings,
 * SegmentHandle.fast) hands it the addresses of the cffi module's
 * functions, so there is one engine per process (release or debug, with
 * its fault points) whichever way a call comes.  Arguments it does not
 * take as they are -- other key types, keyword arguments it does not know,
 * a ttl or int that is not an exact int in range -- go to the Python
 * method it was given, which checks them and says what is wrong.  An
 * engine error goes to the binding's one function that turns a return
 * code into an exception (Table.raise_rc, over _bindings.ERRORS).  No user
 * code runs while an entry is held: a serialised value is copied out and
 * released before the serializer sees it.
 *
 * A handle may have a clock (a callable returning seconds, for tests): it
 * is called once per operation and its time handed to the engine, so tests
 * on a fake clock run this path too.
 *
 * fetch and exists keep the GIL (they never wait for a lock), except where
 * fetch finds a writer in the key's bucket: it then lets the GIL go for
 * its (bounded) wait; and it releases it to copy a value larger than
 * 16 KiB.  Between apc_fetch_ref and apc_ref_release the call
 * is in flight, so a close() in another thread waits for the copy to
 * finish.  The writes release the GIL for the engine call, which may wait
 * for a lock.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <stdio.h>
#include <time.h>
#include "apc.h"

/* The value tags, as apc.h defines them. */
enum {
    T_BYTES = APC_T_BYTES,
    T_STR = APC_T_STR,
    T_INT = APC_T_INT,
    T_FLOAT = APC_T_FLOAT,
    T_TRUE = APC_T_TRUE,
    T_FALSE = APC_T_FALSE,
    T_NONE = APC_T_NONE,
    T_SER = APC_T_SER
};

#define BIG_COPY 16384
#define FASTPATH_MAX_TTL 0x7fffffffLL /* apccache.MAX_TTL, 2**31 - 1 */

typedef int64_t (*fetch_ref_fn)(apc_seg *, int, const char *, uint32_t, uint64_t, apc_ref *);
typedef int64_t (*release_fn)(apc_seg *, apc_ref *);
typedef void (*corrupt_fn)(apc_seg *, int);
typedef int (*store_fn)(apc_seg *, int, const char *, uint32_t, int, const char *, uint64_t,
                        int64_t, uint64_t, uint64_t, int);
typedef int (*key_fn)(apc_seg *, int, const char *, uint32_t, uint64_t);
typedef int (*inc_fn)(apc_seg *, int, const char *, uint32_t, int64_t, uint64_t, uint64_t,
                      int64_t *);
typedef int (*cas_fn)(apc_seg *, int, const char *, uint32_t, int64_t, int64_t, uint64_t);
typedef int (*touch_fn)(apc_seg *, int, const char *, uint32_t, uint64_t, uint64_t);

/* The operations, for the table of Python fallbacks. */
enum { OP_FETCH, OP_STORE, OP_ADD, OP_EXISTS, OP_DELETE, OP_INC, OP_DEC, OP_CAS, OP_TOUCH, NOPS };
static PyObject *str_dumps, *str_loads;
static const char *const op_names[NOPS] = {"fetch", "store",  "add", "exists", "delete",
                                           "inc",   "dec",    "cas", "touch"};

typedef struct {
    PyObject_HEAD
    apc_seg *seg;
    fetch_ref_fn fetch_ref;
    release_fn release;
    store_fn store;
    corrupt_fn count_corrupt;
    key_fn exists;
    key_fn delete_;
    inc_fn inc;
    cas_fn cas;
    touch_fn touch;
    PyObject *slow[NOPS]; /* the Python methods, for arguments taken apart there */
    PyObject *raise_rc;   /* raise_rc(op, rc, key, nbytes, step): raises */
    PyObject *ser;        /* the serializer: its dumps and loads, looked up per call
                             (a serializer may rebind them, as pickle's does) */
    PyObject *clock;      /* None, or a callable returning seconds */
} Handle;

/* The key's bytes, without copying; 0 if the Python method must take it. */
static int key_view(PyObject *key, const char **k, Py_ssize_t *n)
{
    if (PyUnicode_CheckExact(key)) {
        *k = PyUnicode_AsUTF8AndSize(key, n);
        if (!*k) {
            PyErr_Clear(); /* lone surrogates: the slow path says what is wrong */
            return 0;
        }
    } else if (PyBytes_CheckExact(key)) {
        *k = PyBytes_AS_STRING(key);
        *n = PyBytes_GET_SIZE(key);
    } else {
        return 0;
    }
    return *n <= APC_MAX_KEY;
}

/* The arguments of a call, by position and by the keywords in names;
 * 0 (take the Python method) for anything else. */
static int parse(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, int nreq,
                 const char *const *names, int nnames, PyObject **out)
{
    if (nargs < nreq || nargs > nnames)
        return 0;
    for (int i = 0; i < nnames; i++)
        out[i] = i < nargs ? args[i] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t j = 0; j < nkw; j++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, j);
        int found = 0;
        for (int i = (int)nargs; i < nnames && !found; i++) {
            if (!out[i] && PyUnicode_Check(kw) && PyUnicode_CompareWithASCIIString(kw, names[i]) == 0) {
                out[i] = args[nargs + j];
                found = 1;
            }
        }
        if (!found)
            return 0;
    }
    for (int i = 0; i < nreq; i++)
        if (!out[i])
            return 0;
    return 1;
}

static PyObject *slow(Handle *self, int op, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames)
{
    return PyObject_Vectorcall(self->slow[op], args, (size_t)nargs, kwnames);
}

/* An exact int in [lo, hi] into *v; 0 if it is anything else. */
static int exact_int(PyObject *o, long long lo, long long hi, long long *v)
{
    if (!o)
        return 1; /* left at its default */
    if (!PyLong_CheckExact(o))
        return 0;
    int overflow;
    *v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (*v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return *v >= lo && *v <= hi;
}

/* The handle's time for the engine: 0 (the engine's own clock), or the
 * clock's whole seconds.  -1 with an exception set if the clock failed. */
static int now_of(Handle *self, uint64_t *now)
{
    *now = 0;
    if (self->clock == Py_None)
        return 0;
    PyObject *t = PyObject_CallNoArgs(self->clock);
    if (!t)
        return -1;
    double d = PyFloat_AsDouble(t);
    Py_DECREF(t);
    if (d == -1.0 && PyErr_Occurred())
        return -1;
    *now = d < 1 ? 1 : (uint64_t)d;
    return 0;
}

static PyObject *raise_rc(Handle *self, int op, int64_t rc, PyObject *key, Py_ssize_t n,
                          long long step)
{
    PyObject *r = PyObject_CallFunction(self->raise_rc, "sLOnL", op_names[op], (long long)rc, key,
                                        n, step);
    Py_XDECREF(r);
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_SystemError, "raise_rc returned");
    return NULL;
}

/* ------------------------------------------------------------ values */

typedef struct {
    int tag;
    const char *ptr;
    Py_ssize_t len;
    int64_t ival;
    char f8[8];
    PyObject *owned; /* a serialised value's bytes */
} encoded;

/* A value as the engine stores it.  1 on success, 0 if the Python method
 * must take it, -1 with an exception (the serializer's). */
static int encode(Handle *self, PyObject *v, encoded *e)
{
    e->owned = NULL;
    e->ptr = NULL;
    e->len = 0;
    e->ival = 0;
    if (PyBytes_CheckExact(v)) {
        e->tag = T_BYTES;
        e->ptr = PyBytes_AS_STRING(v);
        e->len = PyBytes_GET_SIZE(v);
    } else if (PyUnicode_CheckExact(v)) {
        e->tag = T_STR;
        e->ptr = PyUnicode_AsUTF8AndSize(v, &e->len);
        if (!e->ptr) {
            PyErr_Clear(); /* lone surrogates: stored with surrogatepass there */
            return 0;
        }
    } else if (v == Py_True || v == Py_False || v == Py_None) {
        e->tag = v == Py_True ? T_TRUE : v == Py_False ? T_FALSE : T_NONE;
    } else if (PyLong_CheckExact(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow) {
            PyErr_Clear();
            goto serialise; /* beyond int64: pickled, as the binding does */
        }
        e->tag = T_INT;
        e->ival = x;
    } else if (PyFloat_CheckExact(v)) {
        e->tag = T_FLOAT;
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(v), e->f8, 1) < 0)
            return -1;
        e->ptr = e->f8;
        e->len = 8;
    } else {
    serialise:
        e->owned = PyObject_CallMethodOneArg(self->ser, str_dumps, v);
        if (!e->owned)
            return -1;
        if (!PyBytes_CheckExact(e->owned)) {
            Py_CLEAR(e->owned);
            return 0;
        }
        e->tag = T_SER;
        e->ptr = PyBytes_AS_STRING(e->owned);
        e->len = PyBytes_GET_SIZE(e->owned);
    }
    return 1;
}

/* ------------------------------------------------------------ fetch */

/* A small value comes back unpinned (APC_PEEK): it is decoded from where
 * it lies, and the decoded object kept only if the release says the entry
 * did not change meanwhile.  After PEEK_TRIES changes, the read pins. */
#define PEEK_TRIES 3

static PyObject *h_fetch(Handle *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    const char *k;
    Py_ssize_t kl;
    uint64_t now;
    if (kwnames || nargs < 1 || nargs > 2 || !key_view(args[0], &k, &kl))
        return slow(self, OP_FETCH, args, nargs, kwnames);
    if (now_of(self, &now) < 0)
        return NULL;
    PyObject *dflt = nargs > 1 ? args[1] : Py_None;
    /* Read once: close() in another thread may clear it meanwhile, and
     * release must go to the handle the fetch went to. */
    apc_seg *seg = self->seg;
    for (int tries = 0;; tries++) {
        int peek = tries < PEEK_TRIES ? APC_PEEK : 0;
        apc_ref ref;
        int64_t r = self->fetch_ref(seg, APC_TABLE_USER | APC_NOWAIT | peek, k, (uint32_t)kl, now, &ref);
        if (r == APC_WAITED) {
            /* A writer holds the key's bucket: wait for it (a bounded
             * wait) without the GIL, so that other threads run meanwhile. */
            Py_BEGIN_ALLOW_THREADS
            r = self->fetch_ref(seg, APC_TABLE_USER | peek, k, (uint32_t)kl, now, &ref);
            Py_END_ALLOW_THREADS
        }
        if (r < 0) {
            if (r == APC_NOTFOUND)
                return Py_NewRef(dflt);
            return raise_rc(self, OP_FETCH, r, args[0], 0, 0);
        }
        int tag = (int)(r & 0x7F), bad = 0;
        Py_ssize_t n = (Py_ssize_t)((uint64_t)r >> 8);
        PyObject *out = NULL;
        switch (tag) {
        case T_BYTES:
        case T_SER:
            if (n > BIG_COPY) {
                out = PyBytes_FromStringAndSize(NULL, n);
                if (out) {
                    char *dst = PyBytes_AS_STRING(out);
                    Py_BEGIN_ALLOW_THREADS
                    memcpy(dst, ref.ptr, (size_t)n);
                    Py_END_ALLOW_THREADS
                }
            } else {
                out = PyBytes_FromStringAndSize(ref.ptr, n);
            }
            break;
        case T_STR:
            out = PyUnicode_DecodeUTF8(ref.ptr, n, "surrogatepass");
            if (!out && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                bad = 1;
            break;
        case T_INT:
            out = PyLong_FromLongLong(ref.ival);
            break;
        case T_FLOAT:
            if (n != 8)
                bad = 1;
            else
                out = PyFloat_FromDouble(PyFloat_Unpack8(ref.ptr, 1));
            break;
        case T_TRUE:
            out = Py_NewRef(Py_True);
            break;
        case T_FALSE:
            out = Py_NewRef(Py_False);
            break;
        case T_NONE:
            out = Py_NewRef(Py_None);
            break;
        default:
            bad = 1;
        }
        if (self->release(seg, &ref) == APC_AGAIN) {
            /* What was decoded may be half of one value and half of the
             * next: throw it away, and any error it raised. */
            Py_XDECREF(out);
            if (!out)
                PyErr_Clear();
            continue;
        }
        if (bad) {
            /* Bytes that are not what their tag says: a miss, counted as
             * corruption. */
            PyErr_Clear();
            self->count_corrupt(seg, APC_TABLE_USER);
            return Py_NewRef(dflt);
        }
        if (tag != T_SER || !out)
            return out;
        /* The serializer loads the copy, outside the entry. */
        PyObject *data = out;
        out = PyObject_CallMethodOneArg(self->ser, str_loads, data);
        Py_DECREF(data);
        if (!out && PyErr_ExceptionMatches(PyExc_Exception)) {
            /* What the serializer refuses is a miss, counted as corruption. */
            PyErr_Clear();
            self->count_corrupt(seg, APC_TABLE_USER);
            return Py_NewRef(dflt);
        }
        return out;
    }
}

static PyObject *h_exists(Handle *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    const char *k;
    Py_ssize_t kl;
    uint64_t now;
    if (kwnames || nargs != 1 || !key_view(args[0], &k, &kl))
        return slow(self, OP_EXISTS, args, nargs, kwnames);
    if (now_of(self, &now) < 0)
        return NULL;
    int rc = self->exists(self->seg, APC_TABLE_USER, k, (uint32_t)kl, now);
    if (rc == APC_OK)
        Py_RETURN_TRUE;
    if (rc == APC_NOTFOUND)
        Py_RETURN_FALSE;
    return raise_rc(self, OP_EXISTS, rc, args[0], 0, 0);
}

/* ------------------------------------------------------------ writes */

static PyObject *put(Handle *self, int op, PyObject *const *args, Py_ssize_t nargs,
                     PyObject *kwnames)
{
    static const char *const names[] = {"key", "value", "ttl"};
    PyObject *a[3];
    const char *k;
    Py_ssize_t kl;
    long long ttl = 0;
    uint64_t now;
    if (!parse(args, nargs, kwnames, 2, names, 3, a) || !key_view(a[0], &k, &kl) ||
        !exact_int(a[2], 0, FASTPATH_MAX_TTL, &ttl))
        return slow(self, op, args, nargs, kwnames);
    encoded e;
    int enc = encode(self, a[1], &e);
    if (enc < 0)
        return NULL;
    if (enc == 0)
        return slow(self, op, args, nargs, kwnames);
    if (now_of(self, &now) < 0) {
        Py_XDECREF(e.owned);
        return NULL;
    }
    int rc;
    apc_seg *seg = self->seg;
    Py_BEGIN_ALLOW_THREADS
    rc = self->store(seg, APC_TABLE_USER, k, (uint32_t)kl, e.tag, e.ptr, (uint64_t)e.len,
                     e.ival, (uint64_t)ttl, now, op == OP_ADD ? APC_ADD : 0);
    Py_END_ALLOW_THREADS
    Py_XDECREF(e.owned);
    if (rc == APC_OK)
        Py_RETURN_TRUE;
    if (rc == APC_EXISTS)
        Py_RETURN_FALSE;
    return raise_rc(self, op, rc, a[0], e.len, 0);
}

static PyObject *h_store(Handle *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return put(self, OP_STORE, args, nargs, kwnames);
}

static PyObject *h_add(Handle *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return put(self, OP_ADD, args, nargs, kwnames);
}

static PyObject *h_delete(Handle *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    const char *k;
    Py_ssize_t kl;
    uint64_t now;
    if (kwnames || nargs != 1 || !key_view(args[0], &k, &kl))
        return slow(self, OP_DELETE, args, nargs, kwnames);
    if (now_of(self, &now) < 0)
        return NULL;
    int rc;
    apc_seg *seg = self->seg;
    Py_BEGIN_ALLOW_THREADS
    rc = self->delete_(seg, APC_TABLE_USER, k, (uint32_t)kl, now);
    Py_END_ALLOW_THREADS
    if (rc == APC_OK)
        Py_RETURN_TRUE;
    if (rc == APC_NOTFOUND)
        Py_RETURN_FALSE;
    return raise_rc(self, OP_DELETE, rc, args[0], 0, 0);
}

static PyObject *incdec(Handle *self, int op, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    static const char *const names[] = {"key", "step", "ttl"};
    PyObject *a[3];
    const char *k;
    Py_ssize_t kl;
    long long step = 1, ttl = 0;
    uint64_t now;
    /* dec(INT64_MIN) would overflow its negation: the Python method says so. */
    if (!parse(args, nargs, kwnames, 1, names, 3, a) || !key_view(a[0], &k, &kl) ||
        !exact_int(a[1], INT64_MIN + 1, INT64_MAX, &step) ||
        !exact_int(a[2], 0, FASTPATH_MAX_TTL, &ttl))
        return slow(self, op, args, nargs, kwnames);
    if (op == OP_DEC)
        step = -step;
    if (now_of(self, &now) < 0)
        return NULL;
    int rc;
    int64_t v = 0;
    apc_seg *seg = self->seg;
    Py_BEGIN_ALLOW_THREADS
    rc = self->inc(seg, APC_TABLE_USER, k, (uint32_t)kl, step, (uint64_t)ttl, now, &v);
    Py_END_ALLOW_THREADS
    if (rc == APC_OK)
        return PyLong_FromLongLong(v);
    return raise_rc(self, op, rc, a[0], 8, op == OP_DEC ? -step : step);
}

static PyObject *h_inc(Handle *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return incdec(self, OP_INC, args, nargs, kwnames);
}

static PyObject *h_dec(Handle *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return incdec(self, OP_DEC, args, nargs, kwnames);
}

static PyObject *h_cas(Handle *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"key", "old", "new"};
    PyObject *a[3];
    const char *k;
    Py_ssize_t kl;
    long long old = 0, new_ = 0;
    uint64_t now;
    if (!parse(args, nargs, kwnames, 3, names, 3, a) || !key_view(a[0], &k, &kl) ||
        !exact_int(a[1], INT64_MIN, INT64_MAX, &old) || !exact_int(a[2], INT64_MIN, INT64_MAX, &new_))
        return slow(self, OP_CAS, args, nargs, kwnames);
    if (now_of(self, &now) < 0)
        return NULL;
    int rc;
    apc_seg *seg = self->seg;
    Py_BEGIN_ALLOW_THREADS
    rc = self->cas(seg, APC_TABLE_USER, k, (uint32_t)kl, old, new_, now);
    Py_END_ALLOW_THREADS
    if (rc == APC_OK)
        Py_RETURN_TRUE;
    if (rc == APC_NOTFOUND || rc == APC_MISMATCH || rc == APC_E_TYPE)
        Py_RETURN_FALSE;
    return raise_rc(self, OP_CAS, rc, a[0], 0, 0);
}

static PyObject *h_touch(Handle *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"key", "ttl"};
    PyObject *a[2];
    const char *k;
    Py_ssize_t kl;
    long long ttl = 0;
    uint64_t now;
    if (!parse(args, nargs, kwnames, 1, names, 2, a) || !key_view(a[0], &k, &kl) ||
        !exact_int(a[1], 0, FASTPATH_MAX_TTL, &ttl))
        return slow(self, OP_TOUCH, args, nargs, kwnames);
    if (now_of(self, &now) < 0)
        return NULL;
    int rc;
    apc_seg *seg = self->seg;
    Py_BEGIN_ALLOW_THREADS
    rc = self->touch(seg, APC_TABLE_USER, k, (uint32_t)kl, (uint64_t)ttl, now);
    Py_END_ALLOW_THREADS
    if (rc == APC_OK)
        Py_RETURN_TRUE;
    if (rc == APC_NOTFOUND)
        Py_RETURN_FALSE;
    return raise_rc(self, OP_TOUCH, rc, a[0], 0, 0);
}

/* ------------------------------------------------------------ the type */

static PyObject *h_close(Handle *self, PyObject *unused)
{
    (void)unused;
    self->seg = NULL; /* the engine answers APC_E_CLOSED to a NULL handle */
    Py_RETURN_NONE;
}

static int h_init(Handle *self, PyObject *args, PyObject *kw)
{
    unsigned long long seg, fns[9];
    PyObject *slow_methods, *raise, *ser, *clock;
    static char *names[] = {"seg",    "fetch_ref", "release", "store", "count_corrupt",
                            "exists", "delete",    "inc",     "cas",   "touch",
                            "slow",   "raise_rc",  "serializer", "clock", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KKKKKKKKKKOOOO", names, &seg, &fns[0], &fns[1],
                                     &fns[2], &fns[3], &fns[4], &fns[5], &fns[6], &fns[7],
                                     &fns[8], &slow_methods, &raise, &ser, &clock))
        return -1;
    for (int i = 0; i < 9; i++) {
        if (!fns[i]) {
            PyErr_SetString(PyExc_ValueError, "engine function addresses must not be 0");
            return -1;
        }
    }
    if (!PyDict_Check(slow_methods)) {
        PyErr_SetString(PyExc_TypeError, "slow must be a dict of the Python methods");
        return -1;
    }
    for (int i = 0; i < NOPS; i++) {
        PyObject *m = PyDict_GetItemString(slow_methods, op_names[i]);
        if (!m) {
            PyErr_Format(PyExc_ValueError, "slow has no %s", op_names[i]);
            return -1;
        }
        Py_XSETREF(self->slow[i], Py_NewRef(m));
    }
    self->seg = (apc_seg *)(uintptr_t)seg;
    self->fetch_ref = (fetch_ref_fn)(uintptr_t)fns[0];
    self->release = (release_fn)(uintptr_t)fns[1];
    self->store = (store_fn)(uintptr_t)fns[2];
    self->count_corrupt = (corrupt_fn)(uintptr_t)fns[3];
    self->exists = (key_fn)(uintptr_t)fns[4];
    self->delete_ = (key_fn)(uintptr_t)fns[5];
    self->inc = (inc_fn)(uintptr_t)fns[6];
    self->cas = (cas_fn)(uintptr_t)fns[7];
    self->touch = (touch_fn)(uintptr_t)fns[8];
    Py_XSETREF(self->raise_rc, Py_NewRef(raise));
    Py_XSETREF(self->ser, Py_NewRef(ser));
    Py_XSETREF(self->clock, Py_NewRef(clock));
    return 0;
}

static int h_traverse(Handle *self, visitproc visit, void *arg)
{
    for (int i = 0; i < NOPS; i++)
        Py_VISIT(self->slow[i]);
    Py_VISIT(self->raise_rc);
    Py_VISIT(self->ser);
    Py_VISIT(self->clock);
    return 0;
}

static int h_clear(Handle *self)
{
    for (int i = 0; i < NOPS; i++)
        Py_CLEAR(self->slow[i]);
    Py_CLEAR(self->raise_rc);
    Py_CLEAR(self->ser);
    Py_CLEAR(self->clock);
    return 0;
}

static void h_dealloc(Handle *self)
{
    PyObject_GC_UnTrack(self);
    h_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define FAST(name, fn, doc) \
    {name, (PyCFunction)(void (*)(void))fn, METH_FASTCALL | METH_KEYWORDS, doc}

static PyMethodDef h_methods[] = {
    FAST("fetch", h_fetch, "fetch(key, default=None): Cache.fetch."),
    FAST("store", h_store, "store(key, value, ttl=0): Cache.store."),
    FAST("add", h_add, "add(key, value, ttl=0): Cache.add."),
    FAST("exists", h_exists, "exists(key): Cache.exists."),
    FAST("delete", h_delete, "delete(key): Cache.delete."),
    FAST("inc", h_inc, "inc(key, step=1, ttl=0): Cache.inc."),
    FAST("dec", h_dec, "dec(key, step=1, ttl=0): Cache.dec."),
    FAST("cas", h_cas, "cas(key, old, new): Cache.cas."),
    FAST("touch", h_touch, "touch(key, ttl=0): Cache.touch."),
    {"close", (PyCFunction)h_close, METH_NOARGS, "Forget the engine handle."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HandleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "apccache._fastpath.Handle",
    .tp_basicsize = sizeof(Handle),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The single-key operations of one Cache handle, without a Python frame.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)h_init,
    .tp_traverse = (traverseproc)h_traverse,
    .tp_clear = (inquiry)h_clear,
    .tp_dealloc = (destructor)h_dealloc,
    .tp_methods = h_methods,
};

/* ------------------------------------------------------------ Near */

/*
 * The near-cache hit of apccache.fleet.FleetCache.fetch: while the host's
 * listener vouches for the near copies (now < trusted_until, both on
 * CLOCK_MONOTONIC, as time.monotonic reads it), a key whose segment key this
 * process has memoised is one dict lookup and one fetch from the segment.
 * Everything else -- no trust, no memo entry, a near miss, keyword
 * arguments -- is the Python method's.  FleetCache sets memo and
 * trusted_until whenever it re-reads the heartbeat.
 */
/*
 * THE WINDOW'S CLOCK
 *
 * The window is on CLOCK_MONOTONIC, and reading it costs a quarter of a
 * near hit.  The coarse clock is cheaper but not good enough: it is only
 * brought forward at timer ticks, and a CPU that idled without ticks can
 * leave it behind by more than its resolution (seen here: a near copy
 * served after the window had closed).  So, where the kernel itself keeps
 * time with the TSC (it then has checked that the TSC is constant and
 * synchronised between CPUs), the window's end is converted to a TSC value
 * when it is set, with the TSC's rate measured at import against
 * CLOCK_MONOTONIC and 2% taken off the window for the measurement's error;
 * a hit then compares one rdtsc.  Elsewhere, CLOCK_MONOTONIC.
 */
#if defined(__x86_64__)
#include <x86intrin.h>
static double tsc_per_ns; /* 0: not usable, read CLOCK_MONOTONIC */
#endif

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void window_clock_init(void)
{
#if defined(__x86_64__)
    char src[32] = {0};
    FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
    if (!f)
        return;
    size_t n = fread(src, 1, sizeof src - 1, f);
    fclose(f);
    src[n] = 0;
    if (strncmp(src, "tsc", 3) != 0 || (src[3] != '\n' && src[3] != 0))
        return;
    uint64_t t0 = mono_ns(), c0 = __rdtsc(), t1;
    do
        t1 = mono_ns();
    while (t1 - t0 < 2000000); /* 2 ms */
    uint64_t c1 = __rdtsc();
    if (c1 > c0)
        tsc_per_ns = (double)(c1 - c0) / (double)(t1 - t0);
#endif
}

typedef struct {
    PyObject_HEAD
    Handle *h;
    PyObject *memo;
    double trusted_until;  /* time.monotonic() seconds, as set */
    uint64_t until_ns;     /* the same on CLOCK_MONOTONIC, in ns (0: closed) */
    uint64_t until_tsc;    /* the same as a TSC value, 2% early (0: closed) */
    PyObject *slow;
    PyObject *missing;
} Near;

/* Is the window open now? */
static inline int near_open(const Near *self)
{
#if defined(__x86_64__)
    if (tsc_per_ns > 0)
        return __rdtsc() < self->until_tsc;
#endif
    return mono_ns() < self->until_ns;
}

static PyObject *near_fetch(Near *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (kwnames || nargs < 1 || nargs > 2 || !self->memo || !PyDict_Check(self->memo))
        return PyObject_Vectorcall(self->slow, args, (size_t)nargs, kwnames);
    if (!near_open(self))
        return PyObject_Vectorcall(self->slow, args, (size_t)nargs, kwnames);
    PyObject *nk = PyDict_GetItemWithError(self->memo, args[0]);
    if (!nk) {
        if (PyErr_Occurred())
            return NULL;
        return PyObject_Vectorcall(self->slow, args, (size_t)nargs, kwnames);
    }
    Py_INCREF(nk); /* the memo may be cleared while the fetch runs */
    PyObject *fargs[2] = {nk, self->missing};
    PyObject *v = h_fetch(self->h, fargs, 2, NULL);
    Py_DECREF(nk);
    if (v != self->missing)
        return v; /* the value, or NULL with an exception */
    Py_DECREF(v);
    return PyObject_Vectorcall(self->slow, args, (size_t)nargs, kwnames);
}

static int near_init(Near *self, PyObject *args, PyObject *kw)
{
    PyObject *h, *slow, *missing;
    static char *names[] = {"handle", "slow", "missing", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!OO", names, &HandleType, &h, &slow, &missing))
        return -1;
    Py_XSETREF(self->h, (Handle *)Py_NewRef(h));
    Py_XSETREF(self->slow, Py_NewRef(slow));
    Py_XSETREF(self->missing, Py_NewRef(missing));
    Py_XSETREF(self->memo, PyDict_New());
    self->trusted_until = 0.0;
    self->until_ns = self->until_tsc = 0;
    return self->memo ? 0 : -1;
}

static int near_traverse(Near *self, visitproc visit, void *arg)
{
    Py_VISIT(self->h);
    Py_VISIT(self->memo);
    Py_VISIT(self->slow);
    Py_VISIT(self->missing);
    return 0;
}

static int near_clear(Near *self)
{
    Py_CLEAR(self->h);
    Py_CLEAR(self->memo);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->missing);
    return 0;
}

static void near_dealloc(Near *self)
{
    PyObject_GC_UnTrack(self);
    near_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef near_methods[] = {
    FAST("fetch", near_fetch, "fetch(key, default=None): FleetCache.fetch's near hit."),
    {NULL, NULL, 0, NULL},
};

static PyObject *near_get_memo(Near *self, void *c)
{
    (void)c;
    return Py_NewRef(self->memo ? self->memo : Py_None);
}

static int near_set_memo(Near *self, PyObject *v, void *c)
{
    (void)c;
    if (!v || !PyDict_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "memo must be a dict");
        return -1;
    }
    Py_XSETREF(self->memo, Py_NewRef(v));
    return 0;
}

static PyObject *near_get_until(Near *self, void *c)
{
    (void)c;
    return PyFloat_FromDouble(self->trusted_until);
}

static int near_set_until(Near *self, PyObject *v, void *c)
{
    (void)c;
    double d = v ? PyFloat_AsDouble(v) : -1.0;
    if (!v || (d == -1.0 && PyErr_Occurred())) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "trusted_until cannot be deleted");
        return -1;
    }
    self->trusted_until = d;
    uint64_t now = mono_ns();
    double left_ns = d * 1e9 - (double)now;
    self->until_ns = left_ns > 0 ? now + (uint64_t)left_ns : 0;
#if defined(__x86_64__)
    self->until_tsc = left_ns > 0 && tsc_per_ns > 0
                          ? __rdtsc() + (uint64_t)(left_ns * 0.98 * tsc_per_ns)
                          : 0;
#endif
    return 0;
}

static PyGetSetDef near_getset[] = {
    {"memo", (getter)near_get_memo, (setter)near_set_memo,
     "key -> the segment key of its near copy", NULL},
    {"trusted_until", (getter)near_get_until, (setter)near_set_until,
     "near copies are trusted while time.monotonic() is below this", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject NearType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "apccache._fastpath.Near",
    .tp_basicsize = sizeof(Near),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The near-cache hit of a FleetCache, without a Python frame.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)near_init,
    .tp_traverse = (traverseproc)near_traverse,
    .tp_clear = (inquiry)near_clear,
    .tp_dealloc = (destructor)near_dealloc,
    .tp_methods = near_methods,
    .tp_getset = near_getset,
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT, "apccache._fastpath",
    "The cache's single-key operations as CPython methods over the cffi-bound engine.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&HandleType) < 0 || PyType_Ready(&NearType) < 0)
        return NULL;
    window_clock_init();
    str_dumps = PyUnicode_InternFromString("dumps");
    str_loads = PyUnicode_InternFromString("loads");
    if (!str_dumps || !str_loads)
        return NULL;
    PyObject *m = PyModule_Create(&fastpath_module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Handle", (PyObject *)&HandleType) < 0 ||
        PyModule_AddObjectRef(m, "Near", (PyObject *)&NearType) < 0 ||
        PyModule_AddIntConstant(m, "T_BYTES", T_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "T_STR", T_STR) < 0 ||
        PyModule_AddIntConstant(m, "T_INT", T_INT) < 0 ||
        PyModule_AddIntConstant(m, "T_FLOAT", T_FLOAT) < 0 ||
        PyModule_AddIntConstant(m, "T_TRUE", T_TRUE) < 0 ||
        PyModule_AddIntConstant(m, "T_FALSE", T_FALSE) < 0 ||
        PyModule_AddIntConstant(m, "T_NONE", T_NONE) < 0 ||
        PyModule_AddIntConstant(m, "T_SER", T_SER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
