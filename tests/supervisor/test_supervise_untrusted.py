"""The supervisor never takes over a segment it cannot trust.

A name squatted by another user (created first, mode 0666, holding a value
whose unpickling would run code), or our own segment made writable by
others, is refused at start-up with exit code 4 and a message that says
who owns it and what to do; it is neither used nor removed, and nothing in
it is unpickled.
"""
import os
import pickle
import stat

import pytest

import apccache
from apccache.supervisor import ExitCode
from helpers.supervisors import config
from helpers.children import NOBODY, Marker as _Marker, as_nobody as _as_nobody

STEADY = {"web": 'target = "sup_workers:steady"\nworkers = 1'}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a segment as another user")
@pytest.mark.parametrize("keep", ["true", "false"])
def test_a_squatted_segment_is_refused_with_exit_code_4(supervise, shm_name, tmp_path, keep):
    marker = tmp_path / "pwned"
    pickle.dumps(_Marker(str(marker)))  # pickle imported before the fork

    def squat():
        c = apccache.Cache.create(shm_name, size=1 << 20)
        c.store("k", _Marker(str(marker)))
        os.chmod(f"/dev/shm/{shm_name}", 0o666)
        c.close()

    assert _as_nobody(squat) == 0
    run = supervise(config(STEADY, cache_extra=f"keep = {keep}"), name=shm_name)
    assert run.wait_exit(30) == ExitCode.CACHE_ERROR == 4
    log = run.log()
    assert f"refusing to take over the existing cache segment '{shm_name}'" in log
    assert f"owned by uid {NOBODY}" in log and f"remove /dev/shm/{shm_name}" in log
    assert os.stat(f"/dev/shm/{shm_name}").st_uid == NOBODY  # neither used nor removed
    assert not marker.exists()


def test_our_own_segment_writable_by_others_is_refused(supervise, shm_name):
    c = apccache.Cache.create(shm_name, size=1 << 20)
    c.close()
    os.chmod(f"/dev/shm/{shm_name}", 0o666)
    run = supervise(config(STEADY, cache_extra="keep = true"), name=shm_name)
    assert run.wait_exit(30) == ExitCode.CACHE_ERROR
    log = run.log()
    assert "refusing to take over" in log and "mode 0666, writable by others" in log
    assert stat.S_IMODE(os.stat(f"/dev/shm/{shm_name}").st_mode) == 0o666
