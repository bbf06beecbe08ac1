"""The public API carries type hints, and the package says so (py.typed)."""
import inspect
from pathlib import Path

import apccache
from apccache import locks, memoize

PUBLIC = ["open", "fetch", "store", "add", "delete", "exists", "inc", "dec", "cas", "entry", "aentry",
          "touch", "memoize", "lock", "alock", "store_many", "add_many", "fetch_many", "delete_many",
          "clear", "info", "sma_info", "key_info", "keys", "check", "recover", "unlink"]


def test_py_typed_ships():
    assert (Path(apccache.__file__).parent / "py.typed").exists()


def test_public_methods_are_annotated():
    for name in PUBLIC:
        fn = inspect.unwrap(getattr(apccache.Cache, name))
        sig = inspect.signature(fn)
        assert sig.return_annotation is not inspect.Signature.empty, name
        for p in list(sig.parameters.values())[1:]:
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                assert p.annotation is not inspect.Parameter.empty, f"{name}({p.name})"
    for fn in (locks.Lock.acquire, locks.Lock.release, locks.Lock.extend, locks.Lock.locked,
               memoize.memoize):
        assert inspect.signature(fn).return_annotation is not inspect.Signature.empty, fn
