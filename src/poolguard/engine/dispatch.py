"""Handing pending units to workers, for the supervisor's loop.

Which worker gets the next units comes from the worker set's offers heap
(pacing.py): an idle one, lowest slot first, then the one whose queued
work should end first, while one may take it.  No pass over every worker: a pick is
O(log n).  Workers still starting get a unit each after the ready ones,
where that cannot take long (forked, no initializer).

A worker picked gets a batch: consecutive units, as many as
``Pacer.batch_size`` says and it may take, in one write made at once.  Each
batch costs the same whatever its size (a write, a worker woken, its
replies read in another turn): with a thousand workers, a burst of tiny
units dealt one a worker in turn cost a wake-up and a read per unit or two,
and a worker started only once the whole burst was encoded.  Tiny units
now go in batches to a few workers, which come back idle (lowest slots
first) before the next batch; long ones still go one a worker.  A turn
hands out for ``TURN_TIME`` at most, then reads what came back.
"""
from __future__ import annotations

import time
from typing import Callable, Deque, List, Optional, Sequence, Tuple

from ..wire.messages import PICKLING_ERRORS
from .guards import GuardKeeper
from .inbox import Inbox
from .jobs import Unit
from .pacing import Pacer
from .worker_set import WorkerSet
from .workers import State, Worker

# Seconds a turn of the loop may spend handing out units before it reads
# replies: the workers served first must not wait for the last one's batch.
TURN_TIME = 0.001

Failed = List[Tuple[Unit, BaseException]]


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
        """Hand pending units out, a batch a worker, each batch written as
        soon as it is made, for TURN_TIME at most (the loop turns again at
        once while a worker may take more)."""
        pending = self.inbox.pending
        if not pending:
            return
        failed: Failed = []
        until = time.monotonic() + TURN_TIME
        while True:
            early: List[Tuple[Worker, Sequence[bytes]]] = []
            with self.inbox.lock:
                batch = self._batch(failed)
                if batch is None and pending and self._early:   # no ready worker may take
                    early = self._hand_out_early(failed)
            for worker, frames in early if batch is None else [batch]:
                self._workers.send(worker, frames)
            if batch is None or time.monotonic() >= until:
                break
        for unit, exc in failed:
            self._deliver_failure(unit, exc)

    def _batch(self, failed: Failed) -> Optional[Tuple[Worker, Sequence[bytes]]]:
        """The next worker the offers heap names and the frames of the units
        it is given; None when no worker may take the head unit now."""
        pending, pacer = self.inbox.pending, self._pacer
        while pending:
            head = pending[0]
            expected = None if head.elastic else pacer.expected(head)
            now = time.monotonic()
            worker = self._workers.offers.take(now, pacer.patience(head, expected))
            if worker is None:
                return None
            size = pacer.batch_size(expected, len(pending), len(self._workers))
            frames = self._fill(worker, size, now, (head, expected), failed)
            if frames:
                return worker, frames
            self._workers.offers.update(worker)   # none given: back in the heap, as it was
        return None

    def _fill(self, worker: Worker, size: int, now: float,
              known: Tuple[Unit, Optional[float]], failed: Failed) -> List[bytes]:
        """Give *worker* up to *size* units from the head of the queue while
        what it has is known to end within the next one's patience.
        *known*: the head unit and its expected time, not to look it up twice."""
        pending, pacer = self.inbox.pending, self._pacer
        frames: List[bytes] = []
        room = pacer.room(worker)
        ends = worker.ends_at if worker.inflight else now
        while pending and size > 0 and room > 0:
            unit = self._next_unit(pending, failed)
            if unit is None:
                continue
            expected = known[1] if unit is known[0] else pacer.expected(unit)
            self._give(worker, unit, expected)
            frames.extend(unit.frame)
            size, room = size - 1, room - 1
            if expected is None or not pending:
                break   # nothing after a unit of unknown length
            ends += expected
            head = pending[0]
            known = (head, None if head.elastic else pacer.expected(head))
            if ends - now >= pacer.patience(head, known[1]):
                break
        return frames

    def _hand_out_early(self, failed: Failed) -> List[Tuple[Worker, Sequence[bytes]]]:
        """A unit each to workers still starting with nothing sent to them."""
        pending = self.inbox.pending
        starting = list(self._workers.starting_idle.values())
        given: List[Tuple[Worker, Sequence[bytes]]] = []
        while pending and starting:
            unit = self._next_unit(pending, failed)
            if unit is not None:
                worker = starting.pop(0)
                self._give(worker, unit, self._pacer.expected(unit))
                given.append((worker, unit.frame))
        return given

    def _give(self, worker: Worker, unit: Unit, expected: Optional[float]) -> None:
        if not worker.inflight and worker.state is State.STARTING:
            worker.watch.sample()   # its cgroup and OOM counter, before any task
        self.guard_keeper.took(worker, unit)
        worker.take(unit, expected)

    def _next_unit(self, pending: Deque[Unit], failed: Failed) -> Optional[Unit]:
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
                except PICKLING_ERRORS as exc:
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
