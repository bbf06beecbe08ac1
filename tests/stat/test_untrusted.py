"""apcstat and a segment it cannot trust.

The read-only views still show a segment that another user made or that
others may write, and say so, but never load one of its values; clear and
delete refuse it (checked with fstat of the descriptor they would write
through).
"""
import json
import os
import pickle

import pytest

import apccache
from stat_support import run_main
from helpers.segments import segment_name, unlink_name
from helpers.children import NOBODY, Marker as _Marker, as_nobody as _as_nobody


@pytest.fixture
def squatted(tmp_path):
    """(name, marker): a segment made by uid 65534, mode 0666, holding two
    entries, one of which would create marker if it were unpickled."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a segment as another user")
    name = segment_name("stat-squat")
    marker = tmp_path / "pwned"
    pickle.dumps(_Marker(str(marker)))  # pickle imported before the fork

    def squat():
        c = apccache.Cache.create(name, size=1 << 20)
        c.store("evil", _Marker(str(marker)))
        c.store("plain", b"x")
        os.chmod(f"/dev/shm/{name}", 0o666)
        c.close()

    try:
        assert _as_nobody(squat) == 0
        yield name, marker
    finally:
        unlink_name(name)


def _entries(name):
    rc, out, err = run_main([name, "entries", "--json"])
    assert rc == 0, err
    return sorted(e["key"] for e in json.loads(out)["entries"])


def test_the_views_show_a_squatted_segment_as_untrusted_and_load_nothing(squatted):
    name, marker = squatted
    rc, out, err = run_main([name])
    assert rc == 0, err
    assert "Owner:          nobody, mode 0666" in out
    assert "NOT TRUSTED (owned by nobody (uid 65534), not by you): shown, but none of its values is loaded" in out
    rc, out, err = run_main([name, "--json"])
    seg = json.loads(out)["segment"]
    assert (seg["owner_uid"], seg["mode"], seg["trusted"]) == (NOBODY, "0666", False)
    assert seg["untrusted_reason"] == "owned by nobody (uid 65534), not by you"
    assert _entries(name) == ["evil", "plain"]
    rc, out, err = run_main([name, "check"])
    assert rc == 1 and out.startswith(f"APCCACHE WARNING - '{name}': mode 0666 lets others write the segment"), out
    assert not marker.exists()


def test_clear_and_delete_refuse_a_squatted_segment(squatted):
    name, marker = squatted
    for args in (["clear", "--yes"], ["delete", "evil", "--yes"]):
        rc, _, err = run_main([name, *args])
        assert rc == 1 and "refusing to" in err and f"uid {NOBODY}" in err, err
    assert _entries(name) == ["evil", "plain"]
    assert not marker.exists()


def test_clear_and_delete_refuse_our_own_segment_writable_by_others(segments):
    c = segments("open", size=1 << 20)
    c.store("k", b"v")
    os.chmod(f"/dev/shm/{c.name}", 0o666)
    for args, verb in ((["clear", "--yes"], "clear"), (["delete", "k", "--yes"], "delete from")):
        rc, _, err = run_main([c.name, *args])
        assert rc == 1
        assert f"refusing to {verb} segment '{c.name}': segment '{c.name}' has mode 0666, writable by others" in err
    assert c.fetch("k") == b"v"
    rc, out, _ = run_main([c.name, "--json"])
    assert rc == 0 and json.loads(out)["segment"]["untrusted_reason"] == "writable by others"
    rc, out, _ = run_main([c.name, "check"])
    assert rc == 1 and f"chmod 600 /dev/shm/{c.name} if its contents are trusted" in out
    os.chmod(f"/dev/shm/{c.name}", 0o620)  # the group may write it: untrusted here, but no warning
    rc, out, _ = run_main([c.name, "check"])
    assert rc == 0 and out.startswith("APCCACHE OK"), out
    os.chmod(f"/dev/shm/{c.name}", 0o600)
    rc, out, _ = run_main([c.name, "--json"])
    seg = json.loads(out)["segment"]
    assert (seg["trusted"], seg["untrusted_reason"]) == (True, None)
    rc, _, err = run_main([c.name, "delete", "k", "--yes"])
    assert rc == 0, err
