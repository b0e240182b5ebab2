"""Worker starts that give no worker."""
from __future__ import annotations

from scripts import run_script

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
