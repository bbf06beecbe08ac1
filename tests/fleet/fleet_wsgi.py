"""A WSGI app for the gunicorn test: GET /KEY answers FleetCache.fetch(KEY),\non the segment apccache's gunicorn integration shares."""

import os

from apccache.fleet import FleetCache
from apccache.integrations.gunicorn import cache

_fc = None


def app(environ, start_response):
    global _fc
    if _fc is None:
        _fc = FleetCache(cache(), os.environ["FLEET_REDIS"], os.environ["FLEET_NS"])
    key = environ["PATH_INFO"].lstrip("/")
    body = repr(_fc.fetch(key)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Trusted", str(_fc.status()["trusted"]))])
    return [body]
