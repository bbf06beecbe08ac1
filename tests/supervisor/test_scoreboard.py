"""The scoreboard layout: what the master and a worker write is what read() returns."""

import os
import struct

import pytest

import apccache
from apccache.supervisor import ScoreboardError, scoreboard as sb
from helpers.segments import segment_name


def _filled_board():
    buf = bytearray(65536)
    board = sb.Board(buf)
    board.initialise(master_pid=os.getpid(), started=1000.0)
    board.write_header(os.getpid(), 1000.0, generation=3, state=2, last_reload=1, reload_generation=3)
    board.write_pool(0, "images", 1, 2, 3, 1, {"jobs": 10, "job_errors": 2, "crashes": 1, "rotations": 4})
    board.write_pool(5, "default", 2, 4, 3, 0, {"time_limit_kills": 7})
    board.claim_record(0, 0, 1, 3, restarts=2, rotate_at=12, rotate_cap=15, last_exit="rotated after 12 jobs")
    board.set_pid(0, 4121)
    rec = sb.WorkerRecord(buf, 0)
    rec.state = sb.BUSY
    rec.jobs = 11
    rec.job_errors = 1
    rec.job = "resize"
    rec.job_started = 1234.5
    rec.job_deadline = 99.0
    rec.time_limit = 120.0
    rec.memory = 5 << 20
    rec.rss = 9 << 20
    rec.ready_at = 1200.0
    rec.flush()
    board.claim_record(7, 5, 0, 3, 0, 0, 0, "")
    return buf, board


def test_round_trip_of_header_pools_and_workers():
    """read() returns every field the master and the worker wrote, by name."""
    buf, _ = _filled_board()
    b = sb.read(buf)
    assert b["master_pid"] == os.getpid() and b["master_alive"]
    assert (b["generation"], b["state"], b["last_reload"], b["started"]) == (3, "running", "succeeded", 1000.0)
    assert list(b["pools"]) == ["images", "default"]
    img = b["pools"]["images"]
    assert (img["state"], img["workers"], img["ready"], img["jobs"], img["job_errors"], img["crashes"],
            img["rotations"], img["lost_jobs"]) == ("running", 2, 1, 10, 2, 1, 4, 0)
    assert b["pools"]["default"]["state"] == "failed" and b["pools"]["default"]["time_limit_kills"] == 7
    w = b["workers"][1]
    assert (w["pool"], w["worker_id"], w["pid"], w["generation"], w["state"]) == ("images", 1, 4121, 3, "busy")
    assert (w["jobs"], w["job_errors"], w["job"], w["job_started"], w["time_limit"]) == (11, 1, "resize", 1234.5, 120.0)
    assert (w["memory"], w["rss"], w["restarts"], w["rotate_at"], w["rotate_cap"]) == (5 << 20, 9 << 20, 2, 12, 15)
    assert w["last_exit"] == "rotated after 12 jobs"
    s = b["workers"][0]
    assert (s["pool"], s["state"], s["job"], s["pid"], s["ready_at"]) == ("default", "starting", None, 0, None)


def test_released_records_and_cleared_pools_disappear():
    buf, board = _filled_board()
    board.release_record(0)
    board.clear_pool(5)
    b = sb.read(buf)
    assert [w["pool"] for w in b["workers"]] == ["?"]
    assert list(b["pools"]) == ["images"]
    assert board.free_record() == 0


def test_blank_region_reads_as_none_and_foreign_data_is_refused():
    """All-zero aux means no supervisor; anything else that is not ours is an error, never garbage."""
    assert sb.read(bytearray(65536)) is None
    junk = bytearray(65536)
    junk[:8] = b"SOMEONE!"
    with pytest.raises(ScoreboardError, match="does not hold a supervisor scoreboard"):
        sb.read(junk)
    buf, _ = _filled_board()
    struct.pack_into("=I", buf, 8, sb.FORMAT + 1)
    with pytest.raises(ScoreboardError, match=f"has format {sb.FORMAT + 1} but this apccache reads format"):
        sb.read(buf)
    with pytest.raises(ScoreboardError, match="needs 63616 bytes of aux space"):
        sb.read(bytearray(1000))


def test_a_record_stuck_mid_write_does_not_hang_the_reader():
    """A worker killed between the two halves of its sequence word leaves an odd seq; read() still returns."""
    buf, _ = _filled_board()
    off = 128 + 16 * 128 + 104
    struct.pack_into("=I", buf, off, 7)
    b = sb.read(buf)
    assert len(b["workers"]) == 2


def test_long_texts_are_cut_at_a_character_boundary():
    buf, board = _filled_board()
    board.claim_record(3, 0, 9, 1, 0, 0, 0, "é" * 100)
    rec = sb.WorkerRecord(buf, 3)
    rec.state = sb.BUSY
    rec.job = "ü" * 40
    rec.note = "x" * 500
    rec.flush()
    w = next(w for w in sb.read(buf)["workers"] if w["worker_id"] == 9)
    assert w["last_exit"] == "é" * 36 and w["job"] == "ü" * 16 and w["note"] == "x" * 112


def test_the_scoreboard_fits_and_works_in_a_real_segments_aux_area():
    """Cache.aux is large enough, and read() accepts the Cache itself."""
    name = segment_name("sup")
    cache = apccache.Cache.create(name, size=4 << 20)
    try:
        assert len(cache.aux) >= sb.SIZE
        assert sb.read(cache) is None
        board = sb.Board(cache)
        board.initialise(os.getpid(), 5.0)
        board.write_pool(0, "web", 1, 1, 1, 0, {})
        other = apccache.Cache.attach(name)
        try:
            assert list(sb.read(other)["pools"]) == ["web"]
        finally:
            other.close()
        del board
    finally:
        cache.unlink()
        cache.close()
