"""[opcode]: the master warms the listed trees into the segment before forking."""

import os
import signal

from helpers.supervisors import config

from apccache.supervisor import ExitCode


def test_opcode_warm_fills_the_file_cache_before_workers_start(supervise, tmp_path):
    pkg = tmp_path / "warmed"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("VALUE = 41 + 1\n")
    for f in pkg.iterdir():  # older than the 2 s protection for files being written
        os.utime(f, (1_700_000_000, 1_700_000_000))
    text = config({"web": 'target = "sup_workers:steady"\nworkers = 1'})
    text += f'\n[opcode]\nenabled = true\nmode = "stat"\nwarm = ["{pkg}"]\n'
    run = supervise(text)
    run.wait_ready({"web": 1})
    run.wait_log(r"opcode cache on \(stat mode\): warmed 2 files, 2 stored")
    assert len(run.attach().file_table) >= 2
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK
