"""The process around the pool: its owner killed, Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from conftest import PROMPT, wait_until
from scripts import ROOT


def run_script(tmp_path: Path, body: str, *args: str) -> subprocess.Popen:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    # A session of its own: its process group is ours to signal, as a
    # terminal would on Ctrl-C, without touching anything else.
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def read_line(proc: subprocess.Popen, prefix: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line[len(prefix):].strip()
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"no {prefix!r} line; stderr: {proc.stderr.read()}")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def reap(proc: subprocess.Popen, descendants) -> None:
    """Kill only what this test started: the script and its recorded children."""
    for pid in descendants:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


OWNER = """
    import sys, time, poolguard
    if __name__ == "__main__":
        pool = poolguard.Pool(2, context=sys.argv[1])
        pool.apply(time.sleep, (0,))
        result = pool.map_async(time.sleep, [60] * 4, chunksize=1)
        while len(pool.pids) < 2:
            time.sleep(0.01)
        time.sleep(0.2)
        print("pids", *pool.pids, flush=True)
        time.sleep(60)
"""


def test_workers_exit_when_the_owner_is_killed(method, tmp_path):
    proc = run_script(tmp_path, OWNER, method)
    pids = [int(p) for p in read_line(proc, "pids ").split()]
    descendants = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    try:
        assert len(pids) == 2 and not any(gone(p) for p in pids)
        os.kill(proc.pid, signal.SIGKILL)
        start = time.monotonic()
        wait_until(lambda: all(gone(p) for p in pids), 2.0,
                   message="workers still alive 2 s after their owner was killed")
        assert time.monotonic() - start < 2.0
    finally:
        reap(proc, descendants)


CTRL_C = """
    import signal, sys, time, psutil, poolguard
    # As a program run from a terminal has it: a suite started in the
    # background by a shell hands SIGINT down ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if __name__ == "__main__":
        try:
            with poolguard.Pool(2, context=sys.argv[1]) as pool:
                result = pool.map_async(time.sleep, [30] * 4, chunksize=1)
                while sum(w.task is not None for w in pool.status()) < 2:
                    time.sleep(0.01)
                print("ready", flush=True)   # both workers run a task
                result.get()
        except KeyboardInterrupt:
            print("interrupted", time.time(), flush=True)
            left = [c for c in psutil.Process().children(recursive=True)
                    if c.status() != psutil.STATUS_ZOMBIE and c.name() != "resource_tracker"
                    and "forkserver" not in " ".join(c.cmdline())
                    and "resource_tracker" not in " ".join(c.cmdline())]
            print("left", len(left), flush=True)
"""


def test_ctrl_c_during_map(method, tmp_path):
    proc = run_script(tmp_path, CTRL_C, method)
    read_line(proc, "ready")
    descendants = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    try:
        sent = time.time()
        os.killpg(proc.pid, signal.SIGINT)   # the group, as a terminal does
        interrupted = float(read_line(proc, "interrupted "))
        assert interrupted - sent < PROMPT
        assert read_line(proc, "left ") == "0"
        _, err = proc.communicate(timeout=10)
        assert "Traceback" not in err, err
        assert proc.returncode == 0
    finally:
        reap(proc, descendants)
