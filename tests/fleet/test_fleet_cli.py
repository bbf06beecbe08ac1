"""``apccache fleet listen``: errors in words with their exit codes."""

import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "apccache", "fleet", *args], capture_output=True, text=True,
                          timeout=60)


def test_a_missing_segment_exits_1():
    r = run("listen", "apctest-no-such-segment", "--redis", "redis://127.0.0.1:1/0", "--namespace", "x")
    assert r.returncode == 1
    assert "no segment named 'apctest-no-such-segment'" in r.stderr


def test_bad_options_exit_2(segments):
    c = segments(size=1 << 20)
    r = run("listen", c.name, "--redis", "redis://127.0.0.1:1/0", "--namespace", "x",
            "--max-lag", "0.01", "--ping-interval", "0.02")
    assert r.returncode == 2 and "ping_interval must be > 0 and < max_lag" in r.stderr
    r = run("listen", c.name, "--redis", "http://127.0.0.1:1", "--namespace", "x")
    assert r.returncode == 2 and "redis://" in r.stderr
    r = run("listen", c.name, "--namespace", "x")
    assert r.returncode == 2 and "--redis" in r.stderr
    assert run().returncode == 2
