"""The future ``ProcessPoolExecutor.submit`` returns: a
``concurrent.futures.Future`` whose call can also be stopped while it runs."""
from __future__ import annotations

import functools
from concurrent.futures import Future, InvalidStateError
from typing import Any, Optional, TypeVar

from ..engine import EngineSurface, Unit
from ..errors import TaskStoppedError
from .executor_calls import FutureJob, SubmitPart

T = TypeVar("T")


class StoppableFuture(Future[T]):
    """A ``concurrent.futures.Future`` (what ``submit`` returns) with
    :meth:`stop`.

    ``cancel()`` keeps the standard contract: it cancels a call not started
    yet and returns ``False`` for one that runs.  ``stop()`` ends the call
    either way, and the future then fails with
    :class:`~poolguard.TaskStoppedError` (it is not ``cancelled()``).
    """

    _engine: Optional[EngineSurface] = None   # set by the executor that made it

    def stop(self) -> bool:
        """End this call now, running or not: the future fails with
        :class:`~poolguard.TaskStoppedError`, the worker running the call
        (if one does) is killed and replaced, and no other call is touched:
        the other calls that worker held run elsewhere.

        Returns:
            True if it was stopped; False if it had finished already (or
            was cancelled).

        Raises:
            ValueError: On a cluster (``cluster=``), where a running call
                cannot be stopped.
        """
        engine = self._engine
        if engine is None:
            return False
        # set_exception is the one atomic step, from PENDING or RUNNING alike
        # (set_running_or_notify_cancel on a running future logs CRITICAL):
        # a result, cancel() or another stop() that came first wins, and the
        # supervisor sends no call of a future finished while pending (start()).
        try:
            self.set_exception(TaskStoppedError("submit stopped on request (stop())"))
        except InvalidStateError:   # finished or cancelled already
            return False
        engine.stop_calls(functools.partial(_runs, self))
        return True


def _runs(future: "Future[Any]", unit: Unit, offset: Optional[int]) -> bool:
    """Does *unit*, at item *offset*, run the call of *future*?"""
    job = unit.job
    if isinstance(job, FutureJob):
        return job.future is future
    if isinstance(job, SubmitPart):
        if offset is None:
            offset = 0 if len(unit.items) == 1 else -1
        index = unit.start + offset
        return 0 <= offset and index < len(job.futures) and job.futures[index] is future
    return False
