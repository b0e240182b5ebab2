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
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable[..., T], args: Iterable[Any] = (),
                    kwds: Mapping[str, Any] = {}, callback: Callback = None,
                    error_callback: Callback = None) -> ApplyResult[T]:
        engine = self._running()
        result: ApplyResult[T] = ApplyResult(self, func, APPLY, "apply", callback,
                                             error_callback)
        engine.submit_items(result, ((tuple(args), dict(kwds)),), 1)
        return result

    # ---- map family ----

    def map(self, func: Callable[[Any], T], iterable: Iterable[Any],
            chunksize: Optional[int] = None, *, checkpoint: CheckpointArg = None,
            progress: ProgressArg = None) -> List[T]:
        return self._map_async(func, iterable, chunksize, MAP, "map",
                               checkpoint=checkpoint, progress=progress).get()

    def map_async(self, func: Callable[[Any], T], iterable: Iterable[Any],
                  chunksize: Optional[int] = None, callback: Callback = None,
                  error_callback: Callback = None, *, checkpoint: CheckpointArg = None,
                  progress: ProgressArg = None) -> MapResult[T]:
        return self._map_async(func, iterable, chunksize, MAP, "map", callback,
                               error_callback, checkpoint, progress)

    def starmap(self, func: Callable[..., T], iterable: Iterable[Iterable[Any]],
                chunksize: Optional[int] = None, *, checkpoint: CheckpointArg = None,
                progress: ProgressArg = None) -> List[T]:
        return self._map_async(func, iterable, chunksize, STARMAP, "starmap",
                               checkpoint=checkpoint, progress=progress).get()

    def starmap_async(self, func: Callable[..., T], iterable: Iterable[Iterable[Any]],
                      chunksize: Optional[int] = None, callback: Callback = None,
                      error_callback: Callback = None, *, checkpoint: CheckpointArg = None,
                      progress: ProgressArg = None) -> MapResult[T]:
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
        return self._imap(func, iterable, chunksize, True, checkpoint, progress)

    def imap_unordered(self, func: Callable[[Any], T], iterable: Iterable[Any],
                       chunksize: Optional[int] = 1, *, checkpoint: CheckpointArg = None,
                       progress: ProgressArg = None) -> IMapIterator[T]:
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

