"""The pool's side of the zygote (zygote_main.py): fork it, ask it for
workers, have it reap them, replace it by its standby when it dies, end it.

Nothing here waits for the zygote.  A request is sent without blocking and
its answer, which names it, is read when the supervisor's loop sees the
socket readable; a worker's exit status is read from /proc while it is a
zombie (the zygote reaps it only when asked, after that).  A zygote stopped
(a debugger, a cgroup freezer) therefore delays only the workers it was
asked for.
"""
from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ... import diagnosis, lifeline
from ...errors import HelperDiedWarning, signal_name
from ...wire import private_fds
from ...wire.slots import INITIALIZING
from . import zygote_main
from .base import StartError, WorkerPipes, WorkerProcess, WorkerSpec, _pidfd

ZYGOTE_EXIT_GRACE = 5.0       # seconds a zygote has to kill and reap its workers
STANDBY_RETRY = 1.0           # seconds between two requests for a standby
STATUS_WAIT = 1.0             # seconds to wait for an exit status /proc does not show


class ZygoteProcess(WorkerProcess):
    """A worker forked by a zygote: its child, not ours."""

    def __init__(self, pid: int, pidfd: int, zygote: "_Helper", launcher: "ZygoteLauncher"):
        self.pid = pid
        self.pidfd: Optional[int] = pidfd
        self.death_fd = pidfd
        self._zygote = zygote
        self._launcher = launcher

    def reap(self) -> Optional[int]:
        # A zombie until its zygote reaps it, which it does only when asked:
        # the status is read first.  (Its zygote dead, it was handed to init,
        # which may have reaped it already: then the status is unknown.)
        status = diagnosis.zombie_exit_status(self.pid, diagnosis.SOURCES)
        dead = self.pidfd is not None and _readable(self.pidfd, 0)
        return self._launcher.reap(self.pid, self._zygote, status, ask=status is None and dead)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def lost_with(self) -> Optional[str]:
        # The zygote's death reaches its workers as their parent-death signal,
        # so when this one's death is handled the zygote's pidfd is readable,
        # though the launcher may not have handled that yet.
        zygote = self._zygote
        if not zygote.reaped and (zygote.pidfd is None or not _readable(zygote.pidfd, 0)):
            return None
        return f"the pool's zygote (pid {zygote.pid}), its parent, which {zygote.how_it_died()}"


class _Helper:
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
            if not _readable(self.pidfd, grace):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                _readable(self.pidfd, grace)
            self.how_it_died()
        os.close(self.pidfd)
        self.pidfd = None


class ZygoteLauncher:
    """Workers forked by a single-threaded zygote (fork start method).

    Made in ``Pool()``, on the caller's thread, before the supervisor thread
    starts.  The supervisor asks it to fork a worker (passing the worker's
    pipe ends over a Unix socket); the answer comes later, read when the
    socket is readable (``on_ready``), and the worker is then taken
    (``take_prepared``).  The pool's first workers are asked for at the
    zygote's birth, from pipes made before forking it.

    The zygote keeps a standby: a fork of itself, the program as it was at
    ``Pool()``.  When the zygote dies (its workers die with it), the standby
    is promoted and asked for a standby of its own; a warning says it once.
    Only when neither is left can no worker be started (``broken``).
    """

    def __init__(self, context: Any, spec: WorkerSpec, prefork: int = 0):
        self.spec = spec
        spec.by_zygote = True
        lifeline.load_native()   # once here, not in each worker
        self._next_rid = 0
        self._asked: Dict[int, Tuple[int, WorkerPipes]] = {}    # rid -> (slot, pipes)
        # slot -> (pipes, answer, the zygote that answered, the worker's pidfd)
        self._answers: Dict[int, Tuple[WorkerPipes, tuple[Any, ...], _Helper,
                                       Optional[int]]] = {}
        try:
            for index in range(prefork):
                self._asked[self._rid()] = (index, WorkerPipes())
        except OSError:   # out of descriptors: the rest start on request, or fail then
            pass
        self._awaited: Set[int] = set()                 # pids whose status reap() waits for
        self._statuses: Dict[int, Optional[int]] = {}   # their exit codes, come
        self._first: Set[int] = {index for index, _ in self._asked.values()}
        for index in self._first:
            spec.slots.write(index, INITIALIZING, 0)
        self.broken: Optional[str] = None     # why no worker can be started any more
        self._death = ""                      # how the last zygote ended
        self._standby_asked_at = time.monotonic()
        with private_fds.making():
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s_ours, s_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            private_fds.keep(ours.fileno(), s_ours.fileno())
        # (The zygote does not get what is in private_fds: our pipe ends, our
        # sockets, other pools' descriptors.)
        try:
            pid = zygote_main.fork_zygote(
                theirs, s_theirs, spec,
                [(rid, i, pipes.child_ends()) for rid, (i, pipes) in self._asked.items()])
        except OSError:
            for sock in (ours, s_ours):
                private_fds.release(sock.fileno())
                sock.close()
            self._close_pipes()
            raise
        finally:
            theirs.close()
            s_theirs.close()
            for _, pipes in self._asked.values():
                pipes.close_child_ends()
        self._zygote: Optional[_Helper] = _Helper(ours, pid, child=True)
        self._standby: Optional[_Helper] = _Helper(s_ours)
        self.pid = pid   # the first zygote's (tests and reports)
        # Workers have the __main__ of this moment (the zygote's).
        self._main = {k: v for k, v in vars(sys.modules["__main__"]).items() if callable(v)}

    def _rid(self) -> int:
        self._next_rid += 1
        return self._next_rid

    def main_by_value(self, func: Callable[..., Any]) -> bool:
        """A function of __main__ defined after the zygote was forked is not
        in the workers' __main__: it goes by value, as under spawn."""
        return self._main.get(getattr(func, "__name__", "")) is not func

    # ---- what the supervisor waits on ----------------------------------------------

    def fds(self) -> List[int]:
        """The descriptors the supervisor's loop must watch for us now."""
        out = []
        for helper in (self._zygote, self._standby):
            if helper is not None:
                if (helper is self._zygote or helper.pid is None) and not helper.eof:
                    out.append(helper.sock.fileno())   # answers / the standby's "ready"
                if helper.pidfd is not None:
                    out.append(helper.pidfd)
        return out

    def on_ready(self, fd: int) -> Optional[str]:
        """Something happened on one of our descriptors; returns the reason
        when no worker can be started any more (from now on)."""
        zygote, standby = self._zygote, self._standby
        if zygote is not None and fd == zygote.sock.fileno():
            self._read_answers(zygote)
        elif zygote is not None and fd == zygote.pidfd:
            self._zygote_died(zygote)
        elif standby is not None and fd == standby.sock.fileno():
            self._standby_said(standby)
        elif standby is not None and fd == standby.pidfd:
            how = standby.how_it_died()
            self._standby = None
            self._warn(f"the pool's standby zygote (pid {standby.pid}) {how}; another is made")
            standby.close(0)
            self._ask_standby()
        return self.broken if self._zygote is None and self._standby is None else None

    def _read_answers(self, zygote: _Helper) -> None:
        for reply, fds in zygote.receive():
            if reply[0] == "eof":
                return   # its pidfd says how it ended
            if reply[0] == "reaped":   # (pid, exit code) of a worker reap() waits for
                if reply[1] in self._awaited:
                    self._statuses[reply[1]] = reply[2]
                continue
            pidfd = fds.pop() if reply[0] == "ok" and fds else None
            _close_all(fds)
            asked = self._asked.pop(reply[1], None)
            if asked is not None:
                self._answers[asked[0]] = (asked[1], reply, zygote, pidfd)
            elif reply[0] == "ok":   # for a request given up on: not ours to use
                _kill(reply[2], pidfd)
                _close_all([pidfd] if pidfd is not None else [])
                try:
                    zygote.send(("reap", reply[2], False))
                except OSError:
                    pass   # gone: its orphans are not its to reap

    def reap(self, pid: int, zygote: _Helper, status: Optional[int],
             ask: bool) -> Optional[int]:
        """Have *zygote* reap its dead worker *pid*.  Its exit status is
        *status*, read from /proc; when that could not be (no /proc here)
        and *ask*, the zygote's answer, waited for at most STATUS_WAIT
        seconds: it has it at once, unless stopped.  None when unknown."""
        try:
            zygote.send(("reap", pid, ask))
        except OSError:
            return status   # gone (init reaps it), or stopped with a full socket
        if not ask:
            return status
        self._awaited.add(pid)
        deadline = time.monotonic() + STATUS_WAIT
        try:
            while pid not in self._statuses and not zygote.eof:
                left = deadline - time.monotonic()
                if left <= 0 or not _readable(zygote.sock.fileno(), left):
                    break
                self._read_answers(zygote)   # answers for others are kept as usual
        finally:
            self._awaited.discard(pid)
        return self._statuses.pop(pid, None)

    def _zygote_died(self, zygote: _Helper) -> None:
        self._read_answers(zygote)   # what it sent before dying; the rest never comes
        how = zygote.how_it_died()
        for _, pipes in self._asked.values():   # those slots start again
            pipes.close_parent_ends()
        self._asked.clear()
        self._first &= set(self._answers)
        zygote.close(0)
        self._zygote = None
        text = f"the pool's zygote, the process that forks its workers (pid {zygote.pid}), {how}"
        self._death = text
        if self._standby is None:
            self.broken = (f"{text}, and it had no standby; no new worker can be started. "
                           f"Create a new pool")
            self._warn(self.broken)
            return
        self._warn(f"{text}; the workers it had forked die with it; its standby takes over")
        if self._standby.pid is not None:
            self._promote()

    def _standby_said(self, standby: _Helper) -> None:
        for message, fds in standby.receive():
            _close_all(fds)
            if message[0] == "ready":
                standby.know(message[1])
                if self._zygote is None:
                    self._promote()
                return
            if message[0] == "eof":   # it could not be forked, or died unannounced
                standby.close(0)
                self._standby = None
                if self._zygote is None:
                    self.broken = (f"{self._death}, and its standby could not take over (not "
                                   f"forked yet, or dead too); no new worker can be started. "
                                   f"Create a new pool")
                    self._warn(self.broken)
                return

    def _promote(self) -> None:
        standby = self._standby
        assert standby is not None
        try:
            standby.send(("promote",))
        except OSError:
            return   # dead already: its pidfd says so next
        self._zygote, self._standby = standby, None
        self._ask_standby()

    def _ask_standby(self) -> None:
        """Have the zygote fork a standby; if that cannot be done now, the
        next worker start tries again (STANDBY_RETRY)."""
        self._standby_asked_at = time.monotonic()
        if self._zygote is None or self._standby is not None:
            return
        try:
            with private_fds.making():
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                private_fds.keep(ours.fileno())
        except OSError:
            return   # out of descriptors: later
        try:
            self._zygote.send(("standby",), [theirs.fileno()])
        except OSError:
            private_fds.release(ours.fileno())
            ours.close()
            return
        finally:
            theirs.close()
        self._standby = _Helper(ours)

    @staticmethod
    def _warn(text: str) -> None:
        warnings.warn(f"poolguard: {text}", HelperDiedWarning, stacklevel=2)

    # ---- starting workers ----------------------------------------------------------

    def start(self, index: int, pipes: WorkerPipes) -> Optional[WorkerProcess]:
        """Ask the zygote for the worker of slot *index*: None, the answer
        comes later (``take_prepared``).  Our copies of the child's ends of
        *pipes* are closed, whatever happens."""
        try:
            zygote = self._zygote
            if zygote is None:
                raise StartError(self.broken or "the pool's zygote is being replaced")
            if self._standby is None and time.monotonic() > self._standby_asked_at + STANDBY_RETRY:
                self._ask_standby()
            rid = self._rid()
            try:
                zygote.send(("fork", rid, index), pipes.child_ends())
            except BlockingIOError as exc:
                raise StartError(f"the pool's zygote (pid {zygote.pid}) is not taking "
                                 f"requests (stopped?)") from exc
            except OSError:
                pass   # it died: its pidfd says so, and the slot starts again
            self._asked[rid] = (index, pipes)
            return None
        finally:
            pipes.close_child_ends()

    def still_forking(self, index: int) -> bool:
        """Is the worker of slot *index* asked for and not answered, or is a
        standby about to take over?"""
        if self._zygote is None:
            return self._standby is not None
        return any(slot == index for slot, _ in self._asked.values())

    def forking_slots(self) -> Optional[Set[int]]:
        """The slots asked for and not answered, for a scan of all slots
        (still_forking is one slot's); None while a standby is about to
        take over, when no slot may be asked for."""
        if self._zygote is None:
            return None if self._standby is not None else set()
        return {slot for slot, _ in self._asked.values()}

    def busy(self) -> bool:
        """Is any worker still to be answered for (or a zygote to come)?"""
        return bool(self._asked) or (self._zygote is None and self._standby is not None)

    def prepared(self, index: int) -> bool:
        """Is slot *index* a first worker, forked at the zygote's birth, not taken yet?"""
        return index in self._first

    def take_prepared(self, index: int) -> Optional[Tuple[WorkerPipes, WorkerProcess]]:
        """The worker answered for slot *index*, and its pipes; None if none
        is (StartError if its start failed)."""
        answer = self._answers.pop(index, None)
        self._first.discard(index)
        if answer is None:
            return None
        pipes, reply, zygote, pidfd = answer
        try:
            if reply[0] != "ok":
                raise StartError(reply[2])
            if pidfd is None:   # it did not fit: we are out of descriptors
                if not zygote.eof:   # its zygote lives: the pid is still the worker's
                    _kill(reply[2], None)
                raise StartError(f"cannot watch worker {reply[2]}: out of file "
                                 f"descriptors (RLIMIT_NOFILE) for its pidfd")
            # Dead already (at birth, or with its zygote), it is a death as
            # any other: its pidfd is readable.
            return pipes, ZygoteProcess(reply[2], pidfd, zygote, self)
        except StartError:
            pipes.close_parent_ends()
            raise

    def close(self) -> None:
        """Tell the zygote and its standby to end; wait for them, kill them
        if they do not go."""
        for helper in (self._zygote, self._standby):
            if helper is not None:
                helper.close(ZYGOTE_EXIT_GRACE)
        self._zygote = self._standby = None
        self._close_pipes()

    def _close_pipes(self) -> None:
        for _, pipes in self._asked.values():
            pipes.close_parent_ends()
        for pipes, _, _, pidfd in self._answers.values():
            pipes.close_parent_ends()
            _close_all([pidfd] if pidfd is not None else [])
        self._asked.clear()
        self._answers.clear()


def _kill(pid: int, pidfd: Optional[int]) -> None:
    """SIGKILL a worker: by its pidfd, else by its pid (which is still its
    only while its zygote lives and has not reaped it)."""
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _close_all(fds: List[int]) -> None:
    for fd in fds:
        os.close(fd)


def _readable(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def can_use_zygote() -> bool:
    """The zygote needs pidfds to watch workers that are not our children."""
    fd = _pidfd(os.getpid())
    if fd is None:
        return False
    os.close(fd)
    return hasattr(socket, "send_fds") and hasattr(signal, "pidfd_send_signal")
