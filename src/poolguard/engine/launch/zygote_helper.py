"""The zygote's processes as the pool sees them: one zygote (or its standby)
through our end of its socket and its pidfd, and a worker a zygote forked
(its child, not ours).  zygote.py's launcher holds them."""
from __future__ import annotations

import os
import pickle
import select
import signal
import socket
from typing import Any, Callable, List, Optional, Tuple

from ... import diagnosis
from ...naming import signal_name
from ...wire import private_fds
from .base import WorkerProcess

# The launcher's reap(pid, zygote, status, ask): have *zygote* reap its worker.
Reaper = Callable[[int, "Helper", Optional[int], bool], Optional[int]]


class ZygoteProcess(WorkerProcess):
    """A worker forked by a zygote: its child, not ours."""

    def __init__(self, pid: int, pidfd: int, zygote: "Helper", reap: Reaper):
        self.pid = pid
        self.pidfd: Optional[int] = pidfd
        self.death_fd = pidfd
        self._zygote = zygote
        self._reap = reap

    def reap(self) -> Optional[int]:
        # A zombie until its zygote reaps it, which it does only when asked:
        # the status is read first.  (Its zygote dead, it was handed to init,
        # which may have reaped it already: then the status is unknown.)
        status = diagnosis.zombie_exit_status(self.pid, diagnosis.SOURCES)
        dead = self.pidfd is not None and readable(self.pidfd, 0)
        return self._reap(self.pid, self._zygote, status, status is None and dead)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def lost_with(self) -> Optional[str]:
        # The zygote's death reaches its workers as their parent-death signal,
        # so when this one's death is handled the zygote's pidfd is readable,
        # though the launcher may not have handled that yet.
        zygote = self._zygote
        if not zygote.reaped and (zygote.pidfd is None or not readable(zygote.pidfd, 0)):
            return None
        return f"the pool's zygote (pid {zygote.pid}), its parent, which {zygote.how_it_died()}"


class Helper:
    """One zygote process (the zygote, or its standby) as the pool sees it:
    our end of its socket, its pid and pidfd once known."""

    def __init__(self, sock: socket.socket, pid: Optional[int] = None, child: bool = False):
        self.sock = sock
        sock.setblocking(False)
        self.pid = pid
        self.child = child             # ours to waitpid (the first zygote only)
        self.pidfd: Optional[int] = os.pidfd_open(pid) if pid is not None else None
        self.exitcode: Optional[int] = None
        self.reaped = False
        self.eof = False   # its socket closed: not watched any more

    def know(self, pid: int) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)   # a zombie of its parent's until reaped: safe

    def send(self, request: tuple[Any, ...], fds: Optional[List[int]] = None) -> None:
        """Send without blocking; OSError (BlockingIOError: not reading) if not sent."""
        socket.send_fds(self.sock, [pickle.dumps(request)], fds or [])

    def receive(self) -> List[Tuple[tuple[Any, ...], List[int]]]:
        """Every message there now, each with the descriptors that came with
        it (ours to close); (("eof",), []) ends them when it closed."""
        out: List[Tuple[tuple[Any, ...], List[int]]] = []
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 65536, 1, socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return out
            except OSError:
                data, fds = b"", []
            if not data:
                self.eof = True
                out.append((("eof",), []))
                return out
            out.append((pickle.loads(data), fds))

    def how_it_died(self) -> str:
        """Once its pidfd is readable: reap it if it is our child, else read
        its status while it is a zombie; say how it ended."""
        if not self.reaped:
            self.reaped = True
            if self.child:
                _, status = os.waitpid(self.pid or 0, 0)
                self.exitcode = os.waitstatus_to_exitcode(status)
            elif self.pid is not None:
                self.exitcode = diagnosis.zombie_exit_status(self.pid, diagnosis.SOURCES)
        code = self.exitcode
        if code is None:
            return "ended (how is unknown: not our child)"
        return f"was killed by {signal_name(-code)}" if code < 0 else f"exited with code {code}"

    def close(self, grace: float) -> None:
        """Tell it to end (what it forked dies with it); wait *grace* seconds,
        then kill it."""
        if not self.reaped:
            try:
                self.send(("exit",))
            except OSError:
                pass   # gone, or stopped with a full socket: killed below
        private_fds.release(self.sock.fileno())
        self.sock.close()
        if self.pidfd is None:
            return
        if not self.reaped:
            if not readable(self.pidfd, grace):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                readable(self.pidfd, grace)
            self.how_it_died()
        os.close(self.pidfd)
        self.pidfd = None


def close_all(fds: List[int]) -> None:
    for fd in fds:
        os.close(fd)


def readable(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))
