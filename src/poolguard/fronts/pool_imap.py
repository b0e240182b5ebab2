"""What ``imap`` and ``imap_unordered`` return: ``IMapIterator``, the job
their units report to, iterated with ``for`` or ``async for`` (see
awaiting.py), or stopped."""
from __future__ import annotations

import collections
import threading
from multiprocessing import TimeoutError
from typing import (TYPE_CHECKING, Any, AsyncIterator, Callable, Deque, Dict, Iterator,
                    Optional, Tuple, TypeVar)

from ..engine import EngineSurface, Job, PoolState, Unit
from ..errors import TaskStoppedError
from ..progress import Progress, finish_progress
from ..wire.messages import PICKLING_ERRORS, STREAM
from .awaiting import LoopWaiters
from .pool_calls import Owner

T = TypeVar("T")

if TYPE_CHECKING:
    # For type checkers it is also the standard library's (see pool.py).
    from multiprocessing.pool import IMapIterator as _StdlibIMapIterator
else:
    _StdlibIMapIterator = Iterator


class IMapIterator(Job, _StdlibIMapIterator[T]):
    """Results of ``imap`` (in input order) or ``imap_unordered`` (as they come).

    A failed chunk raises its error once, where its items would have been, and
    iteration then goes on with the next chunk.  Iterate it with ``for`` or
    ``async for`` (which does not block the event loop), call :meth:`next`
    with a timeout, or :meth:`stop` what is left.
    """

    progress: Optional[Progress]

    def __init__(self, pool: "Owner", func: Callable[..., Any], kind: int, call: str, ordered: bool,
                 progress: Optional[Progress] = None):
        super().__init__(func, kind, call)
        self.progress = progress
        self._pool: Optional[Owner] = pool
        self._ordered = ordered
        self._cond = threading.Condition(threading.Lock())
        self._sleepers = 0      # threads in _sleep(): a result notifies only them
        self._by_start: Dict[int, tuple[Any, ...]] = {}     # ordered: start -> (ok, payload, n)
        self._arrived: Deque[tuple[Any, ...]] = collections.deque()   # unordered
        self._buffer: Deque[T] = collections.deque()
        self._position = 0                # input positions accounted for
        self._length: Optional[int] = None
        self._waiters = LoopWaiters()
        self._stopped = False                          # stop(): nothing more comes
        self._stop_error: Optional[BaseException] = None   # raised once, then the end
        self._room_at: Optional[int] = None   # the position the producer waits for
        # A lazy STREAM imap: the unit its producer extends, and its items (_feed)
        self._fed: Optional[Tuple[Unit, Deque[Any]]] = None

    def __iter__(self) -> "IMapIterator[T]":
        """The iterator itself."""
        return self

    def next(self, timeout: Optional[float] = None) -> T:
        """The next value (``next(it)`` waits without a limit).

        Args:
            timeout: Seconds to wait at most; ``None`` waits until a value
                comes.

        Returns:
            The next value, in input order for ``imap``, as done for
            ``imap_unordered``.

        Raises:
            StopIteration: No value is left.
            multiprocessing.TimeoutError: None came within *timeout*.
            WorkerCrashedError: The worker running this chunk died.
            Exception: What the chunk's call raised.
        """
        with self._cond:
            while True:
                try:
                    if self._ready():
                        return self._buffer.popleft()
                except StopIteration:
                    break
                if not self._sleep(timeout):
                    raise TimeoutError
        finish_progress(self.progress)   # its last line before the caller's next one
        raise StopIteration

    __next__ = next

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        """``async for x in pool.imap(...)``: as ``next()``, without blocking the loop."""
        while True:
            with self._cond:
                try:
                    if self._ready():
                        return self._buffer.popleft()
                except StopIteration:
                    if self.progress is not None:
                        self.progress.finish()
                    raise StopAsyncIteration from None
                waiter = self._waiters.new()
            await waiter

    def stop(self) -> bool:
        """End the calls of this map not done yet: each worker running one is
        killed and replaced, the items not started are dropped, no other
        call is touched.  The values already taken out stay; the next one
        taken raises :class:`~poolguard.TaskStoppedError`, and iteration
        then ends.  True if stopped, False if it had ended already.

        Raises:
            ValueError: On a cluster (``cluster=``): it cannot kill a worker.
        """
        pool = self._pool
        engine = pool._engine if pool is not None else None
        with self._cond:
            if engine is None or self._stopped or (
                    self._length is not None and self._position >= self._length):
                return False
            engine.stop_calls(lambda unit, offset: unit.job is self)
            self._stopped = True
            self._stop_error = TaskStoppedError(f"{self.call} stopped on request (stop())")
            self._buffer.clear()
            self._cond.notify_all()
            self._waiters.wake()
        return True

    def wanted(self, unit: Unit) -> bool:
        """Engine hook (not for users): after stop(), no unit is sent."""
        return not self._stopped

    def _ready(self) -> bool:
        """True when a value is in the buffer; raises StopIteration at the end
        and a failed chunk's error at its place.  Under the condition's lock."""
        while not self._buffer:
            if self._stopped:
                self._pool = None
                error, self._stop_error = self._stop_error, None
                if error is not None:
                    raise error
                raise StopIteration
            if self._length is not None and self._position >= self._length:
                self._pool = None
                raise StopIteration
            entry = self._take()
            if entry is None:
                return False
            ok, payload, n = entry
            self._position += n
            if self._room_at is not None and self._position >= self._room_at:
                self._cond.notify_all()   # the producer: it may go on
            if not ok:
                raise payload
            self._buffer.extend(payload)
        return True

    def _take(self) -> Optional[tuple[Any, ...]]:
        if self._ordered:
            return self._by_start.pop(self._position, None)
        return self._arrived.popleft() if self._arrived else None

    def _put(self, start: int, entry: tuple[Any, ...]) -> None:
        with self._cond:
            if self._ordered:
                self._by_start[start] = entry
            else:
                self._arrived.append(entry)
            if self._sleepers:   # notify_all() costs ~0.5 us even when nobody waits
                self._cond.notify_all()
            self._waiters.wake()

    def _sleep(self, timeout: Optional[float]) -> bool:
        """Wait on the condition (its lock held), counted for _put."""
        self._sleepers += 1
        try:
            return self._cond.wait(timeout)
        finally:
            self._sleepers -= 1

    def unit_done(self, unit: Unit, values: list[Any]) -> None:
        """Engine hook (not for users): a chunk finished with *values*."""
        if self.kind == STREAM:   # the items not answered one by one (call_done): its last
            results, errors = values
            for i, value in enumerate(results):
                self.call_done(unit, unit.answered, i not in errors, errors.get(i, value))
            if unit.answered < len(unit.items):   # a worker that did not is a bug: no hang
                self.unit_failed(unit, RuntimeError("poolguard: the worker did not answer "
                                                    "this item"))
            return
        self._put(unit.start, (True, values, len(values)))

    def unit_failed(self, unit: Unit, exc: BaseException) -> None:
        """Engine hook (not for users): a chunk failed with *exc* (those of
        its items not answered yet, for a STREAM unit)."""
        left = len(unit.items) - unit.answered
        if left > 0:
            self._put(unit.start + unit.answered, (False, exc, left))

    def call_done(self, unit: Unit, offset: int, ok: bool, value: Any) -> None:
        """Engine hook (not for users): the item at *offset* of a STREAM unit
        ended, before the unit did."""
        if offset < unit.answered:
            return
        unit.answered = offset + 1
        if self.progress is not None:
            self.progress.count(1, None if ok else value, 0 if ok else 1)
        self._put(unit.start + offset, (True, (value,), 1) if ok else (False, value, 1))

    def _feed(self, engine: EngineSurface, item: Any, index: int, func_bytes: bytes) -> None:
        """Lazy STREAM imap, its producer thread: queue *item* (input
        position *index*) at the end of the unit it fed last while that is
        the last unit pending, so that tiny items travel together; else in
        a new elastic unit.  ValueError if the pool takes no more."""
        if self._fed is None or not engine.inbox.add_to_tail(self._fed[0], self._fed[1].append,
                                                              item):
            fed = collections.deque([item])
            unit = engine.submit_elastic(self, fed, index, func_bytes, open_call=True)
            self._fed = None if unit is None else (unit, fed)

    def cut(self, unit: Unit, count: int) -> Tuple[Optional[Unit], Optional[BaseException]]:
        """Engine hook (not for users), under the inbox's lock: a unit of the
        first *count* items of a fed unit (``_feed``), which keeps the rest."""
        fed = unit.items
        if not isinstance(fed, collections.deque):
            return super().cut(unit, count)
        chunk = [fed.popleft() for _ in range(min(count, len(fed)))]
        start, unit.start = unit.start, unit.start + len(chunk)
        try:
            return Unit(self, start, chunk, unit.func_bytes, remote=unit.remote), None
        except PICKLING_ERRORS as exc:
            if len(chunk) > 1:   # again one by one, to fail only the item that does not pickle
                fed.extendleft(reversed(chunk))
                unit.start = start
                return self.cut(unit, 1)
            return Unit.placeholder(self, start, chunk), exc

    def answered(self, unit: Unit, offset: int) -> bool:
        """Engine hook (not for users): was that item of a STREAM unit answered?"""
        return offset < unit.answered

    def count_progress(self, unit: Unit, ok: bool, value: Any) -> None:
        """Engine hook (not for users): a STREAM unit's answered items were
        counted as they came; only those a failed unit leaves are counted here."""
        if self.kind != STREAM:
            super().count_progress(unit, ok, value)
            return
        left = len(unit.items) - unit.answered
        if not ok and left > 0:
            assert self.progress is not None
            self.progress.count(left, value, left)

    def wait_for_room(self, produced: int, ahead: int, engine: EngineSurface) -> bool:
        """Engine hook (not for users): hold a lazy producer back while *ahead*
        items wait to be consumed, so an endless iterable does not fill
        memory.  False once the pool stops."""
        with self._cond:
            while produced - self._position >= ahead or self._stopped:
                if engine.state not in (PoolState.RUNNING, PoolState.CLOSING) or self._stopped:
                    return False
                # Woken once the consumer has made room (_ready), and by each
                # result; the timeout only notices terminate().
                self._room_at = produced - ahead + 1
                try:
                    self._sleep(0.2)
                finally:
                    self._room_at = None
        return True

    def _set_length(self, length: int) -> None:
        with self._cond:
            self._length = length
            if self.progress is not None:
                self.progress.set_total(length)
            self._cond.notify_all()
            self._waiters.wake()
