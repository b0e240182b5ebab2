"""Large task arguments outside the task pipe.

Large ``bytes`` go best by one copy straight from the parent's memory into a
fresh ``bytes`` in the worker (``process_vm_readv``): the parent does no
work at all, so it never becomes the bottleneck.  Each worker checks at
start that the system lets it read the parent (same user, no Yama or seccomp
rule against it); the pool uses it only once a worker has said so.  A
``bytes`` never changes, and the parent holds it until the task is
finished, so what the worker reads is what was submitted.

Everything else, and ``bytes`` where that is not allowed, goes as follows.

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

import ctypes
import mmap
import os
import pickle
import sys
from typing import Any, List, Optional, Sequence, Tuple

from . import private_fds

MIN_SIZE = 1 << 20          # smaller buffers stay in the pickle: a memfd costs ~20 us
_ALIGN = 64                 # NumPy likes aligned data
_NAME = "poolguard-args"
PROTOCOL5 = 5
AVAILABLE = hasattr(os, "memfd_create") and sys.platform.startswith("linux") \
    and os.path.isdir("/proc/self/fd")


class LargeBytes:
    """Stand-in for a large ``bytes`` or ``bytearray`` while pickling: the
    pickler never asks for their reduction (it writes them in the pickle),
    so they are wrapped to go out of band."""

    __slots__ = ("data",)

    def __init__(self, data: "bytes | bytearray"):
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self.data), (pickle.PickleBuffer(self.data),)


class RemoteBytes:
    """Stand-in for a large ``bytes`` that the worker reads from our memory."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return read_remote, (os.getpid(), id(self.data) + _BYTES_DATA_OFFSET, len(self.data))


def _bytes_data_offset() -> int:
    """Where a bytes object's data starts, from its address (CPython only)."""
    probe = b"poolguard"
    return ctypes.cast(ctypes.c_char_p(probe), ctypes.c_void_p).value - id(probe)  # type: ignore


_BYTES_DATA_OFFSET = _bytes_data_offset() if sys.implementation.name == "cpython" else 0


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


_remote_reader: Any = None


def load_native() -> None:
    """Prepare the ctypes calls now, in a process that forks workers."""
    if REMOTE_POSSIBLE:
        try:
            _reader()
        except (OSError, AttributeError):
            pass


def _reader() -> Any:
    global _remote_reader
    if _remote_reader is None:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.process_vm_readv
        func.restype = ctypes.c_ssize_t
        func.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong,
                         ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_ulong]
        new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
        new_bytes.restype = ctypes.py_object
        new_bytes.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
        _remote_reader = (func, new_bytes)
    return _remote_reader


def read_remote(pid: int, address: int, size: int) -> bytes:
    """Worker side: a new ``bytes`` of *size*, copied from *address* in process
    *pid*, filled before anyone else can see it."""
    readv, new_bytes = _reader()
    out: bytes = new_bytes(None, size)
    base = id(out) + _BYTES_DATA_OFFSET
    done = 0
    while done < size:
        local = _IoVec(base + done, size - done)
        remote = _IoVec(address + done, size - done)
        n = readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if n <= 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot read a task argument from the pool's process "
                               f"{pid}: {os.strerror(err)}")
        done += n
    return out


# The parent keeps this object for the workers' check that they can read it.
PROBE = b"poolguard can read its parent" * 8


def probe_handle() -> Optional[tuple[Any, ...]]:
    if not REMOTE_POSSIBLE:
        return None
    return os.getpid(), id(PROBE) + _BYTES_DATA_OFFSET, len(PROBE)


def can_read_parent(handle: Optional[tuple[Any, ...]]) -> bool:
    """Worker side, at start: can we read the parent's memory?"""
    if handle is None:
        return False
    try:
        return read_remote(*handle) == PROBE
    except (OSError, AttributeError, ValueError):
        return False


REMOTE_POSSIBLE = (sys.implementation.name == "cpython" and sys.platform.startswith("linux")
                   and _BYTES_DATA_OFFSET > 0)


class SharedBuffers:
    """The parent's side: one memfd holding every large buffer of one task."""

    __slots__ = ("fd", "handle")

    def __init__(self, buffers: List[memoryview]):
        with private_fds.making():   # no child of ours may keep it
            fd = os.memfd_create(_NAME, os.MFD_CLOEXEC)
            private_fds.keep(fd)
        try:
            pos, layout = write_buffers(fd, buffers)
            self.handle = (os.getpid(), fd, os.fstat(fd).st_ino, pos, layout)
        except BaseException:
            private_fds.close(fd)
            raise
        self.fd = fd

    def close(self) -> None:
        if getattr(self, "fd", -1) >= 0:   # unset if __init__ failed
            private_fds.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:   # a unit dropped without release (should not happen)
        self.close()


def write_buffers(fd: int, views: Sequence[memoryview]) -> Tuple[int, List[Tuple[int, int]]]:
    """Write *views* into the empty file *fd*, each aligned: the file's size
    and each one's (offset, size)."""
    layout = []
    pos = 0
    for view in views:
        pos += -pos % _ALIGN
        layout.append((pos, view.nbytes))
        pos += view.nbytes
    os.ftruncate(fd, max(pos, 1))
    for (offset, size), view in zip(layout, views, strict=True):
        done = 0
        while done < size:   # one write takes at most ~2 GiB
            done += os.pwrite(fd, view[done:], offset + done)
    return pos, layout


def address_of(data: bytes) -> int:
    """Where a ``bytes`` object's contents are in our memory (CPython)."""
    return id(data) + _BYTES_DATA_OFFSET


def empty_bytes(size: int) -> Tuple[bytes, memoryview]:
    """A new ``bytes`` of *size* and a writable view of its contents, to be
    filled before anyone else sees it (only where REMOTE_POSSIBLE)."""
    out: bytes = _reader()[1](None, size)
    storage = (ctypes.c_char * size).from_address(id(out) + _BYTES_DATA_OFFSET)
    return out, memoryview(storage).cast("B")


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


def open_buffers(handle: tuple[Any, ...]) -> List[memoryview]:
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


def shareable(items: Any, star: bool, apply: bool, remote: bool,
              min_size: int = MIN_SIZE) -> Optional[list[Any]]:
    """*items* with each large ``bytes`` argument wrapped (RemoteBytes when
    *remote*, else LargeBytes) and each large ``bytearray`` in LargeBytes, or
    None if there is none.  Only the
    arguments themselves are looked at, not what they contain."""
    if not _any_large(items, star, apply, min_size):   # the common case: build nothing
        return None
    found = False
    wrapper = RemoteBytes if remote else LargeBytes

    def wrap(value: Any) -> Any:
        nonlocal found
        kind = type(value)
        if (kind is bytes or kind is bytearray) and len(value) >= min_size:
            found = True
            # A bytearray may change after submission: it is copied now.
            return wrapper(value) if kind is bytes else LargeBytes(value)
        return value

    out: list[Any] = []
    for item in items:
        if apply:
            args, kwds = item
            out.append((tuple(map(wrap, args)), {k: wrap(v) for k, v in kwds.items()}))
        elif star and type(item) is tuple:
            out.append(tuple(map(wrap, item)))
        else:
            out.append(wrap(item))
    return out if found else None


def _any_large(items: Any, star: bool, apply: bool, min_size: int) -> bool:
    """Is any argument a bytes or bytearray of *min_size* or more?  (The
    cheap look before ``shareable`` builds anything.)"""
    if not (star or apply) and _BYTES_TYPES_SET.isdisjoint(map(type, items)):
        return False   # a map's arguments, none bytes: a look at C speed
    for item in items:
        if apply:
            args, kwds = item
            values = (*args, *kwds.values()) if kwds else args
        elif star and type(item) is tuple:
            values = item
        else:
            values = (item,)
        for value in values:
            if type(value) in _BYTES_TYPES and len(value) >= min_size:
                return True
    return False


_BYTES_TYPES = (bytes, bytearray)
_BYTES_TYPES_SET = frozenset(_BYTES_TYPES)
