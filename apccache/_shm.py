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
import mmap
import os

import _posixshmem


class Segment:
    """A mapped shared-memory object: ``buf`` (a memoryview), ``size``,
    ``name`` (without the leading slash), ``_fd`` (open until close)."""

    def __init__(self, name, create=False, size=0):
        self.name = name
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        self._fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        try:
            if create:
                os.fchmod(self._fd, 0o600)  # whatever the umask
                os.ftruncate(self._fd, size)
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
