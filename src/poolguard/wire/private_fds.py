"""Descriptors only the pool's own process may hold, closed in every process
forked from it (a zygote, a worker under fork, another library's worker, the
caller's own fork).

What goes here: the write end of the parent-alive pipe and the zygote's
socket (a child that kept one would hide the owner's death from the workers),
the pool's ends of its workers' pipes, and the files of large arguments (a
child that kept one would keep its memory allocated for as long as it lives).

A fork waits while a descriptor is being made and registered (``making``),
so that none can slip into a child between the two.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator, Set

_fds: Set[int] = set()
_lock = threading.RLock()   # reentrant: keep() inside making()


def keep(*fds: int) -> None:
    """Register *fds*: they will be closed in any process forked from ours."""
    with _lock:
        _fds.update(fds)


def release(fd: int) -> None:
    """*fd* is about to be closed (or handed over): forget it first, or a
    child would close whatever file reuses its number."""
    with _lock:
        _fds.discard(fd)


def close(fd: int) -> None:
    with _lock:
        _fds.discard(fd)
        os.close(fd)


@contextlib.contextmanager
def making() -> Iterator[None]:
    """Hold off forks while descriptors are made and registered."""
    with _lock:
        yield


def _close_in_child() -> None:
    for fd in _fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _fds.clear()
    _lock.release()   # taken by the forking thread, the child's only one


os.register_at_fork(before=_lock.acquire, after_in_parent=_lock.release,
                    after_in_child=_close_in_child)
