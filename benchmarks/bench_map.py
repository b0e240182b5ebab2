"""poolguard.Pool.map against multiprocessing.Pool.map on tiny tasks.

Both pools run side by side in one process, interleaved (A B A B ...), so
machine noise hits both alike.  Prints the median time of each and the
ratio poolguard / multiprocessing (below 1.0: poolguard is faster).

    python benchmarks/bench_map.py [--tasks 200000] [--rounds 7] [--workers 2]
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time

import poolguard


def inc(x: int) -> int:
    return x + 1


def measure(pool, tasks: int, chunksize, as_list: bool = False) -> float:
    items = list(range(tasks)) if as_list else range(tasks)
    start = time.perf_counter()
    result = pool.map(inc, items, chunksize) if chunksize else pool.map(inc, items)
    elapsed = time.perf_counter() - start
    assert result[-1] == tasks and len(result) == tasks
    return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunksize", type=int, default=None,
                        help="default: each pool's own default chunking")
    parser.add_argument("--start-method", default=None)
    parser.add_argument("--input", choices=["range", "list"], default="range",
                        help="pass a range (sliced without copying) or a list of ints")
    args = parser.parse_args(argv)
    ctx = multiprocessing.get_context(args.start_method)
    times = {"multiprocessing.Pool": [], "poolguard.Pool": []}
    with ctx.Pool(args.workers) as mp_pool, \
            poolguard.Pool(args.workers, context=ctx) as pg_pool:
        pools = {"multiprocessing.Pool": mp_pool, "poolguard.Pool": pg_pool}
        for pool in pools.values():          # warm up: workers started, imports done
            measure(pool, 1000, None)
        for _ in range(args.rounds):
            for name, pool in pools.items():
                times[name].append(measure(pool, args.tasks, args.chunksize,
                                           args.input == "list"))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"map of x + 1 over {args.tasks:,} ints (a {args.input}), {args.workers} workers, "
          f"chunksize={args.chunksize or 'default'}, start method {ctx.get_start_method()}, "
          f"{args.rounds} interleaved rounds, Python {sys.version.split()[0]}")
    for name, median in medians.items():
        print(f"  {name:22s} median {median * 1000:8.1f} ms   "
              f"(min {min(times[name]) * 1000:.1f}, max {max(times[name]) * 1000:.1f})")
    ratio = medians["poolguard.Pool"] / medians["multiprocessing.Pool"]
    paired = statistics.median(p / m for p, m in zip(times["poolguard.Pool"],
                                                       times["multiprocessing.Pool"], strict=True))
    print(f"  ratio poolguard / multiprocessing: {ratio:.3f} (of medians), "
          f"{paired:.3f} (median of the {args.rounds} paired rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
