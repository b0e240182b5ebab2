"""The pool's side of the zygote (zygote_main.py): fork it, ask it for
workers, have it reap them, end it."""
from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from ...errors import signal_name
from . import zygote_main
from ... import lifeline
from ...wire.slots import INITIALIZING
from ...wire import private_fds
from .base import StartError, WorkerPipes, WorkerProcess, WorkerSpec, _pidfd

ZYGOTE_REPLY_TIMEOUT = 30.0   # a fork of a very large process can take a while
ZYGOTE_EXIT_GRACE = 5.0       # seconds the zygote has to kill and reap its workers


class ZygoteProcess(WorkerProcess):
    """A worker forked by the zygote: its child, not ours."""

    def __init__(self, pid: int, pidfd: int, launcher: "ZygoteLauncher"):
        self.pid = pid
        self.pidfd: Optional[int] = pidfd
        self.death_fd = pidfd
        self._launcher = launcher

    def reap(self) -> Optional[int]:
        return self._launcher.reap(self.pid)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class ZygoteLauncher:
    """Workers forked by a single-threaded zygote (fork start method).

    Made in ``Pool()``, on the caller's thread, before the supervisor thread
    starts.  The supervisor asks it to fork a worker (passing the worker's
    pipe ends over a Unix socket) and, after the worker's pidfd says it died,
    to reap it: one short request and reply each.  Until then the worker is
    a zombie, so its pid and process group id cannot be reused.

    The pool's first workers are not asked for: their pipes are made before
    the zygote is forked, and it forks them at its birth, while the caller
    is still in ``Pool()`` and the supervisor thread starting; their replies
    wait in the socket until the supervisor takes them (``take_prepared``).
    """

    def __init__(self, context: Any, spec: WorkerSpec, prefork: int = 0):
        self.spec = spec
        spec.by_zygote = True
        lifeline.load_native()   # once here, not in each worker
        self._prepared: Dict[int, WorkerPipes] = {}
        try:
            for index in range(prefork):
                self._prepared[index] = WorkerPipes()
        except OSError:   # out of descriptors: the rest start on request, or fail then
            pass
        for index in self._prepared:
            spec.slots.write(index, INITIALIZING, 0)
        self._unread = list(self._prepared)           # their replies, in the zygote's order
        self._unanswerable = False
        self._replies: Dict[int, tuple[Any, ...]] = {}
        with private_fds.making():
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            private_fds.keep(ours.fileno())
        # (The zygote does not get what is in private_fds: our pipe ends, our
        # socket, other pools' descriptors.)
        try:
            self.pid = zygote_main.fork_zygote(
                theirs, spec, [(i, pipes.child_ends()) for i, pipes in self._prepared.items()])
        except OSError:
            private_fds.release(ours.fileno())
            ours.close()
            self._close_prepared()
            raise
        finally:
            theirs.close()
            for pipes in self._prepared.values():
                pipes.close_child_ends()
        self._sock = ours
        self.pidfd = os.pidfd_open(self.pid)
        self.death_fd: Optional[int] = self.pidfd   # the supervisor watches it
        self.exitcode: Optional[int] = None
        # Workers have the __main__ of this moment (the zygote's).
        self._main = {k: v for k, v in vars(sys.modules["__main__"]).items() if callable(v)}

    def main_by_value(self, func: Callable[..., Any]) -> bool:
        """A function of __main__ defined after the zygote was forked is not
        in the workers' __main__: it goes by value, as under spawn."""
        return self._main.get(getattr(func, "__name__", "")) is not func

    def take_prepared(self, index: int) -> Optional[Tuple[WorkerPipes, WorkerProcess]]:
        """The worker the zygote forked at its birth for slot *index*, and its
        pipes; None if there was none (or it was taken)."""
        pipes = self._prepared.pop(index, None)
        if pipes is None:
            return None
        try:
            self._collect(until=index)
            return pipes, self._watch(self._replies.pop(index))
        except StartError:
            pipes.close_parent_ends()
            raise

    @property
    def answers_fd(self) -> Optional[int]:
        """The socket, while the zygote's answers for the first workers are
        still to come (the supervisor's loop waits on it among the rest)."""
        return self._sock.fileno() if self._unread and not self._unanswerable else None

    def read_answers(self) -> None:
        """Read the answers for the first workers that are there, without
        waiting.  If the zygote cannot answer, taking a worker says why."""
        try:
            self._collect(wait=False)
        except (StartError, OSError):
            self._unanswerable = True
        if self.exitcode is not None:
            # Dead, it has sent all it ever will.  Its socket need not say
            # end of file yet: a worker it had just forked holds a copy until
            # it closes it, and may be slow to (at-fork hooks, a loaded
            # machine); waiting for that end of file hung the pool.
            self._unanswerable = True

    def prepared(self, index: int) -> bool:
        """Is slot *index* a first worker, not taken yet?"""
        return index in self._prepared

    def still_forking(self, index: int) -> bool:
        """Is slot *index* a first worker that the zygote has not answered for?"""
        if index in self._prepared and index not in self._replies:
            self.read_answers()
            return index not in self._replies and not self._unanswerable
        return False

    def _collect(self, until: Optional[int] = None, wait: bool = True) -> None:
        """Read the replies for the first workers, in order, up to *until*'s
        (None: all of them); without *wait*, only those already there."""
        while self._unread and (until is None or until not in self._replies):
            if self._unanswerable:
                raise StartError(self.describe_death() if self.exitcode is not None else
                                 f"the pool's zygote (pid {self.pid}) did not answer")
            if not wait and not select.select([self._sock], [], [], 0)[0]:
                return
            self._replies[self._unread[0]] = self._receive()
            self._unread.pop(0)

    def start(self, index: int, pipes: WorkerPipes) -> WorkerProcess:
        """Have the zygote fork the worker of slot *index*; our copies of its
        ends of *pipes* are closed, whatever happens."""
        try:
            reply = self._ask(("fork", index), pipes.child_ends())
        finally:
            pipes.close_child_ends()
        return self._watch(reply)

    def _watch(self, reply: tuple[Any, ...]) -> WorkerProcess:
        if reply[0] != "ok":
            raise StartError(reply[1])
        pid = reply[1]
        try:
            return ZygoteProcess(pid, os.pidfd_open(pid), self)
        except OSError as exc:   # cannot be: the zygote has not reaped it
            raise StartError(f"cannot watch worker {pid}: {exc}") from exc

    def reap(self, pid: int) -> Optional[int]:
        try:
            reply = self._ask(("reap", pid))
        except StartError:
            return None    # the zygote is gone: nobody can read the status now
        status: Optional[int] = reply[1]
        return status

    def _ask(self, request: tuple[Any, ...], fds: Optional[List[int]] = None) -> tuple[Any, ...]:
        """One request, one reply; StartError when the zygote cannot answer."""
        if self.exitcode is not None:
            raise StartError(self.describe_death())
        self._collect()   # the replies for the first workers come first
        try:
            socket.send_fds(self._sock, [pickle.dumps(request)], fds or [])
        except OSError as exc:
            raise StartError(f"the pool's zygote (pid {self.pid}) did not answer: {exc}") from exc
        return self._receive()

    def _receive(self) -> tuple[Any, ...]:
        """The zygote's next reply; StartError when it cannot answer."""
        try:
            ready, _, _ = select.select([self._sock], [], [], ZYGOTE_REPLY_TIMEOUT)
            data = self._sock.recv(65536) if ready else None
        except OSError as exc:
            data = None
            why = f"{exc}"
        else:
            why = "no answer" if data is None else "it closed its socket"
        if not data:
            if select.select([self.pidfd], [], [], 1.0)[0]:   # it died: say how
                raise StartError(self.died())
            raise StartError(f"the pool's zygote (pid {self.pid}) did not answer: {why}")
        reply: tuple[Any, ...] = pickle.loads(data)
        return reply

    def died(self) -> str:
        """Called once its pidfd is readable: reap it (once), and say what
        happened."""
        if self.exitcode is None:
            _, status = os.waitpid(self.pid, 0)
            self.exitcode = os.waitstatus_to_exitcode(status)
        return self.describe_death()

    def describe_death(self) -> str:
        code = self.exitcode
        how = (f"was killed by {signal_name(-code)}" if code is not None and code < 0
               else f"exited with code {code}")
        return (f"the pool's zygote, the process that forks its workers (pid {self.pid}), "
                f"{how}; no new worker can be started. Create a new pool")

    def close(self) -> None:
        """Tell the zygote to kill what is left and exit; wait for it (it is
        our child), and kill it if it does not go."""
        if self.exitcode is None:
            try:
                self._sock.send(pickle.dumps(("exit",)))
            except OSError:
                pass   # already gone
        private_fds.release(self._sock.fileno())
        self._sock.close()
        self._close_prepared()   # workers never taken: the zygote killed them
        if self.exitcode is None:
            if not select.select([self.pidfd], [], [], ZYGOTE_EXIT_GRACE)[0]:
                os.kill(self.pid, signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)
            self.exitcode = os.waitstatus_to_exitcode(status)
        os.close(self.pidfd)

    def _close_prepared(self) -> None:
        for pipes in self._prepared.values():
            pipes.close_parent_ends()
        self._prepared.clear()


def can_use_zygote() -> bool:
    """The zygote needs pidfds to watch workers that are not our children."""
    fd = _pidfd(os.getpid())
    if fd is None:
        return False
    os.close(fd)
    return hasattr(socket, "send_fds")


