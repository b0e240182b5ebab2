"""imap and imap_unordered with chunksize=1 over a list: once the function is
measured, the supervisor sends its items many to a unit (a STREAM unit), yet
each item stays a task of its own.  Here, with real workers under every start
method: progress counts, a call's retries and task_timeout, stop(), and an
item that raises, each in the middle of such a unit; a call log (one line a
call) shows that no item ran twice.  A death alone is in
tests/engine/test_crash.py."""
from __future__ import annotations

import functools

import pytest

import poolguard
from poolguard import TaskStoppedError, TaskTimeoutError, WorkerCrashedError

import tasks
from conftest import wait_until

# Measured on WARM tiny items, the function's later units hold many items
# (about 180 on two cores).  The calls under test run items WARM to
# WARM + COUNT; the items they pick (4000, 5000) fall inside units.
WARM, COUNT = 3000, 4000
ITEMS = range(WARM, WARM + COUNT)
SQUARES = [x * x for x in ITEMS]


def _acting(tmp_path, *acts):
    """The call log's path, and logged_acting with *acts* (tasks.py)."""
    log = str(tmp_path / "calls")
    return log, functools.partial(tasks.logged_acting, log, acts)


def _warm(pool, func) -> None:
    """Let the pacer measure *func*: its next imap goes many items a unit.
    (The pacer knows a function by its pickle: the same partial each time.)"""
    assert sorted(pool.imap(func, range(WARM))) == [x * x for x in range(WARM)]


def _outcomes(it, count: int) -> list:
    """*count* outcomes of *it*, each exception in place of its value; then
    the end.  Bounded: a missing item fails the test, never hangs it."""
    out: list = []
    for _ in range(count):
        try:
            out.append(it.next(timeout=30))
        except (ValueError, WorkerCrashedError) as exc:
            out.append(exc)
    with pytest.raises(StopIteration):
        it.next(timeout=5)
    return out


def _failures(out: list) -> dict:
    return {i: type(value) for i, value in enumerate(out) if isinstance(value, BaseException)}


def test_progress_counts_each_item_once(method, tmp_path):
    # Item 4000 raises, item 5000 kills its worker: the items answered before
    # it in its unit were counted as they came and are not counted again;
    # those after it are counted where they run.
    infos: list = []
    log, func = _acting(tmp_path, (4000, 4000, "raise"), (5000, 5000, "die"))
    with poolguard.Pool(2, context=method) as pool:
        _warm(pool, func)
        out = _outcomes(pool.imap(func, ITEMS, progress=infos.append), COUNT)
        assert _failures(out) == {1000: ValueError, 2000: WorkerCrashedError}
        last = infos[-1]
        assert last.final and (last.done, last.total) == (COUNT, COUNT)
        assert (last.failed, last.raised, last.crashed) == (2, 1, 1)
        assert (last.retried, last.timed_out) == (0, 0)
        assert all(info.done <= COUNT for info in infos)
    assert tasks.calls(log) == list(range(WARM + COUNT))


@pytest.mark.parametrize("ordered", [True, False], ids=["imap", "imap_unordered"])
def test_a_calls_retry_runs_only_the_item_that_died(method, tmp_path, ordered):
    # Item 5000 kills its worker the first time: retries=1 of this call
    # (the pool has none) gives its value; every other item ran once.
    log, func = _acting(tmp_path, (5000, 5000, "die once"))
    with poolguard.Pool(2, context=method) as pool:
        _warm(pool, func)
        imap = pool.imap if ordered else pool.imap_unordered
        out = _outcomes(imap(func, ITEMS, retries=1), COUNT)
        assert (out if ordered else sorted(out)) == SQUARES
        assert pool.map(tasks.square, range(10)) == [x * x for x in range(10)]
    assert tasks.calls(log) == sorted([*range(WARM + COUNT), 5000])


def test_a_calls_timeout_fails_only_its_item(method, tmp_path):
    # Item 5000 sleeps past this call's task_timeout (the pool has none):
    # its worker is stopped, that item alone fails, the items before it in
    # its unit are not run again, those after it run elsewhere.
    log, func = _acting(tmp_path, (5000, 5000, "sleep 30"))
    with poolguard.Pool(2, context=method) as pool:
        _warm(pool, func)
        out = _outcomes(pool.imap(func, ITEMS, task_timeout=2.0), COUNT)
        assert _failures(out) == {2000: TaskTimeoutError}
        assert out[2000].task.item == 2000 and out[2000].limit == 2.0
        assert [v for v in out if not isinstance(v, BaseException)] == SQUARES[:2000] + \
            SQUARES[2001:]
        assert pool.map(tasks.square, range(10)) == [x * x for x in range(10)]
    assert tasks.calls(log) == list(range(WARM + COUNT))


def test_stop_in_the_middle_of_a_unit(method, tmp_path):
    # From item 5000 on every item sleeps: each worker stops at its first
    # one, in the middle of a unit of many (the one held up first takes no
    # more units: pacing.STALLED).  stop() kills both; nothing of the call
    # runs after it, nothing ran twice.
    log, func = _acting(tmp_path, (5000, WARM + COUNT, "sleep 30"))
    with poolguard.Pool(2, context=method) as pool:
        _warm(pool, func)
        it = pool.imap(func, ITEMS)
        taken = [it.next(timeout=30) for _ in range(2000)]
        assert taken == SQUARES[:2000]
        wait_until(lambda: len([x for x in tasks.calls(log) if x >= 5000]) == 2, 30)
        ran = tasks.calls(log)
        assert it.stop() is True
        with pytest.raises(TaskStoppedError):
            it.next(timeout=5)
        with pytest.raises(StopIteration):
            it.next(timeout=5)
        assert taken == SQUARES[:2000]
        assert pool.map_async(tasks.square, range(10)).get(20) == [x * x for x in range(10)]
        assert tasks.calls(log) == ran
    assert ran[:5000] == list(range(5000)) and len(set(ran)) == len(ran) == 5002


def test_an_item_that_raises_fails_at_its_place_only(method, tmp_path):
    # Item 5000 raises: its error comes once, where its value would have,
    # the items after it in its unit run on in the same worker, nothing
    # runs again.
    log, func = _acting(tmp_path, (5000, 5000, "raise"))
    with poolguard.Pool(2, context=method) as pool:
        _warm(pool, func)
        pids = set(pool.pids)
        out = _outcomes(pool.imap(func, ITEMS), COUNT)
        assert _failures(out) == {2000: ValueError}
        assert str(out[2000]) == "item 5000 refuses"
        assert out[:2000] == SQUARES[:2000] and out[2001:] == SQUARES[2001:]
        assert set(pool.pids) == pids   # no worker was lost over it
    assert tasks.calls(log) == list(range(WARM + COUNT))
