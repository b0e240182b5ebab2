"""``poolguard.ProcessPoolExecutor``: the ``concurrent.futures`` front on the engine."""
from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, Executor, Future, InvalidStateError
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional,
                    Sequence, Tuple, TypeVar, Union)

from .front import WorkerReports, start_engine
from .engine import EngineSurface, Job, Unit
from .engine.at_exit import interpreter_exiting
from .wire.messages import APPLY, EACH, EACH_STAR, STARMAP
from .progress import Progress, ProgressArg, check_progress, finish_progress, make_progress
from .options import (checkpointed, check_initializer, check_max_tasks, make_guards)


if TYPE_CHECKING:
    from .checkpoint import CheckpointArg

T = TypeVar("T")


class _FutureJob(Job):
    """One future: a ``submit`` call, or one chunk of ``map`` (whose items may
    come back in parts when a retry split the chunk)."""

    def __init__(self, engine: EngineSurface, func: Callable[..., Any], kind: int, call: str,
                 future: Future[Any], start: int = 0, count: int = 1):
        super().__init__(func, kind, call)
        self.engine = engine
        self.future = future
        self._settled = False
        self._start = start
        self._values: Optional[List[Any]] = [None] * count if kind != APPLY else None
        self._missing = count

    def wanted(self, unit: Unit) -> bool:
        # Called when the unit is about to be sent; a unit sent again after its
        # worker died before starting it is already running.
        return self.future.running() or self.future.set_running_or_notify_cancel()

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
        # Completing a future runs its done-callbacks (user code, asyncio's
        # hand-over): off the supervisor thread when there are any.
        if getattr(self.future, "_done_callbacks", None):
            self.engine.call_soon(_set_quietly, setter, value)
        else:
            _set_quietly(setter, value)

    def cancel(self, unit: Unit) -> None:
        if not self.future.cancel():
            self.unit_failed(unit, RuntimeError("not run: executor shut down"))


class _MapJob(Job):
    """``map`` without a chunksize: all items in one elastic unit, which the
    supervisor cuts as the pacer says (few items at a time for long tasks,
    many for tiny ones); each item keeps its own result or exception."""

    def __init__(self, func: Callable[..., Any], kind: int, length: int):
        super().__init__(func, kind, "map")
        self._length = length
        self._cond = threading.Condition(threading.Lock())
        # start -> (values or None, errors, count)
        self._by_start: Dict[int, tuple[Any, ...]] = {}
        self._dropped = False

    def wanted(self, unit: Unit) -> bool:
        return not self._dropped

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
                    for _ in range(count):
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


def _set_quietly(setter: Callable[[Any], None], value: Any) -> None:
    try:
        setter(value)
    except InvalidStateError:   # cancelled meanwhile (shutdown with cancel_futures)
        pass


class ProcessPoolExecutor(Executor, WorkerReports):
    """A ``concurrent.futures.ProcessPoolExecutor`` that survives worker deaths.

    When a worker dies, only the future of the task it was running fails, with
    :class:`poolguard.WorkerCrashedError`; the other futures complete, the
    worker is replaced, and the executor stays usable (no ``BrokenProcessPool``).

    Guards: as ``poolguard.Pool``'s.  ``cluster``: run on a dask.distributed
    cluster (see ``poolguard.Pool``); ``max_workers`` then defaults to the
    cluster's thread count.
    """

    def __init__(self, max_workers: Optional[int] = None, mp_context: Any = None,
                 initializer: Optional[Callable[..., object]] = None,
                 initargs: Iterable[Any] = (), *,
                 max_tasks_per_child: Optional[int] = None,
                 task_timeout: Optional[float] = None,
                 max_worker_memory: Union[int, str, None] = None, retries: int = 0,
                 retry_on: Optional[Iterable[str]] = None, cluster: Any = None) -> None:
        self._engine: Optional[EngineSurface] = None
        check_initializer(initializer)
        if max_workers is not None and not isinstance(max_workers, bool) \
                and isinstance(max_workers, int) and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        guards = make_guards(task_timeout, max_worker_memory, retries, retry_on)
        maxtasks = check_max_tasks(max_tasks_per_child, "max_tasks_per_child")
        self._shutdown_lock = threading.Lock()
        self._engine = start_engine(max_workers, "max_workers", initializer, initargs,
                                    maxtasks, mp_context, True, guards, cluster)
        self._max_workers = self._engine.processes

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> "Future[T]":
        """As the stdlib's: a function or argument that does not pickle fails
        the returned future, it does not raise here."""
        future: Future[T] = Future()
        self._queue(future, lambda engine: (_FutureJob(engine, fn, APPLY, "submit", future),
                                            ((args, kwargs),)))
        return future

    def _queue(self, future: Future[Any],
               build: Callable[[EngineSurface], Tuple[Job, Sequence[Any]]]) -> None:
        """Queue the one-unit job *build* makes for *future* (``submit``, a
        joblib batch); what does not pickle fails the future, not the call."""
        with self._shutdown_lock:
            engine = self._running()
            job, items = build(engine)
            try:
                engine.submit_items(job, items, len(items))
            except (Exception, SystemExit) as exc:   # the function did not pickle
                if future.set_running_or_notify_cancel():
                    future.set_exception(exc)

    def _running(self) -> EngineSurface:
        engine = self._engine
        if interpreter_exiting():
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if engine is None or engine.state != "running":
            raise RuntimeError("cannot schedule new futures after shutdown")
        return engine

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any],
            timeout: Optional[float] = None, chunksize: Optional[int] = None,
            checkpoint: CheckpointArg = None, progress: ProgressArg = None) -> Iterator[T]:
        """Like ``Executor.map``: arguments are read at once, results come in
        order, each item's exception raised at its place (a worker's death
        too: only the item it was running fails).  Without *chunksize*,
        items are sent in batches sized from how long they take; with it,
        as the standard library does, a chunk fails as a whole.
        *checkpoint*, *progress*: see ``Pool.map``."""
        if chunksize is not None and (isinstance(chunksize, bool)
                                      or not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError("chunksize must be >= 1.")
        check_progress(progress)
        fn = checkpointed(fn, checkpoint)
        end = None if timeout is None else time.monotonic() + timeout
        if chunksize is None:
            return self._map_elastic(fn, iterables, end, progress)
        arguments = list(zip(*iterables, strict=False))   # the shortest ends it, as in the stdlib
        futures: List[Future[Any]] = []
        with self._shutdown_lock:
            engine = self._running()
            func_bytes = engine.encode_function(fn)
            counts = make_progress(progress, engine, "map", fn, len(arguments))
            for lo in range(0, len(arguments), chunksize):
                future: Future[Any] = Future()
                job = _FutureJob(engine, fn, STARMAP, "map", future, lo,
                                 len(arguments[lo:lo + chunksize]))
                job.progress = counts
                engine.submit_items(job, arguments[lo:lo + chunksize], chunksize, lo,
                                    func_bytes)
                futures.append(future)
        return _results_in_order(futures, end, counts)

    def _map_elastic(self, fn: Callable[..., Any], iterables: tuple[Any, ...], end: Optional[float],
                     progress: ProgressArg) -> Iterator[Any]:
        if len(iterables) == 1:   # no 1-tuples to make, send and unpack
            arguments: list[Any] = list(iterables[0])
            job = _MapJob(fn, EACH, len(arguments))
        else:
            arguments = list(zip(*iterables, strict=False))   # the shortest ends it
            job = _MapJob(fn, EACH_STAR, len(arguments))
        with self._shutdown_lock:
            engine = self._running()
            job.progress = make_progress(progress, engine, "map", fn, len(arguments))
            if arguments:
                engine.submit_elastic(job, arguments)
        return job.results(end)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._shutdown_lock:
            engine = self._engine
            if engine is None:
                return
            if cancel_futures:
                self._cancel_pending(engine)
            engine.close()
        if wait:
            engine.join()

    def terminate_workers(self) -> None:
        """Stop at once, as Python 3.14's executor does: the workers are
        killed, futures not finished fail with ``PoolTerminatedError``."""
        with self._shutdown_lock:
            engine = self._engine
            if engine is None:
                return
            engine.terminate()
        engine.join()

    def _cancel_pending(self, engine: EngineSurface) -> None:
        """Cancel what no worker has taken, but for one unit per idle worker:
        the standard executor has already handed that many to its call queue
        when shutdown() comes right after submit(), and runs them."""
        units = engine.inbox.take_pending()
        keep = max(0, self._max_workers - engine.units_in_flight())
        kept = [unit for unit in units if not unit.elastic][:keep]
        engine.inbox.requeue_first(kept)
        for unit in units:
            if unit not in kept:
                unit.release()
                unit.job.cancel(unit)

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None and engine.state == "running":
            engine.close()   # the standard executor finishes queued work too



def _results_in_order(futures: List[Future[Any]], end: Optional[float],
                      progress: Optional[Progress]) -> Iterator[Any]:
    futures.reverse()
    try:
        while futures:
            timeout = None if end is None else end - time.monotonic()
            # result() raises TimeoutError, or the chunk's error, as Executor.map does.
            values = futures[-1].result(timeout)
            futures.pop()
            # Hand each result over and keep no reference to it (the list is
            # the future's): a consumer that drops it frees it.
            values.reverse()
            while values:
                yield values.pop()
    finally:
        for future in futures:
            future.cancel()
        finish_progress(progress)
