"""The randomized soak (tests/soak.py) for as long as asked:

    python benchmarks/long_soak.py --minutes 30 [--seed S]
    python benchmarks/long_soak.py --seed S --round R     # replay one round

Prints each violation as it is found, a line a minute, and at the end the
rounds, calls, tasks and outside kills per front and start method.  Exits 1
if any violation was found.  Not a benchmark: it measures nothing, and may
run on a busy machine (its bounds allow for one).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import soak  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--round", type=int, default=None, dest="only_round",
                        help="play this round of --seed alone")
    args = parser.parse_args()
    if args.only_round is not None and args.seed is None:
        parser.error("--round needs --seed")
    if args.minutes is None and args.rounds is None and args.only_round is None:
        args.minutes = 30.0
    started = time.monotonic()
    last = [started]

    def log(line: str) -> None:
        print(line, flush=True)

    def tick(report: soak.Report) -> None:
        if time.monotonic() - last[0] >= 60:
            last[0] = time.monotonic()
            total = report.total()
            log(f"{(last[0] - started) / 60:.0f} min: {total.rounds} rounds, {total.calls} "
                f"calls, {total.tasks} tasks, {len(report.violations)} violations")

    report = soak.run(args.seed, args.minutes, args.rounds, args.only_round, log, tick)
    log(report.summary())
    log(f"{(time.monotonic() - started) / 60:.1f} minutes")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
