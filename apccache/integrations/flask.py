"""A Flask-Caching backend in the shared segment.

.. code-block:: python

    app.config.update(
        CACHE_TYPE="apccache.integrations.flask.ApcCache",
        CACHE_APCCACHE_NAME="myapp",     # the segment's name
        CACHE_APCCACHE_SIZE="64M",
        CACHE_DEFAULT_TIMEOUT=300,
        CACHE_KEY_PREFIX="flask_cache_",
    )
    cache = flask_caching.Cache(app)

It is ``apccache.integrations.cachelib.ApcCache`` (see there for the
semantics), built from the Flask config: every worker process of the host
shares one cache, so ``@cache.cached``, ``@cache.memoize`` and
``cache.delete_memoized`` act for all of them at once.
``CACHE_APCCACHE_CREATE=False`` only attaches; ``CACHE_OPTIONS`` go to
``Cache.create``.
"""
from flask_caching.backends.base import BaseCache as FlaskBaseCache

from . import cachelib as _cachelib

__all__ = ["ApcCache"]


class ApcCache(_cachelib.ApcCache, FlaskBaseCache):
    @classmethod
    def factory(cls, app, config, args, kwargs):
        name = config.get("CACHE_APCCACHE_NAME") or (args[0] if args else None)
        if not name:
            raise ValueError("apccache's Flask-Caching backend needs CACHE_APCCACHE_NAME (the segment name)")
        kwargs = dict(kwargs)
        kwargs.setdefault("key_prefix", config.get("CACHE_KEY_PREFIX") or "")
        if "CACHE_APCCACHE_SIZE" in config:
            kwargs["size"] = config["CACHE_APCCACHE_SIZE"]
        if "CACHE_APCCACHE_CREATE" in config:
            kwargs["create"] = config["CACHE_APCCACHE_CREATE"]
        return cls(name, **kwargs)
