"""The standard library's behaviour that code swapped over to poolguard relies on."""
from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import weakref
from concurrent.futures import BrokenExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.pool import MaybeEncodingError

import pytest

from scripts import ROOT

from poolguard import ProcessPoolExecutor, WorkerCrashedError, WorkerInitError

import tasks
from conftest import PROMPT, wait_until



def test_a_crash_is_a_broken_process_pool_and_the_pool_goes_on(front, method):
    """Handlers written for the stdlib (`except BrokenProcessPool`) catch it."""
    with front(2, method) as pool:
        with pytest.raises(BrokenProcessPool) as info:
            pool.get(pool.submit(tasks.die, "sigkill"))
        assert isinstance(info.value, WorkerCrashedError)
        assert isinstance(info.value, BrokenExecutor) and isinstance(info.value, RuntimeError)
        assert pool.get(pool.submit(tasks.square, 4)) == 16


def test_a_failing_initializer_is_a_broken_process_pool():
    with ProcessPoolExecutor(1, initializer=tasks.init_fail) as executor:
        with pytest.raises(BrokenProcessPool) as info:
            executor.submit(tasks.square, 2).result(10)
        assert isinstance(info.value, WorkerInitError)


def test_a_result_that_does_not_pickle_is_a_pickling_error(front):
    with front(1, "fork") as pool:
        with pytest.raises(pickle.PicklingError) as info:
            pool.get(pool.submit(tasks.return_lock, 0))
        assert isinstance(info.value, MaybeEncodingError)     # what Pool has always raised
        assert pool.get(pool.submit(tasks.square, 3)) == 9


def test_submit_of_what_does_not_pickle_fails_the_future_not_the_call():
    with ProcessPoolExecutor(1) as executor:
        lock = threading.Lock()
        bad_function = executor.submit(lock.acquire)
        bad_argument = executor.submit(tasks.square, lock)
        exits = executor.submit(tasks.square, tasks.ExitsWhenPickled())
        with pytest.raises(TypeError):
            bad_function.result(10)
        with pytest.raises(TypeError):
            bad_argument.result(10)
        with pytest.raises(SystemExit):
            exits.result(10)
        assert executor.submit(tasks.square, 5).result(10) == 25


def test_map_keeps_no_reference_to_results_already_yielded():
    """CPython's test_free_reference: a result the consumer dropped is freed."""
    with ProcessPoolExecutor(1) as executor:
        for obj in executor.map(tasks.make_object, range(5)):
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None


def test_the_worker_keeps_no_reference_to_a_finished_task(method, tmp_path):
    """CPython's test_ressources_gced_in_workers: the arguments are freed in
    the worker as soon as the call returns."""
    marker = tmp_path / "freed"
    with ProcessPoolExecutor(1, mp_context=method) as executor:
        assert executor.submit(tasks.ignore, tasks.WritesWhenFreed(str(marker))).result(10) is None
        wait_until(marker.exists, PROMPT, message="the argument outlived its task")
        assert executor.submit(tasks.square, 2).result(10) == 4


def test_submit_from_an_atexit_handler_raises():
    script = textwrap.dedent("""
        import atexit, poolguard
        executor = poolguard.ProcessPoolExecutor(1)
        def late():
            try:
                executor.submit(abs, -1)
            except RuntimeError as exc:
                print("refused:", exc)
        atexit.register(late)
        print(executor.submit(abs, -2).result())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "2", "refused: cannot schedule new futures after interpreter shutdown"]


def test_max_tasks_per_child_is_accepted_with_fork():
    """The stdlib refuses it with fork (replacements forked from a thread);
    poolguard's zygote forks them from a single-threaded process."""
    with ProcessPoolExecutor(1, mp_context="fork", max_tasks_per_child=1) as executor:
        pids = {executor.submit(os.getpid).result(10) for _ in range(3)}
        assert len(pids) == 3


def test_initializer_globals_reach_tasks_of_a_script(tmp_path, method):
    """The common stdlib pattern: the initializer sets a module global that
    tasks read.  A script's top-level functions go by name, as with the
    stdlib, so both share the module's globals in the worker; a function
    under the main guard still goes by value."""
    script = tmp_path / "step.py"
    script.write_text(textwrap.dedent("""
        import sys
        import poolguard
        STATUS = "uninitialized"
        def init(value):
            global STATUS
            STATUS = value
        def status(_):
            return STATUS
        if __name__ == "__main__":
            method = sys.argv[1]
            def local(x):
                return x * 2
            with poolguard.Pool(2, initializer=init, initargs=("ready",), context=method) as p:
                print(p.map(status, range(3)), p.map(local, [1, 2]))
            with poolguard.ProcessPoolExecutor(2, mp_context=method, initializer=init,
                                               initargs=("ready",)) as ex:
                print(list(ex.map(status, range(2))))
    """))
    done = subprocess.run([sys.executable, str(script), method], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["['ready', 'ready', 'ready'] [2, 4]",
                                        "['ready', 'ready']"]
