"""The soak's outcome model: what each call must give, from its tasks'
kinds and the pool's guards (tests/soak.py runs the calls).

``expect`` simulates the engine's contract on a call's units: a unit's items
run in order; in a chunk (``Pool.map`` and kin, ``executor.map`` with a
chunksize) the first item that raises fails the chunk, a result that does
not pickle fails it once the chunk has run, and a worker's death fails it
naming the item that was running, unless ``retries`` allow another attempt:
then the chunk is split (the items before, the culprit alone with its
attempts counted, the items after) and each part runs again.  A per-item
call (``submit``, ``apply_async``, ``executor.map`` without a chunksize)
gives each item its own outcome.

Without outside kills the observed outcomes must be exactly the simulated
ones (``check_strict``).  An outside SIGKILL may fail whatever its victim
ran, so rounds with kills are checked against what any kill could explain
(``check_relaxed``): every value right and delivered once, every error one
that an item's kind or a kill explains, nothing unaccounted for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, FrozenSet, List, Optional, Sequence, Tuple

from poolguard import (ResultEncodingError, TaskTimeoutError, WorkerCrashedError,
                       WorkerMemoryError)
from soak_tasks import (EXIT, FIRST, KILL, MEMORY, RAISE, RETURN, SEGV, TIMEOUT,
                        UNPICKLABLE, SoakError, value_for)

DEATHS = {KILL: "crash", EXIT: "crash", SEGV: "crash", FIRST: "crash", TIMEOUT: "timeout",
          MEMORY: "memory"}
ERRORS = {KILL: WorkerCrashedError, EXIT: WorkerCrashedError, SEGV: WorkerCrashedError,
          FIRST: WorkerCrashedError, TIMEOUT: TaskTimeoutError, MEMORY: WorkerMemoryError,
          RAISE: SoakError, UNPICKLABLE: ResultEncodingError}
# (signal, exitcode) a death may report; (None, None) when the status is unknown.
STATUSES = {KILL: {("SIGKILL", -9)}, FIRST: {("SIGKILL", -9)}, EXIT: {(None, 3)},
            SEGV: {("SIGSEGV", -11)}}
OUTSIDE = {("SIGKILL", -9), (None, None)}


@dataclass(frozen=True)
class Guards:
    task_timeout: Optional[float] = None
    max_worker_memory: Optional[int] = None
    retries: int = 0
    retry_on: Optional[FrozenSet[str]] = None   # None: every kind
    maxtasks: Optional[int] = None

    def retried(self, kind: str) -> bool:
        """Does a death of a task of *kind* count against ``retries``?"""
        death = DEATHS[kind]
        # The soak's retry_on sets hold "crash" and "oom" together: whether a
        # SIGKILL reads as an OOM kill is the kernel's and the diagnosis' affair.
        return self.retry_on is None or death in self.retry_on

    def options(self) -> dict[str, Any]:
        return {"task_timeout": self.task_timeout, "max_worker_memory": self.max_worker_memory,
                "retries": self.retries,
                "retry_on": sorted(self.retry_on) if self.retry_on is not None else None}


@dataclass(frozen=True)
class Item:
    kind: str
    call: int
    index: int
    size: int

    @property
    def value(self) -> Any:
        return value_for(self.call, self.index, self.size)


@dataclass(frozen=True)
class Failure:
    """An expected error: its class, the item it names (None: a chunk's
    unpicklable result names none), the task kind, and the attempts it lists."""
    cls: type
    item: Optional[int]
    kind: str
    attempts: int = 0


@dataclass
class Entry:
    """A unit's outcome: *count* items from *start*, their values or a failure."""
    start: int
    count: int
    values: Optional[List[Any]] = None
    failure: Optional[Failure] = None


def simulate(items: Sequence[Item], guards: Guards, markers: set[Tuple[int, int]],
             attempts: int = 0) -> List[Entry]:
    """The entries one unit of *items* ends as; *markers* holds the FIRST
    tasks that have had their first attempt (updated)."""
    start = items[0].index
    unpicklable = False
    for offset, item in enumerate(items):
        kind = item.kind
        if kind == FIRST and (item.call, item.index) in markers:
            continue
        if kind == UNPICKLABLE:
            unpicklable = True
        elif kind == RAISE:
            return [Entry(start, len(items), failure=Failure(SoakError, item.index, kind))]
        elif kind in DEATHS:
            if kind == FIRST:
                markers.add((item.call, item.index))
            if guards.retried(kind) and attempts < guards.retries:
                return (simulate(items[:offset], guards, markers) if offset else []) + \
                    simulate([item], guards, markers, attempts + 1) + \
                    (simulate(items[offset + 1:], guards, markers)
                     if offset + 1 < len(items) else [])
            failure = Failure(ERRORS[kind], item.index, kind, attempts + 1 if attempts else 0)
            return [Entry(start, len(items), failure=failure)]
    if unpicklable:
        return [Entry(start, len(items), failure=Failure(ResultEncodingError, None,
                                                         UNPICKLABLE))]
    return [Entry(start, len(items), values=[item.value for item in items])]


def expect(items: Sequence[Item], guards: Guards, chunksize: Optional[int]) -> List[Entry]:
    """Every entry of a call: per item (*chunksize* None) or per chunk."""
    markers: set[Tuple[int, int]] = set()
    if chunksize is None:
        return [entry for item in items for entry in simulate([item], guards, markers)]
    return [entry for lo in range(0, len(items), chunksize)
            for entry in simulate(items[lo:lo + chunksize], guards, markers)]


# ---- matching an observed error -------------------------------------------------

def named_item(exc: BaseException) -> Optional[int]:
    """The item an error names: a crash's ``task.item``, a SoakError's index."""
    if isinstance(exc, SoakError):
        return int(exc.args[1])
    if isinstance(exc, WorkerCrashedError) and exc.task is not None:
        return exc.task.item
    return None


def mismatch(exc: BaseException, failure: Failure, named: bool, exact: bool = True
             ) -> Optional[str]:
    """Why *exc* is not *failure* (None: it is).  *named*: the call's errors
    name their item; *exact*: attempts counted too."""
    what = f"{type(exc).__name__}({_short(exc)})"
    if type(exc) is not failure.cls:
        return f"{what} instead of {failure.cls.__name__} for item {failure.item}"
    if isinstance(exc, SoakError) or (named and isinstance(exc, WorkerCrashedError)):
        if failure.item is not None and named_item(exc) != failure.item:
            return f"{what} names item {named_item(exc)}, expected {failure.item}"
    if isinstance(exc, WorkerCrashedError):
        status = (exc.signal, exc.exitcode)
        if failure.kind in STATUSES and status not in STATUSES[failure.kind] | {(None, None)}:
            return f"{what}: status {status} for a {failure.kind} task"
        if exact and len(exc.attempts) != failure.attempts:
            return f"{what}: {len(exc.attempts)} attempts listed, expected {failure.attempts}"
    return None


def outside_kill(exc: BaseException, item: Optional[int], named: bool) -> bool:
    """Could *exc* be an outside SIGKILL of the worker running *item*?"""
    return (type(exc) is WorkerCrashedError and (exc.signal, exc.exitcode) in OUTSIDE
            and (not named or item is None or exc.task is None or exc.task.item == item))


def explained(exc: BaseException, items: Sequence[Item], guards: Guards, named: bool) -> bool:
    """Rounds with outside kills: does some item of *items* explain *exc*?"""
    for item in items:
        if outside_kill(exc, item.index, named):
            return True
        if item.kind in ERRORS:
            failure = Failure(ERRORS[item.kind], None if item.kind == UNPICKLABLE else item.index,
                              item.kind)
            if mismatch(exc, failure, named, exact=False) is None:
                return True
    return False


def may_return(item: Item, guards: Guards) -> bool:
    return item.kind == RETURN or (item.kind == FIRST and guards.retries > 0
                                   and guards.retried(FIRST))


def _short(exc: BaseException) -> str:
    text = str(exc).split("\n", 1)[0]
    return text if len(text) < 160 else text[:157] + "..."
