"""Fixtures of the file-cache tests: segments named apctest-files-..., of
16 MiB unless told, always unlinked; the import system restored after
every test; a tree of source files older than protect_s."""
import os
import sys
import textwrap

import pytest

import apccache.opcode
from helpers.segments import Segments


@pytest.fixture
def make_cache():
    """make_cache(**create kwargs) -> Cache; every segment is unlinked at the end."""
    with Segments("files", size=16 << 20) as make:
        yield make


@pytest.fixture
def cache(make_cache):
    return make_cache()


@pytest.fixture(autouse=True)
def restore_import_system():
    """Whatever a test does to the import machinery is undone."""
    meta, hooks, pic, path = list(sys.meta_path), list(sys.path_hooks), dict(sys.path_importer_cache), list(sys.path)
    mods = set(sys.modules)
    try:
        yield
    finally:
        apccache.opcode.uninstall()
        sys.meta_path[:] = meta
        sys.path_hooks[:] = hooks
        sys.path_importer_cache.clear()
        sys.path_importer_cache.update(pic)
        sys.path[:] = path
        for m in set(sys.modules) - mods:
            if m.startswith("apct_"):
                del sys.modules[m]


@pytest.fixture
def tree(tmp_path):
    """write(relpath, text, age=3600) writes a file whose mtime is age
    seconds in the past (older than protect_s) and returns its path."""
    def write(rel, text, age=3600):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
        if age:
            st = p.stat()
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - int(age * 1e9)))
        return str(p)

    write.root = tmp_path
    return write
