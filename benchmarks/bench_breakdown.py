"""Where a tiny item's time goes: wall, parent and worker CPU, wake-ups, per item,
next to the physical floor of this machine.

    python benchmarks/bench_breakdown.py [--items 1.0] [--rounds 5] [--workers 2]

Three workloads of ``inc`` (x + 1), each run on poolguard and on its
standard-library baseline, interleaved (the order alternates each round):
``Pool.map`` of 200k items, ``imap`` of 20k with ``chunksize=1``, and the
executor's ``map`` of 200k with its default chunksize against
``multiprocessing.Pool.map`` (the standard executor takes 40 s there, with its
chunk of 1).  Per item, as medians over the rounds: wall time; the parent's CPU
split into the caller's thread and the pool's own threads (poolguard's
supervisor among them); the workers' CPU (every thread of each worker, from
schedstat, read while the pool is up: a dead process's counters are gone); the
voluntary context switches (wake-ups) of the parent and of the workers.
CPU times and wake-ups hold on a loaded machine; wall times need a quiet one.
``--items`` scales the item counts (0.1 for a smoke run).  Prints Markdown.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import resource
import statistics
import sys
import time
import timeit
from typing import Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import poolguard     # noqa: E402
import work          # noqa: E402
from bench_fronts import _close, _warm   # noqa: E402

FIELDS = ("wall", "caller", "pool threads", "supervisor", "workers",
          "parent wake-ups", "worker wake-ups")


# ---- counters ------------------------------------------------------------------------

def _task_ns(pid: int, tid: int) -> int:
    """On-CPU nanoseconds of one thread (schedstat: exact, unlike stat's ticks)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return 0


def _switches(pid: int, tid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _process(pid: int) -> Tuple[int, int]:
    """CPU ns and voluntary switches summed over a live process's threads."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return 0, 0
    return sum(_task_ns(pid, t) for t in tids), sum(_switches(pid, t) for t in tids)


class Snapshot:
    """Every counter of one pool at one instant."""

    def __init__(self, pool, supervisor: Optional[int]) -> None:
        self.process = time.process_time_ns()        # every thread, the ended ones too
        self.caller = time.thread_time_ns()
        self.supervisor = _task_ns(os.getpid(), supervisor) if supervisor else 0
        self.parent_switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        self.workers = {pid: _process(pid) for pid in worker_pids(pool)}


def per_item(before: Snapshot, after: Snapshot, wall: float, items: int) -> Dict[str, float]:
    common = before.workers.keys() & after.workers.keys()   # a replaced worker is left out
    scale = len(before.workers) / max(1, len(common))
    caller = after.caller - before.caller
    return {
        "wall": wall * 1e9 / items,
        "caller": caller / items,
        "pool threads": (after.process - before.process - caller) / items,
        "supervisor": (after.supervisor - before.supervisor) / items,
        "workers": scale * sum(after.workers[p][0] - before.workers[p][0] for p in common) / items,
        "parent wake-ups": (after.parent_switches - before.parent_switches) / items,
        "worker wake-ups": scale * sum(after.workers[p][1] - before.workers[p][1]
                                       for p in common) / items,
    }


def worker_pids(pool) -> List[int]:
    if isinstance(pool, (poolguard.Pool, poolguard.ProcessPoolExecutor)):
        return list(pool.pids)
    return [p.pid for p in pool._pool]    # multiprocessing.Pool


def supervisor_tid(pool) -> Optional[int]:
    engine = getattr(pool, "_engine", None)
    thread = getattr(engine, "_thread", None)
    return getattr(thread, "native_id", None)


# ---- workloads -----------------------------------------------------------------------

def _map(pool, items: List[int]) -> None:
    out = list(pool.map(work.inc, items))
    assert len(out) == len(items) and out[-1] == items[-1] + 1


def _imap1(pool, items: List[int]) -> None:
    assert sum(pool.imap(work.inc, items, 1)) == sum(items) + len(items)


Make = Callable[[int], object]
WORKLOADS: Dict[str, Tuple[str, int, Make, Make, Callable, float]] = {
    # key: (label, items at --items 1, poolguard's pool, baseline's pool, run, target)
    "map": ("Pool.map(inc, 200k) / multiprocessing.Pool.map", 200_000,
            poolguard.Pool, multiprocessing.Pool, _map, 0.8),
    "imap1": ("Pool.imap(inc, 20k, chunksize=1) / multiprocessing.Pool.imap", 20_000,
              poolguard.Pool, multiprocessing.Pool, _imap1, 0.7),
    "exmap": ("ProcessPoolExecutor.map(inc, 200k) / multiprocessing.Pool.map", 200_000,
              poolguard.ProcessPoolExecutor, multiprocessing.Pool, _map, 1.2),
}


def measure(pool, run: Callable, items: List[int]) -> Dict[str, float]:
    before = Snapshot(pool, supervisor_tid(pool))
    start = time.perf_counter()
    run(pool, items)
    wall = time.perf_counter() - start
    return per_item(before, Snapshot(pool, supervisor_tid(pool)), wall, len(items))


def paired(key: str, workers: int, rounds: int, scale: float):
    _label, count, make_ours, make_theirs, run, _target = WORKLOADS[key]
    items = list(range(max(1000, int(count * scale))))
    ours, theirs = make_ours(workers), make_theirs(workers)
    a: List[Dict[str, float]] = []
    b: List[Dict[str, float]] = []
    try:
        for pool in (ours, theirs):
            _warm(pool)
            run(pool, items[:1000])
        for round_ in range(rounds):
            order = [(a, ours), (b, theirs)]
            for samples, pool in (order if round_ % 2 == 0 else order[::-1]):
                samples.append(measure(pool, run, items))
    finally:
        _close(ours)
        _close(theirs)
    return a, b


# ---- the physical floor --------------------------------------------------------------

def pipe_round_trip(trips: int = 20_000) -> float:
    """Nanoseconds for 8 bytes there and back between two processes."""
    there_r, there_w = os.pipe()
    back_r, back_w = os.pipe()
    pid = os.fork()
    if pid == 0:    # the echo: reads 8 bytes, writes them back, until EOF
        try:
            os.close(there_w)
            os.close(back_r)
            while data := os.read(there_r, 8):
                os.write(back_w, data)
        finally:
            os._exit(0)
    os.close(there_r)
    os.close(back_w)
    message = b"12345678"
    start = time.perf_counter()
    for _ in range(trips):
        os.write(there_w, message)
        os.read(back_r, 8)
    elapsed = time.perf_counter() - start
    os.close(there_w)
    os.close(back_r)
    os.waitpid(pid, 0)
    return elapsed * 1e9 / trips


def _best_ns(statement: Callable[[], object], number: int = 200_000) -> float:
    return min(timeit.repeat(statement, number=number, repeat=5)) * 1e9 / number


def floor() -> Dict[str, float]:
    one = 12345
    return {
        "pipe round trip, 8 bytes, two processes": statistics.median(
            pipe_round_trip() for _ in range(3)),
        "pickle.dumps + pickle.loads of one int": _best_ns(
            lambda: pickle.loads(pickle.dumps(one, pickle.HIGHEST_PROTOCOL))),
        "a call of inc(x)": _best_ns(lambda: work.inc(one)),
    }


# ---- report --------------------------------------------------------------------------

def _ns(value: float) -> str:
    return f"{value / 1000:.2f} µs" if value >= 1000 else f"{value:.0f} ns"


def _row(name: str, samples: List[Dict[str, float]], ratio: str) -> str:
    med = {f: statistics.median(s[f] for s in samples) for f in FIELDS}
    threads = _ns(med["pool threads"])
    if med["supervisor"]:
        threads += f" (supervisor {_ns(med['supervisor'])})"
    return (f"| {name} | {_ns(med['wall'])} {ratio}| {_ns(med['caller'])} | {threads} "
            f"| {_ns(med['workers'])} | {1000 * med['parent wake-ups']:.1f} "
            f"| {1000 * med['worker wake-ups']:.1f} |")


def report(key: str, a, b) -> List[str]:
    label, *_rest, target = WORKLOADS[key]
    ours, theirs = label.split(" / ")
    ratio = statistics.median(x["wall"] / y["wall"] for x, y in zip(a, b, strict=True))
    cpu = statistics.median(sum(x[f] for f in ("caller", "pool threads", "workers"))
                            / sum(y[f] for f in ("caller", "pool threads", "workers"))
                            for x, y in zip(a, b, strict=True))
    verdict = "met" if ratio <= target else "NOT met"
    return [_row(f"poolguard `{ours}`", a, f"({ratio:.2f}x, target <= {target}x: {verdict}) "),
            _row(f"`{theirs}`", b, ""),
            f"| | all CPU (parent + workers): {cpu:.2f}x | | | | | |"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=float, default=1.0, help="scale of the item counts")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(WORKLOADS))
    args = parser.parse_args(argv)
    keys = [k for k in args.only.split(",") if k] or list(WORKLOADS)
    print(f"{args.workers} workers, {args.rounds} rounds, items x{args.items}, start method "
          f"{multiprocessing.get_start_method()}, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs; per item, medians of rounds\n")
    print("| pool | wall | caller's thread CPU | pool's threads CPU | workers' CPU "
          "| parent wake-ups per 1k | worker wake-ups per 1k |")
    print("|---|---|---|---|---|---|---|")
    for key in keys:
        print("\n".join(report(key, *paired(key, args.workers, args.rounds, args.items))),
              flush=True)
    print("\n| physical floor on this machine | per operation |\n|---|---|")
    for what, value in floor().items():
        print(f"| {what} | {_ns(value)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
