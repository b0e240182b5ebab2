"""The pool's workers as one set, kept by slot: started through the
launcher, watched, forgotten after their death; who is idle, busy or may
take a unit, without a scan (workers.py holds one worker's record)."""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set

from .. import diagnosis
from ..wire import private_fds
from ..wire.channels import Spiller, WatchSet, Watched
from ..wire.framing import frame
from ..wire.messages import STOP, TASK_HEADER
from ..wire.slots import INITIALIZING, SharedSlots
from .jobs import Unit
from .launch import StartError, WorkerPipes, describe_start_error
from .pacing import Offers, Pacer
from .reports import Accounts, PoolStats, WorkerStatus
from .timers import Timers
from .workers import State, Worker, kill_group, signal_process


class WorkerSet:
    """The pool's workers, one per slot: started through the launcher, their
    pipes and death fds in the supervisor's watch set, forgotten after death.
    Only the supervisor thread changes it; the reports (pids, status) copy
    what they read and may be called from any thread."""

    def __init__(self, count: int, slots: SharedSlots, launcher: Any, watch: WatchSet,
                 spiller: Spiller, pacer: Pacer):
        self.count = count
        self.by_slot: Dict[int, Worker] = {}
        self._slots = slots
        self._launcher = launcher
        self._watch = watch
        self._spiller = spiller
        # Kept as workers change (Worker calls _changed), so that no event
        # of the supervisor's needs a scan of every worker:
        self.vacant: Set[int] = set(range(count))    # slots without a worker
        self.busy: Dict[int, Worker] = {}            # with units in flight
        self.empty_handed: Dict[int, Worker] = {}    # without, starting or ready
        self.starting_idle: Dict[int, Worker] = {}   # without, not ready yet
        self.offers: Offers[Worker] = Offers(pacer)  # which may take a unit, and when
        self.timers = Timers()                       # signals due, timeout checks
        self.accounts = Accounts(count)              # stats(): told of each change below
        # Set once every slot has had a worker (or none can start): until
        # then pids and status() wait, since a pool starts its workers on the
        # supervisor thread, after Pool() has returned.
        self.first_round = threading.Event()
        self._never_started = set(range(count))

    def __iter__(self) -> Iterator[Worker]:
        return iter(list(self.by_slot.values()))

    def __len__(self) -> int:
        return len(self.by_slot)

    def empty_slots(self) -> List[int]:
        return sorted(self.vacant)

    def _changed(self, worker: Worker) -> None:
        place = (bool(worker.inflight), worker.state, worker.gone)
        if place != worker.place:   # twice a unit: mostly the same
            worker.place = place
            self._file(worker)
            self.accounts.observe(worker, worker.state is State.STARTING)
        self.offers.update(worker)

    def _file(self, worker: Worker) -> None:
        index, busy = worker.index, bool(worker.inflight) and not worker.gone
        for table, member in ((self.busy, busy),
                              (self.empty_handed, not busy and not worker.gone
                               and worker.state <= State.READY),
                              (self.starting_idle, not busy and not worker.gone
                               and worker.state is State.STARTING)):
            if member:
                table[index] = worker
            else:
                table.pop(index, None)

    def start(self, index: int) -> Optional[Worker]:
        """Start the worker of slot *index*, or ask for it (None: the launcher
        answers later, take_prepared); StartError if it cannot be."""
        prepared = self._launcher.take_prepared(index)   # answered by the zygote
        if prepared is not None:
            pipes, process = prepared
        else:
            try:
                pipes = WorkerPipes()
            except OSError as exc:
                raise StartError(f"cannot make a worker's pipes: "
                                 f"{describe_start_error(exc)}") from exc
            self._slots.write(index, INITIALIZING, 0)
            try:   # the launcher closes the child's ends
                started = self._launcher.start(index, pipes)
            except StartError:
                pipes.close_parent_ends()
                raise
            if started is None:
                return None
            process = started
        try:
            os.set_blocking(pipes.task_w, False)
            worker = Worker(index, process, pipes.task_w, pipes.result_r, pipes.crash_r,
                            self.timers, self.offers, self._changed)
        except OSError as exc:   # out of descriptors for its /proc files
            signal_process(process, signal.SIGKILL)
            process.reap()
            process.close()
            pipes.close_parent_ends()
            raise StartError(f"cannot watch a new worker: {describe_start_error(exc)}") from exc
        self.by_slot[index] = worker
        self.vacant.discard(index)
        self._never_started.discard(index)
        if not self._never_started:
            self.first_round.set()
        self._changed(worker)
        self._watch.add(worker.reader.fd, worker, Watched.RESULT)
        self._watch.add(worker.death_fd, worker, Watched.DEATH)
        return worker

    def send(self, worker: Worker, parts: Sequence[bytes]) -> None:
        self._spiller.write(worker.task_fd, parts)

    def forget(self, worker: Worker) -> None:
        """After its death: close all that was its."""
        self._watch.discard(worker.reader.fd)
        self._watch.discard(worker.death_fd)
        del self.by_slot[worker.index]
        self.vacant.add(worker.index)
        worker.gone = True
        self._changed(worker)
        private_fds.close(worker.reader.fd)
        private_fds.close(worker.crash_fd)
        private_fds.release(worker.task_fd)
        self._spiller.close_fd(worker.task_fd)
        worker.watch.close()
        worker.process.close()

    def may_serve(self) -> bool:
        """Is any worker ready or still starting (not failed nor terminated)?"""
        return any(w.state not in (State.INIT_FAILED, State.TERMINATING) for w in self)

    def take_inflight(self) -> List[Unit]:
        units: List[Unit] = []
        for worker in list(self.busy.values()):
            units.extend(worker.inflight)
            worker.inflight.clear()
            self._changed(worker)
        return units

    def stop_idle(self) -> None:
        """Ask each worker with nothing in flight to exit (close())."""
        for worker in list(self.empty_handed.values()):
            if worker.advance(State.STOPPING):
                self.send(worker, frame(TASK_HEADER.pack(STOP, 0)))

    def terminate(self, grace: float) -> None:
        """SIGTERM each worker; SIGKILL follows *grace* seconds later (no
        SIGTERM first when *grace* is 0)."""
        now = time.monotonic()
        for worker in self:
            if worker.advance(State.TERMINATING):
                if grace <= 0:
                    signal_process(worker.process, signal.SIGKILL)
                    continue
                signal_process(worker.process, signal.SIGTERM)
                worker.escalate([(now + grace, signal.SIGKILL)])

    def kill_all(self) -> None:
        """SIGKILL every worker and its group, reap and forget it."""
        for worker in self:
            signal_process(worker.process, signal.SIGKILL)
            kill_group(worker.pid)
            worker.process.reap()
            self.forget(worker)

    def pids(self) -> List[int]:
        return [w.pid for w in self]

    def status(self) -> List[WorkerStatus]:
        """What each worker is doing now (its slot, its units, /proc)."""
        out = []
        now = time.monotonic_ns()
        for worker in self:
            slot = self._slots.read(worker.index)
            task, elapsed, state = None, None, "idle"
            if slot.task_id == INITIALIZING:
                state = "starting"
            elif slot.task_id >= 0:
                task = worker.describe_running(slot)
                # None: answered already; the worker clears its slot after its
                # reply (and, forked by the zygote, after its first task starts
                # its parent-watching thread), so a status read at once saw it busy.
                if task is not None:
                    state = "busy"
                    elapsed = (now - slot.started) / 1e9 if slot.started else None
            if diagnosis.process_state(worker.pid) in ("T", "t"):
                state = "stopped"
            out.append(WorkerStatus(worker.pid, state, task, elapsed,
                                    diagnosis.rss_of(worker.pid)))
        return out

    def stats(self, sample: bool = True) -> PoolStats:
        """What each slot did since the pool began; safe from any thread."""
        return self.accounts.stats(list(self.by_slot.values()), sample)

    def dump_stacks(self) -> None:
        """Each worker prints every thread's stack to its stderr (SIGUSR1)."""
        for worker in self:
            signal_process(worker.process, signal.SIGUSR1)
