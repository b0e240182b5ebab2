"""Chaos matrix: random SIGKILLs of random workers (new ones included) during
long runs of every front, with retries: every result right, in order where
order is promised, none twice.  One short round each by default; with
``--soak SECONDS``, rounds repeat for that long per case."""
from __future__ import annotations

import functools
import time

import pytest

import poolguard

import tasks
from conftest import STATS, killing_workers

ITEMS = 400
work = functools.partial(tasks.sleep_then_square, seconds=0.004)


def run_map(pool, items):
    return pool.map(work, items, chunksize=4), True


def run_imap(pool, items):
    return list(pool.imap(work, items, chunksize=2)), True


def run_imap_unordered(pool, items):
    return list(pool.imap_unordered(work, iter(items), chunksize=3)), False


def run_executor(executor, items):
    return list(executor.map(work, items, chunksize=2)), True


FRONTS = {"map": run_map, "imap": run_imap, "imap_unordered": run_imap_unordered,
          "executor.map": run_executor}


@pytest.mark.soak          # timeout: 60 s plus 1.5 x the soak time (conftest)
@pytest.mark.parametrize("front", list(FRONTS))
def test_chaos(front, request):
    soak = request.config.getoption("soak")
    end = time.monotonic() + soak
    make = (lambda: poolguard.ProcessPoolExecutor(2, retries=50)) if front == "executor.map" \
        else (lambda: poolguard.Pool(2, retries=50))
    rounds = 0
    with make() as pool:
        with killing_workers(pool, 0.03, seed=len(front)) as kills:
            while True:
                items = list(range(rounds * ITEMS, (rounds + 1) * ITEMS))
                started = time.monotonic()
                got, ordered = FRONTS[front](pool, items)
                assert time.monotonic() - started < 60, "one round took over 60 s"
                expected = [x * x for x in items]
                assert (got if ordered else sorted(got)) == expected
                STATS["results"] += len(got)
                rounds += 1
                if time.monotonic() >= end:
                    break
    assert len(kills) >= 10 * rounds, f"only {len(kills)} kills in {rounds} rounds"
