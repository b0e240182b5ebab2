"""The pool's helper processes under every start method: multiprocessing's
fork server killed while it starts a worker, a chaos killer picking among
every descendant of the pool's process, descriptors running out at each
step of a worker's start, the fork server left alive by a pool closed
while it starts a worker.  Fresh interpreters, real signals (see
test_helpers.py for the zygote's own cases)."""
from __future__ import annotations

import pytest

from scripts import HELPER_TASKS as TASKS, run_helper_script as run
from test_helpers_killed import HELPERS


@pytest.mark.parametrize("method", ["forkserver"])
def test_the_fork_server_killed_while_it_starts_a_worker_changes_no_result(tmp_path, method):
    """The fork server, stopped, is killed while the pool waits for it to
    report a new worker's pid: multiprocessing's start fails with EOFError.
    Before, that failed the map's remaining tasks ("WorkerInitError: could
    not start a worker: EOFError: unexpected EOF"); the start is made again
    through the new fork server multiprocessing makes.  The death is said
    once (before, not at all)."""
    out = run(tmp_path, """
        import signal, warnings
        from multiprocessing import forkserver
        import tasks_mod
        warned = []
        warnings.showwarning = lambda message, *_: warned.append(str(message))
        p = poolguard.Pool(1, maxtasksperchild=1, context=METHOD)
        print(p.map(tasks_mod.square, [5]))
        time.sleep(0.5)   # its replacement has started
        server = forkserver._forkserver._forkserver_pid
        os.kill(server, signal.SIGSTOP)
        result = p.map_async(tasks_mod.square, range(3), chunksize=1)
        # The next replacement's start waits for the stopped server to say
        # its pid (after the reap of the worker before, which waits up to
        # 1 s for the server to report its status).
        supervisor = next(t for t in threading.enumerate() if "supervisor" in t.name)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            frame = sys._current_frames().get(supervisor.ident)
            names = []
            while frame is not None:
                names.append(frame.f_code.co_name)
                frame = frame.f_back
            if "read_signed" in names:
                break
            time.sleep(0.05)
        os.kill(server, signal.SIGKILL)
        try:
            print(result.get(20))
        except poolguard.PoolguardError as exc:
            print(type(exc).__name__, repr(str(exc)))
        print(p.map(tasks_mod.square, range(4)))
        print([w.replace(str(server), "N") for w in warned])
        p.terminate()
    """, method)
    assert out.splitlines() == [
        "[25]", "[0, 1, 4]", "[0, 1, 4, 9]",
        "[\"poolguard: multiprocessing's fork server (pid N), the process that forks the "
        "workers, was killed by SIGKILL; a new one is started for the next workers\"]"], out


def test_a_stopped_helper_delays_only_the_workers_it_must_start(tmp_path, method):
    """Every helper SIGSTOPped: the zygote (fork), or multiprocessing's fork
    server and resource tracker and the workers' guardians (forkserver,
    spawn).  Before, a request waited for the zygote or the fork server on
    the supervisor's thread, and nothing else was handled until SIGCONT.  A
    worker is SIGKILLed meanwhile (its death reported within 5 s) and a
    healthy short task runs on the other within 5 s; after SIGCONT the
    replacement comes and the pool is exactly right (results, the death's
    signal, status())."""
    out = run(tmp_path, """
        import signal
        import tasks_mod
        from helpers_mod import helpers
        p = poolguard.Pool(2, context=METHOD)
        p.map(tasks_mod.pid_after, [0.2, 0.2], chunksize=1)
        stopped = helpers(p, METHOD)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            victim = p.pids[0]
            doomed = p.apply_async(tasks_mod.pid_after, (30,))
            time.sleep(0.3)
            started = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            try:
                doomed.get(10)
            except poolguard.WorkerCrashedError as exc:
                print("death", time.monotonic() - started < 5, exc.signal)
            started = time.monotonic()
            print("healthy", p.apply_async(tasks_mod.square, (7,)).get(10),
                  time.monotonic() - started < 5)
            time.sleep(1.0)
        finally:
            for pid in stopped:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass   # the killed worker's guardian, gone with its group
        print(p.map(tasks_mod.square, range(6), chunksize=1))
        deadline = time.monotonic() + 10
        while len([s for s in p.status() if s.state == "idle"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        print(len(p.status()), sorted({s.state for s in p.status()}))
        p.terminate()
    """, method, modules={"helpers_mod": HELPERS})
    assert out.splitlines() == ["death True SIGKILL", "healthy 49 True",
                                "[0, 1, 4, 9, 16, 25]", "2 ['idle']"], out


def test_a_killer_among_every_descendant_changes_no_result(tmp_path, method):
    """A chaos killer picks among every descendant of the pool's process:
    workers, the zygote and its standby (fork), multiprocessing's fork
    server and resource tracker (spawn, forkserver), the workers' guardians.
    With retries, every result is right.  Workers still starting are left
    alone, as in test_fork_safety.py: a spawn start outlasts the killer's
    interval on a loaded machine."""
    out = run(tmp_path, """
        import collections, random, signal, warnings
        import psutil
        import tasks_mod
        warnings.simplefilter("ignore", poolguard.HelperDiedWarning)
        p = poolguard.Pool(3, retries=30, context=METHOD)
        me = psutil.Process()
        kills = collections.Counter()
        def role(proc):
            if proc.pid in p.pids:
                return "worker"
            if proc.ppid() == os.getpid():
                return "helper"
            return "other"
        def killer(stop):
            rng = random.Random(11)
            while not stop.wait(0.1):
                starting = {s.pid for s in p.status() if s.state == "starting"}
                try:
                    procs = [c for c in me.children(recursive=True) if c.pid not in starting]
                except psutil.Error:
                    continue
                if procs:
                    victim = rng.choice(procs)
                    try:
                        what = role(victim)
                        victim.send_signal(signal.SIGKILL)
                        kills[what] += 1
                    except psutil.Error:
                        pass
        stop = threading.Event()
        thread = threading.Thread(target=killer, args=(stop,))
        thread.start()
        try:
            results = [p.map(tasks_mod.sleep_square, range(20), chunksize=1) for _ in range(4)]
        finally:
            stop.set()
            thread.join()
        print(all(r == [x * x for x in range(20)] for r in results))
        print(p.map(tasks_mod.square, range(4)))
        print(dict(kills), file=sys.stderr)
        p.terminate()
    """, method, modules={"tasks_mod": TASKS + """
def sleep_square(x):
    time.sleep(0.05)
    return x * x
"""})
    assert out.splitlines() == ["True", "[0, 1, 4, 9]"], out


def test_out_of_descriptors_fails_only_what_cannot_be_served_and_heals(tmp_path, method):
    """RLIMIT_NOFILE is lowered to 3, then to the lowest free descriptor
    plus 0, 1, ... 13, so that a worker's start runs out at each of its
    steps (its pipes, the pidfd, multiprocessing's own pipes and sentinel):
    each map, whose tasks all need new workers (maxtasksperchild=1), either
    gives every result or fails with an error naming the resource, never hangs.
    Raised again, the limit lets the pool serve as before.  No helper dies
    of it: before, multiprocessing's client ran out after it had connected
    to the fork server, and the connection closed with nothing sent killed
    CPython 3.11's fork server (3 of them in one run, each with a traceback
    on stderr and nothing said by the pool)."""
    out = run(tmp_path, """
        import resource, warnings
        from multiprocessing import forkserver
        import tasks_mod
        warned = []
        warnings.showwarning = lambda message, *_: warned.append(str(message))
        def server():
            return forkserver._forkserver._forkserver_pid if METHOD == "forkserver" else 0
        p = poolguard.Pool(2, maxtasksperchild=1, context=METHOD)
        print(p.map(tasks_mod.square, range(4)))
        first_server = server()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        outcomes = set()
        for spare in [None, *range(14)]:
            time.sleep(0.3)   # the replacements of the last round have started (or failed)
            lowest_free = os.dup(0)   # no new descriptor below the limit but "spare" ones
            os.close(lowest_free)
            # (The descriptors of the workers that retire meanwhile are free
            # again below the limit: only a limit of 3, stdio's, sure to fail.)
            limit = 3 if spare is None else lowest_free + spare
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
            try:
                result = p.map_async(tasks_mod.square, range(4), chunksize=1)
                result.wait(20)
                outcome = "results" if result.get(0) == [0, 1, 4, 9] else "wrong results"
            except poolguard.WorkerInitError as exc:
                outcome = "named" if "out of file descriptors" in str(exc) else repr(exc)
            except Exception as exc:   # a hang (TimeoutError) or another error
                outcome = repr(exc)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            outcomes.add(outcome)
        print(sorted(outcomes))
        print(p.map(tasks_mod.square, range(6), chunksize=1))
        print("helpers kept", server() == first_server, warned)
        p.terminate()
    """, method)
    lines = out.splitlines()
    assert lines[0] == "[0, 1, 4, 9]" and lines[2] == "[0, 1, 4, 9, 16, 25]", out
    assert lines[1] in ("['named']", "['named', 'results']"), out
    assert lines[3] == "helpers kept True []", out



@pytest.mark.parametrize("method", ["forkserver"])
def test_descriptors_taken_while_a_start_connects_leave_the_fork_server_alive(tmp_path,
                                                                              method):
    """Every free descriptor is taken (as by another thread of the process)
    at the instant a start connects to the fork server, and freed when the
    start sends its descriptors.  Before, a start checked first that
    descriptors were free, but multiprocessing's client made its pipes
    after it had connected: they failed there, and the empty connection
    killed CPython 3.11's fork server (in the test above, 1 run in 5, when
    the supervisor made a worker's pipes meanwhile).  A start now makes
    them before it connects: the worker starts and the fork server stays."""
    out = run(tmp_path, """
        import resource, warnings
        from multiprocessing import forkserver
        import tasks_mod
        warned = []
        warnings.showwarning = lambda message, *_: warned.append(str(message))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        armed, taken, lock = threading.Event(), [], threading.Lock()
        def free():
            with lock:
                while taken:
                    os.close(taken.pop())
        def take_at_connect(event, args):
            if not armed.is_set() or threading.current_thread().name != "poolguard-starter":
                return
            if event == "socket.connect" and args[1] == forkserver._forkserver._forkserver_address:
                armed.clear()   # one start only
                with lock:
                    try:
                        while True:
                            taken.append(os.dup(0))
                    except OSError:
                        pass
            elif event == "socket.sendmsg":
                free()
        sys.addaudithook(take_at_connect)
        p = poolguard.Pool(1, maxtasksperchild=1, context=METHOD)
        print(p.map(tasks_mod.square, [3]))
        server = forkserver._forkserver._forkserver_pid
        time.sleep(0.5)   # the replacement has started
        armed.set()
        result = p.map_async(tasks_mod.square, range(2), chunksize=1)
        result.wait(20)
        free()
        print("taken", not armed.is_set())
        try:
            print(result.get(0))
        except Exception as exc:
            print(repr(exc))
        print(p.map(tasks_mod.square, range(3)))
        print("same fork server", forkserver._forkserver._forkserver_pid == server, warned)
        p.terminate()
    """, method)
    assert out.splitlines() == ["[9]", "taken True", "[0, 1]", "[0, 1, 4]",
                                "same fork server True []"], out

HELD_PICKLE = """
import threading
pickling, release = threading.Event(), threading.Event()

class HeldWhilePickled:
    # Pickled with the worker's process, after the pool's descriptors it
    # carries: holds the start there until told.
    def __reduce__(self):
        if threading.current_thread().name == "poolguard-starter" and not pickling.is_set():
            pickling.set()
            release.wait(20)
        return (int, (0,))

def init(arg):
    pass
"""


@pytest.mark.parametrize("method", ["forkserver"])
def test_a_pool_closed_while_a_start_is_under_way_leaves_the_fork_server_alive(tmp_path,
                                                                               method):
    """The pool terminated while its starter thread is between pickling a
    worker's process (which names the parent-alive pipe and the slots by
    descriptor number) and sending those descriptors to the fork server.
    Before, the pool closed them meanwhile: sendmsg failed with EBADF after
    the connection was made, and the empty connection killed CPython 3.11's
    fork server (EOFError in recvfds); the next pool made a new one.  Lower
    descriptors are freed meanwhile so that multiprocessing's own socket and
    pipes do not take the closed numbers."""
    out = run(tmp_path, """
        from multiprocessing import forkserver
        import held
        forkserver.ensure_running()
        server = forkserver._forkserver._forkserver_pid
        below = [os.open(os.devnull, os.O_RDONLY) for _ in range(8)]
        p = poolguard.Pool(1, initializer=held.init, initargs=(held.HeldWhilePickled(),),
                           context=METHOD)
        print("held", held.pickling.wait(20))
        p.terminate()
        for fd in below:
            os.close(fd)
        held.release.set()
        for thread in threading.enumerate():
            if thread.name == "poolguard-starter":
                thread.join(20)
        with poolguard.Pool(1, context=METHOD) as q:
            print(q.map(abs, [-1, -2]))
        print("same fork server", forkserver._forkserver._forkserver_pid == server)
    """, method, modules={"held": HELD_PICKLE})
    assert out.splitlines() == ["held True", "[1, 2]", "same fork server True"], out
