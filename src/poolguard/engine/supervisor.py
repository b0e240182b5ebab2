"""The supervisor: the loop of the one thread per pool that owns all state.

Data flow (local.py's Engine builds the parts and answers the fronts)::

  caller threads                 supervisor thread (Supervisor.run)          processes
  --------------                 ----------------------------------          ---------
  Engine() (local.py)
    | makes the Parts; under fork the launcher forks the zygote ----> zygote (worker/
    |   before any thread of ours exists                               zygote_main.py):
    | Engine.submit_items(job): jobs.cut_units -> units                forks, reaps
    v
  Inbox (inbox.py): pending units, PoolState, open calls; its lock
    |  ---- wake pipe ---->  WatchSet.wait (epoll), the loop's only blocking point
    |                          | maintain: a start per empty slot (launch/, START_BUDGET)
    |                          | dispatch.py: units to the workers pacing.py allows
    |                          |   frames on each task pipe, non-blocking ----> worker/loop.py
    |                          |   (the Spiller thread writes what a full pipe     | writes the
    |                          |    cannot take now; large arguments outside the  | unit and item
    |                          |    pipe: wire/buffers.py)                         | it runs to its
    |                          |                                                   | slot (wire/
    |                          | <------------- result pipe (large results: a memfd) slots.py)
    |                          | replies.py: decode (never raises) -> deliver to the job
    |                          |   (user callbacks: the callbacks.py thread)
    |                          | <------------- pidfd readable: a death
    |                          | postmortem.py: the culprit (its slot), its error or its
    |                          |   retry, the units to run elsewhere, a throttle
    |                          | <------------- launcher's descriptors: an answer, a death
    |                          | guards.py: task_timeout -> SIGUSR2 (stacks), SIGTERM,
    |                          |   SIGKILL; RSS over max_worker_memory -> SIGKILL; stops asked

What the loop waits on (WatchSet, tagged ``Watched``):

* the inbox's wake pipe: a caller queued units or changed the state, or
  asked to stop a call;
* each worker's result pipe (RESULT) and its pidfd, or its sentinel where
  pidfds are missing (DEATH);
* the launcher's descriptors (LAUNCHER): under fork the zygote's and its
  standby's sockets and pidfds, under forkserver the starter thread's pipe;
* a timeout: the next deadline of the guards (timers.py: signals due,
  task timeouts, RSS samples), of a unit waiting for a worker whose queue
  ends soon (pacing.py's Offers), or none.

What another thread touches:

* the inbox, under its lock (callers: submit, close, terminate; the
  executor's shutdown takes the units not yet sent);
* ``GuardKeeper.stops``, under its own lock (a call stopped from a caller);
* ``Replies.remote_reads``, written here and read by callers as they cut
  units (a bool);
* the worker set's snapshots (``status()``, ``stats()``, ``pids``): read
  from callers' threads as copies; ``stats()``'s accounts under their lock;
* the jobs: the loop delivers results, callers wait on them under each
  job's lock; user callbacks run on the callbacks thread, never here;
* the Spiller's queue (its thread) and the starter's (forkserver's thread).

No turn scans every worker (worker_set.py, pacing.py's Offers, a heap of
deadlines), and no lock is shared with a worker: one killed at any instant
cannot block anyone.
"""
from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from ..diagnosis import KernelLog
from ..errors import PoolTerminatedError, WorkerInitError
from ..naming import function_name
from ..wire.channels import Read, Spiller, WatchSet, Watched
from ..wire.slots import SharedSlots
from .dispatch import Dispatcher
from .guards import GuardKeeper
from .inbox import CLOSING, RUNNING, TERMINATING, Inbox
from .jobs import Unit, deliver
from .launch import Launcher, ParentAlive, StartError, ZygoteLauncher
from .pacing import Pacer
from .postmortem import Postmortem
from .replies import Replies
from .worker_set import WorkerSet
from .workers import Worker, kill_group

TERMINATE_GRACE = 1.0       # seconds between SIGTERM and SIGKILL on terminate()
# Seconds of worker starts per turn of the loop.  A start through
# multiprocessing waits for the process (forkserver: 5-150 ms on a busy
# machine): the workers up take tasks between two rounds of starts.
START_BUDGET = 0.02


@dataclass
class Parts:
    """A pool's parts, made by its Engine before the supervisor starts."""
    inbox: Inbox
    alive: ParentAlive
    slots: SharedSlots
    launcher: Launcher
    watch: WatchSet
    spiller: Spiller
    pacer: Pacer
    workers: WorkerSet
    kernel_log: KernelLog
    guard_keeper: GuardKeeper
    postmortem: Postmortem


class Supervisor:
    """The loop of the pool's one supervisor thread, the only one that acts
    on the parts; *ended* is called on that thread when it finishes."""

    def __init__(self, parts: Parts, initializer: Optional[Callable[..., Any]],
                 ended: Callable[[], None]) -> None:
        self.inbox = parts.inbox
        self._alive, self._slots = parts.alive, parts.slots
        self._launcher, self._watch = parts.launcher, parts.watch
        self._spiller, self._pacer, self._workers = parts.spiller, parts.pacer, parts.workers
        self._kernel_log, self.guard_keeper = parts.kernel_log, parts.guard_keeper
        self._postmortem = parts.postmortem
        self._initializer = initializer
        self._ended = ended
        self.replies = Replies(self._watch, self._workers, self._pacer, self._postmortem,
                               self._init_failed)
        self._launcher_fds: List[int] = []   # its helpers' sockets and pidfds
        self._sync_launcher_fds()
        # Why workers cannot start (initializer failed, throttle, zygote gone):
        self._init_error: Optional[WorkerInitError] = None
        self._init_error_told = False   # a call failed with it
        # Units may go to a worker still starting, after the ready ones had
        # their turn, when that cannot take long: forked, no initializer.  The
        # pool's first result then does not wait for a READY round trip.
        early = initializer is None and isinstance(self._launcher, ZygoteLauncher)
        self._dispatcher = Dispatcher(self.inbox, self._workers, self._pacer, self.guard_keeper,
                                      early, self._deliver_failure)
        self._more_to_start = False   # the start budget ran out: the next turn goes on
        self._vacancies_changed = True   # a slot may be started that could not be before
        self._terminating: Optional[bool] = None   # terminate() applied, with kill or not

    # ---- the supervisor loop -------------------------------------------------------

    def run(self) -> None:
        error: Optional[BaseException] = None
        try:
            while self._step():
                pass
        except BaseException as exc:  # a bug of ours: fail everything rather than hang
            text = traceback.format_exc()
            error = PoolTerminatedError(
                f"poolguard's supervisor thread failed ({exc!r}), a bug of poolguard's; "
                f"every unfinished task fails with this error. Its traceback:\n{text}")
            error.__cause__ = exc
            sys.stderr.write(text)
        finally:
            self._shutdown(error)

    def _step(self) -> bool:
        """One turn of the loop; False when the engine has finished."""
        inbox = self.inbox
        if inbox.new_call and inbox.take_new_call():   # the lock only when one came
            self._vacancies_changed = True
            # Workers start again, once a call has failed with why they could not.
            if self._init_error_told or self._workers.may_serve():
                self._init_error = None
        state = inbox.state
        if state == TERMINATING:
            self._terminate_workers()
        else:
            self._maintain_workers()
            self._fail_pending_if_no_worker_can_start()
            self._dispatcher.dispatch()
            if state == CLOSING:
                self._stop_idle_workers()
        if state == TERMINATING and not self._workers:
            return False
        if (state == CLOSING and not self._workers and not inbox.pending
                and not inbox.open_calls):
            return False
        self._on_ready(self._watch.wait(self._next_wake()))
        self.guard_keeper.check()
        return True

    def _on_ready(self, ready: List[int]) -> None:
        """Act on the descriptors the wait found ready."""
        deaths = []
        for fd in ready:
            if fd == self.inbox.wakeup.fd:
                self.inbox.wakeup.drain()   # the next turn sees what woke us
                continue
            entry = self._watch.owner.get(fd)
            if entry is None:   # dropped earlier in this turn (the zygote's death)
                continue
            worker, what = entry
            if what is Watched.LAUNCHER:
                self._on_launcher_event(fd)   # the next turn takes the workers answered
            elif what is Watched.RESULT:
                self.replies.read(worker)
            else:
                deaths.append(worker)
        for worker in deaths:   # after the replies, which may finish its task
            self._on_death(worker)

    def _next_wake(self) -> Optional[float]:
        if self._more_to_start:
            return 0.0
        wake = self.guard_keeper.next_wake()
        try:
            head = self.inbox.pending[0]
        except IndexError:   # none (a caller's shutdown may also have just taken them)
            return wake
        paced = self._workers.offers.next_wake(time.monotonic(), self._pacer.patience(head))
        return paced if paced is not None and (wake is None or paced < wake) else wake

    # ---- workers -------------------------------------------------------------------

    def _maintain_workers(self) -> None:
        inbox = self.inbox
        with inbox.lock:
            needed = inbox.state == RUNNING or bool(inbox.pending) or inbox.open_calls > 0
        self._more_to_start = False
        # Only when something changed: a death, a launcher's answer, a new call.
        if not needed or not self._vacancies_changed:
            return
        self._vacancies_changed = False
        forking = self._launcher.forking_slots()
        until = time.monotonic() + START_BUDGET
        for index in self._workers.empty_slots():
            if time.monotonic() > until:
                self._more_to_start = self._vacancies_changed = True
                return
            if forking is None or index in forking:
                continue   # the loop wakes when the zygote answers
            if self._init_error is not None and not self._launcher.prepared(index):
                continue   # no new start; one the zygote forked at its birth is taken
            try:
                self._workers.start(index)
            except StartError as exc:
                self._set_init_error(WorkerInitError(f"could not start a worker: {exc}"),
                                     exc.__cause__)
                return

    def _fail_pending_if_no_worker_can_start(self) -> None:
        if (self._init_error is not None and not self._workers.may_serve()
                and not self._launcher.busy()):   # none still being forked
            for unit in self.inbox.take_pending():
                self._init_error_told = True
                self._deliver_failure(unit, self._init_error)

    def _stop_idle_workers(self) -> None:
        if not (self.inbox.pending or self.inbox.open_calls):
            self._workers.stop_idle()

    def _terminate_workers(self) -> None:
        units = self.inbox.take_pending() + self._workers.take_inflight()
        error = PoolTerminatedError("the pool was terminated before this task finished")
        for unit in units:
            self._deliver_failure(unit, error)
        if self._terminating != self.inbox.kill:   # once, and again for a kill
            self._terminating = self.inbox.kill
            self._workers.terminate(0.0 if self.inbox.kill else TERMINATE_GRACE)

    def _init_failed(self, worker: Worker, exc: BaseException) -> None:
        self._set_init_error(WorkerInitError(
            f"initializer {function_name(self._initializer)} failed in worker {worker.pid}: "
            f"{type(exc).__name__}: {exc}",
            exc=exc, remote_traceback=getattr(exc.__cause__, "tb", None),
            pid=worker.pid), exc)

    def _set_init_error(self, error: WorkerInitError, cause: Optional[BaseException]) -> None:
        error.__cause__ = cause
        self._init_error, self._init_error_told = error, False
        self._workers.first_round.set()   # no wait for workers that may not come

    def _deliver_failure(self, unit: Unit, exc: BaseException) -> None:
        deliver(unit, False, exc)

    # ---- deaths --------------------------------------------------------------------

    def _on_death(self, worker: Worker) -> None:
        kill_group(worker.pid)   # what the task started dies with it
        # Everything it wrote before dying.  Not "until EOF": a grandchild may
        # hold the write end open for as long as it lives.
        while self.replies.read(worker) is Read.MORE:
            pass
        exitcode = worker.process.reap()
        death = self._postmortem.examine(worker, self._slots.read(worker.index), exitcode,
                                         worker.crash_stack())
        worker.inflight.clear()
        self._workers.forget(worker)
        self._vacancies_changed = True
        if death.spent is not None:
            death.spent.release()
        if death.rerun:
            self.inbox.requeue_first(death.rerun)
        if death.culprit is not None and death.error is not None:
            self._deliver_failure(death.culprit, death.error)
        elif death.culprit is not None:   # retried: its parts are queued
            death.culprit.release()
            death.culprit.job.unit_retried(
                death.culprit, worker.guard is not None and worker.guard.kind == "timeout")
        if death.throttle is not None:
            self._set_init_error(death.throttle, death.throttle.__cause__)

    def _on_launcher_event(self, fd: int) -> None:
        """An answer of the zygote, or a helper's death (its workers die with
        it; their deaths come as usual).  The launcher replaces what it can
        (launch/zygote.py); only when it cannot do waiting and later tasks
        that need a new worker fail."""
        # Out of the wait set while still open: the launcher may close them
        # (a dead helper's), and epoll keeps a closed file whose copy lives
        # on (wire/channels.py's WatchSet).
        for watched in self._launcher_fds:
            self._watch.discard(watched)
        self._launcher_fds = []
        broken = self._launcher.on_ready(fd)
        self._vacancies_changed = True
        if broken is not None:
            self._set_init_error(WorkerInitError(broken), None)
        self._sync_launcher_fds()

    def _sync_launcher_fds(self) -> None:
        # All again: a number kept may be a new file (a new helper's), which
        # an epoll set does not watch under the old one's registration.
        for fd in self._launcher_fds:
            self._watch.discard(fd)
        self._launcher_fds = self._launcher.fds()
        for fd in self._launcher_fds:
            self._watch.add(fd, self._launcher, Watched.LAUNCHER)

    # ---- the end -------------------------------------------------------------------

    def _shutdown(self, error: Optional[BaseException]) -> None:
        """Leave nothing behind: fail what is left, kill and reap every worker,
        close every descriptor.  Runs on the supervisor thread, last."""
        self.inbox.finish()
        self._workers.first_round.set()
        units = self.inbox.take_pending() + self._workers.take_inflight()
        self._workers.kill_all()
        self._launcher.close()
        if units:
            failure = error if error is not None else PoolTerminatedError(
                "the pool shut down before this task finished")
            for unit in units:
                self._deliver_failure(unit, failure)
        self._spiller.stop()
        self._watch.close()
        self._alive.close()
        self.inbox.wakeup.close()
        self._slots.close()
        self._kernel_log.close()
        self._ended()

