"""The keys of the file table (apccache._filekeys): every kind of key, its
exact bytes, its prefix, what describe() says of it, and the length rule at
its edge."""
import os
import struct

import pytest

from apccache import _filekeys as K
from apccache.files import FileCache


class St:
    """The fields of an os.stat_result that keys use."""

    def __init__(self, dev, ino):
        self.st_dev, self.st_ino = dev, ino


ST = St(0x0102, 0xABCDEF)
ID = struct.pack("<QQ", ST.st_dev, ST.st_ino)


# ---------------------------------------------------------------- every kind


def test_a_stat_key_is_the_files_identity_then_the_namespace():
    key = K.stat_key(ST, b"code|ns")
    assert key == b"S" + ID + b"\0code|ns"
    assert K.describe(key) == {"mode": "stat", "dev": ST.st_dev, "ino": ST.st_ino, "namespace": "code|ns"}


def test_a_path_key_is_the_path_then_the_namespace():
    key = K.path_key("/srv/app/m.py", b"code|ns")
    assert key == b"P/srv/app/m.py\0code|ns"
    assert K.describe(key) == {"mode": "no-stat", "path": "/srv/app/m.py", "namespace": "code|ns"}


def test_a_resolve_key_is_the_relative_path_then_the_search_path():
    key = K.resolve_key("conf/app.toml", ("/etc/app", "/srv/app"))
    assert key == b"Rconf/app.toml\0/etc/app\0/srv/app"
    assert K.describe(key) == {"mode": "no-stat", "path": "conf/app.toml", "namespace": "resolve",
                               "search_path": ["/etc/app", "/srv/app"]}


def test_a_module_key_is_the_directory_the_name_then_the_namespace():
    key = K.module_key("/srv/app", "views", b"code|ns")
    assert key == b"M/srv/app\0views\0code|ns"
    assert K.describe(key) == {"mode": "no-stat", "path": "/srv/app", "module": "views",
                               "namespace": "module location|code|ns"}


def test_a_template_key_is_its_namespace():
    key = K.template_key(b"jinja2|3.1|page.html")
    assert key == b"Jjinja2|3.1|page.html"
    assert K.describe(key) == {"mode": "jinja2", "namespace": "jinja2|3.1|page.html"}


def test_names_and_paths_that_are_not_utf8_round_trip():
    path = os.fsdecode(b"/srv/caf\xe9.py")  # a surrogate-escaped file name
    assert K.path_key(path, b"ns") == b"P/srv/caf\xe9.py\0ns"
    assert K.describe(K.path_key(path, b"ns"))["path"] == path
    assert K.module_key("/srv", "caf\udce9", b"ns") == b"M/srv\0caf\xed\xb3\xa9\0ns"  # surrogatepass


def test_describe_says_so_of_a_key_it_does_not_know():
    assert K.describe(b"Xwhatever") == {"mode": "?", "namespace": "?", "key": b"Xwhatever"}
    assert K.describe(b"S\x01\x02") == {"mode": "?", "namespace": "?", "key": b"S\x01\x02"}  # cut short


# ---------------------------------------------------------------- prefixes


def test_the_key_with_no_namespace_is_the_prefix_of_that_identity_only():
    cases = [
        (K.stat_key(ST, b""), K.stat_key(ST, b"code|x"), K.stat_key(St(ST.st_dev, ST.st_ino + 1), b"code|x")),
        (K.path_key("/a/b", b""), K.path_key("/a/b", b"load|x"), K.path_key("/a/bc", b"load|x")),
        (K.resolve_key("a.py", ()), K.resolve_key("a.py", ("/srv",)), K.resolve_key("a.pyc", ("/srv",))),
        (K.module_key("/srv", "m", b""), K.module_key("/srv", "m", b"code|x"), K.module_key("/srv", "mm", b"code|x")),
    ]
    for prefix, same, other in cases:
        assert same.startswith(prefix)
        assert not other.startswith(prefix)


def test_the_module_prefix_of_a_source_file():
    assert K.module_key_of_source("/srv/app/views.py") == b"M/srv/app\0views\0"
    assert K.module_key_of_source("/srv/app/pkg/__init__.py") == b"M/srv/app\0pkg\0"  # the package
    assert K.module_key_of_source("/srv/app/data.toml") is None
    assert K.module_key_of_source("/srv/app/README") is None


# ---------------------------------------------------------------- the length rule


def test_the_limit_is_the_engines():
    assert K.MAX_KEY == 65535


@pytest.mark.parametrize("make", [
    lambda n: K.build(b"P", b"x" * (n - 1)),
    lambda n: K.stat_key(ST, b"n" * (n - 18)),
    lambda n: K.path_key("/" + "p" * (n - 4), b"n"),
    lambda n: K.resolve_key("r" * (n - 3), ("/",)),
    lambda n: K.module_key("/d", "m" * (n - 6), b"n"),
    lambda n: K.template_key(b"t" * (n - 1)),
], ids=["build", "stat", "path", "resolve", "module", "template"])
def test_a_key_of_65535_bytes_is_built_and_one_of_65536_is_not(make):
    key = make(65535)
    assert type(key) is bytes and len(key) == 65535
    assert make(65536) is None


def test_a_key_of_65535_bytes_is_stored_and_one_of_65536_is_not(cache):
    t = cache.file_table
    t.put(K.build(b"P", b"x" * 65534), b"v")
    assert t.get(b"P" + b"x" * 65534) == b"v"
    with pytest.raises(ValueError):
        t.put(b"P" + b"x" * 65535, b"v")  # what build() keeps from the table


@pytest.mark.parametrize("mode", ["stat", "no-stat"])
def test_a_file_whose_key_does_not_fit_is_served_unstored_and_counted(cache, tree, mode):
    p = tree("big.txt", "hello")
    f = FileCache(cache, mode=mode, protect_s=0)
    assert f.load(p, bytes.upper, kind="k" * 65536) == b"HELLO"
    assert f.load(p, bytes.upper, kind="k" * 65536) == b"HELLO"
    assert f.info()["num_entries"] == 0
    assert f.info()["process"]["skipped_key_too_long"] == 2
    assert f.load(p, bytes.upper, kind="k" * 60000) == b"HELLO"
    assert f.info()["num_entries"] == 1


def test_a_search_path_too_long_for_a_key_still_resolves(cache, tree):
    p = tree("conf.txt", "x")
    d = os.path.dirname(p)
    far = [d + "/" + "s" * 200 + str(i) for i in range(400)]  # more than 65535 bytes joined
    f = FileCache(cache, mode="no-stat", protect_s=0, search_path=[*far, d])
    assert f.load("conf.txt", bytes.upper) == b"X"
    entries = f.info(limited=False)["entries"]
    assert [(e["mode"], e["path"]) for e in entries] == [("no-stat", p)]  # the value, and no resolve record


def test_a_jinja2_prefix_too_long_for_any_key_is_refused(cache):
    pytest.importorskip("jinja2")
    from apccache.integrations.jinja2 import SharedBytecodeCache

    with pytest.raises(ValueError, match="prefix is too long"):
        SharedBytecodeCache(cache, prefix="p" * 65536)
    assert len(SharedBytecodeCache(cache, prefix="p" * 1000)) == 0
