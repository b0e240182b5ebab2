"""A seeded, randomized soak of both fronts against an outcome model.

Each round draws, from (seed, round) alone, a pool (``poolguard.Pool`` or
``poolguard.ProcessPoolExecutor``; fork, forkserver or spawn; 1 to 6
workers), its guards (task_timeout, max_worker_memory, retries, retry_on,
maxtasksperchild), and a few calls of every kind whose tasks return, raise,
kill or ``_exit`` themselves, segfault, oversleep the timeout, outgrow the
memory cap, return what does not pickle, or die on their first attempt only
(soak_tasks.py); in some rounds random workers are SIGKILLed from outside.
Then it checks: every call resolves before the round's deadline; its
outcomes are the ones the model implies (soak_model.py, soak_calls.py),
delivered once; the pool shuts down; and no descriptor, thread or child
process is left.  A violation names the seed and the round:
``python benchmarks/long_soak.py --seed S --round R`` replays that round.

Used by tests/outside/test_soak.py (a few minutes in CI) and benchmarks/long_soak.py.
"""
from __future__ import annotations

import collections
import faulthandler
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import psutil

import poolguard
from soak_calls import Apply, Call, ExecutorMap, IMap, MapAsync, Submit, Unresolved
from soak_model import DEATHS, Guards, Item
from soak_tasks import (EXIT, FIRST, KILL, MEMORY, RAISE, RETURN, SEGV, TIMEOUT,
                        UNPICKLABLE)

METHODS = ("fork", "forkserver", "spawn")
FRONTS = ("pool", "executor")
MiB = 2**20


@dataclass
class Plan:
    """One round, as drawn from (seed, round)."""
    seed: int
    round: int
    front: str
    method: str
    workers: int
    guards: Guards
    kills: List[float]                  # seconds into the round
    calls: List[Call] = field(default_factory=list)
    bound: float = 0.0                  # seconds every call has to resolve

    def describe(self) -> str:
        return (f"seed {self.seed} round {self.round}: {self.front} {self.method} "
                f"workers={self.workers} {self.guards.options()} "
                f"maxtasks={self.guards.maxtasks} kills={len(self.kills)}")


@dataclass
class Tally:
    rounds: int = 0
    calls: int = 0
    tasks: int = 0
    kills: int = 0


@dataclass
class Report:
    seed: int
    tallies: Dict[Tuple[str, str], Tally] = field(
        default_factory=lambda: collections.defaultdict(Tally))
    violations: List[str] = field(default_factory=list)
    outcomes: "collections.Counter[str]" = field(default_factory=collections.Counter)

    def total(self) -> Tally:
        out = Tally()
        for t in self.tallies.values():
            out.rounds, out.calls = out.rounds + t.rounds, out.calls + t.calls
            out.tasks, out.kills = out.tasks + t.tasks, out.kills + t.kills
        return out

    def summary(self) -> str:
        total = self.total()
        lines = [f"soak seed {self.seed}: {total.rounds} rounds, {total.calls} calls, "
                 f"{total.tasks} tasks, {total.kills} outside kills, "
                 f"{len(self.violations)} violations"]
        for (front, method), t in sorted(self.tallies.items()):
            lines.append(f"  {front:8} {method:10} {t.rounds:5} rounds {t.calls:6} calls "
                         f"{t.tasks:7} tasks {t.kills:4} kills")
        lines.append("  outcomes: " + ", ".join(f"{n} {name}" for name, n
                                                in self.outcomes.most_common()))
        return "\n".join(lines)


# ---- drawing a round ----------------------------------------------------------------

# Kinds left out for now, each for a known bug whose fix is not in yet
# (none: the lost task_timeout of a unit pipelined behind another is fixed).
LEFT_OUT: Dict[str, str] = {}


def draw(seed: int, number: int, markers: str) -> Plan:
    rng = random.Random(f"{seed}:{number}")
    front, method = rng.choice(FRONTS), rng.choice(METHODS)
    guards = Guards(task_timeout=rng.choice([None, None, 1.0, 2.0]),
                    max_worker_memory=rng.choice([None, None, 200 * MiB, 300 * MiB]),
                    retries=rng.choice([0, 0, 1, 2]),
                    retry_on=rng.choice([None, None, frozenset({"crash", "oom"}),
                                         frozenset({"timeout", "memory"})]),
                    maxtasks=rng.choice([None, None, 1, 3, 10]))
    kills = sorted(rng.uniform(0.05, 2.0) for _ in range(rng.randint(1, 4))) \
        if rng.random() < 0.3 else []
    plan = Plan(seed, number, front, method, rng.randint(1, 6), guards, kills)
    kinds = _kinds(guards)
    budget = {TIMEOUT: 1, MEMORY: 2}
    for call_number in range(rng.randint(1, 4)):
        plan.calls.extend(_draw_calls(rng, plan, number * 100 + call_number, kinds, budget,
                                      markers))
    plan.bound = _bound(plan)
    return plan


def _kinds(guards: Guards) -> List[str]:
    kinds = [RAISE, KILL, EXIT, SEGV, UNPICKLABLE, FIRST]
    if guards.task_timeout is not None:
        kinds.append(TIMEOUT)
    # Not under a task_timeout too: a task still growing towards the cap when
    # the timeout comes (on a loaded machine) is rightly stopped by the
    # timeout, and the outcome would depend on the load (seen: 1 round in 310
    # at a load of 10 on 2 cores, task_timeout=1.0).
    if guards.max_worker_memory is not None and guards.task_timeout is None:
        kinds.append(MEMORY)
    return [k for k in kinds if k not in LEFT_OUT]


def _draw_items(rng: random.Random, call: int, count: int, kinds: List[str],
                budget: Dict[str, int], markers: str, guards: Guards
                ) -> Tuple[List[Item], List[tuple[Any, ...]]]:
    rate = rng.choice([0, 0, 0.05, 0.15, 0.4])
    items, specs = [], []
    for index in range(count):
        kind = rng.choice(kinds) if rng.random() < rate else RETURN
        if budget.get(kind, 1) <= 0:
            kind = RETURN
        elif kind in budget:
            budget[kind] -= 1
        size = 200_000 if rng.random() < 0.03 else rng.randint(0, 100)
        delay = rng.uniform(0, 0.01) if rng.random() < 0.3 else 0.0
        items.append(Item(kind, call, index, size))
        specs.append((kind, call, index, markers, size, delay, guards.max_worker_memory or 0))
    return items, specs


def _draw_calls(rng: random.Random, plan: Plan, call: int, kinds: List[str],
                budget: Dict[str, int], markers: str) -> List[Call]:
    guards = plan.guards
    shape = rng.choice(["single", "map", "imap"])
    if shape == "single":
        out: List[Call] = []
        for n in range(rng.randint(1, 8)):
            items, specs = _draw_items(rng, call * 10 + n, 1, kinds, budget, markers, guards)
            out.append((Apply if plan.front == "pool" else Submit)(items, specs, guards))
        return out
    items, specs = _draw_items(rng, call * 10, rng.choice([0, 1, 5, 20, 40, 60]), kinds,
                               budget, markers, guards)
    if plan.front == "executor":
        chunksize = rng.choice([None, None, 1, 2, 5])
        return [ExecutorMap(items, specs, guards, chunksize,
                            columns=bool(items) and rng.random() < 0.3)]
    if shape == "map":
        chunksize = rng.choice([None, 1, 2, 3, 8])
        if chunksize is None:   # Pool.map's default
            chunksize, extra = divmod(len(items), plan.workers * 4)
            chunksize = max(1, chunksize + bool(extra))
        return [MapAsync(items, specs, guards, chunksize, star=rng.random() < 0.4)]
    return [IMap(items, specs, guards, rng.choice([1, 1, 2, 3, 5]), ordered=rng.random() < 0.5,
                 lazy=rng.random() < 0.3)]


def _bound(plan: Plan) -> float:
    """Seconds every call of the round has to resolve: far above what the
    round costs on a loaded machine, far below 'never'."""
    guards, per_death = plan.guards, (0.5 if plan.method == "fork" else 2.0)
    bound = 60.0
    for call in plan.calls:
        for item in call.items:
            if item.kind in DEATHS:
                tries = guards.retries + 1 if guards.retried(item.kind) else 1
                bound += tries * per_death
                if item.kind == TIMEOUT:
                    bound += tries * ((guards.task_timeout or 0) + 1.0)
    return bound


# ---- playing a round ----------------------------------------------------------------

def make_pool(plan: Plan) -> Any:
    g = plan.guards
    options = dict(task_timeout=g.task_timeout, max_worker_memory=g.max_worker_memory,
                   retries=g.retries, retry_on=g.retry_on)
    if plan.front == "pool":
        return poolguard.Pool(plan.workers, maxtasksperchild=g.maxtasks, context=plan.method,
                              **options)
    return poolguard.ProcessPoolExecutor(plan.workers, mp_context=plan.method,
                                         max_tasks_per_child=g.maxtasks, **options)


class Killer(threading.Thread):
    """SIGKILLs a random worker of the pool (its own pids only) at each planned time."""

    def __init__(self, pool: Any, plan: Plan) -> None:
        super().__init__(name="soak-killer", daemon=True)
        self.pool, self.times = pool, plan.kills
        self.rng = random.Random(f"{plan.seed}:{plan.round}:kills")
        self.stop = threading.Event()
        self.done = 0

    def run(self) -> None:
        started = time.monotonic()
        for at in self.times:
            if self.stop.wait(max(0.0, started + at - time.monotonic())):
                return
            pids = self.pool.pids
            if pids:
                try:
                    os.kill(self.rng.choice(pids), signal.SIGKILL)
                    self.done += 1
                except ProcessLookupError:
                    pass


def play(plan: Plan) -> List[str]:
    """Run one round; its violations."""
    baseline = Snapshot()
    problems: List[str] = []
    pool = make_pool(plan)
    killer = Killer(pool, plan)
    deadline = time.monotonic() + plan.bound
    try:
        killer.start()
        for call in plan.calls:
            call.start(pool, deadline)
        for call in plan.calls:
            call.collect(deadline)
    except Unresolved:
        problems.append(f"a call did not resolve within {plan.bound:.0f} s; "
                        f"workers: {pool.status()}")
        _dump(pool)
    finally:
        killer.stop.set()
        killer.join()
        plan.kills = plan.kills[:killer.done]
    if not problems:
        for call in plan.calls:
            problems.extend(call.check(strict=not killer.done))
    problems.extend(_shut_down(pool, plan, terminate=bool(problems)))
    problems.extend(baseline.leaks())
    return problems


def _shut_down(pool: Any, plan: Plan, terminate: bool) -> List[str]:
    """Close (Pool: close+join or terminate, as drawn; executor: shutdown),
    within a bound: what is still running (a task after the error that
    ended an executor.map, say) may take its time, not forever."""
    rng = random.Random(f"{plan.seed}:{plan.round}:end")
    if plan.front == "pool":
        how = "terminate" if terminate or rng.random() < 0.5 else "close+join"
        action: Callable[[], None] = pool.terminate if how == "terminate" else \
            lambda: (pool.close(), pool.join())
    else:
        how = "terminate_workers" if terminate else "shutdown(wait=True)"
        action = pool.terminate_workers if terminate else lambda: pool.shutdown(wait=True)
    thread = threading.Thread(target=action, name="soak-shutdown", daemon=True)
    thread.start()
    thread.join(plan.bound)
    if thread.is_alive():
        _dump(pool)
        return [f"{how} did not return within {plan.bound:.0f} s"]
    return []


def _dump(pool: Any) -> None:
    sys.stderr.write("\n=== soak: stacks of this process, then of the workers ===\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(all_threads=True)
    pool.dump_stacks()
    time.sleep(0.5)


class Snapshot:
    """Descriptors, threads and child processes before a round."""

    def __init__(self) -> None:
        self.fds, self.threads, self.children = _fds(), _threads(), _children()

    def leaks(self, wait: float = 10.0) -> List[str]:
        end = time.monotonic() + wait
        while True:
            now = _children()
            fds, threads, children = (_fds() - self.fds, _threads() - self.threads,
                                      [now[pid] for pid in now.keys() - self.children.keys()])
            if not (fds or threads or children) or time.monotonic() > end:
                break
            time.sleep(0.02)
        out = []
        if fds:
            out.append(f"descriptors left: {sorted(_describe_fd(fd) for fd in fds)}")
        if threads:
            out.append(f"threads left: {sorted(threads)}")
        if children:
            out.append(f"child processes left: {sorted(children)}")
        return out


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _describe_fd(fd: str) -> str:
    try:
        return f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}"
    except OSError:
        return fd


def _threads() -> set[str]:
    return {f"{t.name}#{t.ident}" for t in threading.enumerate()}


def _children() -> Dict[int, str]:
    """Every descendant (zombies too: one not reaped is a leak): pid -> what it is."""
    out = {}
    for child in psutil.Process().children(recursive=True):
        try:
            out[child.pid] = f"{child.pid} {child.status()} {' '.join(child.cmdline())[:80]}"
        except psutil.Error:
            pass
    return out


# ---- the driver ---------------------------------------------------------------------

def run(seed: Optional[int] = None, minutes: Optional[float] = None,
        rounds: Optional[int] = None, only_round: Optional[int] = None,
        log: Callable[[str], None] = print,
        tick: Optional[Callable[[Report], None]] = None) -> Report:
    """Play rounds 0, 1, 2... of *seed* for *minutes* or *rounds* (or just
    *only_round*); each violation is logged as it is found, and *tick* is
    called after each round."""
    from multiprocessing import forkserver, resource_tracker
    forkserver.ensure_running()      # helpers that live as long as this process:
    resource_tracker.ensure_running()   # started before the first round's snapshot
    seed = random.randrange(2**32) if seed is None else seed
    report = Report(seed)
    log(f"soak seed {seed} (replay a round: --seed {seed} --round R)")
    end = None if minutes is None else time.monotonic() + minutes * 60
    number = only_round if only_round is not None else 0
    while True:
        markers = tempfile.mkdtemp(prefix="poolguard-soak-")
        try:
            plan = draw(seed, number, markers)
            problems = play(plan)
        finally:
            shutil.rmtree(markers, ignore_errors=True)
        tally = report.tallies[(plan.front, plan.method)]
        tally.rounds += 1
        tally.calls += len(plan.calls)
        tally.tasks += sum(len(call.items) for call in plan.calls)
        tally.kills += len(plan.kills)
        for call in plan.calls:
            report.outcomes.update("value" if kind == "v" else type(value).__name__
                                   for kind, value in call.events)
        for problem in problems:
            text = f"{plan.describe()}: {problem}"
            report.violations.append(text)
            log("VIOLATION " + text)
        number += 1
        if tick is not None:
            tick(report)
        if only_round is not None or (rounds is not None and number >= rounds) or \
                (end is not None and time.monotonic() >= end):
            return report
