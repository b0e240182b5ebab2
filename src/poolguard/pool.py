"""``poolguard.Pool``: the ``multiprocessing.Pool`` front on the engine."""
from __future__ import annotations

import itertools
import threading
import warnings
from typing import (TYPE_CHECKING, Any, Callable, Iterable, Iterator, List, Mapping, Optional,
                    TypeVar, Union)

from .front import WorkerReports, start_engine
from .engine import EngineSurface, Unit
from .options import (checkpointed, check_initializer, check_max_tasks, make_guards)
from .errors import PoolTerminatedError
from .progress import ProgressArg, check_progress, make_progress
from .results import ApplyResult, AsyncResult, Callback, IMapIterator, MapResult
from .wire.messages import APPLY, MAP, STARMAP

__all__ = ["Pool", "ApplyResult", "AsyncResult", "MapResult", "IMapIterator"]

if TYPE_CHECKING:
    from multiprocessing.pool import Pool as _StdlibPool

    from .checkpoint import CheckpointArg
else:
    _StdlibPool = object

T = TypeVar("T")


class Pool(WorkerReports, _StdlibPool):
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

    ``cluster``: run on a dask.distributed cluster instead of this machine
    (a ``distributed.Client``, a scheduler address, or a cluster object);
    ``processes`` then defaults to the cluster's thread count.  A Client
    given is never closed by the pool; one it made is.

    Args:
        processes: Number of worker processes; by default the CPUs this
            process may use (cgroup quota and affinity counted).
        initializer: Called as ``initializer(*initargs)`` in each worker
            before its first task.  If it raises or dies, the calls fail with
            :class:`~poolguard.WorkerInitError`.
        initargs: Arguments of *initializer*.
        maxtasksperchild: Tasks a worker runs before it is replaced by a
            fresh one; ``None`` (the default) keeps it.
        context: A ``multiprocessing`` context or a start method name
            (``"fork"``, ``"spawn"``, ``"forkserver"``); by default the
            interpreter's default.
        task_timeout: Seconds one item may run; past it the worker is
            stopped and the task fails with :class:`~poolguard.TaskTimeoutError`.
        max_worker_memory: Bytes (an int, or a string such as ``"2GiB"`` or
            ``"500MB"``) of RSS a worker may use while running a task; above
            it the worker is killed and the task fails with
            :class:`~poolguard.WorkerMemoryError`.
        retries: Times a task whose worker died is run again, on another
            worker, before its error is raised.
        retry_on: Which deaths are retried: any of ``"crash"``, ``"oom"``,
            ``"timeout"``, ``"memory"`` (all by default).
        cluster: A ``distributed.Client``, a scheduler address, or a cluster
            object (``LocalCluster``, dask-jobqueue's clusters) to run the
            workers on; needs the ``dask`` extra.

    Raises:
        ValueError: *processes* below 1, a bad *maxtasksperchild*,
            *task_timeout*, *max_worker_memory*, *retries* or *retry_on*.
        TypeError: An argument of the wrong type (a non-callable
            *initializer*, a *context* that is no context).
    """

    def __init__(self, processes: Optional[int] = None,
                 initializer: Optional[Callable[..., object]] = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: Optional[int] = None,
                 context: Any = None, *, task_timeout: Optional[float] = None,
                 max_worker_memory: Union[int, str, None] = None, retries: int = 0,
                 retry_on: Optional[Iterable[str]] = None, cluster: Any = None) -> None:
        self._engine: Optional[EngineSurface] = None   # __del__ may run if we raise below
        check_initializer(initializer)
        guards = make_guards(task_timeout, max_worker_memory, retries, retry_on)
        maxtasks = check_max_tasks(maxtasksperchild, "maxtasksperchild")
        self._engine = start_engine(processes, "Number of processes", initializer, initargs,
                                    maxtasks, context, False, guards, cluster)
        self._processes = self._engine.processes

    # ---- single calls ----

    def apply(self, func: Callable[..., T], args: Iterable[Any] = (),
              kwds: Mapping[str, Any] = {}) -> T:
        """Run ``func(*args, **kwds)`` in a worker and wait for its value.

        Args:
            func: The function; it must pickle (a module-level function, or a
                lambda or closure, which go by value with cloudpickle).
            args: Positional arguments.
            kwds: Keyword arguments.

        Returns:
            What *func* returned.

        Raises:
            WorkerCrashedError: The worker died while running it (a subclass
                says more: :class:`~poolguard.TaskTimeoutError`,
                :class:`~poolguard.WorkerMemoryError`).
            ValueError: The pool is closed or terminated.
            Exception: Whatever *func* raised, with the worker's traceback as
                its ``__cause__``.
        """
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable[..., T], args: Iterable[Any] = (),
                    kwds: Mapping[str, Any] = {}, callback: Callback = None,
                    error_callback: Callback = None) -> ApplyResult[T]:
        """Start ``func(*args, **kwds)`` in a worker; return at once.

        Args:
            func: The function (see :meth:`apply`).
            args: Positional arguments.
            kwds: Keyword arguments.
            callback: Called with the value when the call succeeds, on a thread
                of the pool (not the supervisor's: a slow callback does not
                delay crash detection).
            error_callback: Called with the exception when the call fails.

        Returns:
            An :class:`~poolguard.ApplyResult`: ``get()`` the value, or
            ``await`` it.

        Raises:
            ValueError: The pool is closed or terminated.
        """
        engine = self._running()
        result: ApplyResult[T] = ApplyResult(self, func, APPLY, "apply", callback,
                                             error_callback)
        engine.submit_items(result, ((tuple(args), dict(kwds)),), 1)
        return result

    # ---- map family ----

    def map(self, func: Callable[[Any], T], iterable: Iterable[Any],
            chunksize: Optional[int] = None, *, checkpoint: CheckpointArg = None,
            progress: ProgressArg = None) -> List[T]:
        """Apply *func* to each item of *iterable* in the workers; return the list of values.

        As ``multiprocessing.Pool.map``: the items go in chunks, the values
        come back in input order, and the call fails at the first failed
        chunk.  A worker that dies fails the call with
        :class:`~poolguard.WorkerCrashedError` naming the item it ran
        (``exc.task.item``), instead of hanging.

        Args:
            func: A function of one argument (see :meth:`apply`).
            iterable: The items; read whole before the first is sent.
            chunksize: Items sent to a worker at once; by default about four
                chunks per worker.
            checkpoint: A directory (or a :class:`~poolguard.Checkpoint`)
                where each item's result is kept: a call made again after a
                crash or an interruption runs only the items not yet done.
            progress: ``True`` for a progress bar (tqdm when installed, else
                a line of text), a tqdm bar to update, or a callable given a
                :class:`poolguard.progress.ProgressInfo` about 10 times a
                second and once at the end.  Counts the deaths too.

        Returns:
            The values, in the order of *iterable*.

        Raises:
            WorkerCrashedError: A worker died running an item.
            ValueError: The pool is closed, or *chunksize* is below 1.
            Exception: The first exception an item raised.
        """
        return self._map_async(func, iterable, chunksize, MAP, "map",
                               checkpoint=checkpoint, progress=progress).get()

    def map_async(self, func: Callable[[Any], T], iterable: Iterable[Any],
                  chunksize: Optional[int] = None, callback: Callback = None,
                  error_callback: Callback = None, *, checkpoint: CheckpointArg = None,
                  progress: ProgressArg = None) -> MapResult[T]:
        """As :meth:`map`, returning at once.

        Args:
            func: A function of one argument.
            iterable: The items.
            chunksize: Items sent to a worker at once (see :meth:`map`).
            callback: Called with the list of values once all succeeded.
            error_callback: Called with the first error.
            checkpoint: A directory (or a :class:`~poolguard.Checkpoint`)
                where each item's result is kept: a call made again after a
                crash or an interruption runs only the items not yet done.
            progress: ``True`` for a progress bar (tqdm when installed, else
                a line of text), a tqdm bar to update, or a callable given a
                :class:`poolguard.progress.ProgressInfo` about 10 times a
                second and once at the end.  Counts the deaths too.

        Returns:
            A :class:`~poolguard.MapResult` whose ``get()`` is the list.

        Raises:
            ValueError: The pool is closed, or *chunksize* is below 1.
        """
        return self._map_async(func, iterable, chunksize, MAP, "map", callback,
                               error_callback, checkpoint, progress)

    def starmap(self, func: Callable[..., T], iterable: Iterable[Iterable[Any]],
                chunksize: Optional[int] = None, *, checkpoint: CheckpointArg = None,
                progress: ProgressArg = None) -> List[T]:
        """As :meth:`map`, each item being the arguments: ``func(*item)``.

        Args:
            func: The function.
            iterable: Tuples (or other iterables) of arguments.
            chunksize: Items sent to a worker at once (see :meth:`map`).
            checkpoint: A directory (or a :class:`~poolguard.Checkpoint`)
                where each item's result is kept: a call made again after a
                crash or an interruption runs only the items not yet done.
            progress: ``True`` for a progress bar (tqdm when installed, else
                a line of text), a tqdm bar to update, or a callable given a
                :class:`poolguard.progress.ProgressInfo` about 10 times a
                second and once at the end.  Counts the deaths too.

        Returns:
            The values, in input order.

        Raises:
            WorkerCrashedError: A worker died running an item.
            ValueError: The pool is closed, or *chunksize* is below 1.
            Exception: The first exception an item raised.
        """
        return self._map_async(func, iterable, chunksize, STARMAP, "starmap",
                               checkpoint=checkpoint, progress=progress).get()

    def starmap_async(self, func: Callable[..., T], iterable: Iterable[Iterable[Any]],
                      chunksize: Optional[int] = None, callback: Callback = None,
                      error_callback: Callback = None, *, checkpoint: CheckpointArg = None,
                      progress: ProgressArg = None) -> MapResult[T]:
        """As :meth:`starmap`, returning at once.

        Args:
            func: The function.
            iterable: Tuples of arguments.
            chunksize: Items sent to a worker at once (see :meth:`map`).
            callback: Called with the list of values once all succeeded.
            error_callback: Called with the first error.
            checkpoint: A directory (or a :class:`~poolguard.Checkpoint`)
                where each item's result is kept: a call made again after a
                crash or an interruption runs only the items not yet done.
            progress: ``True`` for a progress bar (tqdm when installed, else
                a line of text), a tqdm bar to update, or a callable given a
                :class:`poolguard.progress.ProgressInfo` about 10 times a
                second and once at the end.  Counts the deaths too.

        Returns:
            A :class:`~poolguard.MapResult` whose ``get()`` is the list.

        Raises:
            ValueError: The pool is closed, or *chunksize* is below 1.
        """
        return self._map_async(func, iterable, chunksize, STARMAP, "starmap", callback,
                               error_callback, checkpoint, progress)

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any],
                   chunksize: Optional[int], kind: int, call: str, callback: Callback = None,
                   error_callback: Callback = None, checkpoint: CheckpointArg = None,
                   progress: ProgressArg = None) -> MapResult[Any]:
        engine = self._running()
        check_progress(progress)
        func = checkpointed(func, checkpoint)
        items = iterable if isinstance(iterable, (list, tuple, range)) else list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._processes * 4)
            chunksize += bool(extra)
        _check_chunksize(chunksize if items else 1)
        result: MapResult[Any] = MapResult(self, func, kind, call, len(items), callback,
                                      error_callback,
                                      make_progress(progress, engine, call, func, len(items)))
        if items:
            engine.submit_items(result, items, chunksize)
        return result

    def imap(self, func: Callable[[Any], T], iterable: Iterable[Any],
             chunksize: Optional[int] = 1, *, checkpoint: CheckpointArg = None,
             progress: ProgressArg = None) -> IMapIterator[T]:
        """Apply *func* to each item lazily; iterate over the values in input order.

        A lazy *iterable* is read on a thread of its own as results are
        consumed, so an endless one works.  A failed chunk raises its error
        once, at its place, and iteration goes on after it.

        Args:
            func: A function of one argument.
            iterable: The items (a list, or any iterable, even endless).
            chunksize: Items sent to a worker at once (1 by default).
            checkpoint: A directory (or a :class:`~poolguard.Checkpoint`)
                where each item's result is kept: a call made again after a
                crash or an interruption runs only the items not yet done.
            progress: ``True`` for a progress bar (tqdm when installed, else
                a line of text), a tqdm bar to update, or a callable given a
                :class:`poolguard.progress.ProgressInfo` about 10 times a
                second and once at the end.  Counts the deaths too.

        Returns:
            An :class:`~poolguard.IMapIterator`: iterate it (or ``async for``),
            or call ``next(timeout)``.

        Raises:
            ValueError: The pool is closed, or *chunksize* is below 1.
        """
        return self._imap(func, iterable, chunksize, True, checkpoint, progress)

    def imap_unordered(self, func: Callable[[Any], T], iterable: Iterable[Any],
                       chunksize: Optional[int] = 1, *, checkpoint: CheckpointArg = None,
                       progress: ProgressArg = None) -> IMapIterator[T]:
        """As :meth:`imap`, the values coming as they are done, in any order.

        Args:
            func: A function of one argument.
            iterable: The items.
            chunksize: Items sent to a worker at once (1 by default).
            checkpoint: A directory (or a :class:`~poolguard.Checkpoint`)
                where each item's result is kept: a call made again after a
                crash or an interruption runs only the items not yet done.
            progress: ``True`` for a progress bar (tqdm when installed, else
                a line of text), a tqdm bar to update, or a callable given a
                :class:`poolguard.progress.ProgressInfo` about 10 times a
                second and once at the end.  Counts the deaths too.

        Returns:
            An :class:`~poolguard.IMapIterator`.

        Raises:
            ValueError: The pool is closed, or *chunksize* is below 1.
        """
        return self._imap(func, iterable, chunksize, False, checkpoint, progress)

    def _imap(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: Any,
              ordered: bool, checkpoint: CheckpointArg,
              progress: ProgressArg) -> IMapIterator[Any]:
        engine = self._running()
        check_progress(progress)
        func = checkpointed(func, checkpoint)
        _check_chunksize(chunksize)
        call = "imap" if ordered else "imap_unordered"
        known = len(iterable) if isinstance(iterable, (list, tuple, range)) else None
        result: IMapIterator[Any] = IMapIterator(self, func, MAP, call, ordered,
                                            make_progress(progress, engine, call, func, known))
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
        """The pool itself; leaving the ``with`` block calls :meth:`terminate`, as ``multiprocessing.Pool`` does.
        """
        self._running()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Terminate the pool (its unfinished tasks fail with PoolTerminatedError).
        """
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


    def _running(self) -> EngineSurface:
        engine = self._engine
        if engine is None or engine.state != "running":
            raise ValueError("Pool not running")
        return engine


def _check_chunksize(chunksize: Any) -> None:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")


def _produce(engine: EngineSurface, job: IMapIterator[Any], items: Iterator[Any], chunksize: int,
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

