"""apcstat NAME watch: a live view under a pseudo-terminal, one line per tick
without one, rates from the change between ticks."""
import json
import os
import pty
import re
import select
import subprocess
import sys
import time

from stat_support import ROOT, apcstat, env


def run_in_pty(args, extra_env=None, timeout=20):
    """Run apcstat under a pseudo-terminal; (exit status, everything it wrote)."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            e = env(COLUMNS="110", LINES="80", TERM="xterm-256color", **(extra_env or {}))
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-m", "apccache.stat", *args], e)
        finally:
            os._exit(127)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                out += data
    finally:
        os.close(fd)
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:  # pragma: no cover
            status = 0
    return os.waitstatus_to_exitcode(status), out


def test_watch_redraws_the_summary_in_place_on_a_terminal(populated):
    rc, out = run_in_pty([populated.name, "watch", "-i", "0.2", "--count", "3"])
    assert rc == 0, out[-2000:]
    text = out.decode(errors="replace")
    assert text.count(f"Segment {populated.name}") >= 3  # one frame per tick (and the last, kept)
    assert "\x1b[?25l" in text  # rich's Live hides the cursor while it redraws ...
    assert re.search(r"\x1b\[\d*A", text)  # ... and moves back up to draw over the last frame
    assert "Rates over the last 0.2 s" in text  # from the second tick on
    assert "\x1b[1m" in text and "\x1b[36" in text  # bold titles and coloured bars on a terminal


def test_no_color_on_a_terminal_means_no_colour(populated):
    rc, out = run_in_pty([populated.name, "watch", "-i", "0.1", "--count", "2"], {"NO_COLOR": "1"})
    assert rc == 0
    text = out.decode(errors="replace")
    assert f"Segment {populated.name}" in text
    assert not re.search(r"\x1b\[[0-9;]*3[0-7](;|m)", text) and "\x1b[36" not in text


def test_lines_without_a_terminal_one_dense_line_per_tick(populated):
    r = apcstat(populated.name, "watch", "-i", "0.1", "--count", "3")  # stdout is a pipe: lines by itself
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["time", "entries", "used", "free", "hits", "misses", "hit%", "req/s", "hit/s",
                              "ins/s", "evict", "gc", "workers"]
    assert len(rows) == 3
    first = rows[0].split()
    assert re.fullmatch(r"\d\d:\d\d:\d\d", first[0])
    assert first[1:2] == ["6"] and first[4:7] == ["11", "3", "78.6%"] and first[7:10] == ["-", "-", "-"]
    for row in rows[1:]:
        assert row.split()[7:10] == ["0.0", "0.0", "0.0"]  # nothing happened between ticks
    r = apcstat(populated.name, "watch", "--lines", "-i", "0.1", "--count", "1")
    assert len(r.stdout.splitlines()) == 2 and "\x1b[" not in r.stdout


def test_rates_come_from_the_change_between_ticks(populated):
    proc = subprocess.Popen([sys.executable, "-m", "apccache.stat", populated.name, "watch", "--json", "-i", "0.3",
                             "--count", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env())
    try:
        n = 0
        while proc.poll() is None:
            populated.fetch("alpha")
            populated.fetch("missing")
            n += 2
            time.sleep(0.001)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    ticks = [json.loads(line) for line in out.splitlines()]
    assert len(ticks) == 3 and ticks[0]["interval"] is None
    for prev, cur in zip(ticks, ticks[1:]):
        iv = cur["interval"]
        dt = iv["seconds"]
        assert 0.2 < dt < 2
        hits = cur["user"]["hits"] - prev["user"]["hits"]
        misses = cur["user"]["misses"] - prev["user"]["misses"]
        assert hits > 0 and misses > 0
        assert abs(iv["hits"] - hits / dt) < 1e-6 and abs(iv["misses"] - misses / dt) < 1e-6
        assert iv["hit_rate"] == hits / (hits + misses)
    assert ticks[-1]["user"]["hits"] <= 11 + n


def test_watch_stops_when_the_segment_is_removed_and_follows_a_replacement(segments):
    """A mapping outlives its name: watch checks the name every tick."""
    import apccache

    c = segments(size=1 << 20)
    proc = subprocess.Popen([sys.executable, "-m", "apccache.stat", c.name, "watch", "--json", "-i", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env())
    new = None
    try:
        first = json.loads(proc.stdout.readline())
        assert first["segment"]["creator_pid"] == os.getpid()
        c.unlink()  # replace it under the same name ...
        new = apccache.Cache.create(c.name, size=2 << 20)
        new.store("fresh", 1)
        for line in proc.stdout:  # ... and watch follows it
            tick = json.loads(line)
            if tick["segment"]["size"] == 2 << 20:
                assert tick["user"]["entries"] == 1 and tick["interval"] is None
                break
        new.unlink()  # then remove it: watch stops in words
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 1
        assert err == f"apcstat: segment {c.name!r} was removed while it was being watched\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if new is not None:
            new.unlink()
            new.close()
