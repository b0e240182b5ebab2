"""poolguard on a dask.distributed cluster against plain dask, on one
cluster, alternating in one run: a LocalCluster, or with --slurm a
dask-jobqueue SLURMCluster of one job per worker (the SLURM reached through
$SLURM_CONF, e.g. the one of tools/slurm.sh; --queue names its partition).

    python benchmarks/bench_cluster.py [--rounds 5] [--workers 2] [--tasks 10000]
    python benchmarks/bench_cluster.py --slurm [--queue debug] ...

1. Death to error: a task SIGKILLs its own process; time from that first
   death to the caller's exception.  poolguard: WorkerCrashedError naming
   the task.  Plain dask (``client.submit``): the task is run again on
   worker after worker (each death restarts a dask worker) until
   ``KilledWorker``.
2. Throughput of tiny tasks: ``client.map`` + ``gather`` against the
   executor's ``submit`` (one dask task each, as ``client.map`` makes),
   ``Pool.map`` (default chunks) and ``Pool.imap`` (chunksize=1).

Medians and the median of per-round ratios (poolguard / dask).
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import poolguard  # noqa: E402
import work       # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402


def die_noting_when(folder: str) -> None:
    """Write the time of this death (the first one is kept), then die."""
    path = os.path.join(folder, "first-death")
    if not os.path.exists(path):
        with open(path + ".tmp", "w") as f:
            f.write(repr(time.time()))
        os.replace(path + ".tmp", path)
    os.kill(os.getpid(), signal.SIGKILL)


def time_to_error(submit: Callable[[str], Any], get: Callable[[Any], Any]) -> tuple:
    with tempfile.TemporaryDirectory() as folder:
        handle = submit(folder)
        try:
            get(handle)
        except Exception as exc:   # the error each side gives
            caught, kind = time.time(), type(exc).__name__
        else:
            raise AssertionError("the task did not fail")
        with open(os.path.join(folder, "first-death")) as f:
            return caught - float(f.read()), kind


def deaths(client: Client, pool: Any, rounds: int, workers: int) -> None:
    print("\n1. first death of a task's process -> the caller's error")
    times: Dict[str, List[float]] = {"poolguard": [], "dask": []}
    kinds: Dict[str, str] = {}
    for i in range(rounds):
        for side in (("poolguard", "dask") if i % 2 == 0 else ("dask", "poolguard")):
            if side == "poolguard":
                elapsed, kinds[side] = time_to_error(
                    lambda f: pool.apply_async(die_noting_when, (f,)), lambda r: r.get(120))
            else:
                elapsed, kinds[side] = time_to_error(
                    lambda f: client.submit(die_noting_when, f, pure=False),
                    lambda fut: fut.result(120))
                client.wait_for_workers(workers, timeout=60)   # the restarted ones are back
            times[side].append(elapsed)
    for side, values in times.items():
        print(f"  {side + ' (' + kinds[side] + ')':<38} median {statistics.median(values) * 1e3:8.1f} ms"
              f"   min {min(values) * 1e3:8.1f}   max {max(values) * 1e3:8.1f}")
    ratio = statistics.median(d / p for p, d in zip(times["poolguard"], times["dask"],
                                                     strict=True))
    print(f"  dask / poolguard: {ratio:.0f}x")


def throughput(client: Client, pool: Any, executor: Any, rounds: int, n: int) -> None:
    print(f"\n2. {n:,} tiny tasks (inc), same cluster")
    expected = n * (n + 1) // 2

    def plain() -> None:
        assert sum(client.gather(client.map(work.inc, range(n), pure=False))) == expected

    def submit() -> None:
        futures = [executor.submit(work.inc, i) for i in range(n)]
        assert sum(f.result() for f in futures) == expected

    def pool_map() -> None:
        assert sum(pool.map(work.inc, range(n))) == expected

    def imap1() -> None:
        assert sum(pool.imap(work.inc, range(n))) == expected

    sides: Dict[str, Callable[[], None]] = {
        "dask client.map": plain, "poolguard executor.submit": submit,
        "poolguard Pool.map": pool_map, "poolguard Pool.imap, chunksize=1": imap1}
    times: Dict[str, List[float]] = {name: [] for name in sides}
    for run in sides.values():   # warm-up
        run()
    for i in range(rounds):
        names = list(sides) if i % 2 == 0 else list(reversed(sides))
        for name in names:
            start = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - start)
    base = times["dask client.map"]
    for name, values in times.items():
        ratio = statistics.median(t / b for t, b in zip(values, base, strict=True))
        print(f"  {name:<36} median {statistics.median(values) * 1e3:8.0f} ms"
              f"   {statistics.median(values) / n * 1e6:7.0f} us/task   {ratio:5.2f}x dask")


def make_cluster(args: argparse.Namespace, logs: str) -> Any:
    if not args.slurm:
        print(f"LocalCluster: {args.workers} worker processes x 1 thread; {args.rounds} "
              f"rounds, alternating")
        return LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                            dashboard_address=":0", silence_logs=50)
    from dask_jobqueue import SLURMCluster
    print(f"SLURMCluster: {args.workers} jobs x 1 dask worker x 1 thread; {args.rounds} "
          f"rounds, alternating")
    cluster = SLURMCluster(cores=1, processes=1, memory="1GB", walltime="01:00:00",
                           queue=args.queue, log_directory=logs,
                           scheduler_options={"dashboard_address": ":0"},
                           job_script_prologue=[f"export PYTHONPATH={HERE}"])
    cluster.scale(jobs=args.workers)
    return cluster


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--slurm", action="store_true",
                        help="a dask-jobqueue SLURMCluster instead of a LocalCluster")
    parser.add_argument("--queue", default="debug", help="the SLURM partition (--slurm)")
    args = parser.parse_args()
    # The job logs' directory is made beforehand: dask-jobqueue's own check
    # then makedirs fails when another process makes it at the same moment.
    with tempfile.TemporaryDirectory() as logs, make_cluster(args, logs) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(args.workers, timeout=300)
        with poolguard.Pool(cluster=client) as pool, \
                poolguard.ProcessPoolExecutor(cluster=client) as executor:
            assert pool.map(work.inc, range(10)) == list(range(1, 11))   # sub-pools started
            deaths(client, pool, args.rounds, args.workers)
            throughput(client, pool, executor, args.rounds, args.tasks)


if __name__ == "__main__":
    main()
