"""The sdist holds everything the build needs: build it, install it in a
fresh venv (nothing else on its path), import it and use it."""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("build")

ROOT = Path(__file__).resolve().parent.parent.parent

USE = """
import os, importlib.metadata as md
import apccache
assert "site-packages" in apccache.__file__, apccache.__file__
c = apccache.Cache.open("sdist-%d" % os.getpid(), size=1 << 20)
try:
    c.store("k", {"v": 1})
    assert c.fetch("k") == {"v": 1} and c.touch("k", 5)
    assert c.inc("n", 2) == 2
finally:
    c.unlink(); c.close()
import apccache._engine_debug, apccache._fastpath
assert os.path.exists(os.path.join(os.path.dirname(apccache.__file__), "py.typed"))
print(md.metadata("apccache")["License-Expression"])
"""


def test_sdist_builds_installs_and_runs(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (sdist,) = dist.glob("apccache-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for need in ("csrc/apc.h", "csrc/apc_internal.h", "csrc/xxh3.h", "csrc/api.c", "csrc/chains.c", "csrc/fastpath.c",
                 "apccache/_build.py", "apccache/py.typed", "LICENSE", "setup.py"):
        assert need in names, need
    assert not any(n.endswith((".so", ".o")) or n.startswith("apccache/_engine") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", str(sdist)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(py), "-c", USE], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.strip() == "MIT"  # license metadata as an SPDX expression
