"""``ProcessPoolExecutor.map``: its three ways (elastic units cut as the
pacer says; chunks of a given size; through ``submit``, lazily with
``buffersize``) and the iterators of their results.  executor.py's
``ProcessPoolExecutor`` has them from :class:`ExecutorMaps`."""
from __future__ import annotations

import collections
import functools
import itertools
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, TypeVar

from ..engine import EngineSurface
from ..options import Guards, checkpointed
from ..progress import Progress, ProgressArg, check_progress, finish_progress, make_progress
from ..wire.messages import EACH, EACH_STAR, STARMAP
from .executor_calls import FutureJob, MapJob

if TYPE_CHECKING:
    from ..checkpoint import CheckpointArg

T = TypeVar("T")


class ExecutorMaps:
    """The ``map`` of an executor that has ``_running``, ``_shutdown_lock``
    and ``_submit`` (executor.py)."""

    _shutdown_lock: threading.Lock

    def _running(self) -> EngineSurface:
        raise NotImplementedError

    def _submit(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: Dict[str, Any],
                guards: Optional[Guards]) -> "Future[T]":
        raise NotImplementedError

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> "Future[T]":
        raise NotImplementedError

    def _submit_overridden(self) -> bool:
        """Is ``submit`` not the executor's own (a subclass's, a wrapper's)?"""
        raise NotImplementedError

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any],
            timeout: Optional[float] = None, chunksize: Optional[int] = None,
            buffersize: Optional[int] = None, checkpoint: CheckpointArg = None,
            progress: ProgressArg = None) -> Iterator[T]:
        """Like ``Executor.map``: arguments are read at once, results come in
        order, each item's exception raised at its place (a worker's death
        too: only the item it was running fails).  Without *chunksize*,
        items are sent in batches sized from how long they take; with it,
        as the standard library does, a chunk fails as a whole.
        *buffersize* (as Python 3.14's, on every version): read the input
        lazily, with at most that many calls (or chunks) submitted and not
        yet consumed, for inputs too large or endless.  Where ``submit`` is
        overridden (a subclass, or a tool such as tqdm's ``process_map``
        wrapping it), every call goes through it, as the standard
        ``Executor.map`` does.

        Args:
            fn: The function, called with one item of each iterable.
            *iterables: The arguments; the shortest ends the map.
            timeout: Seconds from this call after which taking a value not
                yet done raises ``TimeoutError``.
            chunksize: Items per call sent to a worker (a chunk fails as a
                whole); by default sized from how long items take.
            buffersize: Read the input lazily, keeping at most this many
                calls submitted and not consumed.
            checkpoint: A directory or :class:`~poolguard.Checkpoint`: items
                already done are not run again (see :meth:`poolguard.Pool.map`).
            progress: ``True``, a tqdm bar, or a callable given a
                :class:`poolguard.progress.ProgressInfo` (see
                :meth:`poolguard.Pool.map`); not with *buffersize*.

        Returns:
            An iterator of the values in input order; each failed item
            raises its error when its value is taken.

        Raises:
            ValueError: *chunksize* or *buffersize* below 1, or *progress*
                with *buffersize*.
            RuntimeError: The executor is shut down.
        """
        return self._map(fn, iterables, timeout, chunksize, buffersize, checkpoint, progress,
                         None, self.submit if self._submit_overridden() else None)

    def _map(self, fn: Callable[..., Any], iterables: tuple[Any, ...], timeout: Optional[float],
             chunksize: Optional[int], buffersize: Optional[int], checkpoint: CheckpointArg,
             progress: ProgressArg, guards: Optional[Guards],
             submit: Optional[Callable[..., "Future[Any]"]]) -> Iterator[Any]:
        """``map`` with the call's own *guards*; through *submit* when it is
        overridden (None: it is not)."""
        if chunksize is not None and (isinstance(chunksize, bool)
                                      or not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError("chunksize must be >= 1.")
        _check_buffersize(buffersize, progress)
        check_progress(progress)
        fn = checkpointed(fn, checkpoint)
        end = None if timeout is None else time.monotonic() + timeout
        if buffersize is not None or (progress is None and submit is not None):
            return self._map_by_submit(fn, iterables, end, chunksize or 1, buffersize,
                                       submit or functools.partial(self._submit_one, guards))
        if chunksize is None:
            return self._map_elastic(fn, iterables, end, progress, guards)
        arguments = list(zip(*iterables, strict=False))   # the shortest ends it, as in the stdlib
        futures: List[Future[Any]] = []
        with self._shutdown_lock:
            engine = self._running()
            func_bytes = engine.encode_function(fn)
            counts = make_progress(progress, engine, "map", fn, len(arguments))
            for lo in range(0, len(arguments), chunksize):
                future: Future[Any] = Future()
                job = FutureJob(engine, fn, STARMAP, "map", future, lo,
                                len(arguments[lo:lo + chunksize]), guards)
                job.progress = counts
                engine.submit_items(job, arguments[lo:lo + chunksize], chunksize, lo,
                                    func_bytes)
                futures.append(future)
        return _results_in_order(futures, end, counts)

    def _submit_one(self, guards: Optional[Guards], fn: Callable[..., Any],
                    *args: Any) -> "Future[Any]":
        return self._submit(fn, args, {}, guards)

    def _map_by_submit(self, fn: Callable[..., Any], iterables: tuple[Any, ...],
                       end: Optional[float], chunksize: int, buffersize: Optional[int],
                       submit: Callable[..., "Future[Any]"]) -> Iterator[Any]:
        """``map`` through ``self.submit``: a call per item, or per chunk of
        *chunksize* items; with *buffersize*, the input is read as results
        are consumed.  Back-to-back submits still share units (executor_calls.py)."""
        args: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)
        call: Callable[..., Any] = fn
        if chunksize > 1:
            args = ((chunk,) for chunk in _chunks(args, chunksize))
            call = functools.partial(_run_chunk, fn)
        first = args if buffersize is None else itertools.islice(args, buffersize)
        futures = collections.deque(submit(call, *a) for a in first)
        return _results_by_submit(submit, call, futures, args, end, chunksize > 1)

    def _map_elastic(self, fn: Callable[..., Any], iterables: tuple[Any, ...], end: Optional[float],
                     progress: ProgressArg, guards: Optional[Guards]) -> Iterator[Any]:
        if len(iterables) == 1:   # no 1-tuples to make, send and unpack
            arguments: list[Any] = list(iterables[0])
            job = MapJob(fn, EACH, len(arguments))
        else:
            arguments = list(zip(*iterables, strict=False))   # the shortest ends it
            job = MapJob(fn, EACH_STAR, len(arguments))
        job.guards = guards
        with self._shutdown_lock:
            engine = self._running()
            job.progress = make_progress(progress, engine, "map", fn, len(arguments))
            if arguments:
                engine.submit_elastic(job, arguments)
        return job.results(end)


def _results_in_order(futures: List[Future[Any]], end: Optional[float],
                      progress: Optional[Progress]) -> Iterator[Any]:
    futures.reverse()
    try:
        while futures:
            timeout = None if end is None else end - time.monotonic()
            # result() raises TimeoutError, or the chunk's error, as Executor.map does.
            values = futures[-1].result(timeout)
            futures.pop()
            # Hand each result over and keep no reference to it (the list is
            # the future's): a consumer that drops it frees it.
            values.reverse()
            while values:
                yield values.pop()
    finally:
        for future in futures:
            future.cancel()
        finish_progress(progress)


def _check_buffersize(buffersize: Optional[int], progress: ProgressArg) -> None:
    if buffersize is None:
        return
    if isinstance(buffersize, bool) or not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize < 1:
        raise ValueError("buffersize must be None or > 0")
    if progress is not None:
        raise ValueError("progress= needs the whole input, which buffersize= does not read "
                         "at once; pass one or the other")


def _chunks(args: Iterator[tuple[Any, ...]], size: int) -> Iterator[tuple[Any, ...]]:
    while chunk := tuple(itertools.islice(args, size)):
        yield chunk


def _run_chunk(fn: Callable[..., Any], chunk: tuple[tuple[Any, ...], ...]) -> List[Any]:
    """In the worker: one chunk of a ``map`` that goes through ``submit``."""
    return [fn(*args) for args in chunk]


def _results_by_submit(submit: Callable[..., "Future[Any]"], call: Callable[..., Any],
                       futures: "collections.deque[Future[Any]]",
                       rest: Iterator[tuple[Any, ...]], end: Optional[float],
                       chunked: bool) -> Iterator[Any]:
    """Results in order; each one taken submits the next input's call, if
    any is left (*rest* is empty unless the input is read lazily)."""
    try:
        while futures:
            timeout = None if end is None else end - time.monotonic()
            value = futures[0].result(timeout)
            futures.popleft()
            for args in itertools.islice(rest, 1):
                futures.append(submit(call, *args))
            if chunked:
                yield from value
            else:
                yield value
            del value
    finally:
        for future in futures:
            future.cancel()
