"""task_timeout and max_worker_memory: when to stop a busy worker.

The supervisor calls :meth:`GuardKeeper.check` once per turn of its loop and
sleeps at most :meth:`GuardKeeper.next_wake`.  The keeper also takes the RSS
samples that the post-mortem weighs (diagnosis.py), and sends the signals a
worker is due (a SIGKILL after a SIGTERM that was not enough).
"""
from __future__ import annotations

import signal
import time
import warnings
from typing import Iterable, Optional

from ..diagnosis import process_state
from ..errors import WorkerStoppedWarning
from ..options import Guards
from ..wire.slots import SharedSlots
from .workers import GuardStop, Worker, signal_process

RSS_SAMPLE_INTERVAL = 0.1       # seconds between memory samples of busy workers
MEMORY_CHECK_INTERVAL = 0.01    # seconds between RSS checks when max_worker_memory is set
STACK_GRACE = 0.05              # seconds for a worker past its timeout to write its stacks
TIMEOUT_GRACE = 0.2             # seconds between SIGTERM and SIGKILL past a timeout
STOPPED_WARNING = 5.0           # seconds a busy worker may stay stopped before a warning


class GuardKeeper:
    def __init__(self, guards: Guards, slots: SharedSlots):
        self.guards = guards
        self._slots = slots
        self.sample_interval: Optional[float] = RSS_SAMPLE_INTERVAL   # None: no sampling
        self._next_sample = 0.0
        self._next_memory_check = 0.0

    def next_wake(self, workers: Iterable[Worker]) -> Optional[float]:
        """Seconds the loop may sleep before a guard needs it (None: forever)."""
        workers = list(workers)
        now = time.monotonic()
        times = [d for w in workers for d in (w.next_signal_at(), w.item_deadline)
                 if d is not None]
        if any(w.inflight for w in workers):
            if self.sample_interval is not None:
                times.append(self._next_sample)
            if self.guards.max_worker_memory is not None:
                times.append(self._next_memory_check)
        return max(0.0, min(times) - now) if times else None

    def check(self, workers: Iterable[Worker]) -> None:
        now = time.monotonic()
        workers = list(workers)
        if self.sample_interval is not None and now >= self._next_sample:
            self._next_sample = now + self.sample_interval
            for worker in workers:
                if worker.inflight:
                    worker.watch.sample()
                    self._check_stopped(worker, now)
        cap = self.guards.max_worker_memory
        check_memory = cap is not None and now >= self._next_memory_check
        if check_memory:
            self._next_memory_check = now + MEMORY_CHECK_INTERVAL
        for worker in workers:
            worker.send_due_signals(now)
            if worker.guard is not None or not worker.inflight:
                worker.item_deadline = None
                continue
            if self.guards.task_timeout is not None:
                self._check_timeout(worker, now, self.guards.task_timeout)
            if cap is not None and check_memory and worker.guard is None:
                self._check_memory(worker, cap)

    def _check_timeout(self, worker: Worker, now: float, timeout: float) -> None:
        """The worker writes each item's start time (CLOCK_MONOTONIC, shared by
        all processes) to its slot; queued time is not counted."""
        seen = self._slots.read(worker.index)
        # The unit a worker runs is its oldest unanswered one; a slot that
        # still names an answered unit (its reply is in, IDLE not yet
        # written) or none (idle, starting) has no running item.
        if seen.task_id < 0 or seen.task_id != worker.inflight[0].id:
            worker.item_deadline = None
            worker.seen_item = ()
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

    @staticmethod
    def _check_memory(worker: Worker, cap: int) -> None:
        rss = worker.watch.sample_rss()
        if rss is not None and rss > cap:
            worker.stop_by_guard(GuardStop(
                "memory", f"was killed by poolguard: its RSS reached {rss / 2**20:.0f} MiB, "
                          f"over max_worker_memory={cap / 2**20:.0f} MiB,", rss))
            signal_process(worker.process, signal.SIGKILL)

