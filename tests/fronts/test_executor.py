"""poolguard.ProcessPoolExecutor: only the culprit's future fails."""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import threading
import time

import psutil
import pytest

import poolguard

from poolguard import (ProcessPoolExecutor, TaskDecodeError, TaskTimeoutError, WorkerCrashedError,
                       WorkerInitError)
from poolguard.engine import jobs

import tasks
from conftest import PROMPT, wait_until
from scripts import ROOT, TESTS


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
        # concurrent.futures' class, which on 3.10 is not the builtin one
        with pytest.raises(cf.TimeoutError):
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
        [TESTS, ROOT]))
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


# ---- submits of one function, batched into units ------------------------------------------

def _units_made_by(run):
    """How many units the engine made while *run* ran (ids are consecutive)."""
    before = next(jobs._unit_ids)
    run()
    return next(jobs._unit_ids) - before - 1


def test_batched_submits_each_keep_their_own_outcome(method, tmp_path):
    """600 submits of one tiny function go in a few units; in their midst a
    call raises, one kills its worker, one hangs past task_timeout, one has
    an argument that does not pickle, one an argument that cannot be rebuilt
    in the worker, one an argument that kills the worker being rebuilt.  Each
    fails its own future alone, with its own error; every other call ran
    exactly once, none again after the deaths."""
    log = str(tmp_path / "calls")
    special = {100: "raise", 200: "kill", 300: "hang"}
    with ProcessPoolExecutor(2, mp_context=method, task_timeout=2) as executor:
        warm = [executor.submit(tasks.outcome, log + ".warm", i) for i in range(300)]
        assert [f.result(timeout=30) for f in warm] == [i * i for i in range(300)]
        futures = []
        # Both workers busy for a while: the submits below queue behind them
        # and join the open unit, whatever the machine's load (with a worker
        # idle, how many units they make depends on when the supervisor runs).
        sleeping = []
        for running in (1, 2):
            sleeping.append(executor.submit(time.sleep, 1.0))
            wait_until(lambda n=running: sum(s.state == "busy" for s in executor.status()) == n,
                       10)

        def submit_all():
            for i in range(600):
                extra = {400: (threading.Lock(),), 450: (tasks.FailsInWorker(),),
                         500: (tasks.DieWhenUnpickled(),)}.get(i, ())
                futures.append(executor.submit(tasks.outcome, log, i,
                                               special.get(i, "ok"), *extra))
        assert _units_made_by(submit_all) < 60
        assert [f.result(timeout=10) for f in sleeping] == [None, None]
        cf.wait(futures, timeout=60)
        errors = {i: f.exception() for i, f in enumerate(futures) if f.exception()}
        assert sorted(errors) == [100, 200, 300, 400, 450, 500], errors
        assert isinstance(errors[100], ValueError) and str(errors[100]) == "bad call 100"
        assert isinstance(errors[200], WorkerCrashedError) and errors[200].signal == "SIGKILL"
        assert errors[200].task.function == "outcome" and "200, 'kill'" in errors[200].task.arguments
        assert isinstance(errors[300], TaskTimeoutError) and "300, 'hang'" in str(errors[300])
        assert isinstance(errors[400], TypeError) and "pickle" in str(errors[400])
        assert isinstance(errors[450], TaskDecodeError) and "cannot be rebuilt" in str(errors[450])
        assert isinstance(errors[500], WorkerCrashedError), errors[500]
        assert "500" in errors[500].task.arguments
        assert all(f.result() == i * i for i, f in enumerate(futures) if i not in errors)
        # 400 never pickled; 450 and 500 died before the call; the others ran once.
        assert tasks.calls(log) == [i for i in range(600) if i not in (400, 450, 500)]
        assert executor.submit(tasks.square, 7).result(timeout=10) == 49


def test_a_batched_submit_that_dies_is_retried_alone(method, tmp_path):
    marker = str(tmp_path / "died")
    log = str(tmp_path / "calls")
    with ProcessPoolExecutor(2, mp_context=method, retries=1) as executor:
        for f in [executor.submit(tasks.outcome, log + ".warm", i) for i in range(300)]:
            f.result(timeout=30)
        futures = [executor.submit(tasks.outcome, log, i) for i in range(200)]
        dying = executor.submit(tasks.die_first_time, marker, "second try")
        later = [executor.submit(tasks.outcome, log, i) for i in range(200, 400)]
        assert dying.result(timeout=30) == "second try"
        assert [f.result(timeout=30) for f in futures + later] == [i * i for i in range(400)]
        assert tasks.calls(log) == list(range(400))


def test_a_chunk_whose_retried_item_fails_for_good_fails_alone(method):
    # The retry splits the chunk; once the dying item has used its attempts
    # and failed the chunk's future, the chunk's other part must not be sent:
    # marking that finished future running killed the supervisor thread.
    with ProcessPoolExecutor(1, mp_context=method, retries=1) as executor:
        results = executor.map(tasks.die_at, [0, 1, 2], [0] * 3, chunksize=3)
        with pytest.raises(WorkerCrashedError) as info:
            list(results)
        assert info.value.task.item == 0
        later = executor.map(tasks.die_at, [1, 2, 0, 3, 4, 5], [9] * 6, chunksize=3)
        assert list(later) == [2, 4, 0, 6, 8, 10]
        assert executor.submit(tasks.square, 3).result(timeout=PROMPT) == 9


def test_a_batched_submit_cancelled_before_it_is_sent_never_runs(tmp_path):
    log = str(tmp_path / "calls")
    with ProcessPoolExecutor(1) as executor:
        busy = executor.submit(tasks.sleep_then, 1.0, "done")
        wait_until(busy.running, 10)
        futures = [executor.submit(tasks.outcome, log, i) for i in range(50)]
        assert all(futures[i].cancel() for i in range(10, 20))
        assert busy.result(timeout=10) == "done"
        assert [f.result(timeout=10) for i, f in enumerate(futures) if not 10 <= i < 20] == \
            [i * i for i in range(50) if not 10 <= i < 20]
    assert all(futures[i].cancelled() for i in range(10, 20))
    assert tasks.calls(log) == [i for i in range(50) if not 10 <= i < 20]


def test_submits_of_different_functions_keep_their_order():
    with ProcessPoolExecutor(1) as executor:
        futures = [executor.submit(tasks.square if i % 3 else tasks.identity, i)
                   for i in range(90)]
        assert [f.result(timeout=30) for f in futures] == \
            [i * i if i % 3 else i for i in range(90)]


class CountingExecutor(ProcessPoolExecutor):
    """A subclass whose submit sees every call, as tools that wrap it expect."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_map_goes_through_an_overridden_submit():
    with CountingExecutor(2) as executor:
        assert list(executor.map(tasks.square, range(50))) == [i * i for i in range(50)]
        assert executor.submitted == 50
        # With a chunksize, one submit a chunk, as the standard executor's map.
        assert list(executor.map(tasks.add, range(50), range(50), chunksize=8)) == \
            [2 * i for i in range(50)]
        assert executor.submitted == 50 + 7
    # A submit wrapped on the instance (tqdm's process_map does this).
    with ProcessPoolExecutor(2) as executor:
        seen = []
        original = executor.submit

        def counting(fn, *args, **kwargs):
            future = original(fn, *args, **kwargs)
            future.add_done_callback(seen.append)
            return future
        executor.submit = counting
        results = executor.map(tasks.die_at, range(6), [3] * 6)
        assert [next(results) for _ in range(3)] == [0, 2, 4]
        with pytest.raises(WorkerCrashedError):
            next(results)
        wait_until(lambda: len(seen) == 6, PROMPT)


def test_tqdm_process_map_counts_every_item():
    tqdm_concurrent = pytest.importorskip("tqdm.contrib.concurrent")
    import io
    out = io.StringIO()
    # process_map's own implementation, given our executor class.
    results = tqdm_concurrent._executor_map(ProcessPoolExecutor, tasks.square, range(100),
                                            max_workers=2, file=out, mininterval=0)
    assert results == [i * i for i in range(100)]
    assert "100/100" in out.getvalue()


def test_map_with_buffersize_reads_an_endless_input_lazily():
    import itertools
    with CountingExecutor(2) as executor:
        results = executor.map(tasks.square, itertools.count(), buffersize=4)
        assert list(itertools.islice(results, 30)) == [i * i for i in range(30)]
        assert executor.submitted == 4 + 30   # the first four, then one a result taken
        results.close()   # the submitted calls not consumed are cancelled
        chunked = executor.map(tasks.square, itertools.count(), chunksize=5, buffersize=2)
        assert list(itertools.islice(chunked, 23)) == [i * i for i in range(23)]
        assert executor.submitted == 34 + 2 + 5   # five chunks taken
        # An item's exception is raised at its place; the executor goes on.
        failing = executor.map(tasks.die_at, range(10), [4] * 10, buffersize=3)
        assert [next(failing) for _ in range(4)] == [0, 2, 4, 6]
        with pytest.raises(WorkerCrashedError):
            next(failing)
        assert executor.submit(tasks.square, 5).result(timeout=PROMPT) == 25


def test_map_with_buffersize_keeps_memory_flat_over_an_endless_input():
    """What the caller's process holds does not grow with the items read:
    the highest traced memory over items 5,000-10,000 and over 20,000-25,000
    are within 256 KiB (a future kept per item would add more than 5 MiB).
    The highest over a window, since the supervisor's heap of offers swings
    by up to 0.5 MiB between two clean-ups (pacing.py)."""
    import itertools
    import tracemalloc
    highest = {5000: 0, 20000: 0}
    tracemalloc.start()
    try:
        with ProcessPoolExecutor(2) as executor:
            for i, value in enumerate(executor.map(tasks.square, itertools.count(),
                                                   buffersize=8)):
                assert value == i * i
                window = 5000 if 5000 <= i < 10000 else 20000 if 20000 <= i else None
                if window is not None:
                    highest[window] = max(highest[window], tracemalloc.get_traced_memory()[0])
                if i == 25000:
                    break
    finally:
        tracemalloc.stop()
    assert highest[20000] - highest[5000] < 256 << 10, highest


@pytest.mark.parametrize("buffersize, error", [(0, ValueError), (-1, ValueError),
                                               (1.5, TypeError), (True, TypeError)])
def test_map_refuses_a_bad_buffersize(buffersize, error):
    with ProcessPoolExecutor(1) as executor:
        with pytest.raises(error, match="buffersize"):
            executor.map(tasks.square, range(3), buffersize=buffersize)
        with pytest.raises(ValueError, match="buffersize"):
            executor.map(tasks.square, range(3), buffersize=2, progress=True)


@pytest.mark.parametrize("stop", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers_stop_running_tasks(stop, method):
    executor = ProcessPoolExecutor(2, mp_context=method)
    running = [executor.submit(tasks.sleep_then, 30) for _ in range(2)]
    queued = [executor.submit(tasks.square, i) for i in range(50)]
    wait_until(lambda: all(f.running() for f in running), PROMPT)
    pids = executor.pids
    start = time.monotonic()
    getattr(executor, stop)()
    assert time.monotonic() - start < PROMPT
    for future in running:
        with pytest.raises(poolguard.PoolTerminatedError):
            future.result(timeout=PROMPT)
    # As 3.14's: what no worker has taken is cancelled; a call already
    # handed to a worker behind a running one fails with the running ones.
    for future in queued:
        assert future.cancelled() or isinstance(future.exception(PROMPT),
                                                poolguard.PoolTerminatedError)
    assert any(future.cancelled() for future in queued)
    assert not any(psutil.pid_exists(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="shutdown"):
        executor.submit(tasks.square, 1)


def test_shutdown_cancelling_futures_runs_those_already_running(tmp_path):
    # Calls whose worker died are queued again with their futures running
    # (the one that died, for its retry, and the calls of its unit after it);
    # shutdown(cancel_futures=True) must run them, as the standard executor
    # runs what its workers took, not fail them with "not run".
    marker, done = str(tmp_path / "died"), str(tmp_path / "done")
    open(done, "w").close()
    executor = ProcessPoolExecutor(1, retries=1, initializer=time.sleep, initargs=(0.5,))
    for future in [executor.submit(tasks.die_first_time, done, i) for i in range(200)]:
        future.result(timeout=30)   # known to be tiny: later submits share units
    # While the worker waits at the gate, the six calls gather in one batch,
    # cut as one unit once it is free: the five run behind the one that dies.
    # (Sent as units of their own, the five would wait in the supervisor: a
    # worker running late takes no more.)
    go = str(tmp_path / "go")
    gate = executor.submit(tasks.wait_for_file, go)
    first = executor.submit(tasks.die_first_time, marker, "second try")
    later = [executor.submit(tasks.die_first_time, done, i) for i in range(5)]
    open(go, "w").close()
    assert gate.result(timeout=30)
    wait_until(lambda: os.path.exists(marker), 10)
    wait_until(lambda: [s.state for s in executor.status()] == ["starting"], PROMPT)
    assert all(future.running() for future in [first] + later)
    executor.shutdown(wait=True, cancel_futures=True)
    assert first.result(timeout=0) == "second try"
    assert [future.result(timeout=0) for future in later] == list(range(5))
