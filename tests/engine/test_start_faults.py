"""Worker starts that give no worker."""
from __future__ import annotations

import os
import time

import pytest

from poolguard.diagnosis.cgroup_tools import CgroupUnavailable, create_pids_cgroup
from scripts import run_script
from scripts import run_helper_script as run

# multiprocessing's Process replaced by a mock, as CPython's own
# test_force_shutdown_workers_not_started_yet does (3.14 on): start() starts
# nothing, and the mock's pid converts to an int (1, unless told: here a
# sleeping process of the script's).  Signalling that pid would hit a process
# that is not the pool's: init's process group, the whole machine's.
MOCKED_PROCESS = """
import subprocess, unittest.mock, multiprocessing
bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
ctx = multiprocessing.get_context(METHOD)
with unittest.mock.patch.object(ctx, "Process") as process_class:
    process_class.return_value.pid.__index__.return_value = bystander.pid
    with poolguard.ProcessPoolExecutor(1, mp_context=ctx) as executor:
        future = executor.submit(abs, -3)
        try:
            print("result", future.result(timeout=20))
        except poolguard.WorkerInitError as exc:
            print("error", exc)
        executor.kill_workers()
print("bystander alive", bystander.poll() is None)
bystander.kill()
bystander.wait()
"""


def test_a_process_class_that_starts_nothing_fails_the_start_and_signals_no_one(tmp_path,
                                                                                method):
    out = run_script(tmp_path, MOCKED_PROCESS, method)
    assert "bystander alive True" in out, out
    # (Under fork, the zygote's Process is the mocked one: that of the fork context.)
    assert "error could not start a worker: MagicMock.start() started no process" in out, out


@pytest.fixture
def pids_cgroup():
    """A pids cgroup under the test's own, removed afterwards; skipped where
    none can be made (no root, no pids controller for child groups)."""
    try:
        directory = create_pids_cgroup(f"poolguard-test-{os.getpid()}-{time.time_ns()}")
    except CgroupUnavailable as exc:
        pytest.skip(f"no pids cgroup: {exc}")
    yield directory
    # The script's processes have exited; their tasks leave the group when reaped.
    deadline = time.monotonic() + 10
    while open(os.path.join(directory, "cgroup.procs")).read().split():
        assert time.monotonic() < deadline, "processes left in the pids cgroup"
        time.sleep(0.05)
    os.rmdir(directory)


FORK_FAILS = """
import signal, warnings
import tasks_mod
said = []
warnings.showwarning = lambda message, category, *_: said.append(str(message))
from poolguard.diagnosis.cgroup_tools import join_cgroup
join_cgroup(os.path.join(CGROUP, "cgroup.procs"))
def limit(value):
    with open(os.path.join(CGROUP, "pids.max"), "w") as f:
        f.write(value)
def outcome(call):
    try:
        return repr(call.get(20))
    except poolguard.WorkerInitError as exc:
        named = "pids.max" in str(exc) and "EAGAIN" in str(exc)
        return "WorkerInitError " + ("named" if named else repr(str(exc)))
    except Exception as exc:   # a hang (TimeoutError), the supervisor's end, another error
        return f"{type(exc).__name__}: {exc}"
def until(done):
    deadline = time.monotonic() + 20
    while not done() and time.monotonic() < deadline:
        time.sleep(0.02)
def idle():
    return len([s for s in p.status() if s.state == "idle"])
p = poolguard.Pool(2, context=METHOD)
print(p.map(tasks_mod.square, range(4), chunksize=1))
until(lambda: idle() == 2)
first, second = p.pids
limit("1")   # below what lives already: no fork, nor thread, in the group from now on
os.kill(first, signal.SIGKILL)
until(lambda: first not in p.pids)
served = [p.apply_async(tasks_mod.pid_after, (0.05,)) for _ in range(4)]
print("the live worker serves", [outcome(r) for r in served] == [repr(second)] * 4)
os.kill(second, signal.SIGKILL)
until(lambda: second not in p.pids)
print(outcome(p.apply_async(tasks_mod.square, (3,))))
print(outcome(p.map_async(tasks_mod.square, range(3))))
limit("max")
print(outcome(p.map_async(tasks_mod.square, range(6), chunksize=1)))
until(lambda: idle() == 2)
print(len(p.status()), sorted({s.state for s in p.status()}), len(set(p.pids) & {first, second}))
p.terminate()
for text in said:
    print("said:", text)
"""


def test_fork_failing_with_eagain_fails_only_what_needs_a_new_worker_and_heals(
        tmp_path, method, pids_cgroup):
    """The pool's process in a pids cgroup whose pids.max is then set below
    what lives in it: every fork in it (the zygote's, the fork server's, the
    pool's own under spawn) fails with EAGAIN, as RLIMIT_NPROC does for a
    user who is not root.  A killed worker's replacement cannot start: the
    worker that lives serves every call; once none lives, calls fail with
    a WorkerInitError naming the resource (not a hang, not the supervisor's
    end).  With pids.max raised again, the pool starts its workers as before.
    Under forkserver, multiprocessing's fork server dies of the EAGAIN of
    its own fork: a warning says so once."""
    out = run(tmp_path, f"CGROUP = {pids_cgroup!r}\n" + FORK_FAILS, method)
    lines = out.splitlines()
    assert lines[:6] == [
        "[0, 1, 4, 9]", "the live worker serves True",
        "WorkerInitError named", "WorkerInitError named",
        "[0, 1, 4, 9, 16, 25]", "2 ['idle'] 0"], out
    # CPython's fork server dies of its own fork's EAGAIN: said once.
    said = lines[6:]
    assert len(said) == (method == "forkserver"), out
    assert all("fork server" in s and "exited with code 1" in s for s in said), out
