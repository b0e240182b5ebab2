"""poolguard.Pool behaves as multiprocessing.Pool where the two agree."""
from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
import time
from multiprocessing.pool import MaybeEncodingError, RemoteTraceback

import pytest

import poolguard
from poolguard import PoolTerminatedError, UnpicklableTaskError

import tasks
from conftest import PROMPT


@pytest.fixture
def pool():
    with poolguard.Pool(2) as p:
        yield p


def test_map_family(pool):
    assert pool.map(tasks.square, range(100)) == [x * x for x in range(100)]
    assert pool.map(tasks.square, iter(range(10)), chunksize=3) == [x * x for x in range(10)]
    assert pool.map(tasks.square, []) == []
    assert pool.starmap(tasks.add, [(1, 2), (3, 4)]) == [3, 7]
    assert pool.map_async(tasks.square, range(5)).get(10) == [0, 1, 4, 9, 16]
    assert pool.starmap_async(tasks.add, [(1, 1)]).get(10) == [2]
    assert pool.apply(tasks.add, (1,), {"b": 5}) == 6
    assert pool.apply_async(tasks.square, (9,)).get(10) == 81


def test_imap_orders_and_unordered_has_each_once(pool):
    assert list(pool.imap(tasks.square, range(50), chunksize=4)) == [x * x for x in range(50)]
    assert list(pool.imap(tasks.square, (x for x in range(7)))) == [x * x for x in range(7)]
    got = list(pool.imap_unordered(tasks.square, (x for x in range(60)), chunksize=7))
    assert sorted(got) == [x * x for x in range(60)]
    assert list(pool.imap(tasks.square, [])) == []


def test_imap_of_an_endless_generator_returns_at_once(pool):
    it = pool.imap(tasks.square, itertools.count(), chunksize=5)
    assert [it.next(timeout=10) for _ in range(20)] == [x * x for x in range(20)]
    pool.terminate()   # the producer thread must stop too (checked by the leak fixture)


def test_imap_iterable_that_raises(pool):
    def items():
        yield 1
        yield 2
        raise KeyError("input broke")
    it = pool.imap(tasks.square, items())
    assert it.next(timeout=10) == 1 and it.next(timeout=10) == 4
    with pytest.raises(KeyError, match="input broke"):
        it.next(timeout=10)
    with pytest.raises(StopIteration):
        it.next(timeout=10)


def test_task_exception_keeps_type_and_remote_traceback(pool):
    with pytest.raises(ValueError, match="bad input 3") as info:
        pool.map(tasks.fail, [3])
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback) and "in fail" in str(cause)
    with pytest.raises(ValueError):
        pool.apply(tasks.fail, (1,))
    assert pool.apply(tasks.square, (3,)) == 9


def test_exception_that_does_not_unpickle_keeps_its_text(pool):
    with pytest.raises(UnpicklableTaskError) as info:
        pool.apply(tasks.raise_two_arg, (5,))
    err = info.value
    assert err.type_name == "tasks.TwoArgError"
    assert "two-arg failure 5/b" in str(err) and "unpickled in the parent" in err.reason
    assert "raise_two_arg" in err.remote_traceback
    assert pool.map(tasks.square, range(3)) == [0, 1, 4]


def test_exception_that_does_not_pickle_keeps_its_text(pool):
    with pytest.raises(UnpicklableTaskError) as info:
        pool.apply(tasks.raise_locked, (5,))
    assert "holding a lock for 5" in str(info.value)
    assert "pickled in the worker" in info.value.reason
    assert pool.apply(tasks.square, (4,)) == 16


def test_unpicklable_result_raises_maybe_encoding_error(pool):
    with pytest.raises(MaybeEncodingError) as info:
        pool.map(tasks.return_lock, [1])
    assert "lock" in str(info.value)
    assert pool.apply(tasks.square, (2,)) == 4


def test_unpicklable_argument_raises_at_get(pool):
    lock = threading.Lock()
    with pytest.raises(TypeError, match="lock"):
        pool.map(tasks.square, [lock])
    assert pool.apply(tasks.square, (2,)) == 4


def test_system_exit_in_task_is_the_tasks_error(pool):
    with pytest.raises(SystemExit):
        pool.apply(tasks.exit_task, (4,))
    assert pool.apply(tasks.square, (5,)) == 25


def test_get_timeout_and_ready_successful(pool):
    result = pool.apply_async(tasks.sleep_then, (PROMPT + 1, "done"))
    with pytest.raises(ValueError, match="not ready"):
        result.successful()
    start = time.monotonic()
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.05)
    assert time.monotonic() - start < PROMPT
    assert not result.ready()
    result.wait(10)
    assert result.ready() and result.successful() and result.get() == "done"
    it = pool.imap(tasks.sleep_then, [0.5])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.05)
    assert it.next(timeout=10) is None


def test_callbacks(pool):
    got, errors = [], []
    done = threading.Event()
    pool.map_async(tasks.square, range(4), callback=got.append).wait(10)
    pool.apply_async(tasks.fail, (1,), error_callback=lambda e: (errors.append(e), done.set()))
    assert done.wait(10)
    assert got == [[0, 1, 4, 9]] and isinstance(errors[0], ValueError)


def test_callback_that_raises_does_not_break_the_pool(pool, capfd):
    def bad_callback(_):
        raise RuntimeError("callback bug")
    result = pool.apply_async(tasks.square, (3,), callback=bad_callback)
    assert result.get(10) == 9
    assert pool.apply(tasks.square, (4,)) == 16
    assert "callback bug" in capfd.readouterr().err


def test_lambdas_and_closures_travel_by_value(method):
    offset = 10
    with poolguard.Pool(2, context=method) as pool:
        assert pool.map(lambda x: x + offset, range(3)) == [10, 11, 12]


def test_close_join_and_state_errors():
    pool = poolguard.Pool(2)
    result = pool.map_async(tasks.sleep_then, [0.2] * 4)
    with pytest.raises(ValueError):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply(tasks.square, (1,))
    pool.join()
    assert result.get(0) == [None] * 4
    assert pool.pids == []


def test_close_waits_for_lazy_imap():
    pool = poolguard.Pool(2)
    it = pool.imap(tasks.square, (x for x in range(200)))
    pool.close()
    assert list(it) == [x * x for x in range(200)]
    pool.join()


def test_terminate_fails_unfinished_work():
    pool = poolguard.Pool(1)
    slow = [pool.apply_async(tasks.sleep_then, (30,)) for _ in range(3)]
    start = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - start < 3
    for result in slow:
        with pytest.raises(PoolTerminatedError):
            result.get(1)


def test_context_manager_terminates():
    with poolguard.Pool(2) as pool:
        pids = pool.pids or [pool.apply(os.getpid)]
    assert pool.pids == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_unclosed_pool_warns_and_cleans_up():
    pool = poolguard.Pool(1)
    assert pool.apply(tasks.square, (3,)) == 9
    with pytest.warns(ResourceWarning):
        del pool
        import gc
        gc.collect()


def test_one_shot_pool_expression():
    # The pool object is dropped as soon as map returns, as people write it.
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        assert poolguard.Pool(2).map(tasks.square, range(3)) == [0, 1, 4]


def test_default_processes_follow_loky_cpu_count():
    from loky import cpu_count
    with poolguard.Pool() as pool:
        assert pool._processes == cpu_count()
        assert "pool_size=%d" % cpu_count() in repr(pool)


@pytest.mark.parametrize("kwargs, error", [
    ({"processes": 0}, ValueError),
    ({"processes": -2}, ValueError),
    ({"processes": 1.5}, TypeError),
    ({"initializer": 3}, TypeError),
    ({"maxtasksperchild": 0}, ValueError),
    ({"context": 5}, TypeError),
    ({"context": "nosuchmethod"}, ValueError),
])
def test_bad_constructor_arguments(kwargs, error):
    with pytest.raises(error):
        poolguard.Pool(**kwargs)


def test_bad_chunksize(pool):
    with pytest.raises(ValueError, match="Chunksize"):
        pool.imap(tasks.square, range(3), chunksize=0)
    with pytest.raises(ValueError, match="Chunksize"):
        pool.map(tasks.square, range(3), chunksize=0)


def test_maxtasksperchild_recycles_without_errors(method):
    with poolguard.Pool(2, maxtasksperchild=3, context=method) as pool:
        pids = pool.map(tasks.getpid, range(30), chunksize=1)
        assert len(set(pids)) >= 10   # 30 tasks, 3 per worker
        assert pool.map(tasks.square, range(20), 2) == [x * x for x in range(20)]


def test_large_arguments_and_results_with_a_crash_between(method):
    big = b"y" * (8 << 20)
    with poolguard.Pool(2, context=method) as pool:
        results = [pool.apply_async(tasks.big_len, (big,)) for _ in range(6)]
        crash = pool.apply_async(tasks.die, ("sigkill",))
        more = [pool.apply_async(tasks.make_big, (3 << 20,)) for _ in range(4)]
        assert [r.get(30) for r in results] == [8 << 20] * 6
        with pytest.raises(poolguard.WorkerCrashedError):
            crash.get(30)
        assert [len(r.get(30)) for r in more] == [3 << 20] * 4


def test_lazy_imap_reads_ahead_a_bounded_amount(pool):
    read = []

    def endless():
        i = 0
        while True:
            read.append(i)
            yield i
            i += 1
    it = pool.imap(tasks.square, endless())
    assert [next(it) for _ in range(10)] == [x * x for x in range(10)]
    # Nobody consumes: the read-ahead grows, then stops, well short of the input.
    before, deadline = -1, time.monotonic() + 10
    while len(read) != before and time.monotonic() < deadline:
        before = len(read)
        time.sleep(0.2)
    assert len(read) < 5000   # bounded read-ahead, not the whole endless input
    pool.terminate()


def test_pool_refuses_use_from_a_forked_child(pool):
    pid = os.fork()
    if pid == 0:
        try:
            pool.apply_async(tasks.square, (2,))
        except RuntimeError as exc:
            os._exit(0 if "forked child" in str(exc) else 1)
        os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_many_threads_submitting_never_lose_a_wake_up():
    # Regression: the supervisor once cleared its "woken" flag before draining
    # the wake pipe, so a caller's byte could be drained with the flag left
    # set; every later wake-up was then skipped and the next wait hung.
    with poolguard.Pool(2) as pool:
        errors = []

        def caller(offset):
            try:
                for i in range(300):
                    assert pool.apply_async(tasks.square, (offset + i,)).get(20) == \
                        (offset + i) ** 2
            except Exception as exc:   # reported below; a hang fails by timeout
                errors.append(exc)
        threads = [threading.Thread(target=caller, args=(k * 1000,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors and not any(t.is_alive() for t in threads)


def test_slow_callback_does_not_delay_crash_detection(pool):
    import time
    slow = pool.apply_async(tasks.square, (2,), callback=lambda _: time.sleep(PROMPT + 1))
    start = time.monotonic()
    with pytest.raises(poolguard.WorkerCrashedError):
        pool.apply_async(tasks.die, ("sigkill",)).get(10)
    assert time.monotonic() - start < PROMPT
    assert slow.get(10) == 4 and slow.ready()   # get() returned after the callback


def test_callback_may_terminate_its_pool():
    pool = poolguard.Pool(1)
    done = threading.Event()
    pool.apply_async(tasks.square, (2,), callback=lambda _: (pool.terminate(), done.set()))
    assert done.wait(10)
    pool.join()
    assert pool.pids == []


@pytest.mark.parametrize("chunksize", [1, 3])
def test_lazy_imap_producer_goes_on_once_the_consumer_makes_room(pool, chunksize):
    # The producer stops a bounded amount ahead of the consumer.  When the
    # consumer takes the next value, the producer must read on at once, not
    # when its 0.2 s wait next runs out (0.1 s on average, each time).
    asked: list = []   # when the input was asked for each item

    def items():
        for i in itertools.count():
            asked.append(time.monotonic())
            yield i
    it = pool.imap(tasks.identity, items(), chunksize)
    waited = 0.0
    for _ in range(10):
        _until_still(asked)   # the read-ahead is full, its results are in
        n, start = len(asked), time.monotonic()
        for _ in range(chunksize):   # a chunk: what the producer counts
            next(it)
        deadline = start + 10
        while len(asked) == n and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(asked) > n
        waited += asked[n] - start
    assert waited < 0.5   # with the stall: about 1 s
    pool.terminate()


def _until_still(grows: list, quiet: float = 0.3) -> None:
    """Wait until *grows* has not grown for *quiet* seconds (10 s at most)."""
    deadline = time.monotonic() + 10
    before = -1
    while len(grows) != before and time.monotonic() < deadline:
        before = len(grows)
        time.sleep(quiet)
