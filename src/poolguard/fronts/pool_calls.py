"""What the ``Pool`` front's calls return: ``ApplyResult`` (``apply_async``),
``MapResult`` (``map_async``); ``IMapIterator`` (``imap``) is pool_imap.py's.  Each is the job
the supervisor reports to (engine/jobs.py).  Each can also be awaited
(``await result``, ``async for x in pool.imap(...)``) without blocking the
event loop: see awaiting.py's :class:`LoopWaiters`."""
from __future__ import annotations

import threading
from multiprocessing import TimeoutError
from typing import (TYPE_CHECKING, Any, Callable, Generator,
                    Generic, List, Optional, Protocol, TypeVar, cast)

from ..engine import EngineSurface, Job, Unit, report_callback_error
from ..errors import TaskStoppedError
from ..progress import Progress
from .awaiting import LoopWaiters

T = TypeVar("T")

if TYPE_CHECKING:
    # For type checkers, each result class is also the standard library's
    # (see pool.py); at run time they are not subclasses of them.
    from multiprocessing.pool import ApplyResult as _StdlibApplyResult
    from multiprocessing.pool import MapResult as _StdlibMapResult
else:
    _StdlibApplyResult = _StdlibMapResult = Generic
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
        self._stopped = False   # stop(): what has not started is dropped
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
        self._stopped = True
        engine.stop_calls(lambda unit, offset: unit.job is self)
        # At once, for what no worker runs; a worker's death after the kill
        # may come first, with the same type and the worker named.
        self._set(False, TaskStoppedError(f"{self.call} stopped on request (stop())"))
        return True

    def wanted(self, unit: Unit) -> bool:
        """Engine hook (not for users): a unit of a stopped call is not sent.
        One of a call that failed is, as in the standard library: the other
        items of a map still run (and checkpoint= keeps their results)."""
        return not self._stopped

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
        # Made at the first result, by the supervisor while workers run: made
        # here, a long map's list held every thread up before its first unit.
        self._values: Optional[List[Any]] = None
        self._length = self._remaining = length
        if length == 0:
            self._set(True, [])

    def unit_done(self, unit: Unit, values: list[Any]) -> None:
        """Engine hook (not for users): a chunk finished with *values*."""
        if self._values is None:
            self._values = [None] * self._length
        self._values[unit.start:unit.start + len(values)] = values
        self._remaining -= len(values)
        if self._remaining == 0:
            self._set(True, self._values)
