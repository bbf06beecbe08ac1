"""Only the owner's segment is trusted.

Values are unpickled by default, so a segment that someone else can write
is a way to run code in every process that fetches from it.  Every attach
checks, with fstat on the descriptor it then maps, that the segment is a
regular file owned by this user and writable by nobody else; otherwise it
raises UntrustedSegmentError and reads nothing from it.  A segment shared
by a group is an explicit opt-in that also needs an explicit serializer.
"""
import os
import pickle
import stat

import pytest

import apccache
from helpers.children import NOBODY, Marker as _Marker, as_nobody as _as_nobody, needs_root


@pytest.fixture
def squat_name(shm_names):
    """A name that the test squats; unlinked at the end whoever made it."""
    return shm_names("squat")


def _squat(name, marker, mode):
    """As another user: create name first, chmod it, store a value whose
    unpickling would create marker."""
    payload = pickle.dumps(_Marker(str(marker)))

    def child():
        c = apccache.Cache.create(name, size=1 << 20)
        c.store("user:42", _Marker(str(marker)))
        c.store("raw", payload)
        os.chmod(f"/dev/shm/{name}", mode)
        c.close()

    assert _as_nobody(child) == 0, "the child could not squat the name"
    st = os.stat(f"/dev/shm/{name}")
    assert st.st_uid == NOBODY and stat.S_IMODE(st.st_mode) == mode


@needs_root
@pytest.mark.parametrize("mode", [0o666, 0o600], ids=["0666", "0600"])
def test_a_segment_squatted_by_another_user_is_refused_and_nothing_is_unpickled(squat_name, tmp_path, mode):
    marker = tmp_path / "pwned"
    _squat(squat_name, marker, mode)
    with pytest.raises(apccache.UntrustedSegmentError) as e:
        apccache.Cache.attach(squat_name)
    msg = str(e.value)
    assert f"owned by uid {NOBODY}" in msg and "not by this user (uid 0)" in msg
    assert "unpickled" in msg and f"/dev/shm/{squat_name}" in msg
    # the same with every explicit choice that is not the group opt-in
    with pytest.raises(apccache.UntrustedSegmentError):
        apccache.Cache.attach(squat_name, serializer=apccache.PickleSerializer())
    with pytest.raises(apccache.UntrustedSegmentError):
        apccache.Cache.attach(squat_name, serializer=apccache.JSONSerializer())
    # a create of the name does not take it over either
    with pytest.raises(FileExistsError):
        apccache.Cache.create(squat_name, size=1 << 20)
    assert not marker.exists()


@needs_root
def test_the_squatted_value_would_indeed_run_code(squat_name, tmp_path):
    """The attack is real: the same bytes, unpickled, create the marker (so
    the refusal above is what keeps it from appearing)."""
    marker = tmp_path / "pwned"
    _squat(squat_name, marker, 0o666)
    with open(f"/dev/shm/{squat_name}", "rb") as f:
        raw = f.read()
    payload = pickle.dumps(_Marker(str(marker)))
    assert payload in raw
    pickle.loads(payload).close()
    assert marker.exists()


@needs_root
def test_trust_group_does_not_trust_a_group_this_process_is_not_in(squat_name, tmp_path):
    marker = tmp_path / "pwned"
    _squat(squat_name, marker, 0o660)  # group nobody (65534): not one of ours
    with pytest.raises(apccache.UntrustedSegmentError, match="group 65534"):
        apccache.Cache.attach(squat_name, trust_group=True, serializer=apccache.JSONSerializer())
    assert not marker.exists()


@needs_root
def test_trust_group_accepts_another_members_segment_of_our_group(squat_name):
    """The positive side of the opt-in: a segment made by another user with
    our group and mode 0660 is attached with trust_group=True (and an
    explicit serializer), and refused without it."""
    gid = os.getegid()

    def child():
        c = apccache.Cache.create(squat_name, size=1 << 20, mode=0o660, serializer=apccache.JSONSerializer())
        c.store("k", {"shared": True})
        c.close()

    assert _as_nobody(child, gid=gid) == 0
    st = os.stat(f"/dev/shm/{squat_name}")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, gid, 0o660)
    with pytest.raises(apccache.UntrustedSegmentError, match=f"owned by uid {NOBODY}"):
        apccache.Cache.attach(squat_name, serializer=apccache.JSONSerializer())
    with apccache.Cache.attach(squat_name, trust_group=True, serializer=apccache.JSONSerializer()) as c:
        assert c.fetch("k") == {"shared": True}
        c.store("back", [1])
    # code is never run from it, whatever the opt-in
    with apccache.Cache.attach(squat_name, trust_group=True, serializer=apccache.JSONSerializer()) as c:
        with pytest.raises(apccache.UntrustedSegmentError):
            c.files.compile(__file__)


@pytest.mark.parametrize("mode,who", [(0o666, "others"), (0o620, "group"), (0o602, "others")], ids=["0666", "0620", "0602"])
def test_our_own_segment_writable_by_group_or_others_is_refused(segments, mode, who):
    c = segments(size=1 << 20)
    c.store("k", {"v": 1})
    os.chmod(f"/dev/shm/{c.name}", mode)
    with pytest.raises(apccache.UntrustedSegmentError) as e:
        apccache.Cache.attach(c.name)
    msg = str(e.value)
    assert f"mode {mode:04o}" in msg and f"writable by {who}" in msg
    assert f"chmod 600 /dev/shm/{c.name}" in msg
    os.chmod(f"/dev/shm/{c.name}", 0o600)
    with apccache.Cache.attach(c.name) as again:
        assert again.fetch("k") == {"v": 1}


def test_the_check_is_made_on_the_descriptor_that_is_mapped(segments, monkeypatch):
    """The mode is read with fstat of the very descriptor that is mapped:
    replacing the name between the check and the map changes nothing, and
    os.stat of the path is never consulted."""
    c = segments(size=1 << 20)
    os.chmod(f"/dev/shm/{c.name}", 0o666)
    calls = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda *a, **k: calls.append(a) or real_stat(*a, **k))
    with pytest.raises(apccache.UntrustedSegmentError):
        apccache.Cache.attach(c.name)
    assert calls == []


def test_a_name_that_is_not_a_regular_file_is_refused(squat_name):
    os.mkfifo(f"/dev/shm/{squat_name}", 0o600)
    with pytest.raises(apccache.UntrustedSegmentError, match="not a regular file"):
        apccache.Cache.attach(squat_name)


def test_a_symlink_is_never_followed(squat_name, segments):
    target = segments(size=1 << 20)
    os.symlink(f"/dev/shm/{target.name}", f"/dev/shm/{squat_name}")
    with pytest.raises(OSError):
        apccache.Cache.attach(squat_name)


def test_create_makes_mode_0600_whatever_the_umask(segments):
    old = os.umask(0)
    try:
        c = segments(size=1 << 20)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(f"/dev/shm/{c.name}").st_mode) == 0o600


def test_a_group_shared_segment_needs_an_explicit_serializer(segments):
    with pytest.raises(ValueError, match="explicit serializer"):
        segments(size=1 << 20, mode=0o660)
    c = segments(size=1 << 20, mode=0o660, serializer=apccache.JSONSerializer())
    assert stat.S_IMODE(os.stat(f"/dev/shm/{c.name}").st_mode) == 0o660
    c.store("k", {"v": [1, 2]})
    # a group-writable segment is refused unless the group is trusted...
    with pytest.raises(apccache.UntrustedSegmentError, match="writable by group"):
        apccache.Cache.attach(c.name)
    # ...and trusting the group never makes pickle the serializer silently
    with pytest.raises(ValueError, match="explicit serializer"):
        apccache.Cache.attach(c.name, trust_group=True)
    with apccache.Cache.attach(c.name, trust_group=True, serializer=apccache.JSONSerializer()) as j:
        assert j.fetch("k") == {"v": [1, 2]}
    with apccache.Cache.attach(c.name, trust_group=True, serializer=apccache.PickleSerializer()) as p:
        p.store("t", (1, 2))  # pickle, named explicitly: allowed
        assert p.fetch("t") == (1, 2)
    # others may never write, whatever the opt-in
    os.chmod(f"/dev/shm/{c.name}", 0o662)
    with pytest.raises(apccache.UntrustedSegmentError, match="writable by others"):
        apccache.Cache.attach(c.name, trust_group=True, serializer=apccache.JSONSerializer())


@pytest.mark.parametrize("mode", [0o644, 0o666, 0o700, 0o4600, 0o640, "0600", 0o000])
def test_create_accepts_only_0600_or_0660(segments, mode):
    with pytest.raises((ValueError, TypeError), match="mode"):
        segments(size=1 << 20, mode=mode, serializer=apccache.JSONSerializer())


def test_trust_group_must_be_a_bool(segments):
    c = segments(size=1 << 20)
    with pytest.raises(TypeError, match="trust_group"):
        apccache.Cache.attach(c.name, trust_group=1, serializer=apccache.JSONSerializer())


def test_the_opcode_cache_rechecks_before_it_runs_code(segments, tmp_path):
    """Installed on a sound segment, the hook still refuses code once the
    segment has become writable by others (one fstat per module load)."""
    import sys

    from apccache import opcode

    c = segments(size=4 << 20)
    (tmp_path / "apct_recheck_mod.py").write_text("X = 1\n")
    sys.path.insert(0, str(tmp_path))
    opcode.install(c)
    try:
        files = opcode.installed()
        os.utime(tmp_path / "apct_recheck_mod.py", (1, 1))  # old enough to be stored
        assert files.compile(tmp_path / "apct_recheck_mod.py") is not None
        os.chmod(f"/dev/shm/{c.name}", 0o666)
        with pytest.raises(apccache.UntrustedSegmentError, match="0666"):
            files.compile(tmp_path / "apct_recheck_mod.py")
        before = opcode._state.fallbacks
        import apct_recheck_mod  # the import falls back to the stock loader

        assert apct_recheck_mod.X == 1
        assert opcode._state.fallbacks == before + 1
    finally:
        opcode.uninstall()
        sys.path.remove(str(tmp_path))
        sys.modules.pop("apct_recheck_mod", None)


def test_the_no_stat_hook_takes_no_module_location_from_a_segment_that_fails_the_check(segments, tmp_path):
    """In no-stat mode the segment also says where a module's file is; once
    the segment is writable by others, a location planted in it is not
    followed."""
    import sys

    from apccache import opcode

    c = segments(size=4 << 20)
    good = tmp_path / "lib"
    good.mkdir()
    (good / "apct_where_mod.py").write_text("WHO = 'good'\n")
    evil = tmp_path / "evil.py"
    evil.write_text("WHO = 'evil'\n")
    sys.path.insert(0, str(good))
    opcode.install(c, mode="no-stat")
    try:
        modules = opcode._ModuleMemo(opcode.installed())
        key = modules.key(str(good), "apct_where_mod")
        c.file_table.put(key, b"m" + os.fsencode(str(evil)))
        assert modules.find(str(good), "apct_where_mod") == (str(evil), False)  # trusted: followed
        os.chmod(f"/dev/shm/{c.name}", 0o666)
        assert modules.find(str(good), "apct_where_mod") is None
        import apct_where_mod

        assert apct_where_mod.WHO == "good"
    finally:
        opcode.uninstall()
        sys.path.remove(str(good))
        sys.modules.pop("apct_where_mod", None)
