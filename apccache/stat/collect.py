"""What apcstat reads: one plain, JSON-ready snapshot of a live segment.

``collect(cache)`` copies everything the summary shows out of the segment in
a handful of engine calls and returns it as nested dicts of ints, floats,
strings and lists: the object ``apcstat NAME --json`` prints (``SCHEMA`` is
its version; it changes whenever a field changes meaning or goes away).

Everything is read through the public methods of ``Cache`` (and its
``file_table``), and reading disturbs nothing: nothing here calls ``fetch``,
and nothing writes to the segment.  It does take locks, briefly, where the
engine cannot read lock-free.  Counters come from ``Cache.info(limited=True)``
and ``FileTable.info()``, read without a lock except the GC list's length
and oldest deletion, which are walked under the whole lock (every bucket
stripe's and the allocator's) when that list (or a pending one) is not
empty.  The entry records (for the chain-length histogram, top keys and the
entry table) come from ``records()``, which walks the table one bucket at a
time under that bucket's stripe lock, and copies them out without counting
a hit, touching an access time or pinning anything; the allocator's totals
and free list (``sma_info``) are read in one hold of the whole lock.  The
supervisor's scoreboard is read lock-free.

``list_segments()`` finds apccache segments by reading the first bytes of
each file in /dev/shm with ``os.pread``: it never maps or attaches one.
"""
import heapq
import os
import pwd
import stat as _stat
import struct
import time
from collections import Counter

from .. import _bindings as B

__all__ = ["SCHEMA", "SHM_DIR", "collect", "entry_records", "list_segments", "owner_of", "read_header"]

SCHEMA = 1
SHM_DIR = "/dev/shm"

MAGIC = b"APCCACHE"  # APC_MAGIC_U64, little-endian
ENDIAN_MARK = 0x01020304

# The start of apc_header (csrc/apc_internal.h): magic .. arena_size, the
# set-once geometry; where the allocator's free bytes and the user table's
# entry count sit, the engine says (apc_header_map_get), so that a listing
# reads them from the file without attaching and without hard-coded offsets.
_HEAD = struct.Struct("=8sIIIIQQqQQQQQQ")  # magic .. arena_size
_U64 = struct.Struct("=Q")


_HEADER_READ = B.LAYOUT["header_size"]
_FREE_BYTES_OFF = B.LAYOUT["free_bytes_off"]
# The user table's entry count is kept per bucket stripe: summed here.
_NUM_ENTRIES_AT = [B.LAYOUT["num_entries_off"] + i * B.LAYOUT["bstripe_size"]
                   for i in range(B.LAYOUT["nstripes"])]

# The binding's value type tags (apccache._bindings), by name.
TYPE_NAMES = {B.T_BYTES: "bytes", B.T_STR: "str", B.T_INT: "int", B.T_FLOAT: "float", B.T_TRUE: "bool",
              B.T_FALSE: "bool", B.T_NONE: "none", B.T_SER: "serialized"}

REC_DELETED = B.REC_DELETED
REC_EXPIRED = B.REC_EXPIRED
SNAP_LIVE = B.SNAP_LIVE
SNAP_DELETED = B.SNAP_DELETED
TABLE_FILES = B.TABLE_FILES


# ----------------------------------------------------------------- owners


def owner_of(name):
    """(uid, user name or None, mode string) of /dev/shm/NAME, or None if it is gone."""
    try:
        st = os.stat(os.path.join(SHM_DIR, name))
    except OSError:
        return None
    return st.st_uid, _user(st.st_uid), f"{_stat.S_IMODE(st.st_mode):04o}"


def _owner_of_handle(cache):
    """(uid, user name, mode string) from the fstat taken of the descriptor
    the handle maps (None if unknown): what was attached, not what the name
    means now."""
    st = getattr(cache, "file_stat", None)
    if st is None:
        return None
    return st.st_uid, _user(st.st_uid), f"{_stat.S_IMODE(st.st_mode):04o}"


def _distrust(cache):
    """Why the segment failed the trust check, in a few words; None if it passed."""
    if cache.untrusted is None:
        return None
    st = cache.file_stat
    if st is None:
        return "it failed the trust check"
    if not _stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != os.geteuid():
        user = _user(st.st_uid)
        return f"owned by {user + ' (uid ' + str(st.st_uid) + ')' if user else 'uid ' + str(st.st_uid)}, not by you"
    if st.st_mode & _stat.S_IWOTH:
        return "writable by others"
    return "writable by its group"


def _user(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


pid_alive = B.pid_alive


# ---------------------------------------------------------------- listing


def read_header(path):
    """The header of the apccache segment file at path, as a dict, without
    mapping it.  None if it is not an apccache segment (or not finished).

    Raises PermissionError if the file cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        raw = os.pread(fd, _HEADER_READ, 0)
    finally:
        os.close(fd)
    if len(raw) < 8 or raw[:8] != MAGIC:
        return None
    out = {"layout_version": None, "size": None, "created": None, "creator_pid": None,
           "entries": None, "memory_free": None, "arena_size": None}
    if len(raw) < _HEAD.size:
        return out
    (_, fmt, _hsize, _msize, endian, seg_size, ctime, cpid, _ttl, _gcttl, _aux_off, _aux_size,
     _arena_off, arena_size) = _HEAD.unpack_from(raw)
    out["layout_version"] = fmt
    if endian != ENDIAN_MARK:
        out["layout_version"] = fmt if fmt < 1 << 16 else None
        out["foreign_abi"] = True
        return out
    out.update(size=seg_size, created=ctime, creator_pid=cpid, arena_size=arena_size)
    if fmt == B.FORMAT and len(raw) >= _HEADER_READ:
        out["memory_free"] = _U64.unpack_from(raw, _FREE_BYTES_OFF)[0]
        out["entries"] = sum(_U64.unpack_from(raw, at)[0] for at in _NUM_ENTRIES_AT)
    return out


def list_segments():
    """(segments, unreadable): every apccache segment in /dev/shm as a dict
    (name, size, owner, mode, layout version, entries, ...), sorted by name,
    and how many files there could not be read to tell."""
    segs, unreadable = [], 0
    try:
        names = sorted(os.listdir(SHM_DIR))
    except OSError:
        return [], 0
    for name in names:
        path = os.path.join(SHM_DIR, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not _stat.S_ISREG(st.st_mode) or st.st_size < 8:
            continue
        try:
            head = read_header(path)
        except PermissionError:
            unreadable += 1
            continue
        except OSError:
            continue
        if head is None:
            continue
        seg = {
            "name": name,
            "size": head["size"] if head["size"] is not None else st.st_size,
            "owner_uid": st.st_uid,
            "owner": _user(st.st_uid),
            "mode": f"{_stat.S_IMODE(st.st_mode):04o}",
        }
        seg.update({k: v for k, v in head.items() if k != "size"})
        if seg["creator_pid"] is not None:
            seg["creator_alive"] = pid_alive(seg["creator_pid"])
        segs.append(seg)
    return segs, unreadable


# ---------------------------------------------------------------- entries


def entry_records(cache, table=0, flags=SNAP_LIVE | SNAP_DELETED):
    """[(EntryRecord, key bytes)] of the user table (0) or the file table
    (TABLE_FILES): see Cache.records; counts nothing."""
    source = cache.file_table if table == TABLE_FILES else cache
    return source.records(live=bool(flags & SNAP_LIVE), deleted=bool(flags & SNAP_DELETED))


def entry_dict(rec, key, now):
    """One entry record as the entry table's row (base units, epoch seconds)."""
    try:
        text, key_hex = key.decode(), None
    except UnicodeDecodeError:
        text, key_hex = key.decode("utf-8", "backslashreplace"), key.hex()
    row = {
        "key": text,
        "type": TYPE_NAMES.get(rec.type, f"type {rec.type}"),
        "hits": rec.hits,
        "size": rec.mem_size,
        "value_size": rec.val_len,
        "created": rec.ctime,
        "modified": rec.mtime,
        "accessed": rec.atime,
        "ttl": rec.ttl,
        "expires": rec.ctime + rec.ttl if rec.ttl else None,
        "deleted": rec.dtime if rec.flags & REC_DELETED else None,
        "refs": rec.refs,
    }
    if key_hex is not None:
        row["key_hex"] = key_hex
    return row


def _chains(records, nslots):
    """Chain-length statistics from the records of one table's chains."""
    per_bucket = Counter(rec.hash % nslots for rec, _k in records)
    hist = Counter(per_bucket.values())
    hist[0] = nslots - len(per_bucket)
    longest = max(per_bucket.values(), default=0)
    return {
        "count": nslots,
        "used": len(per_bucket),
        "load": round(len(records) / nslots, 6) if nslots else 0.0,
        "longest_chain": longest,
        "chain_lengths": [{"length": n, "slots": hist.get(n, 0)} for n in range(longest + 1)],
    }


def _free_histogram(blocks):
    """Free blocks by power-of-two size class: [{min, max, blocks, bytes}]."""
    classes = {}
    for b in blocks:
        size = b["size"]
        if size <= 0:
            continue
        lg = size.bit_length() - 1
        c = classes.setdefault(lg, [0, 0])
        c[0] += 1
        c[1] += size
    return [{"min": 1 << lg, "max": (1 << (lg + 1)) - 1, "blocks": n, "bytes": total}
            for lg, (n, total) in sorted(classes.items())]


def _rates(counts, since):
    """Per-second rates since the counters started; None in their first second."""
    if since <= 0:
        return None
    return {k: round(v / since, 6) for k, v in counts.items()}


def _table(i, now):
    hits, misses = i["num_hits"], i["num_misses"]
    requests = hits + misses
    since = max(0, now - i["start_time"])
    return {
        "entries": i["num_entries"],
        "memory": i["mem_size"],
        "hits": hits,
        "misses": misses,
        "requests": requests,
        "hit_rate": round(hits / requests, 6) if requests else None,
        "inserts": i["num_inserts"],
        "expunges": i["expunges"],
        "evictions": i["evictions"],
        "expired": i["expired"],
        "start_time": i["start_time"],
        "since_start": since,
        "rates": _rates({"requests": requests, "hits": hits, "misses": misses,
                         "inserts": i["num_inserts"]}, since),
    }


def collect(cache, *, detail=True, top=5, now=None):
    """The summary of the segment behind ``cache`` as one JSON-ready dict.

    With ``detail`` (the default) it includes what needs the entry records
    and the free list: chain lengths, expired-but-unremoved entries, top
    keys, the GC list's records and the free-block histogram.  Without it,
    only lock-free counters and the allocator totals are read (what ``watch
    --lines`` and the Prometheus collector use by default).
    """
    now = int(time.time()) if now is None else now
    info = cache.info(limited=True)
    # GC list length and oldest deletion come with info(); they are what
    # apc_info_get walks under the lock, and only when the list is not empty.
    name = cache.name
    owner = _owner_of_handle(cache) or owner_of(name)
    seg = {
        "name": name,
        "path": os.path.join(SHM_DIR, name),
        "size": info["seg_size"],
        "layout_version": info["format"],
        "created": info["create_time"],
        "uptime": max(0, now - info["create_time"]),
        "creator_pid": info["creator_pid"],
        "creator_alive": pid_alive(info["creator_pid"]),
        "owner_uid": owner[0] if owner else None,
        "owner": owner[1] if owner else None,
        "mode": owner[2] if owner else None,
        "trusted": cache.untrusted is None,
        "untrusted_reason": _distrust(cache),
    }
    user = _table(info, now)
    user.update({
        "ttl": info["ttl"],
        "gc_ttl": info["gc_ttl"],
        "gc": {"entries": info["gc_entries"], "memory": info["gc_mem_size"],
               "oldest_deletion": info["gc_oldest"] or None},
        "entries_in_progress": info["entries_in_progress"],
        "pins": info["pins"],
    })
    sma = cache.sma_info(limited=not detail)
    alloc = {
        "arena_size": sma["seg_size"],
        "used": sma["used_mem"],
        "free": sma["avail_mem"],
        "largest_free": sma["largest_free"],
        "free_blocks": sma["num_free_blocks"],
        "used_blocks": sma["num_used_blocks"],
        "repairs": info["repairs"],
        "compactions": info["compactions"],
    }
    out = {"apcstat": SCHEMA, "time": now, "detail": detail, "segment": seg, "user": user}
    if detail:
        alloc["free_block_sizes"] = _free_histogram(sma["block_lists"][0])
        recs = entry_records(cache, 0, SNAP_LIVE)
        user["expired_entries"] = sum(1 for r, _ in recs if r.flags & REC_EXPIRED)
        hot = heapq.nsmallest(top, ((r, k) for r, k in recs if r.hits > 0 and not r.flags & REC_EXPIRED),
                              key=lambda rk: (-rk[0].hits, rk[1]))
        user["top_keys"] = [
            {k: v for k, v in entry_dict(r, key, now).items() if k in ("key", "key_hex", "hits", "size", "type")}
            for r, key in hot
        ]
        out["slots"] = _chains(recs, info["num_slots"])
    else:
        out["slots"] = {"count": info["num_slots"]}
    out["allocator"] = alloc
    out["files"] = _files(cache, now, detail)
    out["supervisor"] = supervisor(cache)
    return out


def _files(cache, now, detail):
    """The file (and opcode) cache's table, or None when it has never been used."""
    ft = cache.file_table
    i = ft.info()
    if not (i["num_entries"] or i["num_inserts"] or i["num_hits"] or i["num_misses"]):
        return None
    out = _table(i, now)
    out["slots"] = {"count": i["num_slots"]}
    if detail and i["num_entries"]:
        out["slots"] = _chains(entry_records(cache, TABLE_FILES, SNAP_LIVE), i["num_slots"])
    return out


# ------------------------------------------------------------- supervisor


def supervisor(cache):
    """The supervisor's pools and workers from the segment's scoreboard, in
    apcstat's own stable shape; None if no supervisor ever wrote one, or
    {"error": ...} if it cannot be read."""
    try:
        from ..supervisor import scoreboard
    except ImportError:  # pragma: no cover - the supervisor is optional
        return None
    try:
        board = scoreboard.read(cache)
    except Exception as e:  # ScoreboardError: a foreign or newer scoreboard
        return {"error": str(e)}
    if board is None:
        return None
    wall = time.time()
    pools = []
    for p in board.get("pools", {}).values():
        pools.append({k: p.get(k) for k in (
            "name", "state", "workers", "ready", "generation", "jobs", "job_errors", "time_limits",
            "time_limit_kills", "crashes", "lost_jobs", "rotations", "restarts")})
    workers = []
    for w in board.get("workers", []):
        started = w.get("job_started")
        workers.append({
            "pid": w.get("pid"),
            "pool": w.get("pool"),
            "worker_id": w.get("worker_id"),
            "generation": w.get("generation"),
            "state": w.get("state"),
            "intent": w.get("intent"),
            "jobs": w.get("jobs"),
            "job_errors": w.get("job_errors"),
            "time_limits": w.get("time_limits"),
            "job": w.get("job"),
            "job_started": started,
            "job_runtime": round(max(0.0, wall - started), 3) if started else None,
            "time_limit": w.get("time_limit"),
            "memory": w.get("memory"),
            "rss": w.get("rss"),
            "restarts": w.get("restarts"),
            "last_exit": w.get("last_exit"),
            "note": w.get("note"),
            "forked": w.get("forked"),
            "ready_at": w.get("ready_at"),
        })
    return {
        "master_pid": board.get("master_pid"),
        "master_alive": board.get("master_alive"),
        "state": board.get("state"),
        "generation": board.get("generation"),
        "started": board.get("started"),
        "heartbeat": board.get("updated"),
        "last_reload": board.get("last_reload"),
        "pools": pools,
        "workers": workers,
    }
