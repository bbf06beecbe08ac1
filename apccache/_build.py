"""cffi (API mode) builders for the engine.

Two extension modules are built from the same C sources in ``csrc/``:

- ``apccache._engine``: the release build (``-O2``);
- ``apccache._engine_debug``: the same with ``-DAPC_DEBUG``: assertions,
  poisoned free blocks, and the named fault-injection points that the crash
  tests use (``APCCACHE_FAULT=store.after_publish`` and so on).

``APCCACHE_DEBUG=1`` in the environment makes ``import apccache`` load the
debug build.  ``APCCACHE_CFLAGS`` adds compiler flags to both (for example
``-fsanitize=address``).
"""
import os
import re
import shlex

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")
SOURCES = ["segment.c", "lock.c", "sma.c", "chains.c", "hits.c", "room.c", "repair.c", "api.c", "report.c", "check.c",
           "xxh3.c"]


def _cdef():
    with open(os.path.join(CSRC, "apc.h")) as f:
        text = f.read()
    m = re.search(r"/\* CDEF BEGIN \*/(.*)/\* CDEF END \*/", text, re.S)
    return m.group(1)


def _make(module, debug):
    ffi = FFI()
    ffi.cdef(_cdef())
    # -flto: the engine is one subsystem per file (csrc/), and the read path
    # crosses them (api.c -> chains.c -> lock.c); link-time optimisation
    # inlines across the files as one file would.
    flags = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden", "-flto"]
    if debug:
        flags += ["-DAPC_DEBUG", "-g"]
    else:
        flags += ["-DNDEBUG"]
    flags += shlex.split(os.environ.get("APCCACHE_CFLAGS", ""))
    ffi.set_source(
        module,
        '#include "apc.h"',
        sources=[os.path.relpath(os.path.join(CSRC, s)) for s in SOURCES],
        include_dirs=[os.path.relpath(CSRC)],
        extra_compile_args=flags,
        extra_link_args=["-flto", "-O2"],
        libraries=["pthread"],
    )
    return ffi


ffi_release = _make("apccache._engine", debug=False)
ffi_debug = _make("apccache._engine_debug", debug=True)

if __name__ == "__main__":
    ffi_release.compile(verbose=True)
    ffi_debug.compile(verbose=True)
