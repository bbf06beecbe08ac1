"""The file-key cache: values derived from a file, shared by every process.

APC had two caches in one segment: the user cache and the system cache of
compiled files, keyed by the file.  This is the second one.  It lives in the
segment's own file slot table (``Cache.file_table``), so ``Cache.clear()``
never drops compiled code and ``Cache.info()`` does not count it::

    code = c.files.compile("app/views.py")         # compiled once for all processes
    cfg = c.files.load("app.toml", tomllib.loads)  # loader(bytes) -> value, shared
    c.files.invalidate("app.toml"); c.files.reset(); c.files.info()

KEYS AND MODES

Every key is namespaced by what makes its value valid, so processes that
disagree on any of it never see each other's entries: for code, the bytecode
magic number, ``sys.implementation.cache_tag``, the optimisation level and
the loader kind; for ``load()``, the loader's name and the serializer; for
both, the mode.  Then the file's identity, which depends on the mode (APC's
``apc.stat``):

- **stat** (the default): the identity is ``(st_dev, st_ino)`` of the file
  the path names *now* (``stat`` follows symlinks, so flipping
  ``current -> releases/N`` reaches another file and another entry).  An
  entry is valid while ``(st_mtime_ns, st_size, st_ctime_ns)`` match, so an
  edit in place, even one that keeps size and mtime, is seen by the next
  lookup.  One ``stat`` per lookup, or none for ``revalidate_s`` seconds
  after this process last checked the path (OPcache's revalidate_freq).
- **no-stat**: the identity is the absolute path, resolved through
  ``search_path`` when it is relative (like APC's include_path; the import
  hook uses the path ``sys.path`` gave).  A hit makes no system call at all.
  Nothing notices a change on disk: after a deploy call ``invalidate(path)``
  or ``reset()``, or restart with a new segment.

WRITES

A value is computed from one read of the file, taken between two ``fstat``
calls on the open file: if the file changed during the read, or names
another file than the lookup saw, the value is returned but not stored.  A
file modified less than ``protect_s`` seconds ago (APC's
file_update_protection) is not stored either: it may still be being
written.  Both are counted in ``info()``.

Stores are add-if-absent, made through ``FileTable.entry``: when several
processes miss the same file at once, one computes it and the others wait
for that key only, and for at most ``max_wait`` seconds, after which they
compute it themselves.  No lock is held while anything is computed, so a
slow or dead process never blocks another.  A full cache never fails a
lookup, nor does a key longer than the table takes (a namespace or path of
tens of kilobytes): the value is returned unstored and the skip counted.

WHERE THINGS ARE

This module is the lookups and the write protocol above.  The rest is in
modules of one job each: the keys (every kind of key in the file table,
built and read back in one place) in ``apccache._filekeys``; what an entry
holds (header, validators, payload) in ``apccache._fileentry``; reading and
writing ``.pyc`` files in ``apccache._pyc``; and the import hook, with its
record of where it found each module, in ``apccache.opcode``.

SECURITY

A code object taken from the segment is run.  ``compile()`` (and the import
hook in ``apccache.opcode``) refuse a segment that is not owned by the
current user or that group or others may write: see
:func:`check_segment_for_code`.  Values of ``load()`` other than bytes and
str go through the cache's serializer; with the default pickle, whoever can
write the segment can run code in every process that loads from it (see
``apccache.serializers``).

>>> import apccache, os
>>> c = apccache.Cache.create(f"doctest-files-{os.getpid()}", size=1 << 20)
>>> p = f"/tmp/doctest-files-{os.getpid()}.txt"
>>> _ = open(p, "w").write("hello")
>>> c.files.configure(protect_s=0)
>>> c.files.load(p, bytes.upper)
b'HELLO'
>>> c.files.info()["num_entries"]
1
>>> c.unlink(); c.close(); os.unlink(p)
"""
import marshal
import os
import sys
import time

from . import _filekeys, _pyc
from ._fileentry import CODE, SERIALIZED, STALE, UNREADABLE, Serialized, decode, encode, header_room
from ._fileentry import fix_filename  # noqa: F401  (apccache.files.fix_filename, as before)
from ._fileentry import validators as _validators
from ._shm import check_trusted
from .errors import CacheFullError, UntrustedSegmentError

__all__ = ["FileCache", "UnsafeSegmentError", "check_segment_for_code", "code_namespace", "MODES"]

#: The two key modes, and the spellings accepted for them.
MODES = ("stat", "no-stat")
_MODE_ALIASES = {"stat": "stat", "no-stat": "no-stat", "nostat": "no-stat", "no_stat": "no-stat"}

_UNSET = object()  # configure(): an argument left out
_ABSENT = object()  # a lookup: no entry under the key


#: The error of a segment that code is not run from: the same class as
#: ``apccache.UntrustedSegmentError`` (this name is kept for existing code).
UnsafeSegmentError = UntrustedSegmentError


class _NoStore(Exception):
    """Raised inside an entry() generator: return the value, store nothing."""


def normalize_mode(mode):
    """'stat' or 'no-stat' for any accepted spelling; ValueError otherwise."""
    m = _MODE_ALIASES.get(mode) if isinstance(mode, str) else None
    if m is None:
        raise ValueError(f"mode must be 'stat' or 'no-stat' (got {mode!r})")
    return m


def code_namespace(kind="source", mode="stat"):
    """The namespace of code entries: what a code object's validity depends
    on besides the file.  Two processes share code entries only when all of
    it is equal."""
    return (
        f"code|{_pyc.MAGIC.hex()}|{sys.implementation.cache_tag}|"
        f"O{sys.flags.optimize}|{kind}|{normalize_mode(mode)}"
    ).encode()


def check_segment_for_code(cache):
    """Raise UnsafeSegmentError (that is, UntrustedSegmentError) unless the
    segment is a regular file owned by the current user and writable by
    nobody else.

    Code taken from the segment is executed, so anyone who can write the
    segment could run code in every process using it.  The check is
    ``fstat`` of the descriptor that is mapped (never a path, which could
    name another file by now), and it is made each time code is about to be
    taken from the segment, not once: one system call per module load.
    ``trust_group`` does not extend to code."""
    try:
        st = cache.fstat()
    except OSError as e:
        raise UnsafeSegmentError(
            f"cannot check who may write segment {cache.name!r} ({e.strerror}): refusing to run code from it"
        ) from None
    check_trusted(st, cache.name, "owner")


def _same_file(a, b):
    return (a.st_dev, a.st_ino, a.st_mtime_ns, a.st_size, a.st_ctime_ns) == (
        b.st_dev, b.st_ino, b.st_mtime_ns, b.st_size, b.st_ctime_ns)


def _fspath(path):
    p = os.fspath(path)
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    if not isinstance(p, str):
        raise TypeError(f"path must be str, bytes or os.PathLike, not {type(path).__name__}")
    if not p or "\0" in p:
        raise ValueError(f"invalid path {path!r}")
    return p


class FileCache:
    """The file-key cache of one segment.  ``Cache.files`` returns the one
    of its handle; see the module docstring for keys, modes and writes.

    mode: 'stat' (default) or 'no-stat'.  protect_s: files modified less
    than this many seconds ago are not stored (default 2).  revalidate_s:
    in stat mode, trust what this process last saw of a path for that many
    seconds without a stat (default 0: stat every time).  search_path: the
    directories that resolve a relative path in no-stat mode (default: the
    current directory).  max_wait: how long a process waits for another
    that is computing the same file before it computes the value itself
    (default 0.5 s).

    Counters under 'process' in info() are this process's; the others are
    the file table's, shared by all processes.
    """

    def __init__(self, cache, *, mode="stat", protect_s=2, revalidate_s=0, search_path=None, max_wait=0.5):
        self._cache = cache
        self._table = cache.file_table
        self._memo = {}  # (path, namespace) -> (key, validators, monotonic time): revalidate_s
        self._resolved = {}  # (relative path, search path) -> absolute path: no-stat
        self._stats = dict.fromkeys(
            ("hits", "misses", "stale", "stored", "skipped_too_new", "skipped_changed",
             "skipped_full", "skipped_key_too_long", "unreadable_entries", "waited_for_other",
             "modules_found"), 0)
        self.mode = "stat"
        self._code_ns = code_namespace("source", "stat")
        self.protect_s = 2
        self.revalidate_s = 0
        self.search_path = None
        self.max_wait = 0.5
        self.configure(mode=mode, protect_s=protect_s, revalidate_s=revalidate_s,
                       search_path=search_path, max_wait=max_wait)

    # ------------------------------------------------------------ settings

    def configure(self, *, mode=None, protect_s=None, revalidate_s=None, search_path=_UNSET, max_wait=None):
        """Change settings of this handle (other processes keep theirs).
        Arguments left out stay as they are; search_path=None means the
        current directory."""
        if mode is not None:
            mode = normalize_mode(mode)
        for name, v in (("protect_s", protect_s), ("revalidate_s", revalidate_s), ("max_wait", max_wait)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0):
                raise ValueError(f"{name} must be a number of seconds >= 0 (got {v!r})")
        if search_path is not _UNSET and search_path is not None:
            if isinstance(search_path, (str, bytes)):
                raise TypeError("search_path must be a list of directories, not one string")
            search_path = tuple(_fspath(d) for d in search_path)
        if mode is not None and mode != self.mode:
            self._memo.clear()
            self.mode = mode
            self._code_ns = code_namespace("source", mode)
        if protect_s is not None:
            self.protect_s = protect_s
        if revalidate_s is not None:
            self.revalidate_s = revalidate_s
            self._memo.clear()
        if search_path is not _UNSET:
            self.search_path = search_path
            self._resolved.clear()
        if max_wait is not None:
            self.max_wait = max_wait

    # ------------------------------------------------------------ the API

    def compile(self, path):
        """The code object of the Python source file at path, as
        ``compile(source, path, 'exec', dont_inherit=True)`` at this
        interpreter's optimisation level makes it; compiled once for all
        processes (or taken from a valid ``.pyc``).  co_filename is the
        absolute path.  SyntaxError propagates and nothing is stored.
        UnsafeSegmentError if the segment is not safe to run code from."""
        return self._code(self._abspath(path))

    def load(self, path, loader, *, kind=None):
        """``loader(data)`` of the file's bytes, computed once for all
        processes and returned from the cache while the file is unchanged
        (stat mode) or until invalidated (no-stat mode).

        Entries are keyed by the loader's name (module and qualified name)
        unless ``kind`` names them: pass kind for a lambda or a local
        function, whose names are not unique.  bytes and str values are
        stored as they are, others with the cache's serializer.  What the
        loader raises propagates, and nothing is stored."""
        if not callable(loader):
            raise TypeError(f"loader must be callable, not {type(loader).__name__}")
        if kind is None:
            module = getattr(loader, "__module__", None) or getattr(
                getattr(loader, "__objclass__", None), "__module__", None)
            qualname = getattr(loader, "__qualname__", None)
            name = f"{module}.{qualname}"
            if module is None or qualname is None or "<" in name:
                raise ValueError(
                    f"loader {loader!r} has no unique name ({name}): pass kind='...' to name its entries"
                )
            kind = name
        elif not isinstance(kind, str) or not kind:
            raise TypeError(f"kind must be a non-empty str (got {kind!r})")
        ser = self._cache.serializer
        ns = f"load|{kind}|{getattr(ser, 'name', type(ser).__name__)}|{self.mode}".encode()
        return self._lookup(self._abspath(path), ns, SERIALIZED, lambda data, p, st: (lambda v: (v, v))(loader(data)))

    def invalidate(self, path):
        """Drop every entry made from path (code and loaded values, in both
        modes, all namespaces), for all processes.  Returns how many.  The
        next lookup reads the file again.  The no-stat import hook's record
        of where it found the module goes too (not counted): the next
        import looks for it again."""
        p = _fspath(path)
        prefixes = []  # keys with no namespace: the prefixes of a file's keys (see _filekeys)
        modules = []
        for cand in self._candidates(p):
            prefixes.append(_filekeys.path_key(cand, b""))
            modules.append(_filekeys.module_key_of_source(cand))
            try:
                st = os.stat(cand)
            except OSError:
                continue
            prefixes.append(_filekeys.stat_key(st, b""))
            for k in [k for k in self._memo if k[0] == cand]:
                del self._memo[k]
        if not os.path.isabs(p):
            prefixes.append(_filekeys.resolve_key(p, ()))
            for k in [k for k in self._resolved if k[0] == p]:
                del self._resolved[k]
        n = 0
        prefixes = tuple(k for k in prefixes if k is not None)
        modules = tuple(m for m in modules if m is not None)
        for _rec, key in self._table.entries():
            if key.startswith(prefixes) and self._table.delete(key):
                n += 1
            elif modules and key.startswith(modules):
                self._table.delete(key)
        return n

    def reset(self):
        """Drop every entry of the file cache, for all processes, and zero
        its counters (the user cache is not touched)."""
        self._table.clear()
        self._memo.clear()
        self._resolved.clear()
        for k in self._stats:
            self._stats[k] = 0

    def info(self, limited=True):
        """One snapshot: the settings, the file table's shared counters
        (num_entries, num_hits, num_misses, num_inserts, expunges,
        evictions, mem_size), and under 'process' this process's counters,
        including the skips (skipped_too_new: modified within protect_s;
        skipped_changed: changed during the read; skipped_full: no room;
        skipped_key_too_long: a key longer than the table takes).  Unless
        limited, 'entries': one dict per entry with its mode, namespace,
        identity (path, or dev and ino), hits and size."""
        t = self._table.info()
        out = {
            "mode": self.mode,
            "protect_s": self.protect_s,
            "revalidate_s": self.revalidate_s,
            "search_path": list(self.search_path) if self.search_path is not None else None,
            "max_wait": self.max_wait,
            "num_slots": t["num_slots"],
            "num_entries": t["num_entries"],
            "num_hits": t["num_hits"],
            "num_misses": t["num_misses"],
            "num_inserts": t["num_inserts"],
            "expunges": t["expunges"],
            "evictions": t["evictions"],
            "mem_size": t["mem_size"],
            "process": dict(self._stats),
        }
        if not limited:
            out["entries"] = [dict(_filekeys.describe(k), hits=r["hits"], mem_size=r["mem_size"],
                                   creation_time=r["creation_time"]) for r, k in self._table.entries()]
        return out

    def check_code_safe(self):
        """UnsafeSegmentError unless code from this segment may be run now
        (one fstat; see check_segment_for_code)."""
        check_segment_for_code(self._cache)

    def __repr__(self):
        return f"<apccache.files.FileCache of {self._cache.name!r} mode={self.mode}>"

    # ------------------------------------------------------------ paths

    def _abspath(self, path):
        """The absolute path a lookup of path uses (no-stat mode resolves a
        relative path through search_path: once per process and then from
        the shared table, so a hit makes no system call)."""
        p = _fspath(path)
        if os.path.isabs(p):
            return os.path.normpath(p)
        if self.mode == "stat" and self.search_path is None:
            return os.path.abspath(p)
        sp = self.search_path or (os.getcwd(),)
        memo = self._resolved.get((p, sp))
        if memo is not None:
            return memo
        rkey = _filekeys.resolve_key(p, sp) if self.mode == "no-stat" else None
        found = self._table.get(rkey) if rkey is not None else None
        if found is not None:
            found = os.fsdecode(found)
        else:
            cands = self._candidates(p)
            found = next((c for c in cands if os.path.isfile(c)), cands[0])
            if rkey is not None and os.path.isfile(found):
                try:
                    self._table.add(rkey, os.fsencode(found))
                except CacheFullError:
                    self._stats["skipped_full"] += 1
        self._resolved[(p, sp)] = found
        return found

    def _candidates(self, p):
        if os.path.isabs(p):
            return [os.path.normpath(p)]
        sp = self.search_path or (os.getcwd(),)
        return [os.path.abspath(os.path.join(d, p)) for d in sp]

    # ------------------------------------------------------------ the two lookup modes

    def _lookup(self, path, ns, kind, make):
        """The value of the file at path (absolute) in namespace ns, from
        its entry or made and stored, by the lookup of this handle's mode.
        kind is CODE or SERIALIZED (any value); make(file bytes, path,
        fstat) -> (value, payload), the payload being what the entry stores
        (marshal data for code)."""
        if self.mode == "stat":
            return self._lookup_stat(path, ns, kind, make)
        return self._lookup_nostat(path, ns, kind, make)

    def _lookup_stat(self, path, ns, kind, make):
        """Stat mode: the key is the file's identity, and the entry is valid
        while its validators are the file's (one stat, or none while
        revalidate_s trusts what this process saw last)."""
        stats = self._stats
        memo = self._memo.get((path, ns)) if self.revalidate_s else None
        if memo is not None and time.monotonic() - memo[2] < self.revalidate_s:
            key, val = memo[0], memo[1]
            st = None
        else:
            st = os.stat(path)
            key = _filekeys.stat_key(st, ns)
            if key is None:
                return self._uncached(path, make)
            val = _validators(st)
        value = self._read_entry(key, path, kind, val)
        if value is not _ABSENT:
            if value is not STALE and value is not UNREADABLE:
                stats["hits"] += 1
                if self.revalidate_s and st is not None:
                    self._memo[path, ns] = (key, val, time.monotonic())
                return value
            stats["stale"] += 1
            self._table.delete(key)
        if st is None:  # the trusted memo was stale: look again
            self._memo.pop((path, ns), None)
            return self._lookup_stat(path, ns, kind, make)
        stats["misses"] += 1
        value = self._fill(key, path, kind, make, st, val)
        if self.revalidate_s:
            self._memo[path, ns] = (key, val, time.monotonic())
        return value

    def _lookup_nostat(self, path, ns, kind, make):
        """No-stat mode: the key is the path, and an entry is valid until
        invalidated; a hit makes no system call."""
        key = _filekeys.path_key(path, ns)
        if key is None:
            return self._uncached(path, make)
        value = self._read_entry(key, path, kind, None)
        if value is not _ABSENT:
            if value is not UNREADABLE:
                self._stats["hits"] += 1
                return value
            self._table.delete(key)
        self._stats["misses"] += 1
        return self._fill(key, path, kind, make, None, None)

    def _uncached(self, path, make):
        """The value, made and not stored: the file has no key that fits."""
        self._stats["skipped_key_too_long"] += 1
        value, _payload, _st = self._read_and_make(path, make)
        return value

    # ------------------------------------------------------------ entries

    def _read_entry(self, key, path, kind, val):
        """The value under key (see _fileentry.decode, then _loaded), or _ABSENT."""
        return self._loaded(self._table.view(key, lambda buf: decode(buf, path, kind, val), _ABSENT))

    def _loaded(self, value):
        """value, with a serialized one loaded (now that the entry is let
        go); UNREADABLE, and counted, if it cannot be."""
        if type(value) is Serialized:
            try:
                return self._cache.serializer.loads(value.data)
            except Exception:
                value = UNREADABLE
        if value is UNREADABLE:
            self._stats["unreadable_entries"] += 1
        return value

    def _fill(self, key, path, kind, make, st, val):
        """Make the value and store it add-if-absent, through entry(): one
        process makes it, others wait at most max_wait, then make their own."""
        box = []

        def generate(_key):
            value, payload, st1 = self._read_and_make(path, make, st)
            box.append(value)
            if payload is None:
                raise _NoStore
            return encode(kind, payload, path, st1, self._cache.serializer.dumps)

        try:
            blob = self._table.entry(key, generate, 0, self.max_wait)
        except _NoStore:
            return box[0]
        except CacheFullError:
            if not box:
                raise
            self._stats["skipped_full"] += 1
            return box[0]
        if box:
            self._stats["stored"] += 1
            return box[0]
        # Another process made it while we waited.
        self._stats["waited_for_other"] += 1
        value = self._loaded(decode(blob, path, kind, val)) if isinstance(blob, bytes) else UNREADABLE
        if value is not STALE and value is not UNREADABLE:
            return value
        value, _payload, _st = self._read_and_make(path, make, st)
        return value

    def _read_and_make(self, path, make, expected=None):
        """(value, payload or None when it must not be stored, stat).

        The file is read once, between two fstat calls on the open file.
        For code with a valid .pyc the source is not read: the pyc is,
        between two stat calls of the source, straight into the buffer the
        entry is stored from (see _pyc)."""
        if getattr(make, "use_pyc", False):
            try:
                st0 = expected if expected is not None else os.stat(path)
            except OSError:
                st0 = None
            found = _pyc.load(path, st0, header_room(path)) if st0 is not None else None
            if found is not None:
                code, buf = found
                return self._judge(code, buf, st0, os.stat(path), expected)
        with open(path, "rb") as f:
            st1 = os.fstat(f.fileno())
            data = f.read()
            st2 = os.fstat(f.fileno())
        value, payload = make(data, path, st1)
        return self._judge(value, payload, st1, st2, expected)

    def _judge(self, value, payload, st1, st2, expected):
        """Withhold payload (None) if the file changed between st1 and st2,
        is not the file the lookup saw, or is too new (protect_s)."""
        if not _same_file(st1, st2) or (
                expected is not None and (st1.st_dev, st1.st_ino) != (expected.st_dev, expected.st_ino)):
            self._stats["skipped_changed"] += 1
            return value, None, st1
        if self.protect_s and time.time() - st1.st_mtime_ns / 1e9 < self.protect_s:
            self._stats["skipped_too_new"] += 1
            return value, None, st1
        return value, payload, st1

    # ------------------------------------------------------------ code

    def _code(self, path, loader=None):
        """The code object for the source file path (absolute), from the
        cache or made and stored.  On a miss a valid .pyc is used instead
        of compiling; loader (the import hook's) also writes one after a
        compile, as the stock loader does.  The segment is checked first,
        every time: this is where code from it is about to be run."""
        check_segment_for_code(self._cache)

        def make(data, p, st):
            return self._make_code(data, p, st, loader)

        make.use_pyc = True
        return self._lookup(path, self._code_ns, CODE, make)

    def _make_code(self, source, path, st, loader):
        """(code, marshal data) compiled from source read from path; with
        the import hook's loader, a .pyc is written too, as the stock
        import system does."""
        code = compile(source, path, "exec", dont_inherit=True, optimize=-1)
        data = marshal.dumps(code)
        if loader is not None and not sys.dont_write_bytecode:
            _pyc.write(loader, path, st, data)
        return code, data
