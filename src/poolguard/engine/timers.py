"""The supervisor's deadlines in one heap: signals due to a worker, task
timeout checks.  The next wake-up is the heap's top, and each deadline costs
O(log n) when set and when due, however many workers there are."""
from __future__ import annotations

import heapq
import itertools
from typing import Callable, List, Optional

Action = Callable[[float], None]


class Timer:
    """One deadline; ``cancel()`` keeps it from running (it leaves the heap
    when it comes to the top)."""

    __slots__ = ("when", "action")

    def __init__(self, when: float, action: Optional[Action]):
        self.when = when
        self.action = action

    def cancel(self) -> None:
        self.action = None


class Timers:
    def __init__(self) -> None:
        self._heap: List[tuple[float, int, Timer]] = []
        self._order = itertools.count()   # ties run in the order they were set

    def at(self, when: float, action: Action) -> Timer:
        """Run ``action(now)`` once the monotonic clock reaches *when*."""
        timer = Timer(when, action)
        heapq.heappush(self._heap, (when, next(self._order), timer))
        return timer

    def next_at(self) -> Optional[float]:
        """When the first live deadline is due (None: none is set)."""
        heap = self._heap
        while heap and heap[0][2].action is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def run_due(self, now: float) -> None:
        """Run every deadline due by *now*, each once."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            action, timer.action = timer.action, None
            if action is not None:
                action(now)
