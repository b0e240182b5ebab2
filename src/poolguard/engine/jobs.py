"""Jobs and units: what a call of a front becomes on its way to the workers.

A *job* is one call of a front (an ``apply_async``, a ``map``, a ``submit``);
the supervisor cuts it into *units*, each sent to one worker as one frame and
answered by one reply.  The job is the sink its units report to.
"""
from __future__ import annotations

import itertools
from collections import abc
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Protocol, Sequence, Tuple

from ..errors import TaskInfo
from ..options import Guards
from .callbacks import report_callback_error
from ..naming import arguments_text, clip, function_name, short_repr
from ..wire.messages import (APPLY, EACH_APPLY, EACH_STAR, PER_ITEM, PICKLING_ERRORS, STARMAP,
                             Timing,
                             encode_task)

if TYPE_CHECKING:
    from ..wire.buffers import SharedBuffers

_unit_ids = itertools.count()
_VIEW_FROM = 64   # chunks this long are views of the input until pickled (cut_units)


class Progress(Protocol):
    """What a job tells ``progress=`` (poolguard.progress.Progress, a feature
    above the engine, which the engine does not import)."""

    def count(self, done: int, error: Optional[BaseException] = None,
              failed: int = 0) -> None: ...

    def count_retry(self, timed_out: bool = False) -> None: ...


class Job:
    """One call of a front (an ``apply_async``, a ``map``, a ``submit``): the sink
    its units report to.  Fronts subclass it; the supervisor calls
    ``unit_done``/``unit_failed`` exactly once per unit."""

    progress: Optional[Progress] = None   # progress=: counted as units finish
    guards: Optional[Guards] = None       # the call's own guards (None: the pool's)

    def __init__(self, func: Callable[..., Any], kind: int, call: str):
        self.func = func
        self.kind = kind
        self.call = call

    def unit_done(self, unit: "Unit", values: Any) -> None:
        raise NotImplementedError

    def unit_failed(self, unit: "Unit", exc: BaseException) -> None:
        raise NotImplementedError

    def unit_retried(self, unit: "Unit", timed_out: bool = False) -> None:
        """*unit*'s worker died (*timed_out*: stopped by task_timeout) and it
        runs again elsewhere (``retries=``)."""
        if self.progress is not None:
            self.progress.count_retry(timed_out)

    def count_progress(self, unit: "Unit", ok: bool, value: Any) -> None:
        """Before *value* is delivered: what it adds to ``progress=``."""
        progress = self.progress
        assert progress is not None
        if not ok:
            progress.count(len(unit.items), value, len(unit.items))
        elif self.kind in PER_ITEM:
            values, errors = value
            progress.count(len(values) - len(errors))
            for error in errors.values():
                progress.count(1, error, 1)
        else:
            progress.count(len(value))

    def wanted(self, unit: "Unit") -> bool:
        """False when the unit should be dropped before it is sent (cancelled)."""
        return True

    def call_done(self, unit: "Unit", offset: int, ok: bool, value: Any) -> None:
        """EACH_APPLY, STREAM: the call at *offset* in *unit* ended (*ok*: *value* is
        its result; else the exception that fails it), before the unit did."""
        raise NotImplementedError

    def answered(self, unit: "Unit", offset: int) -> bool:
        """Has the item at *offset* in *unit* had its outcome already?  (Only
        EACH_APPLY and STREAM units answer item by item: such an item is not run again
        after its worker's death.)"""
        return False

    def cut(self, unit: "Unit", count: int) -> Tuple[Optional["Unit"], Optional[BaseException]]:
        """The next unit to send from elastic *unit*, of at most *count* items
        (None: nothing to send now), and the error that fails it if its items
        do not pickle (``Unit.cut``)."""
        return unit.cut(count)

    def started(self, unit: "Unit") -> bool:
        """Has *unit* begun somewhere (sent to a worker that died, and queued
        again)?  ``shutdown(cancel_futures=True)`` runs those, as the
        standard executor runs what its workers took."""
        return False

    def cancel(self, unit: "Unit") -> None:
        """*unit* will not run (``shutdown(cancel_futures=True)``)."""
        self.unit_failed(unit, RuntimeError("not run: the pool shut down"))

    def describe(self, unit: "Unit", offset: Optional[int]) -> TaskInfo:
        items = unit.items
        if offset is None and len(items) == 1:
            offset = 0
        if offset is None or offset >= len(items):
            return TaskInfo(function_name(self.func), f"<{len(items)} items from {unit.start}>",
                            unit.start, self.call)
        return self.describe_item(items[offset], unit.start + offset)

    def describe_item(self, item: Any, index: int) -> TaskInfo:
        """One item of this job, at *index* in its input."""
        name = function_name(self.func)
        if self.kind in (APPLY, EACH_APPLY):
            args, kwds = item
            return TaskInfo(name, arguments_text(args, kwds), None, self.call)
        if self.kind in (STARMAP, EACH_STAR):
            try:
                text = ", ".join(short_repr(a) for a in item)
            except TypeError:
                text = short_repr(item)
            return TaskInfo(name, clip(text), index, self.call)
        return TaskInfo(name, short_repr(item), index, self.call)


def timing_of(guards: Optional[Guards]) -> Optional[Timing]:
    """What the worker must know of a call's own guards (None: the pool's)."""
    if guards is None:
        return None
    return (guards.task_timeout is not None, guards.soft_timeout)


class Unit:
    """A chunk of one job's items, sent to one worker as one frame.

    An *elastic* unit is not sent as it is: the supervisor cuts units from
    its front, as many items at a time as the pacer says (pacing.py), and
    encodes each when it sends it."""

    __slots__ = ("id", "job", "start", "items", "frame", "func_bytes", "attempts", "shared",
                 "remote", "elastic", "expected", "answered", "__weakref__")

    def __init__(self, job: Job, start: int, items: Sequence[Any], func_bytes: bytes,
                 attempts: Tuple[str, ...] = (), remote: bool = False,
                 elastic: bool = False, lazy: bool = False):
        self.id = next(_unit_ids)
        self.job = job
        self.start = start        # index of items[0] in the job's input
        # Kept to name the culprit if the worker dies, and because workers may
        # read large bytes among them straight from our memory (remote).
        self.items = items
        self.func_bytes = func_bytes
        self.attempts = attempts   # earlier failed attempts (retries)
        self.remote = remote
        self.elastic = elastic
        self.expected: Optional[float] = None   # seconds, the pacer's guess when sent
        self.answered = 0   # STREAM: items answered one by one so far (they come in order)
        self.frame: Tuple[bytes, ...] = ()
        self.shared: Optional[SharedBuffers] = None
        if not (elastic or lazy):
            self.encode()

    def encode(self) -> None:
        """Pickle it into its frame (a lazy unit: when the supervisor sends it)."""
        items = self.items
        if type(items) is View:
            items = self.items = items.materialize()
        self.frame, self.shared = encode_task(self.id, self.job.kind, self.func_bytes, items,
                                              self.remote, timing_of(self.job.guards))

    def cut(self, count: int) -> Tuple["Unit", Optional[BaseException]]:
        """Elastic: a unit of the first *count* items, encoded; this one keeps
        the rest.  If they do not pickle: a placeholder and the error."""
        items, start = self.items, self.start
        chunk = items[:count]
        self.items = View.of(items, count)
        self.start += count
        try:
            return Unit(self.job, start, chunk, self.func_bytes, remote=self.remote), None
        except PICKLING_ERRORS as exc:
            if count > 1:   # fail only the item that does not pickle
                self.items, self.start = items, start
                return self.cut(1)
            return Unit.placeholder(self.job, start, chunk), exc

    def release(self) -> None:
        """Free the shared buffers of its arguments: the unit is finished."""
        if self.shared is not None:
            self.shared.close()
            self.shared = None

    def split(self, offset: Optional[int]) -> List["Unit"]:
        """Fresh units to run this one again: with *offset*, the items before
        it, the item at it (which keeps the attempts) and those after, so only
        the culprit item counts as retried; without, the whole unit.  Each
        part keeps what of it was answered (STREAM): the item a worker died
        after answering, before its slot moved on, is known as answered."""
        if offset is None:
            spans = [(0, len(self.items))]
        else:
            spans = [(lo, hi) for lo, hi in
                     ((0, offset), (offset, offset + 1), (offset + 1, len(self.items))) if lo < hi]
        parts = []
        for lo, hi in spans:
            part = Unit(self.job, self.start + lo, self.items[lo:hi], self.func_bytes,
                        self.attempts if lo == offset or offset is None else (), self.remote)
            part.answered = max(0, min(hi - lo, self.answered - lo))
            parts.append(part)
        return parts

    @classmethod
    def unencoded(cls, job: Job, start: int, items: Sequence[Any], func_bytes: bytes) -> "Unit":
        """A unit that another engine encodes its own way (the cluster's)."""
        unit = cls.placeholder(job, start, items)
        unit.id, unit.func_bytes = next(_unit_ids), func_bytes
        return unit

    @classmethod
    def placeholder(cls, job: Job, start: int, items: Sequence[Any]) -> "Unit":
        """A unit that is never sent: it only carries a failure to its job
        (arguments that did not pickle, an iterable that raised)."""
        unit = cls.__new__(cls)
        unit.id, unit.job, unit.start, unit.items, unit.frame = -1, job, start, items, ()
        unit.func_bytes, unit.attempts, unit.shared, unit.remote = b"", (), None, False
        unit.elastic, unit.expected, unit.answered = False, None, 0
        return unit


class View(abc.Sequence[Any]):
    """Items *lo* to *hi* of a sequence, without copying them: what is left
    of an elastic unit after each cut, and a lazy unit's chunk until it is
    pickled (``materialize``)."""

    __slots__ = ("_items", "_lo", "_hi")

    def __init__(self, items: Sequence[Any], lo: int, hi: int):
        self._items, self._lo, self._hi = items, lo, hi

    @classmethod
    def of(cls, items: Sequence[Any], lo: int, hi: Optional[int] = None) -> "View":
        """Items *lo* to *hi* (None: the end) of *items*, a view or not."""
        hi = len(items) if hi is None else min(hi, len(items))
        if type(items) is View:   # not isinstance: an ABC's check costs a microsecond
            return cls(items._items, items._lo + lo, items._lo + hi)
        return cls(items, lo, hi)

    def materialize(self) -> Sequence[Any]:
        return self._items[self._lo:self._hi]

    def __len__(self) -> int:
        return self._hi - self._lo

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            return self._items[self._lo + start:self._lo + stop:step]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._items[self._lo + index]


def deliver(unit: Unit, ok: bool, value: Any) -> None:
    """Hand a finished unit's outcome to its job: its values (*ok*) or the
    exception that fails it.  A user callback that raises is reported, and
    the engine goes on."""
    unit.release()
    job = unit.job
    try:
        if job.progress is not None:   # first: its last report precedes the result
            job.count_progress(unit, ok, value)
        (job.unit_done if ok else job.unit_failed)(unit, value)
    except Exception:
        report_callback_error()


def make_unit(job: Job, start: int, items: Sequence[Any], func_bytes: bytes,
              remote: bool) -> Optional[Unit]:
    """A unit of *items*; None if they cannot be pickled, the job having
    been failed with the pickling error, as in the standard library."""
    try:
        return Unit(job, start, items, func_bytes, remote=remote)
    except PICKLING_ERRORS as exc:
        job.unit_failed(Unit.placeholder(job, start, items), exc)
        return None


def cut_units(job: Job, items: Sequence[Any], chunksize: int, start: int, func_bytes: bytes,
              remote: bool, workers: int = 0, least: int = 0) -> List[Unit]:
    """*items* as lazy units of *chunksize*: the supervisor pickles each as it
    sends it, so the first worker starts while the rest are still being
    pickled (one that cannot be pickled fails then: see ``_next_unit``).
    Short chunks are cut as slices at once: a view of one item costs more
    than the slice (imap's chunksize=1).  With *workers*, the last units
    shrink down to *least* items (``shrinking``)."""
    bounds = shrinking(len(items), chunksize, workers, least) if workers else [
        (lo, lo + chunksize) for lo in range(0, len(items), chunksize)]
    if chunksize < _VIEW_FROM:
        return [Unit(job, start + lo, items[lo:hi], func_bytes, remote=remote, lazy=True)
                for lo, hi in bounds]
    return [Unit(job, start + lo, View.of(items, lo, hi), func_bytes, remote=remote, lazy=True)
            for lo, hi in bounds]


def shrinking(count: int, chunksize: int, workers: int, least: int = 1) -> List[Tuple[int, int]]:
    """Bounds of units of *chunksize* items, but none over the items left
    shared by twice the *workers* (nor under *least*, nor an eighth of
    *chunksize*): the workers then end together, where equal chunks left
    one of them the whole last chunk to run alone (a default map's tail took
    4.5 of its 25 ms)."""
    bounds = []
    lo, least = 0, max(1, least, chunksize // 8)
    while lo < count:
        size = min(chunksize, max(least, -(-(count - lo) // (2 * workers))))
        bounds.append((lo, min(count, lo + size)))
        lo += size
    return bounds
