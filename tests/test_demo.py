"""The demo a newcomer runs first, and the examples, run as a user runs them."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_demo_shows_the_hang_and_the_error():
    done = run("-m", "poolguard", "demo", "--watchdog", "1")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "still stuck after 1.0 s" in out
    match = re.search(r"raised after (\d+) ms", out)
    assert match and int(match.group(1)) < 1000, out
    assert "was killed by SIGKILL while running murder_bot(2) (item 1 of map)" in out
    assert "the same pool maps again: ['OK 1', 'OK 3', 'OK 4']" in out


def test_drop_in_example():
    done = run("examples/drop_in.py")
    assert done.returncode == 0, done.stderr
    assert "3 results, 1 crashed: item 4 (signal SIGKILL)" in done.stdout


def test_pipeline_step_example():
    done = run("examples/pipeline_step.py")
    assert done.returncode == 0, done.stderr
    assert "step 'resize': 7 done, 1 failed" in done.stdout
    assert "resize(5) -> WorkerCrashedError" in done.stdout


def test_as_completed_example():
    done = run("examples/as_completed.py")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sorted(lines[:8]) == sorted([f"task {i}: {i * 10}" for i in range(8) if i != 3]
                                       + [next(l for l in lines if l.startswith("task 3:"))])
    assert any(l.startswith("task 3: worker ") and l.endswith("killed by SIGKILL")
               for l in lines)
    assert lines[-1] == "afterwards: 90"
