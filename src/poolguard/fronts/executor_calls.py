"""The jobs behind the executor's futures (see engine/jobs.py for jobs and
units): one future per job (``FutureJob``: a chunk of ``map`` with a
chunksize, a joblib batch), a ``map`` whose items are cut as the pacer says
(``MapJob``), and the submits of one function queued back to back
(``SubmitBatch``).

A run of ``submit(f, ...)`` calls does not become one unit each: while the
last unit queued is a batch of the same function that the supervisor has not
finished cutting, a submit adds its arguments and future to it.  The
supervisor cuts the batch like an elastic ``map`` (one call per unit until
the function's duration is known, then about ``CHUNK_TIME`` of calls a unit),
and each cut is a PER_ITEM unit (``SubmitPart``): every call has its own
outcome, a death names the call that was running and fails its future alone,
and ``task_timeout`` and ``retries`` apply per call.  A future cancelled
before its call is cut is dropped, not sent.
"""
from __future__ import annotations

import collections
import itertools
import threading
import time
import weakref
# concurrent.futures' own TimeoutError: the builtin one from 3.11, a class of
# its own on 3.10, where `except futures.TimeoutError` misses the builtin.
from concurrent.futures import CancelledError, Future, InvalidStateError, TimeoutError
from concurrent.futures._base import CANCELLED, PENDING
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from ..engine import EngineSurface, Job, Unit
from ..naming import arguments_text, function_name
from ..errors import TaskInfo
from ..options import Guards
from ..progress import Progress, finish_progress
from ..wire.messages import APPLY, EACH_APPLY, PICKLING_ERRORS


def settle(engine: EngineSurface, future: Future[Any], setter: Callable[[Any], None],
           value: Any) -> None:
    """Complete *future*.  That runs its done-callbacks (user code, asyncio's
    hand-over): off the supervisor thread when there are any."""
    if future._done_callbacks:   # type: ignore[attr-defined]
        engine.call_soon(set_quietly, setter, value)
    else:
        set_quietly(setter, value)


class FutureJob(Job):
    """One future: a ``submit`` call, or one chunk of ``map`` (whose items may
    come back in parts when a retry split the chunk)."""

    def __init__(self, engine: EngineSurface, func: Callable[..., Any], kind: int, call: str,
                 future: Future[Any], start: int = 0, count: int = 1,
                 guards: Optional[Guards] = None):
        super().__init__(func, kind, call)
        self.guards = guards
        self.engine = engine
        self.future = future
        self._settled = False
        self._start = start
        self._values: Optional[List[Any]] = [None] * count if kind != APPLY else None
        self._missing = count

    def wanted(self, unit: Unit) -> bool:
        # Called when the unit is about to be sent; a unit sent again after its
        # worker died before starting it is already running.  A part of a
        # chunk split by a retry is not wanted once another part failed it.
        if self._settled or self.future.done():   # done: stopped
            return False
        return self.future.running() or start(self.future)

    def unit_done(self, unit: Unit, values: list[Any]) -> None:
        if self._settled:
            return
        if self.kind == APPLY:
            self._settle(self.future.set_result, values[0])
            return
        lo = unit.start - self._start
        assert self._values is not None
        self._values[lo:lo + len(values)] = values
        self._missing -= len(values)
        if self._missing == 0:
            self._settle(self.future.set_result, self._values)

    def unit_failed(self, unit: Unit, exc: BaseException) -> None:
        if not self._settled:
            self._settle(self.future.set_exception, exc)

    def _settle(self, setter: Callable[[Any], None], value: Any) -> None:
        self._settled = True
        settle(self.engine, self.future, setter, value)

    def started(self, unit: Unit) -> bool:
        return self.future.running()

    def cancel(self, unit: Unit) -> None:
        if not self.future.cancel():
            self.unit_failed(unit, RuntimeError("not run: executor shut down"))


class MapJob(Job):
    """``map`` without a chunksize: all items in one elastic unit, which the
    supervisor cuts as the pacer says (few items at a time for long tasks,
    many for tiny ones); each item keeps its own result or exception."""

    progress: Optional[Progress]

    def __init__(self, func: Callable[..., Any], kind: int, length: int):
        super().__init__(func, kind, "map")
        self._length = length
        self._cond = threading.Condition(threading.Lock())
        # start -> (values or None, errors, count)
        self._by_start: Dict[int, tuple[Any, ...]] = {}
        self._dropped = False

    def wanted(self, unit: Unit) -> bool:
        return not self._dropped

    def started(self, unit: Unit) -> bool:
        return not unit.elastic   # a part cut from the map, queued again after a death

    def unit_done(self, unit: Unit, outcome: tuple[Any, ...]) -> None:
        values, errors = outcome
        self._put(unit.start, (values, errors, len(values)))

    def unit_failed(self, unit: Unit, exc: BaseException) -> None:
        self._put(unit.start, (None, exc, len(unit.items)))

    def cancel(self, unit: Unit) -> None:
        self.unit_failed(unit, CancelledError())

    def _put(self, start: int, entry: tuple[Any, ...]) -> None:
        with self._cond:
            self._by_start[start] = entry
            self._cond.notify()

    def results(self, end: Optional[float]) -> Iterator[Any]:
        """In input order; an item's exception is raised at its place."""
        position = 0
        try:
            while position < self._length:
                values, errors, count = self._next_entry(position, end)
                if values is None:
                    raise errors
                values.reverse()   # popped, so that a consumer's drop frees them
                pop = values.pop
                if errors:
                    for offset in range(count):
                        value = pop()
                        if offset in errors:
                            raise errors[offset]
                        yield value
                else:
                    for _ in itertools.repeat(None, count):   # no int an item: 20% less
                        yield pop()
                position += count
        finally:
            self._dropped = True   # what is not cut yet is not run
            finish_progress(self.progress)

    def _next_entry(self, position: int, end: Optional[float]) -> tuple[Any, ...]:
        with self._cond:
            while position not in self._by_start:
                timeout = None if end is None else end - time.monotonic()
                if timeout is not None and timeout <= 0 or not self._cond.wait(timeout):
                    raise TimeoutError
            return self._by_start.pop(position)


def start(future: Future[Any]) -> bool:
    """Set *future* running if it is pending; False if it is not: cancelled,
    or stopped (``StoppableFuture.stop()``) before it was sent.  Under the
    future's own lock (reentrant): a stop() between a look at its state and
    set_running_or_notify_cancel would make that raise and log CRITICAL."""
    with future._condition:
        if future._state not in (PENDING, CANCELLED):   # stopped, or started already
            return False
        return future.set_running_or_notify_cancel()


def set_quietly(setter: Callable[[Any], None], value: Any) -> None:
    try:
        setter(value)
    except InvalidStateError:   # cancelled meanwhile (shutdown with cancel_futures)
        pass


class SubmitBatch(Job):
    """``submit`` calls of one function, queued as one elastic unit that
    later submits extend while it is the last pending unit (``add``)."""

    def __init__(self, engine: EngineSurface, func: Callable[..., Any], func_bytes: bytes,
                 future: Future[Any], item: Tuple[tuple[Any, ...], Dict[str, Any]],
                 guards: Optional[Guards] = None):
        super().__init__(func, EACH_APPLY, "submit")
        self.guards = guards
        self.engine = engine
        self.items: Deque[Tuple[tuple[Any, ...], Dict[str, Any]]] = collections.deque([item])
        self.futures: Deque[Future[Any]] = collections.deque([future])
        self._one_by_one = 0   # cuts of one call still to make (after a pickling error)

    def queue(self, func_bytes: bytes) -> "weakref.ref[Unit]":
        """Queue the batch as an elastic unit; a weak reference to it, for
        ``add``.  (Only the inbox holds the unit: once it is cut entirely,
        nothing keeps the batch, its function and its arguments alive.)"""
        unit = Unit(self, 0, self.items, func_bytes, elastic=True)
        self.engine.inbox.submit((unit,))
        return weakref.ref(unit)

    def add(self, unit: Unit, future: Future[Any],
            item: Tuple[tuple[Any, ...], Dict[str, Any]]) -> bool:
        """Queue one more call in *unit* (this batch's), if it still takes any."""
        return self.engine.inbox.add_to_tail(unit, self._append, future, item)

    def _append(self, future: Future[Any], item: Tuple[tuple[Any, ...], Dict[str, Any]]) -> None:
        self.futures.append(future)
        self.items.append(item)

    def cut(self, unit: Unit, count: int) -> Tuple[Optional[Unit], Optional[BaseException]]:
        """Supervisor, under the inbox's lock: a unit of up to *count* calls
        whose futures are still pending, their futures now running."""
        if self._one_by_one:
            self._one_by_one -= 1
            count = 1
        items = [self.items.popleft() for _ in range(min(count, len(self.items)))]
        futures = [self.futures.popleft() for _ in items]
        part = SubmitPart(self.engine, self.func, futures)
        part.guards = self.guards
        try:
            head = Unit(part, 0, items, unit.func_bytes, remote=unit.remote)
        except PICKLING_ERRORS as exc:
            if len(items) > 1:   # again one by one, to fail only what does not pickle
                self.items.extendleft(reversed(items))
                self.futures.extendleft(reversed(futures))
                self._one_by_one = len(items)
                return None, None
            if not start(futures[0]):
                return None, None
            return Unit.placeholder(part, 0, items), exc
        running = [start(future) for future in futures]
        if all(running):
            return head, None
        head.release()   # some were cancelled meanwhile: send the others only
        part.futures = [f for f, run in zip(futures, running, strict=True) if run]
        items = [item for item, run in zip(items, running, strict=True) if run]
        if not items:
            return None, None
        try:
            return Unit(part, 0, items, unit.func_bytes, remote=unit.remote), None
        except PICKLING_ERRORS as exc:
            return Unit.placeholder(part, 0, items), exc

    def keep_first(self, count: int) -> int:
        """``shutdown(cancel_futures=True)``: cancel all but the first *count*
        calls; how many are kept."""
        while len(self.futures) > count:
            self.items.pop()
            self.futures.pop().cancel()
        return len(self.futures)

    def unit_failed(self, unit: Unit, exc: BaseException) -> None:
        """No call of the batch can run (no worker can start, shutdown)."""
        while self.futures:
            future = self.futures.popleft()
            self.items.popleft()
            if start(future):
                settle(self.engine, future, future.set_exception, exc)

    def unit_done(self, unit: Unit, values: Any) -> None:
        raise AssertionError("a batch is never sent: its cuts are")

    def cancel(self, unit: Unit) -> None:
        self.keep_first(0)


class SubmitPart(Job):
    """A cut of a ``SubmitBatch``: the calls of one unit, each with its future
    (item ``i`` of a unit is call ``unit.start + i``: retries split units).
    The worker answers each call as it ends (``call_done``)."""

    def __init__(self, engine: EngineSurface, func: Callable[..., Any],
                 futures: List[Future[Any]]):
        super().__init__(func, EACH_APPLY, "submit")
        self.engine = engine
        self.futures = futures
        self._answered: Set[int] = set()

    def call_done(self, unit: Unit, offset: int, ok: bool, value: Any) -> None:
        index = unit.start + offset
        if index in self._answered:
            return
        self._answered.add(index)
        future = self.futures[index]
        settle(self.engine, future, future.set_result if ok else future.set_exception, value)

    def started(self, unit: Unit) -> bool:
        return True   # its futures were set running when it was cut

    def answered(self, unit: Unit, offset: int) -> bool:
        return unit.start + offset in self._answered

    def unit_done(self, unit: Unit, outcome: Any) -> None:
        """Every call was answered on its own; none is left (a worker that
        answered fewer is a bug: fail them rather than leave them waiting)."""
        missing = [i for i in range(len(unit.items)) if not self.answered(unit, i)]
        if missing:
            self._fail(unit, missing, RuntimeError("poolguard: the worker did not answer this "
                                                   "call"))

    def unit_failed(self, unit: Unit, exc: BaseException) -> None:
        self._fail(unit, range(len(unit.items)), exc)

    def _fail(self, unit: Unit, offsets: Iterable[int], exc: BaseException) -> None:
        for offset in offsets:
            if not self.answered(unit, offset):
                self.call_done(unit, offset, False, exc)

    def cancel(self, unit: Unit) -> None:
        self.unit_failed(unit, RuntimeError("not run: executor shut down"))

    def describe_item(self, item: Any, index: int) -> TaskInfo:
        args, kwds = item
        return TaskInfo(function_name(self.func), arguments_text(args, kwds), None, self.call)
