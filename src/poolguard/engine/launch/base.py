"""What every launcher shares: the worker's parameters object, the handle
of a started worker, the pipe that tells workers the pool's process is
gone, and the descriptors only that process may hold."""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable, List, Optional

from ...wire import private_fds
from ...wire.channels import grow_pipe
from ...wire.slots import SharedSlots


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
    # Forked by the zygote, which is the worker's parent for PDEATHSIG and
    # kills the worker's group when the pool's process dies: no guardian
    # child, no thread watching the pool's process.
    by_zygote: bool = False
    soft_timeout: Optional[float] = None   # seconds before SoftTimeoutError in a task

    def load_initializer(self) -> Optional[Callable[..., Any]]:
        init: Optional[Callable[..., Any]] = \
            pickle.loads(self.initializer) if isinstance(self.initializer, bytes) \
            else self.initializer
        return init


class WorkerPipes:
    """A worker's three pipes: its tasks, its replies, and the crash pipe
    faulthandler writes its stack to if it dies of a signal.  The child's
    ends go to the worker; the launcher closes our copies of them."""

    def __init__(self) -> None:
        fds: List[int] = []
        with private_fds.making():
            try:
                for _ in range(3):
                    fds.extend(os.pipe())
            except OSError:
                _close(fds)
                raise
            self.task_r, self.task_w, self.result_r, self.result_w, self.crash_r, self.crash_w = fds
            private_fds.keep(*self.parent_ends())
        for fd in (self.task_w, self.result_w):
            grow_pipe(fd)

    def renew(self) -> None:
        """New pipes in place of these, after a start that failed half-way:
        our ends of the old ones are closed (their child ends must be
        already); OSError, with the old ones untouched, if none can be made."""
        new = WorkerPipes()
        self.close_parent_ends()
        vars(self).update(vars(new))

    def child_ends(self) -> List[int]:
        return [self.task_r, self.result_w, self.crash_w]

    def parent_ends(self) -> List[int]:
        return [self.task_w, self.result_r, self.crash_r]

    def close_child_ends(self) -> None:
        _close(self.child_ends())

    def close_parent_ends(self) -> None:
        for fd in self.parent_ends():
            private_fds.close(fd)


def _close(fds: List[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


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

    def lost_with(self) -> Optional[str]:
        """Once it is dead: the helper that forked it, when that helper was
        dead first (a zygote's workers die with it), named with how it died."""
        return None


class ParentAlive:
    """A pipe whose write end only the pool's process holds: its workers see
    end of file on the read end (``WorkerSpec.alive_conn``) when it dies."""

    def __init__(self) -> None:
        with private_fds.making():
            read_fd, self._write_fd = os.pipe()
            private_fds.keep(self._write_fd)
        self.conn = Connection(read_fd, writable=False)

    def close(self) -> None:
        private_fds.close(self._write_fd)
        self.conn.close()


def _pidfd(pid: int) -> Optional[int]:
    if hasattr(os, "pidfd_open"):
        try:
            return os.pidfd_open(pid)
        except OSError:
            pass
    return None


