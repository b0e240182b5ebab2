"""What the ``Pool`` front's calls return: ``ApplyResult`` (``apply_async``),
``MapResult`` (``map_async``), ``IMapIterator`` (``imap``).  Each is the job
the supervisor reports to (engine/jobs.py).  Each can also be awaited
(``await result``, ``async for x in pool.imap(...)``) without blocking the
event loop: see awaiting.py's :class:`LoopWaiters`."""
from __future__ import annotations

import collections
import threading
from multiprocessing import TimeoutError
from typing import (TYPE_CHECKING, Any, AsyncIterator, Callable, Deque, Dict, Generator,
                    Generic, Iterator, List, Optional, Protocol, TypeVar, cast)

from ..engine import EngineSurface, Job, PoolState, Unit, report_callback_error
from ..errors import TaskStoppedError
from ..progress import Progress, finish_progress
from .awaiting import LoopWaiters

T = TypeVar("T")

if TYPE_CHECKING:
    # For type checkers, each result class is also the standard library's
    # (see pool.py); at run time they are not subclasses of them.
    from multiprocessing.pool import ApplyResult as _StdlibApplyResult
    from multiprocessing.pool import IMapIterator as _StdlibIMapIterator
    from multiprocessing.pool import MapResult as _StdlibMapResult
else:
    _StdlibApplyResult = _StdlibMapResult = Generic
    _StdlibIMapIterator = Iterator
Callback = Optional[Callable[[Any], object]]


class Owner(Protocol):
    """The pool that made a result (pool.py's ``Pool``), kept alive while the
    result is waited for: its engine runs the result's callbacks."""

    _engine: Optional[EngineSurface]


class ApplyResult(Job, _StdlibApplyResult[T]):
    """The result of ``apply_async``; ``AsyncResult`` in ``multiprocessing.pool``.

    Made by the pool, never by hand.  ``get()`` waits for the value (or
    raises the task's error); ``await result`` does the same in a
    coroutine without blocking the event loop.  ``poolguard.AsyncResult``
    is the same class.
    """

    progress: Optional[Progress]   # the feature's, not only what the engine counts

    def __init__(self, pool: "Owner", func: Callable[..., Any], kind: int, call: str,
                 callback: Callback, error_callback: Callback):
        super().__init__(func, kind, call)
        self._pool: Optional[Owner] = pool   # keeps the pool alive while we wait
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._settled = False
        self._value: Any = None
        self._waiters = LoopWaiters()

    def ready(self) -> bool:
        """Whether the call has finished (with a value or an error), its callback run."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call finished with a value.

        Raises:
            ValueError: The call has not finished yet.
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: Optional[float] = None) -> None:
        """Wait until the call has finished, or *timeout* seconds have passed.

        Args:
            timeout: Seconds to wait at most; ``None`` waits as long as it
                takes (never forever on a dead worker: its death finishes the
                call with an error).
        """
        self._event.wait(timeout)

    def get(self, timeout: Optional[float] = None) -> T:
        """The call's value, once it has finished.

        Args:
            timeout: Seconds to wait at most; ``None`` waits until the end.

        Returns:
            The value.

        Raises:
            multiprocessing.TimeoutError: Not finished within *timeout*.
            WorkerCrashedError: The worker died running the call.
            Exception: What the call raised.
        """
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return cast(T, self._value)
        raise self._value

    def __await__(self) -> Generator[Any, None, T]:
        """``await pool.apply_async(f, (x,))``: the value, or the task's error."""
        while True:
            with self._lock:
                if self._event.is_set():
                    break
                waiter = self._waiters.new()
            yield from waiter.__await__()
        return self.get(0)

    def stop(self) -> bool:
        """End the call (a map: all its items) now, running or not: it fails
        with :class:`~poolguard.TaskStoppedError`, each worker running it is
        killed and replaced, what of it has not started is dropped; no other
        call is touched.  True if stopped, False if it had finished already.

        Raises:
            ValueError: On a cluster (``cluster=``): it cannot kill a worker.
        """
        pool = self._pool
        engine = pool._engine if pool is not None else None
        if engine is None or self._settled:
            return False
        engine.stop_calls(lambda unit, offset: unit.job is self)
        # At once, for what no worker runs; a worker's death after the kill
        # may come first, with the same type and the worker named.
        self._set(False, TaskStoppedError(f"{self.call} stopped on request (stop())"))
        return True

    def wanted(self, unit: Unit) -> bool:
        """Engine hook (not for users): a unit of a call already failed or
        stopped is not sent."""
        return not self._settled

    def unit_done(self, unit: Unit, values: list[Any]) -> None:
        """Engine hook (not for users): the call's unit finished with *values*."""
        self._set(True, values[0])

    def unit_failed(self, unit: Unit, exc: BaseException) -> None:
        """Engine hook (not for users): the call's unit failed with *exc*."""
        self._set(False, exc)

    def _set(self, success: bool, value: Any) -> bool:
        """Finish the call with *value*; False if it had finished already."""
        with self._lock:
            if self._settled:
                return False
            self._settled = True
            self._success, self._value = success, value
        callback = self._callback if success else self._error_callback
        pool = self._pool
        if self.progress is not None:
            self.progress.finish()
        if (callback is not None or self.progress is not None) and pool is not None \
                and pool._engine is not None:
            # Off the supervisor thread: a slow callback must not delay the
            # detection of a death.  get() returns after it, as in the stdlib
            # (and after the last progress report, queued before it).
            pool._engine.call_soon(self._finish, callback, value)
        else:
            self._finish(None, value)
        return True

    def _finish(self, callback: Callback, value: Any) -> None:
        try:
            if callback is not None:
                callback(value)
        except Exception:   # reported before get() returns
            report_callback_error()
        finally:
            with self._lock:
                self._event.set()
                self._waiters.wake()
            self._pool = None


AsyncResult = ApplyResult


class MapResult(ApplyResult[List[T]], _StdlibMapResult[T]):
    """The result of ``map_async``/``starmap_async``: fails at the first failed chunk.

    As :class:`ApplyResult`, its ``get()`` being the list of values in
    input order.
    """

    def __init__(self, pool: "Owner", func: Callable[..., Any], kind: int, call: str, length: int,
                 callback: Callback, error_callback: Callback,
                 progress: Optional[Progress] = None):
        super().__init__(pool, func, kind, call, callback, error_callback)
        self.progress = progress
        self._values: List[Any] = [None] * length
        self._remaining = length
        if length == 0:
            self._set(True, self._values)

    def unit_done(self, unit: Unit, values: list[Any]) -> None:
        """Engine hook (not for users): a chunk finished with *values*."""
        self._values[unit.start:unit.start + len(values)] = values
        self._remaining -= len(values)
        if self._remaining == 0:
            self._set(True, self._values)


class IMapIterator(Job, _StdlibIMapIterator[T]):
    """Results of ``imap`` (in input order) or ``imap_unordered`` (as they come).

    A failed chunk raises its error once, where its items would have been, and
    iteration then goes on with the next chunk.  Iterate it with ``for`` or
    ``async for`` (which does not block the event loop), or call
    :meth:`next` with a timeout.
    """

    progress: Optional[Progress]

    def __init__(self, pool: "Owner", func: Callable[..., Any], kind: int, call: str, ordered: bool,
                 progress: Optional[Progress] = None):
        super().__init__(func, kind, call)
        self.progress = progress
        self._pool: Optional[Owner] = pool
        self._ordered = ordered
        self._cond = threading.Condition(threading.Lock())
        self._by_start: Dict[int, tuple[Any, ...]] = {}     # ordered: start -> (ok, payload, n)
        self._arrived: Deque[tuple[Any, ...]] = collections.deque()   # unordered
        self._buffer: Deque[T] = collections.deque()
        self._position = 0                # input positions accounted for
        self._length: Optional[int] = None
        self._waiters = LoopWaiters()

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
                if not self._cond.wait(timeout):
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

    def _ready(self) -> bool:
        """True when a value is in the buffer; raises StopIteration at the end
        and a failed chunk's error at its place.  Under the condition's lock."""
        while not self._buffer:
            if self._length is not None and self._position >= self._length:
                self._pool = None
                raise StopIteration
            entry = self._take()
            if entry is None:
                return False
            ok, payload, n = entry
            self._position += n
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
            self._cond.notify_all()
            self._waiters.wake()

    def unit_done(self, unit: Unit, values: list[Any]) -> None:
        """Engine hook (not for users): a chunk finished with *values*."""
        self._put(unit.start, (True, values, len(values)))

    def unit_failed(self, unit: Unit, exc: BaseException) -> None:
        """Engine hook (not for users): a chunk failed with *exc*."""
        self._put(unit.start, (False, exc, len(unit.items)))

    def wait_for_room(self, produced: int, ahead: int, engine: EngineSurface) -> bool:
        """Engine hook (not for users): hold a lazy producer back while *ahead*
        items wait to be consumed, so an endless iterable does not fill
        memory.  False once the pool stops."""
        with self._cond:
            while produced - self._position >= ahead:
                if engine.state not in (PoolState.RUNNING, PoolState.CLOSING):
                    return False
                # Also woken by each result; the timeout only notices terminate().
                self._cond.wait(0.2)
        return True

    def _set_length(self, length: int) -> None:
        with self._cond:
            self._length = length
            if self.progress is not None:
                self.progress.set_total(length)
            self._cond.notify_all()
            self._waiters.wake()
