"""Guards of one call (keyword-only arguments of the Pool's methods,
``executor.with_options``), and soft timeouts, on both fronts."""
from __future__ import annotations

import time

import pytest

import poolguard
from poolguard import (SoftTimeoutError, TaskTimeoutError, WorkerCrashedError,
                       WorkerMemoryError)

import tasks
from conftest import PROMPT


def test_a_calls_timeout_beats_the_pools(front, method):
    with front(2, method, task_timeout=60) as pool:
        start = time.monotonic()
        slow = pool.submit(tasks.sleep_then, 30, "never", task_timeout=0.5)
        other = pool.submit(tasks.sleep_then, 1.5, "kept")   # the pool's 60 s
        with pytest.raises(TaskTimeoutError) as info:
            pool.get(slow, 30)
        assert 0.5 <= time.monotonic() - start < 0.5 + PROMPT
        assert info.value.limit == 0.5 and "task_timeout=0.5 s" in str(info.value)
        assert pool.get(other, 30) == "kept"
    with front(1, method, task_timeout=0.3) as pool:
        assert pool.get(pool.submit(tasks.sleep_then, 1, "longer", task_timeout=30)) == "longer"
        assert pool.get(pool.submit(tasks.sleep_then, 1, "off", task_timeout=None)) == "off"
        with pytest.raises(TaskTimeoutError):   # the pool's still holds for the others
            pool.get(pool.submit(tasks.sleep_then, 30))


def test_a_maps_timeout_counts_each_item(front, method):
    # The pool has no timeout, so its workers do not time items unless a
    # call asks: a chunk of three 0.3 s items passes a 0.5 s limit.
    with front(1, method) as pool:
        assert pool.map(tasks.sleep_then, [0.3] * 3, task_timeout=1.0) == [None] * 3
        if pool.name == "pool":
            assert pool.pool.map(tasks.sleep_then, [0.3] * 3, chunksize=3,
                                 task_timeout=0.6) == [None] * 3
        with pytest.raises(TaskTimeoutError) as info:
            pool.map(tasks.sleep_then, [0.01, 30, 0.01], task_timeout=0.5)
        assert info.value.task.item == 1


def test_a_calls_memory_cap(front, method):
    with front(1, method) as pool:
        with pytest.raises(WorkerMemoryError) as info:
            pool.get(pool.submit(tasks.grow, 8, max_worker_memory="200MiB"), 60)
        assert info.value.limit == 200 << 20
        assert "max_worker_memory=200 MiB" in str(info.value)
        # Uncapped, the same task grows past that.
        assert pool.get(pool.submit(tasks.grow, 50, 0, 300), 60) == 6


def test_a_calls_retries(front, method, tmp_path):
    with front(2, method) as pool:
        marker = str(tmp_path / "killed-once")
        assert pool.get(pool.submit(tasks.die_first_time, marker, 7, retries=1), 30) == 7
        with pytest.raises(WorkerCrashedError):   # the pool's: no retry
            pool.get(pool.submit(tasks.die_first_time, str(tmp_path / "again"), 8), 30)
        log = tmp_path / "attempts"
        with pytest.raises(WorkerCrashedError) as info:
            pool.get(pool.submit(tasks.count_and_die, str(log), retries=2,
                                 retry_on=["timeout"]), 30)
        assert len(log.read_text().split()) == 1 and not info.value.attempts


def test_a_maps_retries(front, method, tmp_path):
    marker = str(tmp_path / "killed-once")
    with front(2, method) as pool:
        args = [(marker, i) for i in range(6)]
        if pool.name == "pool":
            out = pool.pool.starmap(tasks.die_first_time, args, chunksize=2, retries=1)
        else:
            out = list(pool.pool.with_options(retries=1).map(
                tasks.die_first_time, [marker] * 6, range(6)))
        assert out == list(range(6))


@pytest.mark.parametrize("guards, error", [
    ({"task_timeout": 0}, ValueError),
    ({"task_timeout": "1"}, TypeError),
    ({"soft_timeout": -1}, ValueError),
    ({"soft_timeout": 2, "task_timeout": 1}, ValueError),
    ({"max_worker_memory": "lots"}, ValueError),
    ({"retries": -1}, ValueError),
    ({"retry_on": ["bugs"]}, ValueError),
    ({"task_timout": 1}, TypeError),
])
def test_bad_call_guards_fail_at_the_call(guards, error):
    with poolguard.Pool(1) as pool:
        with pytest.raises(error):
            pool.apply_async(tasks.square, (2,), **guards)
        with pytest.raises(error):
            pool.imap(tasks.square, range(3), **guards)
        assert pool.apply(tasks.square, (3,)) == 9
    with poolguard.ProcessPoolExecutor(1) as executor:
        with pytest.raises(error):
            executor.with_options(**guards)


def test_soft_timeout_lets_the_task_clean_up(front, method, tmp_path):
    path = tmp_path / "cleanup"
    with front(1, method, soft_timeout=0.3, task_timeout=30) as pool:
        pids = pool.pids
        start = time.monotonic()
        with pytest.raises(SoftTimeoutError) as info:
            pool.get(pool.submit(tasks.sleep_and_clean_up, str(path), 30), 30)
        assert 0.3 <= time.monotonic() - start < 0.3 + PROMPT
        assert isinstance(info.value, Exception) and info.value.limit == 0.3
        assert path.read_text().startswith("cleaned up in ")
        # Nothing was killed, and the next calls run as usual.
        assert pool.get(pool.submit(tasks.sleep_then, 0.1, "next"), 30) == "next"
        assert pool.pids == pids or not pids
        # A call's own soft timeout replaces the pool's (None: none).
        assert pool.get(pool.submit(tasks.sleep_then, 0.6, "off", soft_timeout=None)) == "off"


def test_a_calls_soft_timeout(front, method, tmp_path):
    path = tmp_path / "cleanup"
    with front(1, method) as pool:
        with pytest.raises(SoftTimeoutError):
            pool.get(pool.submit(tasks.sleep_and_clean_up, str(path), 30,
                                 soft_timeout=0.3), 30)
        assert path.exists()
        assert pool.get(pool.submit(tasks.sleep_and_clean_up, str(path) + "2", 0.6)) == "slept"


def test_a_task_that_outlives_its_soft_timeout_is_killed_with_its_stack(front, method):
    with front(1, method, soft_timeout=0.2, task_timeout=1.0) as pool:
        with pytest.raises(TaskTimeoutError) as info:
            pool.get(pool.submit(tasks.sleep_past_soft_timeout, 30), 30)
        assert "sleep_past_soft_timeout" in (info.value.crash_stack or "")
        assert pool.get(pool.submit(tasks.square, 5)) == 25


def test_a_soft_timeout_reaches_no_later_item(method):
    # Items about as long as the soft timeout, back to back on one worker:
    # each may get its SoftTimeoutError (and catches it), but a signal for
    # one never fails the next one's first steps, outside its own try.
    # Every tenth item is ten times longer: it surely gets its error.
    seconds = [0.2 if i % 10 == 9 else 0.02 for i in range(50)]
    with poolguard.Pool(1, soft_timeout=0.02, context=method) as pool:
        out = pool.map(tasks.sleep_catching_soft, seconds, chunksize=5)
        assert set(out) <= {"soft", "done"}
        assert [out[i] for i in range(9, 50, 10)] == ["soft"] * 5
