"""Proof 12: the [init] preflight command and fail_on_error."""

import os
import signal

from helpers.supervisors import config

from apccache.supervisor import ExitCode

STEADY = {"web": 'target = "sup_workers:steady"\nworkers = 2'}


def _no_worker_started(run):
    assert run.events() == []
    assert "started worker" not in run.log()
    assert not os.path.exists(f"/dev/shm/{run.name}")


def test_failing_init_with_fail_on_error_exits_with_its_code(supervise):
    """init exits 7 with fail_on_error: the supervisor exits 7, starts no worker, leaves no segment."""
    run = supervise(config(STEADY, init='command = ["{python}", "-c", "import sys; sys.exit(7)"]\n'
                                        'fail_on_error = true'))
    assert run.wait_exit(15) == 7
    _no_worker_started(run)
    assert "exited with code 7; start-up stopped (fail_on_error = true), exiting with code 7" in run.log()


def test_init_killed_by_a_signal_exits_128_plus_n(supervise):
    """An init command killed by signal N makes the supervisor exit 128 + N."""
    run = supervise(config(STEADY, init='command = ["{python}", "-c", '
                                        '"import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]'))
    assert run.wait_exit(15) == 128 + signal.SIGTERM
    _no_worker_started(run)


def test_init_timeout_exits_with_the_timeout_code(supervise):
    """An init command running past init.timeout is killed; the supervisor exits ExitCode.INIT_TIMEOUT."""
    run = supervise(config(STEADY, init='command = ["{python}", "-c", "import time; time.sleep(30)"]\n'
                                        'timeout = 0.5'))
    assert run.wait_exit(15) == ExitCode.INIT_TIMEOUT == 124
    _no_worker_started(run)
    assert "did not finish within init.timeout (0.5 s)" in run.log()


def test_failing_init_without_fail_on_error_starts_the_workers(supervise):
    """init exits 7 with fail_on_error = false: the failure is logged and the workers start."""
    run = supervise(config(STEADY, init='command = ["{python}", "-c", "import sys; sys.exit(7)"]\n'
                                        'fail_on_error = false'))
    run.wait_ready({"web": 2})
    assert "exited with code 7; starting the workers anyway (fail_on_error = false)" in run.log()
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK


def test_init_sees_the_segment_and_can_seed_it(supervise):
    """The init command runs after the segment exists (APCCACHE_NAME) and before any worker."""
    script = ("import os, apccache; c = apccache.Cache.attach(os.environ['APCCACHE_NAME']); "
              "c.store('seeded', 'by init'); c.close()")
    run = supervise(config(STEADY, init=f'command = ["{{python}}", "-c", "{script}"]'))
    run.wait_ready({"web": 2})
    assert run.attach().fetch("seeded") == "by init"
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK
