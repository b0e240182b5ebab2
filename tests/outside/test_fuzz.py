"""Random sequences of pool operations against a model of what each must return."""
from __future__ import annotations

import os
import signal
import time

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import settings, strategies as st  # noqa: E402
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition,  # noqa: E402
                                 rule)

import poolguard  # noqa: E402
from poolguard import PoolTerminatedError, WorkerCrashedError  # noqa: E402

import tasks  # noqa: E402

BOUND = 10.0   # no call may block longer than this


class PoolModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.pool = poolguard.Pool(2)
        self.state = "running"
        self.outstanding = []    # (AsyncResult, expected value, kills before submit)
        self.kills = 0

    # ---- operations ----

    @precondition(lambda self: self.state == "running")
    @rule(x=st.integers(-1000, 1000), delay=st.sampled_from([0, 0, 0.01, 0.05]))
    def apply_async(self, x, delay):
        result = self.pool.apply_async(tasks.sleep_then_square, (x, delay))
        self.outstanding.append((result, x * x, self.kills))

    @precondition(lambda self: self.state == "running")
    @rule(xs=st.lists(st.integers(-50, 50), max_size=30),
          chunksize=st.one_of(st.none(), st.integers(1, 7)))
    def map(self, xs, chunksize):
        start = time.monotonic()
        assert self.pool.map(tasks.square, xs, chunksize) == [x * x for x in xs]
        assert time.monotonic() - start < BOUND

    @precondition(lambda self: self.state == "running")
    @rule(xs=st.lists(st.integers(-50, 50), max_size=20), ordered=st.booleans())
    def imap(self, xs, ordered):
        method = self.pool.imap if ordered else self.pool.imap_unordered
        got = list(method(tasks.square, iter(xs)))
        expected = [x * x for x in xs]
        assert got == expected if ordered else sorted(got) == sorted(expected)

    @precondition(lambda self: self.state == "running")
    @rule(pick=st.integers(0, 1))
    def kill_a_worker(self, pick):
        pids = self.pool.pids
        if pids:
            try:
                os.kill(pids[pick % len(pids)], signal.SIGKILL)
                self.kills += 1
            except ProcessLookupError:
                pass

    @rule()
    def get_everything(self):
        for result, expected, kills_before in self.outstanding:
            start = time.monotonic()
            try:
                value = result.get(BOUND)
            except WorkerCrashedError:
                # Only a kill made after the submission can fail a task.
                assert self.kills > kills_before
            except PoolTerminatedError:
                assert self.state == "terminated"
            else:
                assert value == expected
            assert time.monotonic() - start < BOUND
        self.outstanding.clear()

    @precondition(lambda self: self.state == "running")
    @rule()
    def close(self):
        self.pool.close()
        self.state = "closed"
        with pytest.raises(ValueError):
            self.pool.apply_async(tasks.square, (1,))

    @precondition(lambda self: self.state != "terminated")
    @rule()
    def terminate(self):
        start = time.monotonic()
        self.pool.terminate()
        assert time.monotonic() - start < BOUND
        self.state = "terminated"

    # ---- always true ----

    @invariant()
    def workers_match_state(self):
        if self.state == "terminated":
            assert self.pool.pids == []

    def teardown(self):
        self.get_everything()
        if self.state == "closed":
            self.pool.join()
        self.pool.terminate()
        assert self.pool.pids == []


TestPoolModel = PoolModel.TestCase
TestPoolModel.settings = settings(max_examples=60, stateful_step_count=12, deadline=None,
                                  database=None)
