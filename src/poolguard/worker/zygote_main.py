"""The zygote: a single-threaded process that forks a pool's workers.

Forked from the caller's thread inside ``Pool()`` (fork start method), before
any thread of the pool exists, it only ever runs this loop: it waits on its
socket for a request from the supervisor, forks a worker or reaps one, and
answers.  Having one thread, it cannot hand a worker a lock that another
thread held at the instant of the fork, however late the worker is started.

Requests (pickled tuples; file descriptors ride along as SCM_RIGHTS):

    ("fork", rid, index) + [task_r, result_w, crash_w]
                              ->  ("ok", rid, pid) + [its pidfd] | ("error", rid, text)
    ("reap", pid, ask)        ->  ("reaped", pid, exit code) if *ask* (the pool could
                                  not read the status from /proc), else none
    ("standby",) + [socket]   ->  (none: the standby says "ready" on that socket)
    ("exit",)                 ->  (none: it ends)

Every answer names its request (*rid*): the pool never waits for one, and
one that comes late is never taken for another's.

At its birth it forks the pool's first workers, from pipes the pool made
before forking it, and answers each as if it had been asked to; then it
forks its **standby**: a copy of itself, hence of the program as it was at
``Pool()``, which sends ``("ready", pid)`` on a socket of its own and waits.
If the zygote dies, the pool sends the standby ``("promote",)`` and it
becomes the zygote (and is asked for a standby of its own).

"exit" (the pool is closing), end of file on the socket, or a new parent
(the pool's process died; the first zygote only) ends the zygote: it kills
every worker's process group (what tasks started dies too) and its standby,
reaps them and exits.
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import select
import signal
import socket
import traceback
from multiprocessing import process as mp_process
from multiprocessing.connection import Connection
from typing import Any, Dict, List, Optional, Tuple

from .loop import worker_main
from . import clean_fork
from .starting import StartError, describe_start_error, started_pid

OWNER_CHECK_INTERVAL = 1.0   # seconds; the socket's EOF is the fast path

Prefork = List[Tuple[int, int, List[int]]]   # (request id, slot index, its pipe ends)


def fork_zygote(sock: socket.socket, standby: Optional[socket.socket], spec: Any,
                prefork: Prefork) -> int:
    """Fork the zygote; in the parent, return its pid.  The zygote first forks
    a worker for each (request id, slot index, its pipe ends) of *prefork*,
    answering each as a "fork" request, then a standby served by *standby*.
    (What only the pool's process may hold is closed in the child by
    wire/private_fds.py's at-fork hook; what other threads may hold:
    clean_fork.py.)"""
    owner = os.getpid()
    pid = clean_fork.fork()
    if pid:
        return pid
    _run(lambda: _serve(sock, standby, spec, owner, prefork))
    raise AssertionError("unreachable")


def _run(body: Any) -> None:
    code = 1
    try:
        body()
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _serve(sock: socket.socket, standby: Optional[socket.socket], spec: Any,
           owner: Optional[int], prefork: Prefork) -> None:
    # Ctrl-C reaches the whole process group: the pool handles it, and its
    # exit closes our socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The owner's processes are not ours to poll; and a zygote inside a
    # daemonic process (a worker of another pool) may still have children.
    mp_process._children.clear()   # type: ignore[attr-defined]
    multiprocessing.current_process()._config["daemon"] = False   # type: ignore[attr-defined]
    zygote = _Zygote(sock, spec)
    try:
        for n, (rid, index, fds) in enumerate(prefork):
            # A worker must not hold the pipes of the workers forked after it.
            later = [fd for _, _, theirs in prefork[n + 1:] for fd in theirs]
            if standby is not None:
                later.append(standby.fileno())
            zygote.answer(zygote.fork_worker(rid, index, fds, later))
        if standby is not None:
            zygote.fork_standby(standby)
        zygote.answer_requests(owner)
    except OSError:
        return   # the socket is gone: so is the pool
    finally:
        zygote.end()


def _stand_by(sock: socket.socket, spec: Any) -> None:
    """A standby: say so, wait to be promoted (or for the pool's end)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sock.send(pickle.dumps(("ready", os.getpid())))
        data = sock.recv(65536)
    except OSError:
        return
    if not data or pickle.loads(data)[0] != "promote":
        return
    zygote = _Zygote(sock, spec)
    try:
        zygote.answer_requests(None)   # our parent is gone: the socket's EOF says it all
    except OSError:
        return
    finally:
        zygote.end()


class _Zygote:
    """The loop's state: the workers and standbys forked, not yet reaped."""

    def __init__(self, sock: socket.socket, spec: Any):
        self.sock = sock
        self.spec = spec
        self.context = multiprocessing.get_context("fork")
        self.children: Dict[int, Any] = {}
        self.standbys: List[int] = []

    def answer_requests(self, owner: Optional[int]) -> None:
        poller = select.poll()   # not select(): descriptors past 1023 exist
        poller.register(self.sock, select.POLLIN)
        while True:
            if not poller.poll(OWNER_CHECK_INTERVAL * 1000):
                if owner is not None and os.getppid() != owner:
                    return
                continue
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 8)
            if not data:
                return
            request = pickle.loads(data)
            if request[0] == "exit":
                return
            if request[0] == "fork":
                self.answer(self.fork_worker(request[1], request[2], fds, []))
            elif request[0] == "standby":
                self.fork_standby(socket.socket(fileno=fds[0]))
            else:
                code = _reap(self.children.pop(request[1], None))
                if request[2]:
                    self.answer((("reaped", request[1], code), []))

    def answer(self, reply: Tuple[tuple[Any, ...], List[int]]) -> None:
        """Send a reply with its descriptors, which are then closed here."""
        message, fds = reply
        try:
            socket.send_fds(self.sock, [pickle.dumps(message)], fds)
        finally:
            for fd in fds:
                os.close(fd)

    def fork_worker(self, rid: int, index: int, fds: List[int],
                    also_close: List[int]) -> Tuple[tuple[Any, ...], List[int]]:
        """Fork a worker on the pipe ends *fds*: the answer, and the worker's
        pidfd to pass with it."""
        if len(fds) != 3:   # they did not fit (out of descriptors here)
            for fd in fds:
                os.close(fd)
            return ("error", rid, "the zygote could not receive the worker's pipes "
                    "(out of file descriptors)"), []
        conns = (Connection(fds[0], writable=False), Connection(fds[1], readable=False),
                 Connection(fds[2], readable=False))
        process = self.context.Process(target=worker_main, name=f"poolguard-worker-{index}",
                                       args=(self.spec, index, *conns, os.getpid(),
                                             [self.sock.fileno(), *also_close]))
        try:
            process.start()
        except Exception as exc:
            return ("error", rid, describe_start_error(exc)), []
        finally:
            for conn in conns:
                conn.close()
        # Reaped on request only (multiprocessing would reap it at the next
        # start): until then its pid and group id cannot be reused.
        mp_process._children.discard(process)   # type: ignore[attr-defined]
        try:
            pid = started_pid(process)
        except StartError as exc:
            return ("error", rid, str(exc)), []
        self.children[pid] = process
        # The pidfd is opened here, where the worker cannot have been reaped
        # yet: by its pid the pool might find it gone (this zygote dead and
        # its orphans reaped by init) or another process in its place.
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:   # out of descriptors
            _kill_worker(pid)
            _reap(self.children.pop(pid))
            return ("error", rid, f"cannot watch the worker: {describe_start_error(exc)}"), []
        return ("ok", rid, pid), [pidfd]

    def fork_standby(self, standby: socket.socket) -> None:
        """Fork a copy of this process that waits on *standby* to take over."""
        self._reap_standbys()
        try:
            pid = os.fork()
        except OSError:
            standby.close()   # the pool sees end of file: no standby for now
            return
        if pid == 0:
            self.sock.close()
            _run(lambda: _stand_by(standby, self.spec))
        standby.close()
        self.standbys.append(pid)

    def _reap_standbys(self) -> None:
        for pid in list(self.standbys):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    self.standbys.remove(pid)
            except ChildProcessError:
                self.standbys.remove(pid)

    def end(self) -> None:
        """Nothing of a worker outlives the pool: kill each worker's group (its
        pid: it is our unreaped child, so the id is still its) and our
        standby, then reap."""
        for pid in self.children:
            _kill_worker(pid)
        for pid in self.standbys:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for process in self.children.values():
            process.join()
        for pid in self.standbys:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _kill_worker(pid: int) -> None:
    """SIGKILL a worker and its group (its pid: it is our unreaped child, so
    the id is still its)."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _reap(process: Any) -> Optional[int]:
    """Reap a worker; its exit code as ``Process.exitcode`` says it."""
    if process is None:
        return None
    process.join()
    code: Optional[int] = process.exitcode
    process.close()
    return code
