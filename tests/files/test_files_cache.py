"""The file-key cache (apccache.files): keys, modes, validation, writes."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import apccache
from apccache import files as F
from apccache.files import FileCache, UnsafeSegmentError

from helpers.children import child_env, run_py


def upper(data):
    return data.upper()


def fc(cache, **kw):
    kw.setdefault("protect_s", 0)
    return FileCache(cache, **kw)


# ---------------------------------------------------------------- basics


def test_files_property_is_one_filecache_per_handle(cache):
    assert cache.files is cache.files
    assert isinstance(cache.files, FileCache)
    assert cache.files.mode == "stat"


def test_compile_returns_code_compiled_once_and_shared_with_another_handle(cache, tree):
    p = tree("m.py", "X = 6 * 7\n")
    code = fc(cache).compile(p)
    ns = {}
    exec(code, ns)
    assert ns["X"] == 42 and code.co_filename == p
    other = apccache.Cache.attach(cache.name)
    try:
        f2 = fc(other)
        code2 = f2.compile(p)
        assert f2.info()["process"]["hits"] == 1 and f2.info()["process"]["misses"] == 0
        assert code2.co_code == code.co_code
    finally:
        other.close()


def test_a_valid_pyc_is_stored_instead_of_compiling_and_a_broken_one_is_not(cache, tree, monkeypatch):
    import builtins
    import importlib.util
    import py_compile

    good = tree("pyc/good.py", "X = 'from pyc'\n")
    broken = tree("pyc/broken.py", "X = 'compiled'\n")
    for p in (good, broken):
        py_compile.compile(p, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    pyc = importlib.util.cache_from_source(broken)
    with open(pyc, "r+b") as f:
        f.truncate(os.path.getsize(pyc) - 5)  # its marshal data cut short
    compiled = []
    real = builtins.compile
    monkeypatch.setattr(builtins, "compile", lambda src, name, *a, **k: compiled.append(name) or real(src, name, *a, **k))
    f = fc(cache)
    ns = {}
    exec(f.compile(good), ns)
    assert ns["X"] == "from pyc" and compiled == []
    exec(f.compile(broken), ns)
    assert ns["X"] == "compiled" and compiled == [broken]
    assert f.info()["process"]["stored"] == 2
    other = fc(apccache.Cache.attach(cache.name))
    try:
        assert other.compile(good).co_filename == good and other.info()["process"]["hits"] == 1
    finally:
        other._cache.close()


def test_load_caches_loader_output_of_bytes_str_and_objects(cache, tree):
    p = tree("c.txt", "a=1\n")
    f = fc(cache)
    calls = []

    def parse(data):
        calls.append(1)
        return dict(line.split("=") for line in data.decode().split())

    assert f.load(p, upper) == b"A=1\n"
    assert f.load(p, upper) == b"A=1\n"
    assert f.load(p, bytes.decode) == "a=1\n"
    assert f.load(p, parse, kind="parse") == {"a": "1"} and f.load(p, parse, kind="parse") == {"a": "1"}
    assert len(calls) == 1, "the loader ran again on a hit"
    assert f.info()["process"]["hits"] == 2


def test_a_serialized_value_that_no_longer_loads_is_made_again(cache, tree):
    p = tree("obj.txt", "a=1\n")
    f = fc(cache)
    calls = []

    def parse(data):
        calls.append(1)
        return {"parsed": data.decode()}

    assert f.load(p, parse, kind="obj") == {"parsed": "a=1\n"}
    ft = cache.file_table
    [(_rec, key)] = ft.entries()
    blob = ft.get(key)
    ft.put(key, blob[:-8] + b"\x00garbage")  # the pickle cut and scribbled
    assert f.load(p, parse, kind="obj") == {"parsed": "a=1\n"} and len(calls) == 2
    assert f.info()["process"]["unreadable_entries"] == 1
    assert f.load(p, parse, kind="obj") == {"parsed": "a=1\n"} and len(calls) == 2, "stored again"


def test_load_needs_a_kind_for_a_lambda(cache, tree):
    p = tree("c.txt", "x")
    with pytest.raises(ValueError, match="kind="):
        fc(cache).load(p, lambda b: b)
    assert fc(cache).load(p, lambda b: b * 2, kind="double") == b"xx"


def test_loaders_of_different_names_do_not_share_entries(cache, tree):
    p = tree("c.txt", "x")
    f = fc(cache)
    assert f.load(p, lambda b: b"one", kind="one") == b"one"
    assert f.load(p, lambda b: b"two", kind="two") == b"two"


def test_user_cache_clear_keeps_file_entries_and_info_is_separate(cache, tree):
    p = tree("m.py", "X = 1\n")
    f = fc(cache)
    f.compile(p)
    cache.store("user", 1)
    cache.clear()
    assert cache.info()["num_entries"] == 0
    assert f.info()["num_entries"] == 1
    f.compile(p)
    assert f.info()["process"]["hits"] == 1


def test_reset_drops_every_file_entry_for_all_processes(cache, tree):
    p = tree("m.py", "X = 1\n")
    f = fc(cache)
    f.compile(p)
    cache.store("user", 1)
    f.reset()
    assert f.info()["num_entries"] == 0 and cache.fetch("user") == 1


def test_code_keys_are_namespaced_by_magic_tag_and_optimisation_level(cache, tree):
    ns = F.code_namespace("source", "stat").decode()
    import importlib.util

    assert importlib.util.MAGIC_NUMBER.hex() in ns and sys.implementation.cache_tag in ns
    assert f"O{sys.flags.optimize}" in ns and "source" in ns and "stat" in ns
    p = tree("m.py", "assert False, 'stripped under -O'\n")
    fc(cache).compile(p)
    # A process at another optimisation level must not get this code.
    out = run_py("""
        import sys, json, apccache
        from apccache.files import FileCache
        c = apccache.Cache.attach(sys.argv[1])
        f = FileCache(c, protect_s=0)
        exec(f.compile(sys.argv[2]), {})
        print(json.dumps(f.info()["process"]))
    """, cache.name, p, env={"PYTHONOPTIMIZE": "1"})
    assert out["misses"] == 1 and out["hits"] == 0
    assert fc(cache).info()["num_entries"] == 2


def test_info_lists_entries_with_their_identity(cache, tree):
    p = tree("m.py", "X = 1\n")
    fc(cache).compile(p)
    fc(cache, mode="no-stat").compile(p)
    entries = fc(cache).info(limited=False)["entries"]
    modes = sorted(e["mode"] for e in entries)
    assert modes == ["no-stat", "stat"]
    assert any(e.get("path") == p for e in entries)
    st = os.stat(p)
    assert any(e.get("ino") == st.st_ino for e in entries)


def test_bad_settings_are_refused_with_the_rule(cache):
    with pytest.raises(ValueError, match="mode must be"):
        FileCache(cache, mode="sometimes")
    with pytest.raises(ValueError, match="protect_s must be"):
        FileCache(cache, protect_s=-1)
    with pytest.raises(TypeError, match="search_path"):
        FileCache(cache, search_path="/usr/lib")


def test_syntax_error_propagates_and_stores_nothing(cache, tree):
    p = tree("bad.py", "def f(:\n")
    f = fc(cache)
    with pytest.raises(SyntaxError) as e:
        f.compile(p)
    assert e.value.filename == p
    assert f.info()["num_entries"] == 0


# ---------------------------------------------------------------- stat mode


def test_stat_mode_sees_an_edit_of_the_same_size_in_the_same_second(cache, tree):
    p = tree("c.txt", "version=1\n")
    f = fc(cache)
    assert f.load(p, upper) == b"VERSION=1\n"
    st = os.stat(p)
    with open(p, "r+") as fh:
        fh.write("version=2\n")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only ctime moves
    assert os.stat(p).st_size == st.st_size and os.stat(p).st_mtime_ns == st.st_mtime_ns
    assert f.load(p, upper) == b"VERSION=2\n"
    assert f.info()["process"]["stale"] == 1


def test_stat_mode_sees_a_rename_deploy(cache, tree):
    p = tree("app/m.py", "X = 1\n")
    f = fc(cache)
    ns = {}
    exec(f.compile(p), ns)
    new = tree("app/m.py.new", "X = 2\n")
    os.replace(new, p)
    exec(f.compile(p), ns)
    assert ns["X"] == 2


def test_stat_mode_sees_a_symlink_flip(cache, tree):
    tree("releases/1/m.py", "X = 1\n")
    tree("releases/2/m.py", "X = 2\n")
    root = tree.root
    cur = root / "current"
    os.symlink(root / "releases" / "1", cur)
    f = fc(cache)
    ns = {}
    exec(f.compile(str(cur / "m.py")), ns)
    assert ns["X"] == 1
    tmp = root / "current.tmp"
    os.symlink(root / "releases" / "2", tmp)
    os.replace(tmp, cur)
    exec(f.compile(str(cur / "m.py")), ns)
    assert ns["X"] == 2


def test_files_modified_within_protect_s_are_served_but_not_stored(cache, tree):
    p = tree("new.txt", "fresh", age=0)
    f = FileCache(cache, protect_s=2)
    assert f.load(p, upper) == b"FRESH"
    assert f.info()["process"]["skipped_too_new"] == 1 and f.info()["num_entries"] == 0
    old = time.time() - 10
    os.utime(p, (old, old))
    f.load(p, upper)
    assert f.info()["num_entries"] == 1


def test_a_file_written_during_the_read_is_not_stored(cache, tree, monkeypatch):
    p = tree("c.txt", "first half ")

    class GrowingFile:
        def __init__(self, path, mode):
            self._f = open(path, mode)

        def fileno(self):
            return self._f.fileno()

        def read(self):
            data = self._f.read()
            with open(p, "a") as w:  # a writer appends while we read
                w.write("second half")
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    f = fc(cache)
    monkeypatch.setattr(F, "open", GrowingFile, raising=False)
    assert f.load(p, upper) == b"FIRST HALF "
    monkeypatch.delattr(F, "open")
    assert f.info()["process"]["skipped_changed"] == 1 and f.info()["num_entries"] == 0
    assert f.load(p, upper) == b"FIRST HALF SECOND HALF"
    assert f.info()["num_entries"] == 1


def test_revalidate_s_trusts_what_this_process_saw_for_that_long(cache, tree, monkeypatch):
    p = tree("c.txt", "v1")
    f = fc(cache, revalidate_s=5)
    now = [1000.0]

    class Clock:
        monotonic = staticmethod(lambda: now[0])
        time = staticmethod(time.time)

    monkeypatch.setattr(F, "time", Clock)
    assert f.load(p, upper) == b"V1"
    new = tree("c.new", "v2")
    os.replace(new, p)
    now[0] += 1
    assert f.load(p, upper) == b"V1", "within revalidate_s no stat is made"
    now[0] += 5
    assert f.load(p, upper) == b"V2"


# ---------------------------------------------------------------- no-stat mode


def test_no_stat_mode_serves_the_old_value_until_invalidate(cache, tree):
    p = tree("c.txt", "v1")
    f = fc(cache, mode="no-stat")
    assert f.load(p, upper) == b"V1"
    os.replace(tree("c.new", "v2"), p)
    assert f.load(p, upper) == b"V1"
    other = apccache.Cache.attach(cache.name)
    try:
        assert fc(other, mode="no-stat").load(p, upper) == b"V1", "another process sees the old value too"
    finally:
        other.close()
    assert f.invalidate(p) == 1
    assert f.load(p, upper) == b"V2"


def test_no_stat_mode_makes_no_stat_call_on_a_hit(cache, tree):
    p = tree("c.txt", "v1")
    f = fc(cache, mode="no-stat")
    f.load(p, upper)
    calls = []
    saved = os.stat, os.fstat, os.path.isfile
    os.stat = os.fstat = os.path.isfile = lambda *a, **k: calls.append(a)
    try:
        value = f.load(p, upper)
    finally:
        os.stat, os.fstat, os.path.isfile = saved
    assert value == b"V1" and calls == []


def test_no_stat_mode_resolves_relative_paths_through_the_search_path(cache, tree):
    tree("b/conf.txt", "from b")
    tree("c/conf.txt", "from c")
    a, b, c = (str(tree.root / d) for d in "abc")
    os.makedirs(a)
    f = fc(cache, mode="no-stat", search_path=[a, b, c])
    assert f.load("conf.txt", upper) == b"FROM B"
    other = apccache.Cache.attach(cache.name)
    try:
        assert fc(other, mode="no-stat", search_path=[a, b, c]).load("conf.txt", upper) == b"FROM B"
    finally:
        other.close()
    assert f.invalidate("conf.txt") >= 1


def test_invalidate_drops_all_namespaces_of_a_path_in_both_modes(cache, tree):
    p = tree("m.py", "X = 1\n")
    fc(cache).compile(p)
    fc(cache).load(p, upper)
    fc(cache, mode="no-stat").compile(p)
    assert fc(cache).invalidate(p) == 3
    assert fc(cache).info()["num_entries"] == 0


# ---------------------------------------------------------------- writes across processes

HOLDER = """
import sys, time, apccache
from apccache.files import FileCache
c = apccache.Cache.attach(sys.argv[1])
f = FileCache(c, protect_s=0)
def slow(data):
    print("generating", flush=True)
    time.sleep(30)
    return data
f.load(sys.argv[2], slow, kind="slow")
"""


@pytest.mark.parametrize("how", ["alive", "killed"])
def test_a_second_process_never_waits_long_for_one_that_is_compiling(cache, tree, how):
    """While another process holds the generation of an entry (slow, or
    SIGKILLed mid-way), a lookup waits at most max_wait and then makes the
    value itself."""
    p = tree("c.txt", "data")
    env = child_env()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, cache.name, p], stdout=subprocess.PIPE,
                              env=env, text=True)
    try:
        assert holder.stdout.readline().strip() == "generating"
        if how == "killed":
            holder.send_signal(signal.SIGKILL)
            holder.wait()
        f = fc(cache, max_wait=0.3)
        t = time.monotonic()
        assert f.load(p, lambda d: d, kind="slow") == b"data"
        assert time.monotonic() - t < 5
    finally:
        holder.kill()
        holder.wait()


def test_a_full_cache_returns_the_value_unstored(make_cache, tree):
    c = make_cache(size=1 << 20)
    big = tree("big.txt", "x" * (2 << 20))
    f = fc(c)
    assert len(f.load(big, upper)) == 2 << 20
    assert f.info()["process"]["skipped_full"] == 1


# ---------------------------------------------------------------- security


def test_code_from_a_segment_writable_by_others_is_refused(cache, tree):
    p = tree("m.py", "X = 1\n")
    os.chmod(f"/dev/shm/{cache.name}", 0o602)
    with pytest.raises(UnsafeSegmentError, match="writable by others"):
        FileCache(cache).compile(p)
    os.chmod(f"/dev/shm/{cache.name}", 0o620)
    with pytest.raises(UnsafeSegmentError, match="writable by group"):
        FileCache(cache).compile(p)
    os.chmod(f"/dev/shm/{cache.name}", 0o600)
    FileCache(cache).compile(p)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the segment away")
def test_code_from_a_segment_owned_by_another_user_is_refused(cache, tree):
    p = tree("m.py", "X = 1\n")
    os.chown(f"/dev/shm/{cache.name}", 65534, -1)
    try:
        with pytest.raises(UnsafeSegmentError, match="owned by uid 65534"):
            FileCache(cache).compile(p)
    finally:
        os.chown(f"/dev/shm/{cache.name}", 0, -1)


def test_fix_filename_rewrites_nested_code_objects():
    code = compile(textwrap.dedent("""
        def outer():
            def inner():
                return lambda: 1
            return inner
        class K:
            def m(self): pass
    """), "/old/path.py", "exec")
    fixed = F.fix_filename(code, "/new/path.py")

    def walk(c):
        yield c
        for k in c.co_consts:
            if isinstance(k, type(c)):
                yield from walk(k)

    names = {c.co_filename for c in walk(fixed)}
    assert names == {"/new/path.py"} and len(list(walk(fixed))) == 6
