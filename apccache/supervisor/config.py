"""The supervisor's TOML configuration: parsing and validation.

``load(path)`` reads a file, ``parse(data, source)`` validates an already
decoded table; both return a frozen :class:`Config` or raise
:class:`ConfigError` naming the key, the rule, the value given and the fix,
e.g. ``supervisor.toml: pools.images.workers must be an integer from 1 to 128
(got 0)``.  Unknown keys are errors too (with a suggestion when one is close),
because a misspelt ``max_job = 400`` that silently does nothing is worse than
a refusal.

The format, with every key and its default::

    [supervisor]
    stop_timeout = 10          # seconds a graceful stop waits before SIGKILL
    start_timeout = 30         # seconds a new worker may take to become ready
    python_path = ["."]        # prepended to sys.path in workers, relative to this file

    [cache]                    # the segment the master creates before forking
    name = "myapp"             # required
    size = "64M"               # bytes, or a string with K, M, G (powers of 1024)
    slots = 0                  # slot table size hint; 0 lets the engine choose
    ttl = 0                    # default entry TTL in seconds; 0 = none
    gc_ttl = 3600              # seconds before a deleted-but-held entry is reclaimed
    keep = false               # keep the segment after the supervisor exits

    [init]                     # optional preflight, run once before any worker starts
    command = ["{python}", "preflight.py"]   # run in this file's folder, no shell;
                               # "{python}" is the supervisor's own interpreter; the
                               # command gets APCCACHE_NAME, and PYTHONPATH starts with
                               # python_path and the apccache the supervisor runs
    timeout = 30
    fail_on_error = true

    [opcode]                   # optional: serve the workers' imports from the segment
    enabled = false
    mode = "stat"              # or "no-stat" (see apccache.opcode)
    warm = []                  # source trees compiled into the segment before forking,
                               # relative to this file

    [fleet]                    # optional: run the fleet tier's invalidation listener
    redis = "redis://host:6379/0"   # required (see apccache.fleet)
    namespace = "myapp"        # required: the FleetCache namespace
    max_lag = 0.05             # seconds: readers' trust bound
    ping_interval = 0.01
    dead_after = 1.0

    [pools.NAME]               # one table per pool; at least one
    target = "pkg.module:function"   # required
    workers = 1
    max_jobs = 0               # 0 = never rotate on job count
    max_jobs_jitter = 0
    job_time_limit = 0         # seconds; 0 = none
    hard_kill_after = 5
    memory_limit = 0           # bytes or "256M"; 0 = none
    restart_backoff = [0.1, 30]
    max_crashes = 10           # within crash_window seconds marks the pool failed
    crash_window = 60
    env = {}                   # environment variables set in each worker
"""

import dataclasses
import difflib
import os
import re
import tomllib
from typing import Optional

from .._units import format_size
from .errors import ConfigError

__all__ = [
    "Config",
    "SupervisorConfig",
    "CacheConfig",
    "InitConfig",
    "PoolConfig",
    "load",
    "parse",
    "parse_size",
    "MAX_POOLS",
    "MAX_WORKERS",
    "MAX_POOL_NAME",
]

#: The scoreboard has room for this many pools (see scoreboard.py).
MAX_POOLS = 16
#: Configured workers over all pools; the scoreboard holds twice as many
#: records so that a reload can run an old and a new generation side by side.
MAX_WORKERS = 96
#: Pool names are stored in a fixed 32-byte field.
MAX_POOL_NAME = 31

_POOL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_TARGET = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_CACHE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclasses.dataclass(frozen=True)
class SupervisorConfig:
    stop_timeout: float = 10.0
    start_timeout: float = 30.0
    python_path: tuple = ()


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    name: str
    size: int = 64 << 20
    slots: Optional[int] = None
    ttl: int = 0
    gc_ttl: int = 3600
    keep: bool = False


@dataclasses.dataclass(frozen=True)
class InitConfig:
    command: tuple
    timeout: float = 30.0
    fail_on_error: bool = True


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    name: str
    target: str
    workers: int = 1
    max_jobs: int = 0
    max_jobs_jitter: int = 0
    job_time_limit: float = 0.0
    hard_kill_after: float = 5.0
    memory_limit: int = 0
    restart_backoff: tuple = (0.1, 30.0)
    max_crashes: int = 10
    crash_window: float = 60.0
    env: tuple = ()  # sorted (name, value) pairs, hashable

    @property
    def module(self):
        return self.target.partition(":")[0]

    @property
    def function(self):
        return self.target.partition(":")[2]


@dataclasses.dataclass(frozen=True)
class OpcodeConfig:
    enabled: bool = False
    mode: str = "stat"
    warm: tuple = ()

    def table(self):
        """The [opcode] table as apccache.opcode.setup_for_supervisor takes it."""
        return {"enabled": self.enabled, "mode": self.mode, "warm": list(self.warm)}


@dataclasses.dataclass(frozen=True)
class FleetConfig:
    redis: str
    namespace: str
    max_lag: float = 0.05
    ping_interval: float = 0.01
    dead_after: float = 1.0

    def table(self):
        """The [fleet] table as apccache.fleet.service.ListenerService takes it."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Config:
    source: str
    base_dir: str
    supervisor: SupervisorConfig
    cache: CacheConfig
    init: Optional[InitConfig]
    pools: tuple  # of PoolConfig, in file order
    opcode: OpcodeConfig = dataclasses.field(default_factory=OpcodeConfig)
    fleet: Optional[FleetConfig] = None

    def pool(self, name):
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def total_workers(self):
        return sum(p.workers for p in self.pools)


def load(path):
    """Read and validate the TOML file at *path*; raise ConfigError if it is bad."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {source!r} does not exist; pass the path of a TOML file") from None
    except IsADirectoryError:
        raise ConfigError(f"config path {source!r} is a directory; pass the path of a TOML file") from None
    except PermissionError as e:
        raise ConfigError(f"config file {source!r} cannot be read: {e.strerror.lower()}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not valid TOML: the file is not UTF-8 text") from None
    base_dir = os.path.dirname(os.path.abspath(source))
    return parse(data, source=source, base_dir=base_dir)


def parse(data, source="<config>", base_dir=None):
    """Validate a decoded TOML table and return a Config; raise ConfigError if it is bad."""
    v = _Validator(source)
    if not isinstance(data, dict):
        v.fail("the configuration must be a TOML table")
    base_dir = os.path.abspath(base_dir or os.getcwd())
    v.known(data, "", ("supervisor", "cache", "init", "pools", "opcode", "fleet"))

    sup = v.table(data, "supervisor", required=False)
    v.known(sup, "supervisor", ("stop_timeout", "start_timeout", "python_path"))
    python_path = v.str_list(sup, "supervisor.python_path", default=["."], allow_empty=True)
    supervisor = SupervisorConfig(
        stop_timeout=v.seconds(sup, "supervisor.stop_timeout", 10.0, minimum=0.0),
        start_timeout=v.seconds(sup, "supervisor.start_timeout", 30.0, minimum=0.1),
        python_path=tuple(os.path.normpath(os.path.join(base_dir, p)) for p in python_path),
    )

    c = v.table(data, "cache", required=True)
    v.known(c, "cache", ("name", "size", "slots", "ttl", "gc_ttl", "keep"))
    name = v.string(c, "cache.name", required=True)
    if not _CACHE_NAME.match(name) or len(name) > 200:
        v.fail(
            f"cache.name must be 1 to 200 characters from letters, digits, '_', '.' and '-' "
            f"(got {name!r}); it names the segment /dev/shm/<name>"
        )
    size = v.size(c, "cache.size", 64 << 20, minimum=1 << 20, allow_zero=False)
    slots = v.integer(c, "cache.slots", 0, minimum=0)
    cache = CacheConfig(
        name=name,
        size=size,
        slots=slots or None,
        ttl=v.integer(c, "cache.ttl", 0, minimum=0, maximum=_MAX_TTL),
        gc_ttl=v.integer(c, "cache.gc_ttl", 3600, minimum=1, maximum=_MAX_TTL),
        keep=v.boolean(c, "cache.keep", False),
    )

    init = None
    if "init" in data:
        i = v.table(data, "init", required=True)
        v.known(i, "init", ("command", "timeout", "fail_on_error"))
        if isinstance(i.get("command"), str):
            v.fail(
                f"init.command must be a list of strings such as [\"python\", \"preflight.py\"] "
                f"(got the string {i['command']!r}); the command is run without a shell"
            )
        command = v.str_list(i, "init.command", required=True)
        init = InitConfig(
            command=tuple(command),
            timeout=v.seconds(i, "init.timeout", 30.0, minimum=0.001),
            fail_on_error=v.boolean(i, "init.fail_on_error", True),
        )

    from .. import opcode as _opcode

    try:
        op = _opcode.parse_supervisor_config(data.get("opcode"))
    except ValueError as e:
        v.fail(str(e))
    opcode = OpcodeConfig(enabled=op["enabled"], mode=op["mode"], warm=tuple(op["warm"]))

    from ..fleet import service as _fleet_service

    try:
        fl = _fleet_service.parse_supervisor_config(data.get("fleet"))
    except ValueError as e:
        v.fail(str(e))
    fleet = FleetConfig(**fl) if fl is not None else None

    pools_table = v.table(data, "pools", required=True)
    if not pools_table:
        v.fail("the configuration needs at least one pool: add a [pools.NAME] table with a target")
    if len(pools_table) > MAX_POOLS:
        v.fail(f"at most {MAX_POOLS} pools are supported (got {len(pools_table)}); merge some pools")
    pools = []
    for pname, ptable in pools_table.items():
        key = f"pools.{pname}"
        if not _POOL_NAME.match(pname) or len(pname.encode()) > MAX_POOL_NAME:
            v.fail(
                f"pool name {pname!r} must be 1 to {MAX_POOL_NAME} characters from letters, digits, "
                "'_', '.' and '-', not starting with '.' or '-'"
            )
        if not isinstance(ptable, dict):
            v.fail(f"{key} must be a table ([{key}]), not {_kind(ptable)}")
        pools.append(_parse_pool(v, key, pname, ptable))
    total = sum(p.workers for p in pools)
    if total > MAX_WORKERS:
        v.fail(
            f"the pools ask for {total} workers in all but at most {MAX_WORKERS} are supported; "
            "lower some pool's workers"
        )
    return Config(
        source=source,
        base_dir=base_dir,
        supervisor=supervisor,
        cache=cache,
        init=init,
        pools=tuple(pools),
        opcode=opcode,
        fleet=fleet,
    )


def _parse_pool(v, key, name, t):
    v.known(
        t,
        key,
        (
            "target",
            "workers",
            "max_jobs",
            "max_jobs_jitter",
            "job_time_limit",
            "hard_kill_after",
            "memory_limit",
            "restart_backoff",
            "max_crashes",
            "crash_window",
            "env",
        ),
    )
    target = v.string(t, f"{key}.target", required=True)
    if not _TARGET.match(target):
        v.fail(
            f"{key}.target must name a function as \"package.module:function\" (got {target!r})"
        )
    workers = v.integer(t, f"{key}.workers", 1, minimum=1, maximum=MAX_WORKERS)
    max_jobs = v.integer(t, f"{key}.max_jobs", 0, minimum=0)
    jitter = v.integer(t, f"{key}.max_jobs_jitter", 0, minimum=0)
    if jitter and not max_jobs:
        v.fail(
            f"{key}.max_jobs_jitter is {jitter} but max_jobs is 0 (never rotate); "
            "set max_jobs or remove max_jobs_jitter"
        )
    backoff = t.get("restart_backoff", [0.1, 30.0])
    if (
        not isinstance(backoff, list)
        or len(backoff) != 2
        or not all(_is_number(x) for x in backoff)
    ):
        v.fail(
            f"{key}.restart_backoff must be a list of two numbers [min, max] in seconds, "
            f"such as [0.1, 30] (got {backoff!r})"
        )
    lo, hi = float(backoff[0]), float(backoff[1])
    if not (0 < lo <= hi):
        v.fail(
            f"{key}.restart_backoff must have 0 < min <= max (got [{backoff[0]}, {backoff[1]}])"
        )
    env = t.get("env", {})
    if not isinstance(env, dict):
        v.fail(f"{key}.env must be a table of strings such as {{ NAME = \"value\" }} (got {_kind(env)})")
    for k, val in env.items():
        if not isinstance(val, str):
            v.fail(f"{key}.env.{k} must be a string (got {_kind(val)} {val!r}); quote it")
        if not k or "=" in k or "\0" in k or "\0" in val:
            v.fail(f"{key}.env has an invalid variable name {k!r}")
    return PoolConfig(
        name=name,
        target=target,
        workers=workers,
        max_jobs=max_jobs,
        max_jobs_jitter=jitter,
        job_time_limit=v.seconds(t, f"{key}.job_time_limit", 0.0, minimum=0.0),
        hard_kill_after=v.seconds(t, f"{key}.hard_kill_after", 5.0, minimum=0.0),
        memory_limit=v.size(t, f"{key}.memory_limit", 0, minimum=1 << 20, allow_zero=True),
        restart_backoff=(lo, hi),
        max_crashes=v.integer(t, f"{key}.max_crashes", 10, minimum=1),
        crash_window=v.seconds(t, f"{key}.crash_window", 60.0, minimum=1.0),
        env=tuple(sorted(env.items())),
    )


def parse_size(value):
    """Return the byte count for an int or a string such as "64M" / "1.5G"; ValueError if bad."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(value)
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    raise ValueError(value)


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _kind(x):
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(x), type(x).__name__)


class _Validator:
    def __init__(self, source):
        self.source = source

    def fail(self, message):
        raise ConfigError(f"{self.source}: {message}")

    def known(self, table, prefix, allowed):
        for k in table:
            if k not in allowed:
                where = f"{prefix}.{k}" if prefix else k
                close = difflib.get_close_matches(k, allowed, n=1)
                hint = f" (did you mean {close[0]}?)" if close else f"; known keys: {', '.join(allowed)}"
                self.fail(f"unknown key {where}{hint}")

    def table(self, data, key, required):
        if key not in data:
            if required:
                self.fail(f"missing [{key}] table")
            return {}
        t = data[key]
        if not isinstance(t, dict):
            self.fail(f"{key} must be a table ([{key}]), not {_kind(t)}")
        return t

    def _get(self, table, key, default, required):
        leaf = key.rpartition(".")[2]
        if leaf not in table:
            if required:
                self.fail(f"missing required key {key}")
            return default, False
        return table[leaf], True

    def string(self, table, key, default=None, required=False):
        value, given = self._get(table, key, default, required)
        if given and (not isinstance(value, str) or not value):
            self.fail(f"{key} must be a non-empty string (got {_kind(value)} {value!r})")
        return value

    def boolean(self, table, key, default):
        value, given = self._get(table, key, default, False)
        if given and not isinstance(value, bool):
            self.fail(f"{key} must be true or false (got {_kind(value)} {value!r})")
        return value

    def integer(self, table, key, default, minimum=None, maximum=None):
        value, given = self._get(table, key, default, False)
        if not given:
            return value
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(f"{key} must be an integer{_range(minimum, maximum)} (got {_kind(value)} {value!r})")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.fail(f"{key} must be an integer{_range(minimum, maximum)} (got {value})")
        return value

    def seconds(self, table, key, default, minimum=0.0):
        value, given = self._get(table, key, default, False)
        if not given:
            return float(value)
        if not _is_number(value):
            self.fail(f"{key} must be a number of seconds (got {_kind(value)} {value!r})")
        if value < minimum or value != value or value == float("inf"):
            bound = "0" if minimum == 0 else f"{minimum:g}"
            self.fail(f"{key} must be a finite number of seconds >= {bound} (got {value!r})")
        return float(value)

    def size(self, table, key, default, minimum, allow_zero):
        value, given = self._get(table, key, default, False)
        if not given:
            return value
        try:
            n = parse_size(value)
        except ValueError:
            self.fail(
                f"{key} must be a byte count such as 67108864 or a string such as \"64M\" "
                f"(K, M, G, T = powers of 1024) (got {_kind(value)} {value!r})"
            )
        if n == 0 and allow_zero:
            return 0
        if n < minimum:
            zero = " or 0 for none" if allow_zero else ""
            self.fail(f"{key} must be at least {format_size(minimum, trim=True)}{zero} (got {value!r})")
        return n

    def str_list(self, table, key, default=None, required=False, allow_empty=False):
        value, given = self._get(table, key, default, required)
        if not given:
            return value
        if (
            not isinstance(value, list)
            or not all(isinstance(x, str) and x for x in value)
            or (not value and not allow_empty)
        ):
            self.fail(f"{key} must be a {'' if allow_empty else 'non-empty '}list of strings (got {value!r})")
        return value


_MAX_TTL = (1 << 31) - 1  # apccache.MAX_TTL, not imported: that would load the engine to read a file


def _range(lo, hi):
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" >= {lo}"
    return ""


# ------------------------------------------------------------ target check

_IMPORT_TARGET = """
import importlib, sys, traceback
target = sys.argv[1]
modname, _, funcname = target.partition(":")
try:
    obj = importlib.import_module(modname)
    for part in funcname.split("."):
        obj = getattr(obj, part)
except BaseException as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(3)
if not callable(obj):
    print(f"{target} is {type(obj).__name__}, not a function", file=sys.stderr)
    sys.exit(3)
"""


def check_targets(config, timeout=60.0):
    """Import each pool's target as its workers would (python_path first,
    the pool's env set, from this process's working directory), each in a
    child process so that nothing it does touches this one.  Returns one
    line per pool whose target cannot be loaded ([] when all can)."""
    import subprocess
    import sys

    import apccache

    problems = []
    paths = list(config.supervisor.python_path)
    paths.append(os.path.dirname(os.path.dirname(os.path.abspath(apccache.__file__))))
    for pool in config.pools:
        env = dict(os.environ)
        env.update(dict(pool.env))
        env["PYTHONPATH"] = os.pathsep.join(
            dict.fromkeys(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]))
        try:
            r = subprocess.run([sys.executable, "-c", _IMPORT_TARGET, pool.target], env=env,
                               capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            problems.append(f"pools.{pool.name}.target {pool.target!r}: importing it took over {timeout:g}s")
            continue
        if r.returncode != 0:
            lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
            why = lines[-1] if lines else f"the import exited {r.returncode}"
            problems.append(f"pools.{pool.name}.target {pool.target!r} cannot be loaded: {why}")
    return problems
