"""``poolguard.ProcessPoolExecutor``: the ``concurrent.futures`` front on the engine."""
from __future__ import annotations

import threading
from concurrent.futures import Executor, Future
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional,
                    Sequence, Tuple, TypeVar, Union)

from .executor_maps import ExecutorMaps
from .call_future import StoppableFuture
from .executor_options import ExecutorOptions
from .shared import WorkerReports, guards_for_call, start_engine
from ..engine import EngineSurface, Job, PoolState, Unit
from ..engine.at_exit import interpreter_exiting
from ..wire.messages import APPLY
from .executor_calls import FutureJob, SubmitBatch
from ..options import (CallGuards, Guards, check_initializer, check_max_tasks,
                      make_guards)


if TYPE_CHECKING:
    from typing_extensions import Unpack


T = TypeVar("T")


class ProcessPoolExecutor(ExecutorMaps, Executor, WorkerReports):
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

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> "StoppableFuture[T]":
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
            A :class:`~poolguard.StoppableFuture` of the value: a
            ``concurrent.futures.Future`` whose ``stop()`` ends the call
            even while it runs (``cancel()`` does not).

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
                guards: Optional[Guards]) -> "StoppableFuture[T]":
        future: StoppableFuture[T] = StoppableFuture()
        future._engine = self._engine
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

    def _submit_overridden(self) -> bool:
        return "submit" in vars(self) or type(self).submit is not ProcessPoolExecutor.submit

    def _running(self) -> EngineSurface:
        engine = self._engine
        if interpreter_exiting():
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if engine is None or engine.state is not PoolState.RUNNING:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return engine

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
        the executor is shut down, the futures no worker has started are
        cancelled, each worker gets SIGTERM, and the futures of the calls
        that were running fail with :class:`~poolguard.PoolTerminatedError`.
        Where it differs from 3.14's: a worker still alive 1 s after SIGTERM
        gets SIGKILL, and this returns once the workers are gone (3.14's
        returns at once, and fails running calls with ``BrokenProcessPool``)."""
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
            self._cancel_pending(engine, 0)
            engine.terminate(kill)
        engine.join()

    def _cancel_pending(self, engine: EngineSurface, keep: Optional[int] = None) -> None:
        """Cancel what no worker has taken, but for *keep* units (None: one
        per idle worker: the standard executor has already handed that many
        to its call queue when shutdown() comes right after submit(), and
        runs them)."""
        units = engine.inbox.take_pending()
        if keep is None:
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
        if engine is not None and engine.state is PoolState.RUNNING:
            engine.close()   # the standard executor finishes queued work too
