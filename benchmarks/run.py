"""poolguard against every installed peer, workload by workload, in one run.

    python benchmarks/run.py [--workers 2] [--rounds 3] [--only tiny,payload,...]

Pools run side by side and interleaved (A B C A B C ...), so noise hits all
alike; each cell is a median, with its ratio to poolguard (above 1: the peer
is slower).  Peers are the bench dependency group (pip install --group bench); a missing
one is skipped with a line saying so.  Prints a Markdown table and writes a
chart (log scale) to docs/benchmarks.png.
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peers  # noqa: E402
import work   # noqa: E402

SLOW = 5.0          # seconds: a pool slower than this on a workload runs it once
HANG = 15.0         # seconds without an answer after a kill: "hangs"
DETECT_BUDGET = 20.0   # seconds of kills per pool at most


class Cell:
    """One pool on one workload: samples in seconds, or a word (hangs, breaks)."""

    def __init__(self) -> None:
        self.samples: List[float] = []
        self.word: Optional[str] = None
        self.note = ""
        self.paired = False     # samples[i] is round i of an interleaved run

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.samples) if self.samples else None

    def p99(self) -> Optional[float]:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def interleaved(pools: Dict[str, type], workers: int, rounds: int,
                run: Callable[[peers.Adapter], float]) -> Dict[str, Cell]:
    """Start every pool, then time *run* on each in turn, *rounds* times,
    the order rotating by one pool each round."""
    cells = {name: Cell() for name in pools}
    for cell in cells.values():
        cell.paired = True
    live = {}
    try:
        for name, cls in pools.items():
            live[name] = cls(workers)
            live[name].map(work.noop, list(range(workers * 4)), 1)   # workers up, imports done
        names = list(live)
        for round_ in range(rounds):
            # Each round starts one pool later, so no pool always runs right
            # after the same neighbour (a slow peer's workers may still be
            # busy for a moment when its map returns).
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                adapter = live[name]
                cell = cells[name]
                if cell.samples and cell.samples[0] > SLOW:
                    continue
                cell.samples.append(run(adapter))
    finally:
        for adapter in live.values():
            adapter.close_quietly()
    return cells


def timed_map(fn, items, chunksize=None) -> Callable[[peers.Adapter], float]:
    def run(adapter: peers.Adapter) -> float:
        start = time.perf_counter()
        out = adapter.map(fn, items, chunksize)
        elapsed = time.perf_counter() - start
        assert len(out) == len(items)
        return elapsed
    return run


# ---- workloads ---------------------------------------------------------------------

def tiny_default(pools, args):
    items = list(range(200_000))
    return interleaved(pools, args.workers, args.rounds, timed_map(work.inc, items))


def tiny_chunk1(pools, args):
    items = list(range(20_000))
    return interleaved(pools, args.workers, args.rounds, timed_map(work.inc, items, 1))


def payload_bytes(pools, args):
    items = [bytes([i]) * (8 << 20) for i in range(64)]
    return interleaved(pools, args.workers, args.rounds, timed_map(work.length, items, 1))


def payload_numpy(pools, args):
    import numpy
    items = [numpy.full(1 << 20, float(i)) for i in range(64)]   # 8 MiB each
    return interleaved(pools, args.workers, args.rounds, timed_map(work.length, items, 1))


def results_bytes(pools, args):
    return interleaved(pools, args.workers, args.rounds,
                       timed_map(work.make_bytes, [8 << 20] * 64, 1))


def submit_result(pools, args):
    """20,000 submissions of a tiny task, then every result."""
    def run(adapter: peers.Adapter) -> float:
        start = time.perf_counter()
        handles = [adapter.submit(work.inc, i) for i in range(20_000)]
        assert sum(h.result(60) for h in handles) == sum(range(1, 20_001))
        return time.perf_counter() - start
    return interleaved(pools, args.workers, args.rounds, run)


def head_of_line(pools, args):
    """A 1 s task, then three of 50 ms: time until the three short ones are
    done (a pool that queues one behind the long task waits for it)."""
    def run(adapter: peers.Adapter) -> float:
        start = time.perf_counter()
        long = adapter.submit(work.nap, 1.0)
        short = [adapter.submit(work.nap, 0.05) for _ in range(3)]
        for handle in short:
            handle.result(30)
        elapsed = time.perf_counter() - start
        long.result(30)
        return elapsed
    return interleaved(pools, args.workers, args.rounds, run)


def isolated(kind: str):
    """Run *kind* (detection, recovery) for each pool in a child interpreter of
    its own session: a pool that hangs is then killed whole, with its workers
    and helper threads, by the process group we made."""
    import json
    import subprocess

    def workload(pools, args):
        cells = {}
        for name in pools:
            cell = cells[name] = Cell()
            command = [sys.executable, os.path.abspath(__file__), "--child", f"{kind}:{name}",
                       "--workers", str(args.workers), "--kills", str(args.kills),
                       "--recoveries", str(args.recoveries)]
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                                    start_new_session=True)
            try:
                out, _ = proc.communicate(timeout=DETECT_BUDGET + 2 * HANG + 30)
                data = json.loads(out.strip().splitlines()[-1])
                cell.samples, cell.word, cell.note = data["samples"], data["word"], data["note"]
            except (subprocess.TimeoutExpired, ValueError, IndexError):
                cell.word = cell.word or "hangs"
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)   # the group we created
                except ProcessLookupError:
                    pass
                proc.wait()
            print(f"  {kind} {name}: {len(cell.samples)} samples"
                  + (f", {cell.word}" if cell.word else ""), flush=True)
        return cells
    return workload


def child(spec: str, args) -> None:
    """Body of an isolated run: print the cell as JSON, then leave at once
    (a hung pool's cleanup could block; the parent kills our group)."""
    import json
    kind, name = spec.split(":", 1)
    cls = peers.available([name])[name]
    cell = {"detection": _detect_one, "recovery": _recover_one}[kind](cls, args)
    print(json.dumps({"samples": cell.samples, "word": cell.word, "note": cell.note}),
          flush=True)
    # Our group (made for us by the parent) holds any worker a hung pool left,
    # and those keep our stdout open: end them all, ourselves included.
    os.killpg(0, signal.SIGKILL)


def _detect_one(cls, args) -> Cell:
    """SIGKILL of a busy worker to the exception in the caller."""
    cell = Cell()
    deadline = time.monotonic() + DETECT_BUDGET
    with tempfile.TemporaryDirectory() as tmp:
        adapter = cls(args.workers)
        for i in range(args.kills):
            path = os.path.join(tmp, f"kill-{i}")
            handle = adapter.submit(work.announce, path)
            pid = _wait_for_pid(path)
            start = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            try:
                handle.result(HANG)
            except Exception as exc:   # the pool's error, or its timeout
                if _is_timeout(exc):
                    cell.word = "hangs"
                    return cell
                cell.samples.append(time.perf_counter() - start)
            if not cls.survives_crash:    # broken: a new pool for the next kill
                adapter.close_quietly()
                adapter = cls(args.workers)
                cell.note = "then breaks"
            if time.monotonic() > deadline:
                break
        adapter.close_quietly()
    return cell


def _recover_one(cls, args) -> Cell:
    """One worker, killed while idle: time until a new task's result."""
    cell = Cell()
    adapter = cls(1)
    try:
        for _ in range(args.recoveries):
            adapter.submit(work.noop, 0).result(30)
            pids = adapter.worker_pids()
            start = time.perf_counter()
            os.kill(pids[0], signal.SIGKILL)
            try:
                adapter.submit(work.noop, 1).result(HANG)
            except Exception as exc:
                cell.word = "hangs" if _is_timeout(exc) else "breaks"
                return cell
            cell.samples.append(time.perf_counter() - start)
    except Exception as exc:
        cell.word = cell.word or f"breaks ({type(exc).__name__})"
        return cell
    adapter.close_quietly()
    return cell


def startup(pools, args):
    """Pool creation to the first result."""
    cells = {name: Cell() for name in pools}
    for cell in cells.values():
        cell.paired = True
    for _ in range(args.rounds * 2):
        for name, cls in pools.items():
            start = time.perf_counter()
            adapter = cls(args.workers)
            adapter.submit(work.noop, 1).result(30)
            cells[name].samples.append(time.perf_counter() - start)
            adapter.close()
    return cells


def monitoring(pools, args):
    """poolguard with memory sampling and guards on, against both off."""
    if "poolguard" not in pools:
        return {}
    items = [20_000] * 2000

    class Off(peers.Poolguard):
        name = "poolguard, sampling off"

        def __init__(self, workers):
            super().__init__(workers)
            self.pool._engine.guard_keeper.sample_interval = None

    class Guarded(peers.Poolguard):
        name = "poolguard, guards on"

        def __init__(self, workers):
            super().__init__(workers, task_timeout=60, max_worker_memory="8GiB")

    variants = {"poolguard": peers.Poolguard, Off.name: Off, Guarded.name: Guarded}
    # A 3 % cost is inside one round's noise: more rounds, paired ratios, and
    # the CPU time our process spent (supervisor included), which on 2 busy
    # cores is taken from the workers and is far less noisy than wall time.
    timed = timed_map(work.spin, items, 1)
    cpu: Dict[str, List[float]] = {name: [] for name in variants}

    def run(adapter: peers.Adapter) -> float:
        before = time.process_time()
        elapsed = timed(adapter)
        cpu[adapter.name].append(time.process_time() - before)
        return elapsed

    cells = interleaved(variants, args.workers, max(args.rounds, 9), run)
    for name, cell in cells.items():
        cell.note = f"our CPU {_format(statistics.median(cpu[name]))}"
    return cells


WORKLOADS = {
    "tiny": ("map(x + 1) over 200,000 ints, default chunking", tiny_default),
    "tiny1": ("map(x + 1) over 20,000 ints, chunksize=1", tiny_chunk1),
    "submit": ("20,000 submits of x + 1, then their results", submit_result),
    "hol": ("three 50 ms tasks after a 1 s one: until the three are done", head_of_line),
    "payload": ("64 arguments of 8 MiB bytes, returning len()", payload_bytes),
    "numpy": ("64 NumPy arrays of 8 MiB, returning len()", payload_numpy),
    "results": ("64 results of 8 MiB bytes", results_bytes),
    "detect": ("SIGKILL to the error in the caller (median)", isolated("detection")),
    "recovery": ("death of an idle worker to the next result", isolated("recovery")),
    "startup": ("pool creation to the first result", startup),
    "monitoring": ("2,000 tasks of about 1 ms: sampling and guards", monitoring),
}


def _wait_for_pid(path: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                text = f.read()
            if text:
                return int(text)
        except FileNotFoundError:
            pass
        time.sleep(0.0005)
    raise RuntimeError(f"no worker ran the task ({path})")


def _is_timeout(exc: BaseException) -> bool:
    return any(cls.__name__ == "TimeoutError" for cls in type(exc).__mro__)


def _format(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def ratio(cell: Cell, base: Cell) -> float:
    """*cell* over *base*: the median of the per-round ratios when both ran
    every round (pairs share the machine's mood), else the ratio of medians."""
    if len(cell.samples) == len(base.samples) > 1 and cell.paired and base.paired:
        return statistics.median(c / b for c, b in zip(cell.samples, base.samples, strict=True))
    return cell.median / base.median   # type: ignore[operator]


def table(results: Dict[str, Dict[str, Cell]], names: List[str]) -> str:
    lines = ["| workload | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for key, cells in results.items():
        base = cells.get("poolguard")
        row = [WORKLOADS[key][0]]
        for name in names:
            cell = cells.get(name)
            if cell is None:
                row.append("")
                continue
            text = cell.word or _format(cell.median)
            if key == "detect" and cell.samples:
                text += f" (p99 {_format(cell.p99())}, {len(cell.samples)} kills)"
            elif cell.word and cell.samples:
                text = f"{_format(cell.median)}, then {cell.word}"
            if cell.note:
                text += f", {cell.note}"
            if (name != "poolguard" and base is not None and base.median and cell.median
                    and not cell.word):
                text += f" ({ratio(cell, base):.2f}x)"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def chart(results: Dict[str, Dict[str, Cell]], names: List[str], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [k for k in results if k != "monitoring"]
    fig, ax = plt.subplots(figsize=(11, 5.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [results[k][name].median if name in results[k] and results[k][name].median
                  else 0 for k in keys]
        ax.bar([x + i * width for x in range(len(keys))], values, width, label=name)
    ax.set_yscale("log")
    ax.set_ylabel("seconds (median, log scale; missing bar: hangs or breaks)")
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(keys))])
    ax.set_xticklabels(keys)
    ax.set_title(f"poolguard and peers, {platform.python_implementation()} "
                 f"{platform.python_version()}, {peers.cpu_info()}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--recoveries", type=int, default=10)
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(WORKLOADS))
    parser.add_argument("--pools", default="", help="comma-separated pool names")
    parser.add_argument("--chart", default=os.path.join(HERE, "..", "docs", "benchmarks.png"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args)
    pools = peers.available([p for p in args.pools.split(",") if p] or None)
    names = list(pools)
    keys = [k for k in args.only.split(",") if k] or list(WORKLOADS)
    print(f"{len(names)} pools, {args.workers} workers, {args.rounds} rounds; "
          f"{peers.cpu_info()}; Python {platform.python_version()}; "
          + ", ".join(f"{n} {peers.version_of(n)}" for n in names if n != "poolguard"),
          flush=True)
    started = time.monotonic()
    results: Dict[str, Dict[str, Cell]] = {}
    for key in keys:
        t0 = time.monotonic()
        results[key] = WORKLOADS[key][1](pools, args)
        print(f"{key}: done in {time.monotonic() - t0:.0f} s", flush=True)
    shown = names + [n for n in results.get("monitoring", {}) if n not in names]
    print()
    print(table(results, shown))
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    try:
        chart(results, names, os.path.abspath(args.chart))
        print(f"chart: {os.path.relpath(os.path.abspath(args.chart))}")
    except ImportError:
        print("no chart: matplotlib is not installed (pip install --group bench)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
