"""``ProcessPoolExecutor.with_options``: a view of an executor whose calls
have guards of their own.  ``submit``'s keyword arguments belong to the
function, so a call's guards cannot be arguments of ``submit`` itself."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, Optional, Protocol, TypeVar

from ..options import Guards

if TYPE_CHECKING:
    from ..checkpoint import CheckpointArg
    from .call_future import StoppableFuture
    from ..progress import ProgressArg

T = TypeVar("T")


class _Calls(Protocol):
    """What a view uses of its executor (executor.py's, which makes views)."""

    def _submit(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: Dict[str, Any],
                guards: Optional[Guards]) -> StoppableFuture[T]: ...

    def _map(self, fn: Callable[..., Any], iterables: tuple[Any, ...], timeout: Optional[float],
             chunksize: Optional[int], buffersize: Optional[int], checkpoint: CheckpointArg,
             progress: ProgressArg, guards: Optional[Guards],
             submit: Optional[Callable[..., Any]]) -> Iterator[Any]: ...


class ExecutorOptions:
    """What :meth:`ProcessPoolExecutor.with_options` returns: ``submit`` and
    ``map`` as the executor's, each call with the guards given there
    (the executor's own for the others).  It holds no resources: shut down
    the executor, not the view."""

    def __init__(self, executor: _Calls, guards: Optional[Guards]):
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
