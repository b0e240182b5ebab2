"""The rule that no DeprecationWarning comes from poolguard's code bites:
in the pytest process, in the scripts tests start, and for CPython's
fork-with-threads warning (which an ``error`` filter would silence: see
warnings_policy.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from scripts import ROOT, TESTS, run_script
from warnings_policy import PACKAGE

HERE = TESTS

# Code run as if it were a module of the tested poolguard package.
AS_POOLGUARD = """
import os, warnings
def as_poolguard(source):
    path = os.path.join({package!r}, "probe_module.py")
    exec(compile(source, path, "exec"), {{"__name__": "poolguard.probe_module"}})
"""
WARN = "import warnings; warnings.warn('probe', DeprecationWarning)"
# A fork from a second thread's process: CPython 3.12+ warns, from the caller.
FORK_WITH_THREADS = """
import os, threading
stop = threading.Event()
thread = threading.Thread(target=stop.wait); thread.start()
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0); stop.set(); thread.join()
"""


def run_pytest(tmp_path, body: str) -> subprocess.CompletedProcess:
    """A pytest run of one test, with this directory's conftest (and so the policy)."""
    (tmp_path / "test_probe.py").write_text(
        AS_POOLGUARD.format(package=PACKAGE) + "\n\ndef test_probe():\n"
        + textwrap.indent(textwrap.dedent(body), "    "))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "conftest", str(tmp_path / "test_probe.py")],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


def test_a_warning_from_poolguard_fails_the_run(tmp_path):
    done = run_pytest(tmp_path, f"as_poolguard({WARN!r})")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "DeprecationWarning from poolguard" in done.stdout
    assert "test_probe.py::test_probe" in done.stdout and "probe_module.py" in done.stdout


def test_a_warning_from_elsewhere_does_not(tmp_path):
    done = run_pytest(tmp_path, WARN)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(sys.version_info < (3, 12), reason="CPython warns on fork with threads "
                                                      "from 3.12 on")
def test_the_fork_with_threads_warning_fails_the_run(tmp_path):
    done = run_pytest(tmp_path, f"as_poolguard({FORK_WITH_THREADS!r})")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "is multi-threaded, use of fork()" in done.stdout


def test_a_warning_from_poolguard_in_a_script_fails_the_test(tmp_path):
    body = AS_POOLGUARD.format(package=PACKAGE) + f"as_poolguard({WARN!r})\n"
    with pytest.raises(AssertionError, match="DeprecationWarning from poolguard"):
        run_script(tmp_path, body, "spawn")
