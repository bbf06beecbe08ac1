"""A WSGI app for the gunicorn test: GET /KEY answers FleetCache.fetch(KEY)."""

import os

import apccache
from apccache.fleet import FleetCache

_fc = None


def app(environ, start_response):
    global _fc
    if _fc is None:
        _fc = FleetCache(apccache.Cache.attach(os.environ["FLEET_SEGMENT"]), os.environ["FLEET_REDIS"],
                         os.environ["FLEET_NS"])
    key = environ["PATH_INFO"].lstrip("/")
    body = repr(_fc.fetch(key)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Trusted", str(_fc.status()["trusted"]))])
    return [body]
