"""The cachelib backend: cachelib's own test mixins (CommonTests, HasTests,
ClearTests, SerializerTests, DeleteManyWithPrefixTests, from its sdist,
unmodified) run against it, as cachelib runs them against RedisCache."""
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("cachelib")
pytest.importorskip("xprocess")  # cachelib's conftest imports it

from helpers.children import child_env  # noqa: E402
from helpers.segments import segment_name, unlink_name  # noqa: E402

from . import upstream  # noqa: E402


# The module cachelib's own tests/test_redis_cache.py would be for us: the
# same mixins, the same two factories (the default serializer and a custom
# one set on the class).
SUITE = '''
import pytest
from clear import ClearTests
from common import CommonTests
from delete_many_with_prefix import DeleteManyWithPrefixTests
from has import HasTests
from serializer import SerializerTests

from cachelib.serializers import BaseSerializer
from apccache.integrations.cachelib import ApcCache

SEGMENT = {segment!r}


class SillySerializer(BaseSerializer):
    """A pointless serializer only for testing"""

    def dumps(self, value):
        return repr(value).encode()

    def loads(self, bvalue):
        return eval(bvalue.decode())


class CustomCache(ApcCache):
    serializer = SillySerializer()


@pytest.fixture(autouse=True, params=[ApcCache, CustomCache])
def cache_factory(request, key_prefix):
    def _factory(self, *args, **kwargs):
        kwargs.setdefault("key_prefix", key_prefix)
        c = request.param(SEGMENT, *args, size=8 << 20, **kwargs)
        c.handle.clear()
        return c

    request.cls.cache_factory = _factory


class TestApcCache(CommonTests, ClearTests, HasTests, DeleteManyWithPrefixTests, SerializerTests):
    pass
'''


def test_cachelibs_own_test_mixins(tmp_path):
    tests_dir = upstream.extract("cachelib", "tests", tmp_path)
    seg = segment_name("cachelib")
    (tests_dir / "test_apccache_cache.py").write_text(textwrap.dedent(SUITE.format(segment=seg)))
    env = child_env()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
             "--rootdir", str(tests_dir), "test_apccache_cache.py"],
            cwd=tests_dir, capture_output=True, text=True, timeout=180, env=env,
        )
    finally:
        unlink_name(seg)
    tail = r.stdout[-4000:] + r.stderr[-2000:]
    assert r.returncode == 0, tail
    last = r.stdout.strip().splitlines()[-1]
    passed = int(last.split(" passed")[0].split()[-1])
    assert passed >= 60 and "failed" not in last and "skipped" not in last, last


def test_semantics(segments):
    from apccache.integrations.cachelib import ApcCache

    name = segment_name("cl")
    segments(name=name, size=4 << 20)
    c = ApcCache(name, default_timeout=300, key_prefix="p:")
    assert c.set("a", 1, timeout=0) and c.handle.key_info("p:a")["ttl"] == 0  # 0: never expires
    assert c.set("b", 1) and c.handle.key_info("p:b")["ttl"] == 300
    assert c.set("gone", 1, timeout=-1) and c.get("gone") is None
    assert c.inc("n") == 1 and c.dec("n", 3) == -2
    other = ApcCache(name, key_prefix="q:")
    other.set("keep", 1)
    c.clear()  # with a prefix: only its own keys
    assert c.get("a") is None and other.get("keep") == 1
    with pytest.raises(FileNotFoundError):
        ApcCache(segment_name("missing"), create=False)
