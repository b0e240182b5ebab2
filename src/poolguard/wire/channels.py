"""Pipes between the supervisor and its workers, never blocking the supervisor.

* :class:`FrameReader` reads length-prefixed frames without blocking, so a
  worker that dies in the middle of a write cannot stall the reader;
* :class:`Spiller` writes without blocking and hands what a full pipe cannot
  take now to a thread of its own;
* :class:`WatchSet` is the set of descriptors the supervisor waits on.
"""
from __future__ import annotations

import collections
import fcntl
import math
import mmap
import os
import select
import threading
from enum import Enum
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

from . import private_fds
from .framing import split_frames

PIPE_SIZE = 1 << 20         # asked for; Linux caps it at /proc/sys/fs/pipe-max-size


class Read(Enum):
    """Where a read of a pipe stopped."""
    MORE = "more"          # at its limit of reads: more may be there
    DRAINED = "drained"    # nothing more for now
    EOF = "eof"            # the writer's end is closed (or the pipe broke)


class Watched(Enum):
    """What a descriptor the supervisor waits on is, for its owner."""
    RESULT = "result"      # a worker's result pipe: replies to read
    DEATH = "death"        # a worker's pidfd (or sentinel): it died
    LAUNCHER = "launcher"  # a launcher's helper: an answer, or its death


class FrameReader:
    """Non-blocking reader of length-prefixed frames: the supervisor must never
    block on a worker that died in the middle of a write."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = bytearray()
        os.set_blocking(fd, False)

    def read(self, max_reads: int = 64) -> Tuple[List[bytes], Read]:
        """Read what is there now: (complete frames, where it stopped)."""
        state = Read.MORE
        scratch = _scratch()
        for _ in range(max_reads):
            try:
                n = os.readv(self.fd, (scratch,))
            except BlockingIOError:
                state = Read.DRAINED
                break
            except OSError:
                state = Read.EOF
                break
            if not n:
                state = Read.EOF
                break
            with memoryview(scratch) as view:
                self.buf += view[:n]
            if n < PIPE_SIZE:   # it was all there: spare a read that would
                state = Read.DRAINED    # only say so (and a wait for the GIL after it)
                break
        frames, pos = split_frames(self.buf)
        if pos:
            del self.buf[:pos]
        return frames, state


_local = threading.local()


def _scratch() -> mmap.mmap:
    """The calling thread's buffer to read pipes into: ``os.read`` made a
    new megabyte for each read, whose pages faulted in each time.  (A
    mapping: only the pages a read used become memory.)"""
    try:
        buf: mmap.mmap = _local.buf
    except AttributeError:
        buf = _local.buf = mmap.mmap(-1, PIPE_SIZE)
    return buf


class WakePipe:
    """A pipe whose read end a loop polls; other threads ``wake()`` it.

    Only the first wake-up between two drains writes a byte: with one byte
    per submitted batch, the writes cost more than the rest of a tiny task.
    A wake-up after ``close()`` (a late ``terminate()``, a callback of
    dask's) writes nothing: the descriptor's number may belong to another
    file by then."""

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write_fd, False)
        self._woken = False
        self._closed = False
        self._lock = threading.Lock()   # taken by the first wake-up between drains only

    def wake(self) -> None:
        if self._woken:
            return
        with self._lock:
            if self._closed:
                return
            self._woken = True
            try:
                os.write(self._write_fd, b"x")
            except OSError:
                pass   # full: the loop will wake anyway

    def drain(self) -> None:
        """Read, then clear the flag: the other order could drain a waker's
        byte while its flag stays set, and no later waker would write again."""
        try:
            os.read(self.fd, 4096)
        except BlockingIOError:
            pass
        self._woken = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            os.close(self.fd)
            os.close(self._write_fd)


class Spiller:
    """Writes what a worker's task pipe could not take at once.

    The supervisor writes without blocking; the remainder of a large frame is
    queued here, and later frames for the same pipe queue behind it so order
    holds.  The thread starts on first use: small tasks never need it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: Dict[int, Deque[memoryview]] = {}
        self._to_close: set[Any] = set()
        self._thread: Optional[threading.Thread] = None
        self._wakeup = WakePipe()
        self._stopping = False

    def write(self, fd: int, parts: Sequence[bytes]) -> None:
        """Write frames given as buffers (see messages.frame), in order."""
        with self._lock:
            queue = self._queues.get(fd)
            if queue is not None:
                queue.extend(memoryview(part) for part in parts)
                return
            if len(parts) > 1 and sum(map(len, parts)) < _JOIN_BELOW:
                parts = (b"".join(parts),)   # one buffer: cheaper than many views
            try:
                rest = _write_some(fd, [memoryview(part) for part in parts])
            except OSError:
                return  # the worker is gone; its death is handled by the supervisor
            if not rest:
                return
            self._queues[fd] = collections.deque(rest)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="poolguard-spiller",
                                                daemon=True)
                self._thread.start()
        self._wakeup.wake()

    def close_fd(self, fd: int) -> None:
        """Close a task pipe; if the thread may be polling it, let it close it."""
        with self._lock:
            if fd in self._queues:
                self._to_close.add(fd)
                fd = -1
        if fd >= 0:
            os.close(fd)
        else:
            self._wakeup.wake()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            thread = self._thread
        if thread is not None:
            self._wakeup.wake()
            thread.join()
        self._wakeup.close()

    def _run(self) -> None:
        while True:
            with self._lock:
                for fd in self._to_close:
                    self._queues.pop(fd, None)
                    os.close(fd)
                self._to_close.clear()
                if self._stopping:
                    for fd in list(self._queues):
                        self._queues.pop(fd)
                    return
                fds = list(self._queues)
            poller = select.poll()
            poller.register(self._wakeup.fd, select.POLLIN)
            for fd in fds:
                poller.register(fd, select.POLLOUT)
            for fd, _event in poller.poll():
                if fd == self._wakeup.fd:
                    self._wakeup.drain()
                    continue
                with self._lock:
                    queue = self._queues.get(fd)
                    if queue is None or fd in self._to_close:
                        continue
                    try:
                        rest = _write_some(fd, list(queue))
                        queue.clear()
                        queue.extend(rest)
                    except OSError:
                        queue.clear()  # broken pipe: the worker died
                    if not queue:
                        del self._queues[fd]


def _write_some(fd: int, views: List[memoryview]) -> List[memoryview]:
    """Write what the non-blocking pipe takes now; return what is left."""
    try:
        n = os.writev(fd, views[:_IOV_MAX])
    except BlockingIOError:
        return views
    rest = []
    for view in views:
        if n >= len(view):
            n -= len(view)
        else:
            rest.append(view[n:] if n else view)
            n = 0
    return rest


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16
_JOIN_BELOW = 1 << 16   # bytes: small frames are joined before writing


class WatchSet:
    """What the supervisor waits on: fd -> (its owner, :class:`Watched`).

    An epoll set kept between turns: a turn costs what is ready, not what is
    watched (poll() hands the kernel every descriptor on every call: 3,000
    for a pool of 1,024), and no descriptor number is too high (select()
    fails past 1023).  poll() where there is no epoll.
    """

    def __init__(self, wake_fd: int):
        self.owner: Dict[int, Tuple[Any, Watched]] = {}
        self._wake_fd = wake_fd
        self._epoll = hasattr(select, "epoll")
        self._poller: Any = None
        self._renew()

    def _renew(self) -> None:
        """A new set, from what we own.  epoll watches open files, not
        numbers: a descriptor closed before it was taken out (a launcher
        closes its helpers' own) stays in the set while a copy of it lives
        in another process, reported ready under a number we do not know,
        and a new file given that number could not be added."""
        self.close()
        if self._epoll:
            with private_fds.making():   # no child of ours needs it
                self._poller = select.epoll()
                private_fds.keep(self._poller.fileno())
        else:
            self._poller = select.poll()
        for fd in (self._wake_fd, *self.owner):
            self._poller.register(fd, select.EPOLLIN if self._epoll else select.POLLIN)

    def add(self, fd: int, owner: Any, what: Watched) -> None:
        self.owner[fd] = (owner, what)
        try:
            self._poller.register(fd, select.EPOLLIN if self._epoll else select.POLLIN)
        except FileExistsError:   # the number of a file closed while still in the set
            self._renew()

    def discard(self, fd: int) -> None:
        if self.owner.pop(fd, None) is not None:
            try:
                self._poller.unregister(fd)
            except (OSError, KeyError):   # closed already (epoll forgot it then)
                pass

    def wait(self, timeout: Optional[float]) -> List[int]:
        if timeout is None:
            wait: Optional[float] = -1 if self._epoll else None
        else:   # rounded up: a wake-up a hair early would only turn the loop again
            wait = math.ceil(timeout * 1000) / (1000 if self._epoll else 1)
        ready = [fd for fd, _event in self._poller.poll(wait)]
        if any(fd not in self.owner and fd != self._wake_fd for fd in ready):
            self._renew()   # one closed while in the set: see _renew
            ready = [fd for fd in ready if fd in self.owner or fd == self._wake_fd]
        return ready

    def close(self) -> None:
        if self._epoll and self._poller is not None:
            private_fds.release(self._poller.fileno())
            self._poller.close()
        self._poller = None


def grow_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (AttributeError, OSError):
        pass  # the default size works, with more trips through the spiller
