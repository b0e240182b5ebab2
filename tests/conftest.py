"""Shared fixtures: start methods, deadlines, and a leak check after every test."""
from __future__ import annotations

import contextlib
import gc
import os
import random
import signal
import threading
import time

import psutil
import pytest

START_METHODS = ["fork", "spawn", "forkserver"]


@pytest.fixture(params=START_METHODS)
def method(request) -> str:
    """Run the test under each start method (crash tests use this)."""
    return request.param


def wait_until(predicate, timeout: float, interval: float = 0.01, message: str = ""):
    """Poll *predicate* until it is true; fail the test after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout} s")
        time.sleep(interval)


def _helper_pids() -> set:
    """multiprocessing's own long-lived helpers, started once per session."""
    pids = set()
    from multiprocessing import forkserver, resource_tracker
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid:
        pids.add(pid)
    pid = getattr(resource_tracker._resource_tracker, "_pid", None)
    if pid:
        pids.add(pid)
    return pids


def _children() -> set:
    out = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return out - _helper_pids()


def _fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def _our_threads() -> list:
    return [t for t in threading.enumerate() if t.name.startswith("poolguard-")]


@pytest.fixture(scope="session", autouse=True)
def _helpers_started():
    # Start the fork server and resource tracker up front so the leak check
    # does not count them (they live as long as the test session).
    from multiprocessing import forkserver, resource_tracker
    forkserver.ensure_running()
    resource_tracker.ensure_running()
    yield


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test must leave no child process, thread or descriptor behind."""
    fds_before = _fds()
    yield
    gc.collect()
    wait_until(lambda: not _children(), 10, 0.02,
               "child processes left behind")
    wait_until(lambda: not _our_threads(), 10, 0.02,
               "poolguard threads left behind")
    try:
        wait_until(lambda: _fds() <= fds_before, 5, 0.02)
    except AssertionError:
        leaked = {fd: _describe_fd(fd) for fd in _fds() - fds_before}
        raise AssertionError(f"file descriptors leaked: {leaked}") from None


def _describe_fd(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


@contextlib.contextmanager
def killing_workers(pool, interval: float, seed: int):
    """SIGKILL a random worker of *pool* (pids it started, nothing else) every
    *interval* seconds while the block runs; yields the list of kills."""
    rng = random.Random(seed)
    stop = threading.Event()
    kills: list = []

    def chaos():
        while not stop.wait(interval):
            pids = pool.pids
            if pids:
                victim = rng.choice(pids)
                try:
                    os.kill(victim, signal.SIGKILL)
                    kills.append(victim)
                except ProcessLookupError:
                    pass
    thread = threading.Thread(target=chaos)
    thread.start()
    try:
        yield kills
    finally:
        stop.set()
        thread.join()
