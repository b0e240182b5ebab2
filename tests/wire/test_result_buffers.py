"""Large results come back through a memfd of the worker's
(wire/result_buffers.py): whole, with the caller's peak RSS about one
payload (not two), on both fronts and every start method; and a worker
killed while it hands them over fails only its task and leaks nothing (no
descriptor, no mapping in the caller).  Each runs in a fresh interpreter:
VmHWM is the whole process's."""
from __future__ import annotations

import pytest

from poolguard.wire import result_buffers

from scripts import run_script

numpy = pytest.importorskip("numpy")
pytestmark = [pytest.mark.skipif(not result_buffers.AVAILABLE, reason="needs memfd and /proc"),
              pytest.mark.timeout(120)]

# Imported by the script and by its workers (spawn and forkserver import it again).
BIG = """
import hashlib, os, platform, signal, time
import numpy

N = 64 << 20
PATTERN = bytes(range(251))

def make(kind, n=N):
    data = (PATTERN * (n // len(PATTERN) + 1))[:n]
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    if kind == "numpy":
        return numpy.frombuffer(data, dtype=numpy.uint8).copy()
    # "nested": bytes and a bytearray two levels down
    return (3, [data[: n // 2]], {"b": bytearray(data[n // 2:])})

def digest(value):
    return hashlib.sha256(memoryview(value).cast("B")).hexdigest()

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:   # VmHWM := VmRSS
        f.write("5")

def links(pid="self"):
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:   # the listing's own descriptor, closed by now
            pass
    return out

def ours_held():
    # Our memfds among the caller's descriptors and mappings.
    fds = [link for link in links() if "poolguard-results" in link]
    with open("/proc/self/maps") as f:
        maps = [line for line in f if "poolguard-results" in line]
    return fds, maps

READ = {"x86_64": 0, "aarch64": 63}.get(platform.machine())

def wait_handing_over(pid, sent):
    # The worker holds its results in a memfd; *sent*: and has sent its
    # reply and waits for our answer (blocked in read()).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if any("poolguard-results" in link for link in links(pid)):
                if not sent or READ is None:
                    return
                with open(f"/proc/{pid}/syscall") as f:
                    if f.read().split()[0] == str(READ):
                        return
        except OSError:
            pass
        time.sleep(0.001)
    raise AssertionError("the worker never handed a result over")

def one_worker(pool):
    deadline = time.monotonic() + 30
    while not pool.pids:   # a killed one's replacement is starting
        assert time.monotonic() < deadline, "no worker"
        time.sleep(0.005)
    return pool.pids[0]

def hand_over(conn, remote, kind):
    # A worker's side alone: encode a result, send the reply, hold on.
    from poolguard.wire import result_buffers
    result_buffers.allow_remote(remote)
    body, outgoing = result_buffers.encode([make(kind, 4 << 20)])
    conn.send_bytes(body)
    time.sleep(60)

def wait_dead(pid):
    # Until its descriptors are gone (a zombie, or reaped).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in "ZX":
                    return
        except OSError:
            return
        time.sleep(0.001)
    raise AssertionError(f"worker {pid} did not die")
"""

ARRIVE = """
import gc, multiprocessing
import big

expected = {kind: [big.digest(part) for part in (big.make(kind),)]
            for kind in ("bytes", "bytearray", "numpy")}
pool = poolguard.Pool(2, context=METHOD)
executor = poolguard.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(METHOD))
pool.apply(len, ((),)); executor.submit(len, ()).result(timeout=30)
held_before = big.ours_held()
calls = {
    "apply": lambda kind: pool.apply(big.make, (kind,)),
    "map": lambda kind: pool.map(big.make, [kind])[0],
    "imap": lambda kind: next(pool.imap(big.make, [kind])),
    "submit": lambda kind: executor.submit(big.make, kind).result(timeout=30),
    "executor.map": lambda kind: next(executor.map(big.make, [kind])),
}
for name, call in calls.items():
    for kind in ("bytes", "bytearray", "numpy"):
        gc.collect()
        base = big.status("VmRSS")
        big.reset_peak()
        value = call(kind)
        extra = (big.status("VmHWM") - base) / big.N
        assert type(value).__name__ == {"numpy": "ndarray"}.get(kind, kind), (name, value)
        assert big.digest(value) == expected[kind][0], (name, kind)
        assert extra <= 1.25, (name, kind, extra)
        if kind == "numpy":
            value[:] = 1   # writable, and ours
        del value
    gc.collect()
    base = big.status("VmRSS")
    big.reset_peak()
    nested = call("nested")
    extra = (big.status("VmHWM") - base) / big.N
    assert extra <= 1.25, (name, extra)   # 2.0 if they stayed in the pickle
    assert type(nested[1][0]) is bytes and type(nested[2]["b"]) is bytearray, name
    assert big.digest(nested[1][0] + nested[2]["b"]) == expected["bytes"][0], name
    assert big.ours_held()[0] == [], name   # no descriptor outlives the delivery
    del nested
gc.collect()
assert big.ours_held() == held_before == ([], []), big.ours_held()
pool.terminate()
executor.shutdown()
print("whole")
"""


def test_large_results_arrive_whole_in_one_copy(tmp_path, method):
    out = run_script(tmp_path, ARRIVE, method, modules={"big": BIG})
    assert out.strip() == "whole"


DEATH = """
import multiprocessing, signal
import big
from poolguard.wire import private_fds

if FRONT == "pool":
    pool = poolguard.Pool(1, context=METHOD)
    submit = lambda *args: pool.apply_async(big.make, args)
    get = lambda handle: handle.get(30)
else:
    pool = poolguard.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(METHOD))
    submit = lambda *args: pool.submit(big.make, *args)
    get = lambda handle: handle.result(30)
get(submit("bytes", 10))
for sent in (False, True):   # killed while writing its memfd, then while waiting for us
    pid = big.one_worker(pool)
    with private_fds.making():   # the caller cannot take the memfd before we let go
        handle = submit("numpy")
        big.wait_handing_over(pid, sent)
        os.kill(pid, signal.SIGKILL)
        big.wait_dead(pid)
    try:
        get(handle)
    except poolguard.WorkerCrashedError as exc:
        assert exc.pid == pid, (exc.pid, pid)
    else:
        raise AssertionError("the result of a killed worker was delivered")
    assert big.ours_held() == ([], []), big.ours_held()
assert big.digest(get(submit("bytes"))) == big.digest(big.make("bytes"))
assert big.ours_held() == ([], []), big.ours_held()
print("clean")
"""


@pytest.mark.parametrize("front_name", ["pool", "executor"])
def test_death_while_handing_over_leaks_nothing(tmp_path, method, front_name):
    out = run_script(tmp_path, f"FRONT = {front_name!r}\n" + DEATH, method,
                     modules={"big": BIG})
    assert out.strip() == "clean"


INTAKE = """
import multiprocessing, pickle, signal
import big
from poolguard.wire import result_intake

ctx = multiprocessing.get_context(METHOD)
for remote, kind in ((True, "bytes"), (False, "bytes"), (True, "bytearray"), (True, "numpy")):
    for killed in (False, True):
        here, there = ctx.Pipe()
        child = ctx.Process(target=big.hand_over, args=(there, remote, kind))
        child.start()
        body = here.recv_bytes()
        size = int.from_bytes(body[:4], "big")
        fd_number = pickle.loads(body[4:4 + size])[0]
        # A whole bytes is read from the worker's memory, where it may be.
        assert (fd_number < 0) == (remote and kind == "bytes"), (remote, kind, fd_number)
        if killed:
            os.kill(child.pid, signal.SIGKILL)
            big.wait_dead(child.pid)
        sent = []
        got = result_intake.take_shared(child.pid, child.sentinel, memoryview(body),
                                        sent.append)
        assert len(sent) == 1, sent   # RELEASE, whatever happened
        if killed:
            assert got is None, (remote, kind)
        else:
            rest, shared = got
            value = pickle.loads(rest, buffers=shared)[0]
            assert big.digest(value) == big.digest(big.make(kind, 4 << 20)), (remote, kind)
            del value, rest, shared, got
        child.kill()
        child.join()
        assert big.ours_held() == ([], []), (remote, kind, killed, big.ours_held())
print("clean")
"""


def test_intake_from_a_live_or_dead_worker(tmp_path, method):
    # Each way a buffer comes back, from a worker alive, then from one killed
    # after its reply: whole, or None (its death fails the task), never a leak.
    assert run_script(tmp_path, INTAKE, method, modules={"big": BIG}).strip() == "clean"
