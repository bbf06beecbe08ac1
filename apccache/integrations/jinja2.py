"""A Jinja2 bytecode cache in the segment: templates compiled once for all
processes.

>>> import apccache, jinja2, os, tempfile
>>> from apccache.integrations.jinja2 import SharedBytecodeCache
>>> c = apccache.Cache.create(f"doctest-jinja-{os.getpid()}", size=4 << 20)
>>> d = tempfile.mkdtemp()
>>> _ = open(os.path.join(d, "hi.txt"), "w").write("hello {{ name }}")
>>> env = jinja2.Environment(loader=jinja2.FileSystemLoader(d),
...                          bytecode_cache=SharedBytecodeCache(c))
>>> env.get_template("hi.txt").render(name="world")     # compiled, then stored
'hello world'
>>> len(SharedBytecodeCache(c))                           # one template in the segment
1
>>> c.unlink(); c.close()

Jinja2 compiles a template to Python source and that to a code object; a
``BytecodeCache`` keeps the code object.  ``SharedBytecodeCache`` keeps it in
the segment's file table (beside the opcode cache's modules, apart from the
user cache: ``Cache.clear()`` leaves templates alone), so the first process
to load a template compiles it and every other process, including fresh
ones, only unmarshals it.

Validity is Jinja2's own: each template's entry records the checksum of
the source it was compiled from, and an entry whose checksum differs from
the source Jinja2 just read is ignored and replaced.  An edited template is
therefore recompiled on its next load, in whatever process loads it first.
Keys are namespaced by the Jinja2 version and bytecode format, the Python
bytecode magic and implementation, and the environment's settings that change
the compiled code (delimiters, whitespace options, extensions, autoescape,
async); ``prefix`` separates environments that differ in anything else.

SECURITY: entries are code objects that are run.  The segment is refused
(``apccache.files.UnsafeSegmentError``) unless the current user owns it and
nobody else may write it, checked (``fstat`` of the mapped descriptor) when
the cache is made and again before each template's code is loaded.  No
entry is ever unpickled.
"""
import hashlib
import importlib.util
import marshal
import sys

import jinja2
from jinja2.bccache import BytecodeCache, bc_magic

from .._filekeys import template_key
from ..errors import CacheFullError
from ..files import check_segment_for_code

__all__ = ["SharedBytecodeCache"]


def _env_fingerprint(env):
    """The settings of env that change what a template compiles to."""
    ae = env.autoescape
    parts = (
        env.block_start_string, env.block_end_string, env.variable_start_string, env.variable_end_string,
        env.comment_start_string, env.comment_end_string, env.line_statement_prefix, env.line_comment_prefix,
        env.trim_blocks, env.lstrip_blocks, env.newline_sequence, env.keep_trailing_newline,
        env.optimized, env.is_async, tuple(sorted(env.extensions)),
        ae if isinstance(ae, bool) else f"{getattr(ae, '__module__', '')}.{getattr(ae, '__qualname__', repr(ae))}",
    )
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


class SharedBytecodeCache(BytecodeCache):
    """A ``jinja2.BytecodeCache`` kept in cache's segment.

    ``Environment(bytecode_cache=SharedBytecodeCache(cache))``.  Loads never
    wait on another process; a store replaces the entry (the checksum in it
    says which source it belongs to).  A full cache only means the template
    is compiled again next time.  prefix: a name that separates environments
    whose templates compile differently in ways the key does not capture."""

    def __init__(self, cache, prefix=""):
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        check_segment_for_code(cache)
        self._cache = cache
        self._table = cache.file_table
        self._ns = (
            f"jinja2|{jinja2.__version__}|{bc_magic.hex()}|{importlib.util.MAGIC_NUMBER.hex()}|"
            f"{sys.implementation.cache_tag}|O{sys.flags.optimize}|{prefix}|"
        ).encode()
        self._start = template_key(self._ns)  # the prefix of this cache's keys
        if self._start is None:
            raise ValueError(f"prefix is too long for a key of the file table ({len(prefix)} characters)")
        self._fp = {}
        self.store_failures = 0

    def _key(self, bucket):
        """The template's key, or None if it is too long (see _filekeys)."""
        env = bucket.environment
        fp = self._fp.get(id(env))
        if fp is None or fp[0] is not env:
            fp = self._fp[id(env)] = (env, _env_fingerprint(env).encode())
        return template_key(self._ns + fp[1] + b"|" + bucket.key.encode())

    def load_bytecode(self, bucket):
        check_segment_for_code(self._cache)  # again: this code is about to run
        key = self._key(bucket)
        blob = self._table.get(key) if key is not None else None
        if blob is None:
            return
        checksum, sep, data = blob.partition(b"\n")
        if not sep or checksum != bucket.checksum.encode():
            return
        try:
            bucket.code = marshal.loads(data)
        except (EOFError, ValueError, TypeError):
            bucket.reset()

    def dump_bytecode(self, bucket):
        if bucket.code is None:
            return
        key = self._key(bucket)
        if key is None:
            self.store_failures += 1
            return
        blob = bucket.checksum.encode() + b"\n" + marshal.dumps(bucket.code)
        try:
            self._table.put(key, blob)
        except CacheFullError:
            self.store_failures += 1

    def clear(self):
        """Drop every template of this cache's namespace (all
        environments), for all processes."""
        start = self._start
        for _rec, key in self._table.entries():
            if key.startswith(start):
                self._table.delete(key)

    def __len__(self):
        start = self._start
        return sum(1 for _rec, key in self._table.entries() if key.startswith(start))
