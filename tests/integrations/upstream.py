"""Fetch a project's source distribution from PyPI (once, into a cache
directory) and extract the test files the upstream-suite tests run.

The directory is $APCCACHE_UPSTREAM_DIR, else ~/.cache/apccache-upstream;
.ci/run fills it before the tests.  Network is needed the first time only.
"""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE_DIR = Path(os.environ.get("APCCACHE_UPSTREAM_DIR") or Path.home() / ".cache" / "apccache-upstream")

SDISTS = ("django", "cachelib")


def sdist(project):
    """The path of project's sdist in the cache directory, downloaded first
    if absent: the sdist of the version installed, so that its own tests
    match the code they test (pip installs Django 5.2 on Python 3.11, and
    Django 6, which needs 3.12, on newer Pythons)."""
    from importlib.metadata import version

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    spec = f"{project}=={version(project)}"
    pattern = f"{project}-{version(project)}.tar.gz"
    found = sorted(p for p in CACHE_DIR.glob("*.tar.gz") if p.name.lower() == pattern.lower())
    if found:
        return found[-1]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
         "-d", str(CACHE_DIR), spec],
        check=True,
    )
    found = sorted(p for p in CACHE_DIR.glob("*.tar.gz") if p.name.lower() == pattern.lower())
    if not found:
        raise RuntimeError(f"pip download {spec} left no sdist in {CACHE_DIR}")
    return found[-1]


def extract(project, members_under, dest):
    """Extract the sdist's files under members_under (a path inside the
    archive, after its top directory) into dest; returns dest/members_under."""
    path = sdist(project)
    with tarfile.open(path) as tar:
        top = tar.getnames()[0].split("/")[0]
        prefix = f"{top}/{members_under}"
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise RuntimeError(f"{path.name} has no {members_under}")
        tar.extractall(dest, members=members, filter="data")
    return Path(dest) / top / members_under


if __name__ == "__main__":
    for p in sys.argv[1:] or SDISTS:
        print(sdist(p))
