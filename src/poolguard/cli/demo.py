"""``python -m poolguard demo``: the same program on multiprocessing.Pool and on poolguard.Pool."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

PROGRAM = """\
import multiprocessing, os
def murder_bot(i):
    if i == 2:
        os.system('kill -9 %d' % os.getpid())
    return f'OK {i}'
if __name__ == '__main__':
    with multiprocessing.Pool(3) as executor:
        print(executor.map(murder_bot, [1, 2, 3]))
"""


def murder_bot(i: int) -> str:
    if i == 2:
        os.system("kill -9 %d" % os.getpid())
    return f"OK {i}"


def run_stdlib(watchdog: float) -> None:
    print(f"1. multiprocessing.Pool, with a {watchdog:.0f} s watchdog:")
    print(textwrap.indent(PROGRAM, "     | "), end="")
    with tempfile.TemporaryDirectory(prefix="poolguard-demo-") as tmp:
        script = os.path.join(tmp, "murder_bot.py")
        with open(script, "w") as f:
            f.write(PROGRAM)
        # A session of its own, so the watchdog stops exactly this program and its workers.
        proc = subprocess.Popen([sys.executable, script], start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        start = time.monotonic()
        try:
            out, _ = proc.communicate(timeout=watchdog)
            print(f"   finished after {time.monotonic() - start:.1f} s: {out.strip()}")
        except subprocess.TimeoutExpired:
            print(f"   still stuck after {time.monotonic() - start:.1f} s: the killed worker's "
                  "task is never failed. Stopping it.")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def run_poolguard() -> None:
    import poolguard
    print("\n2. The same program with poolguard.Pool(3):")
    with poolguard.Pool(3) as executor:
        start = time.monotonic()
        try:
            executor.map(murder_bot, [1, 2, 3])
        except poolguard.WorkerCrashedError as exc:
            elapsed = time.monotonic() - start
            print(f"   raised after {elapsed * 1000:.0f} ms:\n   WorkerCrashedError: {exc}")
            print(f"   pid={exc.pid} signal={exc.signal} task={exc.task}")
        again = executor.map(murder_bot, [1, 3, 4])
        print(f"   the same pool maps again: {again}")


def main(watchdog: float = 3.0) -> int:
    run_stdlib(watchdog)
    run_poolguard()
    return 0
