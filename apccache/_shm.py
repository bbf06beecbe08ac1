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
"""
import errno
import mmap
import os

import _posixshmem


class Segment:
    """A mapped shared-memory object: ``buf`` (a memoryview), ``size``,
    ``name`` (without the leading slash), ``_fd`` (open until close).

    reserve (with create): allocate all of its memory now; see _reserve."""

    def __init__(self, name, create=False, size=0, reserve=False):
        self.name = name
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        self._fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        try:
            if create:
                os.fchmod(self._fd, 0o600)  # whatever the umask
                os.ftruncate(self._fd, size)
                if reserve:
                    _reserve(self._fd, size, name)
            self.size = os.fstat(self._fd).st_size
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
