"""Shared fixtures: start methods, deadlines, and a leak check after every test."""
from __future__ import annotations

import collections
import contextlib
import gc
import os
import random
import signal
import threading
import time

import psutil
import pytest

START_METHODS = ["fork", "spawn", "forkserver"]

# "At once" in a test: a death, a timeout or an interrupt is acted on within
# this many seconds even while another heavy job shares the two cores.  Far
# below any grace period a peer waits (billiard: 10 s) and below every test's
# timeout; the real figures (milliseconds) are measured in benchmarks/.
PROMPT = 3.0

# Figures for the summary line at the end of a run (README "Reliability").
STATS: "collections.Counter[str]" = collections.Counter()


def pytest_addoption(parser):
    parser.addoption("--soak", type=float, default=0.0, metavar="SECONDS",
                     help="run the chaos matrix (tests/outside/test_chaos.py) for this long "
                          "per case instead of one short round")


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: runs longer under --soak; its timeout grows "
                                       "with it")
    config.addinivalue_line("markers", "slurm: needs the one-node SLURM of tools/slurm.sh "
                                       "(CI part 80-slurm); skipped where it is not up")
    import warnings_policy   # a DeprecationWarning from poolguard's code fails the run
    if not config.pluginmanager.is_registered(warnings_policy):
        config.pluginmanager.register(warnings_policy, "poolguard-warnings-policy")


def pytest_collection_modifyitems(config, items):
    soak = config.getoption("soak")
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(pytest.mark.timeout(60 + 1.5 * soak))


def pytest_terminal_summary(terminalreporter):
    passed = len(terminalreporter.stats.get("passed", []))
    leaks = sum(1 for report in terminalreporter.stats.get("error", [])
                if "left behind" in str(report.longrepr) or "leaked" in str(report.longrepr))
    terminalreporter.write_line(
        f"poolguard reliability: {passed} tests passed, {STATS['kills']} random worker "
        f"kills survived, {STATS['results']} results checked under kills, leaks found: "
        f"{leaks}")


@pytest.fixture(params=START_METHODS)
def method(request) -> str:
    """Run the test under each start method (crash tests use this)."""
    return request.param


class Front:
    """``poolguard.Pool`` or ``poolguard.ProcessPoolExecutor`` behind one
    interface, for the tests that hold for both fronts."""

    def __init__(self, name: str, processes: int, method: str, **options):
        import poolguard
        self.name = name
        if name == "pool":
            self.pool = poolguard.Pool(processes, context=method, **options)
        else:
            self.pool = poolguard.ProcessPoolExecutor(processes, mp_context=method, **options)

    def submit(self, fn, *args, **guards):
        """Start ``fn(*args)``; *guards*: the call's own."""
        if self.name == "pool":
            return self.pool.apply_async(fn, args, **guards)
        if guards:
            return self.pool.with_options(**guards).submit(fn, *args)
        return self.pool.submit(fn, *args)

    def map(self, fn, items, **guards):
        """``fn`` over *items*, one call each; *guards*: the map's own."""
        if self.name == "pool":
            return self.pool.map(fn, items, chunksize=1, **guards)
        return list(self.pool.with_options(**guards).map(fn, items))

    def get(self, handle, timeout: float = 10):
        return handle.get(timeout) if self.name == "pool" else handle.result(timeout)

    @property
    def pids(self):
        return self.pool.pids

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.name == "pool":
            self.pool.terminate()
        else:
            self.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(params=["pool", "executor"])
def front(request):
    """Make a pool of the front under test: ``front(processes, method, **options)``."""
    return lambda processes, method, **options: Front(request.param, processes, method,
                                                      **options)


def wait_until(predicate, timeout: float, interval: float = 0.01, message: str = ""):
    """Poll *predicate* until it is true; fail the test after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout} s")
        time.sleep(interval)


def _helper_pids() -> set:
    """multiprocessing's own long-lived helpers, started once per session."""
    pids = set()
    from multiprocessing import forkserver, resource_tracker
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid:
        pids.add(pid)
    pid = getattr(resource_tracker._resource_tracker, "_pid", None)
    if pid:
        pids.add(pid)
    return pids


# Processes a module-scoped fixture keeps across its tests (a dask cluster's
# nannies and workers).  Their multiprocessing helpers are kept too; the
# processes they start are not.
KEPT_PIDS: set = set()
_HELPER_COMMANDS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")


def _kept(child: psutil.Process) -> bool:
    if child.pid in KEPT_PIDS:
        return True
    if not KEPT_PIDS or child.ppid() not in KEPT_PIDS:
        return False
    command = " ".join(child.cmdline())
    return any(helper in command for helper in _HELPER_COMMANDS)


def _children() -> set:
    out = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and not _kept(child):
                out.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return out - _helper_pids()


# Set by a module whose fixture runs a dask scheduler in this process: its
# connections (and its clients') come and go with their pools, not ours.
IGNORE_SOCKETS = False


def _fds() -> set:
    # A descriptor whose link cannot be read is gone already: the listing's
    # own (the lowest free number, closed by now) or another that came and
    # went.  Counting the listing's would flag a new number whenever a hole
    # below it was filled by an ignored socket.
    found = {fd: _describe_fd(fd) for fd in os.listdir("/proc/self/fd")}
    return {fd for fd, what in found.items()
            if what != "?" and not (IGNORE_SOCKETS and what.startswith("socket:"))}


def _our_threads() -> list:
    return [t for t in threading.enumerate() if t.name.startswith("poolguard-")]


@pytest.fixture(scope="session", autouse=True)
def _checkpoint_key(tmp_path_factory):
    """Checkpoint entries are authenticated with the user's key file: the
    tests (and the scripts they start) use one of their own, not the home's."""
    path = tmp_path_factory.mktemp("key") / "checkpoint.key"
    os.environ["POOLGUARD_CHECKPOINT_KEY"] = str(path)
    yield path


@pytest.fixture(scope="session", autouse=True)
def _helpers_started():
    # Start the fork server and resource tracker up front so the leak check
    # does not count them (they live as long as the test session).
    from multiprocessing import forkserver, resource_tracker
    forkserver.ensure_running()
    resource_tracker.ensure_running()
    yield


def _test_timeout(request) -> float:
    marker = request.node.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    value = request.config.getoption("timeout", None) or request.config.getini("timeout")
    return float(value or 0)


def dump_stacks() -> None:
    """Every thread of this process, then every live pool's workers (SIGUSR1
    makes a worker print its threads' stacks to stderr and go on).  Only pids
    our pools started are signalled."""
    import faulthandler
    import sys
    from poolguard.engine import at_exit
    sys.stderr.write("\n=== about to time out: stacks of the test process ===\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(all_threads=True)
    for pool_engine in list(at_exit.live_engines):
        for pid in pool_engine.pids:
            sys.stderr.write(f"=== worker {pid} ===\n")
            sys.stderr.flush()
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
    time.sleep(0.5)     # let the workers write before the timeout fires


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Every test must leave no child process, thread or descriptor behind;
    one about to hit its timeout first dumps every stack (dump_stacks)."""
    fds_before = _fds()
    timeout = _test_timeout(request)
    guard = threading.Timer(max(timeout * 0.8, timeout - 10), dump_stacks) if timeout else None
    if guard is not None:
        guard.daemon = True
        guard.name = "hang-guard"
        guard.start()
    yield
    if guard is not None:
        guard.cancel()
        guard.join()
    gc.collect()
    wait_until(lambda: not _children(), 10, 0.02,
               "child processes left behind")
    wait_until(lambda: not _our_threads(), 10, 0.02,
               "poolguard threads left behind")
    try:
        wait_until(lambda: _fds() <= fds_before, 5, 0.02)
    except AssertionError:
        leaked = {fd: _describe_fd(fd) for fd in _fds() - fds_before}
        raise AssertionError(f"file descriptors leaked: {leaked}") from None


def _describe_fd(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


@contextlib.contextmanager
def killing_workers(pool, interval: float, seed: int):
    """SIGKILL a random worker of *pool* (pids it started, nothing else) every
    *interval* seconds while the block runs; yields the list of kills."""
    rng = random.Random(seed)
    stop = threading.Event()
    kills: list = []

    def chaos():
        while not stop.wait(interval):
            pids = pool.pids
            if pids:
                victim = rng.choice(pids)
                try:
                    os.kill(victim, signal.SIGKILL)
                    kills.append(victim)
                except ProcessLookupError:
                    pass
    thread = threading.Thread(target=chaos)
    thread.start()
    try:
        yield kills
    finally:
        stop.set()
        thread.join()
        STATS["kills"] += len(kills)
