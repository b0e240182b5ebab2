"""checkpoint=PATH: resumable steps on a store that races, crashes, full
disks and refused writes cannot corrupt or bring down."""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import warnings
from typing import Optional

import pytest

from conftest import wait_until
from scripts import ROOT, TESTS

import poolguard
from poolguard import Checkpoint, CheckpointWarning, checkpoint as store_module

import tasks

HERE = TESTS


def entries(root) -> list:
    return sorted(p for p in store_module._files(str(root)) if p.endswith(".entry"))


def run_script(code: str, timeout: float = 60, extra_env: Optional[dict] = None,
               **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]), **(extra_env or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def test_rerun_after_the_parent_was_killed_runs_only_the_missing_items(tmp_path, method):
    """The issue's measure: 1,000 items, killed after 600 results; the rerun
    calls the function exactly 400 times and returns every result."""
    store, log = tmp_path / "store", tmp_path / "calls"
    first = run_script(f"""
        import functools, os, signal, poolguard, tasks
        func = functools.partial(tasks.logged_square, {str(log)!r})
        with poolguard.Pool(1, context={method!r}) as pool:
            for i, value in enumerate(pool.imap(func, range(1000), checkpoint={str(store)!r})):
                assert value == i * i
                if i == 599:
                    os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert first.returncode == -signal.SIGKILL, first.stderr
    stored = len(entries(store))
    assert stored >= 600
    os.unlink(log)
    func = functools.partial(tasks.logged_square, str(log))
    with poolguard.Pool(2, context=method) as pool:
        assert pool.map(func, range(1000), checkpoint=store) == [x * x for x in range(1000)]
    ran = tasks.calls(str(log))
    assert len(ran) == 1000 - stored
    assert ran == list(range(stored, 1000))
    # In-flight items (one running, one queued) may have finished before the
    # worker died with its parent; the measure itself is taken with slow ones.


def test_exactly_400_after_a_kill_at_600(tmp_path):
    store, log = tmp_path / "store", tmp_path / "calls"
    first = run_script(f"""
        import functools, os, signal, poolguard, tasks
        fast = functools.partial(tasks.logged_square, {str(log)!r})
        slow = functools.partial(tasks.logged_square, {str(log)!r}, pause=5.0)
        with poolguard.Pool(1) as pool:
            step = poolguard.Checkpoint({str(store)!r}, step="squares")
            assert pool.map(fast, range(600), checkpoint=step) == [x * x for x in range(600)]
            it = pool.imap(slow, range(600, 1000), checkpoint=step)
            os.kill(os.getpid(), signal.SIGKILL)   # with items 600, 601 in the worker
    """)
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert len(entries(store)) == 600
    os.unlink(log)
    func = functools.partial(tasks.logged_square, str(log))
    with poolguard.Pool(2) as pool:
        out = pool.map(func, range(1000), checkpoint=Checkpoint(store, step="squares"))
    assert out == [x * x for x in range(1000)]
    assert tasks.calls(str(log)) == list(range(600, 1000))


def test_every_call_shape_and_front(tmp_path):
    log = str(tmp_path / "calls")
    func = functools.partial(tasks.logged_square, log)
    with poolguard.Pool(2) as pool:
        for _ in range(2):    # the second round runs nothing
            assert pool.map(func, range(20), checkpoint=tmp_path / "a") == \
                [x * x for x in range(20)]
            assert list(pool.imap(func, range(20, 30), checkpoint=tmp_path / "a")) == \
                [x * x for x in range(20, 30)]
            assert sorted(pool.imap_unordered(func, iter(range(30, 40)),
                                              checkpoint=tmp_path / "a")) == \
                [x * x for x in range(30, 40)]
            assert pool.starmap(tasks.logged_square, [(log, 40), (log, 41)],
                                checkpoint=tmp_path / "a") == [1600, 1681]
            assert pool.map_async(func, [42], checkpoint=tmp_path / "a").get(30) == [1764]
        assert tasks.calls(log) == list(range(43))
        # A changed input is computed; the unchanged ones are not.
        assert pool.map(func, [1, 2, 99], checkpoint=tmp_path / "a") == [1, 4, 9801]
        assert tasks.calls(log) == sorted(list(range(43)) + [99])
    with poolguard.ProcessPoolExecutor(2) as executor:
        assert list(executor.map(func, range(5), checkpoint=tmp_path / "a")) == \
            [0, 1, 4, 9, 16]     # the same entries as Pool.map's
        assert list(executor.map(func, [7, 50], checkpoint=tmp_path / "a")) == [49, 2500]
    assert tasks.calls(log) == sorted(list(range(43)) + [50, 99])
    steps = store_module.steps(str(tmp_path / "a"))
    assert [(s.step.split("-")[0], s.entries) for s in steps] == [
        ("partial(tasks.logged_square)", 43), ("tasks.logged_square", 2)]


def test_different_partials_and_lambdas_never_share_entries(tmp_path):
    with poolguard.Pool(2) as pool:
        assert pool.map(functools.partial(tasks.add, 1), [1, 2], checkpoint=tmp_path) == [2, 3]
        assert pool.map(functools.partial(tasks.add, 10), [1, 2], checkpoint=tmp_path) == \
            [11, 12]
        assert pool.map(lambda x: x + 100, [1], checkpoint=tmp_path) == [101]
        assert pool.map(lambda x: x * 100, [1], checkpoint=tmp_path) == [100]
    assert len(store_module.steps(str(tmp_path))) == 4


def test_named_steps_are_separate(tmp_path):
    log = str(tmp_path / "calls")
    func = functools.partial(tasks.logged_square, log)
    with poolguard.Pool(2) as pool:
        pool.map(func, range(5), checkpoint=Checkpoint(tmp_path, step="one"))
        pool.map(func, range(5), checkpoint=Checkpoint(tmp_path, step="two"))
        pool.map(func, range(5), checkpoint=Checkpoint(tmp_path, step="one"))
    assert tasks.calls(log) == sorted(list(range(5)) * 2)


def test_bad_arguments_raise_at_once(tmp_path):
    with poolguard.Pool(1) as pool:
        with pytest.raises(TypeError, match="checkpoint must be a path"):
            pool.map(tasks.square, [1], checkpoint=42)
        with pytest.raises(ValueError, match="non-empty"):
            pool.map(tasks.square, [1], checkpoint=Checkpoint(tmp_path, step=" "))
        assert pool.map(tasks.square, [3]) == [9]   # the pool is fine


def test_damaged_entries_are_computed_again(tmp_path):
    log = str(tmp_path / "calls")
    func = functools.partial(tasks.logged_square, log)
    with poolguard.Pool(2) as pool:
        pool.map(func, range(10), checkpoint=tmp_path / "s")
        paths = entries(tmp_path / "s")
        assert len(paths) == 10
        with open(paths[0], "r+b") as f:          # truncated
            f.truncate(os.path.getsize(paths[0]) - 3)
        with open(paths[1], "r+b") as f:          # one byte flipped
            data = bytearray(f.read())
            data[-1] ^= 0xFF
            f.seek(0)
            f.write(data)
        with open(paths[2], "wb"):                # empty
            pass
        os.unlink(log)
        assert pool.map(func, range(10), checkpoint=tmp_path / "s") == \
            [x * x for x in range(10)]
    assert len(tasks.calls(log)) == 3
    [info] = store_module.steps(str(tmp_path / "s"))
    store = store_module.Store(str(tmp_path / "s"), info.step, store_module.load_key(None))
    values = {store.key((x,), {}): x * x for x in range(10)}
    for path in entries(tmp_path / "s"):          # rewritten whole
        key = os.path.basename(path)[:-len(".entry")]
        assert store.get(key) == (True, values[key])


def _race(root: str, seed: int, rounds: int) -> None:
    """One of the racing writers: the same keys, values derived from the key."""
    rng = random.Random(seed)
    store = store_module.Store(root, "race", store_module.load_key(None))
    try:
        for _ in range(rounds):
            key = hashlib.sha256(str(rng.randrange(20)).encode()).hexdigest()
            if rng.random() < 0.5:
                if not store.put(key, _value_of(key)):
                    os._exit(4)  # a write that failed
            else:
                found, value = store.get(key)
                if found and value != _value_of(key):
                    os._exit(3)  # a corrupt or wrong read
    except BaseException:
        import traceback
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _value_of(key: str) -> bytes:
    return key.encode() * 4096       # 256 KiB: many write() calls per entry


def test_racing_writers_never_give_a_corrupt_read(tmp_path):
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    root = str(tmp_path)
    # The first 4 would go on for long: they are SIGKILLed mid-way, perhaps
    # mid-write (and cannot have finished and been reaped before the kill).
    writers = [ctx.Process(target=_race, args=(root, seed, 10**6 if seed < 4 else 150))
               for seed in range(16)]
    for p in writers:
        p.start()
    victims = writers[:4]
    wait_until(lambda: len(entries(tmp_path)) >= 4, 30)   # writing under way
    for p in victims:
        os.kill(p.pid, signal.SIGKILL)
    for p in writers:
        p.join(60)
    assert [p.exitcode for p in victims] == [-signal.SIGKILL] * 4
    # 0: fine; 3: a corrupt or wrong read; 4: a failed write; 1: an exception
    assert [p.exitcode for p in writers[4:]] == [0] * 12
    store = store_module.Store(root, "race", store_module.load_key(None))
    for path in entries(tmp_path):
        key = os.path.basename(path)[:-len(".entry")]
        assert store.get(key) == (True, _value_of(key))
    assert len(entries(tmp_path)) == 20, entries(tmp_path)
    # Writers killed mid-write may have left temporary files; they never
    # read as entries, and clean() removes them.
    left = [p for p in store_module._files(root) if p.endswith(".tmp")]
    assert store_module.clean(root, older_than=0) == len(left)
    assert not [p for p in store_module._files(root) if p.endswith(".tmp")]


def test_sixteen_pools_share_one_store(tmp_path):
    """The issue's measure: 16 pools on one directory, every result right."""
    store, log = tmp_path / "store", tmp_path / "calls"
    code = f"""
        import functools, poolguard, tasks
        func = functools.partial(tasks.logged_square, {str(log)!r})
        with poolguard.Pool(1) as pool:
            assert pool.map(func, range(300), checkpoint={str(store)!r}) == \\
                [x * x for x in range(300)]
        print("ok")
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(16)]
    outs = [p.communicate(timeout=90) for p in procs]
    assert [p.returncode for p in procs] == [0] * 16, [err for _, err in outs]
    assert all(out.strip() == "ok" for out, _ in outs)
    assert len(entries(store)) == 300
    ran = tasks.calls(str(log))
    assert set(ran) == set(range(300))          # each item at least once
    assert len(ran) < 16 * 300                  # and not by every pool


@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory no write may enter: mode 0555, or for root (whom modes do
    not stop) a read-only tmpfs."""
    path = tmp_path / "locked"
    path.mkdir()
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        yield path
        os.chmod(path, 0o755)
        return
    yield from mounted_tmpfs(path, "ro,size=64k")


def test_refused_store_warns_once_a_call_and_the_work_goes_on(unwritable_dir, capfd):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with poolguard.Pool(2) as pool:
            for _ in range(2):
                assert pool.map(tasks.square, range(50), checkpoint=unwritable_dir / "s") \
                    == [x * x for x in range(50)]
    ours = [w for w in seen if issubclass(w.category, CheckpointWarning)]
    assert len(ours) == 2, [str(w.message) for w in seen]
    message = str(ours[0].message)
    assert ("Permission denied" in message or "Read-only file system" in message), message
    assert "new ones are not stored" in message
    assert "CheckpointWarning" not in capfd.readouterr().err   # workers did not even try
    assert entries(unwritable_dir) == []


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 256 KiB tmpfs: writes fail with ENOSPC part-way through a run."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    yield from mounted_tmpfs(mount, "size=256k")


def mounted_tmpfs(path, options: str):
    """Fixture body: a tmpfs with *options* on *path*, or a skip saying why not."""
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_degrades_with_one_warning(tiny_filesystem, capfd):
    with poolguard.Pool(1) as pool:
        with warnings.catch_warnings():
            warnings.simplefilter("error")     # nothing may be raised in the parent
            sizes = [64 * 1024 + i for i in range(30)]
            out = pool.map(tasks.make_big, sizes, chunksize=1, checkpoint=tiny_filesystem)
    assert [len(x) for x in out] == sizes
    stored = len(entries(tiny_filesystem))
    assert 1 <= stored < 30
    err = capfd.readouterr().err
    assert err.count("CheckpointWarning") == 1, err      # the worker said it once
    assert "No space left on device" in err
    assert not [p for p in store_module._files(str(tiny_filesystem)) if p.endswith(".tmp")]


def test_command_line_lists_and_clears(tmp_path):
    with poolguard.Pool(1) as pool:
        pool.map(tasks.square, range(7), checkpoint=Checkpoint(tmp_path, step="sq"))
        pool.map(tasks.square, range(3), checkpoint=Checkpoint(tmp_path, step="other"))
    listing = run_script(f"from poolguard.__main__ import main; main(['checkpoint', "
                         f"{str(tmp_path)!r}])")
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:3] == ["step", "entries", "size"]
    rows = {line.split()[0]: int(line.split()[1]) for line in lines[1:]}
    assert rows == {"sq": 7, "other": 3}
    cleared = run_script(f"from poolguard.__main__ import main; main(['checkpoint', "
                         f"{str(tmp_path)!r}, '--clear', 'sq'])")
    assert "cleared sq" in cleared.stdout
    assert [s.step for s in store_module.steps(str(tmp_path))] == ["other"]
    missing = run_script(f"import sys; from poolguard.__main__ import main; "
                         f"sys.exit(main(['checkpoint', {str(tmp_path)!r}, '--clear', 'nope']))")
    assert missing.returncode == 1 and "no step 'nope'" in missing.stderr


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_a_function_of_main_works_where_workers_cannot_import_main(tmp_path, context):
    # python -c: the workers have no file to import __main__ from, so the
    # function inside the checkpoint wrapper must go by value.
    done = run_script(f"""
        import poolguard
        def cube(x):
            return x ** 3
        if __name__ == "__main__":
            with poolguard.Pool(2, context={context!r}) as pool:
                for _ in range(2):
                    assert pool.map(cube, range(5), checkpoint={str(tmp_path)!r}) == \\
                        [0, 1, 8, 27, 64]
            print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert len(entries(tmp_path)) == 5


def test_a_crash_names_the_users_function_and_stores_nothing_for_it(tmp_path, method):
    with poolguard.Pool(2, context=method) as pool:
        with pytest.raises(poolguard.WorkerCrashedError) as info:
            pool.starmap(tasks.die_at, [(x, 3) for x in range(6)], chunksize=1,
                         checkpoint=tmp_path)
        assert info.value.task.function == "die_at"
        assert info.value.task.arguments == "3, 3"
        pool.close()      # the other items still run, as in the standard library
        pool.join()
    store = store_module.Store(str(tmp_path), store_module.default_step(tasks.die_at),
                               store_module.load_key(None))
    assert [store.get(store.key((x, 3), {}))[0] for x in range(6)] == \
        [True, True, True, False, True, True]


def test_two_scripts_with_the_same_function_name_are_two_steps(tmp_path):
    """Each script's top-level ``work`` was step ``__main__.work``: the second
    script silently got the first one's results."""
    store = tmp_path / "store"
    outputs = []
    for name, factor in (("first.py", 10), ("second.py", 100)):
        script = tmp_path / name
        script.write_text(textwrap.dedent(f"""
            import poolguard
            def work(x):
                return x * {factor}
            if __name__ == "__main__":
                with poolguard.Pool(2, context="fork") as pool:
                    print(pool.map(work, range(3), checkpoint={str(store)!r}))
        """))
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.strip())
    assert outputs == ["[0, 10, 20]", "[0, 100, 200]"]
    names = [info.step for info in store_module.steps(str(store))]
    assert len(names) == 2 and all("first.py" in n or "second.py" in n for n in names), names


def test_a_relative_path_is_resolved_in_the_caller_at_the_call(tmp_path, method):
    """After os.chdir() between Pool() and map(), parent and workers used to
    write to two directories."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    before = os.getcwd()
    os.chdir(first)
    try:
        with poolguard.Pool(2, context=method) as pool:
            os.chdir(second)
            assert pool.map(tasks.square, range(5), checkpoint="store") == [0, 1, 4, 9, 16]
            assert pool.map(tasks.square, range(5), checkpoint="store") == [0, 1, 4, 9, 16]
    finally:
        os.chdir(before)
    assert len(entries(second / "store")) == 5
    assert not (first / "store").exists()


def test_keys_of_sets_and_dicts_are_the_same_under_any_hash_seed(tmp_path):
    """Sets pickle in hash order, which changes with the hash seed: a rerun
    in a new interpreter recomputed 17 of 20 such items."""
    store, log = tmp_path / "store", tmp_path / "calls"
    code = f"""
        import functools, poolguard, tasks
        items = [{{"k": frozenset({{f"w{{i}}", f"x{{i}}", f"y{{i}}"}}), "n": [{{f"s{{i}}", "t"}}]}}
                 for i in range(20)]
        func = functools.partial(tasks.logged_size, {str(log)!r})
        with poolguard.Pool(2) as pool:
            print(pool.map(func, items, checkpoint=poolguard.Checkpoint({str(store)!r}, step="sets")))
    """
    outs = []
    for seed in ("1", "2"):
        done = run_script(code, extra_env={"PYTHONHASHSEED": seed})
        assert done.returncode == 0, done.stderr
        outs.append(done.stdout.strip())
    assert outs[0] == outs[1] == str([2] * 20)
    assert len(log.read_text().splitlines()) == 20     # the second run called nothing


def _plant(store_root, step: str, arg, payload: bytes, key: bytes) -> str:
    """An entry for *arg* holding *payload*, authenticated with *key*."""
    store = store_module.Store(str(store_root), step, key)
    entry = store.key((arg,), {})
    path = store.entry_path(entry)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(store_module.encode_entry(payload, key, store._binding(entry)))
    return path


@pytest.mark.parametrize("forgery", ["unkeyed SHA-256", "another key", "symlink"])
def test_a_planted_entry_is_never_unpickled(tmp_path, forgery, capfd):
    """Anyone who can write into a shared store could plant an entry that
    runs code on resume: only entries authenticated with the store's key are
    unpickled; the others are computed again with one warning naming them."""
    marker, log = tmp_path / "pwned", str(tmp_path / "calls")
    step = Checkpoint(tmp_path / "store", step="s")
    evil = pickle.dumps(tasks.PlantedPayload(str(marker)))
    if forgery == "unkeyed SHA-256":     # the old format: a checksum anyone can compute
        path = _plant(tmp_path / "store", "s", 3, b"", store_module.load_key(None))
        with open(path, "wb") as f:
            digest = hashlib.sha256(evil).digest()
            f.write(store_module.entry.HEADER.pack(store_module.MAGIC, len(evil), digest,
                                                    digest) + evil)
    elif forgery == "another key":
        path = _plant(tmp_path / "store", "s", 3, evil, b"k" * 32)
    else:
        target = tmp_path / "elsewhere.entry"
        path = _plant(tmp_path / "store", "s", 3, evil, store_module.load_key(None))
        os.replace(path, target)
        os.symlink(target, path)
    func = functools.partial(tasks.logged_square, log)
    with poolguard.Pool(1, context="fork") as pool:
        assert pool.map(func, range(5), checkpoint=step) == [0, 1, 4, 9, 16]
    assert not marker.exists(), "a planted entry was unpickled"
    assert tasks.calls(log) == [0, 1, 2, 3, 4]
    warned = capfd.readouterr().err
    assert warned.count("CheckpointWarning") == 1 and path in warned, warned
    assert ("symbolic link, not followed" if forgery == "symlink"
            else "with this store's key") in warned


def test_a_team_key_shares_a_store_and_the_default_key_does_not(tmp_path, capfd):
    log = str(tmp_path / "calls")
    func = functools.partial(tasks.logged_square, log)
    team = Checkpoint(tmp_path / "store", step="s", key=b"our team's secret, 32 bytes long")
    with poolguard.Pool(2) as pool:
        assert pool.map(func, range(4), checkpoint=team) == [0, 1, 4, 9]
        assert pool.map(func, range(4), checkpoint=team) == [0, 1, 4, 9]
        assert tasks.calls(log) == [0, 1, 2, 3]              # second run: all stored
        mine = Checkpoint(tmp_path / "store", step="s")
        assert pool.map(func, range(4), checkpoint=mine) == [0, 1, 4, 9]
    assert tasks.calls(log) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert "with this store's key" in capfd.readouterr().err


def test_the_key_file_is_made_private_and_a_shared_one_is_refused(tmp_path, monkeypatch):
    key_path = tmp_path / "cfg" / "checkpoint.key"
    monkeypatch.setenv("POOLGUARD_CHECKPOINT_KEY", str(key_path))
    first = store_module.load_key(None)
    assert len(first) == 32 and store_module.load_key(None) == first
    assert key_path.stat().st_mode & 0o777 == 0o600
    os.chmod(key_path, 0o644)
    with pytest.raises(store_module.CheckpointKeyError, match="chmod 600"):
        store_module.load_key(None)
    with pytest.raises(store_module.CheckpointKeyError):
        with poolguard.Pool(1) as pool:
            pool.map(tasks.square, range(2), checkpoint=tmp_path / "store")
