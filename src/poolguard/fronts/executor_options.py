"""``ProcessPoolExecutor.with_options``: a view of an executor whose calls
have guards of their own.  ``submit``'s keyword arguments belong to the
function, so a call's guards cannot be arguments of ``submit`` itself."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, TypeVar

from ..options import Guards

if TYPE_CHECKING:
    from ..checkpoint import CheckpointArg
    from .call_future import StoppableFuture
    from .executor import ProcessPoolExecutor
    from ..progress import ProgressArg

T = TypeVar("T")


class ExecutorOptions:
    """What :meth:`ProcessPoolExecutor.with_options` returns: ``submit`` and
    ``map`` as the executor's, each call with the guards given there
    (the executor's own for the others).  It holds no resources: shut down
    the executor, not the view."""

    def __init__(self, executor: "ProcessPoolExecutor", guards: Optional[Guards]):
        self.executor = executor
        self.guards = guards

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> StoppableFuture[T]:
        """As :meth:`ProcessPoolExecutor.submit`, with this view's guards."""
        return self.executor._submit(fn, args, kwargs, self.guards)

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any],
            timeout: Optional[float] = None, chunksize: Optional[int] = None,
            buffersize: Optional[int] = None, checkpoint: CheckpointArg = None,
            progress: ProgressArg = None) -> Iterator[T]:
        """As :meth:`ProcessPoolExecutor.map`, with this view's guards."""
        return self.executor._map(fn, iterables, timeout, chunksize, buffersize, checkpoint,
                                  progress, self.guards, None)

    def __repr__(self) -> str:
        return f"<ExecutorOptions {self.guards} of {self.executor!r}>"
