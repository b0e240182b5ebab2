"""Pools made and destroyed in a loop leave nothing behind."""
from __future__ import annotations

import functools
import os
import time

import pytest

import poolguard

import tasks
from conftest import STATS, killing_workers


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_five_hundred_pools_flat_descriptors_and_memory():
    def cycle():
        with poolguard.Pool(1) as pool:
            assert pool.apply(tasks.square, (3,)) == 9
    for _ in range(20):      # warm up allocators and imports
        cycle()
    fds, rss = _fds(), _rss_mib()
    for _ in range(500):
        cycle()
    assert _fds() == fds
    assert _rss_mib() - rss < 20, f"RSS grew from {rss:.0f} to {_rss_mib():.0f} MiB"


def test_imap_unordered_under_kills_with_retries_has_no_duplicates():
    with poolguard.Pool(2, retries=20) as pool:
        with killing_workers(pool, 0.05, seed=3) as kills:
            start = time.monotonic()
            work = functools.partial(tasks.sleep_then_square, seconds=0.004)
            got = list(pool.imap_unordered(work, range(600), chunksize=3))
            assert time.monotonic() - start < 60
    assert sorted(got) == [x * x for x in range(600)]   # each once: no loss, no duplicate
    STATS["results"] += len(got)
    assert len(kills) >= 10


def test_a_late_wake_up_writes_nothing_into_a_reused_descriptor():
    """terminate() after the end, or a dask callback after the engine closed,
    must not write into whatever file got the wake pipe's number since."""
    pool = poolguard.Pool(1)
    write_fd = pool._engine.inbox.wakeup._write_fd
    pool.terminate()
    pool.join()
    read_end, write_end = os.pipe()     # the lowest free numbers: the wake pipe's
    try:
        assert write_fd in (read_end, write_end)
        os.set_blocking(read_end, False)
        for _ in range(3):
            pool.terminate()              # each wakes the engine that has ended
            pool.close()
        with pytest.raises(BlockingIOError):
            os.read(read_end, 1)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_the_leak_check_does_not_count_its_own_listing(monkeypatch):
    # Listing /proc/self/fd takes a descriptor, the lowest free one.  When a
    # socket (ignored while a dask scheduler runs here) fills the hole that
    # listing used before a test, the listing after it takes a new number,
    # which looked leaked: {'26': '?'} in the cluster tests, now and then.
    import socket
    import conftest
    monkeypatch.setattr(conftest, "IGNORE_SOCKETS", True)
    read_end, write_end = os.pipe()
    os.close(read_end)   # a hole below the next free descriptor
    before = conftest._fds()
    sock = socket.socket()   # takes the hole
    try:
        assert conftest._fds() <= before
    finally:
        sock.close()
        os.close(write_end)
