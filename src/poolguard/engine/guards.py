"""task_timeout and max_worker_memory: when to stop a busy worker.

The supervisor calls :meth:`GuardKeeper.check` once per turn of its loop and
sleeps at most :meth:`GuardKeeper.next_wake`.  The keeper also takes the RSS
samples that the post-mortem weighs (diagnosis/), and sends the signals a
worker is due (a SIGKILL after a SIGTERM that was not enough).

Nothing here scans every worker on a turn: deadlines (signals due, the next
look at a busy worker's running item) are in the worker set's timer heap,
and RSS is read from a rotation of the busy workers within a budget of
reads a second.  With a thousand busy workers, one read each every 0.1 s
would be 10,000 reads a second; within the budget each is read about once
a second, and every one of them still every 0.1 s up to 100 busy workers.
"""
from __future__ import annotations

import signal
import threading
import time
import warnings
from typing import Callable, Dict, List, Optional

from ..diagnosis import process_state
from ..errors import WorkerStoppedWarning
from ..options import Guards
from ..wire.slots import SharedSlots
from .jobs import Unit
from .worker_set import WorkerSet
from .workers import GuardStop, Worker, signal_process

RSS_SAMPLE_INTERVAL = 0.1       # seconds between memory samples of busy workers
SAMPLES_PER_SECOND = 1000       # RSS samples (and stop checks) at most, all workers together
MEMORY_CHECK_INTERVAL = 0.01    # seconds between RSS checks when max_worker_memory is set
MEMORY_CHECKS_PER_SECOND = 4000  # RSS reads for max_worker_memory at most
STACK_GRACE = 0.05              # seconds for a worker past its timeout to write its stacks
TIMEOUT_GRACE = 0.2             # seconds between SIGTERM and SIGKILL past a timeout
STOPPED_WARNING = 5.0           # seconds a busy worker may stay stopped before a warning
STOP_LOOK = 0.02                # seconds between looks for a call to stop that waits in a pipe

# Does this unit, at this item offset (None: outside the item loop), run a
# call someone asked to stop?
StopMatch = Callable[[Unit, Optional[int]], bool]


class StopRequests:
    """Calls to stop (``AsyncResult.stop()``, ``future.stop()``), from any
    thread; the supervisor takes them on its next turn."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._matches: List[StopMatch] = []

    def add(self, match: StopMatch) -> None:
        with self._lock:
            self._matches.append(match)

    def take(self) -> List[StopMatch]:
        if not self._matches:   # the lock only when one came
            return []
        with self._lock:
            matches, self._matches = self._matches, []
        return matches


class Rotation:
    """The busy workers taken a few at a time, each in turn."""

    def __init__(self, busy: Dict[int, Worker]):
        self._busy = busy
        self._round: List[Worker] = []

    def next(self, count: int) -> List[Worker]:
        """Up to *count* busy workers, none twice."""
        out: Dict[int, Worker] = {}
        refilled = False
        while len(out) < count:
            if not self._round:
                if refilled or not self._busy:
                    break
                self._round = list(self._busy.values())
                self._round.reverse()
                refilled = True
            worker = self._round.pop()
            if worker.inflight and not worker.gone:
                out[id(worker)] = worker
        return list(out.values())


class GuardKeeper:
    def __init__(self, guards: Guards, slots: SharedSlots, workers: WorkerSet):
        self.guards = guards
        self._slots = slots
        self._workers = workers
        self.sample_interval: Optional[float] = RSS_SAMPLE_INTERVAL   # None: no sampling
        self._next_sample = 0.0
        self._next_memory_check = 0.0
        self._samples = Rotation(workers.busy)
        self._memory_checks = Rotation(workers.busy)
        # Memory is checked while the pool has a cap, or once a call had one.
        self._memory_capped = guards.max_worker_memory is not None
        self.stops = StopRequests()
        self._stopping: List[StopMatch] = []   # until no worker holds a unit they name

    def guards_of(self, unit: Unit) -> Guards:
        """The guards of *unit*: its call's own, or the pool's."""
        return unit.job.guards or self.guards

    def next_wake(self) -> Optional[float]:
        """Seconds the loop may sleep before a guard needs it (None: forever)."""
        times = []
        due = self._workers.timers.next_at()
        if due is not None:
            times.append(due)
        if self._stopping:   # a unit held back may start any moment
            times.append(time.monotonic() + STOP_LOOK)
        if self._workers.busy:
            if self.sample_interval is not None:
                times.append(self._next_sample)
            if self._memory_capped:
                times.append(self._next_memory_check)
        return max(0.0, min(times) - time.monotonic()) if times else None

    def took(self, worker: Worker, unit: Unit) -> None:
        """*worker* was sent *unit*: no item of it can pass its task_timeout
        before now + that timeout, nor its memory cap before it runs."""
        guards = self.guards_of(unit)
        if guards.max_worker_memory is not None:
            self._memory_capped = True
        if guards.task_timeout is not None:
            self._look_by(worker, time.monotonic() + guards.task_timeout)

    def _look_by(self, worker: Worker, when: float) -> None:
        """Make sure the timeout guard looks at *worker* by *when*."""
        check = worker.timeout_check
        if check is not None:
            if check.when <= when:
                return
            check.cancel()
        self._look_again(worker, when)

    def check(self) -> None:
        now = time.monotonic()
        self._stopping += self.stops.take()
        if self._stopping:
            self._stop_calls()
        self._workers.timers.run_due(now)
        if not self._workers.busy:
            return
        if self.sample_interval is not None and now >= self._next_sample:
            self._next_sample = now + self.sample_interval
            budget = max(1, int(SAMPLES_PER_SECOND * self.sample_interval))
            for worker in self._samples.next(budget):
                worker.watch.sample()
                self._check_stopped(worker, now)
        if self._memory_capped and now >= self._next_memory_check:
            self._next_memory_check = now + MEMORY_CHECK_INTERVAL
            budget = max(1, int(MEMORY_CHECKS_PER_SECOND * MEMORY_CHECK_INTERVAL))
            for worker in self._memory_checks.next(budget):
                inflight = list(worker.inflight)   # its running unit is the oldest
                cap = self.guards_of(inflight[0]).max_worker_memory if inflight else None
                if worker.guard is None and cap is not None:
                    self._check_memory(worker, cap)

    def _check_timeout(self, worker: Worker, now: float) -> None:
        """The worker writes each item's start time (CLOCK_MONOTONIC, shared by
        all processes) to its slot; queued time is not counted.  Looked at
        when the running item could first be past its time, and again at
        its deadline or, between items, a task_timeout later."""
        worker.timeout_check = None
        if worker.gone or worker.guard is not None or not worker.inflight:
            worker.item_deadline = None
            return
        seen = self._slots.read(worker.index)
        # The unit a worker runs is its oldest unanswered one; a slot that
        # still names an answered unit (its reply is in, IDLE not yet
        # written) or none (idle, starting) has no running item.
        running = worker.inflight[0]
        timeout = self.guards_of(running).task_timeout
        if seen.task_id < 0 or seen.task_id != running.id or timeout is None:
            worker.item_deadline = None
            worker.seen_item = ()
            # A unit of those it has may start now at the earliest.
            timeouts = [t for t in (self.guards_of(u).task_timeout for u in worker.inflight)
                        if t is not None]
            if timeouts:
                self._look_again(worker, now + min(timeouts))
            return
        if seen != worker.seen_item:
            worker.seen_item = seen
            started = seen.started / 1e9 if seen.started else now
            worker.item_deadline = started + timeout
        if worker.item_deadline is not None and now >= worker.item_deadline:
            worker.stop_by_guard(GuardStop(
                "timeout", f"was stopped by poolguard after the task ran past "
                           f"task_timeout={timeout:g} s"))
            worker.item_deadline = None
            # First its stacks (faulthandler, to the crash pipe), then the
            # end: a SIGTERM arriving during the dump would cut it short.
            signal_process(worker.process, signal.SIGUSR2)
            worker.escalate([(now + STACK_GRACE, signal.SIGTERM),
                             (now + STACK_GRACE + TIMEOUT_GRACE, signal.SIGKILL)])
            return
        self._look_again(worker, worker.item_deadline or now + timeout)

    def _look_again(self, worker: Worker, when: float) -> None:
        worker.timeout_check = self._workers.timers.at(
            when, lambda now: self._check_timeout(worker, now))

    def _check_stopped(self, worker: Worker, now: float) -> None:
        """A stopped worker cannot print its stack nor end its task: say so
        once, naming it, its task and for how long."""
        if process_state(worker.pid) not in ("T", "t"):
            worker.stopped_since = None
            return
        if worker.stopped_since is None:
            worker.stopped_since, worker.stop_reported = now, False
        elif not worker.stop_reported and now - worker.stopped_since >= STOPPED_WARNING:
            worker.stop_reported = True
            running = worker.describe_running(self._slots.read(worker.index))
            task = f" while running {running}" if running is not None else ""
            warnings.warn(f"poolguard: worker {worker.pid} has been stopped (SIGSTOP, a "
                          f"debugger or a freezer) for {now - worker.stopped_since:.0f} s"
                          f"{task}; its task waits until it is resumed (SIGCONT)",
                          WorkerStoppedWarning, stacklevel=1)

    def _stop_calls(self) -> None:
        """Kill each worker that runs a call asked to stop; its call fails
        with TaskStoppedError (postmortem.py), the other units it held run
        elsewhere.  The front has failed the call already, so what is not
        sent is dropped; but a unit in a worker's pipe behind another one
        starts later: its request is kept until no worker holds it."""
        held: List[Unit] = []
        for worker in list(self._workers.busy.values()):
            if worker.gone or worker.guard is not None:
                continue
            unit, offset = worker.running(self._slots.read(worker.index))
            if unit is not None and any(match(unit, offset) for match in self._stopping):
                worker.stop_by_guard(GuardStop(   # kind "stopped": postmortem.py
                    "stopped", "was killed by poolguard to stop its call, as asked,"))
                signal_process(worker.process, signal.SIGKILL)
            else:   # the running unit too: it may reach the call at a later item
                held.extend(worker.inflight)
        self._stopping = [match for match in self._stopping
                          if any(match(u, i) for u in held for i in range(len(u.items)))]

    @staticmethod
    def _check_memory(worker: Worker, cap: int) -> None:
        rss = worker.watch.sample_rss()
        if rss is not None and rss > cap:
            worker.stop_by_guard(GuardStop(
                "memory", f"was killed by poolguard: its RSS reached {rss / 2**20:.0f} MiB, "
                          f"over max_worker_memory={cap / 2**20:.0f} MiB,", rss))
            signal_process(worker.process, signal.SIGKILL)
