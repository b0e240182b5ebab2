"""``poolguard.ProcessPoolExecutor``: the ``concurrent.futures`` front on the engine."""
from __future__ import annotations

import collections
import functools
import itertools
import threading
import time
from concurrent.futures import Executor, Future
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional,
                    Sequence, Tuple, TypeVar, Union)

from .executor_options import ExecutorOptions
from .shared import WorkerReports, guards_for_call, start_engine
from ..engine import EngineSurface, Job, Unit
from ..engine.at_exit import interpreter_exiting
from ..wire.messages import APPLY, EACH, EACH_STAR, STARMAP
from .executor_calls import FutureJob, MapJob, SubmitBatch
from ..progress import Progress, ProgressArg, check_progress, finish_progress, make_progress
from ..options import (CallGuards, Guards, checkpointed, check_initializer, check_max_tasks,
                      make_guards)


if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..checkpoint import CheckpointArg

T = TypeVar("T")


class ProcessPoolExecutor(Executor, WorkerReports):
    """A ``concurrent.futures.ProcessPoolExecutor`` that survives worker deaths.

    When a worker dies, only the future of the task it was running fails, with
    :class:`poolguard.WorkerCrashedError`; the other futures complete, the
    worker is replaced, and the executor stays usable (no ``BrokenProcessPool``).

    Guards: as ``poolguard.Pool``'s; :meth:`with_options` gives calls
    their own.  ``cluster``: run on a dask.distributed
    cluster (see ``poolguard.Pool``); ``max_workers`` then defaults to the
    cluster's thread count.

    Args:
        max_workers: Number of worker processes; by default the CPUs this
            process may use (cgroup quota and affinity counted).
        mp_context: A ``multiprocessing`` context or a start method name;
            by default the interpreter's default.
        initializer: Called as ``initializer(*initargs)`` in each worker
            before its first task; if it fails, the futures fail with
            :class:`~poolguard.WorkerInitError`.
        initargs: Arguments of *initializer*.
        max_tasks_per_child: Tasks a worker runs before it is replaced.
        task_timeout: Seconds one item may run (see :class:`poolguard.Pool`).
        max_worker_memory: RSS cap of a worker while it runs a task, in bytes
            or as ``"2GiB"`` (see :class:`poolguard.Pool`).
        retries: Times a task whose worker died is run again.
        retry_on: Which deaths are retried: ``"crash"``, ``"oom"``,
            ``"timeout"``, ``"memory"`` (all by default).
        soft_timeout: Seconds before :class:`~poolguard.SoftTimeoutError`
            is raised in a task (see :class:`poolguard.Pool`).
        cluster: A dask.distributed Client, scheduler address or cluster
            object to run on (the ``dask`` extra).

    Raises:
        ValueError: *max_workers* below 1, or a bad guard value.
        TypeError: An argument of the wrong type.
    """

    def __init__(self, max_workers: Optional[int] = None, mp_context: Any = None,
                 initializer: Optional[Callable[..., object]] = None,
                 initargs: Iterable[Any] = (), *,
                 max_tasks_per_child: Optional[int] = None,
                 task_timeout: Optional[float] = None,
                 max_worker_memory: Union[int, str, None] = None, retries: int = 0,
                 retry_on: Optional[Iterable[str]] = None, cluster: Any = None,
                 soft_timeout: Optional[float] = None) -> None:
        self._engine: Optional[EngineSurface] = None
        check_initializer(initializer)
        if max_workers is not None and not isinstance(max_workers, bool) \
                and isinstance(max_workers, int) and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        guards = make_guards(task_timeout, max_worker_memory, retries, retry_on, soft_timeout)
        maxtasks = check_max_tasks(max_tasks_per_child, "max_tasks_per_child")
        self._shutdown_lock = threading.Lock()
        # The unit of the last submits, while queued (see executor_calls.py).
        self._batch: Callable[[], Optional[Unit]] = lambda: None
        self._engine = start_engine(max_workers, "max_workers", initializer, initargs,
                                    maxtasks, mp_context, True, guards, cluster)
        self._max_workers = self._engine.processes

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> "Future[T]":
        """Run ``fn(*args, **kwargs)`` in a worker; return its future at once.

        As the standard library's, but a function or argument that does not
        pickle fails the returned future instead of raising here, and a
        worker's death fails only this future, with
        :class:`~poolguard.WorkerCrashedError`.

        Args:
            fn: The function (lambdas and closures go by value).
            *args: Its positional arguments.
            **kwargs: Its keyword arguments.

        Returns:
            A ``concurrent.futures.Future`` of the value.

        Raises:
            RuntimeError: The executor is shut down, or the interpreter is
                exiting.
        """
        return self._submit(fn, args, kwargs, None)

    def with_options(self, **guards: Unpack[CallGuards]) -> "ExecutorOptions":
        """A view of this executor whose ``submit`` and ``map`` give their
        calls their own guards, replacing the executor's for them alone::

            quick = executor.with_options(task_timeout=5, retries=2)
            future = quick.submit(f, x)

        Args:
            **guards: ``task_timeout``, ``soft_timeout``,
                ``max_worker_memory``, ``retries``, ``retry_on`` (see
                :ref:`guards`).

        Returns:
            An :class:`~poolguard.ExecutorOptions`, with ``submit`` and
            ``map`` as the executor's.

        Raises:
            ValueError: A bad guard value (said here, not at the call).
            TypeError: A guard of the wrong type, or an unknown name.
        """
        engine = self._running()
        return ExecutorOptions(self, guards_for_call(engine, guards))

    def _submit(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: Dict[str, Any],
                guards: Optional[Guards]) -> "Future[T]":
        future: Future[T] = Future()
        if self._engine is not None and not self._engine.batches_submits:   # the cluster's
            self._queue(future, lambda engine: (
                FutureJob(engine, fn, APPLY, "submit", future, guards=guards),
                ((args, kwargs),)))
            return future
        with self._shutdown_lock:
            engine = self._running()
            unit = self._batch()   # calls of one function back to back share a unit
            if unit is not None:
                batch = unit.job
                assert isinstance(batch, SubmitBatch)
                if batch.func is fn and batch.guards is guards \
                        and batch.add(unit, future, (args, kwargs)):
                    return future
            try:
                func_bytes = engine.encode_function(fn)
            except (Exception, SystemExit) as exc:   # the function does not pickle
                future.set_running_or_notify_cancel()
                future.set_exception(exc)
                return future
            batch = SubmitBatch(engine, fn, func_bytes, future, (args, kwargs), guards)
            self._batch = batch.queue(func_bytes)
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
            buffersize: Optional[int] = None, checkpoint: CheckpointArg = None,
            progress: ProgressArg = None) -> Iterator[T]:
        """Like ``Executor.map``: arguments are read at once, results come in
        order, each item's exception raised at its place (a worker's death
        too: only the item it was running fails).  Without *chunksize*,
        items are sent in batches sized from how long they take; with it,
        as the standard library does, a chunk fails as a whole.
        *buffersize* (as Python 3.14's, on every version): read the input
        lazily, with at most that many calls (or chunks) submitted and not
        yet consumed, for inputs too large or endless.  Where ``submit`` is
        overridden (a subclass, or a tool such as tqdm's ``process_map``
        wrapping it), every call goes through it, as the standard
        ``Executor.map`` does.

        Args:
            fn: The function, called with one item of each iterable.
            *iterables: The arguments; the shortest ends the map.
            timeout: Seconds from this call after which taking a value not
                yet done raises ``TimeoutError``.
            chunksize: Items per call sent to a worker (a chunk fails as a
                whole); by default sized from how long items take.
            buffersize: Read the input lazily, keeping at most this many
                calls submitted and not consumed.
            checkpoint: A directory or :class:`~poolguard.Checkpoint`: items
                already done are not run again (see :meth:`poolguard.Pool.map`).
            progress: ``True``, a tqdm bar, or a callable given a
                :class:`poolguard.progress.ProgressInfo` (see
                :meth:`poolguard.Pool.map`); not with *buffersize*.

        Returns:
            An iterator of the values in input order; each failed item
            raises its error when its value is taken.

        Raises:
            ValueError: *chunksize* or *buffersize* below 1, or *progress*
                with *buffersize*.
            RuntimeError: The executor is shut down.
        """
        return self._map(fn, iterables, timeout, chunksize, buffersize, checkpoint, progress,
                         None, self.submit if self._submit_overridden() else None)

    def _map(self, fn: Callable[..., Any], iterables: tuple[Any, ...], timeout: Optional[float],
             chunksize: Optional[int], buffersize: Optional[int], checkpoint: CheckpointArg,
             progress: ProgressArg, guards: Optional[Guards],
             submit: Optional[Callable[..., "Future[Any]"]]) -> Iterator[Any]:
        """``map`` with the call's own *guards*; through *submit* when it is
        overridden (None: it is not)."""
        if chunksize is not None and (isinstance(chunksize, bool)
                                      or not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError("chunksize must be >= 1.")
        _check_buffersize(buffersize, progress)
        check_progress(progress)
        fn = checkpointed(fn, checkpoint)
        end = None if timeout is None else time.monotonic() + timeout
        if buffersize is not None or (progress is None and submit is not None):
            return self._map_by_submit(fn, iterables, end, chunksize or 1, buffersize,
                                       submit or functools.partial(self._submit_one, guards))
        if chunksize is None:
            return self._map_elastic(fn, iterables, end, progress, guards)
        arguments = list(zip(*iterables, strict=False))   # the shortest ends it, as in the stdlib
        futures: List[Future[Any]] = []
        with self._shutdown_lock:
            engine = self._running()
            func_bytes = engine.encode_function(fn)
            counts = make_progress(progress, engine, "map", fn, len(arguments))
            for lo in range(0, len(arguments), chunksize):
                future: Future[Any] = Future()
                job = FutureJob(engine, fn, STARMAP, "map", future, lo,
                                len(arguments[lo:lo + chunksize]), guards)
                job.progress = counts
                engine.submit_items(job, arguments[lo:lo + chunksize], chunksize, lo,
                                    func_bytes)
                futures.append(future)
        return _results_in_order(futures, end, counts)

    def _submit_one(self, guards: Optional[Guards], fn: Callable[..., Any],
                    *args: Any) -> "Future[Any]":
        return self._submit(fn, args, {}, guards)

    def _submit_overridden(self) -> bool:
        return "submit" in vars(self) or type(self).submit is not ProcessPoolExecutor.submit

    def _map_by_submit(self, fn: Callable[..., Any], iterables: tuple[Any, ...],
                       end: Optional[float], chunksize: int, buffersize: Optional[int],
                       submit: Callable[..., "Future[Any]"]) -> Iterator[Any]:
        """``map`` through ``self.submit``: a call per item, or per chunk of
        *chunksize* items; with *buffersize*, the input is read as results
        are consumed.  Back-to-back submits still share units (executor_calls.py)."""
        args: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)
        call: Callable[..., Any] = fn
        if chunksize > 1:
            args = ((chunk,) for chunk in _chunks(args, chunksize))
            call = functools.partial(_run_chunk, fn)
        first = args if buffersize is None else itertools.islice(args, buffersize)
        futures = collections.deque(submit(call, *a) for a in first)
        return _results_by_submit(submit, call, futures, args, end, chunksize > 1)

    def _map_elastic(self, fn: Callable[..., Any], iterables: tuple[Any, ...], end: Optional[float],
                     progress: ProgressArg, guards: Optional[Guards]) -> Iterator[Any]:
        if len(iterables) == 1:   # no 1-tuples to make, send and unpack
            arguments: list[Any] = list(iterables[0])
            job = MapJob(fn, EACH, len(arguments))
        else:
            arguments = list(zip(*iterables, strict=False))   # the shortest ends it
            job = MapJob(fn, EACH_STAR, len(arguments))
        job.guards = guards
        with self._shutdown_lock:
            engine = self._running()
            job.progress = make_progress(progress, engine, "map", fn, len(arguments))
            if arguments:
                engine.submit_elastic(job, arguments)
        return job.results(end)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; the workers exit once the submitted work is done.

        Args:
            wait: Wait here until the work is done and the workers have
                exited.
            cancel_futures: Cancel the futures no worker has started
                (as the standard executor does, the few already handed to
                idle workers still run).
        """
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
        """Stop at once, as Python 3.14's executor does (on every version):
        each worker gets SIGTERM (SIGKILL 1 s later if still alive), futures
        not finished fail with ``PoolTerminatedError``, and the executor is
        shut down."""
        self._stop_workers(kill=False)

    def kill_workers(self) -> None:
        """As :meth:`terminate_workers`, with SIGKILL at once (Python 3.14's
        ``kill_workers``, on every version)."""
        self._stop_workers(kill=True)

    def _stop_workers(self, kill: bool) -> None:
        with self._shutdown_lock:
            engine = self._engine
            if engine is None:
                return
            engine.terminate(kill)
        engine.join()

    def _cancel_pending(self, engine: EngineSurface) -> None:
        """Cancel what no worker has taken, but for one unit per idle worker:
        the standard executor has already handed that many to its call queue
        when shutdown() comes right after submit(), and runs them."""
        units = engine.inbox.take_pending()
        keep = max(0, self._max_workers - engine.units_in_flight())
        kept: List[Unit] = []
        for unit in units:
            if unit.job.started(unit):   # queued again after a death: it runs
                kept.append(unit)
            elif keep <= 0:
                continue
            elif isinstance(unit.job, SubmitBatch):   # keep its first calls
                keep -= unit.job.keep_first(keep)
                kept.append(unit)
            elif not unit.elastic:
                keep -= 1
                kept.append(unit)
        engine.inbox.requeue_first(kept)
        kept_ids = {id(unit) for unit in kept}
        for unit in units:
            if id(unit) not in kept_ids:
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


def _check_buffersize(buffersize: Optional[int], progress: ProgressArg) -> None:
    if buffersize is None:
        return
    if isinstance(buffersize, bool) or not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize < 1:
        raise ValueError("buffersize must be None or > 0")
    if progress is not None:
        raise ValueError("progress= needs the whole input, which buffersize= does not read "
                         "at once; pass one or the other")


def _chunks(args: Iterator[tuple[Any, ...]], size: int) -> Iterator[tuple[Any, ...]]:
    while chunk := tuple(itertools.islice(args, size)):
        yield chunk


def _run_chunk(fn: Callable[..., Any], chunk: tuple[tuple[Any, ...], ...]) -> List[Any]:
    """In the worker: one chunk of a ``map`` that goes through ``submit``."""
    return [fn(*args) for args in chunk]


def _results_by_submit(submit: Callable[..., "Future[Any]"], call: Callable[..., Any],
                       futures: "collections.deque[Future[Any]]",
                       rest: Iterator[tuple[Any, ...]], end: Optional[float],
                       chunked: bool) -> Iterator[Any]:
    """Results in order; each one taken submits the next input's call, if
    any is left (*rest* is empty unless the input is read lazily)."""
    try:
        while futures:
            timeout = None if end is None else end - time.monotonic()
            value = futures[0].result(timeout)
            futures.popleft()
            for args in itertools.islice(rest, 1):
                futures.append(submit(call, *args))
            if chunked:
                yield from value
            else:
                yield value
            del value
    finally:
        for future in futures:
            future.cancel()
