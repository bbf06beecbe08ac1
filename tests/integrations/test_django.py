"""The Django backend: Django's own cache test suite on it, its session
backend and per-site cache middleware on it, and what the suite cannot see
(several processes, create=False, the async methods)."""
import asyncio
import inspect
import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest

django = pytest.importorskip("django")

from helpers.children import run_processes  # noqa: E402
from helpers.segments import segment_name, unlink_name  # noqa: E402

from . import upstream  # noqa: E402

HERE = Path(__file__).parent
SEG = segment_name("dj")


def _configure():
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["testserver"],
            SECRET_KEY="apccache-tests",
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions"],
            DATABASES={},
            CACHES={"default": {"BACKEND": "apccache.integrations.django.ApcCache", "LOCATION": SEG,
                                "OPTIONS": {"size": "8M"}}},
            SESSION_ENGINE="django.contrib.sessions.backends.cache",
            ROOT_URLCONF=__name__,
            MIDDLEWARE=[
                "django.middleware.cache.UpdateCacheMiddleware",
                "django.contrib.sessions.middleware.SessionMiddleware",
                "django.middleware.common.CommonMiddleware",
                "django.middleware.cache.FetchFromCacheMiddleware",
            ],
            CACHE_MIDDLEWARE_SECONDS=60,
            USE_TZ=True,
        )
        django.setup()


_configure()

from django.core.cache import caches  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import path  # noqa: E402

VIEW_CALLS = {"n": 0}


def counted_view(request):
    VIEW_CALLS["n"] += 1
    return HttpResponse(f"rendered {VIEW_CALLS['n']}")


def session_view(request):
    request.session["visits"] = request.session.get("visits", 0) + 1
    resp = HttpResponse(str(request.session["visits"]))
    resp["Cache-Control"] = "private"  # the per-site cache must leave it alone
    return resp


urlpatterns = [path("page", counted_view), path("session", session_view)]


@pytest.fixture(scope="module", autouse=True)
def _segment():
    yield
    import apccache

    try:
        c = apccache.Cache.attach(SEG)
    except FileNotFoundError:
        return
    c.unlink()
    c.close()


@pytest.fixture
def cache():
    c = caches["default"]
    c.clear()
    return c


# ----------------------------------------------------- Django's own suite


def test_djangos_own_cache_suite(tmp_path):
    """tests/cache/tests.py of the installed Django's sdist, unmodified: its
    BaseCacheTests against ApcCache, without the cull caches, as Django
    runs it against Redis."""
    tests_dir = upstream.extract("django", "tests/cache", tmp_path).parent
    seg = segment_name("djsuite")
    try:
        r = subprocess.run(
            [sys.executable, str(HERE / "django_suite.py"), str(tests_dir), seg],
            capture_output=True, text=True, timeout=180,
            cwd=str(HERE.parent.parent),
        )
    finally:
        unlink_name(seg)
    assert r.returncode == 0, r.stderr[-6000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["failures"] == summary["errors"] == 0
    assert summary["run"] >= 50, summary  # BaseCacheTests has 54 in Django 5.2, 62 in 6.1
    # only the culling tests, whose caches are excluded, may skip
    assert all("cull" in s for s in summary["skipped"]), summary["skipped"]


# ------------------------------------------------ sessions and middleware


def test_cache_session_backend(cache):
    client = Client()
    assert [client.get("/session").content for _ in range(3)] == [b"1", b"2", b"3"]
    session_key = client.cookies["sessionid"].value
    # the session lives in the segment, under Django's session key
    assert any(session_key in k for k in cache._cache.keys())
    other = Client()
    assert other.get("/session").content == b"1"


def test_per_site_cache_middleware(cache):
    VIEW_CALLS["n"] = 0
    client = Client()
    first = client.get("/page")
    second = Client().get("/page")
    assert first.content == second.content == b"rendered 1"
    assert VIEW_CALLS["n"] == 1
    cache.clear()
    assert Client().get("/page").content == b"rendered 2"


# ------------------------------------------------------ beyond the suite


def test_semantics(cache):
    cache.set("f", 1, timeout=0.2)  # a float, rounded up
    assert cache.get("f") == 1
    cache.set("z", 1, timeout=0)
    assert cache.get("z", "gone") == "gone"
    cache.set("neg", 1, timeout=-3)
    assert not cache.has_key("neg")
    cache.set("forever", 1, timeout=None)
    assert cache._cache.key_info(cache.make_key("forever"))["ttl"] == 0
    with pytest.raises(ValueError):
        cache.incr("missing")
    cache.set("n", 5)
    assert cache.incr("n", 10) == 15 and cache.decr("n", 20) == -5
    big = (1 << 63) - 1
    cache.set("big", big, timeout=100)
    assert cache.incr("big") == big + 1 and cache.get("big") == big + 1
    assert cache.touch("n", 100) and cache._cache.key_info(cache.make_key("n"))["ttl"] >= 100
    assert not cache.touch("missing")
    assert cache.touch("n", 0) and not cache.has_key("n")
    cache.close()
    assert cache.get("f") == 1  # close() leaves the handle usable


def test_set_many_returns_keys_that_cannot_fit(cache):
    assert cache.set_many({"ok": 1, "huge": b"x" * (16 << 20)}) == ["huge"]
    assert cache.get("ok") == 1 and cache.get("huge") is None


def test_create_false_only_attaches():
    from django.core.cache.backends.base import InvalidCacheBackendError  # noqa: F401

    from apccache.integrations.django import ApcCache

    missing = segment_name("djmissing")
    with pytest.raises(FileNotFoundError, match="segments that exist"):
        ApcCache(missing, {"OPTIONS": {"create": False}})
    assert not os.path.exists(f"/dev/shm/{missing}")
    other = ApcCache(SEG, {"OPTIONS": {"create": False}})  # the existing one attaches
    other.set("x", 1)
    assert caches["default"].get("x") == 1


def test_async_methods_call_the_engine_directly(cache):
    from apccache.integrations.django import ApcCache

    for name in ("aget", "aset", "aadd", "adelete", "aget_many", "aset_many", "aincr", "adecr",
                 "ahas_key", "aget_or_set", "atouch", "adelete_many", "aclear", "aclose"):
        meth = ApcCache.__dict__.get(name)
        assert meth is not None and inspect.iscoroutinefunction(meth), name
        assert "sync_to_async" not in inspect.getsource(meth), name

    async def go():
        await cache.aset("a", 1)
        assert await cache.aget("a") == 1
        assert await cache.aadd("a", 2) is False
        assert await cache.aincr("a", 4) == 5
        assert await cache.aget_or_set("b", lambda: 7) == 7
        assert await cache.aget_many(["a", "b", "c"]) == {"a": 5, "b": 7}
        assert await cache.ahas_key("b")
        assert await cache.adelete("b") is True
        await cache.aclose()
        assert await cache.aget("a") == 5

    asyncio.run(go())


def _worker_incr(seg, n, q):
    from apccache.integrations.django import ApcCache

    c = ApcCache(seg, {"OPTIONS": {"size": "8M"}})
    for _ in range(n):
        c.incr("counter")
    q.put(os.getpid())


def test_incr_is_atomic_across_processes():
    seg = segment_name("djinc")
    ctx = mp.get_context("spawn")  # each starts afresh: the first one creates, the others attach
    try:
        from apccache.integrations.django import ApcCache

        c = ApcCache(seg, {"OPTIONS": {"size": "8M"}})
        c.set("counter", 0)
        q = ctx.Queue()
        procs = [ctx.Process(target=_worker_incr, args=(seg, 2000, q)) for _ in range(4)]
        run_processes(procs, 60)
        assert c.get("counter") == 8000
    finally:
        unlink_name(seg)
