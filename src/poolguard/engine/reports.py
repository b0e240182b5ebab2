"""What a pool reports on its workers: what each does now (``status()``)
and what each slot has done since the pool began (``stats()``).

The accounting is driven by the worker set (workers.py): it calls
:meth:`Accounts.observe` each time a worker's place changes (started,
ready, busy, idle, gone), on the supervisor thread, a few operations each
time; ``stats()`` may be called from any thread and reads under a lock."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import diagnosis
from ..errors import TaskInfo


@dataclass(frozen=True)
class WorkerStatus:
    """What one worker is doing, as ``Pool.status()`` reports it
    (``str()`` of it is one line: ``worker 123: busy f(3) for 2.0 s, RSS 40 MiB``).

    Attributes:
        pid: The worker's process id.
        state: ``"starting"``, ``"idle"``, ``"busy"``, or ``"stopped"``
            (SIGSTOP, a debugger, a cgroup freezer).
        task: The :class:`~poolguard.TaskInfo` it runs, when busy.
        elapsed: Seconds since that item (or its chunk) started.
        rss: Resident memory in bytes.
    """

    pid: int
    state: str                  # "starting", "idle", "busy", or "stopped" (SIGSTOP, debugger)
    task: Optional[TaskInfo]    # what it runs, when busy
    elapsed: Optional[float]    # seconds since that item (or its chunk) started
    rss: Optional[int]          # resident memory in bytes

    def __str__(self) -> str:
        text = f"worker {self.pid}: {self.state}"
        if self.task is not None:
            text += f" {self.task}"
        if self.elapsed is not None:
            text += f" for {self.elapsed:.1f} s"
        if self.rss is not None:
            text += f", RSS {self.rss / 2**20:.0f} MiB"
        return text


@dataclass(frozen=True)
class WorkerStats:
    """What one worker slot did since the pool began: its workers one after
    the other (a replacement takes the slot of the worker it replaces).

    Attributes:
        slot: The slot's number, 0 to the pool's size - 1.
        pid: The pid of its live worker; None while it has none.
        busy: Seconds its workers had tasks.
        idle: Seconds they were ready with none.
        starting: Seconds from each worker's start to its first task or
            to its readiness (initializer included).
        tasks: Items its workers finished (with a value or an exception).
        crashes: Deaths not asked for: killed, crashed, or stopped by a
            guard (``task_timeout``, ``max_worker_memory``).
        replacements: Workers started in it after the first.
        peak_rss: Highest resident memory seen of its workers, in bytes
            (sampled: a short peak between two samples is missed).
    """

    slot: int
    pid: Optional[int]
    busy: float
    idle: float
    starting: float
    tasks: int
    crashes: int
    replacements: int
    peak_rss: Optional[int]


@dataclass(frozen=True)
class PoolStats:
    """``stats()`` of a pool or executor: one :class:`WorkerStats` per slot,
    and their sums.  ``str()`` of it is one line:
    ``2 workers · 500 tasks · busy 95% · idle 4% · starting 1% · 1 crash ·
    1 replacement · peak RSS 40 MiB``.

    Attributes:
        workers: One entry per worker slot.
        elapsed: Seconds since the pool was made.
    """

    workers: Tuple[WorkerStats, ...]
    elapsed: float

    @property
    def busy(self) -> float:
        """Seconds of work, all workers together."""
        return sum(w.busy for w in self.workers)

    @property
    def idle(self) -> float:
        """Seconds of waiting for work, all workers together."""
        return sum(w.idle for w in self.workers)

    @property
    def starting(self) -> float:
        """Seconds of starting, all workers together."""
        return sum(w.starting for w in self.workers)

    @property
    def tasks(self) -> int:
        """Items finished, all workers together."""
        return sum(w.tasks for w in self.workers)

    @property
    def crashes(self) -> int:
        """Deaths not asked for, all slots together."""
        return sum(w.crashes for w in self.workers)

    @property
    def replacements(self) -> int:
        """Workers started after each slot's first, all slots together."""
        return sum(w.replacements for w in self.workers)

    @property
    def peak_rss(self) -> Optional[int]:
        """The highest peak RSS of any worker, in bytes."""
        return max((w.peak_rss for w in self.workers if w.peak_rss), default=None)

    def since(self, earlier: "PoolStats") -> "PoolStats":
        """What happened between *earlier* (of the same pool) and this one;
        peak RSS is this one's."""
        before = {w.slot: w for w in earlier.workers}
        out = []
        for w in self.workers:
            e = before.get(w.slot)
            if e is not None:
                w = WorkerStats(w.slot, w.pid, w.busy - e.busy, w.idle - e.idle,
                                w.starting - e.starting, w.tasks - e.tasks,
                                w.crashes - e.crashes, w.replacements - e.replacements,
                                w.peak_rss)
            out.append(w)
        return PoolStats(tuple(out), self.elapsed - earlier.elapsed)

    def __str__(self) -> str:
        total = self.busy + self.idle + self.starting
        parts = [_count(len(self.workers), "worker"), _count(self.tasks, "task")]
        for name, seconds in (("busy", self.busy), ("idle", self.idle),
                              ("starting", self.starting)):
            share = f"{100 * seconds / total:.0f}%" if total > 0 else "-"
            parts.append(f"{name} {share}")
        if self.crashes:
            parts.append(_count(self.crashes, "crash", "crashes"))
        if self.replacements:
            parts.append(_count(self.replacements, "replacement"))
        if self.peak_rss:
            parts.append(f"peak RSS {self.peak_rss / 2**20:.0f} MiB")
        return " · ".join(parts)


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


_PHASES = ("starting", "idle", "busy")


class _Slot:
    __slots__ = ("pid", "phase", "since", "seconds", "tasks", "counted", "crashes", "starts",
                 "peak")

    def __init__(self) -> None:
        self.pid: Optional[int] = None
        self.phase: Optional[str] = None    # None: no live worker
        self.since = 0.0
        self.seconds: Dict[str, float] = dict.fromkeys(_PHASES, 0.0)
        self.tasks = self.crashes = self.starts = 0
        self.counted = 0   # of its live worker's items_done, those in tasks
        self.peak: Optional[int] = None


class Accounts:
    """Per slot: seconds in each phase, tasks, crashes, starts, peak RSS."""

    def __init__(self, count: int) -> None:
        self._lock = threading.Lock()
        self._slots = [_Slot() for _ in range(count)]
        self._began = time.monotonic()

    def observe(self, worker: Any, starting: bool) -> None:
        """*worker*'s place changed (supervisor thread).  *starting*: it has
        not said it is ready."""
        now = time.monotonic()
        slot = self._slots[worker.index]
        with self._lock:
            if slot.phase is not None:
                slot.seconds[slot.phase] += now - slot.since
            if slot.pid != worker.pid:   # a new worker in the slot
                slot.pid, slot.starts, slot.counted = worker.pid, slot.starts + 1, 0
            slot.tasks += worker.items_done - slot.counted
            slot.counted = worker.items_done
            slot.peak = _max(slot.peak, worker.watch.task_peak)
            if worker.gone:
                slot.phase = None
                slot.crashes += worker.guard is not None or not worker.left_on_purpose
            else:
                slot.phase = ("busy" if worker.inflight else
                              "starting" if starting else "idle")
            slot.since = now

    def stats(self, live: Sequence[Any], sample: bool = True) -> PoolStats:
        """Now, from any thread; *live*: the workers there are (a copy).
        *sample*: read each live worker's RSS now too."""
        by_slot = {w.index: w for w in live if not w.gone}
        now = time.monotonic()
        out: List[WorkerStats] = []
        with self._lock:
            for index, slot in enumerate(self._slots):
                seconds = dict(slot.seconds)
                if slot.phase is not None:
                    seconds[slot.phase] += now - slot.since
                worker = by_slot.get(index)
                tasks, peak = slot.tasks, slot.peak
                if worker is not None and worker.pid == slot.pid:
                    tasks += worker.items_done - slot.counted
                    peak = _max(peak, worker.watch.task_peak)
                out.append(WorkerStats(index, slot.pid if slot.phase else None,
                                       seconds["busy"], seconds["idle"], seconds["starting"],
                                       tasks, slot.crashes, max(0, slot.starts - 1), peak))
        if sample:
            out = [_with_rss(w) for w in out]
        return PoolStats(tuple(out), now - self._began)


def _with_rss(w: WorkerStats) -> WorkerStats:
    if w.pid is None:
        return w
    rss = diagnosis.rss_of(w.pid)
    peak = _max(w.peak_rss, rss)
    if peak == w.peak_rss:
        return w
    return WorkerStats(w.slot, w.pid, w.busy, w.idle, w.starting, w.tasks, w.crashes,
                       w.replacements, peak)


def _max(a: Optional[int], b: Optional[int]) -> Optional[int]:
    return b if a is None else a if b is None else max(a, b)
