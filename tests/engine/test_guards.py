"""Guards: task timeout, memory cap, retries, and the respawn throttle."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import poolguard
from poolguard import (PoolThrottledError, ProcessPoolExecutor, TaskTimeoutError,
                       WorkerCrashedError, WorkerMemoryError)

import tasks
from conftest import PROMPT, STATS, killing_workers, wait_until


def test_timeout_stops_the_long_task_only(method):
    with poolguard.Pool(2, task_timeout=0.5, context=method) as pool:
        start = time.monotonic()
        slow = pool.apply_async(tasks.sleep_then, (30, "never"))
        quick = [pool.apply_async(tasks.sleep_then, (0.05, i)) for i in range(5)]
        with pytest.raises(TaskTimeoutError) as info:
            slow.get(10)
        elapsed = time.monotonic() - start
        assert 0.5 <= elapsed < 0.5 + PROMPT
        err = info.value
        assert isinstance(err, WorkerCrashedError) and isinstance(err, TimeoutError)
        assert err.limit == 0.5 and err.task.function == "sleep_then"
        assert "task_timeout=0.5 s" in str(err) and "sleep_then(30, 'never')" in str(err)
        assert [r.get(10) for r in quick] == [0, 1, 2, 3, 4]
        assert pool.apply(tasks.square, (3,)) == 9


def test_timeout_does_not_count_queued_time():
    # One worker, four tasks of 0.3 s under a 0.5 s limit: the last waits 0.9 s
    # in the queue and must still succeed.
    with poolguard.Pool(1, task_timeout=0.5) as pool:
        assert pool.map(tasks.sleep_then, [0.3] * 4, chunksize=1) == [None] * 4
        # Items of one chunk are timed one by one, too.
        assert pool.map(tasks.sleep_then, [0.3] * 3, chunksize=3) == [None] * 3


def test_timeout_names_the_item_in_a_chunk():
    with poolguard.Pool(1, task_timeout=0.3) as pool:
        with pytest.raises(TaskTimeoutError) as info:
            pool.map(tasks.sleep_then, [0.01, 0.01, 5, 0.01], chunksize=4)
        assert info.value.task.item == 2


def test_timeout_holds_for_units_pipelined_behind_tiny_ones(front, method):
    # Each long task waits in a worker's pipe behind tiny ones, so its start
    # and the reply of the unit before it race in the supervisor: the guard
    # once armed the long task's deadline, then the earlier reply cleared it,
    # and a few in every hundred ran to completion.
    with front(4, method, task_timeout=0.2) as pool:
        handles = []
        for i in range(60):
            handles += [(False, pool.submit(tasks.square, j)) for j in range(5)]
            handles.append((True, pool.submit(tasks.sleep_then, 1.0, i)))
        finished = []
        for long, handle in handles:
            try:
                value = pool.get(handle, 30)
            except TaskTimeoutError:
                assert long
            else:
                if long:
                    finished.append(value)
        assert finished == []


def test_memory_cap_stops_a_growing_task(method):
    cap = 200 << 20
    with poolguard.Pool(1, max_worker_memory="200MiB", context=method) as pool:
        with pytest.raises(WorkerMemoryError) as info:
            pool.apply(tasks.grow, (8,))
        err = info.value
        assert isinstance(err, MemoryError) and isinstance(err, WorkerCrashedError)
        assert err.limit == cap and cap < err.rss < 2 * cap
        assert err.oom is True and err.oom_verdict == "confirmed"
        assert "max_worker_memory=200 MiB" in str(err) and "grow(8)" in str(err)
        assert pool.apply(tasks.square, (4,)) == 16


def test_memory_cap_is_enforced_per_worker_not_per_pool():
    with poolguard.Pool(2, max_worker_memory="300MiB") as pool:
        # Each worker holds 100 MiB for a while: together above the cap, each below.
        results = pool.starmap(tasks.grow, [(50, 0.05, 100), (50, 0.05, 100)], chunksize=1)
        assert results == [2, 2]


def test_retries_recover_a_task_killed_once(tmp_path, method):
    marker = str(tmp_path / "killed-once")
    with poolguard.Pool(2, retries=2, context=method) as pool:
        assert pool.starmap(tasks.die_first_time, [(marker, i) for i in range(6)],
                            chunksize=1) == list(range(6))


def test_retry_reruns_only_the_culprit_of_a_chunk(tmp_path):
    log = str(tmp_path / "runs")
    with poolguard.Pool(1, retries=1) as pool:
        assert pool.starmap(tasks.record_and_square, [(log, x) for x in range(10)],
                            chunksize=10) == [x * x for x in range(10)]
    runs = [int(x) for x in open(log).read().split()]
    # Items 0-4 ran before the death and again after it (their results died
    # with the worker); item 5 twice (the crash and the retry); 6-9 once.
    assert sorted(runs) == sorted(list(range(10)) + [0, 1, 2, 3, 4, 5])


def test_task_that_always_kills_fails_after_retries_plus_one(tmp_path):
    log = tmp_path / "attempts"
    with poolguard.Pool(2, retries=3) as pool:
        others = pool.map_async(tasks.square, range(20), chunksize=1)
        with pytest.raises(WorkerCrashedError) as info:
            pool.apply(tasks.count_and_die, (str(log),))
        assert others.get(10) == [x * x for x in range(20)]
    attempts = log.read_text().split()
    assert len(attempts) == 4 and len(set(attempts)) == 4   # four different workers
    err = info.value
    assert len(err.attempts) == 4
    assert all("SIGKILL" in line for line in err.attempts)
    assert "Failed after 4 attempts" in str(err)
    for pid in attempts:
        assert f"worker {pid}" in str(err)


def test_retry_on_limits_which_deaths_are_retried(tmp_path):
    log = tmp_path / "attempts"
    with poolguard.Pool(1, retries=3, retry_on=["timeout"]) as pool:
        with pytest.raises(WorkerCrashedError):
            pool.apply(tasks.count_and_die, (str(log),))
    assert len(log.read_text().split()) == 1


def test_crash_every_start_initializer_ends_in_the_throttle_error():
    with poolguard.Pool(2, initializer=tasks.init_die) as pool:
        start = time.monotonic()
        with pytest.raises(PoolThrottledError) as info:
            pool.map(tasks.square, range(4))
        assert time.monotonic() - start < 5
        assert "without finishing a task" in str(info.value)
        assert "init_die" in str(info.value)


def test_outside_kills_of_new_workers_never_stop_the_pool():
    """Workers SIGKILLed from outside as they start (a scheduler, a chaos run
    on a loaded machine) are no fault of the pool's: it keeps replacing them,
    past the throttle's count, and maps as usual once the killing stops."""
    # retries: a worker may take the task before the killer sees its pid.
    with poolguard.Pool(1, retries=30) as pool:
        stop = threading.Event()
        seen = set()

        def killer():   # an environment that kills every new worker of this pool
            while not stop.is_set() and len(seen) < 12:
                for pid in pool.pids:
                    if pid not in seen:
                        seen.add(pid)
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.001)
        thread = threading.Thread(target=killer)
        thread.start()
        try:
            # Submitted while every new worker dies: it waits, and must not be
            # failed with PoolThrottledError (as it was), then completes.
            pending = pool.map_async(tasks.square, range(4))
            wait_until(lambda: len(seen) >= 12, 30)   # more than the throttle's 5
        finally:
            stop.set()
            thread.join()
        assert pending.get(20) == [0, 1, 4, 9]
        assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]


def test_guards_on_the_executor():
    with ProcessPoolExecutor(2, task_timeout=0.3, retries=1) as executor:
        slow = executor.submit(tasks.sleep_then, 10)
        fine = executor.submit(tasks.square, 6)
        with pytest.raises(TaskTimeoutError) as info:
            slow.result(10)
        assert len(info.value.attempts) == 2     # timed out, retried, timed out
        assert fine.result(10) == 36


@pytest.mark.parametrize("kwargs, error", [
    ({"task_timeout": 0}, ValueError),
    ({"task_timeout": -1}, ValueError),
    ({"task_timeout": "1"}, TypeError),
    ({"max_worker_memory": "lots"}, ValueError),
    ({"max_worker_memory": 0}, ValueError),
    ({"max_worker_memory": 1.5}, TypeError),
    ({"retries": -1}, ValueError),
    ({"retries": 1.0}, TypeError),
    ({"retry_on": ["crash", "bugs"]}, ValueError),
])
def test_bad_guard_options(kwargs, error):
    with pytest.raises(error):
        poolguard.Pool(1, **kwargs)
    with pytest.raises(error):
        ProcessPoolExecutor(1, **kwargs)


def test_chaos_kills_with_retries_return_every_result():
    """Random SIGKILLs from outside every 100 ms during a long map."""
    with poolguard.Pool(2, retries=20) as pool:
        with killing_workers(pool, 0.1, seed=7) as kills:
            result = pool.starmap_async(tasks.sleep_then_square,
                                        [(x, 0.003) for x in range(2000)], chunksize=1)
            values = result.get(120)
        assert values == [x * x for x in range(2000)]
        STATS["results"] += len(values)
        assert len(kills) >= 15   # about 3 s of work, a kill every 100 ms


def test_a_stopped_worker_is_reported_once_and_its_task_completes_on_resume():
    """SIGSTOP (a debugger, a cgroup freezer) with no task_timeout used to
    block get() silently: now one warning names the pid, the task and how
    long; status() shows it; SIGCONT and the task finishes as usual."""
    import warnings
    from poolguard.engine.guards import STOPPED_WARNING
    with poolguard.Pool(1) as pool:
        result = pool.apply_async(tasks.sleep_then, (1.0, "done"))
        wait_until(lambda: [s for s in pool.status() if s.state == "busy"], 10)
        pid = pool.pids[0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            os.kill(pid, signal.SIGSTOP)
            try:
                wait_until(lambda: [s for s in pool.status() if s.state == "stopped"], 10)
                wait_until(lambda: any(issubclass(w.category, poolguard.WorkerStoppedWarning)
                                       for w in caught), STOPPED_WARNING + 10)
                time.sleep(0.5)      # still stopped: no second warning
            finally:
                os.kill(pid, signal.SIGCONT)
        stopped = [w for w in caught if issubclass(w.category, poolguard.WorkerStoppedWarning)]
        assert len(stopped) == 1
        text = str(stopped[0].message)
        assert f"worker {pid} has been stopped" in text and "sleep_then(1.0, 'done')" in text
        assert result.get(10) == "done"
