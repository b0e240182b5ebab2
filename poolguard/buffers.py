"""Large task arguments through shared memory instead of the task pipe.

A ``bytes``, ``bytearray`` or NumPy argument of at least ``MIN_SIZE`` bytes
is taken out of the task's pickle (protocol 5 out-of-band buffers) and
written once into an anonymous shared-memory file (a memfd) that the parent
holds open until the task is finished.  The worker opens that file through
``/proc/<parent>/fd/<n>`` and maps it copy-on-write: a NumPy array is
rebuilt on the mapping without a copy, a ``bytes`` with one copy.  Through
the pipe the same argument is copied five times (pickle, pipe in, pipe out,
frame buffer, unpickle).

Nothing can leak: the file has no name, so it is freed when the parent
closes it (task done, failed or cancelled) and the last mapping is gone; a
dead worker's mappings go with it.  Where memfds or ``/proc`` are missing,
everything goes through the pipe as before.
"""
from __future__ import annotations

import mmap
import os
import pickle
import sys
from typing import Any, List, Optional

MIN_SIZE = 1 << 20          # smaller buffers stay in the pickle: a memfd costs ~20 us
_ALIGN = 64                 # NumPy likes aligned data
_NAME = "poolguard-args"
AVAILABLE = hasattr(os, "memfd_create") and sys.platform.startswith("linux") \
    and os.path.isdir("/proc/self/fd")


class LargeBytes:
    """Stand-in for a large ``bytes`` while pickling: the pickler never asks
    for a ``bytes`` object's reduction, so it is wrapped to go out of band."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self) -> tuple:
        return bytes, (pickle.PickleBuffer(self.data),)


class SharedBuffers:
    """The parent's side: one memfd holding every large buffer of one task."""

    __slots__ = ("fd", "handle")

    def __init__(self, buffers: List[memoryview]):
        fd = os.memfd_create(_NAME, os.MFD_CLOEXEC)
        try:
            layout = []
            pos = 0
            for view in buffers:
                pos += -pos % _ALIGN
                layout.append((pos, view.nbytes))
                pos += view.nbytes
            os.ftruncate(fd, max(pos, 1))
            for (offset, size), view in zip(layout, buffers):
                done = 0
                while done < size:   # one write takes at most ~2 GiB
                    done += os.pwrite(fd, view[done:], offset + done)
            self.handle = (os.getpid(), fd, os.fstat(fd).st_ino, pos, layout)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:   # a unit dropped without release (should not happen)
        self.close()


class Collector:
    """The pickler's ``buffer_callback``: buffers of at least *min_size*
    contiguous bytes go out of band into ``taken``, the rest in band."""

    def __init__(self, min_size: int = MIN_SIZE):
        self.min_size = min_size
        self.taken: List[memoryview] = []

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:     # not contiguous
            return True
        if view.nbytes < self.min_size:
            return True
        self.taken.append(view)
        return False


def open_buffers(handle: tuple) -> List[memoryview]:
    """The worker's side: views of each buffer, on a private mapping."""
    pid, fd, inode, size, layout = handle
    local = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(local).st_ino != inode:
            raise OSError(f"shared buffers of this task are gone (pid {pid} fd {fd})")
        mapping = mmap.mmap(local, size, flags=mmap.MAP_PRIVATE,
                            prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(local)
    whole = memoryview(mapping)
    return [whole[offset:offset + length] for offset, length in layout]


def close_inherited() -> None:
    """In a forked worker: close the parent's buffer files it inherited, or
    they would stay allocated as long as this worker lives."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        try:
            if _NAME in os.readlink(f"/proc/self/fd/{name}"):
                os.close(int(name))
        except OSError:
            pass


def shareable(items: Any, star: bool, apply: bool, min_size: int = MIN_SIZE) -> Optional[list]:
    """*items* with each large ``bytes`` argument wrapped in LargeBytes, or
    None if there is none.  Only the arguments themselves are looked at,
    not what they contain."""
    found = False

    def wrap(value: Any) -> Any:
        nonlocal found
        if type(value) is bytes and len(value) >= min_size:
            found = True
            return LargeBytes(value)
        return value

    out: list = []
    for item in items:
        if apply:
            args, kwds = item
            out.append((tuple(map(wrap, args)), {k: wrap(v) for k, v in kwds.items()}))
        elif star and type(item) is tuple:
            out.append(tuple(map(wrap, item)))
        else:
            out.append(wrap(item))
    return out if found else None
