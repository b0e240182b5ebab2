"""Pools on a real dask.distributed cluster (``cluster=``): the same API and
the same errors as on one machine.  One LocalCluster of two worker
processes is shared by the module; each test leaves it as it found it."""
from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import socket
import time

import pytest

import poolguard
from poolguard import (PoolTerminatedError, TaskTimeoutError, WorkerCrashedError,
                       WorkerMemoryError)

import conftest
import tasks
from conftest import KEPT_PIDS, PROMPT, wait_until

distributed = pytest.importorskip("distributed")

WORKER_MEMORY = 600 * 2**20     # each dask worker's memory_limit


@pytest.fixture(scope="module")
def cluster():
    import psutil
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  memory_limit=WORKER_MEMORY, dashboard_address=":0",
                                  silence_logs=50) as local:
        # The nannies and dask workers live for the module (and so do the
        # fork servers the dask workers start); the leak check skips them.
        kept = {p.pid for p in psutil.Process().children(recursive=True)} - before
        KEPT_PIDS.update(kept)
        conftest.IGNORE_SOCKETS = True   # the scheduler runs in this process
        yield local
    KEPT_PIDS.difference_update(kept)
    conftest.IGNORE_SOCKETS = False


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster, set_as_default=False) as c:
        yield c


# ---- tasks (module-level: the dask workers import this module) ----

def inc(x):
    return x + 1


def add(a, b):
    return a + b


def boom(x):
    raise ValueError(f"bad {x}")


class TwoArgError(Exception):
    def __init__(self, a, b):   # pickles, but does not unpickle
        super().__init__(f"{a}/{b}")
        self.trap = tasks.FailsToLoad()   # even where dask's tblib unpickles it


def raise_two_arg(x):
    raise TwoArgError(x, "b")


_initialized = None


def set_initialized(value):
    global _initialized
    _initialized = value


def read_initialized(_):
    return _initialized


def wait_to_be_killed(folder, x):
    """Record each start, then announce the pid and wait for the test's kill."""
    with open(os.path.join(folder, f"starts-{x}"), "a") as f:
        f.write(f"{os.getpid()}\n")
    path = os.path.join(folder, f"pid-{x}")
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(60)


def die_once(folder, x):
    """SIGKILL its own process the first time it runs for x == 3."""
    marker = os.path.join(folder, f"died-{x}")
    if x == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def die_at_3(x):
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


def hog(mib):
    chunks = []
    for _ in range(mib // 16):
        chunks.append(bytearray(16 * 2**20))
        time.sleep(0.005)
    return len(chunks)


def _kill_when_announced(folder, x):
    path = os.path.join(folder, f"pid-{x}")
    wait_until(lambda: os.path.exists(path), 30, message="the task never started")
    pid = int(open(path).read())
    os.kill(pid, signal.SIGKILL)
    return pid, time.monotonic()


# ---- the API, unchanged ----

@pytest.mark.timeout(120)
def test_pool_api_on_the_cluster(client):
    with poolguard.Pool(cluster=client, initializer=set_initialized,
                        initargs=("ready",)) as pool:
        assert pool._processes == 2   # the cluster's thread count
        assert pool.map(inc, range(50)) == list(range(1, 51))
        assert pool.map(inc, range(50), chunksize=7) == list(range(1, 51))
        assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert list(pool.imap(inc, range(20))) == list(range(1, 21))
        assert sorted(pool.imap_unordered(inc, iter(range(20)), chunksize=3)) == \
            list(range(1, 21))
        offset = 100
        assert pool.map(lambda x: x + offset, [1, 2]) == [101, 102]   # a closure
        assert pool.apply(add, (2, 3)) == 5
        got = []
        pool.apply_async(inc, (1,), callback=got.append).wait(30)
        wait_until(lambda: got == [2], PROMPT)
        errors = []
        pool.apply_async(boom, (4,), error_callback=errors.append).wait(30)
        wait_until(lambda: len(errors) == 1, PROMPT)
        assert isinstance(errors[0], ValueError) and str(errors[0]) == "bad 4"
        assert "in boom" in str(errors[0].__cause__)   # the remote traceback
        assert set(pool.map(read_initialized, range(4))) == {"ready"}
        seen = []
        assert pool.map(inc, range(40), progress=seen.append) == list(range(1, 41))
        assert (seen[-1].done, seen[-1].total, seen[-1].final) == (40, 40, True)
        with pytest.raises(ValueError, match=r"^bad [0-2]$"):   # the first to arrive
            pool.map(boom, range(3))


@pytest.mark.timeout(120)
def test_executor_api_on_the_cluster(client, tmp_path):
    with poolguard.ProcessPoolExecutor(cluster=client) as executor:
        assert executor.submit(add, 1, 2).result(30) == 3
        assert list(executor.map(inc, range(30))) == list(range(1, 31))
        assert list(executor.map(add, range(5), range(5), chunksize=2)) == [0, 2, 4, 6, 8]
        future = executor.submit(boom, 1)
        assert isinstance(future.exception(30), ValueError)
        store = tmp_path / "store"
        assert list(executor.map(inc, range(10), checkpoint=store)) == list(range(1, 11))
        assert any(store.rglob("*")), "checkpoint entries were written on the workers"
        # An argument that does not pickle fails its own future only.
        bad = executor.submit(add, 1, multiprocessing.Lock())
        assert isinstance(bad.exception(30), (TypeError, pickle.PicklingError, RuntimeError))
        assert executor.submit(inc, 1).result(30) == 2
        # An exception that does not unpickle arrives as text, with its traceback.
        error = executor.submit(raise_two_arg, 1).exception(30)
        assert isinstance(error, poolguard.UnpicklableTaskError)
        assert error.type_name.endswith("TwoArgError") and error.text == "1/b"
        assert "in raise_two_arg" in error.remote_traceback


# ---- deaths: the first one, named, at once ----

@pytest.mark.timeout(120)
def test_a_killed_task_fails_at_the_first_death_naming_its_item(client, tmp_path):
    with poolguard.Pool(cluster=client) as pool:
        result = pool.starmap_async(wait_to_be_killed, [(str(tmp_path), 4)])
        pid, killed_at = _kill_when_announced(tmp_path, 4)
        with pytest.raises(WorkerCrashedError) as info:
            result.get(30)
        elapsed = time.monotonic() - killed_at
        error = info.value
        assert elapsed < PROMPT, f"the error came {elapsed:.1f} s after the kill"
        assert (error.pid, error.signal, error.exitcode) == (pid, "SIGKILL", -9)
        assert error.task.function == "wait_to_be_killed" and error.task.item == 0
        assert error.host == socket.gethostname()
        assert error.dask_worker in cluster_workers(client)
        assert f"worker {pid} on {error.host} (dask worker {error.dask_worker})" in str(error)
        assert "What to do:" in str(error)
        # Ran once: dask did not run it again on another worker.
        assert open(tmp_path / "starts-4").read().split() == [str(pid)]
        assert pool.map(inc, range(10)) == list(range(1, 11))   # still usable


def cluster_workers(client):
    return set(client.scheduler_info()["workers"])


@pytest.mark.timeout(120)
def test_a_death_in_map_names_the_item_and_others_are_delivered(client):
    with poolguard.Pool(cluster=client) as pool:
        with pytest.raises(WorkerCrashedError) as info:
            pool.map(die_at_3, range(8), chunksize=2)
        assert info.value.task.item == 3 and info.value.task.call == "map"
        assert info.value.task.arguments == "3"
        results = [pool.apply_async(die_at_3, (i,)) for i in range(6)]
        for i, result in enumerate(results):
            if i == 3:
                with pytest.raises(WorkerCrashedError, match=r"die_at_3\(3\)"):
                    result.get(30)
            else:
                assert result.get(30) == i * 10


@pytest.mark.timeout(120)
def test_a_death_fails_only_its_future(client):
    with poolguard.ProcessPoolExecutor(cluster=client) as executor:
        futures = [executor.submit(die_at_3, i) for i in range(6)]
        for i, future in enumerate(futures):
            if i == 3:
                error = future.exception(30)
                assert isinstance(error, WorkerCrashedError) and error.signal == "SIGKILL"
                assert error.task.call == "submit"
            else:
                assert future.result(30) == i * 10
        got = list(executor.map(die_at_3, [1, 2], timeout=30))
        assert got == [10, 20]


@pytest.mark.timeout(120)
def test_retries_only_when_asked(client, tmp_path):
    with poolguard.Pool(cluster=client, retries=1) as pool:
        assert pool.starmap(die_once, [(str(tmp_path), i) for i in range(6)]) == \
            [i * 10 for i in range(6)]
    (tmp_path / "died-3").unlink()
    with poolguard.Pool(cluster=client) as pool:
        with pytest.raises(WorkerCrashedError):
            pool.starmap(die_once, [(str(tmp_path), i) for i in range(6)])


@pytest.mark.timeout(120)
def test_task_timeout_on_the_cluster(client):
    # Functions of a light module: unpickling one of this module in a fresh
    # process imports dask, and that may take longer than the timeout.
    with poolguard.ProcessPoolExecutor(cluster=client, task_timeout=1.0) as executor:
        stuck = executor.submit(tasks.sleep_then, 60)
        error = stuck.exception(30)
        assert isinstance(error, TaskTimeoutError) and error.limit == 1.0
        assert "in sleep_then" in error.crash_stack
        assert error.host == socket.gethostname()
        assert executor.submit(tasks.sleep_then, 0.1, "ok").result(30) == "ok"   # slot freed


@pytest.mark.timeout(120)
def test_the_dask_workers_memory_limit_holds_for_each_task(client):
    with poolguard.Pool(cluster=client) as pool:
        with pytest.raises(WorkerMemoryError) as info:
            pool.apply(hog, (1200,))
        error = info.value
        assert isinstance(error, WorkerCrashedError) and error.oom is True
        assert error.limit == WORKER_MEMORY
        assert "dask worker's memory_limit (600 MiB)" in str(error)
        assert pool.apply(hog, (64,)) == 4
    with poolguard.Pool(cluster=client, max_worker_memory="200MiB") as pool:
        with pytest.raises(WorkerMemoryError) as info:
            pool.apply(hog, (400,))
        assert info.value.limit == 200 * 2**20 and "memory_limit" not in str(info.value)


@pytest.mark.timeout(120)
def test_terminate_ends_running_tasks_on_the_workers(client):
    pool = poolguard.Pool(cluster=client)
    result = pool.apply_async(sleep_for, (60,))
    pids = wait_until(lambda: [s.pid for s in pool.status() if s.state == "busy"], 30)
    pool.terminate()
    with pytest.raises(PoolTerminatedError):
        result.get(PROMPT)
    wait_until(lambda: not any(_alive(pid) for pid in pids), 10,
               message="the task's process outlived terminate()")
    assert client.submit(inc, 1).result(30) == 2   # the caller's Client is untouched


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(120)
def test_an_address_makes_a_client_the_pool_closes(cluster):
    pool = poolguard.Pool(cluster=cluster.scheduler_address)
    try:
        assert pool.map(inc, [1, 2]) == [2, 3]
    finally:
        pool.close()
        pool.join()
    assert pool._engine._client.status == "closed"
    with poolguard.ProcessPoolExecutor(2, cluster=cluster) as executor:   # a cluster object
        assert executor.submit(inc, 1).result(30) == 2


def test_bad_cluster_arguments_raise_at_once():
    with pytest.raises(TypeError, match="cluster must be"):
        poolguard.Pool(cluster=42)
    with pytest.raises(ValueError, match="Number of processes"):
        poolguard.Pool(0, cluster="tcp://127.0.0.1:1")


# ---- errors through dask, and pools inside dask workers ----

def crash_inside_a_dask_task(method):
    """Runs in a dask worker (a daemonic process): a pool of its own, and a
    death in it, raised through dask."""
    with poolguard.Pool(2, context=method) as pool:
        assert pool.map(inc, range(4)) == [1, 2, 3, 4]
        pool.map(die_at_3, range(6))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_pool_inside_a_dask_worker_and_its_error_through_dask(client, method):
    future = client.submit(crash_inside_a_dask_task, method, pure=False)
    with pytest.raises(WorkerCrashedError) as info:
        future.result(60)
    error = info.value   # unpickled by dask: the type and attributes survive
    assert type(error) is WorkerCrashedError and error.signal == "SIGKILL"
    assert error.task.item == 3 and error.task.function == "die_at_3"
    assert error.oom_verdict == "ruled out"


def mixed(x):
    """Item 150 kills its process, item 77 raises, the rest return."""
    if x == 150:
        os.kill(os.getpid(), signal.SIGKILL)
    if x == 77:
        raise KeyError(x)
    return -x


@pytest.mark.timeout(120)
def test_bundled_submits_keep_their_own_outcomes(client):
    """A backlog of submits goes several to a dask task; each future still
    gets its own value, exception or death."""
    with distributed.get_task_stream(client) as stream, \
            poolguard.ProcessPoolExecutor(cluster=client) as executor:
        futures = [executor.submit(mixed, i) for i in range(300)]
        outcomes = [f.exception(60) or f.result() for f in futures]
    assert isinstance(outcomes[150], WorkerCrashedError)
    assert outcomes[150].task.arguments == "150" and outcomes[150].signal == "SIGKILL"
    assert isinstance(outcomes[77], KeyError)
    assert [o for i, o in enumerate(outcomes) if i not in (77, 150)] == \
        [-i for i in range(300) if i not in (77, 150)]
    tasks = [t for t in stream.data if str(t["key"]).startswith("poolguard-mixed")]
    assert 0 < len(tasks) < 300, f"{len(tasks)} dask tasks for 300 submits"


@pytest.mark.timeout(120)
def test_a_client_closed_under_the_pool_fails_calls_not_hangs(cluster):
    client = distributed.Client(cluster, set_as_default=False)
    pool = poolguard.Pool(cluster=client)
    try:
        assert pool.map(inc, [1]) == [2]
        client.close()
        with pytest.raises(PoolTerminatedError, match="could not submit"):
            pool.map(inc, range(10), chunksize=1)
        with pytest.raises(PoolTerminatedError):
            pool.apply(inc, (1,))
    finally:
        pool.terminate()


@pytest.mark.timeout(120)
def test_an_argument_the_workers_cannot_unpickle_fails_only_its_task(client, tmp_path,
                                                                     monkeypatch):
    (tmp_path / "only_here.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))   # this process only, not the workers
    import only_here
    with poolguard.ProcessPoolExecutor(cluster=client) as executor:
        bad = executor.submit(repr, only_here.Thing())
        good = executor.submit(inc, 1)
        error = bad.exception(30)
        assert isinstance(error, poolguard.TaskDecodeError)
        assert "could not be unpickled on the dask worker" in str(error)
        assert "only_here" in str(error)
        assert good.result(30) == 2


@pytest.mark.timeout(120)
def test_a_cluster_left_without_workers_fails_the_tasks_not_hangs():
    """Every worker leaves mid-map (a batch system's jobs ending) and none
    comes back: the tasks fail once dask's no-workers-timeout has passed,
    as the pool read it when it started."""
    import dask
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=50) as local, \
            distributed.Client(local, set_as_default=False) as client:
        with dask.config.set({"distributed.scheduler.no-workers-timeout": "2s"}):
            pool = poolguard.Pool(cluster=client)
        with pool:
            result = pool.map_async(sleep_for, [0.5] * 40, chunksize=1)
            wait_until(lambda: [s for s in pool.status() if s.state == "busy"], 30)
            local.scale(0)
            with pytest.raises(WorkerCrashedError, match="has had no worker for") as info:
                result.get(30)
            assert info.value.task.function == "sleep_for"
