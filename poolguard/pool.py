"""``poolguard.Pool``: the ``multiprocessing.Pool`` front on the engine."""
from __future__ import annotations

import collections
import itertools
import threading
import warnings
from multiprocessing import TimeoutError
from typing import (Any, Callable, Deque, Dict, Generic, Iterable, Iterator, List, Mapping,
                    Optional, Sequence, TypeVar, Union)

from .checkpoint import CheckpointArg, checkpointed
from .front import WorkerReports
from .engine import Engine, Job, Unit, report_callback_error
from .options import (check_initializer, check_max_tasks, make_guards, resolve_context,
                      resolve_workers)
from .errors import PoolTerminatedError
from .wire.messages import APPLY, MAP, STARMAP

T = TypeVar("T")
Callback = Optional[Callable[[Any], object]]


class ApplyResult(Job, Generic[T]):
    """The result of ``apply_async``; ``AsyncResult`` in ``multiprocessing.pool``."""

    def __init__(self, pool: "Pool", func: Callable, kind: int, call: str,
                 callback: Callback, error_callback: Callback):
        super().__init__(func, kind, call)
        self._pool: Optional[Pool] = pool   # keeps the pool alive while we wait
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._settled = False
        self._value: Any = None

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: Optional[float] = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: Optional[float] = None) -> T:
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def unit_done(self, unit: Unit, values: list) -> None:
        self._set(True, values[0])

    def unit_failed(self, unit: Unit, exc: BaseException) -> None:
        self._set(False, exc)

    def _set(self, success: bool, value: Any) -> None:
        with self._lock:
            if self._settled:
                return
            self._settled = True
            self._success, self._value = success, value
        callback = self._callback if success else self._error_callback
        pool = self._pool
        if callback is not None and pool is not None and pool._engine is not None:
            # Off the supervisor thread: a slow callback must not delay the
            # detection of a death.  get() returns after it, as in the stdlib.
            pool._engine.call_soon(self._finish, callback, value)
        else:
            self._finish(None, value)

    def _finish(self, callback: Callback, value: Any) -> None:
        try:
            if callback is not None:
                callback(value)
        except Exception:   # reported before get() returns
            report_callback_error()
        finally:
            self._event.set()
            self._pool = None


AsyncResult = ApplyResult


class MapResult(ApplyResult[List[T]]):
    """The result of ``map_async``/``starmap_async``: fails at the first failed chunk."""

    def __init__(self, pool: "Pool", func: Callable, kind: int, call: str, length: int,
                 callback: Callback, error_callback: Callback):
        super().__init__(pool, func, kind, call, callback, error_callback)
        self._values: List[Any] = [None] * length
        self._remaining = length
        if length == 0:
            self._set(True, self._values)

    def unit_done(self, unit: Unit, values: list) -> None:
        self._values[unit.start:unit.start + len(values)] = values
        self._remaining -= len(values)
        if self._remaining == 0:
            self._set(True, self._values)


class IMapIterator(Job, Iterator[T]):
    """Results of ``imap`` (in input order) or ``imap_unordered`` (as they come).

    A failed chunk raises its error once, where its items would have been, and
    iteration then goes on with the next chunk.
    """

    def __init__(self, pool: "Pool", func: Callable, kind: int, call: str, ordered: bool):
        super().__init__(func, kind, call)
        self._pool: Optional[Pool] = pool
        self._ordered = ordered
        self._cond = threading.Condition(threading.Lock())
        self._by_start: Dict[int, tuple] = {}     # ordered: start -> (ok, payload, n)
        self._arrived: Deque[tuple] = collections.deque()   # unordered
        self._buffer: Deque[Any] = collections.deque()
        self._position = 0                # input positions accounted for
        self._length: Optional[int] = None

    def __iter__(self) -> "IMapIterator[T]":
        return self

    def next(self, timeout: Optional[float] = None) -> T:
        with self._cond:
            while True:
                if self._buffer:
                    return self._buffer.popleft()
                if self._length is not None and self._position >= self._length:
                    self._pool = None
                    raise StopIteration
                entry = self._take()
                if entry is not None:
                    ok, payload, n = entry
                    self._position += n
                    if ok:
                        self._buffer.extend(payload)
                        continue
                    raise payload
                if not self._cond.wait(timeout):
                    raise TimeoutError

    __next__ = next

    def _take(self) -> Optional[tuple]:
        if self._ordered:
            return self._by_start.pop(self._position, None)
        return self._arrived.popleft() if self._arrived else None

    def _put(self, start: int, entry: tuple) -> None:
        with self._cond:
            if self._ordered:
                self._by_start[start] = entry
            else:
                self._arrived.append(entry)
            self._cond.notify_all()

    def unit_done(self, unit: Unit, values: list) -> None:
        self._put(unit.start, (True, values, len(values)))

    def unit_failed(self, unit: Unit, exc: BaseException) -> None:
        self._put(unit.start, (False, exc, len(unit.items)))

    def wait_for_room(self, produced: int, ahead: int, engine: Engine) -> bool:
        """Hold a lazy producer back while *ahead* items wait to be consumed,
        so an endless iterable does not fill memory.  False once the pool stops."""
        with self._cond:
            while produced - self._position >= ahead:
                if engine.state not in ("running", "closing"):
                    return False
                # Also woken by each result; the timeout only notices terminate().
                self._cond.wait(0.2)
        return True

    def _set_length(self, length: int) -> None:
        with self._cond:
            self._length = length
            self._cond.notify_all()


class Pool(WorkerReports):
    """A ``multiprocessing.Pool`` that survives the death of its workers.

    When a worker dies (SIGKILL, the OOM killer, ``os._exit``, a segfault) the
    task it was running fails with :class:`poolguard.WorkerCrashedError`, the
    worker is replaced, and every other task goes on.

    Guards (keyword-only): ``task_timeout`` (seconds an item may run; past it
    the worker is stopped and the task fails with ``TaskTimeoutError``),
    ``max_worker_memory`` (bytes or "2GiB"; a worker above it is killed and
    the task fails with ``WorkerMemoryError``), ``retries`` (re-runs of a task
    whose worker died) and ``retry_on`` (which deaths: "crash", "oom",
    "timeout", "memory"; all by default).
    """

    def __init__(self, processes: Optional[int] = None,
                 initializer: Optional[Callable[..., object]] = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: Optional[int] = None,
                 context: Any = None, *, task_timeout: Optional[float] = None,
                 max_worker_memory: Union[int, str, None] = None, retries: int = 0,
                 retry_on: Optional[Iterable[str]] = None) -> None:
        self._engine: Optional[Engine] = None   # __del__ may run if we raise below
        check_initializer(initializer)
        self._processes = resolve_workers(processes, "Number of processes")
        guards = make_guards(task_timeout, max_worker_memory, retries, retry_on)
        self._engine = Engine(self._processes, initializer, initargs,
                              check_max_tasks(maxtasksperchild, "maxtasksperchild"),
                              resolve_context(context), guards=guards)

    # ---- single calls ----

    def apply(self, func: Callable[..., T], args: Sequence[Any] = (),
              kwds: Mapping[str, Any] = {}) -> T:
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable[..., T], args: Sequence[Any] = (),
                    kwds: Mapping[str, Any] = {}, callback: Callback = None,
                    error_callback: Callback = None) -> ApplyResult[T]:
        engine = self._running()
        result: ApplyResult[T] = ApplyResult(self, func, APPLY, "apply", callback,
                                             error_callback)
        engine.submit_items(result, [(tuple(args), dict(kwds))], 1)
        return result

    # ---- map family ----

    def map(self, func: Callable[[Any], T], iterable: Iterable[Any],
            chunksize: Optional[int] = None, *, checkpoint: CheckpointArg = None) -> List[T]:
        return self._map_async(func, iterable, chunksize, MAP, "map",
                               checkpoint=checkpoint).get()

    def map_async(self, func: Callable[[Any], T], iterable: Iterable[Any],
                  chunksize: Optional[int] = None, callback: Callback = None,
                  error_callback: Callback = None, *,
                  checkpoint: CheckpointArg = None) -> MapResult[T]:
        return self._map_async(func, iterable, chunksize, MAP, "map", callback,
                               error_callback, checkpoint)

    def starmap(self, func: Callable[..., T], iterable: Iterable[Iterable[Any]],
                chunksize: Optional[int] = None, *,
                checkpoint: CheckpointArg = None) -> List[T]:
        return self._map_async(func, iterable, chunksize, STARMAP, "starmap",
                               checkpoint=checkpoint).get()

    def starmap_async(self, func: Callable[..., T], iterable: Iterable[Iterable[Any]],
                      chunksize: Optional[int] = None, callback: Callback = None,
                      error_callback: Callback = None, *,
                      checkpoint: CheckpointArg = None) -> MapResult[T]:
        return self._map_async(func, iterable, chunksize, STARMAP, "starmap", callback,
                               error_callback, checkpoint)

    def _map_async(self, func: Callable, iterable: Iterable, chunksize: Optional[int],
                   kind: int, call: str, callback: Callback = None,
                   error_callback: Callback = None,
                   checkpoint: CheckpointArg = None) -> MapResult:
        engine = self._running()
        func = checkpointed(func, checkpoint)
        items = iterable if isinstance(iterable, (list, tuple, range)) else list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._processes * 4)
            chunksize += bool(extra)
        _check_chunksize(chunksize if items else 1)
        result: MapResult = MapResult(self, func, kind, call, len(items), callback,
                                      error_callback)
        if items:
            engine.submit_items(result, items, chunksize)
        return result

    def imap(self, func: Callable[[Any], T], iterable: Iterable[Any],
             chunksize: int = 1, *, checkpoint: CheckpointArg = None) -> IMapIterator[T]:
        return self._imap(func, iterable, chunksize, True, checkpoint)

    def imap_unordered(self, func: Callable[[Any], T], iterable: Iterable[Any],
                       chunksize: int = 1, *,
                       checkpoint: CheckpointArg = None) -> IMapIterator[T]:
        return self._imap(func, iterable, chunksize, False, checkpoint)

    def _imap(self, func: Callable, iterable: Iterable, chunksize: int,
              ordered: bool, checkpoint: CheckpointArg) -> IMapIterator:
        engine = self._running()
        func = checkpointed(func, checkpoint)
        _check_chunksize(chunksize)
        result: IMapIterator = IMapIterator(self, func, MAP,
                                            "imap" if ordered else "imap_unordered", ordered)
        if isinstance(iterable, (list, tuple, range)):
            engine.submit_items(result, iterable, chunksize)
            result._set_length(len(iterable))
        else:
            # Like the standard library, read a lazy iterable on a thread of its
            # own so that imap returns at once (and an endless one works).
            func_bytes = engine.encode_function(func)   # an unpicklable func raises here
            engine.inbox.open_call()
            threading.Thread(target=_produce,
                             args=(engine, result, iter(iterable), chunksize, func_bytes),
                             name="poolguard-imap-producer", daemon=True).start()
        return result

    # ---- life cycle ----

    def close(self) -> None:
        """No more tasks; workers exit once the submitted work is done."""
        if self._engine is not None:
            self._engine.close()

    def terminate(self) -> None:
        """Stop the workers now; unfinished tasks fail with PoolTerminatedError."""
        if self._engine is not None:
            self._engine.terminate()
            self._engine.join()

    def join(self) -> None:
        """Wait for the workers to exit; call close() or terminate() first."""
        engine = self._engine
        if engine is None or engine.state == "running":
            raise ValueError("Pool is still running; call close() or terminate() first")
        engine.join()

    def __enter__(self) -> "Pool":
        self._running()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.terminate()

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None and engine.state == "running":
            warnings.warn(f"unclosed running pool {self!r}", ResourceWarning, stacklevel=2,
                          source=self)
            engine.terminate()

    def __repr__(self) -> str:
        state = self._engine.state if self._engine is not None else "unstarted"
        return f"<{type(self).__module__}.{type(self).__qualname__} state={state} " \
               f"pool_size={getattr(self, '_processes', '?')}>"


    def _running(self) -> Engine:
        engine = self._engine
        if engine is None or engine.state != "running":
            raise ValueError("Pool not running")
        return engine


def _check_chunksize(chunksize: Any) -> None:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")


def _produce(engine: Engine, job: IMapIterator, items: Iterator, chunksize: int,
             func_bytes: bytes) -> None:
    """Cut a lazy iterable into units as it yields; runs on its own thread."""
    count = 0
    ahead = max(1024, 8 * engine.processes * chunksize)
    try:
        while job.wait_for_room(count, ahead, engine):
            try:
                chunk = list(itertools.islice(items, chunksize))
            except Exception as exc:   # the iterable itself raised
                job.unit_failed(Unit.placeholder(job, count, [None]), exc)
                count += 1
                break
            if not chunk:
                break
            try:
                engine.submit_items(job, chunk, chunksize, count, func_bytes, open_call=True)
            except ValueError as exc:  # terminated while we were reading
                job.unit_failed(Unit.placeholder(job, count, [None]),
                                PoolTerminatedError(f"the pool stopped: {exc}"))
                count += 1
                break
            count += len(chunk)
    finally:
        job._set_length(count)
        engine.inbox.close_call()

