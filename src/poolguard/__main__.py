"""Command line: ``python -m poolguard demo | doctor | checkpoint PATH``."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m poolguard")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="show multiprocessing.Pool hang where "
                                            "poolguard.Pool raises")
    demo.add_argument("--watchdog", type=float, default=3.0,
                      help="seconds to wait for multiprocessing.Pool (default 3)")
    commands.add_parser("doctor", help="what this machine lets poolguard see: start "
                                       "methods, CPUs, memory cgroup, kernel log")
    store = commands.add_parser("checkpoint", help="list the steps of a result store "
                                                   "(checkpoint=PATH), or clear one")
    store.add_argument("path")
    store.add_argument("--clear", metavar="STEP", help="remove this step's results")
    store.add_argument("--clean", action="store_true",
                       help="remove temporary files older than an hour (left by "
                            "killed writers)")
    args = parser.parse_args(argv)
    if args.command == "checkpoint":
        return _checkpoint(args)
    if args.command == "doctor":
        from .cli.doctor import main as doctor_main
        return doctor_main()
    if args.command == "demo":
        from .cli.demo import main as demo_main
        return demo_main(args.watchdog)
    return 2


def _checkpoint(args: argparse.Namespace) -> int:
    from . import checkpoint
    if args.clear:
        if not checkpoint.clear(args.path, args.clear):
            print(f"no step {args.clear!r} in {args.path}", file=sys.stderr)
            return 1
        print(f"cleared {args.clear}")
    if args.clean:
        print(f"removed {checkpoint.clean(args.path)} stale temporary files")
    infos = checkpoint.steps(args.path)
    if not infos:
        print(f"{args.path}: no steps")
        return 0
    print(f"{'step':40} {'entries':>8} {'size':>10}  function / directory")
    for info in infos:
        extra = f", {info.temporary} temporary files" if info.temporary else ""
        print(f"{info.step:40} {info.entries:8d} {_size(info.size):>10}  "
              f"{info.function} / {info.directory}{extra}")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


if __name__ == "__main__":
    sys.exit(main())
