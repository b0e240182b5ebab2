"""A pool inside a daemonic process (a worker of ``multiprocessing.Pool``;
a dask worker is tested in test_cluster.py), where ``multiprocessing``
refuses to start children.  Each case runs in a fresh interpreter."""
from __future__ import annotations

import pytest

from scripts import run_script

INNER = """
import os, signal
import poolguard

def die_at_2(x):
    if x == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10

def worker_is_daemonic(_):
    import multiprocessing
    return multiprocessing.current_process().daemon


def inner(method, front, leave_open):
    import multiprocessing
    assert multiprocessing.current_process().daemon
    if front == "pool":
        pool = poolguard.Pool(2, context=method)
        values = pool.map(abs, [-1, -2, -3])
        # Ours are not daemonic: their tasks may start processes in turn.
        assert pool.map(worker_is_daemonic, range(2)) == [False, False]
        run = lambda: pool.map(die_at_2, range(4))
        end = pool.terminate
    else:
        pool = poolguard.ProcessPoolExecutor(2, mp_context=method)
        values = list(pool.map(abs, [-1, -2, -3]))
        run = lambda: list(pool.map(die_at_2, range(4)))
        end = pool.shutdown
    try:
        run()
        crash = "no error"
    except poolguard.WorkerCrashedError as exc:
        crash = f"{exc.signal} item {exc.task.item}"
    if not leave_open:
        end()
    return values, crash
"""


@pytest.mark.parametrize("front", ["pool", "executor"])
@pytest.mark.parametrize("leave_open", [False, True])
def test_a_pool_inside_a_multiprocessing_pool_worker(tmp_path, method, front, leave_open):
    """Works under every start method, a death in it is named, and the
    daemonic worker still exits when its pool closes, even when it left our
    pool open (multiprocessing would otherwise join our workers forever)."""
    out = run_script(tmp_path, f"""
        import multiprocessing, inner_mod
        outer = multiprocessing.Pool(1)
        print(outer.apply(inner_mod.inner, (METHOD, {front!r}, {leave_open!r})))
        outer.close()
        outer.join()
        print("joined")
    """, method, modules={"inner_mod": INNER})
    assert out.split("\n")[:2] == ["([1, 2, 3], 'SIGKILL item 2')", "joined"]
