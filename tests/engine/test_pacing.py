"""Pacing and batching: the executor's map sends tiny items in elastic
batches and deep queues, yet an item's crash, timeout, exception or
unpicklable argument stays that item's alone; a short task never waits in a
busy worker's pipe behind a long one."""
from __future__ import annotations

import functools
import itertools
import os
import threading
import time

import pytest

import poolguard
from poolguard.engine.jobs import Job, Unit
from poolguard.engine.pacing import MAX_AHEAD, STALLED, WINDOW, Pacer
from poolguard.wire.framing import FrameInput, frame
from poolguard.wire.messages import EACH

import tasks

pytestmark = pytest.mark.timeout(120)

N = 3000      # enough tiny items that the pacer batches them


def _map_until_error(iterator):
    """The values a map yields, and the exception that ends it."""
    values = []
    try:
        for value in iterator:
            values.append(value)
    except BaseException as exc:   # noqa: B036 - what the map raised, whatever it is
        return values, exc
    return values, None


def test_executor_map_batches_tiny_items_and_keeps_their_order(method):
    with poolguard.ProcessPoolExecutor(2, mp_context=method) as ex:
        assert list(ex.map(tasks.square, range(N))) == [x * x for x in range(N)]
        assert list(ex.map(tasks.add, range(N), range(N, 0, -1))) == [N] * N
        # The pacer measured the function.  Its figure is a time: a loaded
        # machine that descheduled one batch may inflate it, so the bound is
        # loose (how well it batches is measured in benchmarks/).
        per_item, seen = ex._engine._pacer._per_item[ex._engine.encode_function(tasks.square)]
        assert seen >= N and 0 < per_item < 0.05


@pytest.mark.parametrize("how", ["sigkill", "segfault"])
def test_a_crash_in_a_batch_fails_that_item_alone(method, how):
    at = N - 500
    with poolguard.ProcessPoolExecutor(2, mp_context=method) as ex:
        values, error = _map_until_error(ex.map(tasks.die_at, range(N), itertools.repeat(at),
                                                itertools.repeat(how)))
        assert values == [x * 2 for x in range(at)]
        assert isinstance(error, poolguard.WorkerCrashedError), repr(error)
        assert error.task.item == at and error.task.function == "die_at"
        assert str(at) in error.task.arguments
        # The pool goes on, and so does a map after the crash.
        assert list(ex.map(tasks.square, range(100))) == [x * x for x in range(100)]


def test_a_timeout_in_a_batch_fails_that_item_alone(method):
    items = [0.0] * 400 + [60.0] + [0.0] * 100
    with poolguard.ProcessPoolExecutor(2, mp_context=method, task_timeout=1.0) as ex:
        values, error = _map_until_error(ex.map(tasks.sleep_then, items, range(len(items))))
        assert values == list(range(400))
        assert isinstance(error, poolguard.TaskTimeoutError), repr(error)
        assert error.task.item == 400


def test_an_exception_in_a_batch_leaves_its_batch_mates_running(method, tmp_path):
    log = str(tmp_path / "calls")
    at = N // 2
    ex = poolguard.ProcessPoolExecutor(2, mp_context=method)
    try:
        values, error = _map_until_error(ex.map(tasks.logged_raise_at, itertools.repeat(log),
                                                range(N), itertools.repeat(at)))
    finally:
        ex.shutdown(wait=True)
    assert values == [x * x for x in range(at)]
    assert isinstance(error, ValueError) and str(error) == f"item {at} refuses"
    # Its batch-mates after it ran too, each item exactly once (no rerun);
    # what was not yet cut into a batch was dropped with the iterator, as the
    # standard executor cancels the futures not yet running.
    calls = tasks.calls(log)
    assert calls == list(range(len(calls))) and len(calls) > at + 1


def test_an_unpicklable_argument_fails_that_item_alone(method):
    items = list(range(N))
    items[N - 100] = tasks.Unpicklable()
    with poolguard.ProcessPoolExecutor(2, mp_context=method) as ex:
        values, error = _map_until_error(ex.map(tasks.identity, items))
        assert values == list(range(N - 100))
        assert isinstance(error, TypeError) and "refuses to be pickled" in str(error)


def test_an_unpicklable_result_fails_that_item_alone(method):
    with poolguard.ProcessPoolExecutor(2, mp_context=method) as ex:
        values, error = _map_until_error(ex.map(tasks.return_lock_at, range(N),
                                                itertools.repeat(N - 10)))
        assert values == list(range(N - 10))
        assert isinstance(error, poolguard.ResultEncodingError), repr(error)
        assert "lock" in str(error).lower()


def test_an_explicit_chunksize_fails_its_chunk_as_the_standard_library_does(method):
    with poolguard.ProcessPoolExecutor(2, mp_context=method) as ex:
        values, error = _map_until_error(ex.map(tasks.raise_at, range(40), itertools.repeat(25),
                                                chunksize=10))
        assert values == list(range(20))   # the chunk 20..29 fails as a whole
        assert isinstance(error, ValueError)


def test_many_submits_with_one_crash(front, method):
    with front(2, method) as pool:
        handles = [pool.submit(tasks.square, x) for x in range(2000)]
        culprit = pool.submit(tasks.die, "sigkill")
        handles += [pool.submit(tasks.square, x) for x in range(2000, 4000)]
        with pytest.raises(poolguard.WorkerCrashedError) as info:
            pool.get(culprit)
        assert info.value.task.function == "die"
        assert [pool.get(h) for h in handles] == [x * x for x in range(4000)]


@pytest.mark.parametrize("unordered", [True, False])
def test_short_tasks_do_not_wait_behind_a_long_one(method, unordered):
    """Head-of-line: with one worker busy on a long item, the short ones all
    go to the other worker; none waits in the busy one's pipe."""
    with poolguard.Pool(2, context=method) as pool:
        pool.map(tasks.identity, range(4), 1)   # both workers up
        naps = [4.0, 0.05, 0.05, 0.05, 0.05]
        if unordered:
            it = pool.imap_unordered(tasks.sleep_then, naps, 1)
            assert [next(it) for _ in range(4)] == [None] * 4
        else:
            results = [pool.apply_async(tasks.sleep_then, (nap, i)) for i, nap in enumerate(naps)]
            for r in results[1:]:
                assert r.get(3.5) in (1, 2, 3, 4)
            assert not results[0].ready()


def test_tiny_items_do_not_pile_up_behind_an_item_that_overruns(method, tmp_path):
    """Head-of-line once the function is measured: the worker held up by
    one item of 60 s, in the middle of a unit expected to take 2 ms, takes
    no more units; the other worker runs the rest (before, the held-up one
    kept taking units up to MAX_AHEAD, about half of those left)."""
    log = str(tmp_path / "calls")
    func = functools.partial(tasks.logged_acting, log, ((N + 100, N + 100, "sleep 60"),))
    with poolguard.Pool(2, context=method) as pool:
        assert sorted(pool.imap(func, range(N))) == [x * x for x in range(N)]
        it = pool.imap_unordered(func, range(N, N + 20_000))
        # All but the long item's unit and the one or two its worker took
        # before it was late: each a few hundred items at most.
        for _ in range(17_000):
            assert it.next(timeout=20) != (N + 100) ** 2


def test_pacer_rules():
    """The pacer's rules, on its own (numbers only, no processes)."""
    pacer = Pacer(maxtasks=None)
    job = Job(tasks.square, EACH, "map")
    unit = Unit(job, 0, list(range(10_000)), b"f", elastic=True)
    assert pacer.elastic_size(unit) == 1            # never measured: one item
    pacer.learn(Unit(job, 0, [1, 2], b"f"), 2e-6)  # 1 us an item
    assert pacer.elastic_size(unit) == 1            # 2 items seen: half of that
    pacer.learn(Unit(job, 0, list(range(1000)), b"f"), 1e-3)
    assert 1 < pacer.elastic_size(unit) <= 501

    class FakeWorker:   # the numbers the pacer reads
        usable, index, sent = True, 0, 0

        def __init__(self, inflight, backlog, blind):
            self.inflight, self.backlog, self.blind = inflight, backlog, blind
            self.ends_at = self.due = time.monotonic() + backlog

    assert pacer.may_take(FakeWorker([], 0.0, 0), unit)
    assert not pacer.may_take(FakeWorker([unit], 0.0, 1), unit)            # unknown: one only
    assert pacer.may_take(FakeWorker([unit], WINDOW / 10, 0), unit)
    assert not pacer.may_take(FakeWorker([unit] * MAX_AHEAD, 0.0, 0), unit)
    late = FakeWorker([unit], 0.0, 0)
    late.due -= 2 * STALLED   # its running unit overran: nothing more
    assert not pacer.may_take(late, unit)


def test_frame_input_reads_bursts_and_large_frames():
    r, w = os.pipe()
    big = os.urandom(3 << 20)
    frames = [b"a", big, b"b" * 100, b"", b"c"]

    def write():
        with os.fdopen(w, "wb") as f:
            for data in frames:
                for part in frame(data):
                    f.write(part)

    writer = threading.Thread(target=write)
    writer.start()
    source = FrameInput(r, read_size=1 << 16)
    try:
        assert [bytes(source.recv()) for _ in frames] == frames
        with pytest.raises(EOFError):
            source.recv()
    finally:
        writer.join()
        os.close(r)
