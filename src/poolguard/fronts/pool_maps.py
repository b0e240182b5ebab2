"""``Pool``'s calls over many items: ``map``, ``starmap`` and their
``_async`` forms, ``imap`` and ``imap_unordered``.  How the items are cut
into chunks, and the thread that reads a lazy iterable while its results
are consumed.  pool.py's ``Pool`` has them from :class:`PoolMaps`."""
from __future__ import annotations

import itertools
import threading
from typing import (TYPE_CHECKING, Any, Callable, Iterable, Iterator, List, Mapping, Optional,
                    TypeVar)

from ..engine import EngineSurface, PoolState, Unit
from ..errors import PoolTerminatedError
from .shared import guards_for_call
from ..options import CallGuards, checkpointed
from ..progress import ProgressArg, check_progress, make_progress
from .pool_calls import Callback, MapResult
from .pool_imap import IMapIterator
from ..wire.messages import MAP, STARMAP, STREAM

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..checkpoint import CheckpointArg

T = TypeVar("T")


class PoolMaps:
    """The map family of a pool over ``_engine``, whose ``_processes``
    workers set the default chunk size of ``map``; ``_running``, the check
    that the pool still takes calls, serves the pool's other calls too."""

    _engine: Optional[EngineSurface]
    _processes: int

    def map(self, func: Callable[[Any], T], iterable: Iterable[Any],
            chunksize: Optional[int] = None, *, checkpoint: CheckpointArg = None,
            progress: ProgressArg = None,
            **guards: Unpack[CallGuards]) -> List[T]:
        """Apply *func* to each item of *iterable* in the workers; return the list of values.

        As ``multiprocessing.Pool.map``: the items go in chunks, the values
        come back in input order, and the call fails at the first failed
        chunk.  A worker that dies fails the call with
        :class:`~poolguard.WorkerCrashedError` naming the item it ran
        (``exc.task.item``), instead of hanging.

        Args:
            func: A function of one argument (see :meth:`apply`).
            iterable: The items; read whole before the first is sent.
            chunksize: Items sent to a worker at once; by default about four
                chunks per worker, the last ones smaller so that the workers
                end together.
            checkpoint: A directory (or a :class:`~poolguard.Checkpoint`)
                where each item's result is kept: a call made again after a
                crash or an interruption runs only the items not yet done.
            progress: ``True`` for a progress bar (tqdm when installed, else
                a line of text), a tqdm bar to update, or a callable given a
                :class:`poolguard.progress.ProgressInfo` about 10 times a
                second and once at the end.  Counts the deaths too.
            **guards: This call's own guards, replacing the pool's for it
                alone: ``task_timeout``, ``soft_timeout``,
                ``max_worker_memory``, ``retries``, ``retry_on`` (see
                :ref:`guards`).

        Returns:
            The values, in the order of *iterable*.

        Raises:
            WorkerCrashedError: A worker died running an item.
            ValueError: The pool is closed, or *chunksize* is below 1.
            Exception: The first exception an item raised.
        """
        return self._map_async(func, iterable, chunksize, MAP, "map", checkpoint=checkpoint,
                               progress=progress, guards=guards).get()

    def map_async(self, func: Callable[[Any], T], iterable: Iterable[Any],
                  chunksize: Optional[int] = None, callback: Callback = None,
                  error_callback: Callback = None, *, checkpoint: CheckpointArg = None,
                  progress: ProgressArg = None,
                  **guards: Unpack[CallGuards]) -> MapResult[T]:
        """As :meth:`map`, returning at once.

        Args:
            func: A function of one argument.
            iterable: The items.
            chunksize: Items sent to a worker at once (see :meth:`map`).
            callback: Called with the list of values once all succeeded.
            error_callback: Called with the first error.
            checkpoint: As for :meth:`map`.
            progress: As for :meth:`map`.
            **guards: As for :meth:`map`: this call's own guards.

        Returns:
            A :class:`~poolguard.MapResult` whose ``get()`` is the list.

        Raises:
            ValueError: The pool is closed, or *chunksize* is below 1.
        """
        return self._map_async(func, iterable, chunksize, MAP, "map", callback,
                               error_callback, checkpoint, progress, guards)

    def starmap(self, func: Callable[..., T], iterable: Iterable[Iterable[Any]],
                chunksize: Optional[int] = None, *, checkpoint: CheckpointArg = None,
                progress: ProgressArg = None,
                **guards: Unpack[CallGuards]) -> List[T]:
        """As :meth:`map`, each item being the arguments: ``func(*item)``.

        Args:
            func: The function.
            iterable: Tuples (or other iterables) of arguments.
            chunksize: Items sent to a worker at once (see :meth:`map`).
            checkpoint: As for :meth:`map`.
            progress: As for :meth:`map`.
            **guards: As for :meth:`map`: this call's own guards.

        Returns:
            The values, in input order.

        Raises:
            WorkerCrashedError: A worker died running an item.
            ValueError: The pool is closed, or *chunksize* is below 1.
            Exception: The first exception an item raised.
        """
        return self._map_async(func, iterable, chunksize, STARMAP, "starmap",
                               checkpoint=checkpoint, progress=progress, guards=guards).get()

    def starmap_async(self, func: Callable[..., T], iterable: Iterable[Iterable[Any]],
                      chunksize: Optional[int] = None, callback: Callback = None,
                      error_callback: Callback = None, *, checkpoint: CheckpointArg = None,
                      progress: ProgressArg = None,
                      **guards: Unpack[CallGuards]) -> MapResult[T]:
        """As :meth:`starmap`, returning at once.

        Args:
            func: The function.
            iterable: Tuples of arguments.
            chunksize: Items sent to a worker at once (see :meth:`map`).
            callback: Called with the list of values once all succeeded.
            error_callback: Called with the first error.
            checkpoint: As for :meth:`map`.
            progress: As for :meth:`map`.
            **guards: As for :meth:`map`: this call's own guards.

        Returns:
            A :class:`~poolguard.MapResult` whose ``get()`` is the list.

        Raises:
            ValueError: The pool is closed, or *chunksize* is below 1.
        """
        return self._map_async(func, iterable, chunksize, STARMAP, "starmap", callback,
                               error_callback, checkpoint, progress, guards)

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any],
                   chunksize: Optional[int], kind: int, call: str, callback: Callback = None,
                   error_callback: Callback = None, checkpoint: CheckpointArg = None,
                   progress: ProgressArg = None,
                   guards: Mapping[str, Any] = {}) -> MapResult[Any]:
        engine = self._running()
        own = guards_for_call(engine, guards)
        check_progress(progress)
        func = checkpointed(func, checkpoint)
        items = iterable if isinstance(iterable, (list, tuple, range)) else list(iterable)
        shrink = chunksize is None
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._processes * 4)
            chunksize += bool(extra)
        _check_chunksize(chunksize if items else 1)
        result: MapResult[Any] = MapResult(self, func, kind, call, len(items), callback,
                                      error_callback,
                                      make_progress(progress, engine, call, func, len(items)))
        result.guards = own
        if items:
            engine.submit_items(result, items, chunksize, shrink=shrink)
        return result

    def imap(self, func: Callable[[Any], T], iterable: Iterable[Any],
             chunksize: Optional[int] = 1, *, checkpoint: CheckpointArg = None,
             progress: ProgressArg = None,
             **guards: Unpack[CallGuards]) -> IMapIterator[T]:
        """Apply *func* to each item lazily; iterate over the values in input order.

        A lazy *iterable* is read on a thread of its own as results are
        consumed, so an endless one works.  A failed chunk raises its error
        once, at its place, and iteration goes on after it.

        Args:
            func: A function of one argument.
            iterable: The items (a list, or any iterable, even endless).
            chunksize: Items sent to a worker at once.  With 1, the
                default, each item is a task of its own, answered as it
                ends; tiny items still travel to a worker several at a time
                (as many as about 2 ms of measured work).
            checkpoint: A directory (or a :class:`~poolguard.Checkpoint`)
                where each item's result is kept: a call made again after a
                crash or an interruption runs only the items not yet done.
            progress: ``True`` for a progress bar (tqdm when installed, else
                a line of text), a tqdm bar to update, or a callable given a
                :class:`poolguard.progress.ProgressInfo` about 10 times a
                second and once at the end.  Counts the deaths too.
            **guards: This call's own guards, replacing the pool's for it
                alone: ``task_timeout``, ``soft_timeout``,
                ``max_worker_memory``, ``retries``, ``retry_on`` (see
                :ref:`guards`).

        Returns:
            An :class:`~poolguard.IMapIterator`: iterate it (or ``async for``),
            or call ``next(timeout)``.

        Raises:
            ValueError: The pool is closed, or *chunksize* is below 1.
        """
        return self._imap(func, iterable, chunksize, True, checkpoint, progress, guards)

    def imap_unordered(self, func: Callable[[Any], T], iterable: Iterable[Any],
                       chunksize: Optional[int] = 1, *, checkpoint: CheckpointArg = None,
                       progress: ProgressArg = None,
                       **guards: Unpack[CallGuards]) -> IMapIterator[T]:
        """As :meth:`imap`, the values coming as they are done, in any order.

        Args:
            func: A function of one argument.
            iterable: The items.
            chunksize: Items sent to a worker at once.  With 1, the
                default, each item is a task of its own, answered as it
                ends; tiny items still travel to a worker several at a time
                (as many as about 2 ms of measured work).
            checkpoint: As for :meth:`map`.
            progress: As for :meth:`map`.
            **guards: As for :meth:`map`: this call's own guards.

        Returns:
            An :class:`~poolguard.IMapIterator`.

        Raises:
            ValueError: The pool is closed, or *chunksize* is below 1.
        """
        return self._imap(func, iterable, chunksize, False, checkpoint, progress, guards)

    def _imap(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: Any,
              ordered: bool, checkpoint: CheckpointArg, progress: ProgressArg,
              guards: Mapping[str, Any]) -> IMapIterator[Any]:
        engine = self._running()
        own = guards_for_call(engine, guards)
        check_progress(progress)
        func = checkpointed(func, checkpoint)
        _check_chunksize(chunksize)
        call = "imap" if ordered else "imap_unordered"
        items = iterable if isinstance(iterable, (list, tuple, range)) else None
        known = None if items is None else len(items)
        # One item a task: cut as the pacer says, each item still answered on
        # its own (STREAM), so tiny items do not each cost a unit.
        stream = chunksize == 1 and engine.streams and known != 0
        result: IMapIterator[Any] = IMapIterator(self, func, STREAM if stream else MAP, call,
                                                 ordered,
                                                 make_progress(progress, engine, call, func, known))
        result.guards = own
        if items is not None:
            if stream:
                engine.submit_elastic(result, items)
            else:
                engine.submit_items(result, items, chunksize)
            result._set_length(len(items))
        else:
            # Like the standard library, read a lazy iterable on a thread of its
            # own so that imap returns at once (and an endless one works).
            func_bytes = engine.encode_function(func)   # an unpicklable func raises here
            engine.inbox.open_call()
            threading.Thread(target=_produce,
                             args=(engine, result, iter(iterable), chunksize, func_bytes),
                             name="poolguard-imap-producer", daemon=True).start()
        return result

    def _running(self) -> EngineSurface:
        """The engine, if the pool still takes calls; ValueError if not."""
        engine = self._engine
        if engine is None or engine.state is not PoolState.RUNNING:
            raise ValueError("Pool not running")
        return engine


def _check_chunksize(chunksize: Any) -> None:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")


def _produce(engine: EngineSurface, job: IMapIterator[Any], items: Iterator[Any], chunksize: int,
             func_bytes: bytes) -> None:
    """Cut a lazy iterable into units as it yields; runs on its own thread."""
    count = 0
    ahead = max(1024, 8 * engine.processes * chunksize)
    try:
        while job.wait_for_room(count, ahead, engine):
            try:
                chunk = list(itertools.islice(items, chunksize))
            except Exception as exc:   # the iterable itself raised
                job.unit_failed(Unit.placeholder(job, count, [None]), exc)
                count += 1
                break
            if not chunk:
                break
            try:
                if job.kind == STREAM:
                    job._feed(engine, chunk[0], count, func_bytes)
                else:
                    engine.submit_items(job, chunk, chunksize, count, func_bytes, open_call=True)
            except ValueError as exc:  # terminated while we were reading
                job.unit_failed(Unit.placeholder(job, count, [None]),
                                PoolTerminatedError(f"the pool stopped: {exc}"))
                count += 1
                break
            count += len(chunk)
    finally:
        job._set_length(count)
        engine.inbox.close_call()

