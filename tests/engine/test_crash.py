"""Real deaths of real workers, under every start method."""
from __future__ import annotations

import functools
import os
import pickle
import signal
import time

import psutil
import pytest

import poolguard
from poolguard import TaskInfo, WorkerCrashedError
from poolguard.engine import Unit
from poolguard.fronts.pool_imap import IMapIterator
from poolguard.wire.messages import STREAM

import tasks
from conftest import PROMPT, wait_until

# how the worker dies -> (signal name or None, exit code)
DEATHS = {
    "sigkill": ("SIGKILL", -signal.SIGKILL),
    "exit": (None, 3),
    "segfault": ("SIGSEGV", -signal.SIGSEGV),
    "abort": ("SIGABRT", -signal.SIGABRT),
}


def test_issue_example_raises_then_pool_maps_again(method):
    with poolguard.Pool(3, context=method) as pool:
        start = time.monotonic()
        with pytest.raises(WorkerCrashedError) as info:
            pool.map(tasks.murder_bot, [1, 2, 3])
        elapsed = time.monotonic() - start
        err = info.value
        assert elapsed < PROMPT
        assert err.signal == "SIGKILL" and err.exitcode == -9
        assert err.task == TaskInfo("murder_bot", "2", 1, "map")
        assert str(err).startswith(f"worker {err.pid} was killed by SIGKILL while running "
                                   "murder_bot(2) (item 1 of map)")
        # the task ran `kill -9 <its pid>`: not blamed on the outside, not an OOM
        assert "the task killed its own process" in str(err)
        assert "came from outside" not in str(err)
        assert err.oom_verdict == "ruled out" and err.oom is False
        assert str(err).splitlines()[-1].startswith("What to do: the task's own code")
        assert pool.map(tasks.murder_bot, [1, 3, 4]) == ["OK 1", "OK 3", "OK 4"]


@pytest.mark.parametrize("how", sorted(DEATHS))
def test_death_fails_only_the_culprit(front, method, how):
    """Both fronts, every start method, every kind of death."""
    signame, exitcode = DEATHS[how]
    with front(2, method) as pool:
        others = [pool.submit(tasks.sleep_then, 0.2, i) for i in range(4)]
        culprit = pool.submit(tasks.die, how)
        with pytest.raises(WorkerCrashedError) as info:
            pool.get(culprit)
        err = info.value
        assert err.signal == signame and err.exitcode == exitcode
        assert err.task.function == "die" and err.task.arguments == repr(how)
        assert err.task.item is None and err.phase == "running"
        assert err.task.call == ("apply" if pool.name == "pool" else "submit")
        if signame in ("SIGSEGV", "SIGABRT"):
            assert err.oom is False
        assert [pool.get(r) for r in others] == [0, 1, 2, 3]
        assert pool.get(pool.submit(tasks.square, 7)) == 49
        assert err.pid not in pool.pids


def test_outside_kill_names_pid_and_task(method, tmp_path):
    with poolguard.Pool(2, context=method) as pool:
        marker = str(tmp_path / "pid")
        result = pool.apply_async(tasks.announce_and_sleep, (marker,))
        pid = int(wait_until(lambda: os.path.exists(marker) and open(marker).read(), 10))
        assert pid in pool.pids
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError) as info:
            result.get(timeout=5)
        assert time.monotonic() - killed_at < PROMPT
        assert info.value.pid == pid and info.value.signal == "SIGKILL"
        assert info.value.task.function == "announce_and_sleep"
        assert pool.map(tasks.square, range(5)) == [0, 1, 4, 9, 16]


def test_crash_inside_chunk_names_the_item(method):
    with poolguard.Pool(2, context=method) as pool:
        with pytest.raises(WorkerCrashedError) as info:
            pool.starmap(tasks.die_at, [(x, 37) for x in range(100)], chunksize=10)
        assert info.value.task.item == 37
        assert info.value.task.arguments == "37, 37"
        assert "(item 37 of starmap)" in str(info.value)
        assert pool.starmap(tasks.die_at, [(x, -1) for x in range(50)], 10) == \
            [x * 2 for x in range(50)]


def test_idle_worker_killed_is_replaced(method):
    with poolguard.Pool(2, context=method) as pool:
        assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]
        victim = pool.pids[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in pool.pids and len(pool.pids) == 2, 5)
        start = time.monotonic()
        assert pool.map(tasks.square, range(100), 3) == [x * x for x in range(100)]
        assert time.monotonic() - start < 5


def test_units_queued_behind_the_culprit_run_elsewhere(method):
    # One worker: the second and third tasks sit in its pipe (prefetch) or the
    # queue when it dies; they must run on the replacement, not fail.
    with poolguard.Pool(1, context=method) as pool:
        first = pool.apply_async(tasks.sleep_then_die, (0.3,))
        second = pool.apply_async(tasks.square, (5,))
        third = pool.apply_async(tasks.square, (6,))
        with pytest.raises(WorkerCrashedError):
            first.get(timeout=10)
        assert second.get(timeout=10) == 25 and third.get(timeout=10) == 36


def test_imap_goes_on_after_a_crash(method):
    with poolguard.Pool(2, context=method) as pool:
        it = pool.imap(_DieAtThree(), range(6))
        got = []
        errors = []
        for _ in range(6):
            try:
                got.append(it.next(timeout=10))
            except WorkerCrashedError as exc:
                errors.append(exc)
        assert got == [0, 2, 4, 8, 10]
        assert len(errors) == 1 and errors[0].task.item == 3
        with pytest.raises(StopIteration):
            it.next(timeout=1)


@pytest.mark.parametrize("lazy", [False, True], ids=["list", "generator"])
@pytest.mark.parametrize("ordered", [True, False], ids=["imap", "imap_unordered"])
def test_imap_items_sent_together_are_each_answered(method, tmp_path, ordered, lazy):
    # chunksize=1: tiny items go many to a unit once the function is
    # measured, yet each is answered as it ends.  A death fails only its
    # item, and no item runs twice (the items before it in its unit had
    # answered; those after it run elsewhere).
    log = str(tmp_path / "calls")
    func = functools.partial(tasks.logged_die_at, log, 5000)
    with poolguard.Pool(2, context=method) as pool:
        imap = pool.imap if ordered else pool.imap_unordered
        items = (lambda r: iter(list(r))) if lazy else (lambda r: r)
        assert sorted(imap(func, items(range(3000)))) == [x * x for x in range(3000)]
        it = imap(func, items(range(3000, 7000)))
        got, errors = [], []
        for _ in range(4000):
            try:
                got.append(it.next(timeout=30))
            except WorkerCrashedError as exc:
                errors.append(exc)
        with pytest.raises(StopIteration):
            it.next(timeout=5)
        expected = [x * x for x in range(3000, 7000) if x != 5000]
        assert (got if ordered else sorted(got)) == expected
        assert len(errors) == 1 and errors[0].task.item == 2000
        assert pool.map(tasks.square, range(10)) == [x * x for x in range(10)]
    assert tasks.calls(log) == list(range(7000))


def test_stream_unit_split_at_a_death_keeps_what_was_answered():
    # A worker can die after answering item 5 of a STREAM unit and before
    # its slot says item 6.  The postmortem splits the unit at 5; the part
    # holding item 5 must know it was answered, so that it is neither blamed
    # nor run again (no process can be stopped in that instant on demand).
    job: IMapIterator = IMapIterator(None, tasks.square, STREAM, "imap", True)
    unit = Unit(job, 100, list(range(10)), b"", lazy=True)
    unit.answered = 6
    before, alone, after = unit.split(5)
    assert [p.start for p in (before, alone, after)] == [100, 105, 106]
    assert (before.answered, alone.answered, after.answered) == (5, 1, 0)
    assert job.answered(alone, 0) and not job.answered(after, 0)
    (whole,) = unit.split(None)
    assert whole.answered == 6


class _DieAtThree:
    """Callable object (pickled by reference to this module)."""

    def __call__(self, x):
        return tasks.die_at(x, 3)


def test_many_deaths_leave_no_descriptors_or_zombies():
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def zombies() -> int:
        import psutil
        return sum(c.status() == psutil.STATUS_ZOMBIE for c in psutil.Process().children())

    with poolguard.Pool(2, context="fork") as pool:
        with pytest.raises(WorkerCrashedError):
            pool.apply(tasks.die, ("sigkill",))
        wait_until(lambda: len(pool.pids) == 2, 5)
        time.sleep(0.05)
        fds_after_one = min(open_fds() for _ in range(20))
        for _ in range(40):
            with pytest.raises(WorkerCrashedError):
                pool.apply(tasks.die, ("sigkill",))
        assert pool.map(tasks.square, range(10)) == [x * x for x in range(10)]
        wait_until(lambda: len(pool.pids) == 2, 5)
        # The sampler opens /proc files for a moment: allow it to finish.
        wait_until(lambda: open_fds() == fds_after_one, 2,
                   message=f"{open_fds()} descriptors open, {fds_after_one} after one death")
        assert zombies() == 0


def test_crash_error_pickles():
    err = WorkerCrashedError.from_death(pid=42, exitcode=-9,
                                        task=TaskInfo("f", "1", 0, "map"), peak_rss=2**20)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is WorkerCrashedError and str(copy) == str(err)
    assert (copy.pid, copy.exitcode, copy.signal, copy.task, copy.peak_rss) == \
        (42, -9, "SIGKILL", TaskInfo("f", "1", 0, "map"), 2**20)


def test_death_seen_even_when_a_grandchild_holds_the_pipes(method, tmp_path):
    marker = tmp_path / "grandchild"
    with poolguard.Pool(1, context=method) as pool:
        start = time.monotonic()
        try:
            with pytest.raises(WorkerCrashedError):
                pool.apply_async(tasks.fork_then_die, (str(marker),)).get(timeout=10)
            assert time.monotonic() - start < PROMPT
            # The grandchild was in the worker's process group: killed with it.
            grandchild = int(marker.read_text())
            wait_until(lambda: not _alive(grandchild), 2, message="grandchild still alive")
            assert pool.apply(tasks.square, (2,)) == 4
        finally:
            if marker.exists() and _alive(int(marker.read_text())):
                os.kill(int(marker.read_text()), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_pool_made_in_a_short_lived_thread_keeps_its_workers(method):
    # PR_SET_PDEATHSIG fires when the *thread* that started a worker ends.
    import threading
    box = []
    maker = threading.Thread(target=lambda: box.append(poolguard.Pool(2, context=method)))
    maker.start()
    maker.join()
    with box[0] as pool:
        wait_until(lambda: len(pool.pids) == 2, 10)
        pids = list(pool.pids)
        time.sleep(0.2)
        assert pool.map(tasks.getpid, range(20), 1) and pool.pids == pids
