"""The soak's calls (tests/soak.py): each makes one call of a front, collects
what it gives within the round's deadline, and checks that against the
model (soak_model.py).

What a call observed is a list of events, ``("v", value)`` or ``("e", exc)``.
"""
from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from soak_model import (Entry, Failure, Guards, Item, expect, explained, may_return,
                        mismatch)
from soak_tasks import task, task_star

Event = Tuple[str, Any]


class Unresolved(Exception):
    """A call did not resolve before the round's deadline."""


class Call:
    """One call; *items* are its tasks, *specs* their argument tuples."""

    name = "?"
    named = True        # its crash errors name the item (task.item)
    chunksize: Optional[int] = None   # None: each item has its own outcome
    mode = "all"        # "all": every outcome comes; "stop": iteration ends at an error

    def __init__(self, items: Sequence[Item], specs: Sequence[tuple[Any, ...]],
                 guards: Guards) -> None:
        self.items, self.specs, self.guards = list(items), list(specs), guards
        self.events: List[Event] = []
        self.deliveries = 0          # callbacks run (apply_async, submit)
        self._lock = threading.Lock()

    def start(self, pool: Any, deadline: float) -> None:
        raise NotImplementedError

    def collect(self, deadline: float) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        kinds = ",".join(item.kind for item in self.items)
        return f"{self.name}(chunksize={self.chunksize}; {kinds})"

    def _delivered(self, _: Any) -> None:
        with self._lock:
            self.deliveries += 1

    # ---- checks ----

    def check(self, strict: bool) -> List[str]:
        problems = self._check_strict() if strict else self._check_relaxed()
        return [f"{self.describe()}: {p}" for p in problems]

    def _entries(self) -> List[Entry]:
        return expect(self.items, self.guards, self.chunksize)

    def _expected_events(self) -> List[Tuple[str, Any]]:
        """("v", value) or ("e", [failures, any of which may come])."""
        out: List[Tuple[str, Any]] = []
        for entry in self._entries():
            if entry.failure is not None:
                out.append(("e", [entry.failure]))
                if self.mode == "stop":
                    break
            else:
                out.extend(("v", value) for value in entry.values or ())
        return out

    def _check_strict(self) -> List[str]:
        expected, got = self._expected_events(), self.events
        for i, ((want, what), (kind, value)) in enumerate(zip(expected, got, strict=False)):
            problem = _compare(want, what, kind, value, self.named)
            if problem:
                return [f"outcome {i}: {problem}"]
        if len(expected) != len(got):
            return [f"{len(got)} outcomes, expected {len(expected)}: got "
                    f"{_brief(got[len(expected):])}, missing {_brief(expected[len(got):])}"]
        return []

    def _check_relaxed(self) -> List[str]:
        """Ordered outcomes: values in input order, each error explained by an
        item between its neighbours, and every gap holding an error."""
        problems: List[str] = []
        last, errors_in_gap = -1, 0
        for kind, value in self.events + [("end", None)]:
            if kind == "e":
                errors_in_gap += 1
                continue
            index = len(self.items) if kind == "end" else _value_index(value, self.items)
            if index is None or index <= last:
                problems.append(f"value {value!r:.80} out of place (after item {last})")
                continue
            if kind == "v" and not may_return(self.items[index], self.guards):
                problems.append(f"a value for a {self.items[index].kind} task: item {index}")
            gap = self.items[last + 1:index]
            if gap and not errors_in_gap:
                problems.append(f"items {last + 1}..{index - 1}: neither value nor error")
            last, errors_in_gap = index, 0
        for kind, value in self.events:
            if kind == "e" and not explained(value, self.items, self.guards, self.named):
                problems.append(f"unexplained {type(value).__name__}: {value}")
        return problems


def _value_index(value: Any, items: Sequence[Item]) -> Optional[int]:
    try:
        index = value[1]
        return index if items[index].value == value else None
    except Exception:
        return None


def _compare(want: str, what: Any, kind: str, value: Any, named: bool) -> Optional[str]:
    if want == "v" and kind == "v":
        return None if value == what else f"value {value!r:.80}, expected {what!r:.80}"
    if want == "v":
        return f"{type(value).__name__}: {value} instead of value {what!r:.80}"
    if kind == "v":
        return f"value {value!r:.80} instead of {_brief([(want, what)])}"
    reasons = [mismatch(value, failure, named) for failure in what]
    return None if any(r is None for r in reasons) else reasons[0]


def _brief(events: Sequence[Tuple[str, Any]]) -> str:
    parts = []
    for kind, value in events[:4]:
        if kind == "v":
            parts.append(f"value of item {value[1] if isinstance(value, tuple) else '?'}")
        elif isinstance(value, list):
            parts.append("|".join(f"{f.cls.__name__}@{f.item}" for f in value))
        else:
            parts.append(f"{type(value).__name__}: {str(value)[:100]}")
    return "[" + ", ".join(parts) + (", ..." if len(events) > 4 else "") + "]"


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Unresolved
    return left


# ---- single calls ----------------------------------------------------------------

class Single(Call):
    """apply_async / submit: one task, one outcome, delivered once."""

    named = False

    def _check_strict(self) -> List[str]:
        return super()._check_strict() + self._check_delivery()

    def _check_relaxed(self) -> List[str]:
        problems = self._check_delivery()
        (kind, value), = self.events
        item = self.items[0]
        if kind == "v" and (value != item.value or not may_return(item, self.guards)):
            problems.append(f"value {value!r:.80} for a {item.kind} task")
        if kind == "e" and not explained(value, self.items, self.guards, False):
            problems.append(f"unexplained {type(value).__name__}: {value}")
        return problems

    def _check_delivery(self) -> List[str]:
        return [] if self.deliveries == 1 else [f"delivered {self.deliveries} times"]


class Apply(Single):
    name = "apply_async"

    def start(self, pool: Any, deadline: float) -> None:
        self.result = pool.apply_async(task_star, self.specs[0], callback=self._delivered,
                                       error_callback=self._delivered)

    def collect(self, deadline: float) -> None:
        self.events = [_outcome(lambda: self.result.get(_left(deadline)), self.result.ready)]


class Submit(Single):
    name = "submit"

    def start(self, pool: Any, deadline: float) -> None:
        self.future = pool.submit(task_star, *self.specs[0])
        self.future.add_done_callback(self._delivered)

    def collect(self, deadline: float) -> None:
        self.events = [_outcome(lambda: self.future.result(_left(deadline)),
                                self.future.done)]
        # done-callbacks run after result() may return: wait for ours
        while self.deliveries == 0 and time.monotonic() < deadline:
            time.sleep(0.001)


def _outcome(get: Callable[[], Any], ready: Callable[[], bool]) -> Event:
    try:
        return ("v", get())
    except Exception as exc:   # the task's error, or a timeout of get()
        if not ready():
            raise Unresolved from None
        return ("e", exc)


# ---- the map family ----------------------------------------------------------------

class MapAsync(Call):
    """Pool.map_async / starmap_async: every value, or the first failed chunk's error."""

    def __init__(self, items: Sequence[Item], specs: Sequence[tuple[Any, ...]],
                 guards: Guards, chunksize: int, star: bool) -> None:
        super().__init__(items, specs, guards)
        self.chunksize, self.star = chunksize, star
        self.name = "starmap_async" if star else "map_async"

    def start(self, pool: Any, deadline: float) -> None:
        if self.star:
            self.result = pool.starmap_async(task_star, self.specs, self.chunksize)
        else:
            self.result = pool.map_async(task, self.specs, self.chunksize)

    def collect(self, deadline: float) -> None:
        self.events = [_outcome(lambda: self.result.get(_left(deadline)), self.result.ready)]

    def _expected_events(self) -> List[Tuple[str, Any]]:
        failures: List[Failure] = [e.failure for e in self._entries() if e.failure is not None]
        if failures:
            return [("e", failures)]
        return [("v", [item.value for item in self.items])]

    def _check_relaxed(self) -> List[str]:
        (kind, value), = self.events
        if kind == "v":
            if value != [item.value for item in self.items] or \
                    not all(may_return(item, self.guards) for item in self.items):
                return ["values wrong or for tasks that cannot return"]
            return []
        if not explained(value, self.items, self.guards, True):
            return [f"unexplained {type(value).__name__}: {value}"]
        return []


class IMap(Call):
    """Pool.imap / imap_unordered: each chunk's values, or its error once at
    its place (imap), and iteration goes on."""

    def __init__(self, items: Sequence[Item], specs: Sequence[tuple[Any, ...]],
                 guards: Guards, chunksize: int, ordered: bool, lazy: bool) -> None:
        super().__init__(items, specs, guards)
        self.chunksize, self.ordered, self.lazy = chunksize, ordered, lazy
        self.name = ("imap" if ordered else "imap_unordered") + (" (lazy)" if lazy else "")

    def start(self, pool: Any, deadline: float) -> None:
        specs = iter(self.specs) if self.lazy else self.specs
        method = pool.imap if self.ordered else pool.imap_unordered
        self.iterator = method(task, specs, self.chunksize)

    def collect(self, deadline: float) -> None:
        while True:
            try:
                self.events.append(("v", self.iterator.next(_left(deadline))))
            except StopIteration:
                return
            except Exception as exc:
                if isinstance(exc, multiprocessing.TimeoutError):   # next()'s own
                    raise Unresolved from None
                self.events.append(("e", exc))

    def _check_strict(self) -> List[str]:
        if self.ordered:
            return super()._check_strict()
        return _check_unordered(self.events, self._expected_events(), self.named)

    def _check_relaxed(self) -> List[str]:
        if self.ordered:
            return super()._check_relaxed()
        problems, seen = [], set()
        for kind, value in self.events:
            if kind == "v":
                index = _value_index(value, self.items)
                if index is None or index in seen or \
                        not may_return(self.items[index], self.guards):
                    problems.append(f"value {value!r:.80} wrong, twice, or not returnable")
                seen.add(index)
            elif not explained(value, self.items, self.guards, True):
                problems.append(f"unexplained {type(value).__name__}: {value}")
        if len(seen) < len(self.items) and not any(k == "e" for k, _ in self.events):
            problems.append(f"{len(self.items) - len(seen)} items neither value nor error")
        return problems


def _check_unordered(got: Sequence[Event], expected: Sequence[Tuple[str, Any]],
                     named: bool) -> List[str]:
    values = sorted(repr(v) for k, v in got if k == "v")
    if values != sorted(repr(v) for k, v in expected if k == "v"):
        return [f"values differ: got {len(values)}, expected "
                f"{sum(k == 'v' for k, _ in expected)}"]
    wanted = [failures for k, failures in expected if k == "e"]
    for kind, exc in got:
        if kind != "e":
            continue
        for i, failures in enumerate(wanted):
            if any(mismatch(exc, f, named) is None for f in failures):
                del wanted[i]
                break
        else:
            return [f"unexpected {type(exc).__name__}: {exc}"]
    return [f"missing errors: {_brief([('e', w) for w in wanted])}"] if wanted else []


class ExecutorMap(Call):
    """executor.map: values in order; iteration ends at the first error (an
    item's without a chunksize; a chunk's, as a whole, with one)."""

    mode = "stop"

    def __init__(self, items: Sequence[Item], specs: Sequence[tuple[Any, ...]],
                 guards: Guards, chunksize: Optional[int], columns: bool) -> None:
        super().__init__(items, specs, guards)
        self.chunksize, self.columns = chunksize, columns
        self.name = "executor.map" + (" (columns)" if columns else "")

    def start(self, pool: Any, deadline: float) -> None:
        if self.columns:   # several iterables: fn(*row)
            self.iterator = pool.map(task_star, *zip(*self.specs, strict=True),
                                     timeout=_left(deadline), chunksize=self.chunksize)
        else:
            self.iterator = pool.map(task, self.specs, timeout=_left(deadline),
                                     chunksize=self.chunksize)

    def collect(self, deadline: float) -> None:
        try:
            for value in self.iterator:
                self.events.append(("v", value))
        except TimeoutError as exc:
            if type(exc) is TimeoutError and not str(exc):
                raise Unresolved from None
            self.events.append(("e", exc))
        except Exception as exc:
            self.events.append(("e", exc))

    def _expected_events(self) -> List[Tuple[str, Any]]:
        if self.chunksize is None:
            return super()._expected_events()
        out: List[Tuple[str, Any]] = []
        size = self.chunksize
        entries = self._entries()
        for lo in range(0, len(self.items), size):
            chunk = [e for e in entries if lo <= e.start < lo + size]
            failures = [e.failure for e in chunk if e.failure is not None]
            if failures:
                return out + [("e", failures)]
            out.extend(("v", v) for e in chunk for v in e.values or ())
        return out

    def _check_relaxed(self) -> List[str]:
        values = [v for k, v in self.events if k == "v"]
        count = len(values)
        if values != [item.value for item in self.items[:count]] or \
                not all(may_return(item, self.guards) for item in self.items[:count]):
            return ["values wrong, out of order, or for tasks that cannot return"]
        errors = [v for k, v in self.events if k == "e"]
        if not errors:
            return [] if count == len(self.items) else [f"ended after {count} values"]
        size = self.chunksize or 1
        if count % size or not explained(errors[0], self.items[count:count + size],
                                         self.guards, True):
            return [f"unexplained {type(errors[0]).__name__} after {count} values: "
                    f"{errors[0]}"]
        return []
