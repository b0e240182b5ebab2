"""multiprocessing's fork server as the forkserver launcher (context.py)
sees it: a helper of the pool, though not the pool's own.

* Its preload list gets poolguard, so that its workers need not import it.
* A start must not connect to it without the descriptors to finish: the
  client makes its two pipes after it has connected, and a connection
  closed with nothing sent kills CPython 3.11's fork server (EOFError in
  ``recvfds``, its traceback on stderr; measured: 3 fork servers gone in
  one round of RLIMIT_NOFILE lowered and raised).  ``reserve`` checks they
  are free first, so running out fails the start, not the server.
* Its death, however it came, is said once (HelperDiedWarning), at the
  next start, which makes a new one.
"""
from __future__ import annotations

import os
import select
import threading
import warnings
from typing import List, Optional

from ... import diagnosis
from ...errors import HelperDiedWarning
from ...naming import signal_name
from .base import _pidfd

CONNECT_FDS = 3   # pipes: multiprocessing's socket and two pipes (5), with a margin
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


def reserve() -> None:
    """OSError (EMFILE, ENFILE) unless the descriptors a start needs after
    it connects are free now; they are free again on return."""
    fds: List[int] = []
    try:
        for _ in range(CONNECT_FDS):
            fds.extend(os.pipe())
    finally:
        for fd in fds:
            os.close(fd)


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
