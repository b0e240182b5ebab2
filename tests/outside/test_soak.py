"""The randomized soak (tests/soak.py): both fronts, every start method,
random guards, tasks that fail every way a task can, outside kills, each
call checked against the outcome model.

In the suite: a few rounds (a smoke test of the soak itself).  CI's part
60-soak runs it for POOLGUARD_SOAK_MINUTES; POOLGUARD_SOAK_SEED replays a
seed (benchmarks/long_soak.py --seed S --round R replays one round).
"""
from __future__ import annotations

import os

import pytest

import soak

MINUTES = float(os.environ.get("POOLGUARD_SOAK_MINUTES") or 0)
SEED = os.environ.get("POOLGUARD_SOAK_SEED")
SMOKE_ROUNDS = 6


# The last round may take its whole bound (60 s and more) after the time is up.
@pytest.mark.timeout(MINUTES * 60 + 600 if MINUTES else 400)
def test_soak():
    seed = int(SEED) if SEED else None
    if MINUTES:
        report = soak.run(seed, minutes=MINUTES)
    else:
        report = soak.run(seed, rounds=SMOKE_ROUNDS)
    print(report.summary())
    assert not report.violations, "\n".join(report.violations + [report.summary()])
