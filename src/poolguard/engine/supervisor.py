"""The supervisor: one thread per pool that owns all state.

Data flow::

  caller threads                 supervisor thread (owns all state)        worker processes
  --------------                 ----------------------------------        ----------------
  Pool() / ProcessPoolExecutor()
    | fork start method: fork the zygote (launch/) ------------> zygote: forks and
    |   before any thread of ours exists                                 reaps workers on
    | Engine.submit_items(job)                                          request
    |   jobs.cut_units -> units
    v
  Inbox (inbox.py): pending units, pool state, wake pipe
    |  ------wake pipe----------> wait(wake pipe, result pipes, death fds, zygote's pidfd;
    |                                  timeout: GuardKeeper.next_wake)
    |                                 |
    |                                 | WorkerSet.start: a worker per empty slot
    |                                 | dispatch.py: as many units a worker as Pacer
    |                                 |   allows (pacing.py: none ahead of a long one)
    |                                 |   non-blocking write ---- task pipe ---> worker_main
    |                                 |   (Spiller thread: what a full pipe        | writes [unit, item,
    |                                 |    cannot take now; large arguments        |  start] to its slot
    |                                 |    outside the pipe, wire/buffers.py)      |  (wire/slots.py)
    |                                 | <---------------------- result pipe -------+
    |                                 | decode_reply (never raises) -> job.unit_done / unit_failed
    |                                 |   (user callbacks: callbacks.py thread)
    |                                 |
    |                                 | death fd readable: drain the result pipe, reap,
    |                                 |   Postmortem.examine(slot, exit status, crash stack,
    |                                 |   RSS samples, guard) -> Death: the culprit's error
    |                                 |   or its retry, the units to run elsewhere, a
    |                                 |   throttle; applied here; a replacement starts
    |                                 |
    |                                 | GuardKeeper.check: a unit past task_timeout ->
    |                                 |   SIGUSR2 (stacks to the crash pipe), SIGTERM, SIGKILL;
    |                                 |   RSS over max_worker_memory -> SIGKILL

Every state change happens in the supervisor loop, whose only blocking point
is the epoll wait in ``WatchSet.wait`` (wire/channels.py).  No turn scans
every worker: the worker set keeps who is idle, busy or may take a unit
(workers.py, pacing.py's Offers), deadlines are in a heap (timers.py), RSS
is sampled within a budget (guards.py).  Other threads talk to it only through the inbox (inbox.py):
they queue units or change the pool's state under its lock, and wake it.
No lock is shared with a worker: each has its own pipes and its own slot, so
a worker killed at any instant cannot block anyone else.
"""
from __future__ import annotations

import sys
import time
import traceback
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from .. import diagnosis
from ..diagnosis import KernelLog
from ..errors import PoolTerminatedError, WorkerInitError
from ..options import Guards
from ..wire import buffers
from ..wire.channels import Read, Spiller, WatchSet, Watched
from ..wire.messages import (CONTROL, INIT_FAILED, ITEM, PER_ITEM, READY, REPLY_HEADER,
                             RETIRING, SHARED, decode_exception, decode_reply)
from ..wire.result_intake import take_shared
from ..wire.slots import SharedSlots
from . import at_exit, limits
from .guards import GuardKeeper
from .callbacks import report_callback_error
from .dispatch import Dispatcher
from .inbox import CLOSING, RUNNING, TERMINATING, Inbox
from .jobs import Job, Unit, cut_units, deliver, make_unit
from .pacing import Pacer
from .launch import ParentAlive, StartError, WorkerSpec, ZygoteLauncher, make_launcher
from .launch.zygote import can_use_zygote
from .postmortem import Postmortem, name_of
from .surface import EngineBase
from .reports import PoolStats, WorkerStatus
from .workers import State, Worker, WorkerSet, kill_group

TERMINATE_GRACE = 1.0       # seconds between SIGTERM and SIGKILL on terminate()
# Seconds of worker starts per turn of the loop.  A start through
# multiprocessing waits for the process (forkserver: 5-150 ms each on a busy
# machine): the workers already up take tasks between two rounds of starts
# instead of after the last of a thousand.
START_BUDGET = 0.02
# Seconds pids and status() wait at most for the pool's first workers to be
# started (they are, in the background, after Pool() returns): far above a
# start even on a loaded machine, and a bound if one never comes.
FIRST_ROUND_WAIT = 10.0


class Engine(EngineBase):
    """Worker processes plus the supervisor thread that watches them."""

    batches_submits = True
    per_call_guards = True

    def __init__(self, processes: int, initializer: Optional[Callable[..., Any]] = None,
                 initargs: Iterable[Any] = (), maxtasks: Optional[int] = None, context: Any = None,
                 finish_at_exit: bool = False, guards: Optional[Guards] = None) -> None:
        guards = guards or Guards()
        self.processes = processes
        self.guards = guards
        # At interpreter exit: finish the submitted work (executors, as the
        # standard library's do) or terminate (pools, as multiprocessing's do).
        self.finish_at_exit = finish_at_exit
        self._initializer = initializer
        self.inbox = inbox = Inbox()
        self._alive = ParentAlive()
        self._slots = SharedSlots(processes)
        zygote = context.get_start_method() == "fork" and can_use_zygote()
        limits.make_room(processes, "zygote" if zygote else "multiprocessing")
        # Before any thread of ours exists: under fork this forks the zygote.
        launcher = make_launcher(context, WorkerSpec(
            self._alive.conn, self._slots, initializer, tuple(initargs), maxtasks,
            guards.task_timeout is not None, buffers.probe_handle(),
            soft_timeout=guards.soft_timeout), processes)
        self._launcher = launcher
        self._watch = WatchSet(inbox.wakeup.fd)
        self._launcher_fds: List[int] = []   # its helpers' sockets and pidfds
        self._sync_launcher_fds()
        self._spiller = Spiller()
        self._pacer = Pacer(maxtasks)
        self._workers = WorkerSet(processes, self._slots, launcher, self._watch, self._spiller,
                                  self._pacer)
        # Workers cannot start (initializer failed, throttle, zygote gone):
        self._init_error: Optional[WorkerInitError] = None
        # May workers read large bytes from our memory?  Not until the first
        # has checked; never again once one could not.
        self.remote_reads = False
        self._remote_refused = False
        self._kernel_log = KernelLog(diagnosis.SOURCES)
        self.guard_keeper: GuardKeeper = GuardKeeper(guards, self._slots, self._workers)
        self._postmortem = Postmortem(guards, self._kernel_log, processes, initializer)
        # Units may go to a worker still starting, after the ready ones had
        # their turn, when that cannot take long: forked, no initializer.  The
        # pool's first result then does not wait for a READY round trip.
        early = initializer is None and isinstance(launcher, ZygoteLauncher)
        self._dispatcher = Dispatcher(inbox, self._workers, self._pacer, self.guard_keeper,
                                      early, self._deliver_failure)
        self._more_to_start = False   # the start budget ran out: the next turn goes on
        self._vacancies_changed = True   # a slot may be started that could not be before
        self._terminating: Optional[bool] = None   # terminate() applied, with kill or not
        self._start(self._run, "poolguard-supervisor")

    # ---- called from other threads -------------------------------------------------

    def main_by_value(self, func: Callable[..., Any]) -> bool:
        """Must *func*, of ``__main__``, go to the workers by value?  A
        wrapper (checkpoint's) is judged by the function it wraps."""
        return self._launcher.main_by_value(getattr(func, "__wrapped__", func))

    def submit_items(self, job: Job, items: Sequence[Any], chunksize: int, start: int = 0,
                     func_bytes: Optional[bytes] = None, open_call: bool = False) -> None:
        """Cut *items* into units (jobs.py) and queue them batch by batch."""
        if func_bytes is None:
            func_bytes = self.encode_function(job.func)
        if len(items) == 1:   # submit, apply_async: no batching to do
            unit = make_unit(job, start, items, func_bytes, self.remote_reads)
            if unit is not None:
                self.inbox.submit((unit,), open_call)
            return
        self.inbox.submit(cut_units(job, items, chunksize, start, func_bytes, self.remote_reads),
                          open_call)

    def submit_elastic(self, job: Job, items: Sequence[Any]) -> None:
        """Queue *items* as one elastic unit, which dispatch cuts as it goes."""
        func_bytes = self.encode_function(job.func)
        self.inbox.submit([Unit(job, 0, items, func_bytes, remote=self.remote_reads,
                                elastic=True)])

    @property
    def pids(self) -> List[int]:
        """Pids of the live workers (a snapshot), once the first are started."""
        self._workers.first_round.wait(FIRST_ROUND_WAIT)
        return self._workers.pids()

    def units_in_flight(self) -> int:
        """Units sent to workers and not yet answered (a snapshot)."""
        return sum(len(w.inflight) for w in self._workers)

    def status(self) -> List[WorkerStatus]:
        """What each worker is doing now, once the first are started; safe
        from any thread."""
        self._workers.first_round.wait(FIRST_ROUND_WAIT)
        return self._workers.status()

    def stats(self, sample: bool = True) -> PoolStats:
        """What each worker slot did since the pool began; from any thread.
        *sample*: read the live workers' RSS now too."""
        return self._workers.stats(sample)

    def helper_pids(self) -> Dict[str, int]:
        """The pool's own helper processes now: name -> pid."""
        return self._launcher.helper_pids()

    def dump_stacks(self) -> None:
        """Make every worker print the stack of each of its threads to its
        stderr (SIGUSR1, handled by faulthandler); the tasks go on."""
        self._workers.dump_stacks()

    # ---- the supervisor loop -------------------------------------------------------

    def _run(self) -> None:
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
            self._init_error = None   # a new call gets a new chance to start workers
            self._vacancies_changed = True
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
        ready = self._watch.wait(self._next_wake())
        deaths = []
        for fd in ready:
            if fd == inbox.wakeup.fd:
                inbox.wakeup.drain()   # the next turn sees what woke us
                continue
            entry = self._watch.owner.get(fd)
            if entry is None:   # dropped earlier in this turn (the zygote's death)
                continue
            worker, what = entry
            if what is Watched.LAUNCHER:
                self._on_launcher_event(fd)   # the next turn takes the workers answered
            elif what is Watched.RESULT:
                self._read_replies(worker)
            else:
                deaths.append(worker)
        for worker in deaths:   # after the replies, which may finish its task
            self._on_death(worker)
        self.guard_keeper.check()
        return True

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

    # ---- replies -------------------------------------------------------------------

    def _read_replies(self, worker: Worker) -> Read:
        frames, state = worker.reader.read()
        for data in frames:
            self._on_reply(worker, data)
        if state is Read.EOF:  # keep the pipe out of the wait set; the death fd says the rest
            self._watch.discard(worker.reader.fd)
        return state

    def _on_reply(self, worker: Worker, data: bytes) -> None:
        task_id, status, micros_or_offset = REPLY_HEADER.unpack_from(data)
        body = memoryview(data)[REPLY_HEADER.size:]
        if task_id == CONTROL:
            self._on_control(worker, status, body)
            return
        shared: Optional[Sequence[Any]] = ()
        if status & SHARED:   # its large buffers wait in a memfd of the worker's
            status &= ~SHARED
            got = take_shared(worker.pid, worker.death_fd, body,
                              lambda parts: self._workers.send(worker, parts))
            if got is None:
                return   # the worker died holding them: its death fails the task
            body, shared = got
        if status & ITEM:
            self._on_call_reply(worker, task_id, status & ~ITEM, micros_or_offset, body, shared)
            return
        unit = worker.pop_unit(task_id)
        worker.watch.task_done()
        self._postmortem.task_finished()
        if unit is None:
            return  # the job was already failed (terminate)
        self._pacer.learn(unit, micros_or_offset / 1e6)
        ok, value = decode_reply(status, body, lambda: str(unit.job.describe(unit, None)),
                                 unit.job.kind in PER_ITEM, shared)
        deliver(unit, ok, value)

    def _on_call_reply(self, worker: Worker, task_id: int, status: int, offset: int,
                       body: memoryview, shared: Optional[Sequence[Any]]) -> None:
        """One call of an EACH_APPLY unit ended; the unit goes on."""
        unit = worker.find_unit(task_id)
        if unit is None:
            return   # the job was already failed (terminate)
        self._postmortem.task_finished()
        worker.items_done += 1   # now: its caller may have its value before the unit ends
        ok, value = decode_reply(status, body, lambda: str(unit.job.describe(unit, offset)),
                                 shared=shared)
        try:
            unit.job.call_done(unit, offset, ok, value[0] if ok else value)
        except Exception:
            report_callback_error()

    def _on_control(self, worker: Worker, status: int, body: memoryview) -> None:
        if status == READY:
            worker.advance(State.READY)
            if bytes(body[:1]) != b"\x01":
                self._remote_refused = True
            self.remote_reads = not self._remote_refused
            worker.watch.sample()   # its cgroup and OOM counter, before any task
        elif status == RETIRING:
            worker.advance(State.RETIRING)
        elif status == INIT_FAILED:
            worker.advance(State.INIT_FAILED)
            exc = decode_exception(body)
            self._set_init_error(WorkerInitError(
                f"initializer {name_of(self._initializer)} failed in worker {worker.pid}: "
                f"{type(exc).__name__}: {exc}",
                exc=exc, remote_traceback=getattr(exc.__cause__, "tb", None),
                pid=worker.pid), exc)

    def _set_init_error(self, error: WorkerInitError, cause: Optional[BaseException]) -> None:
        error.__cause__ = cause
        self._init_error = error
        self._workers.first_round.set()   # no wait for workers that may not come

    def _deliver_failure(self, unit: Unit, exc: BaseException) -> None:
        deliver(unit, False, exc)

    # ---- deaths --------------------------------------------------------------------

    def _on_death(self, worker: Worker) -> None:
        kill_group(worker.pid)   # what the task started dies with it
        # Everything it wrote before dying.  Not "until EOF": a grandchild may
        # hold the write end open for as long as it lives.
        while self._read_replies(worker) is Read.MORE:
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
        self._callbacks.stop()   # after the last failure above was queued
        at_exit.live_engines.discard(self)

