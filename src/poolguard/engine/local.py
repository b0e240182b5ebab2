"""The engine on this machine, as the fronts see it: ``Engine`` builds the
pool's parts (shared slots, the launcher, the worker set, the guards),
starts the supervisor thread (supervisor.py) that alone acts on them, and
answers the fronts' calls from their threads: it queues units in the inbox
and reads snapshots (pids, status, stats).  The cluster's engine
(poolguard/cluster/engine.py) answers the same calls (surface.py)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from .. import diagnosis
from ..diagnosis import KernelLog
from ..options import Guards
from ..wire import buffers
from ..wire.channels import Spiller, WatchSet
from ..wire.slots import SharedSlots
from . import at_exit, limits
from .guards import GuardKeeper
from .inbox import Inbox
from .jobs import Job, Unit, cut_units, make_unit
from .launch import ParentAlive, WorkerSpec, make_launcher
from .launch.zygote import can_use_zygote
from .pacing import Pacer
from .postmortem import Postmortem
from .reports import PoolStats, WorkerStatus
from .supervisor import Parts, Supervisor
from .surface import EngineBase
from .worker_set import WorkerSet

# Seconds pids and status() wait at most for the pool's first workers to be
# started (they are, in the background, after Pool() returns): far above a
# start even on a loaded machine, and a bound if one never comes.
FIRST_ROUND_WAIT = 10.0
# Seconds of measured work below which a default map's last units do not
# shrink: smaller ones cost more per unit than an uneven end costs.
SHRUNK_UNIT = 0.0002


class Engine(EngineBase):
    """Worker processes plus the supervisor thread that watches them."""

    batches_submits = True
    streams = True
    per_call_guards = True

    def __init__(self, processes: int, initializer: Optional[Callable[..., Any]] = None,
                 initargs: Iterable[Any] = (), maxtasks: Optional[int] = None, context: Any = None,
                 finish_at_exit: bool = False, guards: Optional[Guards] = None) -> None:
        guards = guards or Guards()
        self.processes = processes
        self.guards = guards
        # At interpreter exit: finish the submitted work (executors, as the
        # standard library's do) or terminate (pools, as multiprocessing's do).
        self.finish_at_exit = finish_at_exit
        parts = _make_parts(processes, initializer, tuple(initargs), maxtasks, context, guards)
        self.inbox = parts.inbox
        self.guard_keeper: GuardKeeper = parts.guard_keeper
        self._launcher = parts.launcher
        self._workers = parts.workers
        self._pacer = parts.pacer
        self._supervisor = Supervisor(parts, initializer, self._ended)
        self._start(self._supervisor.run, "poolguard-supervisor")

    def _ended(self) -> None:
        """The supervisor's last act, on its thread."""
        self._callbacks.stop()   # after the last failure was queued
        at_exit.live_engines.discard(self)

    @property
    def remote_reads(self) -> bool:
        """May workers read large bytes from our memory (a unit's arguments
        are then left in place)?"""
        return self._supervisor.replies.remote_reads

    # ---- called from the fronts' threads -------------------------------------------

    def main_by_value(self, func: Callable[..., Any]) -> bool:
        """Must *func*, of ``__main__``, go to the workers by value?  A
        wrapper (checkpoint's) is judged by the function it wraps."""
        return self._launcher.main_by_value(getattr(func, "__wrapped__", func))

    def submit_items(self, job: Job, items: Sequence[Any], chunksize: int, start: int = 0,
                     func_bytes: Optional[bytes] = None, open_call: bool = False,
                     shrink: bool = False) -> None:
        """Cut *items* into units (jobs.py) and queue them batch by batch;
        *shrink*: the last units smaller (a default chunksize)."""
        if func_bytes is None:
            func_bytes = self.encode_function(job.func)
        if len(items) == 1:   # submit, apply_async: no batching to do
            unit = make_unit(job, start, items, func_bytes, self.remote_reads)
            if unit is not None:
                self.inbox.submit((unit,), open_call)
            return
        least = self._pacer.items_taking(func_bytes, SHRUNK_UNIT) if shrink else None
        self.inbox.submit(cut_units(job, items, chunksize, start, func_bytes, self.remote_reads,
                                    0 if least is None else self.processes, least or 0),
                          open_call)

    def submit_elastic(self, job: Job, items: Sequence[Any], start: int = 0,
                       func_bytes: Optional[bytes] = None, open_call: bool = False) -> Unit:
        """Queue *items* as one elastic unit, which dispatch cuts as it goes;
        the unit (a lazy imap's producer extends it: ``IMapIterator._feed``)."""
        if func_bytes is None:
            func_bytes = self.encode_function(job.func)
        unit = Unit(job, start, items, func_bytes, remote=self.remote_reads, elastic=True)
        self.inbox.submit([unit], open_call)
        return unit

    @property
    def pids(self) -> List[int]:
        """Pids of the live workers (a snapshot), once the first are started."""
        self._workers.first_round.wait(FIRST_ROUND_WAIT)
        return self._workers.pids()

    def units_in_flight(self) -> int:
        """Units sent to workers and not yet answered (a snapshot)."""
        return sum(len(w.inflight) for w in self._workers)

    def status(self) -> List[WorkerStatus]:
        """What each worker is doing now, once the first are started; safe
        from any thread."""
        self._workers.first_round.wait(FIRST_ROUND_WAIT)
        return self._workers.status()

    def stats(self, sample: bool = True) -> PoolStats:
        """What each worker slot did since the pool began; from any thread.
        *sample*: read the live workers' RSS now too."""
        return self._workers.stats(sample)

    def helper_pids(self) -> Dict[str, int]:
        """The pool's own helper processes now: name -> pid."""
        return self._launcher.helper_pids()

    def dump_stacks(self) -> None:
        """Make every worker print the stack of each of its threads to its
        stderr (SIGUSR1, handled by faulthandler); the tasks go on."""
        self._workers.dump_stacks()


def _make_parts(processes: int, initializer: Optional[Callable[..., Any]],
                initargs: tuple[Any, ...], maxtasks: Optional[int], context: Any,
                guards: Guards) -> Parts:
    """The pool's parts, made on the caller's thread before any thread of
    ours exists: under fork the launcher forks the zygote here."""
    inbox = Inbox()
    alive = ParentAlive()
    slots = SharedSlots(processes)
    zygote = context.get_start_method() == "fork" and can_use_zygote()
    limits.make_room(processes, "zygote" if zygote else "multiprocessing")
    launcher = make_launcher(context, WorkerSpec(
        alive.conn, slots, initializer, initargs, maxtasks,
        guards.task_timeout is not None, buffers.probe_handle(),
        soft_timeout=guards.soft_timeout), processes)
    watch = WatchSet(inbox.wakeup.fd)
    spiller = Spiller()
    pacer = Pacer(maxtasks)
    workers = WorkerSet(processes, slots, launcher, watch, spiller, pacer)
    kernel_log = KernelLog(diagnosis.SOURCES)
    return Parts(inbox, alive, slots, launcher, watch, spiller, pacer, workers, kernel_log,
                 GuardKeeper(guards, slots, workers),
                 Postmortem(guards, kernel_log, processes, initializer))
