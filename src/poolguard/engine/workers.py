"""The supervisor's record of one worker: its process handle (see
launch/), its pipes, what it has in flight, and what the guards did to it."""
from __future__ import annotations

import collections
import enum
import functools
import os
import re
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Deque, List, Optional, Tuple

from .. import diagnosis
from ..diagnosis import WorkerWatch
from ..errors import TaskInfo
from ..wire.channels import FrameReader
from ..wire.messages import ANSWERED_ONE_BY_ONE, STREAM
from ..wire.slots import Slot
from ..worker.loop import worker_main
from .jobs import Unit
from .pacing import Offers
from .launch import WorkerProcess
from .timers import Timer, Timers

_WORKER_FILE = f'"{worker_main.__code__.co_filename}"'   # as faulthandler quotes it


class State(enum.IntEnum):
    """Where a worker is in its life.  It only ever moves forward (a later
    state in this order), so a late message cannot undo a decision: a READY
    arriving after we sent STOP leaves the worker stopping."""

    STARTING = 0        # started; its initializer has not reported yet
    READY = 1           # takes tasks
    RETIRING = 2        # announced a planned exit (maxtasksperchild)
    STOPPING = 3        # we sent STOP: it exits when its tasks are done
    GUARD_STOPPED = 4   # a guard is stopping it (see ``guard``)
    INIT_FAILED = 5     # its initializer raised
    TERMINATING = 6     # terminate(): SIGTERM sent, SIGKILL follows


@dataclass(frozen=True)
class GuardStop:
    """Why a guard stopped a worker, for its task's error."""

    kind: str                   # "timeout" or "memory"
    text: str                   # how it was stopped, said in the error's first line
    rss: Optional[int] = None   # what the memory guard saw


class Worker:
    """The supervisor's record of one worker process."""

    def __init__(self, index: int, process: WorkerProcess, task_fd: int, result_fd: int,
                 crash_fd: int, timers: Timers, offers: "Offers[Worker]",
                 changed: Callable[["Worker"], None]):
        self.index = index                  # its slot in the shared array
        self.process = process
        self.pid: int = process.pid
        self.task_fd = task_fd
        self.reader = FrameReader(result_fd)
        self.crash_fd = crash_fd            # faulthandler's output at a fatal signal
        os.set_blocking(crash_fd, False)
        self.watch = WorkerWatch(self.pid, diagnosis.SOURCES)
        self.death_fd = process.death_fd
        self.inflight: Deque[Unit] = collections.deque()
        self.sent = 0                       # units ever sent (maxtasksperchild)
        self.items_done = 0                 # items answered (stats())
        self.backlog = 0.0                  # seconds the pacer expects its inflight to take
        self.blind = 0                      # units of those it had no estimate for
        self.state = State.STARTING
        self.guard: Optional[GuardStop] = None
        self.gone = False                   # reaped and forgotten: its pid is not ours
        # Kept up to date for the WorkerSet's indexes (which worker is idle,
        # busy, may be offered a unit): told of every change by *changed*.
        self.ends_at = time.monotonic()     # when the units it has should be done
        self.due = self.ends_at             # when the unit it runs should end (pacing.stalled)
        self.offer: Optional[tuple[Any, ...]] = None   # its live entry in Offers
        self.place: tuple[Any, ...] = ()    # what the WorkerSet's tables last saw
        self._changed = changed
        self._offers = offers
        self._timers = timers
        self.timeout_check: Optional[Timer] = None     # the guard's next look at it
        self.item_deadline: Optional[float] = None   # task_timeout expiry of the running item
        self.seen_item: tuple[Any, ...] = ()   # the slot as the timeout guard last read it
        self.stopped_since: Optional[float] = None   # seen stopped (SIGSTOP) since then
        self.stop_reported = False

    def advance(self, state: State) -> bool:
        """Move to *state* if it is further on; True if it moved."""
        if state > self.state:
            self.state = state
            self._changed(self)
            return True
        return False

    @property
    def usable(self) -> bool:
        return self.state is State.READY

    @property
    def left_on_purpose(self) -> bool:
        """Its death, without a task to blame, is no failure of the pool's."""
        return self.state >= State.RETIRING

    def stop_by_guard(self, guard: GuardStop) -> None:
        self.guard = guard
        self.advance(State.GUARD_STOPPED)

    def crash_stack(self) -> Optional[str]:
        """What faulthandler wrote before the process died, if anything."""
        chunks = []
        while True:
            try:
                data = os.read(self.crash_fd, 65536)
            except OSError:   # BlockingIOError included: nothing more
                break
            if not data:
                break
            chunks.append(data)
        text = b"".join(chunks).decode("utf-8", "replace").strip()
        return trim_stack(text)[-8000:] or None

    def escalate(self, steps: List[Tuple[float, int]]) -> None:
        """Signals to send at the given monotonic times, unless it dies first."""
        for when, signum in steps:
            self._timers.at(when, functools.partial(self._signal_unless_gone, signum))

    def _signal_unless_gone(self, signum: int, _now: float) -> None:
        if not self.gone:
            signal_process(self.process, signum)

    def running(self, slot: Slot) -> Tuple[Optional[Unit], Optional[int]]:
        """The unit its slot says it runs, and the item's offset in it (None
        outside the item loop); (None, None) when idle or starting.  Safe
        from any thread: it looks at a copy of what is in flight."""
        unit = next((u for u in list(self.inflight) if u.id == slot.task_id), None)
        return unit, (slot.item if slot.item >= 0 else None)

    def describe_running(self, slot: Slot) -> Optional[TaskInfo]:
        unit, offset = self.running(slot)
        return unit.job.describe(unit, offset) if unit is not None else None

    def take(self, unit: Unit, expected: Optional[float]) -> None:
        """*unit* is sent to it; the pacer expects it to take *expected* s."""
        unit.expected = expected
        if not self.inflight:
            self.ends_at = time.monotonic()
            self.due = self.ends_at + (expected or 0.0)
        if expected is None:
            self.blind += 1
        else:
            self.backlog += expected
            self.ends_at += expected
        self.inflight.append(unit)
        self.sent += 1
        if len(self.inflight) == 1:
            self._changed(self)
        else:   # still busy: only its place among the offers moves, once a batch
            self._offers.moved[self.index] = self

    def find_unit(self, unit_id: int) -> Optional[Unit]:
        for unit in self.inflight:
            if unit.id == unit_id:
                return unit
        return None

    def pop_unit(self, unit_id: int) -> Optional[Unit]:
        unit = self.find_unit(unit_id)
        if unit is None:
            return None
        self.inflight.remove(unit)
        if unit.job.kind not in ANSWERED_ONE_BY_ONE:   # those count each item as it ends
            self.items_done += len(unit.items)
        elif unit.job.kind == STREAM:   # its last item's outcome came with the unit's reply
            self.items_done += len(unit.items) - unit.answered
        if not self.inflight:
            self.backlog, self.blind = 0.0, 0
        elif unit.expected is None:
            self.blind -= 1
        else:
            self.backlog -= unit.expected
        # The next unit starts about now: what is left ends after its backlog.
        now = time.monotonic()
        self.ends_at = now + self.backlog
        if self.inflight:   # the offers heap updates it before the next pick
            self.due = now + (self.inflight[0].expected or 0.0)
            self._offers.moved[self.index] = self
        else:
            self._changed(self)
        return unit


def trim_stack(text: str) -> str:
    """faulthandler's output without our frames: in each thread's block, the
    frames from the worker loop down (the same in every crash); the block of
    the worker's own parent-watching thread goes entirely."""
    blocks = re.split(r"\n\s*\n|\n(?=(?:Current thread|Thread) 0x)", text)
    kept = []
    for block in blocks:
        if _HELPER_FRAME in block:
            continue
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if _WORKER_FILE in line:
                lines = lines[:i]
                break
        if lines:
            kept.append("\n".join(lines))
    return "\n\n".join(kept)


_HELPER_FRAME = "in _watch_parent"


def signal_process(process: Any, signum: int) -> None:
    """Signal a worker not yet reaped (so its pid cannot have been reused)."""
    try:
        os.kill(process.pid, signum)
    except (ProcessLookupError, TypeError):
        pass


def kill_group(pid: int) -> None:
    """SIGKILL the process group a worker made for itself (its pid), before
    the worker is reaped: while its zombie exists, the id cannot be reused."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass   # no such group: nothing was left, or it never made one
