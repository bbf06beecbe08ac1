"""Memory per small entry: apccache's arena beside memcached and Redis.

Fills apccache with N entries (12-byte keys, 10-byte values) and reports
the arena bytes each one costs (used arena / entries, from sma_info and
info), then fills a smaller segment with new keys until the first eviction
and reports how full the arena was at that moment (used / arena size just
before the store that had to evict).  In the same run it stores the same
keys and values in memcached and in Redis, started here on a free loopback
port and stopped by pid, and reports what they say each item costs:

* memcached: ``stats`` bytes / curr_items (the item structs: header, key,
  value, CAS), the slab chunk each item occupies (``stats slabs``), and
  the growth of the server's resident set per item (slabs, hash table);
* Redis: the growth of ``used_memory`` (INFO memory) per key.

The clients are a few lines of each text protocol over a socket (no client
library needed), pipelined.  Not part of the pytest suite.

Run: ``python bench/memory_per_entry.py [--entries N]``; writes
bench/results/memory_per_entry.md.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl  # noqa: E402
import peers  # noqa: E402  (the server harness: free port, start, stop by pid)

import apccache  # noqa: E402

KEY_LEN, VAL_LEN = 12, 10
VALUE = b"v" * VAL_LEN


def key(i: int) -> bytes:
    k = b"k%011d" % i
    assert len(k) == KEY_LEN
    return k


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# --- apccache --------------------------------------------------------------------


def apc_fill(n: int) -> dict:
    name = f"{bl.PREFIX}mem-{os.getpid()}"
    # Room for n entries at up to 160 B each (the old layout) plus the table.
    c = apccache.Cache.create(name, size=n * 200 + (64 << 20), slots=n)
    try:
        for i in range(n):
            c.store(key(i), VALUE)
        info = c.info(limited=True)
        sma = c.sma_info()
        assert info["num_entries"] == n, info["num_entries"]
        used = sma["used_mem"]
        per_block = sorted({c.key_info(key(i))["mem_size"] for i in range(0, n, max(1, n // 100))})
        return {
            "entries": n,
            "arena_used": used,
            "per_entry": used / n,
            "mem_size_per_entry": info["mem_size"] / n,
            "buckets_per_entry": 8 * info["num_slots"] / n,
            "block_sizes": per_block,
            "checksums": info["checksums"],
        }
    finally:
        c.unlink()
        c.close()


def apc_fill_at_first_eviction(size: int, mixed: bool = False) -> dict:
    """mixed: values of 10 to 1,000 bytes (seeded), every tenth key deleted
    again, so that the arena fragments before it fills."""
    import random
    rng = random.Random(1)
    name = f"{bl.PREFIX}memev-{os.getpid()}"
    c = apccache.Cache.create(name, size=size)
    try:
        arena = c.sma_info()["seg_size"]
        before = c.info(limited=True)
        i = 0
        while True:
            if mixed:
                c.store(key(i), b"m" * rng.randrange(10, 1001))
                if i % 10 == 9:
                    c.delete(key(i - rng.randrange(1, 9)))
            else:
                c.store(key(i), VALUE)
            i += 1
            now = c.info(limited=True)
            if now["evictions"] or now["expunges"]:
                break
            before = now
        return {
            "segment": size,
            "arena": arena,
            "entries_before": before["num_entries"],
            "used_before": before["mem_size"],
            "fill": before["mem_size"] / arena,
            "stores": i,
            "compactions": c.info(limited=True)["compactions"],
        }
    finally:
        c.unlink()
        c.close()


# --- memcached -------------------------------------------------------------------


def _recv_until(s: socket.socket, end: bytes) -> bytes:
    buf = b""
    while not buf.endswith(end):
        chunk = s.recv(1 << 16)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def mc_stats(s: socket.socket, what: str = "") -> dict:
    s.sendall(f"stats {what}".strip().encode() + b"\r\n")
    out = {}
    for line in _recv_until(s, b"END\r\n").decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "STAT":
            out[parts[1]] = parts[2]
    return out


def memcached_fill(n: int, notes: list[str]) -> dict | None:
    binary = shutil.which("memcached")
    if not binary:
        notes.append("memcached skipped: not installed (apt-get install memcached)")
        return None
    port = peers.free_loopback_port()
    argv = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "1024", "-t", "1"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv += ["-u", "root"]
    with peers.server(argv, port) as proc, socket.create_connection(("127.0.0.1", port)) as s:
        version = (s.sendall(b"version\r\n"), _recv_until(s, b"\r\n").decode().split()[-1])[1]
        rss0 = rss_bytes(proc.pid)
        batch = 1000
        for lo in range(0, n, batch):
            s.sendall(b"".join(b"set %s 0 0 %d noreply\r\n%s\r\n" % (key(i), VAL_LEN, VALUE)
                               for i in range(lo, min(n, lo + batch))))
        s.sendall(b"version\r\n")  # a reply after every set: all were read
        _recv_until(s, b"\r\n")
        st = mc_stats(s)
        slabs = mc_stats(s, "slabs")
        rss1 = rss_bytes(proc.pid)
        items = int(st["curr_items"])
        classes = sorted({k.split(":")[0] for k in slabs if ":" in k})
        used = [(int(slabs[f"{c}:chunk_size"]), int(slabs[f"{c}:used_chunks"])) for c in classes
                if int(slabs.get(f"{c}:used_chunks", 0))]
        chunk_bytes = sum(sz * cnt for sz, cnt in used)
        return {
            "version": version,
            "items": items,
            "bytes_per_item": int(st["bytes"]) / items,
            "chunk_per_item": chunk_bytes / items,
            "chunk_sizes": used,
            "malloced_per_item": int(slabs.get("total_malloced", 0)) / items,
            "rss_per_item": (rss1 - rss0) / items,
            "hash_bytes": int(st.get("hash_bytes", 0)),
        }


# --- Redis -----------------------------------------------------------------------


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def redis_used_memory(s: socket.socket) -> tuple[int, dict]:
    s.sendall(_resp(b"INFO", b"memory"))
    head = _recv_until(s, b"\r\n")
    size = int(head.split(b"\r\n")[0][1:])
    body = head.split(b"\r\n", 1)[1]
    while len(body) < size + 2:
        body += s.recv(1 << 16)
    info = dict(line.split(":", 1) for line in body.decode().splitlines() if ":" in line)
    return int(info["used_memory"]), info


def redis_fill(n: int, notes: list[str]) -> dict | None:
    binary = shutil.which("redis-server")
    if not binary:
        notes.append("redis skipped: redis-server not installed")
        return None
    port = peers.free_loopback_port()
    import tempfile
    with tempfile.TemporaryDirectory(prefix=bl.PREFIX + "redis-") as workdir, \
            peers.server([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                          "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no",
                          "--dir", workdir, "--logfile", ""], port), \
            socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_resp(b"INFO", b"server"))
        head = _recv_until(s, b"\r\n")
        size = int(head.split(b"\r\n")[0][1:])
        body = head.split(b"\r\n", 1)[1]
        while len(body) < size + 2:
            body += s.recv(1 << 16)
        version = dict(line.split(":", 1) for line in body.decode().splitlines()
                       if ":" in line)["redis_version"]
        used0, _ = redis_used_memory(s)
        batch = 1000
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            s.sendall(b"".join(_resp(b"SET", key(i), VALUE) for i in range(lo, hi)))
            got = 0
            while got < 5 * (hi - lo):
                got += len(s.recv(1 << 16))
        used1, info = redis_used_memory(s)
        s.sendall(_resp(b"DBSIZE"))
        keys = int(_recv_until(s, b"\r\n")[1:-2])
        return {
            "version": version,
            "keys": keys,
            "per_key": (used1 - used0) / keys,
            "allocator": info.get("mem_allocator", "?"),
        }


# --- report ----------------------------------------------------------------------


def render(n, apc, ev, evm, mc, rd, notes) -> str:
    lines = [
        "# Memory per small entry",
        "",
        f"Generated by `python bench/memory_per_entry.py --entries {n}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({bl.machine_line()}).",
        "",
        f"{n:,} entries, {KEY_LEN}-byte keys, {VAL_LEN}-byte values, all measured in the same run.",
        "",
        "| store | bytes per entry | what is counted |",
        "|---|---:|---|",
        f"| apccache (arena) | {apc['per_entry']:.1f} | used arena / entries (sma_info used_mem); "
        f"blocks of {', '.join(map(str, apc['block_sizes'])) or '?'} B |",
        f"| apccache (arena + bucket array) | {apc['per_entry'] + apc['buckets_per_entry']:.1f} | "
        f"plus 8 B per slot of the table ({apc['buckets_per_entry']:.1f} B per entry here) |",
    ]
    if mc:
        lines += [
            f"| memcached {mc['version']} (item) | {mc['bytes_per_item']:.1f} | `stats` bytes / "
            "curr_items: item header, key, value, CAS |",
            f"| memcached {mc['version']} (slab chunk) | {mc['chunk_per_item']:.1f} | `stats slabs` "
            f"chunk_size x used_chunks / items (chunks of {', '.join(str(c) for c, _ in mc['chunk_sizes'])} B) |",
            f"| memcached {mc['version']} (process RSS) | {mc['rss_per_item']:.1f} | resident set growth "
            "/ items: slabs and hash table |",
        ]
    if rd:
        lines += [
            f"| Redis {rd['version']} | {rd['per_key']:.1f} | `used_memory` growth / keys "
            f"({rd['allocator']}) |",
        ]
    lines += [
        "",
        f"apccache's arena per entry: {apc['per_entry']:.1f} B "
        + (f"= {apc['per_entry'] / mc['chunk_per_item']:.2f}x memcached's slab chunk, "
           f"{apc['per_entry'] / mc['bytes_per_item']:.2f}x its item bytes" if mc else "")
        + (f"; {apc['per_entry'] / rd['per_key']:.2f}x Redis's used_memory per key" if rd else "")
        + ".",
        "",
        "## Fill at first eviction",
        "",
        f"A {ev['segment'] >> 20} MiB segment (arena {ev['arena']:,} B) takes new keys until a store "
        f"has to evict: it then held {ev['entries_before']:,} entries in {ev['used_before']:,} B of "
        f"arena, a fill of **{ev['fill'] * 100:.2f}%**.",
        "",
        f"The same with values of 10 to 1,000 bytes and every tenth store followed by a delete of "
        f"an earlier key (a fragmented arena): {evm['entries_before']:,} entries in "
        f"{evm['used_before']:,} B, a fill of **{evm['fill'] * 100:.2f}%** at the first eviction "
        f"({evm['compactions']} compactions by then).",
        "",
    ]
    if notes:
        lines += ["Notes:", ""] + [f"- {x}" for x in notes] + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--evict-size", type=int, default=16 << 20, help="segment size for the fill test")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "results", "memory_per_entry.md"))
    args = ap.parse_args(argv)
    notes: list[str] = []
    apc = apc_fill(args.entries)
    ev = apc_fill_at_first_eviction(args.evict_size)
    evm = apc_fill_at_first_eviction(args.evict_size, mixed=True)
    mc = rd = None
    try:
        mc = memcached_fill(args.entries, notes)
    except (OSError, RuntimeError) as e:
        notes.append(f"memcached failed: {e}")
    try:
        rd = redis_fill(args.entries, notes)
    except (OSError, RuntimeError) as e:
        notes.append(f"redis failed: {e}")
    text = render(args.entries, apc, ev, evm, mc, rd, notes)
    print(text)
    with contextlib.suppress(FileNotFoundError):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
