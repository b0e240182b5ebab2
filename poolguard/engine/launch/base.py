"""What every launcher shares: the worker's parameters object, the handle
of a started worker, the pipe that tells workers the pool's process is
gone, and the descriptors only that process may hold."""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable, Optional, Set

from ...wire.slots import SharedSlots

# Descriptors only the pool's own process may hold ("parent alive" write ends,
# zygote sockets): a child that kept one would hide the owner's death.
_parent_only_fds: Set[int] = set()


def parent_only(fd: int) -> int:
    _parent_only_fds.add(fd)
    return fd


def release_parent_only(fd: int) -> None:
    _parent_only_fds.discard(fd)


def close_parent_only_fds() -> None:
    """In any process forked from the pool's (a zygote, a worker of another
    library's pool, the user's own fork): close what only the pool may hold,
    or the zygote and the workers would not see the pool's process die."""
    for fd in list(_parent_only_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _parent_only_fds.clear()


os.register_at_fork(after_in_child=close_parent_only_fds)


class StartError(Exception):
    """A worker could not be started (the message says why)."""


@dataclass
class WorkerSpec:
    """What every worker of one pool starts with: one parameters object
    instead of a dozen arguments.  Under fork the zygote holds it as live
    objects; under spawn and forkserver it is pickled with the process, which
    lets ``initargs`` carry locks, events and queues as the stdlib does."""

    alive_conn: Connection            # EOF when the pool's process is gone
    slots: SharedSlots
    initializer: Any                  # callable (fork) or its pickle (spawn/forkserver)
    initargs: tuple[Any, ...]
    maxtasks: Optional[int]
    timed: bool                       # write each item's start time (task_timeout)
    probe: Optional[tuple[Any, ...]]            # may the worker read our memory? (buffers.py)
    # Fork a guardian that kills the worker's group if the pool's process
    # dies (not under the zygote, which does that itself).
    group_guardian: bool = True

    def load_initializer(self) -> Optional[Callable[..., Any]]:
        init: Optional[Callable[..., Any]] = \
            pickle.loads(self.initializer) if isinstance(self.initializer, bytes) \
            else self.initializer
        return init


class WorkerProcess:
    """A started worker as the supervisor handles it."""

    pid: int
    death_fd: int      # readable once the process has exited

    def reap(self) -> Optional[int]:
        """Collect the dead process; its exit code as ``Process.exitcode``
        reports it, or None when it cannot be known."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class ParentAlive:
    """A pipe whose write end only the pool's process holds: its workers see
    end of file on the read end (``WorkerSpec.alive_conn``) when it dies."""

    def __init__(self) -> None:
        read_fd, self._write_fd = os.pipe()
        parent_only(self._write_fd)
        self.conn = Connection(read_fd, writable=False)

    def close(self) -> None:
        release_parent_only(self._write_fd)
        os.close(self._write_fd)
        self.conn.close()


def _pidfd(pid: int) -> Optional[int]:
    if hasattr(os, "pidfd_open"):
        try:
            return os.pidfd_open(pid)
        except OSError:
            pass
    return None


