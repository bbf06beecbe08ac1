# A gunicorn config for test_gunicorn.py: APC_GUNICORN_SEGMENT names the segment.
import os

from apccache.integrations import gunicorn as apc

bind = os.environ["APC_GUNICORN_BIND"]
workers = int(os.environ.get("APC_GUNICORN_WORKERS", "4"))
worker_class = os.environ.get("APC_GUNICORN_CLASS", "sync")
threads = 2
graceful_timeout = 3
timeout = 30
loglevel = "info"

apc.install(globals(), name=os.environ["APC_GUNICORN_SEGMENT"], size="8M")
