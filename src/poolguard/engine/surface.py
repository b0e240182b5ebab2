"""What the fronts may use of an engine: the local one (supervisor.py) and
the cluster's (poolguard/cluster/engine.py) both offer exactly this, and
share :class:`EngineBase` for the part that is the same."""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from ..options import Guards
from ..wire.pickling import encode_function
from . import at_exit
from .callbacks import CallbackThread
from .guards import GuardKeeper, StopMatch
from .inbox import Inbox, PoolState
from .jobs import Job, Unit
from .reports import PoolStats, WorkerStatus


class EngineSurface(Protocol):
    processes: int
    guards: Guards
    finish_at_exit: bool
    inbox: Inbox           # pending units, state, open calls: shared with the fronts
    batches_submits: bool  # may the executor queue submits in a SubmitBatch?
    streams: bool          # does it run STREAM units (imap's items answered one by one)?
    per_call_guards: bool  # does it apply ``Job.guards``?

    def encode_function(self, func: Callable[..., Any]) -> bytes: ...

    def main_by_value(self, func: Callable[..., Any]) -> bool: ...

    def submit_items(self, job: Job, items: Sequence[Any], chunksize: int, start: int = 0,
                     func_bytes: Optional[bytes] = None, open_call: bool = False,
                     shrink: bool = False) -> None: ...

    def submit_elastic(self, job: Job, items: Sequence[Any], start: int = 0,
                       func_bytes: Optional[bytes] = None,
                       open_call: bool = False) -> Optional[Unit]: ...

    def close(self) -> None: ...

    def terminate(self, kill: bool = False) -> None: ...

    def join(self, timeout: Optional[float] = None) -> None: ...

    def call_soon(self, func: Callable[..., Any], *args: Any) -> None: ...

    @property
    def state(self) -> PoolState: ...

    @property
    def pids(self) -> List[int]: ...

    def units_in_flight(self) -> int: ...

    def status(self) -> List[WorkerStatus]: ...

    def stats(self, sample: bool = True) -> PoolStats: ...

    def dump_stacks(self) -> None: ...

    def stop_calls(self, match: StopMatch) -> None: ...

    def helper_pids(self) -> Dict[str, int]: ...


class EngineBase:
    """What both engines share: callers change the inbox's state, the
    engine's own thread acts on it, user callbacks run on another; and how a
    function is pickled for the workers."""

    inbox: Inbox
    _thread: threading.Thread
    _callbacks: CallbackThread
    _last_function: Tuple[Any, bytes] = (None, b"")
    guard_keeper: Optional[GuardKeeper] = None   # the local engine's; not on a cluster

    def main_by_value(self, func: Callable[..., Any]) -> bool:
        raise NotImplementedError

    def encode_function(self, func: Callable[..., Any]) -> bytes:
        last = self._last_function
        if last[0] is func:   # a run of submits of one function pickles it once
            return last[1]
        data, by_name = encode_function(func, self.main_by_value(func))
        if by_name:
            self._last_function = (func, data)
        return data

    def _start(self, run: Callable[[], None], name: str) -> None:
        """Start the engine's own thread; live engines end at interpreter exit."""
        self._callbacks = CallbackThread()
        self._thread = threading.Thread(target=run, name=name, daemon=True)
        at_exit.live_engines.add(self)
        self._thread.start()

    def close(self) -> None:
        """No more calls; the engine ends once the queued work is done."""
        self.inbox.close()

    def terminate(self, kill: bool = False) -> None:
        """Stop now: unfinished units fail; *kill*: SIGKILL, no SIGTERM first."""
        self.inbox.terminate(kill)

    def join(self, timeout: Optional[float] = None) -> None:
        # From our own threads (a callback calling terminate()) joining would
        # wait for ourselves.
        if threading.current_thread() not in (self._thread, self._callbacks.thread):
            self._thread.join(timeout)

    def stop_calls(self, match: StopMatch) -> None:
        """Kill the workers running a call that *match* names (the call's
        front has failed it already).  ValueError on a cluster."""
        if self.guard_keeper is None:
            raise ValueError("stopping a running call is not available on a cluster")
        self.guard_keeper.stops.add(match)
        self.inbox.wakeup.wake()

    def call_soon(self, func: Callable[..., Any], *args: Any) -> None:
        """Run a user callback on the callback thread, in order."""
        self._callbacks.call_soon(func, *args)

    @property
    def state(self) -> PoolState:
        return self.inbox.state

    def stats(self, sample: bool = True) -> PoolStats:
        """What the workers did; an engine that does not count says nothing."""
        return PoolStats((), 0.0)
