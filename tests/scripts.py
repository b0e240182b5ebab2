"""Run a small program in a fresh interpreter: what depends on import state
(fork hazards, lazy imports, first calls, functions of ``__main__``) is
tested there, never only inside the warm pytest process."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import sys
import textwrap
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import pytest

import poolguard

from warnings_policy import SCRIPT_WARNINGS, offending_lines

# The directory the tested poolguard was imported from (the installed
# package, or the checkout's src/): scripts import the very same one.
ROOT = str(Path(poolguard.__file__).resolve().parent.parent)
CHECKOUT = Path(__file__).resolve().parent.parent   # examples/, benchmarks/
TESTS = str(Path(__file__).resolve().parent)   # tasks.py and the other helpers
SCRIPT_LIMIT = 45      # seconds a script may run before it dumps its stacks and exits

PRELUDE = f"""
import faulthandler, os, sys, threading, time
import poolguard
if __name__ == "__main__":
    faulthandler.dump_traceback_later({SCRIPT_LIMIT}, exit=True)
    METHOD = sys.argv[1]
"""


def run_script(tmp_path: Path, body: str, method: str, timeout: float = SCRIPT_LIMIT + 15,
               modules: Optional[dict] = None) -> str:
    """Run PRELUDE + *body* (under the main guard) as a script, with the
    *modules* ({name: source}) importable; return its stdout, failing with
    its output when it fails or hangs."""
    for name, text in (modules or {}).items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    script = tmp_path / "prog.py"
    # Under the main guard: spawn and forkserver import the script again.
    script.write_text(PRELUDE + 'if __name__ == "__main__":\n'
                      + textwrap.indent(textwrap.dedent(body), "    "))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path)]),
               PYTHONWARNINGS=SCRIPT_WARNINGS)
    proc = subprocess.Popen([sys.executable, str(script), method], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # the group we created: script, zygote, workers
        out, err = proc.communicate()
        pytest.fail(f"script hung\nstdout:\n{out}\nstderr:\n{err}")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert not offending_lines(err), f"DeprecationWarning from poolguard:\n{err}"
    return out


# Task functions of the tests on the pool's helper processes, a module
# their scripts import as tasks_mod.
HELPER_TASKS = """
import os, time
import poolguard

def square(x):
    return x * x

def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()

def exit_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return "ran again"

def print_map_outcome(p, wait):
    # A map of 4 squares on pool p: its values, its error, or "hung".
    result = p.map_async(square, range(4))
    result.wait(wait)
    if not result.ready():
        print("hung")
        return
    try:
        print(result.get())
    except poolguard.PoolguardError as exc:
        print(type(exc).__name__, "|", str(exc).replace("\\n", " / "))
"""


def run_helper_script(tmp_path: Path, body: str, method: str,
                      timeout: float = SCRIPT_LIMIT + 15, modules: Optional[dict] = None) -> str:
    """run_script with HELPER_TASKS importable as tasks_mod."""
    return run_script(tmp_path, body, method, timeout,
                      {"tasks_mod": HELPER_TASKS, **(modules or {})})


OWNER_PRELUDE = """import os as _os
def report(pids):
    with open({path!r} + ".tmp", "w") as f:
        f.write(" ".join(map(str, pids)))
    _os.replace({path!r} + ".tmp", {path!r})
"""


@contextlib.contextmanager
def owner_script(tmp_path: Path, text: str, method: str,
                 start_timeout: float = 30) -> Iterator[Tuple[subprocess.Popen, List[int]]]:
    """Start *text* as a pool's owner, in a session of its own, with
    *method* as its argument; it calls ``report(pids)`` once its pool is as
    the test needs it.  Yields (the owner's process, those pids); at the end
    the session (owner, zygote, workers, what they started) is killed."""
    pids_file = tmp_path / "pids"
    script = tmp_path / "owner.py"
    script.write_text(OWNER_PRELUDE.format(path=str(pids_file)) + textwrap.dedent(text))
    owner = subprocess.Popen([sys.executable, str(script), method],
                             env=dict(os.environ, PYTHONPATH=ROOT), start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout
        while not pids_file.exists():
            assert owner.poll() is None, f"the owner exited with {owner.returncode}"
            assert time.monotonic() < deadline, "the owner did not start its pool"
            time.sleep(0.05)
        yield owner, [int(x) for x in pids_file.read_text().split()]
    finally:
        try:
            os.killpg(owner.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        owner.wait(10)


def run_code(code: str, timeout: float, env: Optional[dict] = None,
             prefix: Sequence[str] = ()) -> Tuple[int, str, str]:
    """(exit code, stdout, stderr) of *code* run by a fresh interpreter (after
    *prefix*: strace, say) with the tested poolguard and tests/ importable;
    a hang fails the test after *timeout* seconds, its session killed."""
    full = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]), **(env or {}))
    proc = subprocess.Popen([*prefix, sys.executable, "-c", textwrap.dedent(code)], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # the session we created
        out, err = proc.communicate()
        pytest.fail(f"hung for {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    return proc.returncode, out, err
