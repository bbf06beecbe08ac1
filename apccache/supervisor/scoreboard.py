"""The scoreboard: the supervisor's live state, kept in the cache segment's aux area.

The master and every worker write it; ``read(cache)`` (what ``apcstat`` and
``apccache status`` call) copies it out into plain dicts without disturbing
anyone.  It lives in the 64 KiB aux region the engine reserves inside the
segment (``Cache.aux``), so it needs no file of its own and vanishes with the
segment.

LAYOUT

All integers native byte order, standard sizes, no padding (``struct`` "=").
Strings are UTF-8, NUL-padded.  Every state and intent byte has an
``enum.IntEnum`` below (named in brackets).  Times ending in ``_wall`` below
are ``time.time()`` seconds; ``job_deadline`` is ``time.monotonic()``
seconds (CLOCK_MONOTONIC is the same clock in every process of a host).

::

    0       +-----------------------------------------------+
            | header (128 bytes)                            |
    128     +-----------------------------------------------+
            | pool records: 16 x 128 bytes                  |
    2176    +-----------------------------------------------+
            | worker records: 192 x 320 bytes               |
    63616   +-----------------------------------------------+
            | unused                                        |
    65536   +-----------------------------------------------+

Header::

    off size  field
      0    8  magic            b"APCSUPV1"
      8    4  version          FORMAT (1); changes whenever this layout does
     12    4  header_size      128
     16    4  pool_size        128
     20    4  pool_count       16
     24    4  worker_size      320
     28    4  worker_count     192
     32    8  master_pid
     40    8  started          wall time the supervisor started
     48    8  updated          wall time of the master's last loop pass (heartbeat)
     56    8  seq              incremented by the master on every update
     64    4  generation       the generation being served
     68    1  state            [SupervisorState] 1 starting, 2 running,
                               3 reloading, 4 stopping, 5 stopped, 6 failed
     69    1  last_reload      [ReloadOutcome] 0 none, 1 succeeded, 2 failed
     70    2  (reserved)
     72    4  reload_generation  the generation the last reload tried to start
     76   52  (reserved)

Pool record (written by the master only)::

      0    1  used             0 = empty record
      1    1  state            [PoolState] 1 running, 2 failed, 3 removed by a reload
      2    2  (reserved)
      4    4  workers          how many workers the pool should run
      8   32  name
     40    4  generation
     44    4  ready            workers of this pool idle or busy right now
     48    8  jobs             jobs finished (ok or not), dead workers included
     56    8  job_errors       jobs that raised
     64    8  time_limits      jobs that got JobTimeLimitExceeded
     72    8  time_limit_kills workers SIGKILLed past hard_kill_after
     80    8  crashes          workers that died outside a requested stop
     88    8  lost_jobs        jobs in flight when their worker died
     96    8  rotations        workers replaced after max_jobs or memory_limit
    104    8  restarts         workers started to replace another
    112   16  (reserved)

Worker record: bytes 0-103 are written by the master (before the fork and
after the reap), bytes 104-319 by the worker process itself, under a
sequence word: the worker makes ``wseq`` odd, writes, makes it even again;
a reader retries until it sees the same even value on both sides of its
copy.  A record is one process; ``restarts`` and ``last_exit`` carry the
history of its slot (pool, worker_id) over from the process it replaced::

      0    1  used             0 = empty record
      1    1  pool             index of its pool record
      2    2  worker_id        stable slot number inside the pool
      4    4  generation
      8    4  pid
     12    4  restarts         processes this slot has had before this one
     16    4  rotate_at        jobs after which it is due for rotation (0 never)
     20    4  rotate_cap       jobs after which it starts no further job
     24    8  forked_wall
     32   72  last_exit        how the slot's previous process ended, in words
    104    4  wseq             worker-side sequence word
    108    1  state            [WorkerState] 1 starting, 2 idle, 3 busy, 4 stopping
    109    1  intent           [Intent] why it is stopping: 0 -, 1 stop requested,
                               2 rotate (max_jobs), 3 rotate (memory_limit),
                               4 target returned, 5 target raised,
                               6 failed to start, 7 master gone
    110    1  rotating         1 once it holds its pool's rotation token
    111    1  (reserved)
    112    8  jobs
    120    4  job_errors
    124    4  time_limits
    128    8  job_started_wall 0 when idle
    136    8  job_deadline     monotonic deadline of the current job, 0 = none
    144    8  time_limit       seconds the current job is allowed, 0 = none
    152    8  memory           private memory in bytes (PSS without shared memory)
    160    8  rss              resident set in bytes, shared cache pages included
    168    8  ready_wall       when it became ready, 0 while starting
    176   32  job              current job's name
    208  112  note             the last error in brief (failed start, crash)

Values may be slightly stale: a worker samples its memory when it becomes
ready and after a job (after every job when its pool has a memory_limit,
otherwise at most once a second); the master refreshes the pool records and
the heartbeat on every loop pass (ten a second).
"""

import enum
import struct
import time

from .._bindings import pid_alive
from .errors import ScoreboardError

__all__ = [
    "FORMAT",
    "MAGIC",
    "SIZE",
    "POOL_COUNT",
    "WORKER_COUNT",
    "read",
    "Board",
    "WorkerRecord",
    "STATES",
    "INTENTS",
    "SupervisorState",
    "ReloadOutcome",
    "PoolState",
    "WorkerState",
    "Intent",
]

MAGIC = b"APCSUPV1"
FORMAT = 1

_HEADER = struct.Struct("=8sIIIIII q d d Q I B B 2x I 52x")
_POOL = struct.Struct("=B B 2x I 32s I I 8Q 16x")
_WMASTER = struct.Struct("=B B H I i I I I d 72s")
_WSEQ = struct.Struct("=I")
_WBODY = struct.Struct("=B B B x Q I I d d d Q Q d 32s 112s")

HEADER_SIZE = 128
POOL_SIZE = 128
POOL_COUNT = 16
WORKER_SIZE = 320
WORKER_COUNT = 192
_POOLS_OFF = HEADER_SIZE
_WORKERS_OFF = _POOLS_OFF + POOL_SIZE * POOL_COUNT
SIZE = _WORKERS_OFF + WORKER_SIZE * WORKER_COUNT
_WSEQ_OFF = _WMASTER.size
_WBODY_OFF = _WSEQ_OFF + _WSEQ.size

assert _HEADER.size == HEADER_SIZE, _HEADER.size
assert _POOL.size == POOL_SIZE, _POOL.size
assert _WMASTER.size == 104, _WMASTER.size
assert _WBODY_OFF + _WBODY.size == WORKER_SIZE, _WBODY_OFF + _WBODY.size

class SupervisorState(enum.IntEnum):
    """The header's state byte: where the master is in its life."""

    STARTING = 1
    RUNNING = 2
    RELOADING = 3
    STOPPING = 4
    STOPPED = 5
    FAILED = 6


class ReloadOutcome(enum.IntEnum):
    """The header's last_reload byte."""

    NONE = 0
    SUCCEEDED = 1
    FAILED = 2


class PoolState(enum.IntEnum):
    """A pool record's state byte."""

    RUNNING = 1
    FAILED = 2
    REMOVED = 3


class WorkerState(enum.IntEnum):
    """A worker record's state byte, written by the worker process."""

    STARTING = 1
    IDLE = 2
    BUSY = 3
    STOPPING = 4


class Intent(enum.IntEnum):
    """Why a worker is stopping, as the worker process writes it."""

    NONE = 0
    STOP = 1
    ROTATE_JOBS = 2
    ROTATE_MEMORY = 3
    RETURNED = 4
    RAISED = 5
    BOOT = 6
    ORPHANED = 7


# What read() says for each code, in words.
SUPERVISOR_STATES = {s: s.name.lower() for s in SupervisorState}
RELOAD_OUTCOMES = {ReloadOutcome.NONE: None, ReloadOutcome.SUCCEEDED: "succeeded", ReloadOutcome.FAILED: "failed"}
POOL_STATES = {s: s.name.lower() for s in PoolState}
STATES = {s: s.name.lower() for s in WorkerState}
INTENTS = {
    Intent.NONE: None,
    Intent.STOP: "stop requested",
    Intent.ROTATE_JOBS: "rotate (max_jobs)",
    Intent.ROTATE_MEMORY: "rotate (memory_limit)",
    Intent.RETURNED: "target returned",
    Intent.RAISED: "target raised",
    Intent.BOOT: "failed to start",
    Intent.ORPHANED: "master gone",
}
POOL_COUNTERS = (
    "jobs",
    "job_errors",
    "time_limits",
    "time_limit_kills",
    "crashes",
    "lost_jobs",
    "rotations",
    "restarts",
)

# The worker states by their short names, for the writers.
STARTING, IDLE, BUSY, STOPPING = WorkerState


def _text(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _field(text, size):
    """Encode *text* into at most *size* bytes of UTF-8, cut at a character boundary."""
    data = text.encode("utf-8", "replace")
    if len(data) <= size:
        return data
    return data[:size].decode("utf-8", "ignore").encode("utf-8")


def _buffer(obj):
    if hasattr(obj, "aux"):
        obj = obj.aux
    view = memoryview(obj)
    if view.nbytes < SIZE:
        raise ScoreboardError(
            f"the scoreboard needs {SIZE} bytes of aux space but the segment offers {view.nbytes}; "
            "recreate the segment with this version of apccache"
        )
    return view.cast("B") if view.format != "B" else view


def read(cache):
    """Return the supervisor's state in *cache* (a Cache or its aux buffer) as a dict.

    Returns None when no supervisor has ever written this segment's
    scoreboard (the region is still zero).  Raises ScoreboardError when it
    holds another format.  The result is a copy: pools as a dict keyed by
    name, workers as a list sorted by pool, worker_id and generation.  Reading
    takes no lock and never blocks a writer; each worker record is copied
    consistently, records relative to each other may be a few ms apart.
    """
    buf = _buffer(cache)
    # The header is read without a lock: a copy taken while the master
    # rewrites it (at start-up) may be torn, so one that does not add up is
    # read again a few times before it is believed.
    for _ in range(20):
        raw = bytes(buf[:HEADER_SIZE])
        if raw[:8] == b"\0" * 8:
            return None
        (magic, version, hsize, psize, pcount, wsize, wcount, master_pid, started, updated, seq,
         generation, state, last_reload, reload_gen) = _HEADER.unpack(raw)
        if magic == MAGIC and version == FORMAT and (hsize, psize, pcount, wsize, wcount) == (
                HEADER_SIZE, POOL_SIZE, POOL_COUNT, WORKER_SIZE, WORKER_COUNT):
            break
        time.sleep(0.005)
    if magic != MAGIC:
        raise ScoreboardError(
            f"the segment's aux area does not hold a supervisor scoreboard (magic {magic!r}); "
            "it was written by something else"
        )
    if version != FORMAT or (hsize, psize, pcount, wsize, wcount) != (
        HEADER_SIZE, POOL_SIZE, POOL_COUNT, WORKER_SIZE, WORKER_COUNT
    ):
        raise ScoreboardError(
            f"the scoreboard has format {version} but this apccache reads format {FORMAT}; "
            "use the apccache version the supervisor runs"
        )
    pools_by_index = {}
    pools = {}
    for i in range(POOL_COUNT):
        off = _POOLS_OFF + i * POOL_SIZE
        rec = _POOL.unpack(bytes(buf[off:off + POOL_SIZE]))
        if not rec[0]:
            continue
        used, pstate, workers, name, pgen, ready, *counters = rec
        info = {
            "name": _text(name),
            "state": POOL_STATES.get(pstate, f"unknown ({pstate})"),
            "workers": workers,
            "generation": pgen,
            "ready": ready,
        }
        info.update(zip(POOL_COUNTERS, counters))
        pools_by_index[i] = info["name"]
        pools[info["name"]] = info
    workers = []
    for i in range(WORKER_COUNT):
        rec = _read_record(buf, i)
        if rec is not None:
            rec["pool"] = pools_by_index.get(rec.pop("pool_index"), "?")
            workers.append(rec)
    workers.sort(key=lambda w: (w["pool"], w["worker_id"], w["generation"], w["forked"]))
    return {
        "master_pid": master_pid,
        "master_alive": pid_alive(master_pid),
        "started": started,
        "updated": updated,
        "seq": seq,
        "generation": generation,
        "state": SUPERVISOR_STATES.get(state, f"unknown ({state})"),
        "last_reload": RELOAD_OUTCOMES.get(last_reload),
        "reload_generation": reload_gen,
        "pools": pools,
        "workers": workers,
    }


def _read_record(buf, index):
    off = _WORKERS_OFF + index * WORKER_SIZE
    for _ in range(200):
        raw = bytes(buf[off:off + WORKER_SIZE])
        seq1 = _WSEQ.unpack_from(raw, _WSEQ_OFF)[0]
        seq2 = _WSEQ.unpack_from(buf, off + _WSEQ_OFF)[0]
        if seq1 == seq2 and not seq1 & 1:
            break
        time.sleep(0)
    used, pool_index, worker_id, generation, pid, restarts, rotate_at, rotate_cap, forked, last_exit = (
        _WMASTER.unpack_from(raw, 0)
    )
    if not used:
        return None
    (state, intent, rotating, jobs, job_errors, time_limits, job_started, job_deadline, time_limit,
     memory, rss, ready_at, job, note) = _WBODY.unpack_from(raw, _WBODY_OFF)
    busy = state == BUSY
    return {
        "pool_index": pool_index,
        "worker_id": worker_id,
        "generation": generation,
        "pid": pid,
        "state": STATES.get(state, f"unknown ({state})"),
        "intent": INTENTS.get(intent),
        "rotating": bool(rotating),
        "jobs": jobs,
        "job_errors": job_errors,
        "time_limits": time_limits,
        "job": _text(job) if busy else None,
        "job_started": job_started if busy and job_started else None,
        "job_deadline": job_deadline if busy and job_deadline else None,
        "time_limit": time_limit if busy and time_limit else None,
        "memory": memory or None,
        "rss": rss or None,
        "restarts": restarts,
        "rotate_at": rotate_at,
        "rotate_cap": rotate_cap,
        "forked": forked,
        "ready_at": ready_at or None,
        "last_exit": _text(last_exit) or None,
        "note": _text(note) or None,
    }


class Board:
    """The master's writer: header, pool records, and the master half of worker records."""

    def __init__(self, cache_or_buffer):
        self.buf = _buffer(cache_or_buffer)
        self.seq = 0

    # -- header ---------------------------------------------------------------

    def initialise(self, master_pid, started):
        """Zero the whole scoreboard and write a fresh header (master start-up only)."""
        self.buf[:SIZE] = bytes(SIZE)
        self.write_header(master_pid, started, generation=0, state=SupervisorState.STARTING)

    def write_header(self, master_pid, started, generation, state, last_reload=0, reload_generation=0):
        """Rewrite the header; bumps seq and the heartbeat."""
        self.seq += 1
        _HEADER.pack_into(
            self.buf, 0, MAGIC, FORMAT, HEADER_SIZE, POOL_SIZE, POOL_COUNT, WORKER_SIZE, WORKER_COUNT,
            master_pid, started, time.time(), self.seq, generation, state, last_reload, reload_generation,
        )

    def header_master_pid(self):
        """The master pid recorded in the header, or 0 if the scoreboard is blank or foreign."""
        raw = bytes(self.buf[:HEADER_SIZE])
        if raw[:8] != MAGIC:
            return 0
        return _HEADER.unpack(raw)[7]

    # -- pools ----------------------------------------------------------------

    def write_pool(self, index, name, state, workers, generation, ready, counters):
        """Write pool record *index*; counters is a dict with the POOL_COUNTERS keys."""
        _POOL.pack_into(
            self.buf, _POOLS_OFF + index * POOL_SIZE, 1, state, workers, _field(name, 32),
            generation, ready, *(int(counters.get(k, 0)) for k in POOL_COUNTERS),
        )

    def clear_pool(self, index):
        """Mark pool record *index* empty."""
        off = _POOLS_OFF + index * POOL_SIZE
        self.buf[off:off + POOL_SIZE] = bytes(POOL_SIZE)

    # -- worker records -------------------------------------------------------

    def free_record(self):
        """Index of an empty worker record, or None when all are in use."""
        for i in range(WORKER_COUNT):
            if not self.buf[_WORKERS_OFF + i * WORKER_SIZE]:
                return i
        return None

    def claim_record(self, index, pool_index, worker_id, generation, restarts, rotate_at, rotate_cap,
                     last_exit):
        """Fill record *index* for a process about to be forked; its state is "starting"."""
        off = _WORKERS_OFF + index * WORKER_SIZE
        self.buf[off:off + WORKER_SIZE] = bytes(WORKER_SIZE)
        _WBODY.pack_into(self.buf, off + _WBODY_OFF, STARTING, Intent.NONE, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0, 0, 0.0,
                         b"", b"")
        _WMASTER.pack_into(
            self.buf, off, 0, pool_index, worker_id, generation, 0, restarts, rotate_at, rotate_cap,
            time.time(), _field(last_exit or "", 72),
        )
        self.buf[off] = 1

    def set_pid(self, index, pid):
        """Record the pid of the process forked for record *index*."""
        struct.pack_into("=i", self.buf, _WORKERS_OFF + index * WORKER_SIZE + 8, pid)

    def release_record(self, index):
        """Mark record *index* empty (its process has been reaped)."""
        off = _WORKERS_OFF + index * WORKER_SIZE
        self.buf[off] = 0

    def record(self, index):
        """A consistent copy of record *index* as a dict (with pool_index), or None if empty."""
        return _read_record(self.buf, index)


class WorkerRecord:
    """A worker process's writer for its own half of its record.

    The worker keeps the fields as attributes and ``flush()`` publishes them
    all at once under the record's sequence word.
    """

    __slots__ = (
        "buf", "off", "seq", "state", "intent", "rotating", "jobs", "job_errors", "time_limits",
        "job_started", "job_deadline", "time_limit", "memory", "rss", "ready_at", "job", "note",
    )

    def __init__(self, cache_or_buffer, index):
        self.buf = _buffer(cache_or_buffer)
        self.off = _WORKERS_OFF + index * WORKER_SIZE
        self.seq = _WSEQ.unpack_from(self.buf, self.off + _WSEQ_OFF)[0] & ~1
        self.state = STARTING
        self.intent = Intent.NONE
        self.rotating = 0
        self.jobs = 0
        self.job_errors = 0
        self.time_limits = 0
        self.job_started = 0.0
        self.job_deadline = 0.0
        self.time_limit = 0.0
        self.memory = 0
        self.rss = 0
        self.ready_at = 0.0
        self.job = ""
        self.note = ""

    def set_pid(self, pid):
        """Write this process's pid into the master half (the master writes the same value)."""
        struct.pack_into("=i", self.buf, self.off + 8, pid)

    def flush(self):
        """Publish every field: seq odd, write, seq even."""
        buf, off = self.buf, self.off
        self.seq += 1
        _WSEQ.pack_into(buf, off + _WSEQ_OFF, self.seq)
        _WBODY.pack_into(
            buf, off + _WBODY_OFF, self.state, self.intent, self.rotating, self.jobs, self.job_errors,
            self.time_limits, self.job_started, self.job_deadline, self.time_limit, self.memory, self.rss,
            self.ready_at, _field(self.job, 32), _field(self.note, 112),
        )
        self.seq += 1
        _WSEQ.pack_into(buf, off + _WSEQ_OFF, self.seq)
