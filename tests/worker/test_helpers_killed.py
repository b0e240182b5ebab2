"""The processes a pool relies on, other than its workers, killed under
every start method: the zygote (fork), multiprocessing's fork server and
resource tracker (forkserver, spawn), each worker's guardian (spawn,
forkserver).  Killed idle, mid-map or at the pool's birth, none changes a
result, and a death the pool can see is said once.  The zygote's own cases
(its standby, its workers dying with it) are in test_helpers.py."""
from __future__ import annotations

import textwrap
from pathlib import Path

from scripts import run_helper_script as run

HELPERS = """
import time
import psutil
from multiprocessing import forkserver, resource_tracker

def helpers(p, method):
    # The zygote, not its standby, which takes over (fork); multiprocessing's
    # fork server and resource tracker; every worker's guardian (its child).
    if method == "fork":
        found = [p.helper_pids()["zygote"]]
    else:
        found = [pid for pid in (resource_tracker._resource_tracker._pid,
                                 p.helper_pids().get("fork server")) if pid]
    for pid in p.pids:
        try:
            found += [c.pid for c in psutil.Process(pid).children()]
        except psutil.Error:
            pass
    return found

def idle(p, count):
    deadline = time.monotonic() + 20
    while (len([s for s in p.status() if s.state == "idle"]) < count
           and time.monotonic() < deadline):
        time.sleep(0.02)
"""

WARNINGS = """
import warnings
warned = []
warnings.showwarning = lambda message, category, *_: warned.append((category, str(message)))
def said():
    return [m for c, m in warned if issubclass(c, poolguard.HelperDiedWarning)]
"""


def run_killing(tmp_path: Path, body: str, method: str) -> str:
    """Run *body* with WARNINGS before it and helpers_mod importable."""
    return run(tmp_path, WARNINGS + textwrap.dedent(body), method,
               modules={"helpers_mod": HELPERS})


def test_helpers_killed_idle_change_no_result(tmp_path, method):
    """Every helper SIGKILLed while the pool is idle, then every worker, so
    that the next map needs new ones: twice, each map exactly right (with
    a function of __main__ and a global set before Pool()), and each death
    the pool goes through said once: the zygote's (its standby takes over),
    the fork server's (multiprocessing makes a new one)."""
    out = run_killing(tmp_path, """
        import signal
        import tasks_mod
        from helpers_mod import helpers, idle
        SETTING = "set before the pool"
        def main_fn(x):
            return (x, SETTING)
        p = poolguard.Pool(2, context=METHOD)
        print(p.map(tasks_mod.square, range(4)))
        for round in range(2):
            time.sleep(0.3)   # the zygote's standby is ready
            idle(p, 2)
            for pid in helpers(p, METHOD):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
            for pid in p.pids:
                os.kill(pid, signal.SIGKILL)
            print(p.map(main_fn, range(3)))
            print(p.map(tasks_mod.square, range(4), chunksize=1) == [0, 1, 4, 9])
        p.terminate()
        for text in said():
            print("said:", text)
    """, method)
    lines = out.splitlines()
    expected = "[(0, 'set before the pool'), (1, 'set before the pool'), (2, 'set before the pool')]"
    assert lines[:5] == ["[0, 1, 4, 9]", expected, "True", expected, "True"], out
    said = lines[5:]
    if method == "spawn":
        assert said == [], out   # no helper starts its workers
    else:
        who, then = (("zygote", "its standby takes over") if method == "fork" else
                     ("fork server", "a new one is started"))
        assert len(said) == 2 and all(who in s and "SIGKILL" in s and then in s
                                      for s in said), out


def test_helpers_and_a_worker_killed_mid_map_with_retries_give_every_result(tmp_path,
                                                                             method):
    """Every helper and one worker SIGKILLed in the middle of a map with
    retries: every result comes, once; the pool maps again."""
    out = run_killing(tmp_path, """
        import signal
        import tasks_mod
        from helpers_mod import helpers, idle
        p = poolguard.Pool(3, retries=5, context=METHOD)
        p.map(tasks_mod.square, range(3))
        time.sleep(0.3)
        idle(p, 3)
        result = p.map_async(tasks_mod.pid_after, [0.05] * 60, chunksize=1)
        time.sleep(0.4)
        for pid in helpers(p, METHOD) + p.pids[:1]:
            os.kill(pid, signal.SIGKILL)
        result.wait(30)
        print(len(result.get()))
        print(p.map(tasks_mod.square, range(4)))
        p.terminate()
    """, method)
    assert out.splitlines() == ["60", "[0, 1, 4, 9]"], out


def test_helpers_killed_at_the_pools_birth_never_hang(tmp_path, method):
    """Every helper there is SIGKILLed at once or soon after Pool(), while
    the first workers start: each map ends within its bound with every
    result, or, under fork, with an error that names the zygote (killed
    before it forked its standby; or its workers, which die with it, had a
    task); a later pool works."""
    out = run_killing(tmp_path, """
        import signal
        import tasks_mod
        from helpers_mod import helpers
        for pause in [0, 0.05, 0.2, 0.5]:
            p = poolguard.Pool(2, context=METHOD)
            time.sleep(pause)
            for pid in helpers(p, METHOD):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            tasks_mod.print_map_outcome(p, 15)
            p.terminate()
        with poolguard.Pool(2, context=METHOD) as p:
            print(p.map(tasks_mod.square, range(4)))
    """, method)
    lines = out.splitlines()
    assert len(lines) == 5 and lines[-1] == "[0, 1, 4, 9]", out
    for line in lines[:-1]:   # under fork, a task may be lost with its workers (no retries)
        assert line == "[0, 1, 4, 9]" or (method == "fork" and "|" in line
                                          and "zygote" in line), out
