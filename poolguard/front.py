"""What both fronts (pool.py, executor.py) share: the reports on their workers."""
from __future__ import annotations

from typing import List, Optional

from .engine import EngineSurface
from .engine.workers import WorkerStatus


class WorkerReports:
    """``pids``, ``status()`` and ``dump_stacks()`` of a front over ``_engine``."""

    _engine: Optional[EngineSurface]

    @property
    def pids(self) -> List[int]:
        """Pids of the live worker processes (a snapshot)."""
        return self._engine.pids if self._engine is not None else []

    def status(self) -> List[WorkerStatus]:
        """What each worker is doing now: pid, state ("starting", "idle",
        "busy", "stopped"), task, seconds on it, RSS.  For a stuck pool with
        no task_timeout: ``print(*pool.status(), sep="\\n")``."""
        return self._engine.status() if self._engine is not None else []

    def dump_stacks(self) -> None:
        """Make each worker print every thread's Python stack to its stderr
        (the tasks go on): where a task is stuck."""
        if self._engine is not None:
            self._engine.dump_stacks()
