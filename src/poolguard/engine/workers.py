"""The supervisor's record of one worker: its process handle (see
launch/), its pipes, what it has in flight, and what the guards did to it."""
from __future__ import annotations

import collections
import enum
import functools
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from .. import diagnosis
from ..diagnosis import WorkerWatch
from ..errors import TaskInfo
from ..wire.channels import FrameReader, Spiller, WatchSet, Watched
from ..wire import private_fds
from ..wire.framing import frame
from ..wire.messages import EACH_APPLY, STOP, TASK_HEADER
from ..wire.slots import INITIALIZING, SharedSlots, Slot
from ..worker.loop import worker_main
from .jobs import Unit
from .pacing import Offers, Pacer
from .launch import StartError, WorkerPipes, WorkerProcess, describe_start_error
from .reports import Accounts, PoolStats, WorkerStatus
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
        if unit.job.kind != EACH_APPLY:   # those count each call as it ends
            self.items_done += len(unit.items)
        if not self.inflight:
            self.backlog, self.blind = 0.0, 0
        elif unit.expected is None:
            self.blind -= 1
        else:
            self.backlog -= unit.expected
        # The next unit starts about now: what is left ends after its backlog.
        self.ends_at = time.monotonic() + self.backlog
        if self.inflight:   # the offers heap updates it before the next pick
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


class WorkerSet:
    """The pool's workers, one per slot: started through the launcher, their
    pipes and death fds in the supervisor's watch set, forgotten after death.
    Only the supervisor thread changes it; the reports (pids, status) copy
    what they read and may be called from any thread."""

    def __init__(self, count: int, slots: SharedSlots, launcher: Any, watch: WatchSet,
                 spiller: Spiller, pacer: Pacer):
        self.count = count
        self.by_slot: Dict[int, Worker] = {}
        self._slots = slots
        self._launcher = launcher
        self._watch = watch
        self._spiller = spiller
        # Kept as workers change (Worker calls _changed), so that no event
        # of the supervisor's needs a scan of every worker:
        self.vacant: Set[int] = set(range(count))    # slots without a worker
        self.busy: Dict[int, Worker] = {}            # with units in flight
        self.empty_handed: Dict[int, Worker] = {}    # without, starting or ready
        self.starting_idle: Dict[int, Worker] = {}   # without, not ready yet
        self.offers: Offers[Worker] = Offers(pacer)  # which may take a unit, and when
        self.timers = Timers()                       # signals due, timeout checks
        self.accounts = Accounts(count)              # stats(): told of each change below
        # Set once every slot has had a worker (or none can start): until
        # then pids and status() wait, since a pool starts its workers on the
        # supervisor thread, after Pool() has returned.
        self.first_round = threading.Event()
        self._never_started = set(range(count))

    def __iter__(self) -> Iterator[Worker]:
        return iter(list(self.by_slot.values()))

    def __len__(self) -> int:
        return len(self.by_slot)

    def empty_slots(self) -> List[int]:
        return sorted(self.vacant)

    def _changed(self, worker: Worker) -> None:
        place = (bool(worker.inflight), worker.state, worker.gone)
        if place != worker.place:   # twice a unit: mostly the same
            worker.place = place
            self._file(worker)
            self.accounts.observe(worker, worker.state is State.STARTING)
        self.offers.update(worker)

    def _file(self, worker: Worker) -> None:
        index, busy = worker.index, bool(worker.inflight) and not worker.gone
        for table, member in ((self.busy, busy),
                              (self.empty_handed, not busy and not worker.gone
                               and worker.state <= State.READY),
                              (self.starting_idle, not busy and not worker.gone
                               and worker.state is State.STARTING)):
            if member:
                table[index] = worker
            else:
                table.pop(index, None)

    def start(self, index: int) -> Optional[Worker]:
        """Start the worker of slot *index*, or ask for it (None: the launcher
        answers later, take_prepared); StartError if it cannot be."""
        prepared = self._launcher.take_prepared(index)   # answered by the zygote
        if prepared is not None:
            pipes, process = prepared
        else:
            try:
                pipes = WorkerPipes()
            except OSError as exc:
                raise StartError(f"cannot make a worker's pipes: "
                                 f"{describe_start_error(exc)}") from exc
            self._slots.write(index, INITIALIZING, 0)
            try:   # the launcher closes the child's ends
                started = self._launcher.start(index, pipes)
            except StartError:
                pipes.close_parent_ends()
                raise
            if started is None:
                return None
            process = started
        try:
            os.set_blocking(pipes.task_w, False)
            worker = Worker(index, process, pipes.task_w, pipes.result_r, pipes.crash_r,
                            self.timers, self.offers, self._changed)
        except OSError as exc:   # out of descriptors for its /proc files
            signal_process(process, signal.SIGKILL)
            process.reap()
            process.close()
            pipes.close_parent_ends()
            raise StartError(f"cannot watch a new worker: {describe_start_error(exc)}") from exc
        self.by_slot[index] = worker
        self.vacant.discard(index)
        self._never_started.discard(index)
        if not self._never_started:
            self.first_round.set()
        self._changed(worker)
        self._watch.add(worker.reader.fd, worker, Watched.RESULT)
        self._watch.add(worker.death_fd, worker, Watched.DEATH)
        return worker

    def send(self, worker: Worker, parts: Sequence[bytes]) -> None:
        self._spiller.write(worker.task_fd, parts)

    def forget(self, worker: Worker) -> None:
        """After its death: close all that was its."""
        self._watch.discard(worker.reader.fd)
        self._watch.discard(worker.death_fd)
        del self.by_slot[worker.index]
        self.vacant.add(worker.index)
        worker.gone = True
        self._changed(worker)
        private_fds.close(worker.reader.fd)
        private_fds.close(worker.crash_fd)
        private_fds.release(worker.task_fd)
        self._spiller.close_fd(worker.task_fd)
        worker.watch.close()
        worker.process.close()

    def may_serve(self) -> bool:
        """Is any worker ready or still starting (not failed nor terminated)?"""
        return any(w.state not in (State.INIT_FAILED, State.TERMINATING) for w in self)

    def take_inflight(self) -> List[Unit]:
        units: List[Unit] = []
        for worker in list(self.busy.values()):
            units.extend(worker.inflight)
            worker.inflight.clear()
            self._changed(worker)
        return units

    def stop_idle(self) -> None:
        """Ask each worker with nothing in flight to exit (close())."""
        for worker in list(self.empty_handed.values()):
            if worker.advance(State.STOPPING):
                self.send(worker, frame(TASK_HEADER.pack(STOP, 0)))

    def terminate(self, grace: float) -> None:
        """SIGTERM each worker; SIGKILL follows *grace* seconds later (no
        SIGTERM first when *grace* is 0)."""
        now = time.monotonic()
        for worker in self:
            if worker.advance(State.TERMINATING):
                if grace <= 0:
                    signal_process(worker.process, signal.SIGKILL)
                    continue
                signal_process(worker.process, signal.SIGTERM)
                worker.escalate([(now + grace, signal.SIGKILL)])

    def kill_all(self) -> None:
        """SIGKILL every worker and its group, reap and forget it."""
        for worker in self:
            signal_process(worker.process, signal.SIGKILL)
            kill_group(worker.pid)
            worker.process.reap()
            self.forget(worker)

    def pids(self) -> List[int]:
        return [w.pid for w in self]

    def status(self) -> List[WorkerStatus]:
        """What each worker is doing now (its slot, its units, /proc)."""
        out = []
        now = time.monotonic_ns()
        for worker in self:
            slot = self._slots.read(worker.index)
            task, elapsed, state = None, None, "idle"
            if slot.task_id == INITIALIZING:
                state = "starting"
            elif slot.task_id >= 0:
                task = worker.describe_running(slot)
                # None: answered already; the worker clears its slot after its
                # reply (and, forked by the zygote, after its first task starts
                # its parent-watching thread), so a status read at once saw it busy.
                if task is not None:
                    state = "busy"
                    elapsed = (now - slot.started) / 1e9 if slot.started else None
            if diagnosis.process_state(worker.pid) in ("T", "t"):
                state = "stopped"
            out.append(WorkerStatus(worker.pid, state, task, elapsed,
                                    diagnosis.rss_of(worker.pid)))
        return out

    def stats(self, sample: bool = True) -> PoolStats:
        """What each slot did since the pool began; safe from any thread."""
        return self.accounts.stats(list(self.by_slot.values()), sample)

    def dump_stacks(self) -> None:
        """Each worker prints every thread's stack to its stderr (SIGUSR1)."""
        for worker in self:
            signal_process(worker.process, signal.SIGUSR1)
