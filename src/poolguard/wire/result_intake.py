"""The parent's side of large results (see result_buffers.py): take a
worker's memfd, answer RELEASE, and rebuild each buffer: an array on a
private mapping of the file, a ``bytes`` or ``bytearray`` read into a new
object of its own (from the file, or straight from the worker's memory)."""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import pickle
import select
from typing import Any, Callable, List, Optional, Sequence, Tuple

from . import buffers, private_fds
from .framing import frame
from .messages import RELEASE_CONTENT
from .result_buffers import BYTEARRAY, BYTES, HANDLE_SIZE, MEMORY, REMOTE

_CHUNK = 64 << 20     # bytes read (then freed in the file) at a time
_DEATH_WAIT_MS = 2000   # a worker that took its memfd away is dying: how long to wait for it


class Lost(OSError):
    """The worker's memfd or memory could not be read: the worker is gone."""


def take_shared(pid: int, death_fd: int, body: memoryview,
                send: Callable[[Tuple[bytes, ...]], None],
                ) -> Optional[Tuple[memoryview, Optional[List[Any]]]]:
    """Parent side, for a reply of worker *pid* with shared buffers: its
    pickle part and the buffers rebuilt (None if they could not be: the
    unpickling then fails as that task's error).  RELEASE goes to the worker
    by *send* in every case, once we are done with its memory.  None if the
    worker died before we had them: its death (*death_fd*) fails the task
    as a crash."""
    (n,) = HANDLE_SIZE.unpack_from(body)
    rest = body[HANDLE_SIZE.size + n:]
    try:
        try:
            fd_number, inode, size, layout = pickle.loads(body[HANDLE_SIZE.size:][:n])
            fd = _open(pid, fd_number, inode) if fd_number >= 0 else -1
            try:
                shared = _rebuild(pid, fd, size, layout)
                if any(kind == REMOTE for _, _, kind in layout) and _dead(death_fd, 0):
                    # Read from a pid that may have been reused since.
                    raise Lost(f"worker {pid} died while we read its results")
                return rest, shared
            finally:
                if fd >= 0:
                    private_fds.close(fd)
        finally:
            send(frame(RELEASE_CONTENT))   # it may let go of its memfd and memory now
    except Lost:
        if _dead(death_fd):
            return None
        return rest, None
    except (OSError, ValueError, pickle.UnpicklingError):   # no memory for it, a bad handle
        return rest, None


def _dead(death_fd: int, wait_ms: int = _DEATH_WAIT_MS) -> bool:
    """Has the process exited, or is it exiting (its descriptors are closed
    a moment before its death fd says so)?"""
    poller = select.poll()
    poller.register(death_fd, select.POLLIN)
    return bool(poller.poll(wait_ms))


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


def _rebuild(pid: int, fd: int, size: int,
             layout: Sequence[Tuple[int, int, int]]) -> List[Any]:
    whole: Optional[memoryview] = None
    if any(kind == MEMORY for _, _, kind in layout):
        whole = _map(fd, size)
    out: List[Any] = []
    for offset, length, kind in layout:
        if kind == MEMORY:
            assert whole is not None
            out.append(whole[offset:offset + length])
        elif kind == REMOTE:
            out.append(_read_remote(pid, offset, length))
        else:
            out.append(_read_object(fd, offset, length, kind))
    return out


def _read_remote(pid: int, address: int, length: int) -> bytes:
    try:
        return buffers.read_remote(pid, address, length)
    except OSError as exc:
        if exc.errno == errno.ESRCH:   # it died (or is dying) before we had it all
            raise Lost(exc.errno, f"worker {pid} is gone: {exc}") from exc
        raise


class _Mapping:
    """Unmaps its pages when the last object built on them is gone."""

    __slots__ = ("address", "size", "_munmap")

    def __init__(self, address: int, size: int):
        self.address, self.size = address, size
        self._munmap = _libc().munmap   # held: at exit our module's globals may be gone

    def __del__(self) -> None:
        self._munmap(self.address, self.size)


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

