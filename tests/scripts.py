"""Run a small program in a fresh interpreter: what depends on import state
(fork hazards, lazy imports, first calls, functions of ``__main__``) is
tested there, never only inside the warm pytest process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional

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
