"""The caller's peak memory for one large argument or result, in payloads:
poolguard (both fronts, every start method) against multiprocessing.Pool,
concurrent.futures.ProcessPoolExecutor and loky, in one run.

    python benchmarks/bench_memory.py [--size-mib 1024] [--methods fork,forkserver,spawn]
                                      [--only poolguard.Pool,loky,...]

Each case runs in a fresh interpreter (this file, with --case): it starts a
pool of one worker and makes one small call, then measures the caller's
peak RSS (VmHWM, reset to the current RSS through /proc/self/clear_refs
where the kernel allows it) over its RSS before the call, divided by the
payload.  loky refuses fork: its row for fork uses loky's own start method.  Cases:

* argument: ``apply(len, (payload,))``; the caller made the payload before;
* result: ``apply(make, (size,))``, then every byte of the result read;

each for a ``bytes`` and for a NumPy array.  1.00 means the caller held
one more payload at its peak: for a result that is the result itself, the
floor.  Prints each figure as it comes, then a Markdown table.  A run at
1 GiB needs about 4 GiB free and the machine to itself; ``--size-mib 64
--methods fork`` is a smoke run.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import work  # noqa: E402

CASES = ["argument bytes", "argument numpy", "result bytes", "result numpy"]
LIBRARIES = ["poolguard.Pool", "poolguard.ProcessPoolExecutor", "multiprocessing.Pool",
             "concurrent.futures.ProcessPoolExecutor", "loky"]


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def _reset_peak() -> int:
    """Where the peak starts from: VmHWM := VmRSS if the kernel lets us."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status("VmRSS")
    except OSError:
        return _status("VmHWM")


def _open(library: str, method: str) -> Tuple[Callable[..., Any], Callable[[], None]]:
    """A pool of one worker: (call(fn, *args) -> result, close)."""
    if library == "poolguard.Pool":
        import poolguard
        pool = poolguard.Pool(1, context=method)
        return lambda fn, *args: pool.apply(fn, args), pool.terminate
    if library == "multiprocessing.Pool":
        mp_pool = multiprocessing.get_context(method).Pool(1)
        return lambda fn, *args: mp_pool.apply(fn, args), mp_pool.terminate
    if library == "loky":
        import loky
        executor: Any = loky.get_reusable_executor(max_workers=1, context=method)
    elif library == "poolguard.ProcessPoolExecutor":
        import poolguard
        executor = poolguard.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method))
    else:
        import concurrent.futures
        executor = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context(method))
    return (lambda fn, *args: executor.submit(fn, *args).result(),
            lambda: executor.shutdown(wait=True))


def run_case(library: str, method: str, case: str, size: int) -> float:
    """In this (fresh) interpreter: the caller's peak over its baseline, in payloads."""
    call, close = _open(library, method)
    try:
        call(work.noop, 0)   # the worker is up and has run a call
        direction, kind = case.split()
        if kind == "numpy":
            import numpy  # noqa: F401  (its import is no part of the figure: ~20 MiB)
        if direction == "argument":
            payload: Any = work.make_bytes(size) if kind == "bytes" else work.make_array(size)
            base = _reset_peak()
            assert call(work.length, payload) == len(payload)
        else:
            base = _reset_peak()
            value = call(work.make_bytes if kind == "bytes" else work.make_array, size)
            # Read all of it, as a caller would: pages of a mapping count once touched.
            assert (value.count(1) if kind == "bytes" else value.sum()) == len(value)
        return (_status("VmHWM") - base) / size
    finally:
        close()


def _in_fresh_interpreter(library: str, method: str, case: str, size: int) -> Optional[float]:
    cmd = [sys.executable, os.path.abspath(__file__), "--case", library, method, case, str(size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        print(f"  {library} {method} {case}: failed: {proc.stderr.strip()[-300:]}",
              file=sys.stderr)
        return None
    return float(proc.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--methods", default="fork,forkserver,spawn")
    parser.add_argument("--only", default=",".join(LIBRARIES))
    parser.add_argument("--case", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        library, method, case, size = args.case
        print(f"{run_case(library, method, case, int(size)):.3f}")
        return
    size = args.size_mib << 20
    rows: Dict[str, Dict[str, Optional[float]]] = {}
    for library in args.only.split(","):
        if library == "loky" and not _has("loky"):
            print("loky is not installed: left out", file=sys.stderr)
            continue
        for method in args.methods.split(","):
            if library == "loky" and method == "fork":
                method = "loky"   # loky refuses fork; its own start method instead
            row = rows[f"{library} ({method})"] = {}
            for case in CASES:
                row[case] = _in_fresh_interpreter(library, method, case, size)
                figure = "failed" if row[case] is None else f"{row[case]:.2f}"
                print(f"{library} ({method}) {case}: {figure}", flush=True)
    _print_table(rows, args.size_mib)


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def _print_table(rows: Dict[str, Dict[str, Optional[float]]], size_mib: int) -> None:
    print(f"\nCaller's peak RSS over its baseline, in payloads ({size_mib} MiB; "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}):\n")
    print("| pool (start method) | " + " | ".join(CASES) + " |")
    print("|---|" + "---|" * len(CASES))
    for name, row in rows.items():
        cells = ["failed" if row[c] is None else f"{row[c]:.2f}" for c in CASES]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
