"""What a finished dask task means for the units it carried: its result,
or the error each unit fails with when the task did not return (its dask
worker died, the cluster was left without workers, it was cancelled)."""
from __future__ import annotations

from typing import Any

from ..engine.jobs import Unit
from ..errors import PoolguardError, PoolTerminatedError, TaskDecodeError, WorkerCrashedError


def outcome_of(future: Any) -> Any:
    """What a dask task left: its result, or the exception that ended it."""
    try:
        if future.status == "cancelled":
            return PoolTerminatedError("the dask task was cancelled: the client was "
                                       "closed, or lost its scheduler (the cluster closed)")
        if future.status == "error":
            return future.exception()
        return future.result()
    except BaseException as exc:
        return exc


def no_workers(unit: Unit, waited: float, timeout: float) -> WorkerCrashedError:
    task = unit.job.describe(unit, None)
    return WorkerCrashedError(
        f"the dask cluster has had no worker for {waited:.0f} s while {task} waited "
        f"(no-workers timeout: {timeout:g} s): every dask worker left and none came back. "
        f"On a batch system: the jobs ended (their walltime, scancel, preemption); the "
        f"scheduler's logs and the jobs' say which. Tasks that had finished on those "
        f"workers were delivered; the others ran again on the workers left, until none "
        f"was left.\nWhat to do: give the jobs a longer walltime, or let the cluster "
        f"submit new jobs (dask-jobqueue's cluster.adapt()); set "
        f"distributed.scheduler.no-workers-timeout in dask's config to wait longer for "
        f"them.", task=task)


def task_failure(unit: Unit, exc: BaseException) -> BaseException:
    """A dask task that did not return: the dask worker running it died or
    was lost (``KilledWorker``), the task was cancelled, or it failed there."""
    if isinstance(exc, PoolTerminatedError):
        return exc
    task = unit.job.describe(unit, None)
    from distributed import KilledWorker
    if type(exc).__name__ == "NoWorkerError":   # dask's own no-workers-timeout
        error: PoolguardError = no_workers(unit, float(getattr(exc, "timeout", 0.0)),
                                            float(getattr(exc, "timeout", 0.0)))
    elif not isinstance(exc, KilledWorker):
        error = TaskDecodeError(
            f"the dask task running {task} failed on its dask worker: "
            f"{type(exc).__name__}: {exc}", exc=exc)
    else:
        error = WorkerCrashedError(
            f"the dask task running {task} failed: {type(exc).__name__}: {exc}. The dask "
            f"worker itself died or was lost (poolguard's own processes on it would have "
            f"reported a death of theirs); the scheduler's logs say why.", task=task)
    error.__cause__ = exc
    return error
