"""Helpers of the file-cache tests (imported by name: pytest puts this
folder on sys.path)."""
import json
import os
import subprocess
import sys
import textwrap
import uuid

import apccache.opcode

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def seg_name():
    return f"apctest-files-{os.getpid()}-{uuid.uuid4().hex[:10]}"


def run_py(code, *args, env=None, check=True, timeout=60):
    """Run code in a fresh interpreter (PYTHONDONTWRITEBYTECODE=1); returns
    the JSON its last stdout line holds (or the CompletedProcess if check is False)."""
    e = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    e.pop(apccache.opcode.ENV_VAR, None)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    if env:
        e.update(env)
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=e,
                       capture_output=True, text=True, timeout=timeout)
    if not check:
        return p
    assert p.returncode == 0, f"child failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1])
