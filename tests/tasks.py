"""Task functions for the tests.  They live in a module of their own so that
workers started by spawn and forkserver can import them."""
from __future__ import annotations

import ctypes
import os
import sys
import signal
import subprocess
import threading
import time


def murder_bot(i):
    if i == 2:
        os.system("kill -9 %d" % os.getpid())
    return f"OK {i}"


def square(x):
    return x * x


def add(a, b):
    return a + b


def getpid(_=None):
    return os.getpid()


def die(how: str):
    """Kill the calling worker the way *how* says."""
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "exit":
        os._exit(3)
    elif how == "segfault":
        ctypes.string_at(0)
    elif how == "abort":
        os.abort()
    time.sleep(30)   # the signal may take a moment to land
    raise AssertionError("still alive")


def die_at(x, at: int, how: str = "sigkill"):
    if x == at:
        die(how)
    return x * 2


def announce_and_sleep(path: str, seconds: float = 30.0):
    """Write our pid to *path* atomically, then sleep (the test kills us)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(seconds)
    return "slept"


def sleep_then(seconds: float, value=None):
    time.sleep(seconds)
    return value


def sleep_then_die(seconds: float, how: str = "sigkill"):
    time.sleep(seconds)
    die(how)


def fail(x):
    raise ValueError(f"bad input {x}")


def _refuse_to_load():
    raise RuntimeError("this object refuses to be unpickled")


class FailsToLoad:
    """Pickles; unpickling it raises."""

    def __reduce__(self):
        return _refuse_to_load, ()


class TwoArgError(Exception):
    """Pickles, but unpickling calls __init__ with one argument and fails.
    Importing dask makes exceptions of classes that exist then unpickle
    without __init__ (tblib); the attribute that refuses to load fails them
    either way."""

    def __init__(self, a, b):
        super().__init__(f"two-arg failure {a}/{b}")
        self.a, self.b = a, b
        self.trap = FailsToLoad()


def raise_two_arg(x):
    raise TwoArgError(x, "b")


class LockedError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def raise_locked(x):
    raise LockedError(f"holding a lock for {x}")


def return_lock(_):
    return threading.Lock()


def exit_task(code):
    raise SystemExit(code)


def init_fail():
    raise RuntimeError("initializer exploded")


def init_record(path: str):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def init_fail_record(path: str):
    init_record(path)
    raise RuntimeError("initializer exploded")


def init_flaky(marker: str):
    """Fails the first time it runs anywhere, then succeeds."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    raise RuntimeError("first start fails")


def init_die():
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)


def big_len(data):
    return len(data)


def make_big(n):
    return b"x" * n


def oom_in_cgroup(procs_file: str, limit: int):
    """Move into the memory cgroup, then allocate past its limit."""
    with open(procs_file, "w") as f:
        f.write(str(os.getpid()))
    blocks = []
    for _ in range(4 * limit // (8 << 20) + 10):
        blocks.append(b"\x01" * (8 << 20))   # touched pages, so they count
    return len(blocks)


def fork_then_die(path: str):
    """Leave a grandchild holding every inherited descriptor, then die."""
    pid = os.fork()
    if pid == 0:
        time.sleep(20)
        os._exit(0)
    with open(path, "w") as f:
        f.write(str(pid))
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)


def grow(step_mb: int = 8, pause: float = 0.0, limit_mb: int = 4096):
    """Allocate touched memory in steps until killed (or limit_mb)."""
    blocks = []
    for _ in range(limit_mb // step_mb):
        blocks.append(b"\x01" * (step_mb << 20))
        if pause:
            time.sleep(pause)
    return len(blocks)


def crash_in_native_code(x):
    return ctypes.string_at(0)


def die_first_time(marker: str, value):
    """Kill the worker the first time it runs anywhere (per marker file)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return value
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)


def count_and_die(path: str):
    """Record this attempt, then kill the worker: a task that always crashes."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)


def record_and_square(path: str, x: int):
    with open(path, "a") as f:
        f.write(f"{x}\n")
    if x == 5 and not os.path.exists(path + ".killed"):
        open(path + ".killed", "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)
    return x * x


def sleep_then_square(x, seconds: float = 0.001):
    time.sleep(seconds)
    return x * x


def _die_now(*_):
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)


def _refuse_in_parent():
    import multiprocessing
    if multiprocessing.parent_process() is None:   # we are the pool's owner
        raise RuntimeError("this object cannot be rebuilt in the parent")
    return "rebuilt"


class DieWhenUnpickled:
    """Kills the process that unpickles it: the worker, while decoding the task."""

    def __reduce__(self):
        return (_die_now, ())


class DieWhenPickled:
    """Kills the process that pickles it: the worker, while sending the result."""

    def __reduce__(self):
        if __import__("multiprocessing").parent_process() is not None:
            _die_now()
        return (str, ("pickled",))


class FailsInParent:
    """Pickles in the worker, but cannot be rebuilt in the parent."""

    def __reduce__(self):
        return (_refuse_in_parent, ())


def identity(x):
    return x


def make_die_when_pickled(_):
    return DieWhenPickled()


def make_fails_in_parent(_):
    return FailsInParent()


def close_every_descriptor(_):
    """A task that closes everything it inherited, our pipes included."""
    os.closerange(0, 4096)
    return "closed"


def _refuse_in_worker():
    raise ValueError("this argument cannot be rebuilt in a worker")


class FailsInWorker:
    """Pickles here; unpickling it in the worker raises."""

    def __reduce__(self):
        return (_refuse_in_worker, ())


def argument_buffers_held() -> int:
    """How many argument-buffer files (poolguard.wire.buffers) this process holds open."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += "poolguard-args" in os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
    return count


def describe_buffer(data, *more, **kwds):
    """What a large argument looked like in the worker: type, size, first
    byte, writable (arrays), and how many argument-buffer files this worker
    holds open (it should hold none between decoding and returning)."""
    held = argument_buffers_held()
    if type(data).__name__ == "ndarray":
        data[0] += 1        # arrays arrive writable, as from an ordinary pickle
        first = int(data[0])
        writable = data.flags.writeable
    else:
        first, writable = data[0], None
    return (type(data).__name__, len(data), first, writable, held,
            [len(m) for m in more], sorted(kwds))


def die_holding(data, how: str = "sigkill"):
    """Die while a large argument is mapped."""
    die(how)


def logged_square(log: str, x, pause: float = 0.0):
    """x * x, appending x to *log* (one line, O_APPEND) to count calls."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    if pause:
        time.sleep(pause)
    return x * x


def logged_cube(log: str, x):
    """x ** 3, logged as logged_square logs."""
    return logged_square(log, x) * x


def calls(log: str) -> list:
    try:
        with open(log) as f:
            return sorted(int(line) for line in f if line.strip())
    except FileNotFoundError:
        return []


def digest(data: bytes) -> str:
    import hashlib
    assert type(data) is bytes, type(data)
    return hashlib.sha256(data).hexdigest()


class ExitsWhenUnpickled:
    """Unpickling it calls sys.exit(3): in the parent, it must fail only its task."""

    def __reduce__(self):
        return (sys.exit, (3,))


class ExitingError(Exception):
    def __reduce__(self):
        return (sys.exit, (4,))


def make_exits_when_unpickled(x):
    if x == 1:
        return ExitsWhenUnpickled()
    if x == 2:
        raise ExitingError("boom")
    return x


class ExitsWhenPickled:
    """Pickling it calls sys.exit(5): a submit() of it must fail its future only."""

    def __reduce__(self):
        raise SystemExit(5)


class Dummy:
    pass


def make_object(_):
    return Dummy()


def ignore(_):
    return None


class WritesWhenFreed:
    """Writes a marker file when it is garbage collected (in the worker)."""

    def __init__(self, path: str):
        self.path = path

    def __del__(self):
        with open(self.path, "w") as f:
            f.write("freed")


def logged_size(log: str, x):
    """len(x), appending a line to *log* to count calls."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, b"call\n")
    finally:
        os.close(fd)
    return len(x)


class PlantedPayload:
    """What an attacker plants: unpickling it creates a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def logged_raise_at(log: str, x: int, at: int):
    """Log x (as logged_square does); raise ValueError for x == at."""
    logged_square(log, x)
    if x == at:
        raise ValueError(f"item {x} refuses")
    return x * x


def return_lock_at(x: int, at: int):
    """x, or a lock (which does not pickle) for x == at."""
    return threading.Lock() if x == at else x


def raise_at(x: int, at: int):
    if x == at:
        raise ValueError(f"item {x} refuses")
    return x


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this argument refuses to be pickled")


def kill_myself(how: str, signame: str):
    """Send *signame* to our own process, the way *how* says."""
    signum = int(getattr(signal, signame))
    if how == "os.kill":
        os.kill(os.getpid(), signum)
    elif how == "os.killpg":
        os.killpg(0, signum)   # the worker leads a group of its own
    elif how == "os.system":
        os.system(f"kill -{signum} {os.getpid()}")
    else:
        subprocess.run(["kill", f"-{signum}", str(os.getpid())], check=False)
    time.sleep(30)


def outcome(log: str, i: int, what: str = "ok", *extra):
    """Append *i* to *log* (one line, O_APPEND: calls are counted), then do
    *what*: return i * i, raise, kill this worker, or hang."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)
    if what == "raise":
        raise ValueError(f"bad call {i}")
    if what == "kill":
        die("sigkill")
    if what == "hang":
        time.sleep(60)
    return i * i


def sleep_and_clean_up(path: str, seconds: float):
    """Sleep; on SoftTimeoutError write *path* (its cleanup) and raise again."""
    import poolguard
    try:
        time.sleep(seconds)
    except poolguard.SoftTimeoutError:
        with open(path, "w") as f:
            f.write(f"cleaned up in {os.getpid()}")
        raise
    return "slept"


def sleep_past_soft_timeout(seconds: float):
    """Catch SoftTimeoutError and go on sleeping: only a hard kill ends it."""
    import poolguard
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(end - time.monotonic())
        except poolguard.SoftTimeoutError:
            pass
    return "never"


def sleep_catching_soft(seconds: float):
    """"soft" if a SoftTimeoutError came during the sleep, else "done"."""
    import poolguard
    try:
        time.sleep(seconds)
    except poolguard.SoftTimeoutError:
        return "soft"
    return "done"


def logged_die_at(log: str, at: int, x: int):
    """logged_square, but the worker dies (SIGKILL) on item *at*, after logging it."""
    value = logged_square(log, x)
    if x == at:
        die("sigkill")
    return value


def logged_acting(log: str, acts: tuple, x: int):
    """logged_square, except for the items *acts* names, as (first, last,
    what) ranges, after the call is logged: "raise" (ValueError), "die"
    (SIGKILL), "die once" (SIGKILL the first time, a marker file beside
    *log*), or "sleep N" (N seconds, then the square)."""
    value = logged_square(log, x)
    for first, last, what in acts:
        if first <= x <= last:
            if what == "raise":
                raise ValueError(f"item {x} refuses")
            if what == "die":
                die("sigkill")
            if what == "die once":
                return die_first_time(f"{log}.died-{x}", value)
            if what.startswith("sleep "):
                time.sleep(float(what.split()[1]))
    return value


def wait_for_file(path: str, timeout: float = 30.0) -> bool:
    """Return once *path* exists (True), or after *timeout* seconds (False)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True
