"""The suite's own hang guard: a test about to time out prints the stacks of
the test process and of every worker, so a hang in CI can be read."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import poolguard

import tasks
from conftest import wait_until
from scripts import ROOT, TESTS

HERE = TESTS


def test_sigusr1_prints_a_worker_stack_and_the_worker_goes_on(capfd):
    with poolguard.Pool(1) as pool:
        result = pool.apply_async(tasks.sleep_then, (1.0, "done"))
        wait_until(lambda: pool.pids, 10)
        time.sleep(0.3)                      # inside sleep_then
        os.kill(pool.pids[0], signal.SIGUSR1)
        assert result.get(timeout=10) == "done"
    err = capfd.readouterr().err
    assert "in sleep_then" in err and "tasks.py" in err, err


def test_a_hanging_test_dumps_every_stack_before_it_fails(tmp_path):
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("suite_conftest",
                                                      {os.path.join(HERE, "conftest.py")!r})
        suite = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(suite)
        no_leaks = suite.no_leaks
    """))
    (tmp_path / "test_hangs.py").write_text(textwrap.dedent("""
        import poolguard, tasks

        def test_hangs():
            with poolguard.Pool(1) as pool:
                pool.apply(tasks.sleep_then, (60,))
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, ROOT]))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--timeout=4", "--rootdir", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert "about to time out" in out
    assert "in test_hangs" in out             # the test process's stack
    assert "=== worker" in out and "in sleep_then" in out   # the worker's stack
    assert "Timeout" in out
    assert elapsed < 30
