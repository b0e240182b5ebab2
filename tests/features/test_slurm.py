"""Pools on a real SLURM through dask-jobqueue's SLURMCluster: the failures a
batch user meets.  Needs the one-node SLURM of tools/slurm.sh (CI part
80-slurm starts it); skipped, saying why, where it is not up.

One cluster of two jobs is shared by the module; the tests that take jobs
away (scancel, the walltime, closing the cluster) make clusters of their own.
"""
from __future__ import annotations

import functools
import os
import socket
import subprocess
import time

import pytest

import poolguard
from poolguard import PoolTerminatedError, TaskTimeoutError, WorkerCrashedError, WorkerMemoryError

import batch
import conftest
import slurm_tasks as tasks
from conftest import PROMPT, wait_until

dask_jobqueue = pytest.importorskip("dask_jobqueue")
distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.slurm

STARTUP = 90.0    # seconds for a cluster's jobs to start (they may wait ~3 s pending)


@pytest.fixture(scope="module", autouse=True)
def _schedulers_here():
    """The clusters' schedulers run in this process: their connections (and
    those dask keeps after a cluster closes) are not the pools'."""
    conftest.IGNORE_SOCKETS = True
    yield
    conftest.IGNORE_SOCKETS = False


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    reason = batch.slurm_unavailable()
    if reason:
        pytest.skip(reason)
    # Made beforehand: SLURMCluster's own makedirs fails when another
    # process makes the same directory at the same moment.
    return tmp_path_factory.mktemp("slurm-logs")


def make_cluster(logs, **options):
    """The README's SLURMCluster: a job per dask worker, one process with a
    thread per core."""
    settings = dict(cores=1, processes=1, memory="1GB", walltime="00:10:00", queue="debug",
                    log_directory=str(logs), scheduler_options={"dashboard_address": ":0"},
                    # the workers import the tasks' module
                    job_script_prologue=[f"export PYTHONPATH={batch.TESTS}"])
    settings.update(options)
    return dask_jobqueue.SLURMCluster(**settings)


def job_ids(cluster):
    return {job.job_id for job in cluster.workers.values() if job.job_id}


@pytest.fixture(scope="module")
def slurm(logs):
    """A SLURMCluster of 2 jobs and a Client of it, for the module."""
    cluster = make_cluster(logs)
    try:
        cluster.scale(jobs=2)
        with distributed.Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=STARTUP)
            yield cluster, client
    finally:
        jobs = job_ids(cluster)
        cluster.close()
        batch.wait_gone(jobs, 30)


@pytest.fixture
def own_cluster(logs):
    """A cluster a test may take jobs away from; closed, and its jobs gone
    from the queue, at the end."""
    made = []

    def start(jobs=2, **options):
        cluster = make_cluster(logs, **options)
        made.append(cluster)
        cluster.scale(jobs=jobs)
        client = distributed.Client(cluster, set_as_default=False)
        made.append(client)
        client.wait_for_workers(jobs, timeout=STARTUP)
        return cluster, client

    yield start
    jobs = set()
    for thing in reversed(made):
        if isinstance(thing, dask_jobqueue.SLURMCluster):
            jobs |= job_ids(thing)
        thing.close()
    batch.wait_gone(jobs, 30)


def workers_of(client):
    return set(client.scheduler_info()["workers"])


# ---- a task's process dies: that task fails, named, at once ----

@pytest.mark.timeout(120)
def test_a_killed_task_fails_alone_and_the_jobs_live_on(slurm, tmp_path):
    cluster, client = slurm
    jobs, workers = job_ids(cluster), workers_of(client)
    with poolguard.Pool(cluster=client) as pool:
        die = functools.partial(tasks.die_at, folder=str(tmp_path))
        with pytest.raises(WorkerCrashedError) as info:
            pool.map(die, range(20))
        caught = time.time()
        error = info.value
        elapsed = caught - float((tmp_path / "death").read_text())
        print(f"\nSLURM: death to WorkerCrashedError in Pool.map: {elapsed * 1e3:.0f} ms")
        assert elapsed < PROMPT, f"the error came {elapsed:.1f} s after the death"
        assert (error.task.function, error.task.arguments, error.task.call) == \
            ("die_at", "7", "map")
        assert error.signal == "SIGKILL" and error.host == socket.gethostname()
        assert error.dask_worker in workers
        assert f"on {error.host} (dask worker {error.dask_worker})" in str(error)
        # The others' results come back; each death fails only its own call.
        results = [pool.apply_async(tasks.die_at, (i,)) for i in range(20)]
        for i, result in enumerate(results):
            if i == 7:
                with pytest.raises(WorkerCrashedError, match=r"die_at\(7\)"):
                    result.get(60)
            else:
                assert result.get(60) == i
    # Neither a SLURM job nor a dask worker was lost.
    assert batch.queued(jobs) == jobs and workers_of(client) == workers


@pytest.mark.timeout(120)
def test_the_jobs_memory_is_each_tasks_cap(slurm):
    cluster, client = slurm
    limits = {w["memory_limit"] for w in client.scheduler_info()["workers"].values()}
    with poolguard.Pool(cluster=client) as pool:
        with pytest.raises(WorkerMemoryError) as info:
            pool.apply(tasks.hog, (1500,))
        error = info.value
        assert error.oom is True and {error.limit} == limits
        text = str(error)
        assert "The cap is the batch job's memory" in text, text
        assert any(f"SLURM job {job} (--mem=954M)" in text for job in job_ids(cluster)), text
        assert "What to do: ask for more memory per job (dask-jobqueue's memory=" in text
        assert pool.apply(tasks.hog, (64,)) == 4   # the job lives on
    assert len(workers_of(client)) == 2


@pytest.mark.timeout(120)
def test_task_timeout_and_the_executor(slurm):
    _, client = slurm
    with poolguard.ProcessPoolExecutor(cluster=client, task_timeout=2.0) as executor:
        stuck = executor.submit(tasks.nap, 60)
        error = stuck.exception(60)
        assert isinstance(error, TaskTimeoutError) and error.limit == 2.0
        assert "in nap" in error.crash_stack and error.host == socket.gethostname()
        assert executor.submit(tasks.nap, 0.1, "ok").result(60) == "ok"   # slot freed
        assert list(executor.map(tasks.inc, range(100))) == list(range(1, 101))
        futures = [executor.submit(tasks.die_at, i) for i in range(10)]
        assert isinstance(futures[7].exception(60), WorkerCrashedError)
        assert [f.result(60) for i, f in enumerate(futures) if i != 7] == \
            [i for i in range(10) if i != 7]


@pytest.mark.timeout(120)
def test_retries_only_when_asked(slurm, tmp_path):
    _, client = slurm
    args = [(str(tmp_path), i) for i in range(8)]
    with poolguard.Pool(cluster=client, retries=1) as pool:
        assert pool.starmap(tasks.die_once, args) == [i * 10 for i in range(8)]
    (tmp_path / "died-3").unlink()
    with poolguard.Pool(cluster=client) as pool:
        with pytest.raises(WorkerCrashedError):
            pool.starmap(tasks.die_once, args)


@pytest.mark.timeout(120)
def test_tiny_tasks(slurm):
    _, client = slurm
    n = 2000
    with poolguard.Pool(cluster=client) as pool:
        start = time.perf_counter()
        assert pool.map(tasks.inc, range(n)) == list(range(1, n + 1))
        ours = time.perf_counter() - start
    start = time.perf_counter()
    assert client.gather(client.map(tasks.inc, range(n), pure=False)) == list(range(1, n + 1))
    dask = time.perf_counter() - start
    print(f"\nSLURM: {n} tiny tasks: Pool.map {ours:.2f} s, client.map {dask:.2f} s")


# ---- the batch system takes jobs away ----

@pytest.mark.timeout(180)
def test_a_job_cancelled_mid_map_its_tasks_run_on_the_other(own_cluster):
    cluster, client = own_cluster(jobs=2)
    with poolguard.Pool(cluster=client) as pool:
        result = pool.starmap_async(tasks.nap, [(0.5, i) for i in range(24)], chunksize=1)
        wait_until(lambda: sum(s.state == "busy" for s in pool.status()) == 2, 60,
                   interval=0.2, message="the tasks never started on both jobs")
        victim = sorted(job_ids(cluster))[0]
        subprocess.run(["scancel", victim], check=True, timeout=30)
        # The cancelled worker's tasks are rescheduled by dask onto the other.
        assert result.get(120) == list(range(24))
    batch.wait_gone([victim], 30)
    assert len(workers_of(client)) == 1


@pytest.mark.timeout(240)
def test_the_walltime_ending_mid_map_fails_it_not_hangs(own_cluster):
    import dask
    cluster, client = own_cluster(jobs=2, walltime="00:01:00")
    jobs = job_ids(cluster)
    # The scheduler already runs (without this setting): only the pool's
    # own watch acts on it.
    with dask.config.set({"distributed.scheduler.no-workers-timeout": "5s"}):
        pool = poolguard.Pool(cluster=client)
    got = []
    with pool, pytest.raises(WorkerCrashedError) as info:
        for x in pool.imap(tasks.tick, range(600)):
            got.append(x)
    ended = time.monotonic()
    text = str(info.value)
    assert "the dask cluster has had no worker for" in text and "walltime" in text, text
    assert got == list(range(len(got))) and len(got) < 600
    batch.wait_gone(jobs, 30)
    print(f"\nSLURM walltime: {len(got)} results before the jobs ended, then {text[:80]}")
    assert time.monotonic() - ended < PROMPT


@pytest.mark.timeout(120)
def test_shutting_down_ends_the_tasks_and_closing_the_cluster_its_jobs(own_cluster):
    cluster, client = own_cluster(jobs=1)
    jobs = job_ids(cluster)
    pool = poolguard.Pool(cluster=cluster)   # a cluster object: a Client of its own
    result = pool.apply_async(tasks.nap, (60,))
    pids = wait_until(lambda: [s.pid for s in pool.status() if s.state == "busy"], 60)
    pool.terminate()
    with pytest.raises(PoolTerminatedError):
        result.get(PROMPT)
    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids), 10,
               message="the task's process outlived terminate()")
    assert batch.queued(jobs) == jobs   # the jobs are the cluster's, not the pool's
    # A pool still running when the cluster closes fails its calls, and the
    # jobs leave the queue.  (By address: a Client still open on a closed
    # cluster object keeps dask's event loop open.)
    pool = poolguard.Pool(cluster=cluster.scheduler_address)
    result = pool.map_async(tasks.nap, [30] * 4)
    wait_until(lambda: [s for s in pool.status() if s.state == "busy"], 60)
    client.close()
    cluster.close()
    batch.wait_gone(jobs, 30)
    with pytest.raises(PoolTerminatedError, match="lost its scheduler"):
        result.get(60)
    pool.terminate()
