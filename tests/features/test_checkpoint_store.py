"""The checkpoint store against others writing into it: entries copied,
moved or planted (a FIFO), entries of the previous format, and many
processes making the key at once."""
from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
import threading

import pytest

from scripts import ROOT, TESTS, run_code

from poolguard import checkpoint as store_module

HERE = TESTS
# Several fresh interpreters a test, each bounded on its own.
pytestmark = pytest.mark.timeout(150)


def run(code: str, timeout: float = 40, env: dict | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of *code* in a fresh interpreter."""
    return run_code(code, timeout, env)


MAP = """
    import functools, poolguard, tasks
    func = functools.partial(tasks.{func}, {log!r})
    with poolguard.Pool(1, context="fork") as pool:
        print(pool.map(func, {items!r}, checkpoint=poolguard.Checkpoint({store!r}, step={step!r})))
"""


def run_map(tmp_path, store, items, step="s", func="logged_square", timeout: float = 40):
    """Map in a fresh interpreter: (result, stderr, items computed)."""
    log = tmp_path / "calls"
    log.unlink(missing_ok=True)
    code, out, err = run(MAP.format(func=func, log=str(log), items=list(items),
                                    store=str(store), step=step), timeout)
    assert code == 0, err
    import tasks
    return out.strip(), err, tasks.calls(str(log))


def entry_of(store, step: str, item) -> str:
    s = store_module.Store(str(store), step, store_module.load_key(None))
    return s.entry_path(s.key((item,), {}))


@pytest.mark.parametrize("how", ["copied over another", "renamed to another",
                                 "from another step", "from another store"])
def test_an_entry_moved_or_copied_is_computed_again(tmp_path, how):
    """The MAC covered the pickled value only: work(1)'s genuine entry copied
    over work(2)'s gave [1, 1] for squares of [1, 2], with no warning."""
    store = tmp_path / "store"
    assert run_map(tmp_path, store, [1, 2])[0] == "[1, 4]"
    target = entry_of(store, "s", 2)
    if how == "copied over another":
        shutil.copyfile(entry_of(store, "s", 1), target)
    elif how == "renamed to another":
        os.replace(entry_of(store, "s", 1), target)
    elif how == "from another step":     # step t stores cubes; its entry for 2 says 8
        run_map(tmp_path, store, [2], step="t", func="logged_cube")
        shutil.copyfile(entry_of(store, "t", 2), target)
    else:                                # step s of another store stores cubes
        run_map(tmp_path, tmp_path / "other", [2], func="logged_cube")
        shutil.copyfile(entry_of(tmp_path / "other", "s", 2), target)
    out, err, computed = run_map(tmp_path, store, [1, 2])
    assert out == "[1, 4]"
    assert computed == ([1, 2] if how == "renamed to another" else [2])
    assert err.count("CheckpointWarning") == 1 and target in err and "not trusted" in err, err
    # Computed again and stored right: the next run computes nothing.
    assert run_map(tmp_path, store, [1, 2])[1:] == ("", [])


def test_an_entry_of_the_previous_format_is_computed_again_with_one_warning(tmp_path):
    """Format 2 (an HMAC of the value alone, under the same key) is never
    trusted: it could be any other item's value."""
    store = tmp_path / "store"
    assert run_map(tmp_path, store, [1, 2, 3])[0] == "[1, 4, 9]"
    key = store_module.load_key(None)
    for item in (1, 2):   # each holds the value of item 3, as format 2 wrote it
        payload = pickle.dumps(9, protocol=5)
        with open(entry_of(store, "s", item), "wb") as f:
            f.write(struct.pack("!16sQ32s", b"poolguard-hmac\x00\x02", len(payload),
                                hmac.new(key, payload, hashlib.sha256).digest()) + payload)
    out, err, computed = run_map(tmp_path, store, [1, 2, 3])
    assert out == "[1, 4, 9]" and computed == [1, 2]
    assert err.count("CheckpointWarning") == 1, err
    assert "older version of poolguard" in err
    assert run_map(tmp_path, store, [1, 2, 3])[1:] == ("", [])


def test_a_fifo_at_an_entry_path_never_blocks(tmp_path):
    """A FIFO planted where an entry goes blocked the worker in open()
    forever (O_NOFOLLOW does not stop a FIFO): the map never returned."""
    store = tmp_path / "store"
    assert run_map(tmp_path, store, [1])[0] == "[1]"     # the step exists
    fifo = entry_of(store, "s", 7)
    os.makedirs(os.path.dirname(fifo), exist_ok=True)
    os.mkfifo(fifo)
    out, err, computed = run_map(tmp_path, store, [1, 7, 8], timeout=30)
    assert out == "[1, 49, 64]" and computed == [7, 8]
    assert err.count("CheckpointWarning") == 1 and fifo in err, err
    assert "not a regular file" in err


def test_a_fifo_at_the_key_path_is_refused_at_once(tmp_path):
    fifo = tmp_path / "team.key"
    os.mkfifo(fifo)
    code, out, err = run(f"""
        from poolguard import checkpoint
        try:
            checkpoint.load_key({str(fifo)!r})
        except checkpoint.CheckpointKeyError as exc:
            print(exc)
    """, timeout=20)
    assert code == 0 and "not a regular file" in out, (out, err)


ROUNDS = 300


def test_threads_making_a_fresh_key_all_get_it_whole(tmp_path, monkeypatch):
    """Four threads each loading a key that does not exist yet: one made it
    (O_EXCL) and wrote it afterwards, the others read it empty in between
    (CheckpointKeyError: holds 0 bytes, in 108 of 1,200 loads)."""
    failures: list = []
    for round_ in range(ROUNDS):
        monkeypatch.setenv("POOLGUARD_CHECKPOINT_KEY", str(tmp_path / f"k{round_}" / "key"))
        start = threading.Barrier(4)
        got: list = []

        def load(start=start, got=got) -> None:
            start.wait(10)
            try:
                got.append(store_module.load_key(None))
            except Exception as exc:
                failures.append(repr(exc))
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(set(got)) <= 1 and all(len(k) == 32 for k in got)
    assert failures == [], f"{len(failures)} of {4 * ROUNDS} loads failed: {failures[:3]}"


RACE = """
    import os, sys
    from poolguard import checkpoint
    base, stale, rounds = sys.argv[1], sys.argv[2] == "stale", int(sys.argv[3])
    for round_ in range(rounds):
        path = os.path.join(base, str(round_), "key")
        if stale:                                   # as a killed writer left it
            os.mkdir(os.path.dirname(path), 0o700)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.environ["POOLGUARD_CHECKPOINT_KEY"] = path
        go_r, go_w = os.pipe()
        kids = []
        for _ in range(4):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                os.read(go_r, 1)                    # all four start together
                try:
                    os.write(w, checkpoint.load_key(None).hex().encode())
                except BaseException as exc:
                    os.write(w, f"error:{type(exc).__name__}".encode())
                os._exit(0)
            os.close(w)
            kids.append((pid, r))
        os.write(go_w, b"xxxx")
        got = []
        for pid, r in kids:
            got.append(os.read(r, 200).decode())
            os.close(r)
            os.waitpid(pid, 0)
        os.close(go_r)
        os.close(go_w)
        with open(path, "rb") as f:
            print(f.read().hex(), *got)
"""


@pytest.mark.parametrize("start", ["missing", "stale"])
def test_processes_racing_on_a_fresh_or_stale_key_agree(tmp_path, start):
    """Four processes at once on a key that is missing, or empty as an older
    version's writer killed between create and write left it (every later
    run failed: holds 0 bytes): each round, all four get the key the file
    holds, whole."""
    rounds = 100
    full = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(RACE), str(tmp_path), start,
                           str(rounds)], env=full, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    assert len(lines) == rounds
    bad = [line for line in lines if len(line[0]) != 64 or set(line[1:]) != {line[0]}]
    assert not bad, f"{len(bad)} of {rounds} rounds: {bad[:3]}"


JOBS = """
    import os, sys
    from poolguard import checkpoint
    base, rounds = sys.argv[1], int(sys.argv[2])
    for round_ in range(rounds):
        # As many jobs starting at once on a fresh key and a fresh store.
        os.environ["POOLGUARD_CHECKPOINT_KEY"] = os.path.join(base, f"key{round_}", "key")
        root = os.path.join(base, f"store{round_}")
        go_r, go_w = os.pipe()
        kids = []
        for job in range(6):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                os.read(go_r, 1)
                try:
                    store = checkpoint.Store(root, "s", checkpoint.load_key(None))
                    store.prepare("f")
                    for item in range(job, job + 3):   # neighbours share items
                        key = store.key((item,), {})
                        assert store.put(key, item * 10)
                        assert store.get(key) == (True, item * 10)
                    os.write(w, f"{store.identity}".encode())
                except BaseException as exc:
                    os.write(w, f"error:{exc!r}".replace(" ", "_").encode())
                os._exit(0)
            os.close(w)
            kids.append((pid, r))
        os.write(go_w, b"x" * len(kids))
        got = []
        for pid, r in kids:
            got.append(os.read(r, 500).decode())
            os.close(r)
            os.waitpid(pid, 0)
        os.close(go_r)
        os.close(go_w)
        store = checkpoint.Store(root, "s", checkpoint.load_key(None))
        found = [store.get(store.key((item,), {})) for item in range(8)]
        print(" ".join(got), all(f == (True, i * 10) for i, f in enumerate(found)))
"""


def test_jobs_starting_at_once_on_a_fresh_key_and_store_agree(tmp_path):
    """Six processes at once, each making the key, the step and its identity
    and storing items its neighbours store too, 30 rounds: every process
    has the same step identity, and every entry reads back afterwards."""
    rounds = 30
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(JOBS), str(tmp_path),
                           str(rounds)], env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=50)
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    assert len(lines) == rounds
    bad = [line for line in lines
           if line[-1] != "True" or len(set(line[:-1])) != 1 or len(line[0]) != 32]
    assert not bad, f"{len(bad)} of {rounds} rounds: {bad[:3]}"
