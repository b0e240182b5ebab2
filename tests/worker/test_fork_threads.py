"""Pools made under fork in a caller that has other threads at ``Pool()``:
the zygote's own fork is made there (worker/clean_fork.py).  Fresh
interpreters, since import state is what is at stake."""
from __future__ import annotations

import pytest

from scripts import run_script

SLOW = "import time\ntime.sleep(0.6)\nVALUE = 7\n"

TASKS = """
def square(x):
    return x * x

def use_slow(x):
    import slow_mod
    return slow_mod.VALUE + x
"""


@pytest.mark.parametrize("method", ["fork"])
def test_a_thread_importing_at_pool_leaves_no_held_import_lock_to_the_workers(tmp_path,
                                                                             method):
    """Another thread is in the middle of importing a module at ``Pool()``: a
    zygote forked then had that module's import lock held forever, and every
    task importing the module hung (4 of 4 maps, 3.10 to 3.13).  The fork
    now waits for the import to end."""
    out = run_script(tmp_path, """
        import importlib
        import tasks_mod
        importer = threading.Thread(target=importlib.import_module, args=("slow_mod",))
        importer.start()
        time.sleep(0.1)   # well inside its 0.6 s import
        p = poolguard.Pool(2, context=METHOD)
        result = p.map_async(tasks_mod.use_slow, range(4))
        result.wait(10)
        print(result.get() if result.ready() else "hung")
        p.terminate()
        importer.join()
    """, method, modules={"tasks_mod": TASKS, "slow_mod": SLOW})
    assert out.splitlines() == ["[7, 8, 9, 10]"], out


@pytest.mark.parametrize("method", ["fork"])
def test_no_fork_warning_comes_from_poolguard(tmp_path, method):
    """Python 3.12+ warns at a fork in a process with several threads.  The
    zygote is forked in the caller's process, which here has a thread of its
    own, another pool's threads, and (third pool) makes its pool from a
    second thread.  No DeprecationWarning may come from poolguard's files,
    and every pool works.  (Before 3.12 there is no such warning: the test
    then checks the pools only.)"""
    out = run_script(tmp_path, """
        import warnings
        import tasks_mod
        warnings.simplefilter("always")
        stop = threading.Event()
        threading.Thread(target=stop.wait).start()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            first = poolguard.Pool(2, context=METHOD)
            print(first.map(tasks_mod.square, range(4)))
            second = poolguard.Pool(2, context=METHOD)   # the first's threads run
            print(second.map(tasks_mod.square, range(4)))
            box = []
            maker = threading.Thread(target=lambda: box.append(poolguard.Pool(2, context=METHOD)))
            maker.start()
            maker.join()
            print(box[0].map(tasks_mod.square, range(4)))
            with poolguard.ProcessPoolExecutor(2, mp_context=METHOD) as executor:
                print(list(executor.map(tasks_mod.square, range(4))))
            for pool in (first, second, box[0]):
                pool.terminate()
        stop.set()
        ours = os.path.dirname(poolguard.__file__)
        for w in seen:
            if issubclass(w.category, DeprecationWarning) and w.filename.startswith(ours):
                print("warning:", w.filename, w.lineno, w.message)
    """, method, modules={"tasks_mod": TASKS})
    assert out.splitlines() == ["[0, 1, 4, 9]"] * 4, out
