"""What the fronts may use of an engine: the local one (supervisor.py) and
the cluster's (poolguard/cluster/engine.py) both offer exactly this."""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Protocol, Sequence

from ..options import Guards
from .inbox import Inbox
from .jobs import Job
from .workers import WorkerStatus


class EngineSurface(Protocol):
    processes: int
    guards: Guards
    finish_at_exit: bool
    inbox: Inbox           # pending units, state, open calls: shared with the fronts

    def encode_function(self, func: Callable[..., Any]) -> bytes: ...

    def main_by_value(self, func: Callable[..., Any]) -> bool: ...

    def submit_items(self, job: Job, items: Sequence[Any], chunksize: int, start: int = 0,
                     func_bytes: Optional[bytes] = None, open_call: bool = False) -> None: ...

    def submit_elastic(self, job: Job, items: Sequence[Any]) -> None: ...

    def close(self) -> None: ...

    def terminate(self) -> None: ...

    def join(self, timeout: Optional[float] = None) -> None: ...

    def call_soon(self, func: Callable[..., Any], *args: Any) -> None: ...

    @property
    def state(self) -> str: ...

    @property
    def pids(self) -> List[int]: ...

    def units_in_flight(self) -> int: ...

    def status(self) -> List[WorkerStatus]: ...

    def dump_stacks(self) -> None: ...
