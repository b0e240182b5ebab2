"""Where caller threads leave work for the supervisor.

The inbox holds the units waiting for a worker, the pool's state, the count
of calls still producing units, and the wake pipe.  Caller threads change
them under its lock and wake the supervisor; the supervisor takes from it.
Nothing else is shared between the fronts and the supervisor thread.
"""
from __future__ import annotations

import collections
import os
import threading
from enum import Enum
from typing import Any, Callable, Deque, Iterable, List, Sequence

from ..wire.channels import WakePipe
from .jobs import Unit



class PoolState(str, Enum):
    """A pool's state; it only moves forward.  A ``str`` too: ``engine.state``
    reads as "running", "closing", "terminating" or "finished"."""
    RUNNING = "running"
    CLOSING = "closing"            # close(): no new call, the work goes on
    TERMINATING = "terminating"    # terminate(): the work is dropped
    FINISHED = "finished"          # the supervisor has ended


RUNNING, CLOSING, TERMINATING, FINISHED = (PoolState.RUNNING, PoolState.CLOSING,
                                           PoolState.TERMINATING, PoolState.FINISHED)


class Inbox:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: Deque[Unit] = collections.deque()
        self.state: PoolState = RUNNING
        self.open_calls = 0           # calls still producing units (lazy imap)
        self.kill = False             # terminate with SIGKILL at once (kill_workers)
        self.new_call = False         # set by submit: retry starting workers
        self.wakeup = WakePipe()
        self._owner_pid = os.getpid()

    def submit(self, units: Sequence[Unit], open_call: bool = False) -> None:
        """Queue units.  *open_call*: they belong to a call that began before
        close() (a lazy imap still reading its input), so closing waits for them."""
        self._check_owner()
        with self.lock:
            if not (self.state == RUNNING or (open_call and self.state == CLOSING)):
                raise ValueError("Pool not running")
            self.pending.extend(units)
            self.new_call = True
        self.wakeup.wake()

    def add_to_tail(self, unit: Unit, add: Callable[..., None], *args: Any) -> bool:
        """Call ``add(*args)`` to extend *unit* if it is still the last unit
        waiting (the executor's batch of submits): in order with all that is
        queued.  False if it is not (taken, or another call queued since)."""
        self._check_owner()
        with self.lock:
            if self.state != RUNNING or not self.pending or self.pending[-1] is not unit:
                return False
            add(*args)
            self.new_call = True
        self.wakeup.wake()
        return True

    def requeue_first(self, units: Iterable[Unit]) -> None:
        """Supervisor: units to run before the others (a dead worker's)."""
        with self.lock:
            self.pending.extendleft(reversed(list(units)))

    def _check_owner(self) -> None:
        if os.getpid() != self._owner_pid:
            raise RuntimeError("this pool belongs to process %d; a forked child cannot "
                               "use it (its supervisor thread did not survive the fork)"
                               % self._owner_pid)

    def take_pending(self) -> List[Unit]:
        """Remove and return the units not yet sent to any worker."""
        with self.lock:
            units = list(self.pending)
            self.pending.clear()
        return units

    def take_new_call(self) -> bool:
        """Supervisor: did a call come since the last time?  (It may glance
        at ``new_call`` without the lock first: submit sets it before it
        wakes the loop, so one missed now is seen on the next turn.)"""
        with self.lock:
            new, self.new_call = self.new_call, False
        return new

    def open_call(self) -> None:
        with self.lock:
            if self.state != RUNNING:
                raise ValueError("Pool not running")
            self.open_calls += 1

    def close_call(self) -> None:
        with self.lock:
            self.open_calls -= 1
        self.wakeup.wake()

    def close(self) -> None:
        self._move(RUNNING, CLOSING)

    def terminate(self, kill: bool = False) -> None:
        if kill:   # SIGKILL the workers at once rather than SIGTERM first
            self.kill = True
        self._move(RUNNING, TERMINATING)
        self._move(CLOSING, TERMINATING)

    def finish(self) -> None:
        with self.lock:
            self.state = FINISHED

    def _move(self, old: PoolState, new: PoolState) -> None:
        with self.lock:
            if self.state == old:
                self.state = new
        self.wakeup.wake()
