"""Starts made off the supervisor's thread, for forkserver.

Under forkserver, ``multiprocessing`` starts a worker by asking its fork
server and reading the new pid from it: a fork server stopped (a debugger, a
cgroup freezer) or slow blocks that read for as long.  Made on the
supervisor's thread, it stopped the whole pool: no death, timeout, memory cap
or result of the workers that exist was handled meanwhile.  A thread of the
launcher's makes the starts instead, one at a time, in the order asked; the
supervisor is woken through a pipe when one is done and takes it as it
takes the zygote's answers.
"""
from __future__ import annotations

import collections
import os
import signal
import threading
from typing import Callable, Deque, Dict, List, Optional, Set, Tuple, Union

from ...wire import private_fds
from .base import WorkerPipes, WorkerProcess
from ...worker.starting import StartError
Outcome = Tuple[WorkerPipes, Union[WorkerProcess, StartError]]


class Starter:
    """A thread that runs *start* (slot index, pipes -> process, or
    StartError) for each start asked of it; *release* is called once, when
    no start can run any more: at close(), or after the start then under way
    (which may still be sending descriptors that *release* closes)."""

    def __init__(self, start: Callable[[int, WorkerPipes], WorkerProcess],
                 release: Callable[[], None] = lambda: None):
        self._start = start
        self._release = release
        self._starting = False   # a start is under way on the thread
        self._cond = threading.Condition()
        self._asked: Deque[Tuple[int, WorkerPipes]] = collections.deque()
        self._pending: Set[int] = set()   # slots asked for or being started
        self._done: Dict[int, Outcome] = {}
        self._closed = False
        with private_fds.making():
            self.wake_fd, self._wake_w = os.pipe()
            private_fds.keep(self.wake_fd, self._wake_w)
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="poolguard-starter",
                                        daemon=True)
        self._thread.start()

    def ask(self, index: int, pipes: WorkerPipes) -> None:
        with self._cond:
            self._asked.append((index, pipes))
            self._pending.add(index)
            self._cond.notify()

    def drain(self) -> None:
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def take(self, index: int) -> Optional[Outcome]:
        """The outcome of slot *index*'s start, if done.  When others are
        done too, the supervisor is woken again: it may stop taking them in
        this turn (after a failed start) and must not wait for a wake-up
        that already came."""
        with self._cond:
            outcome = self._done.pop(index, None)
            if outcome is not None and self._done and not self._closed:
                try:
                    os.write(self._wake_w, b"s")
                except BlockingIOError:
                    pass
            return outcome

    def pending(self, index: int) -> bool:
        with self._cond:
            return index in self._pending

    def pending_slots(self) -> Set[int]:
        """Every slot pending() is true of, at once (a scan of all slots)."""
        with self._cond:
            return set(self._pending)

    def ready(self, index: int) -> bool:
        with self._cond:
            return index in self._done

    def busy(self) -> bool:
        with self._cond:
            return bool(self._pending or self._done)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._asked and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                index, pipes = self._asked.popleft()
                self._starting = True
            outcome: Outcome
            try:
                outcome = (pipes, self._start(index, pipes))
            except StartError as exc:
                outcome = (pipes, exc)
            except BaseException as exc:   # a bug of ours: the start fails, not the pool
                error = StartError(f"{type(exc).__name__}: {exc}")
                error.__cause__ = exc
                outcome = (pipes, error)
            with self._cond:   # close() closes the pipe under it too
                self._starting = False
                self._pending.discard(index)
                closed = self._closed
                if not closed:
                    self._done[index] = outcome
                    try:
                        os.write(self._wake_w, b"s")
                    except BlockingIOError:
                        pass   # full: the supervisor has yet to read the wake-ups before
            if closed:   # the pool ended meanwhile
                _discard(outcome)
                self._release()
                return

    def close(self) -> None:
        """No more starts; what was asked and not made is dropped, what was
        made and not taken is killed.  A start under way (a stopped fork
        server) is not waited for: its process is killed when it ends, and
        only then are the starts' own descriptors released."""
        with self._cond:
            self._closed = True
            idle = not self._starting
            self._cond.notify()
            asked, done = list(self._asked), list(self._done.values())
            self._asked.clear()
            self._done.clear()
            for fd in (self.wake_fd, self._wake_w):
                private_fds.close(fd)
        for _, pipes in asked:
            pipes.close_child_ends()
            pipes.close_parent_ends()
        for outcome in done:
            _discard(outcome)
        if idle:
            self._release()


def _discard(outcome: Outcome) -> None:
    pipes, process = outcome
    pipes.close_parent_ends()
    if isinstance(process, WorkerProcess):
        try:
            os.kill(process.pid, signal.SIGKILL)   # unreaped: the pid is still its
        except OSError:
            pass
        process.reap()
        process.close()


__all__: List[str] = ["Starter"]
