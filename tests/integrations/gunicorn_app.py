"""A small WSGI app for test_gunicorn.py, on the segment the gunicorn
master shares with its workers."""
import os
import time
from urllib.parse import parse_qs

from apccache.integrations.gunicorn import cache


def _built(key):
    c = cache()
    c.inc("builds")
    time.sleep(0.3)
    return f"built by {os.getpid()}"


def _hang(key):
    cache().store("hanging-pid", os.getpid())
    time.sleep(3600)


def app(environ, start_response):
    c = cache()
    path = environ["PATH_INFO"]
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if path == "/inc":
        body = f"{c.inc('counter')} {os.getpid()}"
    elif path == "/entry":
        body = c.entry(q.get("key", "built"), _built)
    elif path == "/hang":
        body = c.entry(q["key"], _hang)
    elif path == "/fetch":
        body = repr(c.fetch(q["key"]))
    elif path == "/pid":
        body = str(os.getpid())
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    data = str(body).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
