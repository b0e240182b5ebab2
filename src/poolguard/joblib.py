"""A joblib parallel backend on poolguard: ``import poolguard.joblib`` registers
``"poolguard"``, so that ``joblib.Parallel`` and scikit-learn's ``n_jobs``
run on a :class:`poolguard.ProcessPoolExecutor`::

    import joblib, poolguard.joblib
    with joblib.parallel_config(backend="poolguard", n_jobs=4, retries=1):
        GridSearchCV(estimator, grid, n_jobs=4).fit(X, y)

A worker that dies fails its batch with :class:`poolguard.WorkerCrashedError`
naming the call (``task.function``, ``task.arguments``, and ``task.item``: its
index among the tasks the ``Parallel`` call was given), instead of joblib's
``TerminatedWorkerError`` for the whole call.  Backend options are the
executor's: ``task_timeout``, ``max_worker_memory``, ``retries``,
``retry_on``, ``mp_context``, ``initializer``, ``initargs``,
``max_tasks_per_child``.

joblib is an optional dependency: ``import poolguard`` never imports it.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Callable, List, Optional, Tuple

import cloudpickle
import joblib
from joblib._parallel_backends import (AutoBatchingMixin, FallbackToBackend,
                                       ParallelBackendBase, SequentialBackend)
from joblib.parallel import BatchedCalls, register_parallel_backend

from .engine import EngineSurface
from .naming import function_name
from .naming import call_text
from .errors import TaskInfo
from .fronts.executor import ProcessPoolExecutor
from .fronts.executor_calls import FutureJob
from .options import resolve_workers
from .wire.messages import STARMAP

__all__ = ["PoolguardBackend", "register"]

# Keywords shown first and whole when a call is named: scikit-learn's
# _fit_and_score takes the candidate's parameters as `parameters`.
_WHOLE = ("parameters",)

_OPTIONS = ("task_timeout", "max_worker_memory", "retries", "retry_on", "mp_context",
            "initializer", "initargs", "max_tasks_per_child")


def _run_call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[Any, Any],
              nested: tuple[Any, ...]) -> Any:
    """In the worker: one call of a joblib batch, under the nested backend
    joblib chose for calls made from inside it (as its own batches do)."""
    backend, n_jobs = nested
    with joblib.parallel_config(backend=backend, n_jobs=n_jobs):
        return func(*args, **kwargs)


class _ByValue:
    """A function of ``__main__`` the workers do not have: sent with cloudpickle."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func

    def __reduce__(self) -> Tuple[Callable[..., Any], tuple[Any, ...]]:
        return cloudpickle.loads, (cloudpickle.dumps(self.func),)


class _BatchJob(FutureJob):
    """One joblib batch: a future whose value is the list of its calls' results.
    A crash names the call inside the batch that was running."""

    def __init__(self, engine: EngineSurface, future: Future[Any], first: int, count: int) -> None:
        super().__init__(engine, _run_call, STARMAP, "joblib.Parallel", future, 0, count)
        self.first = first   # index of the batch's first call in the Parallel call

    def describe_item(self, item: Any, index: int) -> TaskInfo:
        func, args, kwargs, _ = item
        # A grid search's candidate first among the keywords and whole: the
        # one thing its user needs, never cut off behind the others.
        return TaskInfo(function_name(func), call_text(args, kwargs, _WHOLE), self.first + index,
                        self.call)


class PoolguardBackend(AutoBatchingMixin, ParallelBackendBase):   # type: ignore[misc]
    """joblib's process backend contract, on a poolguard executor made for
    each ``Parallel`` call (or ``with Parallel(...)`` block).

    joblib makes it from ``parallel_config(backend="poolguard", ...)``; the
    methods are joblib's backend interface, called by joblib, not by users.

    Args:
        nesting_level: joblib's nesting depth (set by joblib).
        inner_max_num_threads: Threads each worker's native libraries may
            use (set by joblib from ``parallel_config``).
        **options: The executor's options: ``task_timeout``,
            ``max_worker_memory``, ``retries``, ``retry_on``, ``mp_context``,
            ``initializer``, ``initargs``, ``max_tasks_per_child``.

    Raises:
        TypeError: An option that is not one of those.
    """

    supports_retrieve_callback = True
    supports_timeout = True
    default_n_jobs = 1

    def __init__(self, nesting_level: Optional[int] = None,
                 inner_max_num_threads: Optional[int] = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise TypeError(f"poolguard backend: unknown option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(_OPTIONS)}")
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads)
        self._options = options
        self._executor: Optional[ProcessPoolExecutor] = None
        self._workers = 0
        self._lock = threading.Lock()
        self._dispatched = 0   # calls handed out in the current Parallel call

    def effective_n_jobs(self, n_jobs: Optional[int]) -> int:
        """Workers for *n_jobs*: negative counts back from the CPU count
        (-1: all), ``None`` is 1.  Raises ValueError for 0."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            return max(resolve_workers(None, "n_jobs") + 1 + n_jobs, 1)
        return resolve_workers(n_jobs, "n_jobs")

    def configure(self, n_jobs: Optional[int] = 1, parallel: Any = None, prefer: Any = None,
                  require: Any = None, context: Any = None, **joblib_options: Any) -> int:
        """Make (or keep) the executor for a ``Parallel`` call; return its
        worker count (with one worker, joblib's sequential backend runs the
        calls in the caller instead).  *parallel*, *prefer*, *require*: joblib's; *context*:
        the start method.  *joblib_options* (``max_nbytes``, ``mmap_mode``,
        ``temp_folder``, ``verbose``) are for joblib's memory mapping, which
        poolguard does not need: large buffers already travel outside the
        pipes."""
        workers = self.effective_n_jobs(n_jobs)
        if workers == 1:   # in the caller's process, as joblib's process backends do
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        if self._executor is not None and self._workers != workers:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._executor is None:
            options = dict(self._options)
            options.setdefault("mp_context", context)
            self._executor = ProcessPoolExecutor(workers, **options)
            self._workers = workers
        return workers

    def start_call(self) -> None:
        """A ``Parallel`` call begins: its tasks are counted from 0 again
        (``task.item`` in a crash's error)."""
        self._dispatched = 0

    def submit(self, func: Any,
               callback: Optional[Callable[[Future[Any]], Any]] = None) -> Future[Any]:
        """Send one joblib batch (*func*, its calls in ``func.items``) to a
        worker; *callback* is called with the future when it is done.
        Raises RuntimeError when the backend is not configured."""
        executor = self._executor
        if executor is None:
            raise RuntimeError("the poolguard backend is not configured (or was terminated)")
        future: Future[Any] = Future()
        with self._lock:
            first = self._dispatched
            self._dispatched += len(func.items)
        nested = (func._backend, func._n_jobs)

        def build(engine: EngineSurface) -> Tuple[_BatchJob, list[Any]]:
            calls = [self._prepare(engine, f, args, kwargs, nested)
                     for f, args, kwargs in func.items]
            return _BatchJob(engine, future, first, len(calls)), calls

        if callback is not None:
            future.add_done_callback(callback)
        executor._queue(future, build)
        return future

    @staticmethod
    def _prepare(engine: EngineSurface, func: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[Any, Any], nested: tuple[Any, ...]
                 ) -> Tuple[Any, tuple[Any, ...], dict[Any, Any], tuple[Any, ...]]:
        if getattr(func, "__module__", None) == "__main__" and engine.main_by_value(func):
            func = _ByValue(func)   # type: ignore[assignment]
        return func, tuple(args), dict(kwargs), nested

    def retrieve_result_callback(self, future: Future[Any]) -> List[Any]:
        """The batch's values (or its error, raised) from its *future*."""
        values: List[Any] = future.result()
        return values

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A call failed: what is still running is of no use; stop it, and
        make a fresh executor if *ensure_ready*."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.terminate_workers()
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)

    def terminate(self) -> None:
        """End of a Parallel call: the workers go.  Several calls share them
        in a ``with Parallel(...) as parallel:`` block, as with joblib's
        own backends."""
        self.reset_batch_stats()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


def _batch(*args: Any) -> Any:
    """A joblib batch arriving in a worker of another backend (loky's,
    multiprocessing's): unpickling it there imported this module, so the
    ``"poolguard"`` name is known to the calls the batch runs."""
    return BatchedCalls(*args)


def _reduce_batch(batch: Any) -> Tuple[Any, ...]:
    reduced: Tuple[Any, ...] = _joblib_reduce_batch(batch)
    return (_batch,) + reduced[1:] if reduced[0] is BatchedCalls else reduced


def register() -> None:
    """Register the ``"poolguard"`` backend (done on import), here and in
    the workers of joblib's other process backends started from here: a
    backend name is known only to processes that registered it, and a
    task running under loky may name ``"poolguard"`` for its own
    ``Parallel``.  The batches this process sends them import this module
    where they are unpickled."""
    register_parallel_backend("poolguard", PoolguardBackend)
    if BatchedCalls.__reduce__ is not _reduce_batch:
        BatchedCalls.__reduce__ = _reduce_batch


_joblib_reduce_batch = BatchedCalls.__reduce__
register()
