"""poolguard.get_executor(): one shared executor per process, remade when
the request changes or it was shut down, safe from many threads."""
from __future__ import annotations

import concurrent.futures as cf
import threading

import psutil
import pytest

import poolguard
from poolguard.fronts import reusable

import tasks
from conftest import PROMPT, wait_until
from scripts import run_script


@pytest.fixture(autouse=True)
def _no_shared_executor_left():
    """Each test starts without one and leaves none (the leak check)."""
    yield
    with reusable._lock:
        kept, reusable._current = reusable._current, None
    if kept is not None:
        kept[0].shutdown(wait=True)


def test_the_same_request_gets_the_same_executor():
    first = poolguard.get_executor(2)
    assert poolguard.get_executor(2) is first
    assert poolguard.get_executor() is first   # None: whatever size is there
    assert first.submit(tasks.square, 7).result(timeout=PROMPT) == 49


def test_another_size_or_options_get_a_new_one_and_the_old_one_goes_when_dropped():
    first = poolguard.get_executor(1)
    running = first.submit(tasks.sleep_then, 0.5, "old")
    old_pids = first.pids
    second = poolguard.get_executor(2)
    assert second is not first and second._max_workers == 2
    # Whoever holds the old one may go on using it.
    assert first.submit(tasks.square, 6).result(timeout=PROMPT) == 36
    del first   # the last holder: it closes, its work completes, its workers exit
    assert running.result(timeout=PROMPT + 1) == "old"
    wait_until(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status()
                               != psutil.STATUS_ZOMBIE for pid in old_pids), PROMPT)
    third = poolguard.get_executor(2, retries=1)
    assert third is not second
    assert poolguard.get_executor(retries=1) is third
    assert third.submit(tasks.square, 3).result(timeout=PROMPT) == 9
    second.shutdown(wait=True)


def test_a_shut_down_one_is_replaced_and_a_crash_keeps_it():
    first = poolguard.get_executor(2)
    crashed = first.submit(tasks.die, "sigkill")
    with pytest.raises(poolguard.WorkerCrashedError):
        crashed.result(timeout=PROMPT + 5)
    assert poolguard.get_executor(2) is first   # a death does not break it
    first.shutdown(wait=True)
    second = poolguard.get_executor(2)
    assert second is not first
    assert second.submit(tasks.square, 4).result(timeout=PROMPT) == 16
    second.kill_workers()
    assert poolguard.get_executor(2).submit(tasks.square, 5).result(timeout=PROMPT) == 25


def test_a_bad_request_leaves_the_current_one():
    first = poolguard.get_executor(2)
    with pytest.raises(ValueError):
        poolguard.get_executor(0)
    assert poolguard.get_executor() is first


def test_eight_threads_at_once(method):
    barrier = threading.Barrier(8)

    def ask(i):
        barrier.wait(timeout=PROMPT)
        executor = poolguard.get_executor(2, mp_context=method)
        return executor, [f.result(timeout=PROMPT * 4)
                          for f in [executor.submit(tasks.square, i * 10 + j) for j in range(5)]]

    with cf.ThreadPoolExecutor(8) as threads:
        answers = list(threads.map(ask, range(8)))
    assert len({id(executor) for executor, _ in answers}) == 1
    for i, (_, values) in enumerate(answers):
        assert values == [(i * 10 + j) ** 2 for j in range(5)]


def test_eight_threads_asking_for_different_sizes_always_get_a_running_one():
    """Each replaces the other's: every thread's calls still all complete."""
    barrier = threading.Barrier(8)

    def ask(i):
        barrier.wait(timeout=PROMPT)
        values = []
        for j in range(3):
            executor = poolguard.get_executor(1 + (i + j) % 2)
            values.append(executor.submit(tasks.square, i + j).result(timeout=PROMPT * 4))
        return values

    with cf.ThreadPoolExecutor(8) as threads:
        answers = list(threads.map(ask, range(8)))
    assert answers == [[(i + j) ** 2 for j in range(3)] for i in range(8)]


def test_a_forked_child_makes_its_own(tmp_path):
    out = run_script(tmp_path, """
        parent = poolguard.get_executor(1, mp_context="spawn")
        parent_pid = os.getpid()
        # Its start done first: a fork while a thread of ours is starting a
        # worker (holding an import lock) leaves that lock held in the child.
        assert parent.submit(os.getpid).result(timeout=20) != parent_pid
        pid = os.fork()
        if pid == 0:
            mine = poolguard.get_executor(1, mp_context="spawn")
            ok = mine is not parent and mine.submit(os.getpid).result(timeout=20) != parent_pid
            mine.shutdown(wait=True)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        print("parent", poolguard.get_executor(1, mp_context="spawn") is parent)
        parent.shutdown(wait=True)
    """, "spawn")
    assert out.split() == ["child", "0", "parent", "True"]


def test_eight_threads_at_once_as_the_first_use_in_a_fresh_interpreter(tmp_path, method):
    """Import state: the first executor of the process, made while seven
    other threads wait for it, with a lambda as the first call."""
    out = run_script(tmp_path, """
        import concurrent.futures as cf
        barrier = threading.Barrier(8)

        def ask(i):
            barrier.wait(timeout=20)
            executor = poolguard.get_executor(2, mp_context=METHOD)
            return id(executor), executor.submit(lambda x: x * x, i).result(timeout=20)

        with cf.ThreadPoolExecutor(8) as threads:
            answers = list(threads.map(ask, range(8)))
        print(len({ident for ident, _ in answers}), [value for _, value in answers])
        poolguard.get_executor().shutdown(wait=True)
    """, method)
    assert out.split(" ", 1) == ["1", str([i * i for i in range(8)]) + "\n"]
