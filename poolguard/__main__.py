"""Command line: ``python -m poolguard demo`` and ``python -m poolguard doctor``."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m poolguard")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="show multiprocessing.Pool hang where "
                                            "poolguard.Pool raises")
    demo.add_argument("--watchdog", type=float, default=3.0,
                      help="seconds to wait for multiprocessing.Pool (default 3)")
    commands.add_parser("doctor", help="what this machine lets poolguard see: start "
                                       "methods, CPUs, memory cgroup, kernel log")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        from .doctor import main as doctor_main
        return doctor_main()
    if args.command == "demo":
        from .demo import main as demo_main
        return demo_main(args.watchdog)
    return 2


if __name__ == "__main__":
    sys.exit(main())
