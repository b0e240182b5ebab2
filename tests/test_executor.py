"""poolguard.ProcessPoolExecutor: only the culprit's future fails."""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import time

import pytest

from poolguard import ProcessPoolExecutor, WorkerCrashedError, WorkerInitError

import tasks
from conftest import PROMPT, wait_until


def test_eight_tasks_one_kills_its_worker(method):
    with ProcessPoolExecutor(2, mp_context=method) as executor:
        futures = [executor.submit(tasks.die_at, i, 5) for i in range(8)]
        cf.wait(futures, timeout=20)
        failed = [f for f in futures if f.exception() is not None]
        assert len(failed) == 1 and failed[0] is futures[5]
        err = futures[5].exception()
        assert isinstance(err, WorkerCrashedError) and err.signal == "SIGKILL"
        assert err.task.function == "die_at" and err.task.arguments == "5, 5"
        assert [f.result() for i, f in enumerate(futures) if i != 5] == \
            [0, 2, 4, 6, 8, 12, 14]
        assert executor.submit(tasks.square, 9).result(timeout=10) == 81


def test_map_raises_at_the_culprit_in_order(method):
    with ProcessPoolExecutor(2, mp_context=method) as executor:
        results = executor.map(tasks.die_at, range(10), [6] * 10, chunksize=3)
        got = []
        with pytest.raises(WorkerCrashedError) as info:
            for value in results:
                got.append(value)
        assert got == [0, 2, 4, 6, 8, 10]   # chunk [6, 7, 8] fails as a whole
        assert info.value.task.item == 6
        assert list(executor.map(tasks.square, range(5))) == [0, 1, 4, 9, 16]


def test_as_completed_with_a_crash():
    with ProcessPoolExecutor(2) as executor:
        futures = {executor.submit(tasks.die_at, i, 3): i for i in range(6)}
        outcomes = {}
        for future in cf.as_completed(futures, timeout=20):
            exc = future.exception()
            outcomes[futures[future]] = type(exc).__name__ if exc else future.result()
        assert outcomes == {0: 0, 1: 2, 2: 4, 3: "WorkerCrashedError", 4: 8, 5: 10}


def test_asyncio_run_in_executor_with_a_crash():
    async def main(executor):
        loop = asyncio.get_running_loop()
        ok = loop.run_in_executor(executor, tasks.square, 6)
        bad = loop.run_in_executor(executor, tasks.die, "sigkill")
        return await asyncio.wait_for(asyncio.gather(ok, bad, return_exceptions=True), 20)

    with ProcessPoolExecutor(2) as executor:
        ok, bad = asyncio.run(main(executor))
    assert ok == 36 and isinstance(bad, WorkerCrashedError)


def test_task_exception_keeps_type_and_traceback():
    with ProcessPoolExecutor(1) as executor:
        with pytest.raises(ValueError, match="bad input 2") as info:
            executor.submit(tasks.fail, 2).result(timeout=10)
        assert "in fail" in str(info.value.__cause__)


def test_failing_initializer_fails_pending_futures(method):
    with ProcessPoolExecutor(2, mp_context=method, initializer=tasks.init_fail) as executor:
        futures = [executor.submit(tasks.square, i) for i in range(4)]
        for future in futures:
            with pytest.raises(WorkerInitError, match="initializer exploded"):
                future.result(timeout=10)


def test_shutdown_cancel_futures():
    executor = ProcessPoolExecutor(1)
    running = executor.submit(tasks.sleep_then, 0.5, "ran")
    wait_until(running.running, 10)
    queued = [executor.submit(tasks.square, i) for i in range(10)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert running.result(0) == "ran"
    cancelled = [f for f in queued if f.cancelled()]
    assert len(cancelled) >= 8           # at most one sits in the worker's pipe
    assert all(f.done() for f in queued)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(tasks.square, 1)


def test_shutdown_without_wait_returns_at_once_and_work_finishes():
    executor = ProcessPoolExecutor(2)
    futures = [executor.submit(tasks.sleep_then, PROMPT + 1, i) for i in range(2)]
    start = time.monotonic()
    executor.shutdown(wait=False)
    assert time.monotonic() - start < PROMPT    # waiting would take PROMPT + 1 s
    assert [f.result(timeout=20) for f in futures] == [0, 1]
    executor._engine.join(10)


def test_max_tasks_per_child(method):
    with ProcessPoolExecutor(2, mp_context=method, max_tasks_per_child=2) as executor:
        pids = [executor.submit(tasks.getpid).result(timeout=10) for _ in range(6)]
        assert len(set(pids)) >= 3


def test_map_timeout():
    with ProcessPoolExecutor(1) as executor:
        results = executor.map(tasks.sleep_then, [1.0], timeout=0.1)
        with pytest.raises(TimeoutError):
            next(results)


@pytest.mark.parametrize("kwargs, error", [
    ({"max_workers": 0}, ValueError),
    ({"max_workers": "2"}, TypeError),
    ({"initializer": 1}, TypeError),
    ({"max_tasks_per_child": -1}, ValueError),
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        ProcessPoolExecutor(**kwargs)


def test_unshut_executor_at_interpreter_exit(tmp_path, method):
    """CPython's test_interpreter_shutdown, under each start method: an
    executor never shut down finishes its work at exit, silently."""
    import subprocess
    import sys
    from pathlib import Path
    script = tmp_path / "unshut.py"
    script.write_text(
        "import sys, poolguard, tasks\n"
        "if __name__ == '__main__':\n"
        "    ex = poolguard.ProcessPoolExecutor(2, mp_context=sys.argv[1])\n"
        "    f = ex.submit(tasks.sleep_then, 0.3, 'finished')\n"
        "    f.add_done_callback(lambda f: print(f.result(), flush=True))\n"
        "    import time\n"
        "    while len(ex.pids) < 2: time.sleep(0.01)\n"
        "    print('pids', *ex.pids, flush=True)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parent), str(Path(__file__).parent.parent)]))
    done = subprocess.run([sys.executable, str(script), method], capture_output=True,
                          text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert not done.stderr
    assert "finished" in done.stdout
    pids = [int(p) for line in done.stdout.splitlines() if line.startswith("pids ")
            for p in line.split()[1:]]
    assert len(pids) == 2
    for pid in pids:   # exited with the interpreter, not orphaned
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_slow_done_callback_does_not_delay_crash_detection():
    with ProcessPoolExecutor(2) as executor:
        slow = executor.submit(tasks.square, 3)
        slow.add_done_callback(lambda _: time.sleep(PROMPT + 1))
        start = time.monotonic()
        with pytest.raises(WorkerCrashedError):
            executor.submit(tasks.die, "sigkill").result(10)
        assert time.monotonic() - start < PROMPT
        assert slow.result(10) == 9
