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
long it takes.  A worker whose running unit is past its expected end by
more than ``STALLED`` (an item far longer than its function's average) is
not known to end at all: it gets nothing more until it answers.

Each reply carries the time its unit ran in the worker (``REPLY_HEADER``);
the pacer keeps, per function, a moving average of the time per item.

Which worker gets the next unit: :class:`Offers`, a heap of the workers
that may take one: the idle ones first, lowest slot first, then the busy
ones by when what they have should end, soonest first.  Work spreads as by
a round robin, and a pick costs O(log n) with a thousand workers, where a
scan of all of them for each unit cost more than the unit.
"""
from __future__ import annotations

import heapq
import itertools
import time
from typing import Any, Dict, Generic, List, Optional, Protocol, Tuple, TypeVar

from .jobs import Unit



class Worker(Protocol):
    """What pacing reads of a worker (workers.Worker), named here so that
    pacing, below the worker set that keeps its Offers, imports nothing of it."""

    index: int
    gone: bool
    sent: int
    blind: int           # units it has whose duration is unknown
    ends_at: float
    due: float           # when the unit it runs should end
    inflight: Any        # a sized collection of units
    offer: Optional[Tuple[Any, ...]]

    @property
    def usable(self) -> bool: ...


W = TypeVar("W", bound=Worker)

WINDOW = 0.002          # seconds of known work a worker may have queued
MAX_AHEAD = 64          # units in flight per worker at most
CHUNK_TIME = 0.002      # what an elastic unit aims to take, in seconds
# Seconds of known work a batch to one worker holds at least (MAX_AHEAD
# units at most): a write, a wake-up and a read of its replies cost some
# 10-50 us, whatever the batch holds.
BATCH_TIME = 0.0002
# Seconds past the expected end of the unit it runs after which a worker takes
# no more until it answers.  Without it, a worker held up by one long item
# took a unit whenever its queue's end (moved on by each unit it took) came
# within WINDOW, before a busy worker that had just taken its own: half the
# units left, up to MAX_AHEAD, waited behind the long item.
STALLED = WINDOW
_WEIGHT = 0.3           # of the newest sample in the moving average
_REMEMBERED = 256       # functions; past that the oldest are forgotten


class Pacer:
    def __init__(self, maxtasks: Optional[int]) -> None:
        self._maxtasks = self.maxtasks = maxtasks
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

    def items_taking(self, func_bytes: bytes, seconds: float) -> Optional[int]:
        """How many items of that function take *seconds* (None: not measured
        yet).  Read by caller threads: one look-up in a dict."""
        known = self._per_item.get(func_bytes)
        if known is None:
            return None
        return int(seconds / known[0]) if known[0] > 0 else None

    def expected(self, unit: Unit) -> Optional[float]:
        """Seconds *unit* should take, or None for a function not yet measured."""
        known = self._per_item.get(unit.func_bytes)
        return None if known is None else known[0] * len(unit.items)

    def may_take(self, worker: Worker, head: Unit) -> bool:
        """May *worker* be sent one more unit, *head* (the next pending), now?"""
        key, now = self.offer_key(worker), time.monotonic()
        return key is not None and not stalled(worker, now) and key - now < self.patience(head)

    def offer_key(self, worker: Worker) -> Optional[float]:
        """When *worker* may be offered units: IDLE + its slot when idle, or
        when the units it has (all with a known duration) should end; None
        while it may take none (not ready, at MAX_AHEAD, maxtasksperchild
        reached, or running a unit of unknown duration)."""
        if not worker.usable or (self._maxtasks is not None and worker.sent >= self._maxtasks):
            return None
        if not worker.inflight:
            return IDLE + worker.index
        if worker.blind or len(worker.inflight) >= MAX_AHEAD:
            return None
        return worker.ends_at

    def room(self, worker: Worker) -> int:
        """Units *worker* may still be sent (MAX_AHEAD, maxtasksperchild)."""
        room = MAX_AHEAD - len(worker.inflight)
        if self._maxtasks is not None:
            room = min(room, self._maxtasks - worker.sent)
        return room

    def batch_size(self, expected: Optional[float], pending: int, workers: int) -> int:
        """Units to hand one worker in a row, the first expected to take
        *expected* s, *pending* units waiting for *workers*: a fair share of
        them, and at least BATCH_TIME of work (up to MAX_AHEAD), whose
        worker then keeps up with what the supervisor can hand out.  One if
        the length is unknown.  What it may take (its queue known to end
        within the next unit's patience) limits it too: see dispatch.py."""
        if expected is None:
            return 1
        share = -(-pending // max(1, workers))
        worth = int(BATCH_TIME / expected) if expected > 0 else MAX_AHEAD
        return max(1, min(MAX_AHEAD, max(share, worth)))

    def patience(self, head: Unit, expected: Optional[float] = None) -> float:
        """How long *head* may wait in a pipe: WINDOW, or half its own
        expected time (a long unit, say a map's chunk, then never leaves its
        worker idle for a round trip, and waits at most half its length).
        *expected*: its expected time, if the caller has it already."""
        if head.elastic:
            return WINDOW
        if expected is None:
            expected = self.expected(head)
        return WINDOW if expected is None else max(WINDOW, expected / 2)

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


class Offers(Generic[W]):
    """The workers that may be sent a unit now or later, in a heap by
    ``Pacer.offer_key``.  A worker whose key changes gets a new entry; the
    old one is dropped when it reaches the top."""

    def __init__(self, pacer: Pacer) -> None:
        self._maxtasks = pacer.maxtasks
        self._heap: List[Tuple[float, int, W]] = []
        self._order = itertools.count()
        self._clean_above = _CLEAN_ABOVE
        # Workers that answered a unit since the heap was last looked at:
        # updated only when a unit is to be handed out, so that replies
        # coming while nothing is pending cost no heap work.
        self.moved: Dict[int, W] = {}   # by slot

    def update(self, worker: W) -> None:
        """*worker* changed (took or answered a unit, changed state, died).
        Its key as Pacer.offer_key's, inline: this runs twice a unit."""
        key: Optional[float] = None
        if worker.usable and not worker.gone and (self._maxtasks is None
                                                  or worker.sent < self._maxtasks):
            if not worker.inflight:
                key = IDLE + worker.index
            elif not worker.blind and len(worker.inflight) < MAX_AHEAD:
                key = worker.ends_at
        entry = worker.offer
        if entry is not None and entry[0] == key:
            return
        if key is None:
            worker.offer = None
            return
        worker.offer = entry = (key, next(self._order), worker)
        heapq.heappush(self._heap, entry)
        if len(self._heap) > self._clean_above:   # mostly stale entries: start afresh
            self._heap = [e for e in self._heap if e[2].offer is e]
            heapq.heapify(self._heap)
            self._clean_above = max(_CLEAN_ABOVE, 4 * len(self._heap))

    def _top(self, now: float) -> Optional[Tuple[float, int, W]]:
        if self.moved:
            for worker in self.moved.values():
                self.update(worker)
            self.moved.clear()
        heap = self._heap
        while heap:
            top = heap[0]
            if top[2].offer is top and not stalled(top[2], now):
                return top
            heapq.heappop(heap)
            if top[2].offer is top:   # stalled: back in at its next reply (pop_unit)
                top[2].offer = None
        return None

    def take(self, now: float, patience: float) -> Optional[W]:
        """The worker to send the next unit to, if one may take it now (a
        unit that may wait *patience* s in its pipe), out of the heap until
        ``update``."""
        top = self._top(now)
        if top is None or top[0] - now >= patience:
            return None
        heapq.heappop(self._heap)
        worker = top[2]
        worker.offer = None
        return worker

    def next_wake(self, now: float, patience: float) -> Optional[float]:
        """Seconds until a worker may take a unit of that *patience*."""
        top = self._top(now)
        return None if top is None else max(0.0, top[0] - patience - now)


_CLEAN_ABOVE = 4096      # heap entries, stale ones included
# The key of an idle worker: before any busy one's (a time), the lowest slot
# first.  A lone task goes to the same worker as before the heap (the first
# idle one), which tests and users rely on; a burst still spreads over all.
IDLE = -2.0 ** 50


def stalled(worker: Worker, now: float) -> bool:
    """Is *worker* more than STALLED past the expected end of the unit it runs?"""
    return bool(worker.inflight) and now > worker.due + STALLED
