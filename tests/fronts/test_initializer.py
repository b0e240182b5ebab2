"""A failing initializer gives one clear error, never an endless respawn loop."""
from __future__ import annotations

import os
import time

import pytest

import poolguard
from poolguard import WorkerInitError

import tasks
from conftest import PROMPT, wait_until


def test_failing_initializer_raises_within_a_second(method, tmp_path):
    record = str(tmp_path / "starts")
    with poolguard.Pool(2, initializer=tasks.init_fail_record, initargs=(record,),
                        context=method) as pool:
        start = time.monotonic()
        with pytest.raises(WorkerInitError) as info:
            pool.map(tasks.square, range(10))
        assert time.monotonic() - start < PROMPT + (1.0 if method != "fork" else 0)
        err = info.value
        assert "init_fail_record" in str(err) and "initializer exploded" in str(err)
        assert isinstance(err.exc, RuntimeError)
        assert "init_fail_record" in err.remote_traceback
        # Pool creation tries each worker once, the call may try once more.
        starts = open(record).read().split()
        assert len(starts) <= 4, f"{len(starts)} worker starts for a pool of 2"
        time.sleep(0.5)   # a respawn loop would start more workers meanwhile
        assert open(record).read().split() == starts


def test_initializer_that_kills_its_worker(method):
    with poolguard.Pool(1, initializer=tasks.init_die, context=method) as pool:
        with pytest.raises(WorkerInitError, match="SIGKILL"):
            pool.apply_async(tasks.square, (2,)).get(timeout=10)


@pytest.mark.parametrize("failed_first", [False, True])
def test_pool_works_again_after_a_transient_initializer_failure(tmp_path, failed_first):
    # The first call fails whether it came before the pool's first start
    # failed or after (failed_first): that failure is told once, then the
    # next call starts workers again.
    marker = str(tmp_path / "failed-once")
    with poolguard.Pool(1, initializer=tasks.init_flaky, initargs=(marker,)) as pool:
        if failed_first:   # failed, and its worker gone
            wait_until(lambda: os.path.exists(marker) and not pool.pids, 10)
        with pytest.raises(WorkerInitError, match="first start fails"):
            pool.map(tasks.square, range(3))
        assert pool.map(tasks.square, range(3)) == [0, 1, 4]


def test_initializer_runs_once_per_worker(tmp_path):
    record = str(tmp_path / "starts")
    with poolguard.Pool(2, initializer=tasks.init_record, initargs=(record,)) as pool:
        pids = set(pool.map(tasks.getpid, range(40), chunksize=1))
    started = open(record).read().split()
    assert sorted(started) == sorted(set(started))
    assert pids <= {int(p) for p in started}
