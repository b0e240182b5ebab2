"""What both fronts (pool.py, executor.py) share: how their engine is
made, and the reports on their workers."""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from ..engine import Engine, EngineSurface
from ..engine.reports import PoolStats, WorkerStatus
from ..options import Guards, call_guards, resolve_context, resolve_workers


def start_engine(processes: Optional[int], what: str,
                 initializer: Optional[Callable[..., object]], initargs: Iterable[Any],
                 maxtasks: Optional[int], context: Any, finish_at_exit: bool, guards: Guards,
                 cluster: Any) -> EngineSurface:
    """The engine of a front: on this machine, or on the dask cluster given
    as *cluster* (poolguard.cluster is imported only then).  *what* names
    *processes* in its errors."""
    if cluster is not None:
        from ..cluster import make_engine
        return make_engine(cluster, None if processes is None else
                           resolve_workers(processes, what),
                           initializer, initargs, maxtasks, context, finish_at_exit, guards)
    return Engine(resolve_workers(processes, what), initializer, initargs, maxtasks,
                  resolve_context(context), finish_at_exit=finish_at_exit, guards=guards)


def guards_for_call(engine: EngineSurface, given: Mapping[str, Any]) -> Optional[Guards]:
    """The guards of one call (None: the pool's); TypeError or ValueError
    for a bad one, at the call."""
    guards = call_guards(engine.guards, given)
    if guards is not None and not engine.per_call_guards:
        raise ValueError("a call's own guards are not available on a cluster: "
                         "set them on the pool")
    return guards


class WorkerReports:
    """``pids``, ``status()``, ``stats()`` and ``dump_stacks()`` of a front
    over ``_engine``."""

    _engine: Optional[EngineSurface]

    @property
    def pids(self) -> List[int]:
        """Pids of the live worker processes (a snapshot).  The workers are
        started in the background after the pool is made: right after it,
        this waits until each has been started (not for its initializer;
        10 s at most; not at all when they cannot start)."""
        return self._engine.pids if self._engine is not None else []

    def status(self) -> List[WorkerStatus]:
        """What each worker is doing now: pid, state ("starting", "idle",
        "busy", "stopped"), task, seconds on it, RSS.  For a stuck pool with
        no task_timeout: ``print(*pool.status(), sep="\\n")``."""
        return self._engine.status() if self._engine is not None else []

    def stats(self) -> PoolStats:
        """What each worker slot did since the pool began: seconds busy,
        idle and starting, tasks, crashes, replacements, peak RSS
        (``print(pool.stats())`` for one line of totals).  On a cluster
        (``cluster=``) there are no figures: ``workers`` is empty."""
        return self._engine.stats() if self._engine is not None else PoolStats((), 0.0)

    def helper_pids(self) -> Dict[str, int]:
        """The pool's own helper processes, by name: under fork its
        ``"zygote"`` (which forks the workers) and that one's ``"standby"``;
        under forkserver the ``"fork server"`` (one per process, shared by
        its pools); none under spawn or on a cluster.  Those exist now."""
        return self._engine.helper_pids() if self._engine is not None else {}

    def dump_stacks(self) -> None:
        """Make each worker print every thread's Python stack to its stderr
        (the tasks go on): where a task is stuck."""
        if self._engine is not None:
            self._engine.dump_stacks()
