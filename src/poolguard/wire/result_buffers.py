"""Large results outside the result pipe, in one copy to the caller.

Through the pipe a result of N bytes costs the caller 2N at its peak: the
received frame and the object unpickled from it live at once.  Here the
worker pickles its results with protocol 5 and takes every large buffer out
of band (NumPy arrays and anything else that hands out a ``PickleBuffer``,
and the large ``bytes`` and ``bytearray`` among the results, which pickle
would write in band and are wrapped to go out of band).  It writes them into
one memfd, sends a small reply that says where they are, and keeps the
memfd open until the parent answers RELEASE on the task pipe.

The parent opens the memfd through ``/proc/<worker>/fd/<n>``, answers, and
rebuilds each buffer:

* memory (a NumPy array): a view of one private mapping of the file, which
  becomes the array's memory: no copy;
* ``bytes`` and ``bytearray``: read from the file straight into a new object
  of that size (such objects cannot live on a mapping), freeing the file's
  pages behind the read: the caller never holds both.

Nothing can leak: the parent's descriptor is closed before the results are
delivered, the mapping belongs to the objects built on it, and a worker
that dies before the parent has its descriptor takes its memfd with it (the
parent then leaves the task to the worker's death, which fails it as a crash).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import struct
import select
from typing import Any, Callable, List, Optional, Sequence, Tuple

from . import buffers, private_fds
from .framing import frame
from .messages import RELEASE_CONTENT

MIN_SIZE = buffers.MIN_SIZE
BYTES, BYTEARRAY, MEMORY = 0, 1, 2     # what the parent rebuilds a buffer as
HANDLE_SIZE = struct.Struct("!I")     # prefix of a reply body with shared buffers
_NAME = "poolguard-results"
_SEARCH_LIMIT = 64    # results searched for large bytes before pickling (see _encode)
_CHUNK = 64 << 20     # bytes read (then freed in the file) at a time
_DEATH_WAIT_MS = 2000   # a worker that took its memfd away is dying: how long to wait for it
AVAILABLE = buffers.AVAILABLE


class Lost(OSError):
    """The worker's memfd could not be opened: the worker is gone."""


def as_bytes(data: Any) -> bytes:
    return data if type(data) is bytes else bytes(data)


def as_bytearray(data: Any) -> bytearray:
    return data if type(data) is bytearray else bytearray(data)


class _Large:
    """A large ``bytes`` or ``bytearray`` result while pickling: the pickler
    writes those in band, so they are wrapped to go out of band; the parent
    hands the rebuilt object itself to ``as_bytes`` (no copy)."""

    __slots__ = ("data",)

    def __init__(self, data: "bytes | bytearray"):
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        rebuild = as_bytes if type(self.data) is bytes else as_bytearray
        return rebuild, (pickle.PickleBuffer(self.data),)


def _wrap(value: Any, depth: int = 1) -> Any:
    """*value* with its large bytes and bytearrays wrapped, looking into
    tuples, lists and dicts *depth* levels down; *value* itself if none."""
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return _Large(value) if len(value) >= MIN_SIZE else value
    if depth <= 0 or kind not in _CONTAINERS:
        return value
    if kind is dict:
        new = {k: _wrap(v, depth - 1) for k, v in value.items()}
        changed = any(new[k] is not v for k, v in value.items())
        return new if changed else value
    items = [_wrap(v, depth - 1) for v in value]
    if all(a is b for a, b in zip(items, value, strict=True)):
        return value
    return tuple(items) if kind is tuple else items


_CONTAINERS = (tuple, list, dict)
_LOOK = frozenset((bytes, bytearray, tuple, list, dict))


class _Collector(buffers.Collector):
    """Also notes what each buffer came from: the parent rebuilds bytes and
    bytearrays as such, everything else as memory."""

    def __init__(self) -> None:
        super().__init__(MIN_SIZE)
        self.kinds: List[int] = []

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        inband = super().__call__(buffer)
        if not inband:
            owner = type(self.taken[-1].obj)
            self.kinds.append(BYTES if owner is bytes else
                              BYTEARRAY if owner is bytearray else MEMORY)
        return inband

    def clear(self) -> None:
        if self.taken:
            self.taken.clear()
            self.kinds.clear()


_COLLECTOR = _Collector()


class Outgoing:
    """The worker's side: a reply's large buffers in one memfd, open until
    the parent has its own descriptor of it."""

    __slots__ = ("fd", "handle")

    def __init__(self, views: Sequence[memoryview], kinds: Sequence[int]):
        self.fd = os.memfd_create(_NAME, os.MFD_CLOEXEC)
        try:
            size, layout = buffers.write_buffers(self.fd, views)
            self.handle = (self.fd, os.fstat(self.fd).st_ino, size,
                           [(*place, kind) for place, kind in zip(layout, kinds, strict=True)])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def encode(out: List[Any], extra: Any = None,
           with_extra: bool = False) -> Tuple[bytes, Optional[Outgoing]]:
    """Worker side: the reply body for *out* (``(out, extra)`` if
    *with_extra*), and the memfd holding its large buffers (None if it has
    none; then the body is a plain pickle).  Raises what pickling raises."""
    if not AVAILABLE:
        return pickle.dumps((out, extra) if with_extra else out, buffers.PROTOCOL5), None
    collector = _COLLECTOR   # one per process: tiny results make no object for it
    try:
        wrapped = out
        if len(out) <= _SEARCH_LIMIT:
            for value in out:
                if type(value) in _LOOK:
                    wrapped = [_wrap(v) for v in out]
                    break
        body = pickle.dumps((wrapped, extra) if with_extra else wrapped, 5,
                            buffer_callback=collector)
        if len(body) >= MIN_SIZE and wrapped is out:   # a long list, or large bytes deeper
            wrapped = [_wrap(v, 2) for v in out]
            collector.clear()
            body = _dumps(wrapped, extra, with_extra, collector)
        if not collector.taken:
            return body, None
        try:
            outgoing = Outgoing(collector.taken, collector.kinds)
        except OSError:   # no memory for a memfd: through the pipe after all
            return pickle.dumps((out, extra) if with_extra else out, buffers.PROTOCOL5), None
    finally:
        collector.clear()
    handle = pickle.dumps(outgoing.handle, buffers.PROTOCOL5)
    return HANDLE_SIZE.pack(len(handle)) + handle + body, outgoing


def _dumps(out: List[Any], extra: Any, with_extra: bool, collector: _Collector) -> bytes:
    return pickle.dumps((out, extra) if with_extra else out, buffers.PROTOCOL5,
                        buffer_callback=collector)


def take_shared(pid: int, death_fd: int, body: memoryview,
                send: Callable[[Tuple[bytes, ...]], None],
                ) -> Optional[Tuple[memoryview, Optional[List[Any]]]]:
    """Parent side, for a reply of worker *pid* with shared buffers: its
    pickle part and the buffers rebuilt (None if they could not be: the
    unpickling then fails as that task's error).  RELEASE goes to the worker
    by *send* in every case.  None if the worker died before we had them:
    its death (*death_fd*) fails the task as a crash."""
    (n,) = HANDLE_SIZE.unpack_from(body)
    rest = body[HANDLE_SIZE.size + n:]
    try:
        try:
            fd_number, inode, size, layout = pickle.loads(body[HANDLE_SIZE.size:][:n])
            fd = _open(pid, fd_number, inode)
        finally:
            send(frame(RELEASE_CONTENT))   # its memfd may go now: we have ours
        try:
            return rest, _rebuild(fd, size, layout)
        finally:
            private_fds.close(fd)
    except Lost:
        if _dead(death_fd):
            return None
        return rest, None
    except (OSError, ValueError, pickle.UnpicklingError):   # no memory for it, a bad handle
        return rest, None


def _dead(death_fd: int) -> bool:
    """Has the process exited, or is it exiting (its descriptors are closed
    a moment before its death fd says so)?"""
    poller = select.poll()
    poller.register(death_fd, select.POLLIN)
    return bool(poller.poll(_DEATH_WAIT_MS))


def _open(pid: int, fd_number: int, inode: int) -> int:
    with private_fds.making():   # no child of ours may keep it
        try:
            fd = os.open(f"/proc/{pid}/fd/{fd_number}", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise Lost(exc.errno, f"the results of worker {pid} are gone: {exc}") from exc
        private_fds.keep(fd)
    if os.fstat(fd).st_ino != inode:
        private_fds.close(fd)
        raise Lost(f"the results of worker {pid} are gone (fd {fd_number} is another file)")
    return fd


def _rebuild(fd: int, size: int, layout: Sequence[Tuple[int, int, int]]) -> List[Any]:
    whole: Optional[memoryview] = None
    if any(kind == MEMORY for _, _, kind in layout):
        whole = _map(fd, size)
    out: List[Any] = []
    for offset, length, kind in layout:
        if kind == MEMORY:
            assert whole is not None
            out.append(whole[offset:offset + length])
        else:
            out.append(_read_object(fd, offset, length, kind))
    return out


class _Mapping:
    """Unmaps its pages when the last object built on them is gone."""

    __slots__ = ("address", "size")

    def __init__(self, address: int, size: int):
        self.address, self.size = address, size

    def __del__(self) -> None:
        _libc().munmap(self.address, self.size)


def _map(fd: int, size: int) -> memoryview:
    """A private writable mapping of the file: a process the caller forks
    gets it copy-on-write, as it would an ordinary array.  (Not Python's
    mmap: it keeps a descriptor of the file open per mapping, and a caller
    holding a thousand result arrays would run out of descriptors.)"""
    libc = _libc()
    address = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
    if address is None or address == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot map the results: {os.strerror(err)}")
    pages = (ctypes.c_ubyte * size).from_address(address)
    pages._owner = _Mapping(address, size)   # type: ignore[attr-defined]
    return memoryview(pages)


_MAP_FAILED = ctypes.c_void_p(-1).value
_native: Any = None


def _libc() -> Any:
    """libc's mmap, munmap and fallocate (False: no fallocate)."""
    global _native
    if _native is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.mmap.restype = ctypes.c_void_p
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.munmap.restype = ctypes.c_int
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        libc.fallocate.restype = ctypes.c_int
        _native = libc
    return _native


def _read_object(fd: int, offset: int, length: int, kind: int) -> Any:
    """A new bytes or bytearray read from the file, whose pages are freed
    behind the read (the worker is done with them)."""
    if kind == BYTES and not buffers.REMOTE_POSSIBLE:   # no empty bytes to fill
        return bytes(_read_object(fd, offset, length, BYTEARRAY))
    if kind == BYTEARRAY:
        obj: Any = bytearray(length)
        target = memoryview(obj)
    else:
        obj, target = buffers.empty_bytes(length)
    with target:
        done = 0
        while done < length:
            n = os.preadv(fd, [target[done:done + _CHUNK]], offset + done)
            if n <= 0:
                raise OSError(f"the results' file ended early ({done} of {length} bytes)")
            _punch(fd, offset + done, n)
            done += n
    return obj


_PUNCH_HOLE = 0x02 | 0x01     # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def _punch(fd: int, offset: int, length: int) -> None:
    """Free the file's pages in that range now (where that fails they are
    freed with the file)."""
    _libc().fallocate(fd, _PUNCH_HOLE, offset, length)

