"""The opcode cache: an import hook that serves code objects from the segment.

With ``install(cache)``, importing a pure-Python source module takes its code
object from the segment's file cache (``apccache.files``): the first process
to import a module compiles it (or reads its valid ``.pyc``) and stores the
marshalled code; every other process unmarshals it from shared memory, with
no compile and no ``.pyc`` read.  N workers compile each module once, even
where ``__pycache__`` is read-only or absent.

>>> import apccache, apccache.opcode, os
>>> c = apccache.Cache.create(f"doctest-opcode-{os.getpid()}", size=8 << 20)
>>> apccache.opcode.install(c)
>>> import json.tool                       # served from (and stored in) the segment
>>> apccache.opcode.uninstall()            # sys.path_hooks is as it was
>>> c.unlink(); c.close()

HOW IT WORKS

The stock path hook (``FileFinder`` with the stock loaders) is replaced, at
its own position in ``sys.path_hooks``, by a ``FileFinder`` subclass whose
loader for ``.py`` files is ``SharedCodeLoader``, a ``SourceFileLoader``
that overrides only ``get_code``.  The stock finders in
``sys.path_importer_cache`` are replaced by ours (which take over what they
had read of their directories).  Everything else is the stock machinery, and nothing that
is not the stock source loader is wrapped: ``sys.meta_path`` is not touched
(pytest's assertion rewriter, frozen and builtin modules, editable-install
finders keep working in front of us), zipimport is another path hook,
extension modules and sourceless ``.pyc`` files keep their stock loaders,
and namespace packages have no loader at all.  ``uninstall()`` puts the
stock hook and the stock finders back.

Keys follow the file cache's mode.  In stat mode a module is looked up by
``(st_dev, st_ino)`` of its source and is valid while its mtime, size and
ctime match, so an edit, a rename-deploy or a symlink flip is seen by the
next import.  In no-stat mode it is looked up by its absolute path with no
system call, and so is the module itself: where a module was found (its
directory and name, to its source path) is kept in the segment too, so the
finder neither stats nor lists the directory.  Changes are not seen until
``invalidate``/``reset`` of the file cache, or a new segment: not an edit,
and not a module added where it would shadow a known one.  Code keys are namespaced by the bytecode magic
number, ``sys.implementation.cache_tag``, the optimisation level, the loader
kind and the mode.  A code object served to a process that imports the file
through another path (a symlink) gets that path as ``co_filename``, so
tracebacks name the file that was imported.

A miss never waits on a lock: a process that finds another compiling the
same module waits at most ``max_wait`` seconds for it, then compiles itself.
Anything that goes wrong with the segment itself (full, corrupt) makes the
import fall back to the stock loader's behaviour; it never fails an import.

CHILD PROCESSES

Forked children inherit the hook.  Spawned or exec'd children get it by
setting ``APCCACHE_OPCODE=<segment name>[:stat|:no-stat]`` (``env()`` makes
the pair) and either calling ``install_from_env()`` first thing, or running
under ``python -m apccache.opcode run [-m module | script] [args]``, which
does that and then runs the target like ``python -m``/``python script``.

SECURITY

Code from the segment is executed.  ``install`` refuses a segment that is
not owned by the current user or that group or others may write
(``UnsafeSegmentError``, the same class as ``apccache.UntrustedSegmentError``),
since whoever can write it could run code in every process that imports
through it.  The check (``fstat`` of the mapped descriptor) is made again
before each module's code is taken from the segment; a segment that fails
it then is not used, and the stock loader imports the module.
"""
import os
import sys
import warnings
from importlib.machinery import FileFinder, SourceFileLoader

from . import _filekeys
from .errors import CacheError, CacheFullError
from .files import FileCache, UnsafeSegmentError, check_segment_for_code, normalize_mode

__all__ = [
    "ENV_VAR",
    "SharedCodeFinder",
    "SharedCodeLoader",
    "UnsafeSegmentError",
    "env",
    "install",
    "install_from_env",
    "installed",
    "parse_supervisor_config",
    "setup_for_supervisor",
    "uninstall",
    "warm",
]

#: The environment variable that switches the hook on in a child process.
ENV_VAR = "APCCACHE_OPCODE"


class _State:
    """What install() changed, so uninstall() can undo exactly that."""

    def __init__(self, cache, files, stock_hook, our_hook, removed, owns_cache):
        self.cache = cache
        self.files = files
        self.stock_hook = stock_hook
        self.our_hook = our_hook
        self.removed = removed  # path entry -> the stock finder taken out of sys.path_importer_cache
        self.owns_cache = owns_cache
        self.modules = _ModuleMemo(files) if files.mode == "no-stat" else None
        self.fallbacks = 0


_state = None


class _ModuleMemo:
    """Where the no-stat finder found each module, kept in the segment so
    that the next process finds it with no system call.

    The key is ``module_key(directory, module name, code namespace)`` (see
    ``apccache._filekeys``); the value is b"m" (a module) or b"p" (a
    package) and the path of its source.  ``FileCache.invalidate(source)``
    drops it with the module's code.  Counted in the file cache's
    per-process counters (modules_found, skipped_full)."""

    def __init__(self, files):
        self.files = files

    def key(self, directory, name):
        """The key of module name in directory, or None if it is too long."""
        return _filekeys.module_key(directory, name, self.files._code_ns)

    def find(self, directory, name):
        """(source path, is_package) where an earlier import found module
        name in directory, or None."""
        files = self.files
        key = self.key(directory, name)
        found = files._table.get(key) if key is not None else None
        if type(found) is not bytes or found[:1] not in (b"m", b"p"):
            return None
        # Which file is imported is as much the segment's say as the code
        # itself: check it now, as before running code (one fstat per hit).
        try:
            check_segment_for_code(files._cache)
        except UnsafeSegmentError:
            return None  # the stock finder looks for itself
        files._stats["modules_found"] += 1
        return os.fsdecode(found[1:]), found[:1] == b"p"

    def remember(self, directory, name, origin, is_package):
        """Record that module name in directory is the source at origin."""
        files = self.files
        key = self.key(directory, name)
        if key is not None:
            try:
                files._table.add(key, (b"p" if is_package else b"m") + os.fsencode(origin))
            except CacheFullError:
                files._stats["skipped_full"] += 1


class SharedCodeLoader(SourceFileLoader):
    """The stock source loader, except that get_code takes the code object
    from the segment (and stores it there on a miss).  Once the hook is
    uninstalled it behaves exactly like SourceFileLoader."""

    def get_code(self, fullname):
        st = _state
        if st is None:
            return super().get_code(fullname)
        try:
            return st.files._code(self.path, self)
        except (OSError, CacheError):
            # A vanished file, or a segment problem: the stock loader gives
            # the stock behaviour (and the stock error).
            st.fallbacks += 1
            return super().get_code(fullname)


class SharedCodeFinder(FileFinder):
    """The stock FileFinder, made by the hook's path hook, so that its
    finders can be told from the stock ones.

    In no-stat mode it also remembers, in the segment, where it found each
    source module, so that in the next process finding it takes no system
    call either (the stock finder stats the directory, lists it and stats
    the file)."""

    def find_spec(self, fullname, target=None):
        st = _state
        if st is None or st.modules is None:
            return super().find_spec(fullname, target)
        name = fullname.rpartition(".")[2]
        found = st.modules.find(self.path, name)
        if found is not None:
            origin, is_package = found
            return self._get_spec(SharedCodeLoader, fullname, origin,
                                  [os.path.dirname(origin)] if is_package else None, target)
        spec = super().find_spec(fullname, target)
        if spec is not None and type(spec.loader) is SharedCodeLoader and spec.origin:
            st.modules.remember(self.path, name, spec.origin, spec.submodule_search_locations is not None)
        return spec

    def __repr__(self):
        return f"SharedCodeFinder({self.path!r})"


def _successor(stock, details):
    """Our finder for a stock finder's directory.  It takes over what the
    stock one has read of the directory (its listing and mtime), so the
    directories of modules imported before install are not listed again."""
    ours = SharedCodeFinder(stock.path, *details)
    if all(hasattr(f, a) for f in (stock, ours) for a in ("_path_mtime", "_path_cache", "_relaxed_path_cache")):
        ours._path_cache = set(stock._path_cache)
        ours._relaxed_path_cache = set(stock._relaxed_path_cache)
        ours._path_mtime = stock._path_mtime
    return ours


def _stock_hook_index():
    """(index, loader_details) of the stock FileFinder hook in sys.path_hooks."""
    for i, hook in enumerate(sys.path_hooks):
        code = getattr(hook, "__code__", None)
        if code is None or hook.__closure__ is None or not hook.__qualname__.startswith("FileFinder.path_hook"):
            continue
        cells = dict(zip(code.co_freevars, (c.cell_contents for c in hook.__closure__)))
        if cells.get("cls") is FileFinder and "loader_details" in cells:
            return i, cells["loader_details"]
    return None, None


def installed():
    """The FileCache the hook serves from, or None if it is not installed."""
    return _state.files if _state is not None else None


def install(cache, mode="stat", *, protect_s=2, revalidate_s=0, max_wait=0.5, _owns_cache=False):
    """Serve the code of imported source modules from cache's segment.

    mode: 'stat' (validate each module against its file: one stat per
    import) or 'no-stat' (no system call on a hit; changes need
    ``installed().invalidate(path)`` or ``reset()``).  protect_s,
    revalidate_s and max_wait: as for ``apccache.files.FileCache``.

    Raises UnsafeSegmentError if the segment is not owned by this user or is
    writable by group or others; RuntimeError if the hook is installed
    already (on another cache or mode) or sys.path_hooks has no stock
    FileFinder hook to replace.  Installing again with the same cache and
    mode does nothing."""
    global _state
    mode = normalize_mode(mode)
    if _state is not None:
        if _state.cache is cache and _state.files.mode == mode:
            return
        raise RuntimeError(
            f"the opcode cache is already installed (segment {_state.cache.name!r}, "
            f"mode {_state.files.mode}): call apccache.opcode.uninstall() first"
        )
    check_segment_for_code(cache)
    files = FileCache(cache, mode=mode, protect_s=protect_s, revalidate_s=revalidate_s, max_wait=max_wait)
    i, details = _stock_hook_index()
    if i is None:
        raise RuntimeError(
            "sys.path_hooks has no stock FileFinder hook to replace (another import hook replaced "
            "it?): install apccache.opcode before it, or without it"
        )
    ours = tuple((SharedCodeLoader if loader is SourceFileLoader else loader, suffixes)
                 for loader, suffixes in details)
    if not any(loader is SharedCodeLoader for loader, _ in ours):
        raise RuntimeError("the stock FileFinder hook has no SourceFileLoader: nothing to serve")
    stock_hook = sys.path_hooks[i]
    our_hook = SharedCodeFinder.path_hook(*ours)
    pic = sys.path_importer_cache
    removed = {k: v for k, v in pic.items() if type(v) is FileFinder}
    _state = _State(cache, files, stock_hook, our_hook, removed, _owns_cache)
    sys.path_hooks[i] = our_hook
    for k, v in removed.items():
        pic[k] = _successor(v, ours)


def uninstall():
    """Undo install(): the stock hook goes back to its position in
    sys.path_hooks and the stock finders back into sys.path_importer_cache
    (ours are removed).  Modules imported meanwhile stay imported; their
    loaders behave like the stock one from now on.  Does nothing if the
    hook is not installed."""
    global _state
    st = _state
    if st is None:
        return
    _state = None
    hooks = sys.path_hooks
    for i, h in enumerate(hooks):
        if h is st.our_hook:
            hooks[i] = st.stock_hook
            break
    pic = sys.path_importer_cache
    for k, v in list(pic.items()):
        if isinstance(v, SharedCodeFinder):
            del pic[k]
    for k, v in st.removed.items():
        pic.setdefault(k, v)
    if st.owns_cache:
        st.cache.close()


def env(cache, mode="stat"):
    """{ENV_VAR: value}: the environment entry that makes install_from_env()
    in a child install the hook on cache (a Cache or a segment name)."""
    name = cache if isinstance(cache, str) else cache.name
    return {ENV_VAR: f"{name}:{normalize_mode(mode)}"}


def _parse_env(value):
    name, sep, mode = value.rpartition(":")
    if not sep or mode not in ("stat", "no-stat", "nostat", "no_stat"):
        name, mode = value, "stat"
    if not name:
        raise ValueError(f"{ENV_VAR}={value!r}: expected <segment name>[:stat|:no-stat]")
    return name, normalize_mode(mode)


def install_from_env(environ=None):
    """Install the hook if APCCACHE_OPCODE=<segment>[:mode] is set; returns
    the FileCache it serves from, or None when the variable is unset or
    empty, or the segment does not exist (with a RuntimeWarning: the
    process then imports as usual).  An unsafe segment raises
    UnsafeSegmentError; an already installed hook on the same segment and
    mode is kept."""
    from .cache import Cache

    value = (os.environ if environ is None else environ).get(ENV_VAR, "")
    if not value:
        return None
    name, mode = _parse_env(value)
    if _state is not None and _state.cache.name == name and _state.files.mode == mode:
        return _state.files
    try:
        cache = Cache.attach(name)
    except FileNotFoundError:
        warnings.warn(f"{ENV_VAR}: segment {name!r} does not exist; imports are not cached",
                      RuntimeWarning, stacklevel=2)
        return None
    try:
        install(cache, mode, _owns_cache=True)
    except BaseException:
        cache.close()
        raise
    return _state.files


def _iter_sources(paths):
    for p in paths:
        p = os.path.abspath(os.fspath(p))
        if os.path.isdir(p):
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
                for n in sorted(names):
                    if n.endswith(".py"):
                        yield os.path.join(root, n)
        elif p.endswith(".py") and os.path.isfile(p):
            yield p
        else:
            raise FileNotFoundError(f"warm: {p!r} is neither a directory nor a .py file")


def warm(paths, cache=None, mode=None):
    """Compile every .py file under paths (files or directories) into the
    cache without executing anything, and return a summary dict: files,
    stored, present (already valid in the cache), skipped (modified within
    protect_s, or changed while read), errors ([(path, message)] for files
    that do not compile or cannot be read).

    cache and mode default to the installed hook's.  In no-stat mode, name
    the tree by the same path importers have on sys.path: that path is the
    key.  Valid .pyc files are used instead of compiling; none is written."""
    if cache is None:
        if _state is None:
            raise RuntimeError("warm() needs a cache: pass one, or install the hook first")
        cache = _state.cache
        mode = mode or _state.files.mode
    check_segment_for_code(cache)
    files = FileCache(cache, mode=mode or "stat")
    s = files._stats
    out = {"files": 0, "stored": 0, "present": 0, "skipped": 0, "errors": []}
    for path in _iter_sources(paths):
        out["files"] += 1
        before = dict(s)
        try:
            files._code(path)
        except (SyntaxError, ValueError, OSError, UnicodeDecodeError) as e:
            out["errors"].append((path, f"{type(e).__name__}: {e}"))
            continue
        if s["hits"] > before["hits"]:
            out["present"] += 1
        elif s["stored"] > before["stored"] or s["waited_for_other"] > before["waited_for_other"]:
            out["stored"] += 1
        else:
            out["skipped"] += 1
    return out


# ---------------------------------------------------------------- supervisor

_CONFIG_KEYS = {"enabled": False, "mode": "stat", "warm": []}


def parse_supervisor_config(table, where="[opcode]"):
    """Validate the supervisor's ``[opcode]`` table and return it complete::

        [opcode]
        enabled = false          # serve workers' imports from the segment
        mode = "stat"            # or "no-stat"
        warm = ["app"]           # trees compiled into the segment before forking,
                                 # relative to the config file's folder

    Raises ValueError naming the key, the rule and the value given."""
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table (got {type(table).__name__})")
    unknown = sorted(set(table) - set(_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: enabled, mode, warm)")
    out = dict(_CONFIG_KEYS, **table)
    if not isinstance(out["enabled"], bool):
        raise ValueError(f"{where}.enabled must be true or false (got {out['enabled']!r})")
    try:
        out["mode"] = normalize_mode(out["mode"])
    except ValueError:
        raise ValueError(f"{where}.mode must be \"stat\" or \"no-stat\" (got {out['mode']!r})") from None
    w = out["warm"]
    if isinstance(w, str):
        w = [w]
    if not isinstance(w, list) or not all(isinstance(p, str) and p for p in w):
        raise ValueError(f"{where}.warm must be a list of paths (got {out['warm']!r})")
    out["warm"] = list(w)
    return out


def setup_for_supervisor(cache, config, base_dir=None):
    """What the supervisor's master runs, after creating the segment and
    before forking any worker, for its ``[opcode]`` table (see
    parse_supervisor_config).  When enabled: installs the hook in the master
    (forked workers inherit it), sets APCCACHE_OPCODE in os.environ (so
    processes the workers spawn can call install_from_env()), and warms
    the listed trees (relative ones against base_dir, by default the
    current directory).  Returns None when disabled, else the warm summary
    (see warm()), with 'mode' added."""
    cfg = parse_supervisor_config(config)
    if not cfg["enabled"]:
        return None
    install(cache, cfg["mode"])
    os.environ.update(env(cache, cfg["mode"]))
    base = base_dir or os.getcwd()
    paths = [p if os.path.isabs(p) else os.path.join(base, p) for p in cfg["warm"]]
    summary = warm(paths, cache, cfg["mode"]) if paths else {
        "files": 0, "stored": 0, "present": 0, "skipped": 0, "errors": []}
    summary["mode"] = cfg["mode"]
    return summary


# ---------------------------------------------------------------- launcher

_USAGE = """usage: python -m apccache.opcode run [-m module | script] [args...]
       python -m apccache.opcode warm SEGMENT [--mode stat|no-stat] PATH...

run:  install the hook from APCCACHE_OPCODE=<segment>[:mode], then run the
      module or script as python would (sys.argv is the target's).
warm: compile every .py file under PATH into SEGMENT's file cache."""


def main(argv=None):
    """The ``python -m apccache.opcode`` launcher."""
    import runpy

    from . import opcode as real  # under -m this file is __main__: use the real module's state
    from .cache import Cache

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        if not rest:
            print(_USAGE, file=sys.stderr)
            return 2
        real.install_from_env()
        if rest[0] == "-m":
            if len(rest) < 2:
                print(_USAGE, file=sys.stderr)
                return 2
            sys.argv = rest[1:]
            runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = rest
            sys.path.insert(0, os.path.dirname(os.path.abspath(rest[0])))
            runpy.run_path(rest[0], run_name="__main__")
        return 0
    if cmd == "warm":
        mode = "stat"
        if "--mode" in rest:
            i = rest.index("--mode")
            mode = rest[i + 1] if i + 1 < len(rest) else ""
            del rest[i:i + 2]
        if len(rest) < 2:
            print(_USAGE, file=sys.stderr)
            return 2
        with Cache.attach(rest[0]) as c:
            s = real.warm(rest[1:], c, mode)
        print(f"Files: {s['files']}\nStored: {s['stored']}\nPresent: {s['present']}\n"
              f"Skipped: {s['skipped']}\nErrors: {len(s['errors'])}")
        for path, msg in s["errors"]:
            print(f"  {path}: {msg}")
        return 1 if s["errors"] else 0
    print(_USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
