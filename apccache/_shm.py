"""The segment's mapping: a POSIX shared-memory object, mapped read-write.

This is the very object ``multiprocessing.shared_memory.SharedMemory(name)``
opens (``/dev/shm/<name>``), and either can attach a segment the other made.
apccache opens it directly, without SharedMemory, for two reasons:

- on Python < 3.13, SharedMemory registers every attach with the resource
  tracker, which unlinks the segment when any attaching process exits (and
  its register/unregister messages race when forked children share one
  tracker).  Only ``Cache.unlink()`` may remove a segment;
- importing ``multiprocessing`` costs about 20 ms, a large part of a short
  worker's start-up, and of what the opcode cache saves.

TRUST

Values are unpickled and code from the segment is executed, so whoever can
write a segment can run code in every process that uses it.  Attaching
therefore checks the segment before a byte of it is read: the object is
opened, the check is ``fstat`` of that very descriptor, and the mapping is
made from the same descriptor, so there is no window in which the name can
be swapped.  Only a regular file owned by the effective uid and writable by
nobody else is trusted (``check_trusted``); ``trust_group`` extends that to
a segment whose group is one of this process's groups, never to others.
"""
import errno
import mmap
import os
import stat as _stat

import _posixshmem

from .errors import UntrustedSegmentError


class Segment:
    """A mapped shared-memory object: ``buf`` (a memoryview), ``size``,
    ``name`` (without the leading slash), ``_fd`` (open until close).

    reserve (with create): allocate all of its memory now; see _reserve.
    mode (with create): 0o600, or 0o660 for a segment shared by a group.
    trust (with attach): None checks nothing (apcstat's read-only views,
    which then never load a value); "owner" or "group": see check_trusted.
    ``stat`` is the fstat of the descriptor that is mapped."""

    def __init__(self, name, create=False, size=0, reserve=False, mode=0o600, trust="owner"):
        self.name = name
        # O_NONBLOCK: opening a FIFO planted under the name must not block
        # (it is then refused as not a regular file); glibc adds O_NOFOLLOW.
        flags = os.O_RDWR | os.O_NONBLOCK | (os.O_CREAT | os.O_EXCL if create else 0)
        self._fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        try:
            if create:
                os.fchmod(self._fd, mode)  # whatever the umask
                os.ftruncate(self._fd, size)
                if reserve:
                    _reserve(self._fd, size, name)
            self.stat = st = os.fstat(self._fd)
            if trust is not None:
                check_trusted(st, name, trust)
            self.size = st.st_size
            if self.size == 0:
                raise ValueError(f"segment {name!r} is empty")
            self._mmap = mmap.mmap(self._fd, self.size)
        except BaseException:
            os.close(self._fd)
            if create:
                _posixshmem.shm_unlink("/" + name)
            raise
        self.buf = memoryview(self._mmap)

    def close(self):
        """Unmap and close; BufferError while views of buf are still alive
        (the mapping then goes when they do)."""
        if self.buf is None:
            return
        self.buf.release()
        self.buf = None
        try:
            self._mmap.close()
        finally:
            os.close(self._fd)

    def unlink(self):
        _posixshmem.shm_unlink("/" + self.name)


def check_trusted(st, name, trust="owner"):
    """Raise UntrustedSegmentError unless the segment whose fstat is st may
    be trusted: a regular file, not writable by others, and either owned by
    the effective uid and not writable by its group, or (trust="group")
    owned by the effective uid or by a member of its group, with that group
    one of this process's groups."""
    # A regular file (the S_IFMT bits), not writable by group or others (0o022), ours.
    if (st.st_mode & 0o170022) == _stat.S_IFREG and st.st_uid == os.geteuid():
        return  # the common case, first and cheap: it runs before every module load of the opcode cache
    path = f"/dev/shm/{name}"
    why = ("its values are unpickled and code from it may be run, so whoever can write it could run code in "
           "this process")
    if not _stat.S_ISREG(st.st_mode):
        raise UntrustedSegmentError(
            f"segment {name!r} is not a regular file ({_kind(st.st_mode)}): refusing to attach it; "
            f"remove {path} if you did not expect it"
        )
    uid = os.geteuid()
    mode = f"{_stat.S_IMODE(st.st_mode):04o}"
    others = st.st_mode & _stat.S_IWOTH
    group = st.st_mode & _stat.S_IWGRP
    if trust != "group":
        if st.st_uid != uid:
            raise UntrustedSegmentError(
                f"segment {name!r} is owned by {_who(st.st_uid)}, not by this user (uid {uid}), mode {mode}: "
                f"{why}; refusing to attach it. Fix: create the segment as the user that uses it (remove "
                f"{path} if you did not expect it), or, for a segment shared by a group, create it with "
                "mode=0o660 and attach it with trust_group=True and an explicit serializer"
            )
        if others or group:
            raise UntrustedSegmentError(
                f"segment {name!r} has mode {mode}, writable by {'others' if others else 'group'} "
                f"(group {_group(st.st_gid)}): {why}; refusing to attach it. Fix: chmod 600 {path}"
                + ("" if others else ", or, if the group is meant to share it, attach it with "
                   "trust_group=True and an explicit serializer")
            )
        return
    if others:
        raise UntrustedSegmentError(
            f"segment {name!r} has mode {mode}, writable by others: {why}, and trust_group never trusts "
            f"others; refusing to attach it. Fix: chmod 660 {path} (or 600)"
        )
    if st.st_uid == uid and not group:
        return
    if st.st_gid not in {os.getegid(), *os.getgroups()}:
        raise UntrustedSegmentError(
            f"segment {name!r} (owner {_who(st.st_uid)}, mode {mode}) belongs to group {_group(st.st_gid)}, "
            f"which is not one of this process's groups: {why}; refusing to attach it with trust_group=True. "
            f"Fix: create it with a group this process is in (chgrp), or remove {path}"
        )


def _who(uid):
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def _group(gid):
    try:
        import grp

        return f"{gid} ({grp.getgrgid(gid).gr_name})"
    except (KeyError, ImportError):
        return str(gid)


def _kind(mode):
    for test, what in ((_stat.S_ISDIR, "a directory"), (_stat.S_ISFIFO, "a FIFO"), (_stat.S_ISSOCK, "a socket"),
                       (_stat.S_ISCHR, "a character device"), (_stat.S_ISBLK, "a block device"),
                       (_stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return what
    return "not a regular file"


def _reserve(fd, size, name):
    """Allocate the memory of a new segment (posix_fallocate).

    A POSIX shared-memory object is a file in a tmpfs (/dev/shm), and its
    pages are allocated when first written.  Left to that, a /dev/shm too
    small for the segment (a container's default is 64 MiB) kills whichever
    worker writes the first page that does not fit, with SIGBUS.  Reserved,
    the segment either fits now or is refused now.  Reserving also takes
    the cost of allocating and zeroing the pages (about 0.4 ms per MiB) off
    the workers that fill the cache."""
    try:
        st = os.fstatvfs(fd)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    try:
        if free is not None and st.f_blocks and size > free:
            # Refused at once: allocating what fits only to give it back
            # could take seconds.
            raise OSError(errno.ENOSPC, "no space")
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # a file system that cannot: pages come when first written
        if e.errno in (errno.ENOSPC, errno.EFBIG):
            raise OSError(
                errno.ENOSPC,
                f"no room for the {size / 2**20:.0f} MiB segment {name!r} in /dev/shm "
                f"({'free space unknown' if free is None else f'{free / 2**20:.0f} MiB free'}): "
                "make the cache smaller or /dev/shm larger (docker run --shm-size=...)",
            ) from None
        raise
