"""The pool's side of the zygote (worker/zygote_main.py): fork it, ask it for
workers, have it reap them, end it.  The zygote and its standby, and who
takes over when one dies, are zygote_standby.py's; each of those processes,
and a worker the zygote forked, as the pool sees them, zygote_helper.py's.

Nothing here waits for the zygote.  A request is sent without blocking and
its answer, which names it, is read when the supervisor's loop sees the
socket readable; a worker's exit status is read from /proc while it is a
zombie (the zygote reaps it only when asked, after that).  A zygote stopped
(a debugger, a cgroup freezer) therefore delays only the workers it was
asked for.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ...worker import lifeline
from ...wire import private_fds
from ...wire.slots import INITIALIZING
from ...worker import zygote_main
from .base import WorkerPipes, WorkerProcess, WorkerSpec, _pidfd
from ...worker.starting import StartError
from .zygote_helper import Helper, ZygoteProcess, close_all, readable
from .zygote_standby import ZygotePair

ZYGOTE_EXIT_GRACE = 5.0       # seconds a zygote has to kill and reap its workers
STATUS_WAIT = 1.0             # seconds to wait for an exit status /proc does not show


class ZygoteLauncher:
    """Workers forked by a single-threaded zygote (fork start method).

    Made in ``Pool()``, on the caller's thread, before the supervisor thread
    starts.  The supervisor asks it to fork a worker (passing the worker's
    pipe ends over a Unix socket); the answer comes later, read when the
    socket is readable (``on_ready``), and the worker is then taken
    (``take_prepared``).  The pool's first workers are asked for at the
    zygote's birth, from pipes made before forking it.  When the zygote
    dies its standby takes over (``ZygotePair``).
    """

    def __init__(self, context: Any, spec: WorkerSpec, prefork: int = 0):
        self.spec = spec
        spec.by_zygote = True
        lifeline.load_native()   # once here, not in each worker
        self._next_rid = 0
        self._asked: Dict[int, Tuple[int, WorkerPipes]] = {}    # rid -> (slot, pipes)
        # slot -> (pipes, answer, the zygote that answered, the worker's pidfd)
        self._answers: Dict[int, Tuple[WorkerPipes, tuple[Any, ...], Helper,
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
        pid, ours, s_ours = self._fork_zygote(spec)
        self._pair = ZygotePair(Helper(ours, pid, child=True), Helper(s_ours))
        # Workers have the __main__ of this moment (the zygote's).
        self._main = {k: v for k, v in vars(sys.modules["__main__"]).items() if callable(v)}

    def _fork_zygote(self, spec: WorkerSpec) -> Tuple[int, socket.socket, socket.socket]:
        """Fork the zygote, which forks the first workers (those asked for
        now) and its standby; its pid, our ends of its socket and of the
        standby's."""
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
        return pid, ours, s_ours

    def helper_pids(self) -> Dict[str, int]:
        """The zygote's and its standby's pids, those there are now."""
        return self._pair.pids()

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
        return self._pair.fds()

    def on_ready(self, fd: int) -> Optional[str]:
        """Something happened on one of our descriptors; returns the reason
        when no worker can be started any more (from now on)."""
        pair = self._pair
        zygote, standby = pair.zygote, pair.standby
        if zygote is not None and fd == zygote.sock.fileno():
            self._read_answers(zygote)
        elif zygote is not None and fd == zygote.pidfd:
            self._zygote_died(zygote)
        elif standby is not None and fd == standby.sock.fileno():
            pair.standby_said(standby)
        elif standby is not None and fd == standby.pidfd:
            pair.standby_died(standby)
        return pair.broken if pair.zygote is None and pair.standby is None else None

    def _read_answers(self, zygote: Helper) -> None:
        for reply, fds in zygote.receive():
            if reply[0] == "eof":
                return   # its pidfd says how it ended
            if reply[0] == "reaped":   # (pid, exit code) of a worker reap() waits for
                if reply[1] in self._awaited:
                    self._statuses[reply[1]] = reply[2]
                continue
            pidfd = fds.pop() if reply[0] == "ok" and fds else None
            close_all(fds)
            asked = self._asked.pop(reply[1], None)
            if asked is not None:
                self._answers[asked[0]] = (asked[1], reply, zygote, pidfd)
            elif reply[0] == "ok":   # for a request given up on: not ours to use
                _kill(reply[2], pidfd)
                close_all([pidfd] if pidfd is not None else [])
                try:
                    zygote.send(("reap", reply[2], False))
                except OSError:
                    pass   # gone: its orphans are not its to reap

    def reap(self, pid: int, zygote: Helper, status: Optional[int],
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
                if left <= 0 or not readable(zygote.sock.fileno(), left):
                    break
                self._read_answers(zygote)   # answers for others are kept as usual
        finally:
            self._awaited.discard(pid)
        return self._statuses.pop(pid, None)

    def _zygote_died(self, zygote: Helper) -> None:
        self._read_answers(zygote)   # what it sent before dying; the rest never comes
        for _, pipes in self._asked.values():   # those slots start again
            pipes.close_parent_ends()
        self._asked.clear()
        self._first &= set(self._answers)
        self._pair.zygote_died(zygote)

    # ---- starting workers ----------------------------------------------------------

    def start(self, index: int, pipes: WorkerPipes) -> Optional[WorkerProcess]:
        """Ask the zygote for the worker of slot *index*: None, the answer
        comes later (``take_prepared``).  Our copies of the child's ends of
        *pipes* are closed, whatever happens."""
        try:
            zygote = self._pair.to_ask()
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
        if self._pair.zygote is None:
            return self._pair.replacing
        return any(slot == index for slot, _ in self._asked.values())

    def forking_slots(self) -> Optional[Set[int]]:
        """The slots asked for and not answered, for a scan of all slots
        (still_forking is one slot's); None while a standby is about to
        take over, when no slot may be asked for."""
        if self._pair.zygote is None:
            return None if self._pair.replacing else set()
        return {slot for slot, _ in self._asked.values()}

    def busy(self) -> bool:
        """Is any worker still to be answered for (or a zygote to come)?"""
        return bool(self._asked) or self._pair.replacing

    def prepared(self, index: int) -> bool:
        """Is slot *index* answered and not taken yet (a first worker,
        forked at the zygote's birth, or an answer that came after a start
        failed)?  It is taken even while starts fail: an answer left would
        be taken by a later call, which a stale failure would fail."""
        return index in self._first or index in self._answers

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
                self._drop_failed()   # the same failure: said once, by this one
                raise StartError(reply[2])
            if pidfd is None:   # it did not fit: we are out of descriptors
                if not zygote.eof:   # its zygote lives: the pid is still the worker's
                    _kill(reply[2], None)
                raise StartError(f"cannot watch worker {reply[2]}: out of file "
                                 f"descriptors (RLIMIT_NOFILE) for its pidfd")
            # Dead already (at birth, or with its zygote), it is a death as
            # any other: its pidfd is readable.
            return pipes, ZygoteProcess(reply[2], pidfd, zygote, self.reap)
        except StartError:
            pipes.close_parent_ends()
            raise

    def _drop_failed(self) -> None:
        """Forget every failed start answered and not taken: its slot is
        asked for again at the next start."""
        for index, (pipes, reply, _, _) in list(self._answers.items()):
            if reply[0] != "ok":
                del self._answers[index]
                self._first.discard(index)
                pipes.close_parent_ends()

    def close(self) -> None:
        """Tell the zygote and its standby to end; wait for them, kill them
        if they do not go."""
        self._pair.close(ZYGOTE_EXIT_GRACE)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for _, pipes in self._asked.values():
            pipes.close_parent_ends()
        for pipes, _, _, pidfd in self._answers.values():
            pipes.close_parent_ends()
            close_all([pidfd] if pidfd is not None else [])
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


def can_use_zygote() -> bool:
    """The zygote needs pidfds to watch workers that are not our children."""
    fd = _pidfd(os.getpid())
    if fd is None:
        return False
    os.close(fd)
    return hasattr(socket, "send_fds") and hasattr(signal, "pidfd_send_signal")
