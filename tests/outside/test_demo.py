"""The demo a newcomer runs first, and the examples, run as a user runs them."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import poolguard
from poolguard.diagnosis.cgroup_tools import CgroupUnavailable, create_memory_cgroup

from scripts import CHECKOUT, ROOT
from warnings_policy import SCRIPT_WARNINGS, offending_lines


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS=SCRIPT_WARNINGS)
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=CHECKOUT)
    assert not offending_lines(done.stderr), \
        f"DeprecationWarning from poolguard:\n{done.stderr}"
    return done


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
                                       + [next(x for x in lines if x.startswith("task 3:"))])
    assert any(x.startswith("task 3: worker ") and x.endswith("killed by SIGKILL")
               for x in lines)
    assert lines[-1] == "afterwards: 90"


def test_doctor_reports_each_source():
    done = run("-m", "poolguard", "doctor")
    assert done.returncode == 0, done.stderr
    keys = [line.split("  ")[0] for line in done.stdout.splitlines()]
    assert keys == ["poolguard", "start methods", "workers by default", "memory cgroup",
                    "memory cgroups for tests", "kernel log", "pidfd", "parent-death signal"]
    from loky import cpu_count
    assert f"workers by default        {cpu_count()} (" in done.stdout


def test_segfault_example_prints_the_stack():
    done = run("examples/segfault.py")
    assert done.returncode == 0, done.stderr
    assert "killed by SIGSEGV while running parse_record('corrupt') (item 2 of map)" in done.stdout
    stack = done.stdout.split("Python stack at the crash")[1]
    assert "in decode_with_c_library" in stack and "in parse_record" in stack
    package = os.path.dirname(poolguard.__file__)
    assert package not in stack and "loop.py" not in stack   # our own frames are cut
    assert "oom=False verdict=ruled out" in done.stdout


def test_oom_example():
    try:
        probe = create_memory_cgroup(64 << 20, f"poolguard-probe-{os.getpid()}")
        os.rmdir(probe.directory)
    except CgroupUnavailable as exc:
        pytest.skip(f"no memory cgroup: {exc}")
    done = run("examples/oom.py")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "OOM confirmed" in out or "OOM likely" in out
    assert "(limit 300 MiB" in out
    match = re.search(r"peak_rss=(\d+) MiB", out)
    assert match and 150 <= int(match.group(1)) <= 450, out


def test_resume_example_runs_only_the_missing_items(tmp_path):
    done = run("examples/resume.py", str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "WorkerMemoryError" in lines[0]
    stored = int(lines[1].split(", ")[1].split()[0])
    assert 30 <= stored <= 40
    assert lines[2] == (f"second run: {80 - stored} calls (the {80 - stored} missing items), "
                        f"80 results, all right")
