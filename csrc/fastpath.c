/*
 * fastpath.c -- apccache._fastpath: fetch and store without a Python frame.
 *
 * The engine is bound with cffi, and everything goes through that binding
 * except the two calls that dominate a cache's life: Cache.fetch and
 * Cache.store.  Through cffi each costs a Python method frame, a key
 * encode, a thread-local lookup, an argument tuple, two GIL switches and a
 * slice to build the result: several times what the engine itself spends.
 * This module is that hot path as a plain CPython method: it takes the key
 * as given (a str's cached UTF-8 is used in place), calls the engine, and
 * builds the value straight from the pinned entry (one copy).
 *
 * WHAT IT DOES NOT DO
 *
 * It links none of the engine.  apccache._bindings hands it the addresses
 * of the cffi module's apc_fetch_ref, apc_ref_release and apc_store, so
 * there is one engine per process (release or debug, with its fault points)
 * whichever way a call comes.  Anything it does not handle itself -- other
 * key or value types, serialised values, errors, keyword arguments it does
 * not know -- goes to the Python implementation it was given, which has
 * the error messages.  Values the binding serialises are decoded by the
 * binding's decoder, after the entry has been released: no user code ever
 * runs while an entry is pinned.
 *
 * fetch keeps the GIL (a fetch never waits for a lock, and for a writer at
 * most APC_READ_WAIT_NS), but releases it to copy a value larger than
 * 16 KiB.  Between apc_fetch_ref and apc_ref_release the call is in flight,
 * so a close() in another thread waits for the copy to finish.  store releases it for the engine call, which may wait for
 * the write lock.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include "apc.h"

/* The binding's value tags (apccache/_bindings.py); test_fastpath checks
 * that they agree. */
enum { T_BYTES = 0, T_STR = 2, T_INT = 3, T_FLOAT = 4, T_TRUE = 5, T_FALSE = 6, T_NONE = 7 };

#define BIG_COPY 16384

typedef int64_t (*fetch_ref_fn)(apc_seg *, int, const char *, uint32_t, uint64_t, apc_ref *);
typedef void (*release_fn)(apc_seg *, apc_ref *);
typedef void (*corrupt_fn)(apc_seg *, int);
typedef int (*store_fn)(apc_seg *, int, const char *, uint32_t, int, const char *, uint64_t,
                        int64_t, uint64_t, uint64_t, int);

typedef struct {
    PyObject_HEAD
    apc_seg *seg;
    fetch_ref_fn fetch_ref;
    release_fn release;
    store_fn store;
    corrupt_fn count_corrupt;
    PyObject *slow_fetch; /* slow_fetch(key, default=None) */
    PyObject *slow_store; /* slow_store(key, value, ttl=0) */
    PyObject *decode;     /* decode(tag, data): the value, or `missing` */
    PyObject *missing;    /* what decode returns for a value that does not decode */
} Handle;

/* The key's bytes, without copying; 0 if the slow path must take it. */
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

static PyObject *h_fetch(Handle *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    const char *k;
    Py_ssize_t kl;
    if (kwnames || nargs < 1 || nargs > 2 || !key_view(args[0], &k, &kl))
        return PyObject_Vectorcall(self->slow_fetch, args, (size_t)nargs, kwnames);
    apc_ref ref;
    /* Read once: close() in another thread may clear it meanwhile, and
     * release must go to the handle the fetch went to. */
    apc_seg *seg = self->seg;
    int64_t r = self->fetch_ref(seg, APC_TABLE_USER, k, (uint32_t)kl, 0, &ref);
    if (r < 0) {
        if (r == APC_NOTFOUND) {
            PyObject *dflt = nargs > 1 ? args[1] : Py_None;
            Py_INCREF(dflt);
            return dflt;
        }
        return PyObject_Vectorcall(self->slow_fetch, args, (size_t)nargs, NULL);
    }
    int tag = (int)(r & 0x7F);
    Py_ssize_t n = (Py_ssize_t)((uint64_t)r >> 8);
    PyObject *out = NULL;
    switch (tag) {
    case T_BYTES:
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
            goto undecodable;
        break;
    case T_INT:
        out = PyLong_FromLongLong(ref.ival);
        break;
    case T_FLOAT:
        if (n != 8)
            goto undecodable;
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
    default: {
        /* Serialised (or unknown): copy, release, then let the binding
         * decode it, outside the pin. */
        PyObject *data = PyBytes_FromStringAndSize(ref.ptr, n);
        self->release(seg, &ref);
        if (!data)
            return NULL;
        out = PyObject_CallFunction(self->decode, "iN", tag, data);
        if (out == self->missing) {
            Py_DECREF(out);
            goto missing;
        }
        return out;
    }
    }
    self->release(seg, &ref);
    return out;

undecodable:
    /* Bytes that are not what their tag says: a miss, counted as corruption. */
    PyErr_Clear();
    self->release(seg, &ref);
    self->count_corrupt(seg, APC_TABLE_USER);
missing: {
    PyObject *dflt = nargs > 1 ? args[1] : Py_None;
    return Py_NewRef(dflt);
}
}

#define FASTPATH_MAX_TTL 0x7fffffffLL /* apccache.MAX_TTL, 2**31 - 1 */

static PyObject *h_store(Handle *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    const char *k, *v;
    Py_ssize_t kl, vl;
    PyObject *ttl_obj = nargs > 2 ? args[2] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    int slow = nargs < 2 || nargs > 3 || nkw > 1 || !key_view(args[0], &k, &kl);
    if (!slow && nkw == 1) {
        if (ttl_obj || !PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0)) ||
            PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "ttl") != 0)
            slow = 1;
        else
            ttl_obj = args[nargs];
    }
    int tag = 0;
    if (!slow) {
        PyObject *value = args[1];
        if (PyBytes_CheckExact(value)) {
            tag = T_BYTES;
            v = PyBytes_AS_STRING(value);
            vl = PyBytes_GET_SIZE(value);
        } else if (PyUnicode_CheckExact(value) && (v = PyUnicode_AsUTF8AndSize(value, &vl))) {
            tag = T_STR;
        } else {
            PyErr_Clear();
            slow = 1;
        }
    }
    long long ttl = 0;
    if (!slow && ttl_obj) {
        /* Anything but an exact int from 0 to MAX_TTL (apccache.cache) goes
         * to the Python method, which raises with its message. */
        if (!PyLong_CheckExact(ttl_obj) || (ttl = PyLong_AsLongLong(ttl_obj)) < 0 ||
            ttl > FASTPATH_MAX_TTL) {
            PyErr_Clear();
            slow = 1;
        }
    }
    if (slow)
        return PyObject_Vectorcall(self->slow_store, args, (size_t)nargs, kwnames);
    int rc;
    apc_seg *seg = self->seg;
    Py_BEGIN_ALLOW_THREADS
    rc = self->store(seg, APC_TABLE_USER, k, (uint32_t)kl, tag, v, (uint64_t)vl, 0,
                     (uint64_t)ttl, 0, 0);
    Py_END_ALLOW_THREADS
    if (rc == APC_OK)
        Py_RETURN_TRUE;
    /* Errors are rare: the Python implementation retries and raises with
     * its own messages. */
    return PyObject_Vectorcall(self->slow_store, args, (size_t)nargs, kwnames);
}

static PyObject *h_close(Handle *self, PyObject *unused)
{
    (void)unused;
    self->seg = NULL; /* the engine answers APC_E_CLOSED to a NULL handle */
    Py_RETURN_NONE;
}

static int h_init(Handle *self, PyObject *args, PyObject *kw)
{
    unsigned long long seg, fetch_ref, release, store, count_corrupt;
    PyObject *slow_fetch, *slow_store, *decode, *missing;
    static char *names[] = {"seg", "fetch_ref", "release", "store", "count_corrupt",
                            "slow_fetch", "slow_store", "decode", "missing", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KKKKKOOOO", names, &seg, &fetch_ref, &release,
                                     &store, &count_corrupt, &slow_fetch, &slow_store, &decode,
                                     &missing))
        return -1;
    if (!fetch_ref || !release || !store || !count_corrupt) {
        PyErr_SetString(PyExc_ValueError, "engine function addresses must not be 0");
        return -1;
    }
    self->seg = (apc_seg *)(uintptr_t)seg;
    self->fetch_ref = (fetch_ref_fn)(uintptr_t)fetch_ref;
    self->release = (release_fn)(uintptr_t)release;
    self->store = (store_fn)(uintptr_t)store;
    self->count_corrupt = (corrupt_fn)(uintptr_t)count_corrupt;
    Py_XSETREF(self->missing, Py_NewRef(missing));
    Py_XSETREF(self->slow_fetch, Py_NewRef(slow_fetch));
    Py_XSETREF(self->slow_store, Py_NewRef(slow_store));
    Py_XSETREF(self->decode, Py_NewRef(decode));
    return 0;
}

static int h_traverse(Handle *self, visitproc visit, void *arg)
{
    Py_VISIT(self->slow_fetch);
    Py_VISIT(self->slow_store);
    Py_VISIT(self->decode);
    Py_VISIT(self->missing);
    return 0;
}

static int h_clear(Handle *self)
{
    Py_CLEAR(self->slow_fetch);
    Py_CLEAR(self->slow_store);
    Py_CLEAR(self->decode);
    Py_CLEAR(self->missing);
    return 0;
}

static void h_dealloc(Handle *self)
{
    PyObject_GC_UnTrack(self);
    h_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef h_methods[] = {
    {"fetch", (PyCFunction)(void (*)(void))h_fetch, METH_FASTCALL | METH_KEYWORDS,
     "fetch(key, default=None): Cache.fetch, for str and bytes keys."},
    {"store", (PyCFunction)(void (*)(void))h_store, METH_FASTCALL | METH_KEYWORDS,
     "store(key, value, ttl=0): Cache.store, for bytes and str values."},
    {"close", (PyCFunction)h_close, METH_NOARGS, "Forget the engine handle."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HandleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "apccache._fastpath.Handle",
    .tp_basicsize = sizeof(Handle),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The fetch/store hot path of one Cache handle.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)h_init,
    .tp_traverse = (traverseproc)h_traverse,
    .tp_clear = (inquiry)h_clear,
    .tp_dealloc = (destructor)h_dealloc,
    .tp_methods = h_methods,
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT, "apccache._fastpath",
    "Cache.fetch and Cache.store as CPython methods over the cffi-bound engine.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&HandleType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastpath_module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Handle", (PyObject *)&HandleType) < 0 ||
        PyModule_AddIntConstant(m, "T_BYTES", T_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "T_STR", T_STR) < 0 ||
        PyModule_AddIntConstant(m, "T_INT", T_INT) < 0 ||
        PyModule_AddIntConstant(m, "T_FLOAT", T_FLOAT) < 0 ||
        PyModule_AddIntConstant(m, "T_TRUE", T_TRUE) < 0 ||
        PyModule_AddIntConstant(m, "T_FALSE", T_FALSE) < 0 ||
        PyModule_AddIntConstant(m, "T_NONE", T_NONE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
