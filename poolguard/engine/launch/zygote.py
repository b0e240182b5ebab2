"""The pool's side of the zygote (zygote_main.py): fork it, ask it for
workers, have it reap them, end it."""
from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import sys
from typing import Any, Callable, List, Optional

from ...errors import signal_name
from . import zygote_main
from .base import StartError, WorkerProcess, WorkerSpec, parent_only, release_parent_only, _pidfd

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
    """

    def __init__(self, context: Any, spec: WorkerSpec):
        self.spec = spec
        spec.group_guardian = False     # the zygote kills its workers' groups itself
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent_only(ours.fileno())
        self.pid = zygote_main.fork_zygote(theirs, spec)
        theirs.close()
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

    def start(self, index: int, task_r: int, result_w: int, crash_w: int) -> WorkerProcess:
        try:
            reply = self._ask(("fork", index), [task_r, result_w, crash_w])
        finally:
            for fd in (task_r, result_w, crash_w):
                os.close(fd)
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
        try:
            socket.send_fds(self._sock, [pickle.dumps(request)], fds or [])
            ready, _, _ = select.select([self._sock], [], [], ZYGOTE_REPLY_TIMEOUT)
            data = self._sock.recv(65536) if ready else None
        except OSError as exc:
            data = None
            why = f"{exc}"
        else:
            why = "no answer" if data is None else "it closed its socket"
        if not data:
            raise StartError(f"the pool's zygote (pid {self.pid}) did not answer: {why}")
        reply: tuple[Any, ...] = pickle.loads(data)
        return reply

    def died(self) -> str:
        """Called once its pidfd is readable: reap it, and say what happened."""
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
        release_parent_only(self._sock.fileno())
        self._sock.close()
        if self.exitcode is None:
            if not select.select([self.pidfd], [], [], ZYGOTE_EXIT_GRACE)[0]:
                os.kill(self.pid, signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)
            self.exitcode = os.waitstatus_to_exitcode(status)
        os.close(self.pidfd)


def can_use_zygote() -> bool:
    """The zygote needs pidfds to watch workers that are not our children."""
    fd = _pidfd(os.getpid())
    if fd is None:
        return False
    os.close(fd)
    return hasattr(socket, "send_fds")


