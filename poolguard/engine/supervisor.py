"""The engine under both fronts: one supervisor thread per pool.

Data flow::

  caller threads               supervisor thread (owns all state)         worker processes
  --------------               ----------------------------------         ----------------
  Pool() / ProcessPoolExecutor()
    | (fork) fork the zygote, single-threaded -------------------------> zygote (launch.py,
    |   before any thread of ours exists                                  zygote.py)
    | Engine.submit(units)                                                  | forks each worker
    v                                                                       v on request
  pending deque --wake pipe--> wait(wake pipe, every result pipe, every death fd;
                                   timeout: next guard deadline or memory sample)
                                  |
                                  | start a worker: launcher.start (zygote under fork,
                                  |   multiprocessing under spawn/forkserver)
                                  | dispatch: at most PREFETCH units a worker
                                  |   (large arguments go outside the pipe, buffers.py)
                                  |   non-blocking write ---- task pipe ----> worker_main
                                  |   (what a full pipe cannot take            | writes [task id, item,
                                  |    now, the Spiller thread writes)         |  start] to its slot in
                                  |                                            |  shared memory
                                  | <------------------------ result pipe -----+
                                  | decode (guarded) -> job.unit_done / unit_failed
                                  |
                                  | death fd readable (pidfd, else sentinel):
                                  |   drain the result pipe, reap (through the
                                  |   zygote under fork), read the slot,
                                  |   diagnose (diagnosis.py), fail exactly the
                                  |   unit that was running or retry it,
                                  |   requeue the units it had not started,
                                  |   start a replacement
                                  |
                                  | guards: a slot past task_timeout -> SIGUSR2 (the
                                  |   worker's stacks to its crash pipe), then SIGTERM;
                                  |   RSS over max_worker_memory -> SIGKILL

Every state change happens in the supervisor loop, whose only blocking point
is the poll in ``WatchSet.wait`` (``multiprocessing.connection.wait``'s, kept
between turns).  Other threads talk to it by putting work in ``_pending``
(under ``_lock``) or setting ``_state`` and writing a byte to the wake pipe.
No lock is shared with a worker: each has its own pipes and its own slot, so
a worker killed at any instant cannot block anyone else.
"""
from __future__ import annotations

import atexit
import collections
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
import weakref
from multiprocessing.connection import Connection
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence

from .. import diagnosis
from ..wire import buffers
from ..wire.channels import Spiller, WakePipe, WatchSet, grow_pipe
from ..diagnosis import KernelLog, diagnose
from ..errors import (PoolTerminatedError, PoolThrottledError, TaskTimeoutError,
                      WorkerCrashedError, WorkerInitError, WorkerMemoryError, signal_name)
from ..options import Guards
from ..wire.messages import (CONTROL, INIT_FAILED, OK, RAISED, READY, REPLY_HEADER, RETIRING,
                        STOP, TASK_HEADER, UNENCODABLE, decode_exception, dumps_call,
                        encoding_error, frame)
from ..wire.slots import DECODING, INITIALIZING, SENDING, SharedSlots
from .launch import (StartError, WorkerSpec, ZygoteLauncher, make_launcher, parent_only,
                     release_parent_only)
from .jobs import Job, Unit
from .workers import Worker, WorkerStatus, kill_group, signal_process

PREFETCH = 2                # units in flight per worker: one running, one waiting in its pipe
RSS_SAMPLE_INTERVAL = 0.1   # seconds between memory samples of busy workers
TERMINATE_GRACE = 1.0       # seconds between SIGTERM and SIGKILL on terminate()
TIMEOUT_GRACE = 0.2         # seconds between SIGTERM and SIGKILL for a task past its timeout
STACK_GRACE = 0.05          # seconds for a worker past its timeout to write its stacks
MEMORY_SAMPLE_INTERVAL = 0.01   # seconds between RSS checks when max_worker_memory is set

RUNNING, CLOSING, TERMINATING, FINISHED = "running", "closing", "terminating", "finished"

_live_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()


class Engine:
    """Worker processes plus the supervisor thread that watches them."""

    def __init__(self, processes: int, initializer: Optional[Callable] = None,
                 initargs: Iterable = (), maxtasks: Optional[int] = None, context=None,
                 finish_at_exit: bool = False, guards: Guards = Guards()):
        self.processes = processes
        self.guards = guards
        # At interpreter exit: finish the submitted work (executors, as the
        # standard library's do) or terminate (pools, as multiprocessing's do).
        self.finish_at_exit = finish_at_exit
        self._owner_pid = os.getpid()
        self.context = context
        self.start_method = context.get_start_method()
        self._maxtasks = maxtasks
        self._initializer = initializer
        self._lock = threading.Lock()
        self._pending: Deque[Unit] = collections.deque()
        self._state = RUNNING
        self._open_calls = 0           # calls still producing units (lazy imap)
        self._wakeup = WakePipe()
        alive_r, self._alive_w = os.pipe()
        parent_only(self._alive_w)
        self._alive_conn = Connection(alive_r, writable=False)
        self._slots = SharedSlots(processes)
        # Before any thread of ours exists: under fork this forks the zygote.
        self._launcher = make_launcher(context, self._worker_spec(initializer, initargs))
        # Under fork, workers have the __main__ of this moment: a function
        # of __main__ defined later goes by value, as under spawn.
        self._main_at_start = ({k: v for k, v in vars(sys.modules["__main__"]).items()
                                if callable(v)} if isinstance(self._launcher, ZygoteLauncher) else None)
        self._workers: Dict[int, Worker] = {}      # slot index -> worker
        self._watch = WatchSet(self._wakeup.fd)
        # Set when workers cannot be started (initializer failed, or the
        # throttle tripped): no respawning, waiting units fail with it.
        self._init_error: Optional[WorkerInitError] = None
        self._fruitless_deaths = 0     # deaths without a task since the last finished task
        self._throttle = max(5, 2 * processes)
        self._next_memory_check = 0.0
        self._spiller = Spiller()
        # Workers can read large bytes arguments from our memory: unknown
        # (False) until the first worker has checked, False for good if one
        # could not.
        self.remote_reads = False
        self._remote_refused = False
        self._callback_thread: Optional[threading.Thread] = None
        self._callback_queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._kernel_log = KernelLog(diagnosis.SOURCES)
        self._next_sample = 0.0
        self.sample_interval: Optional[float] = RSS_SAMPLE_INTERVAL   # None: no sampling
        if self._launcher.death_fd is not None:
            self._watch.add(self._launcher.death_fd, self._launcher, "launcher")
        self._thread = threading.Thread(target=self._run, name="poolguard-supervisor",
                                        daemon=True)
        _live_engines.add(self)
        self._thread.start()

    # ---- called from other threads -------------------------------------------------

    def _worker_spec(self, initializer: Optional[Callable], initargs: Iterable) -> WorkerSpec:
        if initializer is not None and self.start_method != "fork":
            initializer = dumps_call(initializer, initializer, True)   # type: ignore[assignment]
        return WorkerSpec(self._alive_conn, self._slots, initializer, tuple(initargs),
                          self._maxtasks, self.guards.task_timeout is not None,
                          buffers.probe_handle())

    def encode_function(self, func: Callable) -> bytes:
        return dumps_call(func, func, self._by_value(func))

    def _by_value(self, func: Callable) -> bool:
        """Must a function of __main__ go by value (the worker may not have it)?"""
        if self.start_method != "fork":
            return True
        main = self._main_at_start
        if main is None:   # workers are forked from this process as it is now
            return False
        func = getattr(func, "__wrapped__", func)
        return main.get(getattr(func, "__name__", None)) is not func

    def submit_items(self, job: Job, items: Sequence, chunksize: int, start: int = 0,
                     func_bytes: Optional[bytes] = None, open_call: bool = False) -> None:
        """Cut *items* into units and queue them.  Units are queued in batches of
        doubling size, so workers start on the first while later ones are still
        being pickled.  A unit whose items cannot be pickled fails at once with
        the pickling error, as in the standard library."""
        if func_bytes is None:
            func_bytes = self.encode_function(job.func)
        batch: List[Unit] = []
        batch_size = 1
        for lo in range(0, len(items), chunksize):
            chunk = items[lo:lo + chunksize]
            try:
                batch.append(Unit(job, start + lo, chunk, func_bytes, remote=self.remote_reads))
            except Exception as exc:
                job.unit_failed(Unit.placeholder(job, start + lo, chunk), exc)
            if len(batch) >= batch_size:
                self.submit(batch, open_call)
                batch, batch_size = [], batch_size * 2
        if batch:
            self.submit(batch, open_call)

    def submit(self, units: Sequence[Unit], open_call: bool = False) -> None:
        """Queue units.  *open_call*: they belong to a call that began before
        close() (a lazy imap still reading its input), so closing waits for them."""
        if os.getpid() != self._owner_pid:
            raise RuntimeError("this pool belongs to process %d; a forked child cannot "
                               "use it (its supervisor thread did not survive the fork)"
                               % self._owner_pid)
        with self._lock:
            if not (self._state == RUNNING or (open_call and self._state == CLOSING)):
                raise ValueError("Pool not running")
            self._pending.extend(units)
            self._init_error = None   # a new call gets a new chance to start workers
        self._wake()

    def take_pending(self) -> List[Unit]:
        """Remove and return the units not yet sent to any worker."""
        with self._lock:
            units = list(self._pending)
            self._pending.clear()
        return units

    def open_call(self) -> None:
        with self._lock:
            if self._state != RUNNING:
                raise ValueError("Pool not running")
            self._open_calls += 1

    def close_call(self) -> None:
        with self._lock:
            self._open_calls -= 1
        self._wake()

    def close(self) -> None:
        with self._lock:
            if self._state == RUNNING:
                self._state = CLOSING
        self._wake()

    def terminate(self) -> None:
        with self._lock:
            if self._state in (RUNNING, CLOSING):
                self._state = TERMINATING
        self._wake()

    def join(self, timeout: Optional[float] = None) -> None:
        # From our own threads (a callback calling terminate()) joining would
        # wait for ourselves.
        if threading.current_thread() not in (self._thread, self._callback_thread):
            self._thread.join(timeout)

    def call_soon(self, func: Callable, *args: Any) -> None:
        """Run a user callback on the pool's callback thread, in order."""
        with self._lock:
            if self._callback_thread is None:
                self._callback_queue = queue.SimpleQueue()
                self._callback_thread = threading.Thread(
                    target=self._run_callbacks, name="poolguard-callbacks", daemon=True)
                self._callback_thread.start()
        self._callback_queue.put((func, args))

    def _run_callbacks(self) -> None:
        while True:
            item = self._callback_queue.get()
            if item is None:
                return
            func, args = item
            try:
                func(*args)
            except Exception:   # a user callback raised: report it, go on
                report_callback_error()

    @property
    def state(self) -> str:
        return self._state

    @property
    def pids(self) -> List[int]:
        """Pids of the live workers (a snapshot)."""
        return [w.pid for w in list(self._workers.values())]

    def status(self) -> List[WorkerStatus]:
        """What each worker is doing now; safe from any thread (it reads the
        workers' slots and /proc, and copies what it looks at)."""
        out = []
        now = time.monotonic_ns()
        for worker in list(self._workers.values()):
            task_id, item, started = self._slots.read(worker.index)
            task, elapsed, state = None, None, "idle"
            if task_id == INITIALIZING:
                state = "starting"
            elif task_id >= 0:
                state = "busy"
                elapsed = (now - started) / 1e9 if started else None
                unit = next((u for u in list(worker.inflight) if u.id == task_id), None)
                if unit is not None:
                    task = unit.job.describe(unit, item if item >= 0 else None)
            if diagnosis.process_state(worker.pid) in ("T", "t"):
                state = "stopped"
            out.append(WorkerStatus(worker.pid, state, task, elapsed,
                                    diagnosis.rss_of(worker.pid)))
        return out

    def dump_stacks(self) -> None:
        """Make every worker print the stack of each of its threads to its
        stderr (SIGUSR1, handled by faulthandler); the tasks go on."""
        for worker in list(self._workers.values()):
            signal_process(worker.process, signal.SIGUSR1)

    def _wake(self) -> None:
        self._wakeup.wake()

    # ---- the supervisor loop -------------------------------------------------------

    def _run(self) -> None:
        error: Optional[BaseException] = None
        try:
            while self._step():
                pass
        except BaseException as exc:  # a bug of ours: fail everything rather than hang
            error = exc
            traceback.print_exc()
        finally:
            self._shutdown(error)

    def _step(self) -> bool:
        """One turn of the loop; False when the engine has finished."""
        state = self._state
        if state == TERMINATING:
            self._terminate_workers()
        else:
            self._maintain_workers()
            self._fail_pending_if_no_worker_can_start()
            self._dispatch()
            if state == CLOSING:
                self._stop_idle_workers()
        if state == TERMINATING and not self._workers:
            return False
        if (state == CLOSING and not self._workers and not self._pending
                and not self._open_calls):
            return False
        ready = self._watch.wait(self._timeout())
        deaths = []
        for fd in ready:
            if fd == self._wakeup.fd:
                self._wakeup.drain()   # the next turn sees what woke us
                continue
            worker, what = self._watch.owner[fd]
            if what == "launcher":
                self._on_launcher_death()
            elif what == "result":
                self._read_replies(worker)
            else:
                deaths.append(worker)
        for worker in deaths:   # after the replies, which may finish its task
            self._on_death(worker)
        self._sample_memory()
        self._enforce_guards()
        return True

    def _timeout(self) -> Optional[float]:
        timeouts = []
        if self.sample_interval is not None and any(w.inflight for w in self._workers.values()):
            timeouts.append(max(0.0, self._next_sample - time.monotonic()))
        if self.guards.max_worker_memory is not None and \
                any(w.inflight for w in self._workers.values()):
            timeouts.append(max(0.0, self._next_memory_check - time.monotonic()))
        deadlines = [d for w in self._workers.values()
                     for d in (w.next_signal_at(), w.item_deadline) if d is not None]
        if deadlines:
            timeouts.append(max(0.0, min(deadlines) - time.monotonic()))
        return min(timeouts) if timeouts else None

    # ---- guards --------------------------------------------------------------------

    def _enforce_guards(self) -> None:
        now = time.monotonic()
        timeout = self.guards.task_timeout
        cap = self.guards.max_worker_memory
        check_memory = cap is not None and now >= self._next_memory_check
        if check_memory:
            self._next_memory_check = now + MEMORY_SAMPLE_INTERVAL
        for worker in self._workers.values():
            worker.send_due_signals(now)
            if worker.guard_kill is not None or not worker.inflight:
                worker.item_deadline = None
                continue
            if timeout is not None:
                self._check_timeout(worker, now, timeout)
            if cap is not None and check_memory and worker.guard_kill is None:
                rss = worker.watch.sample_rss()
                if rss is not None and rss > cap:
                    worker.guard_kill, worker.guard_rss = "memory", rss
                    worker.guard_text = (f"was killed by poolguard: its RSS reached "
                                         f"{rss / 2**20:.0f} MiB, over max_worker_memory="
                                         f"{cap / 2**20:.0f} MiB,")
                    signal_process(worker.process, signal.SIGKILL)

    def _check_timeout(self, worker: Worker, now: float, timeout: float) -> None:
        """The worker writes each item's start time (CLOCK_MONOTONIC, shared by
        all processes) to its slot; queued time is not counted."""
        seen = self._slots.read(worker.index)
        if seen[0] < 0:          # idle or starting: no item is running
            worker.item_deadline = None
            return
        if seen != worker.seen_item:
            worker.seen_item = seen
            started = seen[2] / 1e9 if seen[2] else now
            worker.item_deadline = started + timeout
        if worker.item_deadline is not None and now >= worker.item_deadline:
            worker.guard_kill = "timeout"
            worker.guard_text = (f"was stopped by poolguard after the task ran past "
                                 f"task_timeout={timeout:g} s")
            worker.item_deadline = None
            # First its stacks (faulthandler, to the crash pipe), then the
            # end: a SIGTERM arriving during the dump would cut it short.
            signal_process(worker.process, signal.SIGUSR2)
            worker.escalate([(now + STACK_GRACE, signal.SIGTERM),
                             (now + STACK_GRACE + TIMEOUT_GRACE, signal.SIGKILL)])

    # ---- workers -------------------------------------------------------------------

    def _maintain_workers(self) -> None:
        if self._init_error is not None:
            return
        with self._lock:
            needed = self._state == RUNNING or bool(self._pending) or self._open_calls > 0
        if not needed:
            return
        for index in range(self.processes):
            if index not in self._workers:
                self._start_worker(index)

    def _start_worker(self, index: int) -> None:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        crash_r, crash_w = os.pipe()
        for fd in (task_w, result_w):
            grow_pipe(fd)
        self._slots.write(index, INITIALIZING, 0)
        try:   # the launcher closes the child's ends
            process = self._launcher.start(index, task_r, result_w, crash_w)
        except StartError as exc:
            for fd in (task_w, result_r, crash_r):
                os.close(fd)
            self._set_init_error(WorkerInitError(f"could not start a worker: {exc}"),
                                 exc.__cause__)
            return
        os.set_blocking(task_w, False)
        worker = Worker(index, process, task_w, result_r, crash_r)
        self._workers[index] = worker
        self._watch.add(worker.reader.fd, worker, "result")
        self._watch.add(worker.death_fd, worker, "death")

    def _usable_workers(self) -> List[Worker]:
        return [w for w in self._workers.values()
                if w.ready and not (w.retiring or w.stopping or w.init_failed or w.terminated
                                    or w.guard_kill)]

    def _fail_pending_if_no_worker_can_start(self) -> None:
        if self._init_error is None:
            return
        if any(not w.init_failed and not w.terminated for w in self._workers.values()):
            return  # a healthy or still-starting worker may serve them
        for unit in self.take_pending():
            self._deliver_failure(unit, self._init_error)

    def _dispatch(self) -> None:
        if not self._pending:
            return
        workers = self._usable_workers()
        maxtasks = self._maxtasks
        with self._lock:
            for depth in range(PREFETCH):
                for worker in workers:
                    while (self._pending and len(worker.inflight) <= depth
                           and (maxtasks is None or worker.sent < maxtasks)):
                        unit = self._pending.popleft()
                        if not unit.job.wanted(unit):
                            unit.release()
                            continue
                        worker.inflight.append(unit)
                        worker.sent += 1
                        self._spiller.write(worker.task_fd, unit.frame)

    def _stop_idle_workers(self) -> None:
        if self._pending or self._open_calls:
            return
        for worker in self._workers.values():
            if not worker.stopping and not worker.inflight and not worker.terminated:
                worker.stopping = True
                self._spiller.write(worker.task_fd, frame(TASK_HEADER.pack(STOP, 0)))

    def _terminate_workers(self) -> None:
        units = self.take_pending()
        for worker in self._workers.values():
            units.extend(worker.inflight)
            worker.inflight.clear()
        if units:
            error = PoolTerminatedError("the pool was terminated before this task finished")
            for unit in units:
                self._deliver_failure(unit, error)
        now = time.monotonic()
        for worker in self._workers.values():
            if not worker.terminated:
                worker.terminated = True
                signal_process(worker.process, signal.SIGTERM)
                worker.escalate([(now + TERMINATE_GRACE, signal.SIGKILL)])

    # ---- replies -------------------------------------------------------------------

    def _read_replies(self, worker: Worker) -> str:
        frames, state = worker.reader.read()
        for data in frames:
            self._on_reply(worker, data)
        if state == "eof":  # keep the pipe out of the wait set; the death fd says the rest
            self._watch.discard(worker.reader.fd)
        return state

    def _on_reply(self, worker: Worker, data: bytes) -> None:
        task_id, status = REPLY_HEADER.unpack_from(data)
        body = memoryview(data)[REPLY_HEADER.size:]
        if task_id == CONTROL:
            if status == READY:
                worker.ready = True
                if bytes(body[:1]) != b"\x01":
                    self._remote_refused = True
                self.remote_reads = not self._remote_refused
                worker.watch.sample()   # its cgroup and OOM counter, before any task
            elif status == RETIRING:
                worker.retiring = True
            elif status == INIT_FAILED:
                worker.init_failed = True
                exc = decode_exception(body)
                self._set_init_error(WorkerInitError(
                    f"initializer {_name(self._initializer)} failed in worker {worker.pid}: "
                    f"{type(exc).__name__}: {exc}",
                    exc=exc, remote_traceback=getattr(exc.__cause__, "tb", None),
                    pid=worker.pid), exc)
            return
        unit = worker.pop_unit(task_id)
        worker.watch.task_done()
        worker.item_deadline = None
        self._fruitless_deaths = 0
        if unit is None:
            return  # the job was already failed (terminate)
        if status == OK:
            try:
                values = pickle.loads(body)
            except Exception as exc:
                self._deliver_failure(unit, encoding_error(
                    f"the result could not be unpickled in the parent: {exc!r}",
                    f"<result of {unit.job.describe(unit, None)}>"))
                return
            self._deliver(unit.job.unit_done, unit, values)
        elif status == RAISED:
            self._deliver_failure(unit, decode_exception(body))
        elif status == UNENCODABLE:
            self._deliver_failure(unit, encoding_error(*pickle.loads(body)))

    def _set_init_error(self, error: WorkerInitError, cause: Optional[BaseException]) -> None:
        error.__cause__ = cause
        self._init_error = error

    def _deliver_failure(self, unit: Unit, exc: BaseException) -> None:
        self._deliver(unit.job.unit_failed, unit, exc)

    @staticmethod
    def _deliver(method: Callable, unit: Unit, value: Any) -> None:
        unit.release()
        try:
            method(unit, value)
        except Exception:  # a user callback raised: report it, keep watching
            report_callback_error()

    # ---- deaths --------------------------------------------------------------------

    def _on_death(self, worker: Worker) -> None:
        kill_group(worker.pid)   # what the task started dies with it
        # Everything it wrote before dying.  Not "until EOF": a grandchild may
        # hold the write end open for as long as it lives.
        while self._read_replies(worker) == "more":
            pass
        exitcode = worker.process.reap()
        known = exitcode is not None
        task_id, item, _started = self._slots.read(worker.index)
        culprit = None
        requeue = []
        for unit in worker.inflight:
            if unit.id == task_id:
                culprit = unit
            else:
                requeue.append(unit)
        worker.inflight.clear()
        crash_stack = worker.crash_stack()
        self._forget(worker)
        if requeue:
            with self._lock:
                self._pending.extendleft(reversed(requeue))
        if culprit is not None:
            offset = item if item >= 0 else None
            error = self._crash_error(worker, culprit, offset, item, exitcode, known,
                                      crash_stack)
            if not self._retry(culprit, offset, error):
                if culprit.attempts:
                    error.add_attempts(culprit.attempts)
                self._deliver_failure(culprit, error)
        elif not (worker.init_failed or worker.terminated or worker.stopping
                  or worker.retiring or worker.guard_kill):
            self._on_fruitless_death(worker, task_id, exitcode, known)

    def _crash_error(self, worker: Worker, culprit: Unit, offset: Optional[int], item: int,
                     exitcode: Optional[int], known: bool,
                     crash_stack: Optional[str]) -> WorkerCrashedError:
        phase = {DECODING: "decoding", SENDING: "sending"}.get(item, "running")
        cls = {"timeout": TaskTimeoutError, "memory": WorkerMemoryError}.get(
            worker.guard_kill or "", WorkerCrashedError)
        if worker.guard_kill == "memory":
            verdict = diagnosis.Diagnosis(diagnosis.CONFIRMED, "poolguard's memory guard "
                                          "killed it", ["max_worker_memory"])
        elif known and worker.guard_kill is None:
            verdict = diagnose(_signal_name(exitcode), worker.watch, self._kernel_log,
                               diagnosis.SOURCES)
        else:
            verdict = None
        error = cls.from_death(
            pid=worker.pid, exitcode=exitcode, exit_status_known=known,
            task=culprit.job.describe(culprit, offset), phase=phase, diagnosis=verdict,
            peak_rss=worker.watch.task_peak, last_rss=worker.watch.rss_last,
            crash_stack=crash_stack, guard=worker.guard_text)
        if isinstance(error, TaskTimeoutError):
            error.limit = self.guards.task_timeout
        elif isinstance(error, WorkerMemoryError):
            error.limit, error.rss = self.guards.max_worker_memory, worker.guard_rss
        return error

    def _retry(self, culprit: Unit, offset: Optional[int], error: WorkerCrashedError) -> bool:
        """Queue the culprit again if the guards allow; only its own item counts
        an attempt, the chunk's other items go back as they were."""
        guards = self.guards
        kind = ("timeout" if isinstance(error, TaskTimeoutError) else
                "memory" if isinstance(error, WorkerMemoryError) else
                "oom" if error.oom else "crash")
        if kind not in guards.retry_on or len(culprit.attempts) >= guards.retries:
            return False
        culprit.attempts.append(error.summary())
        parts = culprit.split(offset)
        culprit.release()
        with self._lock:
            self._pending.extendleft(reversed(parts))
        return True

    def _on_launcher_death(self) -> None:
        """The zygote died: its workers die with it (their deaths come as
        usual), and no new one can start; waiting and later tasks fail."""
        self._watch.discard(self._launcher.death_fd)
        self._set_init_error(WorkerInitError(self._launcher.died()), None)

    def _on_fruitless_death(self, worker: Worker, task_id: int, exitcode: Optional[int],
                            known: bool) -> None:
        """A death with no task to blame (while starting, or idle).  Replaced,
        unless workers keep dying without doing any work: then stop."""
        self._fruitless_deaths += 1
        if self._fruitless_deaths < self._throttle:
            return
        how = WorkerCrashedError.from_death(pid=worker.pid, exitcode=exitcode,
                                            exit_status_known=known, task=None,
                                            phase="starting" if task_id == INITIALIZING
                                            else "idle")
        where = (f" while running the initializer {_name(self._initializer)}"
                 if task_id == INITIALIZING and self._initializer else "")
        self._set_init_error(PoolThrottledError(
            f"{self._fruitless_deaths} workers died{where} without finishing a task; "
            f"poolguard stopped starting new ones (the next call tries again). "
            f"Last: {how}", pid=worker.pid), how)
        self._fruitless_deaths = 0

    def _forget(self, worker: Worker) -> None:
        self._watch.discard(worker.reader.fd)
        self._watch.discard(worker.death_fd)
        del self._workers[worker.index]
        os.close(worker.reader.fd)
        os.close(worker.crash_fd)
        self._spiller.close_fd(worker.task_fd)
        worker.watch.close()
        worker.process.close()

    def _sample_memory(self) -> None:
        now = time.monotonic()
        if self.sample_interval is None or now < self._next_sample:
            return
        self._next_sample = now + self.sample_interval
        for worker in self._workers.values():
            if worker.inflight:
                worker.watch.sample()

    # ---- the end -------------------------------------------------------------------

    def _shutdown(self, error: Optional[BaseException]) -> None:
        """Leave nothing behind: fail what is left, kill and reap every worker,
        close every descriptor.  Runs on the supervisor thread, last."""
        with self._lock:
            self._state = FINISHED
        units = self.take_pending()
        for worker in list(self._workers.values()):
            units.extend(worker.inflight)
            worker.inflight.clear()
            signal_process(worker.process, signal.SIGKILL)
            kill_group(worker.pid)
            worker.process.reap()
            self._forget(worker)
        self._launcher.close()
        if units:
            failure = error if error is not None else PoolTerminatedError(
                "the pool shut down before this task finished")
            for unit in units:
                self._deliver_failure(unit, failure)
        self._spiller.stop()
        release_parent_only(self._alive_w)
        os.close(self._alive_w)
        self._wakeup.close()
        self._alive_conn.close()
        self._slots.close()
        self._kernel_log.close()
        with self._lock:
            callbacks = self._callback_thread
        if callbacks is not None:   # after the last failure above was queued
            self._callback_queue.put(None)
            if threading.current_thread() is not callbacks:
                callbacks.join()
        _live_engines.discard(self)


def report_callback_error() -> None:
    """Print the exception being handled, raised by a user callback: the
    standard library lets it kill its result thread; we report it and go on."""
    print("poolguard: exception in a result callback (ignored):", file=sys.stderr)
    traceback.print_exc()



def _signal_name(exitcode: Optional[int]) -> Optional[str]:
    return signal_name(-exitcode) if exitcode is not None and exitcode < 0 else None


def _name(func: Optional[Callable]) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


@atexit.register
def _terminate_all() -> None:
    """At interpreter exit, end every pool still running so that exit neither
    hangs on a worker waiting for tasks nor leaves one behind."""
    engines = list(_live_engines)
    for engine in engines:
        if engine.finish_at_exit:
            engine.close()
        else:
            engine.terminate()
    for engine in engines:
        engine.join(None if engine.finish_at_exit else 5.0)
