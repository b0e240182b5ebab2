"""After a worker's death: whose task was it, what error, and what next.

:meth:`Postmortem.examine` turns what is left of a dead worker (its slot,
exit status, crash stack, memory samples, what a guard did to it) into a
:class:`Death`: the culprit unit and its error, or a fresh try of it; the
units it had not started, to run elsewhere; and, when workers keep dying
without doing any work, the error that stops the pool from respawning.  The
supervisor applies the decision; nothing here touches its queues.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from .. import diagnosis
from ..diagnosis import KernelLog, diagnose
from ..errors import (PoolThrottledError, TaskStoppedError, TaskTimeoutError,
                      WorkerCrashedError, WorkerMemoryError)
from ..naming import function_name, signal_name
from ..options import Guards
from ..wire.messages import PER_ITEM
from ..wire.slots import DECODING, INITIALIZING, SENDING, Slot
from .jobs import Unit
from .workers import Worker

_ERRORS = {"timeout": TaskTimeoutError, "memory": WorkerMemoryError,
           "stopped": TaskStoppedError}
_PHASES: Dict[int, str] = {DECODING: "decoding", SENDING: "sending"}
# Signals that say the process itself failed, not that someone stopped it.
_OWN_FAULT_SIGNALS = {"SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT"}


@dataclass
class Death:
    culprit: Optional[Unit] = None          # the unit that was running
    spent: Optional[Unit] = None            # the unit it was cut from (PER_ITEM), to release
    error: Optional[WorkerCrashedError] = None   # set when the culprit fails now
    rerun: List[Unit] = field(default_factory=list)   # to queue first: untouched units, retries
    throttle: Optional[PoolThrottledError] = None     # stop starting workers


class Postmortem:
    def __init__(self, guards: Guards, kernel_log: KernelLog, processes: int,
                 initializer: Optional[Callable[..., Any]]):
        self.guards = guards
        self._kernel_log = kernel_log
        self._initializer = initializer
        self._throttle = max(5, 2 * processes)
        self._fruitless = 0     # deaths of the pool's own fault since a task last finished

    def task_finished(self) -> None:
        self._fruitless = 0

    def examine(self, worker: Worker, slot: Slot, exitcode: Optional[int],
                crash_stack: Optional[str]) -> Death:
        death = Death()
        death.culprit, offset = worker.running(slot)
        death.rerun = [unit for unit in worker.inflight if unit is not death.culprit]
        if death.culprit is not None:
            self._blame(death, worker, offset, slot, exitcode, crash_stack)
        elif not worker.left_on_purpose:
            death.throttle = self._fruitless_death(worker, slot, exitcode, crash_stack)
        return death

    def _blame(self, death: Death, worker: Worker, offset: Optional[int], slot: Slot,
               exitcode: Optional[int], crash_stack: Optional[str]) -> None:
        culprit = death.culprit
        assert culprit is not None
        if culprit.job.kind in PER_ITEM and offset is not None and len(culprit.items) > 1:
            # Each item has its own outcome: the culprit's item alone fails;
            # the others run again (those before it had run, but their
            # results died with the worker), unless they were answered one
            # by one (EACH_APPLY, STREAM).
            answered = culprit.job.answered(culprit, 0)
            parts = culprit.split(offset)
            alone = parts[1 if offset else 0]
            death.rerun.extend(part for part in parts if part is not alone
                               and not (answered and part.start < alone.start))
            death.spent, death.culprit, offset = culprit, alone, 0
            culprit = alone
        if offset is not None and culprit.job.answered(culprit, offset):
            # It died after answering, before its slot said so: no one to blame.
            death.spent = death.spent or culprit
            death.culprit = None
            return
        error = self.crash_error(worker, culprit, offset, slot, exitcode, crash_stack)
        if self._may_retry(culprit, error):
            culprit.attempts += (error.summary(),)
            death.rerun.extend(culprit.split(offset))   # the caller releases the culprit
            return
        if culprit.attempts:
            error.add_attempts(culprit.attempts)
        death.error = error

    def crash_error(self, worker: Worker, culprit: Unit, offset: Optional[int], slot: Slot,
                    exitcode: Optional[int], crash_stack: Optional[str]) -> WorkerCrashedError:
        guard = worker.guard
        phase = _PHASES.get(slot.item, "running")
        cls = _ERRORS.get(guard.kind, WorkerCrashedError) if guard else WorkerCrashedError
        verdict = self._verdict(worker, slot, exitcode)
        error = cls.from_death(
            pid=worker.pid, exitcode=exitcode, exit_status_known=exitcode is not None,
            task=culprit.job.describe(culprit, offset), phase=phase, diagnosis=verdict,
            peak_rss=worker.watch.task_peak, last_rss=worker.watch.rss_last,
            crash_stack=crash_stack, guard=guard.text if guard else None)
        guards = culprit.job.guards or self.guards   # the limits of the culprit's call
        if isinstance(error, TaskTimeoutError):
            error.limit = guards.task_timeout
        elif isinstance(error, WorkerMemoryError):
            error.limit, error.rss = guards.max_worker_memory, guard.rss if guard else None
        return error

    def _verdict(self, worker: Worker, slot: Slot,
                 exitcode: Optional[int]) -> Optional[diagnosis.Diagnosis]:
        guard = worker.guard
        if guard is not None and guard.kind == "memory":
            return diagnosis.Diagnosis(
                diagnosis.CONFIRMED, "poolguard's memory guard killed it", ["max_worker_memory"])
        if exitcode is None or guard is not None:
            return None
        helper = worker.process.lost_with()
        if helper is not None:
            return diagnosis.Diagnosis(diagnosis.RULED_OUT, f"it died with {helper}: the "
                                       "workers a zygote forked end when it does", [],
                                       outside_kill=True)
        return diagnose(_signal(exitcode), worker.watch, self._kernel_log,
                        diagnosis.SOURCES, slot.sent)

    def _may_retry(self, culprit: Unit, error: WorkerCrashedError) -> bool:
        """Only the culprit's own item counts an attempt (Unit.split); a
        stopped call is never run again."""
        if isinstance(error, TaskStoppedError):
            return False
        kind = ("timeout" if isinstance(error, TaskTimeoutError) else
                "memory" if isinstance(error, WorkerMemoryError) else
                "oom" if error.oom else "crash")
        guards = culprit.job.guards or self.guards
        return kind in guards.retry_on and len(culprit.attempts) < guards.retries

    def _fruitless_death(self, worker: Worker, slot: Slot, exitcode: Optional[int],
                         crash_stack: Optional[str]) -> Optional[PoolThrottledError]:
        """A death with no task to blame, while starting or idle.  Replaced;
        but when workers keep failing by their own fault, the pool stops
        starting them: an initializer that dies (whatever the signal: it
        would do it again), an exit of the process's own, a crash with a
        stack.  A kill from outside (SIGKILL or SIGTERM, no stack) of a worker
        that is not running the initializer is no fault of the pool's: a
        chaos test, a scheduler, a user; it never stops the pool."""
        signame = _signal(exitcode)
        in_initializer = slot.task_id == INITIALIZING and self._initializer is not None
        own_fault = (in_initializer or (exitcode is not None and signame is None)
                     or bool(crash_stack) or signame in _OWN_FAULT_SIGNALS)
        if not own_fault:
            return None
        self._fruitless += 1
        if self._fruitless < self._throttle:
            return None
        starting = slot.task_id == INITIALIZING
        how = WorkerCrashedError.from_death(pid=worker.pid, exitcode=exitcode,
                                            exit_status_known=exitcode is not None, task=None,
                                            phase="starting" if starting else "idle")
        where = (f" while running the initializer {function_name(self._initializer)}"
                 if starting and self._initializer else "")
        error = PoolThrottledError(
            f"{self._fruitless} workers died{where} without finishing a task; "
            f"poolguard stopped starting new ones (the next call tries again). "
            f"Last: {how}", pid=worker.pid)
        error.__cause__ = how
        self._fruitless = 0
        return error


def _signal(exitcode: Optional[int]) -> Optional[str]:
    return signal_name(-exitcode) if exitcode is not None and exitcode < 0 else None


