"""The pool's own helper processes (the zygote under fork; the guardians and
the fork server under spawn and forkserver) killed, stopped or starved: the
pool never hangs, never misnames a death, and goes on.  Each case runs in a
fresh interpreter with real signals."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scripts import ROOT, SCRIPT_LIMIT, run_helper_script as run



@pytest.mark.parametrize("method", ["fork"])
def test_the_zygote_killed_while_a_worker_it_forked_still_starts_never_hangs(tmp_path, method):
    """Slow at-fork hooks keep each freshly forked worker holding a copy of
    the zygote's socket for 0.3 s, and keep the zygote from answering for as
    long: killed at any moment of that, the zygote is dead while its socket
    does not say end of file yet.  Every map must end (results or the
    zygote's death), within its bound, in each of the pools of the loop."""
    out = run(tmp_path, """
        import signal
        import tasks_mod
        MAIN = os.getpid()
        def in_child():
            if os.getppid() != MAIN:   # a worker, forked by the zygote
                time.sleep(0.3)
        def in_parent():
            if os.getpid() != MAIN:    # the zygote, after forking a worker
                time.sleep(0.3)
        os.register_at_fork(after_in_child=in_child, after_in_parent=in_parent)
        for pause in [0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0]:
            p = poolguard.Pool(2, context=METHOD)
            time.sleep(pause)
            os.kill(p.helper_pids()["zygote"], signal.SIGKILL)
            tasks_mod.print_map_outcome(p, 4.0)
            p.terminate()
        print("done")
    """, method)
    lines = out.splitlines()
    assert lines[-1] == "done" and len(lines) == 9, out
    for line in lines[:-1]:
        assert line == "[0, 1, 4, 9]" or ("|" in line and "zygote" in line), out


@pytest.mark.parametrize("method", ["fork"])
def test_output_buffered_before_the_pool_is_written_once(tmp_path, method):
    """The zygote is a fork of the caller: what sat in the caller's stdout
    buffer at that instant must not be written again by the zygote or a
    worker (each flushes its copy when it forks or exits)."""
    out = run(tmp_path, """
        import tasks_mod
        # Buffered whatever PYTHONUNBUFFERED says, as without it.
        sys.stdout = open(sys.stdout.fileno(), "w", buffering=1 << 16, closefd=False)
        print("before the pool")
        with poolguard.Pool(2, context=METHOD) as p:
            print(p.map(tasks_mod.square, range(4)))
            p.close()
            p.join()
        print("done")
        sys.stdout.flush()
    """, method)
    assert out.splitlines() == ["before the pool", "[0, 1, 4, 9]", "done"], out


@pytest.mark.parametrize("method", ["fork"])
def test_a_worker_dead_before_the_pool_watches_it_is_a_death_not_a_start_failure(
        tmp_path, method):
    """The zygote answers for a replacement and dies at once (SIGALRM), with
    the pool's process stopped meanwhile: the worker dies with it and, as
    under an init that reaps orphans (systemd, tini; here a subreaper), is
    reaped before the pool looks at it.  By its pid the pool found nothing
    and failed the retried call with "WorkerInitError: cannot watch
    worker"; it is a death like any other: the standby's worker runs it."""
    out = run(tmp_path, """
        import ctypes, signal, traceback, warnings
        import tasks_mod
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER
        inner = os.fork()
        if inner:   # reap orphans as init does; let the pool go on once they are
            while True:
                pid, status = os.waitpid(-1, 0)
                if pid == inner:
                    sys.exit(os.waitstatus_to_exitcode(status))
                os.kill(inner, signal.SIGCONT)
        code = 1
        try:
            warnings.simplefilter("ignore", poolguard.HelperDiedWarning)
            MAIN, TRIGGER = os.getpid(), os.path.abspath("trigger")
            def in_zygote_after_fork():
                if (os.getppid() == MAIN and os.path.exists(TRIGGER)
                        and any(f.name == "_launch" for f in traceback.extract_stack())):
                    os.unlink(TRIGGER)   # a worker just forked: stop the pool, answer, die
                    os.kill(MAIN, signal.SIGSTOP)
                    signal.setitimer(signal.ITIMER_REAL, 0.05)
            os.register_at_fork(after_in_parent=in_zygote_after_fork)
            p = poolguard.Pool(1, retries=1, context=METHOD)
            print(p.map(tasks_mod.square, range(3)))
            time.sleep(0.5)   # the standby is ready
            open(TRIGGER, "w").close()
            try:
                print(p.apply(tasks_mod.exit_once, (os.path.abspath("marker"),)))
            except poolguard.PoolguardError as exc:
                print(type(exc).__name__, exc)
            print(p.map(tasks_mod.square, range(4)))
            p.terminate()
            code = 0
        finally:
            sys.stdout.flush()
            os._exit(code)
    """, method)
    assert out.splitlines() == ["[0, 1, 4]", "ran again", "[0, 1, 4, 9]"], out


@pytest.mark.parametrize("method", ["fork"])
def test_a_task_lost_with_the_zygote_names_it(tmp_path, method):
    """The zygote killed while a task runs: the worker dies with it (its
    parent-death signal), and the task's error says so, not that a job
    scheduler or a user killed the worker."""
    out = run(tmp_path, """
        import signal
        import tasks_mod
        p = poolguard.Pool(1, context=METHOD)
        running = p.apply_async(tasks_mod.pid_after, (60,))
        while [w.state for w in p.status()] != ["busy"]:
            time.sleep(0.01)
        os.kill(p.helper_pids()["zygote"], signal.SIGKILL)
        try:
            running.get(30)
        except poolguard.WorkerCrashedError as exc:
            print(exc.signal, "|", str(exc).replace("\\\\n", " / "))
        p.terminate()
    """, method)
    assert out.startswith("SIGKILL | "), out
    assert "died with the pool's zygote (pid" in out and "which was killed by SIGKILL" in out, out
    assert "came from outside" not in out, out


FORK_SERVER_PRELOAD = """
import sys
if __name__ == "__main__":   # nothing imported at the top: the script preloads nothing
    import multiprocessing, multiprocessing.forkserver
    if sys.argv[1] == "theirs":
        multiprocessing.set_forkserver_preload(["json"])
    import poolguard
    with poolguard.Pool(2, context="forkserver") as p:
        assert p.map(abs, [-1, -2]) == [1, 2]
        server = multiprocessing.forkserver._forkserver
        print(server._preload_modules)
        maps = open(f"/proc/{server._forkserver_pid}/maps").read()
        print("_ctypes" in maps)   # imported by poolguard, not by this script
"""


@pytest.mark.parametrize("user", ["none", "theirs"])
def test_the_fork_server_preloads_poolguard_beside_the_users_modules(tmp_path, user):
    """Under forkserver each worker is forked from the fork server: with
    poolguard imported there once, a worker does not import it again (about
    0.1 s of CPU a worker).  A preload list the user set is kept."""
    script = tmp_path / "prog.py"
    script.write_text(FORK_SERVER_PRELOAD)
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, str(script), user], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=SCRIPT_LIMIT)
    assert out.returncode == 0, out.stderr
    expected = ["__main__", "poolguard"] if user == "none" else ["json", "poolguard"]
    assert out.stdout.split("\n")[:2] == [str(expected), "True"], out.stdout
