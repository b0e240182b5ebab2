"""stats() on both fronts: per worker slot, seconds busy / idle / starting,
tasks, crashes, replacements, peak RSS; and the summary line of progress=."""
from __future__ import annotations

import time

import pytest

import poolguard

import tasks
from conftest import PROMPT


def test_stats_count_tasks_crashes_replacements_and_time(front, method):
    with front(2, method) as pool:
        began = time.monotonic()
        handles = [pool.submit(tasks.square, i) for i in range(20)]
        assert [pool.get(h) for h in handles] == [i * i for i in range(20)]
        with pytest.raises(poolguard.WorkerCrashedError):
            pool.get(pool.submit(tasks.die, "sigkill"), PROMPT + 5)
        assert pool.get(pool.submit(tasks.sleep_then, 0.5, "slept")) == "slept"
        stats = pool.pool.stats()
        wall = time.monotonic() - began
    assert isinstance(stats, poolguard.PoolStats) and len(stats.workers) == 2
    assert all(isinstance(w, poolguard.WorkerStats) for w in stats.workers)
    assert [w.slot for w in stats.workers] == [0, 1]
    assert stats.tasks == 21   # the crashed call is no task done
    assert stats.crashes == 1 and stats.replacements == 1
    crashed = next(w for w in stats.workers if w.crashes)
    assert crashed.replacements == 1
    assert max(w.busy for w in stats.workers) >= 0.5   # the sleeping call
    assert stats.starting > 0
    for w in stats.workers:
        assert w.pid is not None and w.peak_rss and w.peak_rss > 1 << 20
        # Each slot's phases add up to no more than the pool's life.
        assert w.busy + w.idle + w.starting <= stats.elapsed + 0.01
    assert stats.elapsed >= wall - 0.01
    line = str(stats)
    assert line.startswith("2 workers · 21 tasks · busy ") and "1 crash · 1 replacement" in line


def test_planned_exits_are_replacements_not_crashes():
    with poolguard.Pool(2, maxtasksperchild=2) as pool:
        assert pool.map(tasks.square, range(12), chunksize=1) == [i * i for i in range(12)]
        stats = pool.stats()
    assert stats.tasks == 12 and stats.crashes == 0
    assert stats.replacements >= 4   # 12 tasks, 2 a worker: 6 workers or more


def test_peak_rss_sees_a_task_that_grew():
    with poolguard.ProcessPoolExecutor(1) as executor:
        executor.submit(tasks.grow, 16, 0.1, 96).result(timeout=PROMPT * 4)
        (worker,) = executor.stats().workers
    assert worker.peak_rss is not None and worker.peak_rss >= 64 << 20


def test_a_progress_map_ends_with_the_workers_summary(capfd):
    infos = []
    with poolguard.Pool(2) as pool:
        pool.map(tasks.square, range(40), progress=infos.append)
        pool.map(tasks.square, range(50), progress=True)
        err = capfd.readouterr().err
    summary = infos[-1].workers
    assert isinstance(summary, poolguard.PoolStats) and summary.tasks == 40
    assert all(info.workers is None for info in infos[:-1])
    first, second = err.splitlines()
    assert first.startswith("map(square): 50/50 items (100%)")
    assert second.startswith("map(square): 2 workers · 50 tasks · busy ")


def test_stats_of_a_closed_pool_and_of_one_without_engine():
    pool = poolguard.Pool(1)
    pool.apply(tasks.square, (3,))
    pool.close()
    pool.join()
    stats = pool.stats()
    assert stats.tasks == 1 and stats.workers[0].pid is None


def test_a_submit_is_counted_by_the_time_its_result_is_had():
    """A submit's value comes with its own reply, before its unit's end:
    it is counted then (before: stats() read at once missed it, 1 run in 10)."""
    with poolguard.ProcessPoolExecutor(1) as executor:
        for i in range(200):
            assert executor.submit(tasks.square, i).result(timeout=PROMPT) == i * i
            assert executor.stats().tasks == i + 1
