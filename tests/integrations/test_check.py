"""apccache supervise CONFIG --check imports each pool's target in a child
(with python_path) and exits 78 on an import error."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def _check(tmp_path, target, python_path='["lib"]'):
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    (lib / "jobs.py").write_text("import os\nCONSTANT = 3\n\ndef run(ctx):\n    pass\n")
    (lib / "broken.py").write_text("import no_such_module_anywhere\n")
    cfg = tmp_path / "sup.toml"
    cfg.write_text(f'[supervisor]\npython_path = {python_path}\n[cache]\nname = "chk"\n'
                   f'[pools.web]\ntarget = "{target}"\nworkers = 2\n')
    return subprocess.run([sys.executable, "-m", "apccache", "supervise", str(cfg), "--check"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_a_target_that_imports_is_ok(tmp_path):
    r = _check(tmp_path, "jobs:run")
    assert r.returncode == 0, r.stderr
    assert "ok: cache 'chk', pools web (2)" in r.stdout


def test_import_errors_exit_78_and_say_why(tmp_path):
    r = _check(tmp_path, "broken:run")
    assert r.returncode == 78
    assert "pools.web.target 'broken:run' cannot be loaded" in r.stderr
    assert "No module named 'no_such_module_anywhere'" in r.stderr
    assert "ok" not in r.stdout

    r = _check(tmp_path, "jobs:missing")
    assert r.returncode == 78 and "has no attribute 'missing'" in r.stderr

    r = _check(tmp_path, "jobs:CONSTANT")
    assert r.returncode == 78 and "not a function" in r.stderr


def test_python_path_is_used(tmp_path):
    r = _check(tmp_path, "jobs:run", python_path="[]")
    assert r.returncode == 78 and "No module named 'jobs'" in r.stderr
