"""``poolguard.get_executor()``: one executor per process that notebooks and
libraries share instead of each starting (and forgetting to stop) its own.

Rules, all under one lock so that any number of threads may ask at once:

- The same request (or ``max_workers=None`` with the same options) gets the
  executor already there, whatever its size.
- A request for another worker count or other options gets a new executor,
  which later requests share.  The old one is not shut down under the feet
  of whoever holds it: it goes on serving its holders, and once none is
  left it closes as any dropped executor does (the work submitted to it
  completes, then its workers exit).
- One that was shut down, or whose engine ended, is never handed out: a new
  one takes its place.  A worker's death does not count: poolguard's
  executor survives it (only that task fails).
- After ``os.fork()`` the child does not use its parent's executor (whose
  workers are not its children): it makes its own.  (Fork only while no
  pool is starting workers: as with any thread, a lock one of ours holds
  at the fork stays held in the child.)
"""
from __future__ import annotations

import os
import threading
from typing import Any, Dict, List, Optional, Tuple

from ..engine import PoolState
from ..engine.at_exit import interpreter_exiting
from .executor import ProcessPoolExecutor

__all__ = ["get_executor"]

_lock = threading.Lock()
# (the executor, the pid that made it, its options)
_current: Optional[Tuple[ProcessPoolExecutor, int, Dict[str, Any]]] = None
# A parent's executor in a forked child: kept, never collected there, since
# closing it would act on the parent's engine state copied into the child.
_inherited: List[ProcessPoolExecutor] = []


def get_executor(max_workers: Optional[int] = None, **options: Any) -> ProcessPoolExecutor:
    """The process's shared :class:`~poolguard.ProcessPoolExecutor`, made on
    first use and remade when the request changes or it was shut down.

    Args:
        max_workers: Worker count.  ``None``: the executor already there
            (if its options match), else one worker per usable CPU.  Another
            count than the current executor's replaces it.
        **options: The executor's other arguments (``mp_context``,
            ``initializer``, ``initargs``, ``task_timeout``,
            ``max_worker_memory``, ``retries``, ``retry_on``,
            ``max_tasks_per_child``); options that differ from the current
            executor's replace it.

    Returns:
        A running executor.  Do not shut it down if others may share it;
        ask again rather than keep it, to share the one current then.

    Raises:
        RuntimeError: The interpreter is exiting.
        ValueError, TypeError: As :class:`~poolguard.ProcessPoolExecutor`
            raises for a bad argument.
    """
    global _current
    if interpreter_exiting():
        raise RuntimeError("cannot make an executor during interpreter shutdown")
    with _lock:
        kept = _current
        if kept is not None and _serves(kept, max_workers, options):
            return kept[0]
        # Made before the old one is let go: a bad argument leaves it in place.
        executor = ProcessPoolExecutor(max_workers, **options)
        _current = (executor, os.getpid(), dict(options))
        if kept is not None and kept[1] != os.getpid():
            _inherited.append(kept[0])
    # The replaced one, if no one else holds it, is collected here: closed,
    # its submitted work completes, then its workers exit.
    del kept
    return executor


def _serves(kept: Tuple[ProcessPoolExecutor, int, Dict[str, Any]],
            max_workers: Optional[int], options: Dict[str, Any]) -> bool:
    executor, pid, their_options = kept
    if pid != os.getpid() or not _running(executor):
        return False
    if max_workers is not None and max_workers != executor._max_workers:
        return False
    return _same_options(their_options, options)


def _running(executor: ProcessPoolExecutor) -> bool:
    engine = executor._engine
    return engine is not None and engine.state is PoolState.RUNNING


def _same_options(old: Dict[str, Any], new: Dict[str, Any]) -> bool:
    if old.keys() != new.keys():
        return False
    try:
        return all(old[key] is new[key] or bool(old[key] == new[key]) for key in old)
    except Exception:   # an option whose comparison fails (an array in initargs)
        return False
