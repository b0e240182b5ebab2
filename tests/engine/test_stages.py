"""A worker dies, or a value fails, at each stage of a task's trip."""
from __future__ import annotations

from multiprocessing.pool import MaybeEncodingError

import pytest

from concurrent.futures.process import BrokenProcessPool

import poolguard
from poolguard import WorkerCrashedError

import tasks
from conftest import wait_until
from scripts import ROOT, TESTS


def test_death_while_decoding_the_arguments(method):
    with poolguard.Pool(1, context=method) as pool:
        with pytest.raises(WorkerCrashedError) as info:
            pool.apply(tasks.identity, (tasks.DieWhenUnpickled(),))
        err = info.value
        assert err.phase == "decoding" and err.signal == "SIGKILL"
        assert "while decoding the arguments of identity(" in str(err)
        assert pool.apply(tasks.square, (3,)) == 9


def test_death_while_sending_the_result(method):
    with poolguard.Pool(1, context=method) as pool:
        with pytest.raises(WorkerCrashedError) as info:
            pool.map(tasks.make_die_when_pickled, [1])
        err = info.value
        assert err.phase == "sending" and err.signal == "SIGKILL"
        assert "while sending the result of make_die_when_pickled(1)" in str(err)
        assert pool.map(tasks.square, [2, 3]) == [4, 9]


def test_result_that_cannot_be_rebuilt_in_the_parent(method):
    with poolguard.Pool(1, context=method) as pool:
        with pytest.raises(MaybeEncodingError) as info:
            pool.apply(tasks.make_fails_in_parent, (1,))
        assert "cannot be rebuilt in the parent" in str(info.value)
        assert "make_fails_in_parent(1)" in str(info.value)
        assert pool.apply(tasks.square, (5,)) == 25


@pytest.mark.parametrize("front", ["pool", "executor"])
def test_result_or_error_that_exits_when_unpickled_fails_only_its_task(method, front):
    """sys.exit() run by unpickling a reply used to kill the supervisor: the
    culprit waited forever and an unrelated task got the SystemExit."""
    pool = (poolguard.Pool(2, context=method) if front == "pool"
            else poolguard.ProcessPoolExecutor(2, mp_context=method))
    with pool:
        submit = ((lambda x: pool.apply_async(tasks.make_exits_when_unpickled, (x,)))
                  if front == "pool" else
                  (lambda x: pool.submit(tasks.make_exits_when_unpickled, x)))
        get = (lambda r: r.get(10)) if front == "pool" else (lambda r: r.result(10))
        results = [submit(x) for x in range(5)]
        with pytest.raises(MaybeEncodingError) as info:
            get(results[1])
        assert "SystemExit(3)" in str(info.value)
        assert "make_exits_when_unpickled(1)" in str(info.value)
        with pytest.raises(poolguard.UnpicklableTaskError) as info2:
            get(results[2])
        assert "ExitingError: boom" in str(info2.value) and "SystemExit(4)" in str(info2.value)
        assert [get(results[x]) for x in (0, 3, 4)] == [0, 3, 4]
        assert get(submit(7)) == 7   # the pool lives


def test_crash_between_tasks_of_a_busy_pool(method):
    # The death lands after one task's result is sent and before the next is
    # read: nothing is blamed, nothing is lost.
    with poolguard.Pool(1, context=method) as pool:
        assert pool.apply(tasks.square, (2,)) == 4
        victim = pool.pids[0]
        import os
        import signal
        os.kill(victim, signal.SIGKILL)
        assert pool.map(tasks.square, range(20), 4) == [x * x for x in range(20)]


def test_task_that_closes_every_descriptor(method):
    with poolguard.Pool(1, context=method) as pool:
        with pytest.raises(WorkerCrashedError) as info:
            pool.apply_async(tasks.close_every_descriptor, (1,)).get(10)
        assert info.value.task.function == "close_every_descriptor"
        assert pool.apply(tasks.square, (6,)) == 36


RESOURCE_SCRIPT = """
import sys, poolguard, tasks
if __name__ == "__main__":
    for method in ("fork", "spawn", "forkserver"):
        with poolguard.Pool(2, context=method) as pool:
            try:
                pool.apply(tasks.die, ("sigkill",))
            except poolguard.WorkerCrashedError:
                pass
            assert pool.map(tasks.square, range(10)) == [x * x for x in range(10)]
    print("done", flush=True)
"""


def test_resource_tracker_stays_silent(tmp_path):
    import os
    import subprocess
    import sys
    script = tmp_path / "resources.py"
    script.write_text(RESOURCE_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0 and "done" in done.stdout, done.stderr
    assert "resource_tracker" not in done.stderr and "leaked" not in done.stderr, done.stderr


def test_argument_that_raises_while_decoding_fails_that_task_only(method):
    with poolguard.Pool(1, context=method) as pool:
        with pytest.raises(poolguard.TaskDecodeError,
                           match="ValueError: this argument cannot be rebuilt in a worker") as info:
            pool.apply(tasks.identity, (tasks.FailsInWorker(),))
        assert isinstance(info.value.exc, ValueError)
        assert isinstance(info.value, BrokenProcessPool)
        assert pool.apply(tasks.square, (7,)) == 49


def test_worker_killed_while_the_pool_closes(method, tmp_path):
    import os
    import signal
    import time
    from conftest import wait_until
    pool = poolguard.Pool(2, context=method)
    marker = str(tmp_path / "pid")
    victim_task = pool.apply_async(tasks.announce_and_sleep, (marker, 30))
    others = [pool.apply_async(tasks.sleep_then, (0.1, i)) for i in range(6)]
    pid = int(wait_until(lambda: os.path.exists(marker) and open(marker).read(), 10))
    pool.close()
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    pool.join()
    assert time.monotonic() - start < 10
    with pytest.raises(WorkerCrashedError):
        victim_task.get(0)
    assert [r.get(0) for r in others] == list(range(6))
    assert pool.pids == []


def test_terminate_while_workers_are_dying(method):
    import time
    pool = poolguard.Pool(2, context=method)
    dying = [pool.apply_async(tasks.sleep_then_die, (0.05,)) for _ in range(4)]
    wait_until(lambda: pool.stats().crashes >= 1, 10)   # the others die next
    start = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - start < 5
    for result in dying:
        with pytest.raises((WorkerCrashedError, poolguard.PoolTerminatedError)):
            result.get(0)
    assert pool.pids == []
