"""The pool's own helper processes (the zygote under fork; the guardians and
the fork server under spawn and forkserver) killed, stopped or starved: the
pool never hangs, never misnames a death, and goes on.  Each case runs in a
fresh interpreter with real signals."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from scripts import SCRIPT_LIMIT, run_script

TASKS = """
import os, time

def square(x):
    return x * x

def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()
"""


def run(tmp_path: Path, body: str, method: str, timeout: float = SCRIPT_LIMIT + 15,
        modules: Optional[dict] = None) -> str:
    return run_script(tmp_path, body, method, timeout, {"tasks_mod": TASKS, **(modules or {})})


@pytest.mark.parametrize("method", ["fork"])
def test_the_zygote_killed_while_a_worker_it_forked_still_starts_never_hangs(tmp_path, method):
    """Slow at-fork hooks keep each freshly forked worker holding a copy of
    the zygote's socket for 0.3 s, and keep the zygote from answering for as
    long: killed at any moment of that, the zygote is dead while its socket
    does not say end of file yet.  Every map must end (results or the
    zygote's death), within its bound, in each of the pools of the loop."""
    out = run(tmp_path, """
        import signal
        import tasks_mod
        MAIN = os.getpid()
        def in_child():
            if os.getppid() != MAIN:   # a worker, forked by the zygote
                time.sleep(0.3)
        def in_parent():
            if os.getpid() != MAIN:    # the zygote, after forking a worker
                time.sleep(0.3)
        os.register_at_fork(after_in_child=in_child, after_in_parent=in_parent)
        for pause in [0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0]:
            p = poolguard.Pool(2, context=METHOD)
            time.sleep(pause)
            os.kill(p._engine._launcher.pid, signal.SIGKILL)
            result = p.map_async(tasks_mod.square, range(4))
            result.wait(4.0)
            if not result.ready():
                print("hung after", pause)
            else:
                try:
                    print(result.get())
                except poolguard.PoolguardError as exc:
                    print(type(exc).__name__, "|", exc)
            p.terminate()
        print("done")
    """, method)
    lines = out.splitlines()
    assert lines[-1] == "done" and len(lines) == 9, out
    for line in lines[:-1]:
        assert line == "[0, 1, 4, 9]" or ("|" in line and "zygote" in line), out


@pytest.mark.parametrize("method", ["fork"])
def test_output_buffered_before_the_pool_is_written_once(tmp_path, method):
    """The zygote is a fork of the caller: what sat in the caller's stdout
    buffer at that instant must not be written again by the zygote or a
    worker (each flushes its copy when it forks or exits)."""
    out = run(tmp_path, """
        import tasks_mod
        # Buffered whatever PYTHONUNBUFFERED says, as without it.
        sys.stdout = open(sys.stdout.fileno(), "w", buffering=1 << 16, closefd=False)
        print("before the pool")
        with poolguard.Pool(2, context=METHOD) as p:
            print(p.map(tasks_mod.square, range(4)))
            p.close()
            p.join()
        print("done")
        sys.stdout.flush()
    """, method)
    assert out.splitlines() == ["before the pool", "[0, 1, 4, 9]", "done"], out
