"""How much work a worker may have waiting in its pipe, and how large an
elastic unit is cut: both from how long units of the same function took.

A unit written ahead into a busy worker's pipe cannot be taken back: if the
unit before it runs long while another worker is idle, it waits for nothing
(head-of-line blocking).  Writing ahead pays only when tasks are short, where
a worker would otherwise idle for a round trip between two of them.  So a
worker gets a second unit only while what it already has is *known* to end
within ``WINDOW``: at once for short tasks, and for long ones shortly
before the one it runs should end (the loop wakes for it, ``next_wake``).  A
function never seen before gets one unit per worker until a reply says how
long it takes.

Each reply carries the time its unit ran in the worker (``REPLY_HEADER``);
the pacer keeps, per function, a moving average of the time per item.
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, Optional, Tuple

from ..wire.slots import SharedSlots
from .jobs import Unit
from .workers import Worker

WINDOW = 0.002          # seconds of known work a worker may have queued
MAX_AHEAD = 64          # units in flight per worker at most
CHUNK_TIME = 0.002      # what an elastic unit aims to take, in seconds
_WEIGHT = 0.3           # of the newest sample in the moving average
_REMEMBERED = 256       # functions; past that the oldest are forgotten


class Pacer:
    def __init__(self, slots: SharedSlots, maxtasks: Optional[int]) -> None:
        self._slots = slots
        self._maxtasks = maxtasks
        # function pickle -> (seconds per item, items measured)
        self._per_item: Dict[bytes, Tuple[float, int]] = {}

    def learn(self, unit: Unit, seconds: float) -> None:
        """*unit* ran for *seconds* in its worker."""
        count = len(unit.items)
        if not count:
            return
        sample = seconds / count
        known = self._per_item.get(unit.func_bytes)
        if known is None:
            if len(self._per_item) >= _REMEMBERED:
                del self._per_item[next(iter(self._per_item))]
            self._per_item[unit.func_bytes] = (sample, count)
        else:
            average, seen = known
            self._per_item[unit.func_bytes] = (average + _WEIGHT * (sample - average),
                                               seen + count)

    def expected(self, unit: Unit) -> Optional[float]:
        """Seconds *unit* should take, or None for a function not yet measured."""
        known = self._per_item.get(unit.func_bytes)
        return None if known is None else known[0] * len(unit.items)

    def may_take(self, worker: Worker, head: Unit) -> bool:
        """May *worker* be sent one more unit, *head* (the next pending), now?"""
        if self._maxtasks is not None and worker.sent >= self._maxtasks:
            return False
        if not worker.inflight:
            return True
        return (not worker.blind and len(worker.inflight) < MAX_AHEAD
                and self._time_left(worker) < self._patience(head))

    def next_wake(self, workers: Iterable[Worker], head: Unit) -> Optional[float]:
        """Seconds until some busy worker may take *head*, the next pending
        unit (None: no such worker)."""
        patience = self._patience(head)
        times = [self._time_left(w) - patience for w in workers
                 if w.usable and w.inflight and not w.blind and len(w.inflight) < MAX_AHEAD]
        return max(0.0, min(times)) if times else None

    def _patience(self, head: Unit) -> float:
        """How long *head* may wait in a pipe: WINDOW, or half its own
        expected time (a long unit, say a map's chunk, then never leaves its
        worker idle for a round trip, and waits at most half its length)."""
        if head.elastic:
            return WINDOW
        expected = self.expected(head)
        return WINDOW if expected is None else max(WINDOW, expected / 2)

    def _time_left(self, worker: Worker) -> float:
        """The expected time of what *worker* has in flight, less what the
        unit it runs has run already (read from its slot only when it
        matters: a long backlog)."""
        backlog = worker.backlog
        if backlog < WINDOW:
            return backlog
        slot = self._slots.read(worker.index)
        if slot.task_id != worker.inflight[0].id or not slot.started:
            return backlog
        return backlog - max(0.0, (time.monotonic_ns() - slot.started) / 1e9)

    def elastic_size(self, unit: Unit) -> int:
        """Items to cut from an elastic unit: about CHUNK_TIME of work, and
        at most half the items of its function measured so far, so that a
        few fast first items cannot send a run of slow ones to one worker.
        (A fast item cut with a slow one still waits for it: its result
        comes with the unit's.)  One item when workers retire after so many
        tasks: each item is a task then, as in the standard executor."""
        known = self._per_item.get(unit.func_bytes)
        if known is None or self._maxtasks is not None:   # each item counts as a task
            return 1
        average, seen = known
        wanted = int(CHUNK_TIME / average) if average > 0 else len(unit.items)
        return max(1, min(wanted, seen // 2, len(unit.items)))
