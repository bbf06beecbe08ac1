"""The keys of the file table: one scheme for everything stored there.

The segment's second slot table (``Cache.file_table``) is shared by four
users: the file cache's entries in each of its two modes, its record of
where a relative path resolved, the import hook's record of where it found
a module, and the Jinja2 bytecode cache.  Their keys must never collide,
``invalidate()`` must find every key made from one file, and ``apcstat``
must say what each key is.  So every key is built here, by ``build()``, and
read back here, by ``describe()``.

A key is a one-byte tag naming its kind, then its parts separated by NUL::

    S <st_dev, st_ino: 16 bytes> \\0 <namespace>    a file's entry, stat mode
    P <absolute path> \\0 <namespace>               a file's entry, no-stat mode
    R <relative path> \\0 <search path, NUL-separated>
                                                  where the path resolved (no-stat)
    M <directory> \\0 <module name> \\0 <code namespace>
                                                  where the import hook found a module
    J <namespace>                                 a Jinja2 template's code

The namespace comes last, so the key of an identity with an empty namespace
(``path_key(p, b"")``) is the prefix of all of that identity's keys: that is
what ``invalidate()`` drops.

A key longer than the engine takes (``MAX_KEY``, 65535 bytes) is not a key:
``build()`` returns None for it, and whoever asked neither looks it up nor
stores under it.  Such a file is served uncached, never refused.
"""
import os
import struct
from importlib.machinery import SOURCE_SUFFIXES

from ._bindings import MAX_KEY

__all__ = ["MAX_KEY", "build", "describe", "module_key", "module_key_of_source", "path_key",
           "resolve_key", "stat_key", "template_key"]

STAT, PATH, RESOLVE, MODULE, TEMPLATE = b"S", b"P", b"R", b"M", b"J"

_ID = struct.Struct("<QQ")
_STAT_NS_AT = len(STAT) + _ID.size + 1


def build(tag, *parts):
    """tag, then parts (bytes) separated by NUL; None if the key would be
    longer than MAX_KEY."""
    key = tag + b"\0".join(parts)
    return key if len(key) <= MAX_KEY else None


def _name(s):
    return s.encode("utf-8", "surrogatepass")


def stat_key(st, ns):
    """The key of the file st describes (by identity: device and inode)."""
    return build(STAT, _ID.pack(st.st_dev, st.st_ino), ns)


def path_key(path, ns):
    """The key of the file at path (absolute, by name)."""
    return build(PATH, os.fsencode(path), ns)


def resolve_key(rel, search_path):
    """The key of where rel resolved through search_path (a sequence of
    directories; empty for the prefix of every search path)."""
    return build(RESOLVE, os.fsencode(rel), os.fsencode("\0".join(search_path)))


def module_key(directory, name, ns):
    """The key of where module name was found in directory."""
    return build(MODULE, os.fsencode(directory), _name(name), ns)


def module_key_of_source(path):
    """The prefix of the keys of the module whose source is path (a
    package's for an ``__init__``), or None if path is not a source file."""
    head, name = os.path.split(path)
    stem, dot, suffix = name.rpartition(".")
    if not dot or "." + suffix not in SOURCE_SUFFIXES:
        return None
    if stem == "__init__":
        head, stem = os.path.split(head)
    return module_key(head, stem, b"")


def template_key(ns):
    """The key of a Jinja2 template (ns: its full namespace and name)."""
    return build(TEMPLATE, ns)


def describe(key):
    """{'mode', 'namespace', and 'path' or 'dev'/'ino', ...} for a key of
    the file table (mode and namespace '?' for one it does not know)."""
    tag = key[:1]
    try:
        if tag == STAT:
            dev, ino = _ID.unpack_from(key, len(STAT))
            return {"mode": "stat", "dev": dev, "ino": ino,
                    "namespace": key[_STAT_NS_AT:].decode(errors="replace")}
        if tag == PATH:
            path, _, ns = key[1:].partition(b"\0")
            return {"mode": "no-stat", "path": os.fsdecode(path), "namespace": ns.decode(errors="replace")}
        if tag == MODULE:
            directory, _, rest = key[1:].partition(b"\0")
            name, _, ns = rest.partition(b"\0")
            return {"mode": "no-stat", "path": os.fsdecode(directory), "module": name.decode(errors="replace"),
                    "namespace": "module location|" + ns.decode(errors="replace")}
        if tag == RESOLVE:
            rel, _, sp = key[1:].partition(b"\0")
            return {"mode": "no-stat", "path": os.fsdecode(rel), "namespace": "resolve",
                    "search_path": os.fsdecode(sp).split("\0")}
        if tag == TEMPLATE:
            return {"mode": "jinja2", "namespace": key[1:].decode(errors="replace")}
    except (struct.error, UnicodeError):
        pass
    return {"mode": "?", "namespace": "?", "key": key}
