"""How poolguard scales with the number of workers, against
multiprocessing.Pool and concurrent.futures.ProcessPoolExecutor, side by
side in one run.

    python benchmarks/bench_scale.py [--workers 2,16,64,256,1024] [--rounds 5]
                                     [--items 1.0] [--only map,imap1,submit,start]
                                     [--method fork] [--plot docs/scale.png]

For each worker count and workload, poolguard and the baseline alternate
(A B, then B A, ...) on pools made before the timed region.  "start" makes
a pool, times its first result, waits for every worker, reads the memory
of each idle one (/proc/PID/smaps_rollup: PSS, and what is its own alone),
then times terminate() and join().  Each figure is printed as it comes;
at the end, a Markdown table (a column a worker count; each cell the median
of the per-round ratios poolguard / baseline, below 1: poolguard is faster
or smaller, then both medians) and, with --plot, a chart.  poolguard's
supervisor-thread CPU per item is the figure that must not grow with the
worker count.  --items scales every workload's item count: ``--items 0.05
--workers 2,16 --rounds 2`` is a smoke run.  A real run needs the machine
to itself.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import poolguard  # noqa: E402
import work       # noqa: E402
from peers import cpu_info  # noqa: E402


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
    "map": ("map(inc, {n:,}), default chunks", "multiprocessing.Pool",
            lambda n, ctx: poolguard.Pool(n, context=ctx),
            lambda n, ctx: ctx.Pool(n), pool_map, 20_000),
    "imap1": ("imap(inc, {n:,}), chunksize=1", "multiprocessing.Pool",
              lambda n, ctx: poolguard.Pool(n, context=ctx),
              lambda n, ctx: ctx.Pool(n), pool_imap1, 5_000),
    "submit": ("{n:,} submit() + result()", "ProcessPoolExecutor",
               lambda n, ctx: poolguard.ProcessPoolExecutor(n, mp_context=ctx),
               lambda n, ctx: concurrent.futures.ProcessPoolExecutor(n, mp_context=ctx),
               submit_result, 5_000),
}
FIRST, TERMINATE = "Pool() to the first result", "terminate() + join()"
PSS, OWN = "idle worker's memory, PSS", "idle worker's own memory (private pages)"


class Row:
    """One line of the table: a figure of poolguard's and of a baseline's,
    per worker count, paired by round."""

    def __init__(self, label: str, baseline: str, unit: str = "s", short: str = ""):
        self.label, self.baseline, self.unit = label, baseline, unit
        self.short = short or label
        self.pairs: Dict[int, Tuple[List[float], List[float]]] = {}
        self.cpu: Dict[int, float] = {}    # supervisor CPU seconds an item

    def add(self, workers: int, ours: List[float], theirs: List[float]) -> None:
        self.pairs[workers] = (ours, theirs)
        print(f"{workers} workers, {self.label}: {self.cell(workers)}"
              + (f", supervisor CPU {self.cpu[workers] * 1e6:.1f} us an item"
                 if workers in self.cpu else ""), flush=True)

    def ratio(self, workers: int) -> float:
        ours, theirs = self.pairs[workers]
        return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))

    def cell(self, workers: int) -> str:
        if workers not in self.pairs:
            return ""
        ours, theirs = self.pairs[workers]
        return (f"{self.ratio(workers):.2f}x ({_show(statistics.median(ours), self.unit)} / "
                f"{_show(statistics.median(theirs), self.unit)})")


def _show(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value / 2**20:.1f} MiB"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def warm(pool: Any, workers: int) -> None:
    """Every worker up and past its first task.  A pool of ours may answer
    the naps before its last workers are up (a nap known to take 50 ms may
    wait for a busy worker): it is waited for, and given naps again, so
    that no start falls in a timed run."""
    naps = [0.05] * workers
    run = (lambda: list(pool.map(work.nap, naps))) if hasattr(pool, "submit") else (
        lambda: pool.map(work.nap, naps, 1))
    run()
    if hasattr(pool, "status"):
        deadline = time.monotonic() + 600
        while (len(pool.pids) < workers or any(s.state == "starting" for s in pool.status())
               ) and time.monotonic() < deadline:
            time.sleep(0.05)
        run()


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


def idle_memory(pid: int) -> Optional[Tuple[int, int]]:
    """PSS and private bytes of a process, or None if it is gone."""
    pss = private = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            for line in file:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                    private += int(line.split()[1]) * 1024
    except OSError:
        return None
    return (pss, private) if pss else None   # a zombie reads as zeros


def start_once(make: Callable[[], Any], pids: Callable[[Any], List[int]],
               workers: int) -> Tuple[float, float, float, float]:
    """Pool to first result; median PSS and private memory of an idle
    worker once all are up; terminate() + join()."""
    start = time.perf_counter()
    pool = make()
    pool.apply_async(work.noop, (1,)).get(600)
    first = time.perf_counter() - start
    deadline = time.monotonic() + 600
    while len(pids(pool)) < workers and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    sizes = [s for s in map(idle_memory, pids(pool)) if s is not None]
    start = time.perf_counter()
    pool.terminate()
    pool.join()
    ended = time.perf_counter() - start
    return (first, ended, statistics.median(s[0] for s in sizes),
            statistics.median(s[1] for s in sizes))


def startup(workers: int, rounds: int, ctx: Any, rows: Dict[str, Row]) -> None:
    a: List[tuple] = []
    b: List[tuple] = []
    sides = [(a, lambda: poolguard.Pool(workers, context=ctx), lambda p: p.pids),
             (b, lambda: ctx.Pool(workers), lambda p: [w.pid for w in p._pool])]
    for round_ in range(rounds):
        for samples, make, pids in (sides if round_ % 2 == 0 else sides[::-1]):
            samples.append(start_once(make, pids, workers))
    for i, label in enumerate((FIRST, TERMINATE, PSS, OWN)):
        row = rows.setdefault(label, Row(label, "multiprocessing.Pool",
                                         "B" if label in (PSS, OWN) else "s"))
        row.add(workers, [s[i] for s in a], [s[i] for s in b])


def workload(key: str, workers: int, args: Any, ctx: Any, rows: Dict[str, Row]) -> None:
    label, base, *_rest, items = WORKLOADS[key]
    n = max(1, int(items * args.items))
    ours, theirs = paired(key, workers, args.rounds, n, ctx)
    row = rows.setdefault(key, Row(label.format(n=n), base, short=key))
    cpus = [m.cpu for m in ours if m.cpu is not None]
    if cpus:
        row.cpu[workers] = statistics.median(cpus)
    row.add(workers, [m.wall for m in ours], [m.wall for m in theirs])


def table(rows: Dict[str, Row], counts: List[int]) -> str:
    """The README's table: a row a figure, a column a worker count."""
    lines = ["| workers | baseline | " + " | ".join(map(str, counts)) + " |",
             "|---|---|" + "---|" * len(counts)]
    for row in rows.values():
        lines.append(f"| {row.label} | {row.baseline} | "
                     + " | ".join(row.cell(n) for n in counts) + " |")
    for row in rows.values():
        if row.cpu:
            lines.append(f"| poolguard's supervisor CPU an item, {row.short} | | "
                         + " | ".join(f"{row.cpu[n] * 1e6:.1f} us" if n in row.cpu else ""
                                      for n in counts) + " |")
    return "\n".join(lines)


def plot(rows: Dict[str, Row], path: str, title: str) -> None:
    """Ratios to the baselines; start-up and terminate() times; memory of an
    idle worker: three panels, the worker count on each x axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    fig, (ratios, times, memory) = plt.subplots(1, 3, figsize=(15, 4.6))
    counts = sorted({n for row in rows.values() for n in row.pairs})
    for i, row in enumerate(rows.values()):
        color, ns = f"C{i}", sorted(row.pairs)
        if row.unit == "s":
            ratios.plot(ns, [row.ratio(n) for n in ns], marker="o", color=color,
                        label=row.label)
        if row.label in (FIRST, TERMINATE) or row.unit == "B":
            axis, scale = (times, 1.0) if row.unit == "s" else (memory, 2.0 ** -20)
            for side, style in ((0, "-"), (1, "--")):
                name = "poolguard" if side == 0 else row.baseline
                axis.plot(ns, [statistics.median(row.pairs[n][side]) * scale for n in ns],
                          style, marker="o", color=color, label=f"{row.label}: {name}")
    ratios.axhline(1.0, color="grey", linewidth=0.8)
    ratios.set_ylabel("poolguard / baseline, time (log; below 1: faster)")
    times.set_ylabel("seconds (log; dashed: multiprocessing.Pool)")
    memory.set_ylabel("MiB (dashed: multiprocessing.Pool)")
    memory.set_ylim(bottom=0)
    for axis in (ratios, times):
        axis.set_yscale("log")
        axis.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.yaxis.set_minor_formatter(NullFormatter())
    for axis in (ratios, times, memory):
        axis.set_xscale("log", base=2)
        axis.set_xticks(counts, [str(n) for n in counts])
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("workers")
        axis.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="2,16,64,256,1024")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--items", type=float, default=1.0, help="scale of the item counts")
    parser.add_argument("--only", default="", help="comma-separated: map,imap1,submit,start")
    parser.add_argument("--method", default="fork")
    parser.add_argument("--plot", default="", help="write the chart there (matplotlib), "
                        "as docs/scale.png")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    keys = [k for k in args.only.split(",") if k] or [*WORKLOADS, "start"]
    ctx = multiprocessing.get_context(args.method)
    title = (f"poolguard by worker count: {args.rounds} rounds, start method {args.method}, "
             f"{platform.python_implementation()} {platform.python_version()}, {cpu_info()}")
    print(title, flush=True)
    rows: Dict[str, Row] = {}
    started = time.monotonic()
    for workers in counts:
        for key in keys:
            if key == "start":
                startup(workers, args.rounds, ctx, rows)
            else:
                workload(key, workers, args, ctx, rows)
    print(f"\n{table(rows, counts)}\n\ntotal {time.monotonic() - started:.0f} s")
    if args.plot:
        try:
            plot(rows, os.path.abspath(args.plot), title)
            print(f"chart: {args.plot}")
        except ImportError:
            print("no chart: matplotlib is not installed (pip install --group bench)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
