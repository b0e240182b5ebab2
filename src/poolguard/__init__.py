"""poolguard: process pools that survive the death of a worker.

The package is laid out by where code runs:

* :mod:`poolguard.fronts` -- in the caller's threads: :class:`Pool` (a drop-in
  ``multiprocessing.Pool``), :class:`ProcessPoolExecutor` (a
  ``concurrent.futures.Executor``) and what their calls return;
* :mod:`poolguard.engine` -- in the pool's one supervisor thread: queues,
  dispatch, deaths, guards; how workers are started (``engine.launch``);
* :mod:`poolguard.worker` -- in the processes the pool starts: the worker's
  loop, and the zygote that forks workers under fork;
* :mod:`poolguard.wire` -- on both sides: what crosses the pipes, and large
  arguments outside them;
* beside them: :mod:`poolguard.diagnosis` (why a worker died),
  :mod:`poolguard.checkpoint` (resumable steps), :mod:`poolguard.cluster`
  (the fronts on dask.distributed), ``poolguard.cli`` (``python -m poolguard``).
"""
from typing import TYPE_CHECKING, Any

from .errors import (PoolguardError, PoolTerminatedError, PoolThrottledError,
                     ResultDecodingError, ResultEncodingError, SoftTimeoutError,
                     TaskDecodeError, TaskInfo, TaskStoppedError, TaskTimeoutError,
                     UnpicklableTaskError, WorkerCrashedError, WorkerInitError,
                     WorkerMemoryError, WorkerStoppedWarning, HelperDiedWarning)
from .engine.reports import PoolStats, WorkerStats, WorkerStatus
from .fronts.executor import ProcessPoolExecutor
from .fronts.call_future import StoppableFuture
from .fronts.executor_options import ExecutorOptions
from .fronts.pool import Pool
from .fronts.pool_calls import ApplyResult, AsyncResult, MapResult
from .fronts.pool_imap import IMapIterator
from .fronts.reusable import get_executor

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, CheckpointKeyError, CheckpointWarning

__all__ = [
    "Pool", "ProcessPoolExecutor", "get_executor", "ExecutorOptions", "StoppableFuture",
    "ApplyResult", "AsyncResult", "MapResult", "IMapIterator",
    "PoolguardError", "WorkerCrashedError", "WorkerInitError", "UnpicklableTaskError",
    "PoolTerminatedError", "PoolThrottledError", "TaskTimeoutError", "WorkerMemoryError",
    "ResultEncodingError", "ResultDecodingError", "TaskDecodeError", "TaskStoppedError",
    "SoftTimeoutError",
    "WorkerStoppedWarning", "HelperDiedWarning", "TaskInfo", "WorkerStatus", "PoolStats", "WorkerStats", "Checkpoint", "CheckpointWarning",
    "CheckpointKeyError",
]
__version__ = "0.1.0"

# Errors and warnings print (and pickle) as poolguard.WorkerCrashedError, not
# poolguard.errors.WorkerCrashedError: where users import them from.
for _name in __all__:
    _obj = globals().get(_name)
    if isinstance(_obj, type) and issubclass(_obj, BaseException):
        _obj.__module__ = __name__
del _name, _obj

_LAZY = {"Checkpoint": "checkpoint", "CheckpointWarning": "checkpoint",
         "CheckpointKeyError": "checkpoint"}


def __getattr__(name: str) -> Any:
    """What most programs never use is imported on first use (import time)."""
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
