"""Fork safety: each case runs in a fresh interpreter, where nothing is imported
beforehand, because the hazards depend on import state (a lazy import on the
first call, a module being imported by another thread at the instant of a
fork).  A hung script prints its stacks (faulthandler) and exits; the test
kills its whole process group if even that fails."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Optional

import pytest

from conftest import wait_until
from scripts import SCRIPT_LIMIT, owner_script, run_script

SLOW_MODULE = "import time\ntime.sleep({delay})\nVALUE = {value}\n"

TASKS = """
import importlib, os, time

def use_module(args):
    name, x = args
    return importlib.import_module(name).VALUE + x

def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()

def square(x):
    return x * x

def open_files(pid=None):
    # The pipes (as "pipe:[inode]") and argument-buffer files a process
    # holds, past stdin, stdout and stderr.
    pids = pid or os.getpid()
    pipes, files = [], []
    for name in os.listdir(f"/proc/{pids}/fd"):
        try:
            target = os.readlink(f"/proc/{pids}/fd/{name}")
        except OSError:
            continue
        if int(name) > 2 and target.startswith("pipe:"):
            pipes.append(target)
        elif "poolguard-args" in target:
            files.append(target)
    return pipes, files

def own_files(seconds):
    time.sleep(seconds)
    return (os.getpid(), *open_files())

def hold(data, seconds):
    time.sleep(seconds)
    return len(data)
"""


def run(tmp_path: Path, body: str, method: str, timeout: float = SCRIPT_LIMIT + 15,
        modules: Optional[dict] = None) -> str:
    return run_script(tmp_path, body, method, timeout, {"tasks_mod": TASKS, **(modules or {})})


@pytest.mark.parametrize("front", ["pool", "executor"])
def test_lambda_as_the_first_call(tmp_path, method, front):
    """The issue's first program: hung under fork when the supervisor forked
    workers while the caller was importing cloudpickle to pickle the lambda."""
    body = {
        "pool": """
            k = 1
            with poolguard.Pool(2, context=METHOD) as p:
                print(p.map(lambda x: x + k, range(4)))
        """,
        "executor": """
            k = 1
            with poolguard.ProcessPoolExecutor(2, mp_context=METHOD) as ex:
                print(list(ex.map(lambda x: x + k, range(4))))
        """}[front]
    assert run(tmp_path, body, method).split() == ["[1,", "2,", "3,", "4]"]


def test_caller_imports_a_slow_module_right_after_pool(tmp_path, method):
    out = run(tmp_path, """
        import tasks_mod
        p = poolguard.Pool(2, context=METHOD)
        import slowmod            # its body sleeps while workers start
        print(p.map(tasks_mod.use_module, [("slowmod", i) for i in range(6)]))
        p.terminate()
    """, method, modules={"slowmod": SLOW_MODULE.format(delay=0.5, value=100)})
    assert out.strip() == "[100, 101, 102, 103, 104, 105]"


def test_thread_importing_while_workers_are_replaced_and_killed(tmp_path, method):
    """A user thread imports module after module (slow bodies) while every
    task ends its worker (maxtasksperchild=1) and a killer SIGKILLs workers;
    each task imports one of those modules.  The killer picks among the
    workers that have started: under spawn a start (a new interpreter)
    takes longer on a loaded machine than the killer's interval, and kills
    of starting workers alone stalled the map (at a load of 30: 281
    kills, 26 of 40 results after 45 s)."""
    modules = {f"slow_{i}": SLOW_MODULE.format(delay=0.05, value=i * 10) for i in range(16)}
    out = run(tmp_path, """
        import importlib, random, signal
        import tasks_mod
        p = poolguard.Pool(2, maxtasksperchild=1, retries=20, context=METHOD)
        def importer():
            for i in range(16):
                importlib.import_module(f"slow_{i}")
        def killer(stop):
            rng = random.Random(5)
            while not stop.wait(0.15):
                pids = [s.pid for s in p.status() if s.state != "starting"]
                if pids:
                    try:
                        os.kill(rng.choice(pids), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        stop = threading.Event()
        threads = [threading.Thread(target=importer), threading.Thread(target=killer, args=(stop,))]
        for t in threads:
            t.start()
        work = [(f"slow_{i % 16}", i) for i in range(40)]
        result = p.map(tasks_mod.use_module, work, chunksize=1)
        stop.set()
        for t in threads:
            t.join()
        p.terminate()
        print(result == [(i % 16) * 10 + i for i in range(40)])
    """, method, modules=modules)
    assert out.strip() == "True"


def test_second_pool_while_the_first_is_busy(tmp_path, method):
    out = run(tmp_path, """
        import tasks_mod
        first = poolguard.Pool(2, context=METHOD)
        busy = first.map_async(tasks_mod.pid_after, [0.5] * 4, chunksize=1)
        with poolguard.Pool(2, context=METHOD) as second:
            print(second.map(lambda x: x * 2, range(5)))
            print(second.map(tasks_mod.square, range(5)))
        print(len(busy.get()))
        first.terminate()
    """, method)
    assert out.split("\n")[:3] == ["[0, 2, 4, 6, 8]", "[0, 1, 4, 9, 16]", "4"]


def test_another_librarys_fork_after_pool_does_not_hold_our_pool_open(tmp_path, method):
    """multiprocessing.Pool workers forked after Pool() inherited the zygote's
    socket, so the zygote never saw it close and terminate() hung forever
    (found by the benchmark run).  Children forked from the pool's process
    now close what only the pool may hold."""
    out = run(tmp_path, """
        import multiprocessing
        import tasks_mod
        ours = poolguard.Pool(2, context=METHOD)
        print(ours.map(tasks_mod.square, range(3)))
        theirs = multiprocessing.get_context("fork").Pool(2)
        print(theirs.map(tasks_mod.square, range(3)))
        start = time.monotonic()
        ours.terminate()
        print(time.monotonic() - start < 3.0)
        theirs.terminate()
    """, method)
    assert out.split() == ["[0,", "1,", "4]", "[0,", "1,", "4]", "True"]


def test_subprocess_run_while_workers_are_replaced(tmp_path, method):
    """A worker forked from the caller while it runs subprocess.run() kept
    the child's error pipe open, and Popen() waited for it forever.  Two
    tasks, hence two replacements, are queued before each run: only a start
    while the caller runs one tests anything (150 tasks queued at once took
    150 interpreter starts under spawn, most after the last run, and more
    than the script's 45 s at a load of 30)."""
    out = run(tmp_path, """
        import subprocess
        import tasks_mod
        p = poolguard.Pool(2, maxtasksperchild=1, context=METHOD)
        pending = []
        for i in range(25):
            pending.append(p.map_async(tasks_mod.square, [2 * i, 2 * i + 1], chunksize=1))
            subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=30)
        print(sum(sum(r.get()) for r in pending))
        p.terminate()
    """, method)
    assert out.strip() == str(sum(x * x for x in range(50)))


@pytest.mark.parametrize("front", ["pool", "executor"])
def test_initargs_carry_lock_event_and_queue(tmp_path, method, front):
    """As with the stdlib: initargs travel with the process, so they may hold
    synchronisation objects; first and replacement workers all get them."""
    make = {"pool": "poolguard.Pool(2, initializer=tasks_init.init, initargs=args, "
                    "maxtasksperchild=1, context=ctx)",
            "executor": "poolguard.ProcessPoolExecutor(2, mp_context=ctx, "
                        "initializer=tasks_init.init, initargs=args, max_tasks_per_child=1)"}
    call = {"pool": "pool.map(tasks_init.task, range(6), chunksize=1)",
            "executor": "list(pool.map(tasks_init.task, range(6)))"}
    out = run(tmp_path, f"""
        import multiprocessing
        import tasks_init
        ctx = multiprocessing.get_context(METHOD)
        lock, event, queue = ctx.Lock(), ctx.Event(), ctx.Queue()
        args = (lock, event, queue)
        pool = {make[front]}
        event.set()               # after the start: workers see the shared event
        results = {call[front]}
        pids = {{queue.get(timeout=20) for _ in range(6)}}
        print(results, len(pids))
        pool.__exit__(None, None, None)
    """, method, modules={"tasks_init": """
import os
state = {}
def init(lock, event, queue):
    state.update(lock=lock, event=event, queue=queue)
def task(x):
    with state["lock"]:
        state["queue"].put(os.getpid())
    return state["event"].is_set()
"""})
    assert out.strip() == "[True, True, True, True, True, True] 6"


def test_every_fork_comes_from_a_single_threaded_process(tmp_path):
    """Under fork, the zygote is forked before any thread of the pool starts,
    and forks every worker, first and replacement, from its one thread.
    (spawn and forkserver never fork the caller: not applicable.)"""
    log = tmp_path / "forks.log"
    out = run(tmp_path, f"""
        import signal
        import tasks_mod
        fd = os.open({str(log)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.register_at_fork(before=lambda: os.write(
            fd, f"{{os.getpid()}} {{threading.active_count()}}\\n".encode()))
        with poolguard.Pool(2, maxtasksperchild=2, retries=5, context=METHOD) as p:
            print(p.map(tasks_mod.square, range(10), chunksize=1) == [x * x for x in range(10)])
            # A worker that retired (maxtasksperchild) may be gone already, and
            # none may be live while the replacements of two start.
            for victim in p.pids[:1]:
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            print(p.map(lambda x: x + 1, range(6), chunksize=1))
    """, "fork")
    assert out.split("\n")[:2] == ["True", "[1, 2, 3, 4, 5, 6]"]
    forks = [line.split() for line in log.read_text().splitlines()]
    assert len(forks) >= 1 + 5 + 1, forks     # the zygote, 5+ workers, a replacement
    assert {count for _pid, count in forks} == {"1"}, forks
    assert len({pid for pid, _count in forks}) == 2, forks   # the caller, then the zygote


@pytest.mark.parametrize("method", ["fork"])
def test_workers_forked_with_the_zygote_hold_only_their_own_pipes(tmp_path, method):
    """The zygote forks the first workers at its birth, from pipes made
    before it: no worker may hold another's pipes (it would keep a dead
    worker's pipes open), and the zygote none of them; neither may hold the
    file of a large argument that another pool had open at that moment."""
    out = run(tmp_path, """
        import json
        import tasks_mod
        with poolguard.Pool(1, context=METHOD) as first:
            # A bytearray of 2 MiB goes in a file, held open until its task ends.
            held = first.apply_async(tasks_mod.hold, (bytearray(2 << 20), 3.0))
            time.sleep(0.5)
            with poolguard.Pool(3, context=METHOD) as p:
                seen = {}
                while len(seen) < 3:
                    for pid, pipes, files in p.map(tasks_mod.own_files, [0.3] * 3, chunksize=1):
                        seen[pid] = [pipes, files]
                ends = {w.pid: [os.readlink(f"/proc/self/fd/{fd}")
                                for fd in (w.task_fd, w.reader.fd, w.crash_fd)]
                        for w in p._engine._workers}
                zygote = tasks_mod.open_files(p.helper_pids()["zygote"])
            print(json.dumps({"seen": seen, "ends": ends, "zygote": zygote,
                              "held": held.get(30)}))
    """, method)
    data = json.loads(out)
    assert data["held"] == 2 << 20
    seen, ends = data["seen"], data["ends"]
    assert sorted(seen) == sorted(ends) and len(ends) == 3, data
    for pid, (pipes, files) in seen.items():
        assert files == [], (pid, files)
        assert set(ends[pid]) <= set(pipes), (pid, ends[pid], pipes)   # its own: all three
        for other, theirs in ends.items():
            if other != pid:
                assert not set(theirs) & set(pipes), (pid, other, theirs, pipes)
    zygote_pipes, zygote_files = data["zygote"]
    assert zygote_files == [], zygote_files
    assert not {p for theirs in ends.values() for p in theirs} & set(zygote_pipes), data


@pytest.mark.parametrize("method", ["fork"])
def test_a_worker_that_dies_while_starting_with_a_task_sent_runs_it_elsewhere(tmp_path, method):
    """Without an initializer, the first tasks are written to workers still
    starting.  The first worker the zygote forks kills itself with SIGKILL
    before its loop: its task runs in another worker, counted as no attempt
    and blamed on nothing."""
    flag = tmp_path / "killed"
    out = run(tmp_path, f"""
        import signal
        import tasks_mod
        owner = os.getpid()
        def die_once():
            if os.getppid() != owner:   # a worker, forked by the zygote
                try:
                    os.close(os.open({str(flag)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    return
                os.kill(os.getpid(), signal.SIGKILL)
        os.register_at_fork(after_in_child=die_once)
        with poolguard.Pool(2, context=METHOD) as p:
            print(p.apply(tasks_mod.square, (7,)), p.map(tasks_mod.square, range(5)))
    """, method)
    assert flag.exists()
    assert out.split("\n")[0] == "49 [0, 1, 4, 9, 16]", out


def test_a_task_stuck_past_its_timeout_names_the_nested_function(tmp_path, method):
    out = run(tmp_path, """
        def innermost_wait(n):
            time.sleep(n)
        def outer(n):
            innermost_wait(n)
        with poolguard.Pool(1, task_timeout=0.5, context=METHOD) as p:
            try:
                p.apply(outer, (30,))
            except poolguard.TaskTimeoutError as exc:
                print(exc)
    """, method)
    head, _, stack = out.partition("when task_timeout fired (every thread):")
    assert "outer(30)" in head and "task_timeout=0.5 s" in head, out
    assert "came from outside" not in out and "Likely cause" not in out, out
    assert "in innermost_wait" in stack and "in outer" in stack, out
    assert "_watch_parent" not in stack and "poolguard/worker" not in stack, out


@pytest.mark.parametrize("method", ["fork"])
def test_the_zygote_killed_is_no_hang_and_later_calls_work(tmp_path, method):
    """Killed while idle: a call made while its workers are dying may lose
    a task to their deaths (no retries here), never hangs; the next call
    runs on workers of its standby (test_helpers_killed.py has the details)."""
    out = run(tmp_path, """
        import signal
        import tasks_mod
        p = poolguard.Pool(2, context=METHOD)
        print(p.map(tasks_mod.square, range(4)))
        time.sleep(0.3)   # the standby is ready
        zygote = p.helper_pids()["zygote"]
        os.kill(zygote, signal.SIGKILL)
        for attempt in range(2):
            try:
                print(len(p.map(tasks_mod.pid_after, [0.2] * 4)))
            except poolguard.PoolguardError as exc:
                print(type(exc).__name__, "|", str(exc).replace("\\n", " / "))
        print(p.map(tasks_mod.square, range(4)))
        p.terminate()
        print("done")
    """, method)
    lines = out.splitlines()
    assert lines[0] == "[0, 1, 4, 9]" and lines[-2:] == ["[0, 1, 4, 9]", "done"], out
    for line in lines[1:3]:   # a task lost to a death says it died with the zygote
        assert line == "4" or (line.startswith("WorkerCrashedError |")
                               and "died with the pool's zygote" in line), out


@pytest.mark.parametrize("method", ["fork"])
def test_the_zygote_killed_at_once_gives_a_clear_error_and_no_busy_loop(tmp_path, method):
    """Killed while it forks the first workers, or before the supervisor has
    read its answers: a call fails with the zygote's death (or, when the
    workers were forked and the kill had not landed yet, succeeds), never
    hangs, and the idle pool does not spin on the dead zygote's socket."""
    out = run(tmp_path, """
        import signal
        import tasks_mod
        for pause in [0.3, 0, 0, 0, 0]:
            p = poolguard.Pool(2, context=METHOD)
            os.kill(p.helper_pids()["zygote"], signal.SIGKILL)
            time.sleep(pause)
            try:
                print(p.map(tasks_mod.square, range(4)))
            except poolguard.PoolguardError as exc:
                print(type(exc).__name__, "|", str(exc).replace("\\n", " / "))
            if pause:
                before = sum(os.times()[:2])
                time.sleep(1.0)
                print("cpu", sum(os.times()[:2]) - before)
            p.terminate()
        print("done")
    """, method)
    lines = out.splitlines()
    assert lines[-1] == "done" and len(lines) == 7, out
    # The kill may land after the zygote had forked the workers and its
    # standby, which then takes over: the map succeeds.  Otherwise the error
    # names the zygote's death.
    for line in [lines[0], *lines[2:6]]:
        assert line == "[0, 1, 4, 9]" or ("|" in line and "zygote" in line), out
    assert float(lines[1].split()[1]) < 0.3, out   # no busy loop either way


def test_nothing_of_the_pool_outlives_a_killed_owner(tmp_path, method):
    """The owner SIGKILLed: the workers (and the zygote, under fork) are gone
    within 2 s, and so is a grandchild a task started that ignores SIGTERM
    (killed with its worker's group: by the zygote, or by the worker's
    guardian under spawn and forkserver)."""
    with owner_script(tmp_path, """
        import os, subprocess, sys, time
        import poolguard
        def spawn_grandchild(_):
            child = subprocess.Popen([sys.executable, "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
            return child.pid
        if __name__ == "__main__":
            p = poolguard.Pool(2, context=sys.argv[1])
            grandchild = p.apply(spawn_grandchild, (0,))
            # Every worker past its start-up (a worker still starting exits
            # as soon as it gets going, which a loaded machine may delay).
            while [s for s in p.status() if s.state == "starting"]:
                time.sleep(0.01)
            report([*p.pids, grandchild, *p.helper_pids().values()])
            time.sleep(120)
    """, method) as (owner, pids):
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        wait_until(lambda: not [pid for pid in pids if _alive(pid)], 2.0, 0.02,
                   f"left alive 2 s after the owner's death: "
                   f"{[pid for pid in pids if _alive(pid)]}")


@pytest.mark.parametrize("method", ["fork"])
def test_a_busy_worker_dies_with_its_owner_even_when_the_zygote_is_stopped(tmp_path, method):
    """The zygote kills the workers when the pool's process dies; a zygote
    that cannot act (stopped) leaves it to each worker's own watch on the
    pool's process, which runs from the end of its first task."""
    with owner_script(tmp_path, """
        import os, sys, time
        import poolguard
        if __name__ == "__main__":
            p = poolguard.Pool(1, context=sys.argv[1])
            assert p.apply(pow, (3, 2)) == 9            # its first task, answered
            busy = p.apply_async(time.sleep, (120,))
            while not [s for s in p.status() if s.state == "busy"]:
                time.sleep(0.01)
            report([p.pids[0], p.helper_pids()["zygote"]])
            time.sleep(120)
    """, method) as (owner, (worker, zygote)):
        try:
            os.kill(zygote, signal.SIGSTOP)
            os.kill(owner.pid, signal.SIGKILL)
            owner.wait(10)
            wait_until(lambda: not _alive(worker), 2.0, 0.02,
                       "the worker outlived its owner by 2 s while the zygote was stopped")
        finally:
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.kill(zygote, sig)   # its group is the owner's: gone with it too
                except ProcessLookupError:
                    pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False

