"""Why a worker died: OOM verdicts with evidence, crash stacks, outside kills."""
from __future__ import annotations

import os
import pickle
import signal
import time
import traceback

import pytest

import poolguard
from poolguard import WorkerCrashedError, diagnosis
from poolguard.diagnosis import Sources
from poolguard.diagnosis.cgroup_tools import CgroupUnavailable, create_memory_cgroup, join_cgroup

import tasks
from conftest import PROMPT, wait_until


@pytest.fixture
def memory_cgroup():
    """A 100 MiB memory cgroup, removed afterwards; skipped where none can be made."""
    try:
        cgroup = create_memory_cgroup(100 << 20, f"poolguard-test-{os.getpid()}-{time.time_ns()}")
    except CgroupUnavailable as exc:
        pytest.skip(f"no memory cgroup: {exc}")
    yield cgroup
    wait_until(lambda: not open(cgroup.procs_file).read().split(), 10)
    os.rmdir(cgroup.directory)


def test_real_oom_kill_is_confirmed_with_the_limit(method, memory_cgroup):
    with poolguard.Pool(1, initializer=join_cgroup, initargs=(memory_cgroup.procs_file,),
                        context=method) as pool:
        pool.apply(tasks.square, (1,))   # in its cgroup, up and idle
        before = max(s.rss or 0 for s in pool.status())
        start = time.monotonic()
        with pytest.raises(WorkerCrashedError) as info:
            pool.apply(tasks.grow, (8, 0.02))
        assert time.monotonic() - start < 10
        err = info.value
        assert err.signal == "SIGKILL" and err.oom is True
        assert err.oom_verdict in ("confirmed", "likely")
        assert f"memory cgroup {memory_cgroup.name} (limit 100 MiB" in str(err)
        # RSS counts the pages a forked worker shares with the pool's process
        # (as large as this test process has grown), which were charged
        # before the move: the peak is what it had idle plus up to the limit.
        assert err.peak_rss is not None and 40 << 20 < err.peak_rss <= before + (120 << 20)
        assert pool.apply(tasks.square, (3,)) == 9   # the replacement is fine


def test_oom_counter_alone_gives_likely(memory_cgroup, monkeypatch):
    # With the kernel log out of reach, the cgroup's oom_kill counter decides.
    monkeypatch.setattr(diagnosis, "SOURCES", Sources(kmsg="/nonexistent/kmsg"))
    with poolguard.Pool(1, initializer=join_cgroup,
                        initargs=(memory_cgroup.procs_file,)) as pool:
        with pytest.raises(WorkerCrashedError) as info:
            pool.apply(tasks.grow, (8, 0.02))
    err = info.value
    if memory_cgroup.oom_kills() is None:
        pytest.skip("this kernel's memory cgroup has no oom_kill counter")
    assert err.oom_verdict == "likely" and err.oom is True
    assert "OOM kill counter of its memory cgroup rose" in str(err)


def test_segfault_gives_the_python_stack(method):
    with poolguard.Pool(1, context=method) as pool:
        with pytest.raises(WorkerCrashedError) as info:
            pool.map(tasks.crash_in_native_code, [1])
    err = info.value
    assert err.signal == "SIGSEGV" and err.oom is False and err.oom_verdict == "ruled out"
    assert 'in crash_in_native_code' in err.crash_stack
    assert "Python stack at the crash" in str(err) and "crash_in_native_code" in str(err)
    assert str(err).splitlines()[-1] == ("What to do: the stack above shows the call that "
                                         "crashed; run the task on this input alone to "
                                         "reproduce it.")


def test_outside_kill_says_so_and_what_was_checked(tmp_path):
    with poolguard.Pool(1) as pool:
        marker = str(tmp_path / "pid")
        result = pool.apply_async(tasks.announce_and_sleep, (marker,))
        pid = int(wait_until(lambda: os.path.exists(marker) and open(marker).read(), 10))
        # Busy once its READY was read, which takes the memory sample the
        # error reports (a dead worker's /proc can no longer give one).
        wait_until(lambda: [s for s in pool.status() if s.state == "busy"], 10)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError) as info:
            result.get(10)
    err = info.value
    assert err.oom is not True and err.oom_verdict in ("ruled out", "unknown")
    assert "came from outside the process" in str(err)
    assert "last RSS" in err.oom_evidence      # what was checked is listed
    assert err.last_rss is not None and err.last_rss > 1 << 20
    assert str(err).splitlines()[-1].startswith("What to do: check the limits of the job "
                                                "scheduler")


@pytest.mark.parametrize("how, signame", [("os.kill", "SIGKILL"), ("os.killpg", "SIGTERM"),
                                          ("os.system", "SIGKILL"), ("subprocess", "SIGKILL")])
def test_a_signal_the_task_sent_itself_is_not_blamed_on_the_outside(method, how, signame):
    with poolguard.Pool(1, context=method) as pool:
        with pytest.raises(WorkerCrashedError) as info:
            pool.apply(tasks.kill_myself, (how, signame))
        assert pool.apply(tasks.square, (3,)) == 9
    err = info.value
    assert err.signal == signame and err.oom is False and err.oom_verdict == "ruled out"
    text = str(err)
    assert "outside" not in text and "Not an OOM kill: the task" in text
    if how.startswith("os.kill"):
        assert f"the task sent {signame} to its own process" in text
    else:
        assert "a command it started (os.system or subprocess) named its pid" in text
    assert text.splitlines()[-1].startswith("What to do: the task's own code signalled")


def test_errors_print_as_poolguard_names():
    for name in poolguard.__all__:
        obj = getattr(poolguard, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert obj.__module__ == "poolguard", name
    line = traceback.format_exception_only(poolguard.WorkerMemoryError("too big"))[-1]
    assert line == "poolguard.WorkerMemoryError: too big\n"
    again = pickle.loads(pickle.dumps(poolguard.TaskTimeoutError("late", pid=7)))
    assert type(again) is poolguard.TaskTimeoutError and again.pid == 7


def test_sigterm_from_outside(tmp_path):
    with poolguard.Pool(1) as pool:
        marker = str(tmp_path / "pid")
        result = pool.apply_async(tasks.announce_and_sleep, (marker,))
        pid = int(wait_until(lambda: os.path.exists(marker) and open(marker).read(), 10))
        os.kill(pid, signal.SIGTERM)
        with pytest.raises(WorkerCrashedError) as info:
            result.get(10)
    assert info.value.signal == "SIGTERM" and "outside the process" in str(info.value)
    assert "What to do: check the limits of the job scheduler" in str(info.value)


def test_every_source_unreadable_still_gives_the_error_at_once(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(diagnosis, "SOURCES", Sources(proc=str(empty), cgroup=str(empty),
                                                      kmsg=str(empty / "kmsg")))
    with poolguard.Pool(1) as pool:
        marker = str(tmp_path / "pid")
        result = pool.apply_async(tasks.announce_and_sleep, (marker,))
        pid = int(wait_until(lambda: os.path.exists(marker) and open(marker).read(), 10))
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError) as info:
            result.get(10)
        assert time.monotonic() - killed < PROMPT
        assert pool.apply(tasks.square, (5,)) == 25
    err = info.value
    assert err.signal == "SIGKILL" and err.oom is None and err.oom_verdict == "unknown"
    assert "not readable" in err.oom_evidence


def test_diagnose_never_raises():
    class Broken:
        pid = 1

        def __getattr__(self, name):
            raise RuntimeError("broken watch")
    verdict = diagnosis.diagnose("SIGKILL", Broken(), None)
    assert verdict.verdict == "unknown" and "diagnosis failed" in verdict.evidence
