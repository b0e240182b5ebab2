"""Stopping one call (``AsyncResult.stop()``, ``future.stop()``), on both
fronts; the executor's ``terminate_workers``/``kill_workers`` are in
test_executor.py.  The leak check of conftest.py runs after each test."""
from __future__ import annotations

import collections
import logging
import os
import re
import time

import psutil
import pytest

import poolguard
from poolguard import TaskStoppedError, WorkerCrashedError

import tasks
from conftest import PROMPT, wait_until


def test_stopping_a_running_call_kills_its_worker_only(front, method, tmp_path):
    path = tmp_path / "pid"
    with front(3, method) as pool:
        others = [pool.submit(tasks.sleep_then, 1.5, i) for i in range(2)]
        target = pool.submit(tasks.announce_and_sleep, str(path), 30)
        wait_until(path.exists, 10)
        pid = int(path.read_text())
        before = set(pool.pids)
        assert target.stop() is True
        with pytest.raises(TaskStoppedError) as info:
            pool.get(target, PROMPT)
        assert isinstance(info.value, WorkerCrashedError)
        wait_until(lambda: not psutil.pid_exists(pid), PROMPT)
        # The other calls ran on in their workers, and the pool is whole again.
        assert [pool.get(h, 30) for h in others] == [0, 1]
        wait_until(lambda: len(pool.pids) == 3, PROMPT)
        assert before - {pid} <= set(pool.pids) and pid not in pool.pids
        assert target.stop() is False   # finished: nothing to stop
        assert pool.get(pool.submit(tasks.square, 7)) == 49


def test_stopping_a_call_not_started_drops_it(front, method, tmp_path):
    log = str(tmp_path / "log")
    with front(1, method) as pool:
        blocker = pool.submit(tasks.sleep_then, 1.0, "first")
        waiting = pool.submit(tasks.record_and_square, log, 3)
        pids = pool.pids
        assert waiting.stop() is True
        with pytest.raises(TaskStoppedError):
            pool.get(waiting, PROMPT)
        assert pool.get(blocker, 30) == "first"   # its worker was not killed
        assert pool.pids == pids or not pids
        assert pool.get(pool.submit(tasks.square, 2)) == 4
    assert not os.path.exists(log)   # the stopped call never ran


def test_stopping_one_call_of_a_batch_spares_the_others(method, tmp_path):
    # Back-to-back submits of one function share units: the call stopped is
    # the one its worker was running; the calls queued with it run elsewhere.
    path = tmp_path / "pid"
    with poolguard.ProcessPoolExecutor(2, mp_context=method) as executor:
        futures = [executor.submit(tasks.announce_and_sleep, str(path) if i == 0 else
                                   str(tmp_path / f"other{i}"), 30 if i == 0 else 0.05)
                   for i in range(6)]
        wait_until(path.exists, 10)
        assert futures[0].stop() is True
        assert not futures[0].cancelled()
        with pytest.raises(TaskStoppedError):
            futures[0].result(PROMPT)
        assert [f.result(30) for f in futures[1:]] == ["slept"] * 5
        # cancel() keeps the standard contract: a running call is not cancelled.
        running = executor.submit(tasks.sleep_then, 30)
        wait_until(running.running, PROMPT)
        assert running.cancel() is False and running.stop() is True


def test_stopping_a_map_stops_each_of_its_items(method):
    with poolguard.Pool(2, context=method) as pool:
        start = time.monotonic()
        result = pool.map_async(tasks.sleep_then, [30] * 6, chunksize=1)
        wait_until(lambda: len([s for s in pool.status() if s.state == "busy"]) == 2, 10)
        assert result.stop() is True
        with pytest.raises(TaskStoppedError):
            result.get(PROMPT)
        assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]
        assert time.monotonic() - start < 30


def test_stop_on_an_options_view_and_a_stopped_call_is_not_retried(front, method, tmp_path):
    path = tmp_path / "pid"
    with front(1, method, retries=3) as pool:
        target = pool.submit(tasks.announce_and_sleep, str(path), 30, task_timeout=60)
        wait_until(path.exists, 10)
        pid = int(path.read_text())
        assert target.stop() is True
        with pytest.raises(TaskStoppedError):
            pool.get(target, PROMPT)
        wait_until(lambda: not psutil.pid_exists(pid), PROMPT)
        # Not run again, whatever retries= says: a retry would be queued
        # first, and hold the one worker for 30 s.
        assert pool.get(pool.submit(tasks.square, 3), 10) == 9


def test_repeated_stops_leak_no_process_nor_descriptor(front, method, tmp_path):
    # Descriptors are counted with the pool gone: while it lives, the
    # zygote may hold a worker forked ahead for the next replacement.
    before = _kinds()
    with front(1, method) as pool:
        for i in range(10):
            path = tmp_path / f"pid{i}"
            handle = pool.submit(tasks.announce_and_sleep, str(path), 30)
            wait_until(path.exists, 10)
            pid = int(path.read_text())
            assert handle.stop() is True
            with pytest.raises(TaskStoppedError):
                pool.get(handle, PROMPT)
            wait_until(lambda pid=pid: not psutil.pid_exists(pid), PROMPT)
            wait_until(lambda: len(pool.pids) == 1, PROMPT)
        assert pool.get(pool.submit(tasks.square, 9)) == 81
    try:
        wait_until(lambda: sum(_kinds().values()) <= sum(before.values()), PROMPT)
    except AssertionError:
        raise AssertionError(f"descriptors leaked: {before} -> {_kinds()}") from None
    # (No process is left: conftest.py's check after every test.)


def test_stopped_futures_end_once_and_log_nothing(method, tmp_path, caplog):
    # A future is stopped running, waiting in the batch of submits, and racing
    # its own result: each ends once (TaskStoppedError if stop() said True,
    # its value if False), a later result is dropped, and concurrent.futures
    # logs nothing (set_running_or_notify_cancel on a running future logs
    # CRITICAL "Future in unexpected state").
    path = tmp_path / "pid"
    with poolguard.ProcessPoolExecutor(1, mp_context=method) as executor:
        running = executor.submit(tasks.announce_and_sleep, str(path), 30)
        waiting = executor.submit(tasks.square, 3)
        wait_until(path.exists, 10)
        assert waiting.stop() is True and running.stop() is True
        for future in (running, waiting):
            with pytest.raises(TaskStoppedError):
                future.result(PROMPT)
            assert future.stop() is False and not future.cancelled()
        for i in range(40):   # the result and stop() race
            future = executor.submit(tasks.sleep_then, i % 4 * 0.002, i)
            time.sleep(i % 5 * 0.001)
            if future.stop():
                with pytest.raises(TaskStoppedError):
                    future.result(PROMPT)
            else:
                assert future.result(PROMPT) == i
        assert executor.submit(tasks.square, 9).result(10) == 81
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def _kinds() -> "collections.Counter[str]":
    """The caller's descriptors by kind (a pipe, a /proc file, a memfd...)."""
    kinds: "collections.Counter[str]" = collections.Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue   # the listing's own, closed by now
        kinds[re.sub(r"[0-9]+", "N", target)] += 1
    return kinds


@pytest.mark.parametrize("ordered", [True, False])
def test_stopping_an_imap_ends_it_after_one_error(method, ordered, tmp_path):
    with poolguard.Pool(2, context=method) as pool:
        call = pool.imap if ordered else pool.imap_unordered
        items = iter([0.01, 30, 30, 30, 30])   # lazy: read by the producer thread
        it = call(tasks.sleep_then, items)
        assert next(it) is None   # the quick first item
        # (The pacer may queue the long items behind one another: a worker
        # busy is enough.)
        busy = wait_until(lambda: {s.pid for s in pool.status() if s.state == "busy"}, 10)
        assert it.stop() is True and it.stop() is False
        with pytest.raises(TaskStoppedError):
            next(it)
        with pytest.raises(StopIteration):
            next(it)
        wait_until(lambda: not busy & set(pool.pids) and len(pool.pids) == 2, PROMPT)
        assert not any(psutil.pid_exists(pid) for pid in busy)
        # An item that waited in a worker's pipe is stopped when it starts.
        wait_until(lambda: not any(s.state == "busy" for s in pool.status()), PROMPT)
        assert pool.map(tasks.square, range(3)) == [0, 1, 4]
