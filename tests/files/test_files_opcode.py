"""The opcode cache (apccache.opcode): the import hook, in this process where
only the hook's own state matters, and in fresh interpreters otherwise."""
import importlib
import importlib.machinery
import os
import sys
import sysconfig
import zipfile

import pytest

import apccache.opcode as opcode
from apccache.files import UnsafeSegmentError

from helpers.children import run_py

# A child that installs the hook on argv[1] in mode argv[2], puts argv[3] on
# sys.path, imports argv[4] and reports what happened.
IMPORTER = """
import sys, json, builtins
seg, mode, root, name = sys.argv[1:5]
no_compile = len(sys.argv) > 5 and sys.argv[5] == "no-compile"
import apccache, apccache.opcode
c = apccache.Cache.attach(seg)
apccache.opcode.install(c, mode, protect_s=0)
sys.path.insert(0, root)
if no_compile:
    real = builtins.compile
    def compile(src, filename, *a, **k):
        if str(filename).startswith(root):
            raise AssertionError("compiled " + filename)
        return real(src, filename, *a, **k)
    builtins.compile = compile
m = __import__(name)
out = {"value": getattr(m, "VALUE", None), "file": m.__file__, "loader": type(m.__loader__).__name__,
       "stats": apccache.opcode.installed().info()["process"]}
try:
    m.boom()
except Exception:
    import traceback
    out["tb"] = [f.filename for f in traceback.extract_tb(sys.exc_info()[2])]
print(json.dumps(out))
"""

MODULE = """
VALUE = {v!r}
def boom():
    raise RuntimeError("boom")
"""


def imp(cache, mode, root, name, *extra):
    return run_py(IMPORTER, cache.name, mode, root, name, *extra)


# ---------------------------------------------------------------- serving


def test_the_second_process_takes_the_code_from_the_segment_without_compiling(cache, tree):
    tree("pkg/apct_one.py", MODULE.format(v=1))
    root = str(tree.root / "pkg")
    first = imp(cache, "stat", root, "apct_one")
    assert first["value"] == 1 and first["stats"]["stored"] >= 1 and first["loader"] == "SharedCodeLoader"
    second = imp(cache, "stat", root, "apct_one", "no-compile")
    assert second["value"] == 1 and second["stats"]["hits"] >= 1 and second["stats"]["misses"] == 0
    assert not os.path.exists(os.path.join(root, "__pycache__")), "no .pyc written (PYTHONDONTWRITEBYTECODE)"


def test_a_package_and_its_submodules_are_served(cache, tree):
    tree("r/apct_pkg/__init__.py", "from . import sub\nVALUE = sub.X\n")
    tree("r/apct_pkg/sub.py", "X = 'sub'\n")
    imp(cache, "stat", str(tree.root / "r"), "apct_pkg")
    out = imp(cache, "stat", str(tree.root / "r"), "apct_pkg", "no-compile")
    assert out["value"] == "sub" and out["stats"]["hits"] == 2


def test_the_stock_pyc_is_read_on_a_miss_and_written_when_allowed(cache, tree):
    tree("w/apct_w.py", MODULE.format(v="w"))
    root = str(tree.root / "w")
    out = run_py(IMPORTER, cache.name, "stat", root, "apct_w", env={"PYTHONDONTWRITEBYTECODE": ""})
    assert out["value"] == "w"
    assert os.listdir(os.path.join(root, "__pycache__")), "a compile writes the .pyc as the stock loader does"


@pytest.mark.parametrize("mode", ["stat", "no-stat"])
def test_tracebacks_name_the_path_the_module_was_imported_by(cache, tree, mode):
    tree("real/apct_tb.py", MODULE.format(v="tb"))
    os.symlink(tree.root / "real", tree.root / "a")
    os.symlink(tree.root / "real", tree.root / "b")
    imp(cache, mode, str(tree.root / "a"), "apct_tb")
    out = imp(cache, mode, str(tree.root / "b"), "apct_tb")
    expect = str(tree.root / "b" / "apct_tb.py")
    assert out["file"] == expect and out["tb"][-1] == expect
    if mode == "stat":
        assert out["stats"]["hits"] == 1, "same inode through another path: one entry"


# ---------------------------------------------------------------- stat mode sees changes


def test_stat_mode_an_edit_of_the_same_size_in_the_same_second_is_seen(cache, tree):
    p = tree("e/apct_edit.py", MODULE.format(v=1))
    root = str(tree.root / "e")
    assert imp(cache, "stat", root, "apct_edit")["value"] == 1
    st = os.stat(p)
    with open(p, "r+") as f:
        f.write(MODULE.format(v=2))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(p).st_size == st.st_size
    assert imp(cache, "stat", root, "apct_edit")["value"] == 2


def test_stat_mode_a_rename_deploy_is_seen(cache, tree):
    p = tree("d/apct_deploy.py", MODULE.format(v=1))
    root = str(tree.root / "d")
    assert imp(cache, "stat", root, "apct_deploy")["value"] == 1
    os.replace(tree("d/apct_deploy.py.tmp", MODULE.format(v=2)), p)
    assert imp(cache, "stat", root, "apct_deploy")["value"] == 2


def test_stat_mode_a_symlink_flip_is_seen(cache, tree):
    tree("releases/1/apct_flip.py", MODULE.format(v=1))
    tree("releases/2/apct_flip.py", MODULE.format(v=2))
    cur = tree.root / "current"
    os.symlink(tree.root / "releases" / "1", cur)
    assert imp(cache, "stat", str(cur), "apct_flip")["value"] == 1
    os.symlink(tree.root / "releases" / "2", tree.root / "next")
    os.replace(tree.root / "next", cur)
    out = imp(cache, "stat", str(cur), "apct_flip")
    assert out["value"] == 2 and out["stats"]["misses"] == 1


def test_no_stat_mode_serves_the_old_code_until_invalidate(cache, tree):
    p = tree("n/apct_ns.py", MODULE.format(v=1))
    root = str(tree.root / "n")
    assert imp(cache, "no-stat", root, "apct_ns")["value"] == 1
    os.replace(tree("n/apct_ns.py.tmp", MODULE.format(v=2)), p)
    assert imp(cache, "no-stat", root, "apct_ns")["value"] == 1
    assert cache.files.invalidate(p) == 1
    assert imp(cache, "no-stat", root, "apct_ns")["value"] == 2


# A child that imports argv[3] from argv[2] with every listing and open of a
# path under argv[2] failing, and every stat of a file there; stats of its
# directories are counted (each path hook checks once per process that its
# entry is a directory).  What else the import needs must come from the segment.
NO_SYSCALLS = """
import sys, json, posix, stat, io
seg, mode, root, name = sys.argv[1:5]
import apccache, apccache.opcode
apccache.opcode.install(apccache.Cache.attach(seg), mode, protect_s=0)
sys.path.insert(0, root)
touched, dirs = [], []
def guard(real, is_stat=False):
    def call(path, *a, **k):
        if isinstance(path, str) and path.startswith(root):
            if is_stat:
                st = real(path, *a, **k)
                if stat.S_ISDIR(st.st_mode):
                    dirs.append(path)
                    return st
            touched.append(real.__name__ + " " + path)
            raise PermissionError(13, "touched " + path)
        return real(path, *a, **k)
    return call
for fn in ("listdir", "open", "scandir"):
    setattr(posix, fn, guard(getattr(posix, fn)))
posix.stat = guard(posix.stat, is_stat=True)
io.open_code = guard(io.open_code)
try:
    m = __import__(name, fromlist=["*"])
    value, file = m.VALUE, m.__file__
except ImportError as e:
    value, file = None, str(e)
print(json.dumps({"value": value, "file": file, "touched": touched, "dirs": sorted(dirs),
                  "stats": apccache.opcode.installed().info()["process"]}))
"""


def test_no_stat_mode_finds_and_loads_a_known_module_with_no_system_call(cache, tree):
    tree("q/apct_quiet/__init__.py", "from .sub import VALUE\n")
    tree("q/apct_quiet/sub.py", "VALUE = 'quiet'\n")
    root = str(tree.root / "q")
    assert imp(cache, "no-stat", root, "apct_quiet")["value"] == "quiet"
    out = run_py(NO_SYSCALLS, cache.name, "no-stat", root, "apct_quiet")
    assert out["value"] == "quiet" and out["touched"] == []
    pkg = os.path.join(root, "apct_quiet")
    assert sorted(set(out["dirs"])) == [root, pkg]
    assert all(out["dirs"].count(d) <= 2 for d in (root, pkg)), "only the checks of zipimport's and our path hook"
    assert out["file"] == os.path.join(root, "apct_quiet", "__init__.py")
    assert out["stats"]["modules_found"] == 2 and out["stats"]["hits"] == 2
    stat_mode = run_py(NO_SYSCALLS, cache.name, "stat", root, "apct_quiet")
    assert stat_mode["value"] is None and stat_mode["touched"], "stat mode does look at the files"


def test_no_stat_mode_keeps_where_it_found_a_module_until_invalidate(cache, tree):
    p = tree("mv/apct_moved.py", MODULE.format(v="module"))
    root = str(tree.root / "mv")
    assert imp(cache, "no-stat", root, "apct_moved")["value"] == "module"
    os.unlink(p)
    tree("mv/apct_moved/__init__.py", MODULE.format(v="package"))
    assert imp(cache, "no-stat", root, "apct_moved")["value"] == "module"
    assert cache.files.invalidate(p) == 1, "the code entry; the module's location goes too, uncounted"
    out = imp(cache, "no-stat", root, "apct_moved")
    assert out["value"] == "package" and out["file"].endswith(os.path.join("apct_moved", "__init__.py"))


def _files_under(root, suffix=""):
    """{(st_dev, st_ino): path} of the files under root whose names end with
    suffix, site-packages left out (stat mode keys code by identity)."""
    found = {}
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if x != "site-packages"]
        for n in names:
            if n.endswith(suffix):
                st = os.stat(os.path.join(d, n))
                found[(st.st_dev, st.st_ino)] = os.path.join(d, n)
    return found


def test_a_module_with_a_syntax_error_raises_it_and_stores_nothing(cache, tree):
    bad = tree("s/apct_bad.py", "def f(:\n")
    p = run_py(IMPORTER, cache.name, "stat", str(tree.root / "s"), "apct_bad", check=False)
    assert p.returncode != 0 and "SyntaxError" in p.stderr and "apct_bad.py" in p.stderr
    # Nothing is stored for the module that did not compile.  Printing the
    # uncaught SyntaxError may import modules of the interpreter's own
    # through the hook (3.13's traceback printing imports traceback, ast,
    # tokenize, _colorize, ...); those are stored as every import is.  So
    # the table holds no entry for any file of the test's tree, and nothing
    # that is not a module of the standard library.
    entries = cache.files.info(limited=False)["entries"]
    assert all(e["mode"] == "stat" for e in entries), entries
    stored = {(e["dev"], e["ino"]) for e in entries}
    ours = _files_under(tree.root)
    assert bad in ours.values() and not stored & ours.keys()
    stdlib = _files_under(sysconfig.get_paths()["stdlib"], ".py")
    assert stored <= stdlib.keys(), [e for e in entries if (e["dev"], e["ino"]) not in stdlib]


# ---------------------------------------------------------------- the import system


def test_install_replaces_only_the_stock_hook_and_uninstall_restores_everything(cache):
    hooks, meta = list(sys.path_hooks), list(sys.meta_path)
    pic = dict(sys.path_importer_cache)
    opcode.install(cache)
    assert sys.meta_path == meta and all(a is b for a, b in zip(sys.meta_path, meta))
    assert len(sys.path_hooks) == len(hooks)
    changed = [i for i, (a, b) in enumerate(zip(sys.path_hooks, hooks)) if a is not b]
    assert len(changed) == 1
    assert not any(type(v) is importlib.machinery.FileFinder for v in sys.path_importer_cache.values())
    importlib.import_module("json.tool")
    assert any(isinstance(v, opcode.SharedCodeFinder) for v in sys.path_importer_cache.values())
    opcode.uninstall()
    assert len(sys.path_hooks) == len(hooks) and all(a is b for a, b in zip(sys.path_hooks, hooks))
    assert all(a is b for a, b in zip(sys.meta_path, meta)) and len(sys.meta_path) == len(meta)
    assert not any(isinstance(v, opcode.SharedCodeFinder) for v in sys.path_importer_cache.values())
    assert all(sys.path_importer_cache.get(k) is v for k, v in pic.items())
    assert opcode.installed() is None


def test_installs_finders_take_over_what_the_stock_ones_had_listed(cache):
    stock = {k: v for k, v in sys.path_importer_cache.items()
             if type(v) is importlib.machinery.FileFinder and v._path_cache}
    assert stock, "this process has imported from some directory already"
    opcode.install(cache)
    for k, old in stock.items():
        ours = sys.path_importer_cache[k]
        assert type(ours) is opcode.SharedCodeFinder and ours.path == old.path
        assert ours._path_cache == old._path_cache and ours._path_mtime == old._path_mtime
        assert ours._path_cache is not old._path_cache
    opcode.uninstall()
    assert all(sys.path_importer_cache[k] is v for k, v in stock.items())


def test_install_twice_is_a_no_op_and_another_cache_is_refused(cache, make_cache):
    opcode.install(cache)
    hooks = list(sys.path_hooks)
    opcode.install(cache)
    assert sys.path_hooks == hooks
    with pytest.raises(RuntimeError, match="already installed"):
        opcode.install(make_cache())


def test_foreign_loaders_are_left_alone(cache, tree):
    """zipimport, extension modules, sourceless .pyc, namespace packages,
    builtin and frozen modules, and a meta_path finder in front (pytest's
    assertion rewriter is one) keep their own loaders."""
    out = run_py(r"""
        import sys, json, importlib, importlib.abc, importlib.util, zipfile, os, py_compile
        import apccache, apccache.opcode
        seg, root = sys.argv[1:3]
        apccache.opcode.install(apccache.Cache.attach(seg), protect_s=0)
        zpath = os.path.join(root, "lib.zip")
        with zipfile.ZipFile(zpath, "w") as z:
            z.writestr("apct_zipped.py", "VALUE = 'zip'\n")
        os.makedirs(os.path.join(root, "nspkg", "apct_ns"))
        open(os.path.join(root, "nspkg", "apct_ns", "part.py"), "w").write("VALUE = 'ns'\n")
        src = os.path.join(root, "sl", "apct_sourceless.py")
        os.makedirs(os.path.dirname(src))
        open(src, "w").write("VALUE = 'pyc'\n")
        py_compile.compile(src, cfile=os.path.join(root, "sl", "apct_sourceless.pyc"))
        os.unlink(src)

        class Rewriter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path, target=None):
                if name == "apct_rewritten":
                    return importlib.util.spec_from_loader(name, self)
            def create_module(self, spec):
                return None
            def exec_module(self, module):
                module.VALUE = "rewritten"
        sys.meta_path.insert(0, Rewriter())
        sys.path[:0] = [zpath, os.path.join(root, "nspkg"), os.path.join(root, "sl")]
        import apct_zipped, apct_ns.part, apct_sourceless, apct_rewritten, _struct, zipimport
        import math
        print(json.dumps({
            "zip": type(apct_zipped.__loader__).__name__,
            "ns": type(apct_ns.__spec__.loader).__name__ if apct_ns.__spec__.loader else None,
            "ns_part": type(apct_ns.part.__loader__).__name__,
            "sourceless": type(apct_sourceless.__loader__).__name__,
            "rewritten": type(apct_rewritten.__loader__).__name__,
            "ext": type(_struct.__loader__).__name__ if hasattr(_struct, "__loader__") else None,
            "math": type(math.__spec__.loader).__name__ if math.__spec__ else None,
            "zipimport": zipimport.__spec__.origin,
            "values": [apct_zipped.VALUE, apct_ns.part.VALUE, apct_sourceless.VALUE, apct_rewritten.VALUE],
        }))
    """, cache.name, str(tree.root))
    assert out["values"] == ["zip", "ns", "pyc", "rewritten"]
    assert out["zip"] == "zipimporter"
    assert out["ns"] == "NamespaceLoader" and out["ns_part"] == "SharedCodeLoader"
    assert out["sourceless"] == "SourcelessFileLoader"
    assert out["rewritten"] == "Rewriter"
    assert out["ext"] in ("ExtensionFileLoader", "type", "BuiltinImporter")
    assert out["math"] in ("ExtensionFileLoader", "BuiltinImporter")
    assert out["zipimport"] == "frozen"


def test_pytests_assertion_rewriter_stays_first_in_meta_path(cache):
    rewriters = [f for f in sys.meta_path if type(f).__name__ == "AssertionRewritingHook"]
    before = list(sys.meta_path)
    opcode.install(cache)
    assert list(sys.meta_path) == before
    if rewriters:
        assert sys.meta_path.index(rewriters[0]) == before.index(rewriters[0])


def test_a_segment_writable_by_others_or_owned_by_another_user_is_refused(cache):
    path = f"/dev/shm/{cache.name}"
    hooks = list(sys.path_hooks)
    os.chmod(path, 0o606)
    with pytest.raises(UnsafeSegmentError, match="0606"):
        opcode.install(cache)
    os.chmod(path, 0o600)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
        try:
            with pytest.raises(UnsafeSegmentError, match="owned by uid 65534"):
                opcode.install(cache)
        finally:
            os.chown(path, 0, 0)
    assert sys.path_hooks == hooks and opcode.installed() is None


# ---------------------------------------------------------------- children, warm, supervisor


def test_a_spawned_child_switches_the_hook_on_from_the_environment(cache, tree):
    tree("c/apct_child.py", MODULE.format(v="child"))
    code = """
        import sys, json, apccache.opcode
        fc = apccache.opcode.install_from_env()
        sys.path.insert(0, sys.argv[1])
        import apct_child
        print(json.dumps({"mode": fc.mode, "loader": type(apct_child.__loader__).__name__}))
    """
    out = run_py(code, str(tree.root / "c"), env=opcode.env(cache, "no-stat"))
    assert out == {"mode": "no-stat", "loader": "SharedCodeLoader"}
    assert opcode.env(cache.name) == {"APCCACHE_OPCODE": f"{cache.name}:stat"}
    p = run_py("import apccache.opcode, json; print(json.dumps(apccache.opcode.install_from_env() is None))",
               env={"APCCACHE_OPCODE": "apctest-files-no-such-segment"}, check=False)
    assert p.returncode == 0 and p.stdout.strip() == "true" and "does not exist" in p.stderr


def test_python_m_apccache_opcode_run_installs_the_hook_and_runs_the_script(cache, tree):
    tree("r/apct_run.py", MODULE.format(v="run"))
    script = tree("r/main.py", """
        import sys, json, apccache.opcode, apct_run
        print(json.dumps({"argv": sys.argv, "loader": type(apct_run.__loader__).__name__,
                          "installed": apccache.opcode.installed() is not None}))
    """)
    out = run_py("import runpy, sys; sys.argv[0] = 'x'; runpy.run_module('apccache.opcode', run_name='__main__')",
                 "run", script, "arg1", env=opcode.env(cache))
    assert out == {"argv": [script, "arg1"], "loader": "SharedCodeLoader", "installed": True}


def test_warm_compiles_a_tree_without_executing_it(cache, tree):
    marker = tree.root / "executed"
    tree("app/apct_warm/__init__.py", f"open({str(marker)!r}, 'w').close()\nVALUE = 'warm'\n")
    tree("app/apct_warm/sub.py", "X = 1\n")
    tree("app/apct_warm/broken.py", "def f(:\n")
    s = opcode.warm([str(tree.root / "app")], cache, "stat")
    assert not marker.exists()
    assert s["files"] == 3 and s["stored"] == 2 and len(s["errors"]) == 1 and "SyntaxError" in s["errors"][0][1]
    assert opcode.warm([str(tree.root / "app")], cache, "stat")["present"] == 2
    out = imp(cache, "stat", str(tree.root / "app"), "apct_warm", "no-compile")
    assert out["value"] == "warm" and out["stats"]["misses"] == 0


def test_supervisor_config_is_validated_and_sets_everything_up(cache, tree, monkeypatch):
    assert opcode.parse_supervisor_config({}) == {"enabled": False, "mode": "stat", "warm": []}
    with pytest.raises(ValueError, match=r"\[opcode\]\.mode"):
        opcode.parse_supervisor_config({"mode": "fast"})
    with pytest.raises(ValueError, match="unknown key 'warmup'"):
        opcode.parse_supervisor_config({"warmup": []})
    with pytest.raises(ValueError, match="enabled must be true or false"):
        opcode.parse_supervisor_config({"enabled": "yes"})
    assert opcode.setup_for_supervisor(cache, {"enabled": False}) is None and opcode.installed() is None
    tree("app/apct_sup.py", "X = 1\n")
    monkeypatch.delenv(opcode.ENV_VAR, raising=False)
    s = opcode.setup_for_supervisor(cache, {"enabled": True, "mode": "no-stat", "warm": ["app"]},
                                    base_dir=str(tree.root))
    assert s["stored"] == 1 and s["mode"] == "no-stat"
    assert opcode.installed().mode == "no-stat"
    assert os.environ[opcode.ENV_VAR] == f"{cache.name}:no-stat"


def test_zipfile_is_importable_while_installed(cache):
    """A smoke test of the hook in this process: stdlib imports keep working."""
    opcode.install(cache)
    sys.modules.pop("zipfile", None)
    m = importlib.import_module("zipfile")
    assert m.ZipFile is not None
    sys.modules["zipfile"] = zipfile
