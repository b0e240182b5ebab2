"""How poolguard scales with the number of workers, against
multiprocessing.Pool and concurrent.futures.ProcessPoolExecutor, side by
side in one run.

    python benchmarks/bench_scale.py [--workers 2,16,64,256,1024] [--rounds 5]
                                     [--items 1.0] [--only map,imap1,submit,start]
                                     [--method fork] [--plot scale.png]

For each worker count and workload, poolguard and the baseline alternate
(A B, then B A, ...) on pools made before the timed region; prints the
medians, the median of the per-round ratios poolguard / baseline (below 1:
poolguard is faster), and poolguard's supervisor-thread CPU per item (what
must not grow with the worker count).  "start" makes a pool, times its
first result, then its terminate(); it also reports the memory of an idle
worker (PSS, /proc/PID/smaps_rollup).  --items scales every workload's
item count (0.1 for a smoke run).  Run it on a machine nothing else uses.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import poolguard  # noqa: E402
import work       # noqa: E402


def supervisor_cpu() -> Optional[float]:
    """Seconds of CPU of this process's poolguard supervisor threads so far."""
    total = None
    for thread in threading.enumerate():
        if thread.name.startswith("poolguard-supervisor") and thread.native_id:
            try:
                with open(f"/proc/self/task/{thread.native_id}/schedstat") as file:
                    total = (total or 0.0) + int(file.read().split()[0]) / 1e9
            except OSError:
                pass
    return total


class Measure:
    """One timed run: wall seconds, and the supervisor's CPU seconds an item."""

    def __init__(self, items: int):
        self.items = items
        self.cpu: Optional[float] = None

    def __enter__(self) -> "Measure":
        self._cpu = supervisor_cpu()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self._start
        cpu = supervisor_cpu()
        if cpu is not None and self._cpu is not None:
            self.cpu = (cpu - self._cpu) / self.items


def pool_map(pool: Any, n: int) -> Measure:
    with Measure(n) as m:
        out = pool.map(work.inc, range(n))
    assert out[-1] == n
    return m


def pool_imap1(pool: Any, n: int) -> Measure:
    with Measure(n) as m:
        total = sum(pool.imap(work.inc, range(n), 1))
    assert total == n * (n + 1) // 2
    return m


def submit_result(pool: Any, n: int) -> Measure:
    with Measure(n) as m:
        futures = [pool.submit(work.inc, i) for i in range(n)]
        total = sum(f.result() for f in futures)
    assert total == n * (n + 1) // 2
    return m


Make = Callable[[int, Any], Any]
WORKLOADS: Dict[str, Tuple[str, str, Make, Make, Callable[[Any, int], Measure], int]] = {
    # key: (label, baseline, make ours, make theirs, run, items at --items 1)
    "map": ("map(inc, 20k), default chunks", "multiprocessing.Pool",
            lambda n, ctx: poolguard.Pool(n, context=ctx),
            lambda n, ctx: ctx.Pool(n), pool_map, 20_000),
    "imap1": ("imap(inc, 5k), chunksize=1", "multiprocessing.Pool",
              lambda n, ctx: poolguard.Pool(n, context=ctx),
              lambda n, ctx: ctx.Pool(n), pool_imap1, 5_000),
    "submit": ("5k submit() + result()", "ProcessPoolExecutor",
               lambda n, ctx: poolguard.ProcessPoolExecutor(n, mp_context=ctx),
               lambda n, ctx: concurrent.futures.ProcessPoolExecutor(n, mp_context=ctx),
               submit_result, 5_000),
}


def warm(pool: Any, workers: int) -> None:
    """Every worker up and past its first task."""
    if hasattr(pool, "submit"):
        list(pool.map(work.nap, [0.05] * workers))
    else:
        pool.map(work.nap, [0.05] * workers, 1)


def close(pool: Any) -> None:
    if hasattr(pool, "terminate"):
        pool.terminate()
        pool.join()
    else:
        pool.shutdown(wait=True, cancel_futures=True)


def paired(key: str, workers: int, rounds: int, items: int,
           ctx: Any) -> Tuple[List[Measure], List[Measure]]:
    _label, _base, make_ours, make_theirs, run, _n = WORKLOADS[key]
    ours, theirs = make_ours(workers, ctx), make_theirs(workers, ctx)
    a: List[Measure] = []
    b: List[Measure] = []
    try:
        warm(ours, workers)
        warm(theirs, workers)
        for round_ in range(rounds):
            if round_ % 2:
                b.append(run(theirs, items))
                a.append(run(ours, items))
            else:
                a.append(run(ours, items))
                b.append(run(theirs, items))
    finally:
        close(ours)
        close(theirs)
    return a, b


def idle_pss(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            for line in file:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def start_once(make: Callable[[], Any], pids: Callable[[Any], List[int]],
               workers: int) -> Tuple[float, float, Optional[float]]:
    """Pool to first result, idle PSS per worker once all are up, terminate()."""
    start = time.perf_counter()
    pool = make()
    pool.apply_async(work.noop, (1,)).get(600)
    first = time.perf_counter() - start
    deadline = time.monotonic() + 600
    while len(pids(pool)) < workers and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    sizes = [s for s in map(idle_pss, pids(pool)) if s is not None]
    start = time.perf_counter()
    pool.terminate()
    pool.join()
    return first, time.perf_counter() - start, statistics.median(sizes) if sizes else None


def startup(workers: int, rounds: int, ctx: Any) -> Tuple[List[tuple], List[tuple]]:
    a: List[tuple] = []
    b: List[tuple] = []
    sides = [(a, lambda: poolguard.Pool(workers, context=ctx), lambda p: p.pids),
             (b, lambda: ctx.Pool(workers), lambda p: [w.pid for w in p._pool])]
    for round_ in range(rounds):
        for samples, make, pids in (sides if round_ % 2 == 0 else sides[::-1]):
            samples.append(start_once(make, pids, workers))
    return a, b


def _time(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _ratio(a: List[float], b: List[float]) -> str:
    return f"{statistics.median(x / y for x, y in zip(a, b, strict=True)):.2f}x"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="2,16,64,256,1024")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--items", type=float, default=1.0, help="scale of the item counts")
    parser.add_argument("--only", default="", help="comma-separated: map,imap1,submit,start")
    parser.add_argument("--method", default="fork")
    parser.add_argument("--plot", default="", help="write a PNG of the ratios (matplotlib)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    keys = [k for k in args.only.split(",") if k] or [*WORKLOADS, "start"]
    ctx = multiprocessing.get_context(args.method)
    print(f"workers {counts}, {args.rounds} rounds, start method {args.method}, Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print("| workers | workload | baseline | poolguard | baseline | ratio | "
          "supervisor CPU / item |")
    print("|---|---|---|---|---|---|---|")
    ratios: Dict[str, List[Tuple[int, float]]] = {}
    for workers in counts:
        for key in keys:
            if key == "start":
                a_s, b_s = startup(workers, args.rounds, ctx)
                for i, what in enumerate(("start to first result", "terminate()")):
                    a, b = [s[i] for s in a_s], [s[i] for s in b_s]
                    print(f"| {workers} | {what} | multiprocessing.Pool | "
                          f"{_time(statistics.median(a))} | {_time(statistics.median(b))} | "
                          f"{_ratio(a, b)} | |", flush=True)
                    ratios.setdefault(what, []).append(
                        (workers, statistics.median(x / y for x, y in zip(a, b, strict=True))))
                pss = [[s[2] for s in side if s[2] is not None] for side in (a_s, b_s)]
                if pss[0] and pss[1]:
                    print(f"| {workers} | idle worker's PSS | multiprocessing.Pool | "
                          f"{statistics.median(pss[0]) / 2**20:.1f} MiB | "
                          f"{statistics.median(pss[1]) / 2**20:.1f} MiB | "
                          f"{_ratio(pss[0], pss[1])} | |", flush=True)
                continue
            label, base, *_rest, items = WORKLOADS[key]
            n = max(1, int(items * args.items))
            ms_a, ms_b = paired(key, workers, args.rounds, n, ctx)
            a, b = [m.wall for m in ms_a], [m.wall for m in ms_b]
            cpus = [m.cpu for m in ms_a if m.cpu is not None]
            cpu = f"{statistics.median(cpus) * 1e6:.1f} us" if cpus else ""
            print(f"| {workers} | {label} | {base} | {_time(statistics.median(a))} | "
                  f"{_time(statistics.median(b))} | {_ratio(a, b)} | {cpu} |", flush=True)
            ratios.setdefault(label, []).append(
                (workers, statistics.median(x / y for x, y in zip(a, b, strict=True))))
    if args.plot:
        plot(ratios, args.plot)
    return 0


def plot(ratios: Dict[str, List[Tuple[int, float]]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, points in ratios.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("workers")
    ax.set_ylabel("poolguard / baseline (below 1: faster)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
