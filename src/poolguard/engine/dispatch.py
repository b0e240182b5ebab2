"""Handing pending units to workers, for the supervisor's loop.

Which worker gets the next unit comes from the worker set's offers heap
(pacing.py): an idle one, lowest slot first, then the one whose queued
work should end first, while one may take it.  No pass over every worker: a pick is
O(log n).  Workers still starting get a unit each after the ready ones,
where that cannot take long (forked, no initializer).
"""
from __future__ import annotations

import time
from typing import Callable, Deque, Dict, List, Optional, Tuple

from .guards import GuardKeeper
from .inbox import Inbox
from .jobs import Unit
from .pacing import Pacer
from .workers import State, Worker, WorkerSet


class Dispatcher:
    def __init__(self, inbox: Inbox, workers: WorkerSet, pacer: Pacer,
                 guard_keeper: GuardKeeper, early: bool,
                 deliver_failure: Callable[[Unit, BaseException], None]) -> None:
        self.inbox = inbox
        self._workers = workers
        self._pacer = pacer
        self.guard_keeper = guard_keeper
        self._early = early
        self._deliver_failure = deliver_failure

    def dispatch(self) -> None:
        """Hand pending units to the workers the offers heap names while one
        may take more (pacing.py); each worker's frames go in one write."""
        pending = self.inbox.pending
        if not pending:
            return
        frames: Dict[Worker, List[bytes]] = {}
        failed: List[Tuple[Unit, BaseException]] = []
        with self.inbox.lock:
            self._hand_out(frames, failed)
            if pending and self._early:
                self._hand_out_early(frames, failed)
        for worker, parts in frames.items():
            self._workers.send(worker, parts)
        for unit, exc in failed:
            self._deliver_failure(unit, exc)

    def _hand_out(self, frames: Dict[Worker, List[bytes]],
                  failed: List[Tuple[Unit, BaseException]]) -> None:
        pending, offers, pacer = self.inbox.pending, self._workers.offers, self._pacer
        now = time.monotonic()
        while pending:
            head = pending[0]
            expected = None if head.elastic else pacer.expected(head)
            worker = offers.take(now, pacer.patience(head, expected))
            if worker is None:
                return
            unit = self._next_unit(pending, failed)
            if unit is None:
                offers.update(worker)   # back in the heap, as it was
            else:
                self._give(worker, unit, frames,
                           expected if unit is head else pacer.expected(unit))

    def _hand_out_early(self, frames: Dict[Worker, List[bytes]],
                        failed: List[Tuple[Unit, BaseException]]) -> None:
        """A unit each to workers still starting with nothing sent to them."""
        pending = self.inbox.pending
        starting = list(self._workers.starting_idle.values())
        while pending and starting:
            unit = self._next_unit(pending, failed)
            if unit is not None:
                self._give(starting.pop(0), unit, frames, self._pacer.expected(unit))

    def _give(self, worker: Worker, unit: Unit, frames: Dict[Worker, List[bytes]],
              expected: Optional[float]) -> None:
        if not worker.inflight:
            if worker.state is State.STARTING:
                worker.watch.sample()   # its cgroup and OOM counter, before any task
            self.guard_keeper.took_first(worker)
        worker.take(unit, expected)
        frames.setdefault(worker, []).extend(unit.frame)

    def _next_unit(self, pending: Deque[Unit],
                   failed: List[Tuple[Unit, BaseException]]) -> Optional[Unit]:
        """The unit to send next, or None if the one at the head was dropped
        (cancelled) or could not be encoded (into *failed*)."""
        unit = pending[0]
        if not unit.elastic:
            pending.popleft()
            if not unit.job.wanted(unit):
                unit.release()
                return None
            if not unit.frame:   # lazy (see cut_units)
                try:
                    unit.encode()
                except (Exception, SystemExit) as exc:   # a __reduce__ may even call exit()
                    failed.append((unit, exc))
                    return None
            return unit
        if not unit.job.wanted(unit):
            pending.popleft()
            return None
        head, error = unit.job.cut(unit, self._pacer.elastic_size(unit))
        if not unit.items:
            pending.popleft()
        if error is not None:
            assert head is not None
            failed.append((head, error))
            return None
        return head
