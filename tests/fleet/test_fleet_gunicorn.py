"""gunicorn: apccache's integration opens the segment, the fleet hooks run
the listener in a thread of the master; workers read through it and see
another host's writes; HUP keeps one listener; TERM stops it and the segment
goes."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

from helpers.segments import segment_name, unlink_name
from fleet_support import free_port, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))


def test_gunicorn_hooks_run_the_listener(hosts, redis_server, namespace, tmp_path):
    (writer,) = hosts(1)
    seg = segment_name("gunicorn")
    port = free_port()
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "from apccache.integrations import gunicorn as apc\n"
        "from apccache.fleet import gunicorn as fleet\n"
        f"apc.install(globals(), name={seg!r}, size='8M')\n"
        f"fleet.install(globals(), redis={redis_server.url!r}, namespace={namespace!r})\n")
    env = dict(os.environ, FLEET_REDIS=redis_server.url, FLEET_NS=namespace,
               PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(tmp_path / "gunicorn.log", "wb")
    g = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(conf), "-w", "2", "-b", f"127.0.0.1:{port}",
                          "fleet_wsgi:app"], env=env, stdout=log, stderr=log, cwd=HERE)

    def get(key):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{key}", timeout=5) as r:
            return r.read().decode(), r.headers["X-Trusted"]

    try:
        def up():
            try:
                return get("k")[1] == "True"
            except OSError:
                return False

        wait_for(up, timeout=30, what="gunicorn with a trusted near cache")
        writer.fc.store("k", "v1")
        assert get("k")[0] == "'v1'"
        writer.fc.store("k", "v2")
        wait_for(lambda: get("k")[0] == "'v2'", timeout=1.0, what="gunicorn's workers to see the write")
        os.kill(g.pid, signal.SIGHUP)                 # the config file runs again
        time.sleep(1.0)
        writer.fc.store("k", "v3")
        wait_for(lambda: get("k") == ("'v3'", "True"), timeout=5.0, what="the workers after HUP")
        assert (tmp_path / "gunicorn.log").read_text().count("listener for namespace") == 1
        os.kill(g.pid, signal.SIGTERM)
        assert g.wait(30) == 0
        assert not os.path.exists(f"/dev/shm/{seg}")
    finally:
        if g.poll() is None:
            g.kill()
            g.wait()
        log.close()
        unlink_name(seg)
