"""The zygote: a single-threaded process that forks a pool's workers.

Forked from the caller's thread inside ``Pool()`` (fork start method), before
any thread of the pool exists, it only ever runs this loop: it waits on its
socket for a request from the supervisor, forks a worker or reaps one, and
answers.  Having one thread, it cannot hand a worker a lock that another
thread held at the instant of the fork, however late the worker is started.

Requests (pickled tuples; file descriptors ride along as SCM_RIGHTS):

    ("fork", index) + [task_r, result_w, crash_w]  ->  ("ok", pid) | ("error", text)
    ("reap", pid)                                   ->  ("status", exitcode | None)
    ("exit",)                                       ->  (none: it ends)

At its birth it forks the pool's first workers, from pipes the pool made
before forking it, and answers each as if it had been asked to ("ok", pid).

"exit" (the pool is closing), end of file on the socket, or a new parent
(the pool's process died) ends the zygote: it kills every worker's process
group (what tasks started dies too), reaps them and exits.
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
from typing import Any, Dict, List, Tuple

from ...worker import worker_main
from . import clean_fork

OWNER_CHECK_INTERVAL = 1.0   # seconds; the socket's EOF is the fast path


def fork_zygote(sock: socket.socket, spec: Any, prefork: List[Tuple[int, List[int]]]) -> int:
    """Fork the zygote; in the parent, return its pid.  The zygote first forks
    a worker for each (slot index, its pipe ends) of *prefork*, answering each
    as a "fork" request.  (What only the pool's process may hold is closed in
    the child by wire/private_fds.py's at-fork hook; what other threads may
    hold: clean_fork.py.)"""
    owner = os.getpid()
    pid = clean_fork.fork()
    if pid:
        return pid
    code = 1
    try:
        _serve(sock, spec, owner, prefork)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _serve(sock: socket.socket, spec: Any, owner: int,
           prefork: List[Tuple[int, List[int]]]) -> None:
    # Ctrl-C reaches the whole process group: the pool handles it, and its
    # exit closes our socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The owner's processes are not ours to poll; and a zygote inside a
    # daemonic process (a worker of another pool) may still have children.
    mp_process._children.clear()   # type: ignore[attr-defined]
    multiprocessing.current_process()._config["daemon"] = False   # type: ignore[attr-defined]
    context = multiprocessing.get_context("fork")
    children: Dict[int, Any] = {}
    try:
        for n, (index, fds) in enumerate(prefork):
            # A worker must not hold the pipes of the workers forked after it.
            later = [fd for _, theirs in prefork[n + 1:] for fd in theirs]
            reply = _fork_worker(context, spec, index, fds, sock, children, later)
            sock.send(pickle.dumps(reply))
        _answer_requests(sock, owner, context, spec, children)
    except OSError:
        return   # the socket is gone: so is the pool
    finally:
        _end(children)


def _answer_requests(sock: socket.socket, owner: int, context: Any, spec: Any,
                     children: Dict[int, Any]) -> None:
    while True:
        if not select.select([sock], [], [], OWNER_CHECK_INTERVAL)[0]:
            if os.getppid() != owner:
                return
            continue
        data, fds, _flags, _addr = socket.recv_fds(sock, 65536, 8)
        if not data:
            return
        request = pickle.loads(data)
        if request[0] == "exit":
            return
        if request[0] == "fork":
            reply = _fork_worker(context, spec, request[1], fds, sock, children, [])
        else:
            reply = ("status", _reap(children.pop(request[1], None)))
        sock.send(pickle.dumps(reply))


def _fork_worker(context: Any, spec: Any, index: int, fds: List[int], sock: socket.socket,
                 children: Dict[int, Any], also_close: List[int]) -> tuple[Any, ...]:
    conns = (Connection(fds[0], writable=False), Connection(fds[1], readable=False),
             Connection(fds[2], readable=False))
    process = context.Process(target=worker_main, name=f"poolguard-worker-{index}",
                              args=(spec, index, *conns, os.getpid(),
                                    [sock.fileno(), *also_close]))
    try:
        process.start()
    except Exception as exc:
        return ("error", f"{type(exc).__name__}: {exc}")
    finally:
        for conn in conns:
            conn.close()
    children[process.pid] = process
    return ("ok", process.pid)


def _reap(process: Any) -> Any:
    if process is None:
        return None
    process.join()
    code = process.exitcode
    process.close()
    return code


def _end(children: Dict[int, Any]) -> None:
    """Nothing of a worker outlives the pool: kill each worker's group (its
    pid: it is our unreaped child, so the id is still its), then reap."""
    for pid in children:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass
    for process in children.values():
        process.join()
