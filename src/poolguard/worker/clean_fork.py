"""The one fork poolguard makes in the caller's process: the zygote's, in
``Pool()``.

The zygote itself has one thread, so the workers it forks never inherit a
lock another thread held.  Its own fork, though, is made in the caller's
process, which may have other threads at that moment: the caller's, a test
runner's timer, another pool's supervisor.  CPython 3.12+ then warns
(DeprecationWarning, "This process is multi-threaded, use of fork() may
lead to deadlocks in the child") for this fork, whatever the child does.

What a child of a threaded process can inherit held, and what is done
about each here:

* a module lock of an import in progress in another thread: every worker
  importing that module would wait forever.  The fork waits, holding the
  import lock so that no import starts meanwhile, until no other thread is
  importing (bounded: an import that waits for the caller cannot finish);
* poolguard's own locks: released around every fork (wire/private_fds.py),
  and nothing else of ours runs in the zygote;
* the caller's stdout and stderr buffers: flushed first, or their content
  would be written again by the zygote or a worker.

When no other thread is importing, CPython's warning is silenced for this
fork: what it warns of is handled.  When an import is still in progress
after the bound, the fork is made anyway and the warning is left to say so.
What no library can handle is a lock of the caller's own that another of its
threads holds at ``Pool()``: the same as for every fork (README, "Fork
safety")."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from typing import Iterator

import _imp

IMPORT_WAIT = 5.0   # seconds the fork waits for other threads' imports


def fork() -> int:
    """``os.fork()``, after the caller's streams are flushed and while no
    other thread imports a module (see the module's text)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:   # None, closed, a broken pipe, a user's stand-in
            pass
    with _no_import_in_progress() as quiet, warnings.catch_warnings():
        if quiet:
            warnings.filterwarnings("ignore", r"This process \(pid=\d+\) is multi-threaded",
                                    DeprecationWarning)
        return os.fork()


@contextlib.contextmanager
def _no_import_in_progress() -> Iterator[bool]:
    """Hold the import lock (no import can start) once no other thread is
    in the middle of one, or after IMPORT_WAIT seconds; yield whether none
    was.  Released in the parent and in the child alike."""
    deadline = time.monotonic() + IMPORT_WAIT
    delay = 0.001
    while True:
        _imp.acquire_lock()
        importing = _other_threads_importing()
        if importing is not True or time.monotonic() >= deadline:
            break
        _imp.release_lock()
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    try:
        yield importing is False
    finally:
        _imp.release_lock()


def _other_threads_importing() -> "bool | None":
    """Does a thread other than this one hold a module's import lock?  None
    when this interpreter does not let us see it."""
    bootstrap = sys.modules.get("importlib._bootstrap")
    locks = getattr(bootstrap, "_module_locks", None)
    if not isinstance(locks, dict):
        return None
    me = threading.get_ident()
    for ref in list(locks.values()):
        lock = ref()
        if lock is None:
            continue
        if not hasattr(lock, "owner"):
            return None
        if lock.owner not in (None, me):
            return True
    return False
