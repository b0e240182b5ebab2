"""Time from a worker's SIGKILL to the exception in the caller.

The worker announces its pid through a pipe and blocks; the benchmark kills
it and measures until ``get()`` raises.  Reports median and p99 over --kills.

    python benchmarks/bench_detect.py [--kills 50] [--start-method fork]
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time

import poolguard


def block(fd_path: str):
    with open(fd_path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--start-method", default=None)
    args = parser.parse_args(argv)
    import tempfile
    latencies = []
    with tempfile.TemporaryDirectory() as tmp, \
            poolguard.Pool(2, context=args.start_method) as pool:
        for i in range(args.kills):
            path = os.path.join(tmp, f"pid{i}")
            result = pool.apply_async(block, (path,))
            deadline = time.monotonic() + 30
            while not (os.path.exists(path) and open(path).read()):
                if time.monotonic() > deadline:
                    raise SystemExit("worker never started the task")
                time.sleep(0.001)
            pid = int(open(path).read())
            start = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            try:
                result.get(timeout=30)
            except poolguard.WorkerCrashedError:
                latencies.append(time.perf_counter() - start)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(f"SIGKILL to WorkerCrashedError over {len(latencies)} kills: "
          f"median {statistics.median(latencies) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, "
          f"max {latencies[-1] * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
