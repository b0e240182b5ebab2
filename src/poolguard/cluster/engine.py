"""The engine of a pool on a dask.distributed cluster.

The same surface as :class:`poolguard.engine.Engine`, so both fronts work
unchanged over it, and the same jobs and units; what differs is where units
go.  Data flow::

  caller threads             dispatch thread (owns the units in flight)      dask worker
  --------------             ------------------------------------------      -----------
  submit_items(job)
    cut into units
    v
  Inbox: pending units, state, wake pipe
    | ---wake pipe--->  poll(wake pipe)
    |                     | send: up to `limit` units in flight, each
    |                     |   pickled by us; one dask task per bundle
    |                     |   (several units when many wait) ----------> on_worker.run_units:
    |                     |                                               the pool's sub-pool
    |                     |                                               (a poolguard engine)
    |                     |                                               runs each unit in a
    |                     |                                               child process
    |  <--wake pipe---  dask's callback thread: the task finished         |
    |                     | collect: gather finished tasks in one call <--+ per unit: (parts,
    |                     |                                                  retried)
    |                     |   parts.decode_* -> deliver(unit, ...) to the job
    |                     |   (user callbacks: callbacks.py thread)

Deaths, timeouts and memory caps are handled by the sub-pool, next to the
process; this side only ever sees finished dask tasks.  A dask task that
did not return fails its units: with a ``WorkerCrashedError`` when its dask
worker died under it (``KilledWorker``) or the cluster has been left without
workers (watch.py), with a ``TaskDecodeError`` saying what it raised
otherwise, with ``PoolTerminatedError`` when it was cancelled (the client
closed).
"""
from __future__ import annotations

import collections
import math
import select
import socket
import sys
import threading
import time
import traceback
import uuid
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple

import cloudpickle

from ..engine import at_exit
from ..engine.inbox import CLOSING, TERMINATING, Inbox
from ..engine.jobs import Job, Unit, deliver
from ..naming import function_name
from ..engine.surface import EngineBase
from ..engine.reports import WorkerStatus
from ..errors import PoolTerminatedError
from ..options import Guards
from ..wire.messages import PROTOCOL
from . import on_worker, parts
from .outcomes import no_workers, outcome_of, task_failure
from .watch import WorkerWatch, configured_timeout

DROP_TIMEOUT = 10.0   # seconds to wait for the workers to end a closed pool's sub-pools
BUNDLE = 64           # most units one dask task carries


class ClusterEngine(EngineBase):
    """Units of the fronts' jobs, run as dask tasks on a cluster."""

    remote_reads = False
    batches_submits = False   # units are bundled into dask tasks instead
    streams = False           # a dask task answers once
    per_call_guards = False   # the engines on the dask workers have the pool's

    def __init__(self, client: Any, owns_client: bool, processes: int,
                 initializer: Optional[Callable[..., Any]], initargs: Iterable[Any],
                 maxtasks: Optional[int], method: Optional[str], finish_at_exit: bool,
                 guards: Guards):
        self.processes = processes
        self.guards = guards
        self.finish_at_exit = finish_at_exit
        self.inbox = Inbox()
        self._client = client
        self._owns_client = owns_client
        self._token = uuid.uuid4().hex
        self._address = client.scheduler.address
        self._config = cloudpickle.dumps(on_worker.SubPoolConfig(
            initializer, tuple(initargs), maxtasks, method, guards), protocol=PROTOCOL)
        # Enough tasks in flight to keep every dask thread busy across the
        # round trips; the rest wait here, where shutdown can still cancel them.
        self._limit = max(1000, 4 * processes)
        self._running: Dict[str, Tuple[List[Unit], Any]] = {}   # dask key -> units, future
        self._in_flight = 0   # units in self._running
        self._finished: Deque[Any] = collections.deque()  # futures, from dask's thread
        self._watch = WorkerWatch(configured_timeout())
        self._start(self._run, "poolguard-cluster")

    # ---- called from other threads (the surface both fronts use) --------------------

    def main_by_value(self, func: Callable[..., Any]) -> bool:
        """A dask worker has no copy of our ``__main__``: always by value."""
        return True

    def submit_items(self, job: Job, items: Sequence[Any], chunksize: int, start: int = 0,
                     func_bytes: Optional[bytes] = None, open_call: bool = False,
                     shrink: bool = False) -> None:
        if func_bytes is None:
            func_bytes = self.encode_function(job.func)
        self.inbox.submit([Unit.unencoded(job, start + lo, items[lo:lo + chunksize],
                                          func_bytes)
                           for lo in range(0, len(items), chunksize)], open_call)

    def submit_elastic(self, job: Job, items: Sequence[Any], start: int = 0,
                       func_bytes: Optional[bytes] = None, open_call: bool = False) -> None:
        """The executor's ``map`` without chunksize: four units a thread."""
        self.submit_items(job, items, max(1, math.ceil(len(items) / (4 * self.processes))),
                          start, func_bytes, open_call)

    def units_in_flight(self) -> int:
        return self._in_flight

    @property
    def pids(self) -> List[int]:
        return [s.pid for s in self.status() if s.pid is not None]

    def status(self) -> List[WorkerStatus]:
        """The sub-pools' processes, on every dask worker."""
        try:
            found = self._client.run(on_worker.status, self._token)
        except Exception:
            return []
        return [s for statuses in found.values() for s in statuses]

    def helper_pids(self) -> Dict[str, int]:
        """None here: the cluster's processes are dask's."""
        return {}

    def dump_stacks(self) -> None:
        try:
            self._client.run(on_worker.dump_stacks, self._token)
        except Exception:
            pass

    # ---- the dispatch thread --------------------------------------------------------

    def _run(self) -> None:
        error: Optional[BaseException] = None
        try:
            poller = select.poll()
            poller.register(self.inbox.wakeup.fd, select.POLLIN)
            while self._step():
                # Woken by the inbox and by dask's callbacks; with units in
                # flight, also when the next check of the workers is due.
                due = self._watch.due(time.monotonic()) if self._in_flight else None
                poller.poll(None if due is None else math.ceil(due * 1000))
                self.inbox.wakeup.drain()
        except BaseException as exc:   # a bug of ours: fail everything rather than hang
            text = traceback.format_exc()
            error = PoolTerminatedError(f"poolguard's cluster thread failed ({exc!r}), a bug "
                                        f"of poolguard's. Its traceback:\n{text}")
            sys.stderr.write(text)
        finally:
            self._shutdown(error)

    def _step(self) -> bool:
        """One turn; False when the engine has finished."""
        inbox = self.inbox
        state = inbox.state
        if state == TERMINATING:
            return False
        self._collect()
        self._check_workers()
        self._send()
        return not (state == CLOSING and not inbox.pending and not self._in_flight
                    and not inbox.open_calls)

    def _send(self) -> None:
        units: List[Unit] = []
        inbox = self.inbox
        with inbox.lock:
            while inbox.pending and self._in_flight + len(units) < self._limit:
                unit = inbox.pending.popleft()
                if unit.job.wanted(unit):
                    units.append(unit)
        bundles: List[List[Unit]] = []
        payloads: List[List[parts.Payload]] = []
        size = _bundle_size(len(units), self.processes)
        for unit in units:
            try:
                payload = parts.encode_unit(unit)
            except (Exception, SystemExit) as exc:   # arguments that do not pickle
                deliver(unit, False, exc)
                continue
            if not bundles or len(bundles[-1]) >= size:
                bundles.append([])
                payloads.append([])
            bundles[-1].append(unit)
            payloads[-1].append(payload)
        if bundles:
            self._submit(bundles, payloads)

    def _submit(self, bundles: List[List[Unit]], payloads: List[List[parts.Payload]]) -> None:
        """One dask task per bundle of units, in one call."""
        keys = [f"poolguard-{function_name(b[0].job.func)}-{self._token[:8]}-{b[0].id}"
                for b in bundles]
        try:
            futures = self._client.map(on_worker.run_units, [self._token] * len(bundles),
                                       [self._config] * len(bundles), payloads, key=keys,
                                       pure=False)
        except Exception as exc:   # the client is closed, the scheduler gone
            error = PoolTerminatedError(f"could not submit to the dask cluster: {exc!r}")
            for unit in (u for bundle in bundles for u in bundle):
                deliver(unit, False, error)
            return
        for bundle, future in zip(bundles, futures, strict=True):
            self._running[future.key] = (bundle, future)
            self._in_flight += len(bundle)
            future.add_done_callback(self._on_finished)

    def _on_finished(self, future: Any) -> None:
        """On dask's callback thread: hand the future over, wake the loop."""
        self._finished.append(future)
        self.inbox.wakeup.wake()

    def _collect(self) -> None:
        finished = []
        while self._finished:
            finished.append(self._finished.popleft())
        done = [f for f in finished if f.status == "finished"]
        outcomes: List[Any] = []
        if done:
            try:
                outcomes = self._client.gather(done)
            except Exception:   # one was lost meanwhile: each on its own
                outcomes = [outcome_of(f) for f in done]
        for future, outcome in zip(done, outcomes, strict=True):
            self._finish(future, outcome)
        for future in finished:
            if future.status != "finished":
                self._finish(future, outcome_of(future))

    def _finish(self, future: Any, outcome: Any) -> None:
        entry = self._running.pop(future.key, None)
        if entry is None:
            return
        bundle = entry[0]
        self._in_flight -= len(bundle)
        if isinstance(outcome, BaseException):
            for unit in bundle:
                deliver(unit, False, task_failure(unit, outcome))
            return
        for unit, (found, retried) in zip(bundle, outcome, strict=True):
            parts.deliver_parts(unit, found, retried)

    def _check_workers(self) -> None:
        """Fail the units in flight and waiting once the cluster has been
        without any worker for the watch's timeout (its batch jobs ended)."""
        if not self._in_flight:
            self._watch.idle()
            return
        waited = self._watch.check(self._client)
        if waited is None:
            return
        units = self.inbox.take_pending() + [
            unit for bundle, _ in self._running.values() for unit in bundle]
        futures = [future for _, future in self._running.values()]
        self._running.clear()
        self._in_flight = 0
        try:
            self._client.cancel(futures, force=True)
        except Exception:
            pass
        for unit in units:
            deliver(unit, False, no_workers(unit, waited, self._watch.timeout))

    # ---- the end --------------------------------------------------------------------

    def _shutdown(self, error: Optional[BaseException]) -> None:
        terminating = self.inbox.state == TERMINATING or error is not None
        self.inbox.finish()
        units = self.inbox.take_pending() + [
            unit for bundle, _ in self._running.values() for unit in bundle]
        futures = [future for _, future in self._running.values()]
        self._running.clear()
        self._in_flight = 0
        if futures:
            try:
                self._client.cancel(futures, force=True)
            except Exception:
                pass
        failure = error or PoolTerminatedError("the pool was terminated before this task "
                                               "finished")
        for unit in units:
            deliver(unit, False, failure)
        self._drop_subpools(terminating)
        if self._owns_client:
            try:
                self._client.close(timeout=DROP_TIMEOUT)
            except Exception:
                pass
        self.inbox.wakeup.close()
        self._callbacks.stop()
        at_exit.live_engines.discard(self)

    def _drop_subpools(self, terminate: bool) -> None:
        """End this pool's sub-pools on every worker, waiting a bounded time
        (an unreachable worker closes its own after on_worker.IDLE_EXPIRY)."""
        def drop() -> None:
            client = self._client
            try:
                if client.status != "running":   # closed under us: a Client of our own
                    if not _reachable(self._address):
                        return   # the scheduler is gone (its workers end their sub-pools)
                    from distributed import Client
                    client = Client(self._address, set_as_default=False,
                                    timeout=DROP_TIMEOUT)
                client.run(on_worker.drop, self._token, terminate)
            except Exception:
                pass
            finally:
                if client is not self._client:
                    client.close()
        thread = threading.Thread(target=drop, name="poolguard-cluster-drop", daemon=True)
        thread.start()
        thread.join(DROP_TIMEOUT)


def _reachable(address: str) -> bool:
    """Whether a ``tcp://host:port`` scheduler accepts connections (other
    kinds of address are assumed to).  Asked before making a Client: one
    that fails to connect leaves its event loop's descriptors open."""
    if not address.startswith("tcp://"):
        return True
    host, _, port = address[len("tcp://"):].rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2.0).close()
    except (OSError, ValueError):
        return False
    return True


def _bundle_size(count: int, processes: int) -> int:
    """Units a dask task carries.  One while the units sent at a time are
    few (each result comes back as soon as it is ready); from a backlog, up
    to BUNDLE units, so tiny tasks do not each pay dask's cost of a task."""
    return max(1, min(BUNDLE, count // (4 * processes)))
