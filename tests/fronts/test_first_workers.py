"""pids and status() right after the pool is made: its workers are started
on the supervisor thread after Pool() returns, and these wait for them."""
from __future__ import annotations

import time

import psutil

import tasks
from conftest import PROMPT


def test_pids_right_after_the_pool_is_made(front, method):
    with front(3, method) as pool:
        pids = pool.pids
        assert len(pids) == 3 and all(psutil.pid_exists(pid) for pid in pids)
        assert pool.get(pool.submit(tasks.getpid)) in pids


def test_status_of_workers_still_in_their_initializer(front):
    with front(2, "spawn", initializer=time.sleep, initargs=(2.0,)) as pool:
        began = time.monotonic()
        states = [s.state for s in pool.pool.status()]
        assert states == ["starting", "starting"]
        assert len(pool.pids) == 2
        assert time.monotonic() - began < 2.0   # no wait for the initializer


def test_pids_do_not_wait_for_workers_that_cannot_start(front):
    with front(2, "fork", initializer=tasks.init_fail) as pool:
        began = time.monotonic()
        while pool.pids:   # the failed ones leave; none comes back
            assert time.monotonic() - began < PROMPT
            time.sleep(0.01)
        assert time.monotonic() - began < PROMPT
