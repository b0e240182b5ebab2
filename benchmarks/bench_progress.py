"""What ``progress=`` costs: each workload with progress off and on (a real
tqdm bar writing to /dev/null), alternating in one run on one pool.

    python benchmarks/bench_progress.py [--rounds 7] [--workers 2]

Prints both medians and the median of the per-round ratios on / off.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import poolguard  # noqa: E402
import work       # noqa: E402
from tqdm import tqdm  # noqa: E402

N = 200_000


def pool_map(pool: Any, progress: Any) -> None:
    assert pool.map(work.inc, range(N), progress=progress)[-1] == N


def imap_chunk100(pool: Any, progress: Any) -> None:
    assert sum(pool.imap_unordered(work.inc, range(N), 100, progress=progress)) \
        == N * (N + 1) // 2


def executor_map(executor: Any, progress: Any) -> None:
    assert sum(executor.map(work.inc, range(N), progress=progress)) == N * (N + 1) // 2


def measure(run: Callable[[Any, Any], None], pool: Any, on: bool) -> float:
    with open(os.devnull, "w") as sink:
        bar = tqdm(file=sink, mininterval=0.1) if on else None
        start = time.perf_counter()
        run(pool, bar)
        elapsed = time.perf_counter() - start
        if bar is not None:
            assert bar.n == N, bar.n
            bar.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"progress= off vs on (tqdm to /dev/null), {N:,} tiny tasks, "
          f"{args.workers} workers, {args.rounds} rounds alternating")
    print(f"{'workload':<32}{'off (median)':>14}{'on (median)':>14}{'on/off':>9}")
    with poolguard.Pool(args.workers) as pool, \
            poolguard.ProcessPoolExecutor(args.workers) as executor:
        for name, run, target in (("Pool.map, default chunks", pool_map, pool),
                                  ("imap_unordered, chunksize=100", imap_chunk100, pool),
                                  ("executor.map, default", executor_map, executor)):
            measure(run, target, True)   # warm-up
            off: List[float] = []
            on: List[float] = []
            for i in range(args.rounds):
                order = (False, True) if i % 2 == 0 else (True, False)
                for flag in order:
                    (on if flag else off).append(measure(run, target, flag))
            ratio = statistics.median(a / b for a, b in zip(on, off, strict=True))
            print(f"{name:<32}{statistics.median(off) * 1e3:>11.1f} ms"
                  f"{statistics.median(on) * 1e3:>11.1f} ms{ratio:>8.3f}x")


if __name__ == "__main__":
    main()
