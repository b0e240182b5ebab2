"""A cluster that lost every worker: the pool's tasks would wait forever.

On a batch system the dask workers are jobs, and jobs end: at their
walltime, by ``scancel``, by preemption.  dask reschedules the tasks of a
worker that leaves onto the others; when none is left, the tasks wait for a
worker that may never come (dask-jobqueue does not submit new jobs unless
``adapt()`` asks it to).  A pool with tasks in flight checks the number of
workers every ``INTERVAL`` seconds; once the cluster, having had workers,
has had none for the timeout, its tasks fail.

The timeout is dask's own ``distributed.scheduler.no-workers-timeout`` as
the pool's process sees it when the pool starts (dask's scheduler applies
it too, where it was set before the scheduler started), else
``NO_WORKERS_TIMEOUT``.  A cluster that never had a worker (jobs still
pending in the queue) is waited for.
"""
from __future__ import annotations

import time
from typing import Any, Optional

INTERVAL = 2.0                # seconds between checks while tasks are in flight
NO_WORKERS_TIMEOUT = 600.0    # seconds without a worker, unless dask's config says


def configured_timeout() -> float:
    """dask's ``distributed.scheduler.no-workers-timeout``, else ours."""
    try:
        import dask.config
        from dask.utils import parse_timedelta
        value = dask.config.get("distributed.scheduler.no-workers-timeout", None)
        if value is not None:
            return float(parse_timedelta(value, default="s"))
    except Exception:   # an unreadable setting: ours
        pass
    return NO_WORKERS_TIMEOUT


def worker_count(client: Any) -> Optional[int]:
    """The scheduler's number of workers, or None if it cannot be asked."""
    try:
        info = client.scheduler_info()
    except Exception:
        return None
    if "n_workers" in info:
        return int(info["n_workers"])
    return len(info.get("workers", ()))


class WorkerWatch:
    """Says when a cluster has been without workers for too long."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._seen = False            # the cluster had a worker since the pool started
        self._none_since: Optional[float] = None
        self._next = 0.0

    def due(self, now: float) -> Optional[float]:
        """Seconds until the next check."""
        return max(0.0, self._next - now)

    def check(self, client: Any, now: Optional[float] = None) -> Optional[float]:
        """Seconds the cluster has been without workers, once past the
        timeout; else None.  At most one question to the scheduler every
        INTERVAL seconds."""
        now = time.monotonic() if now is None else now
        if now < self._next:
            return None
        self._next = now + INTERVAL
        count = worker_count(client)
        if count is None:   # the scheduler did not answer: not a verdict
            return None
        if count:
            self._seen, self._none_since = True, None
            return None
        if not self._seen:
            return None
        if self._none_since is None:
            self._none_since = now
        waited = now - self._none_since
        return waited if waited >= self.timeout else None

    def idle(self) -> None:
        """Nothing in flight: the next check starts afresh."""
        self._next = 0.0
