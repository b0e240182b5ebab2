"""What memory sampling costs: poolguard.Pool with and without it, side by side.

Tasks of about 1 ms (a busy loop), so that samples (every 100 ms of a busy
worker) fall during the work.  Interleaved rounds; medians and their ratio.

    python benchmarks/bench_monitoring.py [--tasks 2000] [--rounds 9]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import poolguard


def spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--spin", type=int, default=20_000, help="loop length of one task")
    args = parser.parse_args(argv)
    times = {"sampling on": [], "sampling off": []}
    with poolguard.Pool(2) as on, poolguard.Pool(2) as off:
        off._engine.sample_interval = None
        pools = {"sampling on": on, "sampling off": off}
        for pool in pools.values():
            pool.map(spin, [10] * 100)
        for _ in range(args.rounds):
            for name, pool in pools.items():
                start = time.perf_counter()
                pool.map(spin, [args.spin] * args.tasks, chunksize=1)
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.tasks} tasks of spin({args.spin}), 2 workers, {args.rounds} interleaved rounds")
    for name, value in med.items():
        print(f"  {name:13s} median {value * 1000:8.1f} ms")
    paired = statistics.median(a / b for a, b in zip(times["sampling on"], times["sampling off"]))
    print(f"  ratio on / off: {med['sampling on'] / med['sampling off']:.3f} (of medians), "
          f"{paired:.3f} (median of paired rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
