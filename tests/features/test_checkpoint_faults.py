"""The checkpoint store under I/O faults the kernel really returns, not
mocks: errors injected into the real system calls with strace (EACCES, EIO,
ESTALE, ENOSPC on reading an entry, writing it, renaming it into place and
making its directory), and permissions revoked mid-run for root without
CAP_DAC_OVERRIDE (setpriv).  Each time the map returns every value, the
worker says so once, and nothing half-written is left."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest

from scripts import ROOT, TESTS, run_code

from poolguard import checkpoint as store_module

import tasks

HERE = TESTS
# Several fresh interpreters a test, each bounded on its own.
pytestmark = pytest.mark.timeout(150)
ITEMS = list(range(8))
ERRORS = ["EACCES", "EIO", "ESTALE", "ENOSPC"]
# The store's own system calls (files.py uses pread/pwrite so that these
# name its reads and writes alone).
SYSCALLS = {"read": "pread64", "write": "pwrite64", "rename": "rename,renameat,renameat2",
            "mkdir": "mkdir,mkdirat"}

MAP = """
import functools, os, poolguard, tasks
func = functools.partial(tasks.{func}, {log!r})
with poolguard.Pool(1, context="fork") as pool:
    print(pool.map(func, {items!r},
                   checkpoint=poolguard.Checkpoint({store!r}, step="s", fsync={fsync})))
"""


def _strace_works() -> str:
    """Why strace cannot inject faults here, or ''."""
    if shutil.which("strace") is None:
        return "strace is not installed (apt-get install strace)"
    done = subprocess.run(["strace", "-f", "-o", "/dev/null", "-e", "trace=mkdir",
                           "-e", "inject=mkdir:error=EIO", sys.executable, "-c",
                           "import os\ntry:\n os.mkdir('/nonexistent/x')\n"
                           "except OSError as e:\n print(e.errno)"],
                          capture_output=True, text=True, timeout=30)
    if done.stdout.strip() != str(errno.EIO):
        return f"strace cannot inject faults here: {done.stderr.strip()[-300:]}"
    return ""


STRACE_PROBLEM = _strace_works()
needs_strace = pytest.mark.skipif(bool(STRACE_PROBLEM), reason=STRACE_PROBLEM)


def run(tmp_path, store, prefix: list | None = None, func: str = "logged_square",
        timeout: float = 30, fsync: bool = False) -> tuple[str, str, list]:
    """The map in a fresh interpreter, under *prefix* (strace, setpriv):
    (its output, its stderr, the items computed)."""
    log = tmp_path / "calls"
    log.unlink(missing_ok=True)
    code = MAP.format(func=func, log=str(log), items=ITEMS, store=str(store), fsync=fsync)
    rc, out, err = run_code(code, timeout, prefix=prefix or ())
    assert rc == 0, err
    return out.strip(), err, tasks.calls(str(log))


def entry_paths(store) -> list:
    s = store_module.Store(str(store), "s", store_module.load_key(None))
    return [s.entry_path(s.key((x,), {})) for x in ITEMS]


def stored(store) -> list:
    return [p for p in store_module._files(str(store)) if p.endswith(".entry")]


def temporary(store) -> list:
    return [p for p in store_module._files(str(store)) if p.endswith(".tmp")]


EXPECTED = str([x * x for x in ITEMS])


@needs_strace
@pytest.mark.parametrize("error", ERRORS)
@pytest.mark.parametrize("operation", ["read", "write", "rename", "mkdir"])
def test_a_fault_the_kernel_returns_never_stops_the_work(tmp_path, operation, error):
    store = tmp_path / "store"
    if operation == "read":        # a whole store first, whose reads then fail
        assert run(tmp_path, store)[0] == EXPECTED
    else:                          # the step exists; its entries' directories do not
        store_module.Store(str(store), "s", store_module.load_key(None)).prepare("f")
    calls = SYSCALLS[operation]
    strace = ["strace", "-f", "-o", "/dev/null", "-e", f"trace={calls}",
              "-e", f"inject={calls}:error={error}"]
    if operation == "read":        # only the entries' reads, not the step's identity
        for path in entry_paths(store):
            strace += ["-P", path]
    out, err, computed = run(tmp_path, store, strace)
    assert out == EXPECTED
    assert computed == ITEMS
    assert err.count("CheckpointWarning") == 1, err
    assert os.strerror(getattr(errno, error)) in err, err
    assert temporary(store) == []
    if operation != "read":
        assert stored(store) == []
    # Once the fault is gone the store works again.
    assert run(tmp_path, store)[1:] == ("", [] if operation == "read" else ITEMS)
    assert run(tmp_path, store)[1:] == ("", [])


@needs_strace
@pytest.mark.parametrize("fsync", [False, True])
def test_fsync_flushes_each_entry_and_its_directory(tmp_path, fsync):
    """With fsync=True each entry is flushed, and its directory after the
    rename, before the value is returned: at least two fsync calls an
    entry; without it none."""
    store, trace = tmp_path / "store", tmp_path / "trace"
    store_module.Store(str(store), "s", store_module.load_key(None)).prepare("f")
    strace = ["strace", "-f", "-o", str(trace), "-e", "trace=fsync"]
    assert run(tmp_path, store, strace, fsync=fsync)[0] == EXPECTED
    assert len(stored(store)) == len(ITEMS)
    synced = [line for line in trace.read_text().splitlines() if "fsync(" in line]
    if fsync:
        assert len(synced) >= 2 * len(ITEMS), synced
    else:
        assert synced == []


REVOKE = """
import functools, os, poolguard, tasks
def revoke(path):            # the store's directories become read-only
    for base, dirs, _ in os.walk(path):
        os.chmod(base, 0o555)
func = functools.partial(tasks.logged_square, {log!r})
with poolguard.Pool(1, context="fork") as pool:
    step = poolguard.Checkpoint({store!r}, step="s")
    assert pool.map(func, range(4), checkpoint=step) == [0, 1, 4, 9]
    revoke({store!r})
    print(pool.map(func, range(8), checkpoint=step))
"""


def _without_dac_override() -> list:
    """A command prefix that runs as this user without the capabilities
    that ignore file modes, or a skip saying why there is none."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root, and no setpriv to drop CAP_DAC_OVERRIDE")
    prefix = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]
    done = subprocess.run([*prefix, sys.executable, "-c",
                           "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])"],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0 or int(done.stdout.strip() or "1", 16) != 0:
        pytest.skip(f"setpriv cannot drop the capabilities here: {done.stderr.strip()}")
    return prefix


def test_permissions_revoked_while_running(tmp_path):
    """EACCES as the kernel returns it: the step's directories made
    read-only between two maps of one pool; the second map computes the
    four new items, stores nothing, and its worker warns once."""
    prefix = _without_dac_override()
    store, log = tmp_path / "store", tmp_path / "calls"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))
    try:
        done = subprocess.run([*prefix, sys.executable, "-c",
                               REVOKE.format(log=str(log), store=str(store))],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == EXPECTED
        assert tasks.calls(str(log)) == ITEMS
        assert done.stderr.count("CheckpointWarning") == 1, done.stderr
        assert "Permission denied" in done.stderr
        assert len(stored(store)) == 4 and temporary(store) == []
    finally:
        for base, _, _ in os.walk(store):
            os.chmod(base, 0o755)


def test_unreadable_entries_and_directories(tmp_path):
    """EACCES on reading: entries of mode 000 are computed again (one
    warning) and replaced; a store whose root cannot be entered is not used,
    with one warning in the caller, and the work goes on."""
    prefix = _without_dac_override()
    store = tmp_path / "store"
    assert run(tmp_path, store)[0] == EXPECTED
    for path in entry_paths(store)[:3]:
        os.chmod(path, 0)
    out, err, computed = run(tmp_path, store, prefix)
    assert out == EXPECTED and computed == ITEMS[:3]
    assert err.count("CheckpointWarning") == 1 and "Permission denied" in err, err
    assert run(tmp_path, store, prefix)[1:] == ("", [])
    os.chmod(store, 0)
    try:
        out, err, computed = run(tmp_path, store, prefix)
    finally:
        os.chmod(store, 0o755)
    assert out == EXPECTED and computed == ITEMS
    assert err.count("CheckpointWarning") == 1 and "Permission denied" in err, err
