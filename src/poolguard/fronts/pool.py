"""``poolguard.Pool``: the ``multiprocessing.Pool`` front on the engine.

Here the pool is made, runs single calls (``apply``) and ends; its calls
over many items (``map``, ``imap`` and the rest) are pool_maps.py's, and
what they all return is pool_calls.py's."""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, TypeVar, Union

from .shared import WorkerReports, guards_for_call, start_engine
from ..engine import EngineSurface, PoolState
from ..options import CallGuards, check_initializer, check_max_tasks, make_guards
from .pool_maps import PoolMaps
from .pool_calls import ApplyResult, AsyncResult, Callback, MapResult
from .pool_imap import IMapIterator
from ..wire.messages import APPLY

__all__ = ["Pool", "ApplyResult", "AsyncResult", "MapResult", "IMapIterator"]

if TYPE_CHECKING:
    from multiprocessing.pool import Pool as _StdlibPool
    from typing_extensions import Unpack
else:
    _StdlibPool = object

T = TypeVar("T")


class Pool(WorkerReports, PoolMaps, _StdlibPool):
    """A ``multiprocessing.Pool`` that survives the death of its workers.

    When a worker dies (SIGKILL, the OOM killer, ``os._exit``, a segfault) the
    task it was running fails with :class:`poolguard.WorkerCrashedError`, the
    worker is replaced, and every other task goes on.

    Guards (keyword-only): ``task_timeout`` (seconds an item may run; past it
    the worker is stopped and the task fails with ``TaskTimeoutError``),
    ``max_worker_memory`` (bytes or "2GiB"; a worker above it is killed and
    the task fails with ``WorkerMemoryError``), ``retries`` (re-runs of a task
    whose worker died), ``retry_on`` (which deaths: "crash", "oom",
    "timeout", "memory"; all by default) and ``soft_timeout`` (seconds
    after which :class:`~poolguard.SoftTimeoutError` is raised in the task,
    for it to clean up).  Each call may set its own (keyword-only
    arguments of every method; see :ref:`guards`).

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
        soft_timeout: Seconds one item may run before
            :class:`~poolguard.SoftTimeoutError` is raised in it, so that it
            can clean up; shorter than *task_timeout*, which still stops it.
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
                 retry_on: Optional[Iterable[str]] = None, cluster: Any = None,
                 soft_timeout: Optional[float] = None) -> None:
        self._engine: Optional[EngineSurface] = None   # __del__ may run if we raise below
        check_initializer(initializer)
        guards = make_guards(task_timeout, max_worker_memory, retries, retry_on, soft_timeout)
        maxtasks = check_max_tasks(maxtasksperchild, "maxtasksperchild")
        self._engine = start_engine(processes, "Number of processes", initializer, initargs,
                                    maxtasks, context, False, guards, cluster)
        self._processes = self._engine.processes

    # ---- single calls ----

    def apply(self, func: Callable[..., T], args: Iterable[Any] = (),
              kwds: Mapping[str, Any] = {}, **guards: Unpack[CallGuards]) -> T:
        """Run ``func(*args, **kwds)`` in a worker and wait for its value.

        Args:
            func: The function; it must pickle (a module-level function, or a
                lambda or closure, which go by value with cloudpickle).
            args: Positional arguments.
            kwds: Keyword arguments.
            **guards: This call's own guards, replacing the pool's for it
                alone (see :meth:`map`).

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
        return self.apply_async(func, args, kwds, **guards).get()

    def apply_async(self, func: Callable[..., T], args: Iterable[Any] = (),
                    kwds: Mapping[str, Any] = {}, callback: Callback = None,
                    error_callback: Callback = None,
                    **guards: Unpack[CallGuards]) -> ApplyResult[T]:
        """Start ``func(*args, **kwds)`` in a worker; return at once.

        Args:
            func: The function (see :meth:`apply`).
            args: Positional arguments.
            kwds: Keyword arguments.
            callback: Called with the value when the call succeeds, on a thread
                of the pool (not the supervisor's: a slow callback does not
                delay crash detection).
            error_callback: Called with the exception when the call fails.
            **guards: This call's own guards, replacing the pool's for it
                alone (see :meth:`map`).

        Returns:
            An :class:`~poolguard.ApplyResult`: ``get()`` the value, or
            ``await`` it, or ``stop()`` it.

        Raises:
            ValueError: The pool is closed or terminated, or a bad guard.
            TypeError: A guard of the wrong type, or an unknown keyword.
        """
        engine = self._running()
        own = guards_for_call(engine, guards)
        result: ApplyResult[T] = ApplyResult(self, func, APPLY, "apply", callback,
                                             error_callback)
        result.guards = own
        engine.submit_items(result, ((tuple(args), dict(kwds)),), 1)
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
        if engine is None or engine.state is PoolState.RUNNING:
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
        if engine is not None and engine.state is PoolState.RUNNING:
            warnings.warn(f"unclosed running pool {self!r}", ResourceWarning, stacklevel=2,
                          source=self)
            engine.terminate()

    def __repr__(self) -> str:
        state = self._engine.state if self._engine is not None else "unstarted"
        return f"<{type(self).__module__}.{type(self).__qualname__} state={state} " \
               f"pool_size={getattr(self, '_processes', '?')}>"
