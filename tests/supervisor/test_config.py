"""Config parsing and validation: every bad field gets an error that names it, the rule and the value."""

import textwrap

import pytest

from apccache.supervisor import ConfigError, load_config
from apccache.supervisor.config import MAX_WORKERS, parse, parse_size

GOOD = """
[cache]
name = "myapp"
size = "64M"
ttl = 0
gc_ttl = 3600

[init]
command = ["python", "preflight.py"]
timeout = 30
fail_on_error = true

[pools.default]
target = "myapp.workers:run"
workers = 4
max_jobs = 400
max_jobs_jitter = 50
job_time_limit = 30
hard_kill_after = 5
memory_limit = "256M"
restart_backoff = [0.1, 30]
max_crashes = 10

[pools.images]
target = "myapp.workers:images"
workers = 2
job_time_limit = 120
"""


def _load(tmp_path, text):
    path = tmp_path / "supervisor.toml"
    path.write_text(textwrap.dedent(text))
    return load_config(path)


def test_the_issue_example_parses_with_its_values_and_defaults(tmp_path):
    """The documented example loads; unset keys take their documented defaults."""
    cfg = _load(tmp_path, GOOD)
    assert cfg.cache.name == "myapp" and cfg.cache.size == 64 << 20 and cfg.cache.gc_ttl == 3600
    assert cfg.cache.keep is False and cfg.cache.slots is None
    assert cfg.init.command == ("python", "preflight.py") and cfg.init.fail_on_error
    d, i = cfg.pools
    assert (d.name, d.workers, d.max_jobs, d.max_jobs_jitter) == ("default", 4, 400, 50)
    assert d.memory_limit == 256 << 20 and d.restart_backoff == (0.1, 30.0) and d.max_crashes == 10
    assert d.module == "myapp.workers" and d.function == "run"
    assert (i.workers, i.job_time_limit, i.max_jobs, i.hard_kill_after, i.crash_window) == (2, 120.0, 0, 5.0, 60.0)
    assert cfg.supervisor.stop_timeout == 10.0
    assert cfg.supervisor.python_path == (str(tmp_path),)
    assert cfg.total_workers == 6


@pytest.mark.parametrize("value, expected", [
    (0, 0), (1024, 1024), ("64M", 64 << 20), ("64MiB", 64 << 20), ("1.5G", 3 << 29), ("512k", 512 << 10),
    ("2 GB", 2 << 30), ("7", 7),
])
def test_parse_size_accepts_bytes_and_binary_suffixes(value, expected):
    """Sizes are byte counts or strings with K, M, G, T (powers of 1024)."""
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["64Q", "", "-1", "M", True, -5, 1.5, None])
def test_parse_size_refuses_anything_else(value):
    with pytest.raises(ValueError):
        parse_size(value)


def _cfg(cache="", pool="", extra="", pools=None):
    text = f'[cache]\nname = "x"\n{cache}\n{extra}\n'
    for name, body in (pools or {"p": f'target = "m:f"\n{pool}'}).items():
        text += f"[pools.{name}]\n{body}\n"
    return text


BAD = [
    # (config text, fragment the message must contain)
    ("", "missing [cache] table"),
    ('[cache]\nname = "x"\n', "missing [pools] table"),
    ('[cache]\nname = "x"\n[pools]\n', "needs at least one pool"),
    ('cache = 5\n', "cache must be a table ([cache]), not an integer"),
    (_cfg(extra="[bogus]\n"), "unknown key bogus; known keys: supervisor, cache, init, pools"),
    ('[cache]\n[pools.p]\ntarget = "m:f"\n', "missing required key cache.name"),
    ('[cache]\nname = ""\n[pools.p]\ntarget = "m:f"\n', "cache.name must be a non-empty string"),
    ('[cache]\nname = "a/b"\n[pools.p]\ntarget = "m:f"\n', "cache.name must be 1 to 200 characters"),
    (_cfg(cache='size = "64Q"'), 'cache.size must be a byte count such as 67108864 or a string such as "64M"'),
    (_cfg(cache='size = "64Q"'), "(got a string '64Q')"),
    (_cfg(cache="size = 1000"), "cache.size must be at least 1 MiB (got 1000)"),
    (_cfg(cache="ttl = -5"), "cache.ttl must be an integer from 0 to 2147483647 (got -5)"),
    (_cfg(cache='ttl = "5"'), "cache.ttl must be an integer from 0 to 2147483647 (got a string '5')"),
    (_cfg(cache="ttl = 2147483648"), "cache.ttl must be an integer from 0 to 2147483647 (got 2147483648)"),
    (_cfg(cache="gc_ttl = 0"), "cache.gc_ttl must be an integer from 1 to 2147483647 (got 0)"),
    (_cfg(cache="slots = 1.5"), "cache.slots must be an integer >= 0 (got a number 1.5)"),
    (_cfg(cache='keep = "yes"'), "cache.keep must be true or false (got a string 'yes')"),
    (_cfg(cache="sizee = 5"), "unknown key cache.sizee (did you mean size?)"),
    (_cfg(extra="[supervisor]\nstop_timeout = -1"), "supervisor.stop_timeout must be a finite number of seconds >= 0"),
    (_cfg(extra="[supervisor]\nstop_timeout = 'x'"), "supervisor.stop_timeout must be a number of seconds (got a string 'x')"),
    (_cfg(extra="[supervisor]\nstart_timeout = 0"), "supervisor.start_timeout must be a finite number of seconds >= 0.1"),
    (_cfg(extra="[supervisor]\npython_path = '.'"), "supervisor.python_path must be a list of strings (got '.')"),
    (_cfg(extra='[init]\ncommand = "python x.py"'), "init.command must be a list of strings such as"),
    (_cfg(extra='[init]\ncommand = "python x.py"'), "the command is run without a shell"),
    (_cfg(extra="[init]\ncommand = []"), "init.command must be a non-empty list of strings (got [])"),
    (_cfg(extra="[init]\ntimeout = 5"), "missing required key init.command"),
    (_cfg(extra='[init]\ncommand = ["x"]\ntimeout = 0'), "init.timeout must be a finite number of seconds >= 0.001"),
    (_cfg(extra='[init]\ncommand = ["x"]\nfail_on_error = 1'), "init.fail_on_error must be true or false (got an integer 1)"),
    (_cfg(pools={"p": "workers = 2"}), "missing required key pools.p.target"),
    (_cfg(pools={"p": 'target = "nocolon"'}), 'pools.p.target must name a function as "package.module:function" (got \'nocolon\')'),
    (_cfg(pools={"p": 'target = "a b:c"'}), "pools.p.target must name a function"),
    (_cfg(pool="workers = 0"), f"pools.p.workers must be an integer from 1 to {MAX_WORKERS} (got 0)"),
    (_cfg(pool="workers = true"), "pools.p.workers must be an integer from 1 to"),
    (_cfg(pool="workers = 2.5"), "(got a number 2.5)"),
    (_cfg(pool="max_jobs = -1"), "pools.p.max_jobs must be an integer >= 0 (got -1)"),
    (_cfg(pool="max_jobs_jitter = 5"), "pools.p.max_jobs_jitter is 5 but max_jobs is 0 (never rotate); set max_jobs"),
    (_cfg(pool="max_jobs_jitter = -1"), "pools.p.max_jobs_jitter must be an integer >= 0 (got -1)"),
    (_cfg(pool="job_time_limit = -1"), "pools.p.job_time_limit must be a finite number of seconds >= 0 (got -1)"),
    (_cfg(pool="hard_kill_after = 'soon'"), "pools.p.hard_kill_after must be a number of seconds (got a string 'soon')"),
    (_cfg(pool='memory_limit = "lots"'), "pools.p.memory_limit must be a byte count"),
    (_cfg(pool="memory_limit = 1000"), "pools.p.memory_limit must be at least 1 MiB or 0 for none (got 1000)"),
    (_cfg(pool="restart_backoff = 5"), "pools.p.restart_backoff must be a list of two numbers [min, max] in seconds"),
    (_cfg(pool="restart_backoff = [1, 2, 3]"), "(got [1, 2, 3])"),
    (_cfg(pool="restart_backoff = [5, 1]"), "pools.p.restart_backoff must have 0 < min <= max (got [5, 1])"),
    (_cfg(pool="restart_backoff = [0, 1]"), "must have 0 < min <= max (got [0, 1])"),
    (_cfg(pool="max_crashes = 0"), "pools.p.max_crashes must be an integer >= 1 (got 0)"),
    (_cfg(pool="crash_window = 0.5"), "pools.p.crash_window must be a finite number of seconds >= 1"),
    (_cfg(pool="env = 5"), "pools.p.env must be a table of strings"),
    (_cfg(pool="env = { A = 1 }"), "pools.p.env.A must be a string (got an integer 1); quote it"),
    (_cfg(pool="max_job = 5"), "unknown key pools.p.max_job (did you mean max_jobs?)"),
    (_cfg(pools={"-bad": 'target = "m:f"'}), "pool name '-bad' must be 1 to 31 characters"),
    (_cfg(pools={"x" * 32: 'target = "m:f"'}), "must be 1 to 31 characters"),
    (_cfg(pools={f"p{i}": 'target = "m:f"' for i in range(17)}), "at most 16 pools are supported (got 17)"),
    (_cfg(pools={"a": 'target = "m:f"\nworkers = 60', "b": 'target = "m:f"\nworkers = 60'}),
     f"the pools ask for 120 workers in all but at most {MAX_WORKERS} are supported"),
]


@pytest.mark.parametrize("text, fragment", BAD, ids=[f"{i}-{frag[:40]}" for i, (_, frag) in enumerate(BAD)])
def test_every_bad_field_gets_a_clear_error(tmp_path, text, fragment):
    """The message names the file, the key, the rule and what was given."""
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert fragment in message
    assert message.startswith(str(tmp_path / "supervisor.toml") + ": ")


def test_unreadable_files_get_clear_errors(tmp_path):
    """A missing file, a directory and broken TOML are ConfigErrors, not tracebacks."""
    with pytest.raises(ConfigError, match="does not exist; pass the path of a TOML file"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("[cache\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(binary)


def test_config_errors_are_value_errors():
    """ConfigError subclasses ValueError: a bad value is what it is."""
    with pytest.raises(ValueError):
        parse({"cache": {"name": "x"}})


def test_python_path_is_relative_to_the_config_file(tmp_path):
    """python_path entries resolve against the config file's folder, not the working directory."""
    cfg = _load(tmp_path, _cfg(extra='[supervisor]\npython_path = ["lib", "/abs"]'))
    assert cfg.supervisor.python_path == (str(tmp_path / "lib"), "/abs")


def test_pool_env_is_kept_sorted_and_hashable(tmp_path):
    cfg = _load(tmp_path, _cfg(pool='env = { B = "2", A = "1" }'))
    assert cfg.pools[0].env == (("A", "1"), ("B", "2"))
    hash(cfg)


def test_opcode_table_is_validated_and_defaults_to_off():
    from apccache.supervisor.config import parse

    base = {"cache": {"name": "x"}, "pools": {"p": {"target": "m:f"}}}
    assert parse(base).opcode.enabled is False
    cfg = parse(dict(base, opcode={"enabled": True, "mode": "no-stat", "warm": ["app"]}))
    assert cfg.opcode.enabled and cfg.opcode.mode == "no-stat" and cfg.opcode.warm == ("app",)
    with pytest.raises(ConfigError, match="mode"):
        parse(dict(base, opcode={"enabled": True, "mode": "fast"}))
    with pytest.raises(ConfigError, match="unknown key"):
        parse(dict(base, opcode={"enable": True}))
