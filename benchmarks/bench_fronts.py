"""The performance targets of both fronts, each against its standard-library
counterpart, side by side in one run.

    python benchmarks/bench_fronts.py [--rounds 5] [--workers 2] [--only exmap,submit,...]

Each round runs poolguard then the baseline, or the baseline then poolguard
(the order alternates), on pools created before the timed region.  Prints,
per workload, both medians and the median of the per-round ratios
poolguard / baseline (below 1: poolguard is faster), next to the target.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import poolguard  # noqa: E402
import work       # noqa: E402

Timed = Callable[[object], float]


def _clock(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def executor_map(pool) -> float:
    items = list(range(50_000))
    out: list = []
    elapsed = _clock(lambda: out.extend(pool.map(work.inc, items)))
    assert out[-1] == 50_000 and len(out) == 50_000
    return elapsed


def pool_map_50k(pool) -> float:
    items = list(range(50_000))
    out: list = []
    elapsed = _clock(lambda: out.extend(pool.map(work.inc, items)))
    assert out[-1] == 50_000
    return elapsed


def submit_result(pool) -> float:
    def run() -> None:
        futures = [pool.submit(work.inc, i) for i in range(20_000)]
        assert sum(f.result() for f in futures) == sum(range(1, 20_001))
    return _clock(run)


def imap_chunk1(pool) -> float:
    items = list(range(20_000))
    return _clock(lambda: sum(pool.imap(work.inc, items, 1)))


def pool_map_200k(pool) -> float:
    items = list(range(200_000))
    return _clock(lambda: pool.map(work.inc, items))


def head_of_line(pool) -> float:
    """imap_unordered over one long and three short naps: time until the
    three short ones have arrived."""
    start = time.perf_counter()
    results = pool.imap_unordered(work.nap, [1.0, 0.05, 0.05, 0.05], 1)
    short = 0
    while short < 3:
        short += next(results) == 0.05
    elapsed = time.perf_counter() - start
    list(results)
    return elapsed


WORKLOADS: Dict[str, Tuple[str, str, Callable, Callable, Timed, Timed, float]] = {
    # key: (label, baseline, make poolguard's, make baseline's, run ours, run theirs, target)
    "exmap": ("ProcessPoolExecutor.map(inc, 50k), default chunksize", "multiprocessing.Pool.map",
              lambda n: poolguard.ProcessPoolExecutor(n), lambda n: multiprocessing.Pool(n),
              executor_map, pool_map_50k, 2.0),
    "submit": ("20k submit() + result()", "concurrent.futures.ProcessPoolExecutor",
               lambda n: poolguard.ProcessPoolExecutor(n),
               lambda n: concurrent.futures.ProcessPoolExecutor(n),
               submit_result, submit_result, 0.25),
    "imap1": ("Pool.imap(inc, 20k), chunksize=1", "multiprocessing.Pool.imap",
              lambda n: poolguard.Pool(n), lambda n: multiprocessing.Pool(n),
              imap_chunk1, imap_chunk1, 1.0),
    "map": ("Pool.map(inc, 200k), default chunks", "multiprocessing.Pool.map",
            lambda n: poolguard.Pool(n), lambda n: multiprocessing.Pool(n),
            pool_map_200k, pool_map_200k, 1.0),
    "hol": ("imap_unordered: 3 short naps behind a 1 s one", "multiprocessing.Pool",
            lambda n: poolguard.Pool(n), lambda n: multiprocessing.Pool(n),
            head_of_line, head_of_line, 0.5),
}


def _close(pool) -> None:
    if hasattr(pool, "terminate"):
        pool.terminate()
    else:
        pool.shutdown(wait=True)


def _warm(pool) -> None:
    if hasattr(pool, "submit"):
        pool.submit(work.noop).result()
    else:
        pool.map(work.noop, range(8), 1)


def paired(key: str, workers: int, rounds: int) -> Tuple[List[float], List[float]]:
    _label, _base, make_ours, make_theirs, run_ours, run_theirs, _target = WORKLOADS[key]
    ours, theirs = make_ours(workers), make_theirs(workers)
    a: List[float] = []
    b: List[float] = []
    try:
        _warm(ours)
        _warm(theirs)
        for round_ in range(rounds):
            if round_ % 2:
                b.append(run_theirs(theirs))
                a.append(run_ours(ours))
            else:
                a.append(run_ours(ours))
                b.append(run_theirs(theirs))
    finally:
        _close(ours)
        _close(theirs)
    return a, b


def startup(workers: int, rounds: int) -> Tuple[List[float], List[float]]:
    """Pool(n) to the first result, closing after: both, alternating."""
    def once(make) -> float:
        start = time.perf_counter()
        pool = make(workers)
        pool.apply_async(work.noop, (1,)).get(30)
        elapsed = time.perf_counter() - start
        pool.terminate()
        pool.join()
        return elapsed
    a: List[float] = []
    b: List[float] = []
    for round_ in range(rounds * 4):
        pair = [(a, poolguard.Pool), (b, multiprocessing.Pool)]
        for samples, make in (pair if round_ % 2 == 0 else pair[::-1]):
            samples.append(once(make))
    return a, b


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated: "
                        + ",".join([*WORKLOADS, "startup"]))
    args = parser.parse_args(argv)
    keys = [k for k in args.only.split(",") if k] or [*WORKLOADS, "startup"]
    print(f"{args.workers} workers, {args.rounds} rounds, start method "
          f"{multiprocessing.get_start_method()}, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs")
    print("| workload | baseline | poolguard | baseline | ratio (median of rounds) | target |")
    print("|---|---|---|---|---|---|")
    for key in keys:
        if key == "startup":
            label, base, target = ("Pool(2) + one task", "multiprocessing.Pool", 1.2)
            a, b = startup(args.workers, args.rounds)
        else:
            label, base, *_rest, target = WORKLOADS[key]
            a, b = paired(key, args.workers, args.rounds)
        ratio = statistics.median(x / y for x, y in zip(a, b, strict=True))
        if key == "hol":   # the target is the time itself
            verdict = "met" if statistics.median(a) <= target else "NOT met"
            shown = f"<= {target} s: {verdict}"
        else:
            shown = f"<= {target}x: {'met' if ratio <= target else 'NOT met'}"
        print(f"| {label} | {base} | {_ms(statistics.median(a))} | {_ms(statistics.median(b))} "
              f"| {ratio:.2f}x | {shown} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
