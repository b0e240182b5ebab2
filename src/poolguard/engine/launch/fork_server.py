"""multiprocessing's fork server as the forkserver launcher (context.py)
sees it: a helper of the pool, though not the pool's own.

* Its preload list gets poolguard, so that its workers need not import it.
* A start makes every descriptor it needs before it connects (Process):
  multiprocessing's client (CPython 3.13 and before) makes its two pipes
  after it has connected, and a connection closed with nothing sent kills
  that fork server (EOFError in ``recvfds``).  A check that descriptors
  were free before the start was not enough: another thread of the
  process (the supervisor making a worker's pipes) took them meanwhile.
* Its death, however it came, is said once (HelperDiedWarning), at the
  next start, which makes a new one.
"""
from __future__ import annotations

import io
import os
import select
import socket
import threading
import warnings
from multiprocessing import forkserver, popen_forkserver, reduction, resource_tracker, spawn, util
from multiprocessing import context as mp_context
from multiprocessing.context import ForkServerProcess, set_spawning_popen
from typing import Any, List, Optional, Tuple

from ... import diagnosis
from ...errors import HelperDiedWarning
from ...naming import signal_name
from .base import _pidfd

EXIT_WAIT = 1.0   # seconds for a fork server that closed on us to exit

_lock = threading.Lock()
_known: Optional[int] = None   # the fork server a start last went through


def _server() -> object:
    from multiprocessing import forkserver
    return getattr(forkserver, "_forkserver", None)


def preload_poolguard() -> None:
    """Have the fork server import poolguard when it starts, beside what it
    preloads already (the script, and what the user asked for), so that each
    worker forked from it has poolguard imported: about 0.1 s of CPU a worker
    otherwise, 64 workers up in 4.0-4.4 s instead of 0.7 s.  A fork server
    already running is left as it is; so are preload lists we cannot read."""
    server = _server()
    modules = getattr(server, "_preload_modules", None)
    if (server is None or not isinstance(modules, list) or "poolguard" in modules
            or getattr(server, "_forkserver_pid", None) is not None):
        return
    server.set_forkserver_preload([*modules, "poolguard"])   # type: ignore[attr-defined]


def say_if_gone() -> None:
    """Before a start: warn once if the fork server the last start went
    through is gone (multiprocessing makes a new one for this start)."""
    global _known
    pid = getattr(_server(), "_forkserver_pid", None)
    with _lock:
        known, state = _known, None
        if known is None or pid is None:
            return   # none yet, or stopped by multiprocessing itself
        if pid == known:
            state = diagnosis.process_state(known)
            if state != "Z" and (state is not None or _exists(known)):
                return   # alive (stopped counts; /proc unread, out of descriptors too)
        _known = None   # said once
    code = diagnosis.zombie_exit_status(known, diagnosis.SOURCES) if state == "Z" else None
    how = ("ended (how is unknown)" if code is None else
           f"was killed by {signal_name(-code)}" if code < 0 else f"exited with code {code}")
    warnings.warn(f"poolguard: multiprocessing's fork server (pid {known}), the process "
                  f"that forks the workers, {how}; a new one is started for the next workers",
                  HelperDiedWarning, stacklevel=2)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return True


def went_through() -> None:
    """After a start, made or failed: the fork server it went through."""
    global _known
    with _lock:
        _known = getattr(_server(), "_forkserver_pid", None)


def wait_for_exit() -> None:
    """Let the fork server that closed our connection finish exiting, so
    that multiprocessing sees it dead and makes a new one at the next start
    (else that start connects to the old one's closed socket)."""
    pid = getattr(_server(), "_forkserver_pid", None)
    fd = _pidfd(pid) if pid is not None else None
    if fd is None:
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll(EXIT_WAIT * 1000)   # readable once it has exited
    finally:
        os.close(fd)


# From CPython 3.14 a request starts with a handshake, and the fork server
# survives a connection that ends early: multiprocessing's own client is kept.
_HANDSHAKE = hasattr(forkserver._forkserver, "_forkserver_authkey")


def process_class(context: Any) -> Any:
    """The class of a worker's process under forkserver: ours in place of
    multiprocessing's own, a class the caller's context brings kept."""
    stock = context.Process in (ForkServerProcess, mp_context.Process)
    return Process if stock else context.Process


class Process(ForkServerProcess):
    """A worker started through the fork server by our own request."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _Popen(process_obj)


class _Popen(popen_forkserver.Popen):
    def _launch(self, process_obj: Any) -> None:
        if _HANDSHAKE:
            super()._launch(process_obj)   # type: ignore[misc]
            return
        data = io.BytesIO()
        set_spawning_popen(self)   # descriptors pickled go to self._fds
        try:
            reduction.dump(spawn.get_preparation_data(process_obj._name), data)
            reduction.dump(process_obj, data)
        finally:
            set_spawning_popen(None)
        self.sentinel, data_w, kept = _request(self._fds)   # type: ignore[attr-defined]
        # The copy of the data pipe, ours while this handle lives, is how the
        # worker's parent_process() sees us alive.
        self.finalizer = util.Finalize(self, _close, ([kept, self.sentinel],))
        with open(data_w, "wb", closefd=True) as pipe:
            pipe.write(data.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


def _request(fds: List[int]) -> Tuple[int, int, int]:
    """Ask the fork server for a process that inherits *fds*: (our end of
    its status pipe, our end of its data pipe, a copy of that end).  All
    are made before connecting, so that running out of descriptors fails
    here, not in the fork server."""
    server: Any = forkserver._forkserver
    server.ensure_running()
    tracker: Any = resource_tracker.getfd()   # (made again here if it died)
    if len(fds) + 4 >= forkserver.MAXFDS_TO_SEND:
        raise ValueError("too many descriptors to send to the fork server")
    made: List[int] = []
    try:
        made.extend(os.pipe())   # status: the fork server writes the pid, the exit code
        made.extend(os.pipe())   # data: we write the preparation data and the process
        made.append(os.dup(made[3]))
        client = socket.socket(socket.AF_UNIX)
    except BaseException:
        _close(made)
        raise
    status_r, status_w, data_r, data_w, kept = made
    try:
        with client:
            client.connect(server._forkserver_address)
            reduction.sendfds(client, [data_r, status_w, server._forkserver_alive_fd,
                                       tracker, *fds])
    except BaseException:
        _close([status_r, data_w, kept])
        raise
    finally:
        _close([data_r, status_w])   # the fork server has its own copies
    return status_r, data_w, kept


def _close(fds: List[int]) -> None:
    for fd in fds:
        os.close(fd)
