"""What runs on a dask worker.

A pool's units reach a dask worker as dask tasks, :func:`run_units`, each
carrying one unit or, from a backlog, several.  They do not run the user's
function in the dask worker's own process: a task that dies there
takes the worker down, dask runs it again on worker after worker, and the
caller finally gets ``KilledWorker`` and a hash.  It hands the unit to a
*sub-pool*: a poolguard engine in that dask worker process, one per pool,
with as many processes as the worker has threads.  A death there is seen at
once and named by the local engine; the dask worker lives on, and the task
returns the error as the unit's result.

The sub-pool holds the pool's options: initializer, ``task_timeout``,
``max_worker_memory`` (no more than the dask worker's ``memory_limit``,
which dask's nanny only checks on the worker's own process), ``retries``.
Its processes start by forkserver unless the pool asked for another method:
a dask worker has many threads, and a fork from it could inherit a lock one
of them held.  A sub-pool nobody used for ``IDLE_EXPIRY`` seconds is closed
(the pool that made it may be gone without saying so).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple

from ..engine import Engine, Job, PoolState, Unit
from ..errors import PoolTerminatedError, TaskDecodeError, WorkerCrashedError, WorkerMemoryError
from ..options import Guards, resolve_context
from . import parts

IDLE_EXPIRY = 300.0    # seconds a sub-pool may sit unused before it is closed


@dataclass
class SubPoolConfig:
    """One pool's options, as every dask worker needs them (sent pickled)."""

    initializer: Optional[Callable[..., object]]
    initargs: tuple[Any, ...]
    maxtasks: Optional[int]
    method: Optional[str]     # start method of the sub-pool's processes
    guards: Guards


def _named(name: str) -> Callable[..., Any]:
    """Stands for the user's function in crash messages: the dask worker
    never unpickles it (only the sub-pool's processes do)."""
    def stand_in(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{name} runs in the sub-pool's processes, not here")
    stand_in.__qualname__ = name
    return stand_in


class _Collect(Job):
    """The sub-pool's job for one unit: gathers its parts until every item
    is accounted for."""

    def __init__(self, name: str, kind: int, call: str, count: int):
        super().__init__(_named(name), kind, call)
        self.parts: List[Tuple[int, int, bool, Any]] = []
        self.retried = 0
        self.finished = threading.Event()
        self._left = count

    def unit_done(self, unit: Unit, values: Any) -> None:
        self._add(unit, True, values)

    def unit_failed(self, unit: Unit, exc: BaseException) -> None:
        self._add(unit, False, exc)

    def unit_retried(self, unit: Unit, timed_out: bool = False) -> None:
        self.retried += 1

    def _add(self, unit: Unit, ok: bool, value: Any) -> None:
        self.parts.append((unit.start, len(unit.items), ok, value))
        self._left -= len(unit.items)
        if self._left <= 0:
            self.finished.set()


class _SubPool:
    def __init__(self, config: SubPoolConfig):
        from distributed import get_worker
        worker = get_worker()
        self.host = socket.gethostname()
        self.address = str(worker.address)
        guards, self.memory_note, self.memory_advice = _memory_cap(
            config.guards, worker.memory_manager.memory_limit, batch_job(os.environ))
        self.engine = Engine(max(1, worker.state.nthreads), config.initializer,
                             config.initargs, config.maxtasks,
                             resolve_context(config.method or "forkserver"), guards=guards)
        self.running = 0
        self.last_used = time.monotonic()

    def start(self, payload: parts.Payload) -> _Collect:
        kind, call, name, start, count, body = payload
        job = _Collect(name, kind, call, count)
        try:
            func_bytes, items = pickle.loads(body)
        except BaseException as exc:   # a class the dask worker cannot import, say
            job.unit_failed(Unit.placeholder(job, start, [None] * count), TaskDecodeError(
                f"the task could not be unpickled on the dask worker: "
                f"{type(exc).__name__}: {exc}", exc=exc))
            return job
        try:
            self.engine.submit_items(job, items, len(items), start, func_bytes)
        except ValueError as exc:   # closed under us (expired, or the pool ended)
            job.unit_failed(Unit.placeholder(job, start, items),
                            PoolTerminatedError(f"the pool stopped: {exc}"))
        return job

    def finish(self, job: _Collect) -> Tuple[List[parts.Part], int]:
        job.finished.wait()
        return [self._encode(job.kind, *part) for part in job.parts], job.retried

    def _encode(self, kind: int, start: int, count: int, ok: bool, value: Any) -> parts.Part:
        if ok:
            status, blob = parts.encode_values(kind, value)
        else:
            if isinstance(value, WorkerCrashedError):
                if isinstance(value, WorkerMemoryError):
                    value.place(self.host, self.address, self.memory_note, self.memory_advice)
                else:
                    value.place(self.host, self.address)
            status, blob = parts.encode_failure(value)
        return start, count, status, blob


def _memory_cap(guards: Guards, dask_limit: Optional[int],
                job: Optional[str]) -> Tuple[Guards, str, str]:
    """The sub-pool's ``max_worker_memory``: the pool's, and no more than the
    dask worker's ``memory_limit``; with the note and advice its errors
    carry.  *job* describes the batch job the dask worker runs in, if any:
    there the limit is the dask worker's share of the job's memory."""
    if not dask_limit or (guards.max_worker_memory is not None
                          and guards.max_worker_memory <= dask_limit):
        return guards, "", ""
    limit = f"memory_limit ({dask_limit / 2**20:.0f} MiB)"
    if job:
        note = (f"The cap is the batch job's memory: this dask worker runs in {job}, and "
                f"dask-jobqueue gives it its share of the job's memory as its {limit}. "
                f"poolguard holds each task's process to that share (dask's nanny only "
                f"watches the worker's own process); past the job's memory the batch system "
                f"would kill the job, or the kernel its processes, as out of memory.")
        advice = ("ask for more memory per job (dask-jobqueue's memory=, shared among the "
                  "job's processes=), or make the task use less (smaller inputs or chunks, "
                  "fewer copies).")
    else:
        note = (f"The cap is the dask worker's {limit}: dask's nanny only watches the "
                f"worker's own process, so poolguard holds each task's process to it.")
        advice = ("give the dask workers more memory (memory_limit=), or make the task use "
                  "less (smaller inputs or chunks, fewer copies).")
    return dataclasses.replace(guards, max_worker_memory=int(dask_limit)), note, advice


def batch_job(environ: Mapping[str, str]) -> Optional[str]:
    """The batch job a process runs in, as its environment says ("SLURM job
    42 (--mem=954M)"), or None."""
    if "SLURM_JOB_ID" in environ:
        memory = ""
        if environ.get("SLURM_MEM_PER_NODE"):
            memory = f" (--mem={environ['SLURM_MEM_PER_NODE']}M)"
        elif environ.get("SLURM_MEM_PER_CPU"):
            memory = f" (--mem-per-cpu={environ['SLURM_MEM_PER_CPU']}M)"
        return f"SLURM job {environ['SLURM_JOB_ID']}{memory}"
    for variable, system in (("PBS_JOBID", "PBS"), ("LSB_JOBID", "LSF")):
        if environ.get(variable):
            return f"{system} job {environ[variable]}"
    if environ.get("JOB_ID") and environ.get("SGE_ROOT"):
        return f"SGE job {environ['JOB_ID']}"
    return None


_subpools: Dict[str, _SubPool] = {}
_dropped: Deque[str] = collections.deque(maxlen=10000)   # pools that have ended
_lock = threading.Lock()
_reaper: Optional[threading.Thread] = None


def run_units(token: str, config: bytes,
              payloads: List[parts.Payload]) -> List[Tuple[List[parts.Part], int]]:
    """The dask task of a bundle of units, run side by side in the sub-pool
    (see parts.py for what comes and goes): each unit's parts and retries."""
    subpool = _take(token, config)
    if subpool is None:   # a task of a pool that has ended, started late
        return [_ended(payload) for payload in payloads]
    try:
        jobs = [subpool.start(payload) for payload in payloads]
        return [subpool.finish(job) for job in jobs]
    finally:
        with _lock:
            subpool.running -= 1
            subpool.last_used = time.monotonic()


def _ended(payload: parts.Payload) -> Tuple[List[parts.Part], int]:
    start, count = payload[3], payload[4]
    status, blob = parts.encode_failure(PoolTerminatedError("the pool has ended"))
    return [(start, count, status, blob)], 0


def _take(token: str, config: bytes) -> Optional[_SubPool]:
    global _reaper
    with _lock:
        if token in _dropped:
            return None
        subpool = _subpools.get(token)
        if subpool is None or subpool.engine.state is not PoolState.RUNNING:
            subpool = _subpools[token] = _SubPool(pickle.loads(config))
        subpool.running += 1
        if _reaper is None:
            _reaper = threading.Thread(target=_reap_idle, name="poolguard-subpool-reaper",
                                       daemon=True)
            _reaper.start()
        return subpool


def drop(token: str, terminate: bool) -> None:
    """The pool is done (``client.run`` on every worker): end its sub-pool."""
    with _lock:
        subpool = _subpools.pop(token, None)
        _dropped.append(token)   # a task of it that starts late makes no new one
    if subpool is not None:
        (subpool.engine.terminate if terminate else subpool.engine.close)()


def status(token: str) -> list[Any]:
    with _lock:
        subpool = _subpools.get(token)
    return subpool.engine.status() if subpool is not None else []


def dump_stacks(token: str) -> None:
    with _lock:
        subpool = _subpools.get(token)
    if subpool is not None:
        subpool.engine.dump_stacks()


def _reap_idle() -> None:
    while True:
        time.sleep(IDLE_EXPIRY / 10)
        now = time.monotonic()
        with _lock:   # taken out under the lock: run_unit cannot pick one up now
            idle = [_subpools.pop(token) for token, s in list(_subpools.items())
                    if not s.running and now - s.last_used > IDLE_EXPIRY]
        for subpool in idle:
            subpool.engine.close()
