"""The engine under both fronts: one supervisor thread per pool.

Data flow::

  caller threads               supervisor thread (owns all state)         worker processes
  --------------               ----------------------------------         ----------------
  Pool / ProcessPoolExecutor
    | Engine.submit(units)
    v
  pending deque --wake pipe--> wait(wake pipe, every result pipe, every death fd;
                                   timeout: next guard deadline or memory sample)
                                  |
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
                                  |   drain the result pipe, reap, read the slot,
                                  |   diagnose (diagnosis.py), fail exactly the
                                  |   unit that was running or retry it,
                                  |   requeue the units it had not started,
                                  |   start a replacement
                                  |
                                  | guards: a slot past task_timeout -> SIGTERM;
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
import itertools
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

from . import buffers, diagnosis
from .channels import FrameReader, Spiller, WatchSet, grow_pipe
from .diagnosis import KernelLog, WorkerWatch, diagnose, zombie_exit_status
from .errors import (PoolTerminatedError, PoolThrottledError, TaskInfo, TaskTimeoutError,
                     WorkerCrashedError, WorkerInitError, WorkerMemoryError)
from .options import Guards
from .messages import (APPLY, CONTROL, INIT_FAILED, OK, RAISED, READY, REPLY_HEADER,
                       RETIRING, STARMAP, STOP, TASK_HEADER, UNENCODABLE, decode_exception,
                       dumps_call, encode_task, encoding_error, frame)
from .worker import DECODING, INITIALIZING, SENDING, SharedSlots, worker_main

PREFETCH = 2                # units in flight per worker: one running, one waiting in its pipe
RSS_SAMPLE_INTERVAL = 0.1   # seconds between memory samples of busy workers
TERMINATE_GRACE = 1.0       # seconds between SIGTERM and SIGKILL on terminate()
TIMEOUT_GRACE = 0.2         # seconds between SIGTERM and SIGKILL for a task past its timeout
MEMORY_SAMPLE_INTERVAL = 0.01   # seconds between RSS checks when max_worker_memory is set

RUNNING, CLOSING, TERMINATING, FINISHED = "running", "closing", "terminating", "finished"

_unit_ids = itertools.count()
_WORKER_FILE = f'"{worker_main.__code__.co_filename}"'   # as faulthandler quotes it
_live_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()
_alive_write_fds: set = set()    # every engine's "parent alive" write end, closed in forked workers


class Job:
    """One call of a front (an ``apply_async``, a ``map``, a ``submit``): the sink
    its units report to.  Fronts subclass it; the supervisor calls
    ``unit_done``/``unit_failed`` exactly once per unit."""

    def __init__(self, func: Callable, kind: int, call: str):
        self.func = func
        self.kind = kind
        self.call = call

    def unit_done(self, unit: "Unit", values: list) -> None:
        raise NotImplementedError

    def unit_failed(self, unit: "Unit", exc: BaseException) -> None:
        raise NotImplementedError

    def wanted(self, unit: "Unit") -> bool:
        """False when the unit should be dropped before it is sent (cancelled)."""
        return True

    def describe(self, unit: "Unit", offset: Optional[int]) -> TaskInfo:
        func = getattr(self.func, "__wrapped__", self.func)   # checkpoint's wrapper
        name = getattr(func, "__qualname__", None) or repr(func)
        items = unit.items
        if offset is None and len(items) == 1:
            offset = 0
        if offset is None or offset >= len(items):
            return TaskInfo(name, f"<{len(items)} items from {unit.start}>", unit.start, self.call)
        item = items[offset]
        if self.kind == APPLY:
            args, kwds = item
            parts = [_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kwds.items()]
            return TaskInfo(name, _clip(", ".join(parts)), None, self.call)
        if self.kind == STARMAP:
            try:
                text = ", ".join(_short(a) for a in item)
            except TypeError:
                text = _short(item)
            return TaskInfo(name, _clip(text), unit.start + offset, self.call)
        return TaskInfo(name, _short(item), unit.start + offset, self.call)


def _short(obj: Any) -> str:
    import reprlib
    try:
        return reprlib.repr(obj)
    except Exception:
        return f"<{type(obj).__name__} with failing repr>"


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Unit:
    """A chunk of one job's items, sent to one worker as one frame."""

    __slots__ = ("id", "job", "start", "items", "frame", "func_bytes", "attempts", "shared",
                 "remote")

    def __init__(self, job: Job, start: int, items: Sequence, func_bytes: bytes,
                 attempts: Optional[List[str]] = None, remote: bool = False):
        self.id = next(_unit_ids)
        self.job = job
        self.start = start        # index of items[0] in the job's input
        # Kept to name the culprit if the worker dies, and because workers may
        # read large bytes among them straight from our memory (remote).
        self.items = items
        self.func_bytes = func_bytes
        self.attempts = attempts or []   # earlier failed attempts (retries)
        self.remote = remote
        self.frame, self.shared = encode_task(self.id, job.kind, func_bytes, items, remote)

    def release(self) -> None:
        """Free the shared buffers of its arguments: the unit is finished."""
        if self.shared is not None:
            self.shared.close()
            self.shared = None

    def split(self, offset: Optional[int]) -> List["Unit"]:
        """Fresh units to run this one again: with *offset*, the items before
        it, the item at it (which keeps the attempts) and those after, so only
        the culprit item counts as retried; without, the whole unit."""
        if offset is None:
            return [Unit(self.job, self.start, self.items, self.func_bytes, self.attempts,
                         self.remote)]
        parts = []
        for lo, hi in ((0, offset), (offset, offset + 1), (offset + 1, len(self.items))):
            if lo < hi:
                parts.append(Unit(self.job, self.start + lo, self.items[lo:hi],
                                  self.func_bytes, self.attempts if lo == offset else None,
                                  self.remote))
        return parts

    @classmethod
    def placeholder(cls, job: Job, start: int, items: Sequence) -> "Unit":
        """A unit that is never sent: it only carries a failure to its job
        (arguments that did not pickle, an iterable that raised)."""
        unit = cls.__new__(cls)
        unit.id, unit.job, unit.start, unit.items, unit.frame = -1, job, start, items, []
        unit.func_bytes, unit.attempts, unit.shared, unit.remote = b"", [], None, False
        return unit


class _Worker:
    """The supervisor's record of one worker process."""

    def __init__(self, index: int, process, task_fd: int, result_fd: int, crash_fd: int):
        self.index = index                  # its slot in the shared array
        self.process = process
        self.pid: int = process.pid
        self.task_fd = task_fd
        self.reader = FrameReader(result_fd)
        self.crash_fd = crash_fd            # faulthandler's output at a fatal signal
        os.set_blocking(crash_fd, False)
        self.watch = WorkerWatch(self.pid, diagnosis.SOURCES)
        self.death_fd, self.pidfd = _death_fd(process)
        self.inflight: Deque[Unit] = collections.deque()
        self.sent = 0                       # units ever sent (maxtasksperchild)
        self.ready = False                  # initializer done
        self.init_failed = False
        self.retiring = False               # announced a planned exit
        self.stopping = False               # we sent STOP
        self.terminated = False             # we sent SIGTERM (terminate)
        self.kill_deadline: Optional[float] = None   # when SIGKILL follows; None once sent
        self.guard_kill: Optional[str] = None   # "timeout" or "memory": our guard killed it
        self.guard_text: Optional[str] = None   # what the guard saw, for the message
        self.guard_rss: Optional[int] = None
        self.item_deadline: Optional[float] = None   # task_timeout expiry of the running item
        self.seen_item: tuple = ()              # (task id, item, start) last read from the slot

    def crash_stack(self) -> Optional[str]:
        """What faulthandler wrote before the process died, if anything."""
        chunks = []
        while True:
            try:
                data = os.read(self.crash_fd, 65536)
            except OSError:   # BlockingIOError included: nothing more
                break
            if not data:
                break
            chunks.append(data)
        text = b"".join(chunks).decode("utf-8", "replace").strip()
        # Frames from the worker loop down are ours, the same in every crash.
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if _WORKER_FILE in line:
                lines = lines[:i]
                break
        return "\n".join(lines)[-8000:] or None

    def pop_unit(self, unit_id: int) -> Optional[Unit]:
        for unit in self.inflight:
            if unit.id == unit_id:
                self.inflight.remove(unit)
                return unit
        return None


def _death_fd(process) -> tuple:
    """A descriptor readable once the process has exited.

    A pidfd says so the moment the kernel marks the process dead, even if a
    grandchild still holds the write end of the sentinel pipe."""
    if hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(process.pid)
            return fd, fd
        except OSError:
            pass
    return process.sentinel, None


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
        # Functions of __main__ go by value where the worker has another __main__.
        self._by_value = self.start_method != "fork"
        self._init_bytes = (dumps_call(initializer, (initializer, tuple(initargs)),
                                       self._by_value)
                            if initializer is not None else None)
        self._lock = threading.Lock()
        self._pending: Deque[Unit] = collections.deque()
        self._state = RUNNING
        self._open_calls = 0           # calls still producing units (lazy imap)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._woken = False
        alive_r, self._alive_w = os.pipe()
        _alive_write_fds.add(self._alive_w)
        self._alive_conn = Connection(alive_r, writable=False)
        self._slots = SharedSlots(processes)
        self._workers: Dict[int, _Worker] = {}      # slot index -> worker
        self._watch = WatchSet(self._wake_r)
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
        self._thread = threading.Thread(target=self._run, name="poolguard-supervisor",
                                        daemon=True)
        _live_engines.add(self)
        self._thread.start()

    # ---- called from other threads -------------------------------------------------

    def encode_function(self, func: Callable) -> bytes:
        return dumps_call(func, func, self._by_value)

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

    def _wake(self) -> None:
        if self._woken:
            return
        self._woken = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

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
            if fd == self._wake_r:
                # Drain, then clear the flag: the other order could drain a
                # caller's byte while its flag stays set, and no later caller
                # would write again.  The next turn sees what woke us.
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
                self._woken = False
                continue
            worker, what = self._watch.owner[fd]
            if what == "result":
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
                     for d in (w.kill_deadline, w.item_deadline) if d is not None]
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
            if worker.kill_deadline is not None and now >= worker.kill_deadline:
                worker.kill_deadline = None     # SIGTERM was not enough
                _signal(worker.process, signal.SIGKILL)
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
                    _signal(worker.process, signal.SIGKILL)

    def _check_timeout(self, worker: _Worker, now: float, timeout: float) -> None:
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
            worker.kill_deadline = now + TIMEOUT_GRACE
            _signal(worker.process, signal.SIGTERM)

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
        task_conn = Connection(task_r, writable=False)
        result_conn = Connection(result_w, readable=False)
        crash_conn = Connection(crash_w, readable=False)
        fork = self.start_method == "fork"
        process = self.context.Process(
            target=worker_main, name=f"poolguard-worker-{index}",
            args=(task_conn, result_conn, crash_conn, self._alive_conn, self._slots, index,
                  self._init_bytes, self._maxtasks, self.guards.task_timeout is not None,
                  os.getpid() if self.start_method != "forkserver" else None,
                  sorted(_alive_write_fds) if fork else [], buffers.probe_handle()))
        try:
            process.start()
        finally:
            task_conn.close()      # the child has its own copies now
            result_conn.close()
            crash_conn.close()
        os.set_blocking(task_w, False)
        worker = _Worker(index, process, task_w, result_r, crash_r)
        self._workers[index] = worker
        self._watch.add(worker.reader.fd, worker, "result")
        self._watch.add(worker.death_fd, worker, "death")

    def _usable_workers(self) -> List[_Worker]:
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
            if not worker.terminated:   # SIGKILL follows at the deadline (_enforce_guards)
                worker.terminated = True
                worker.kill_deadline = now + TERMINATE_GRACE
                _signal(worker.process, signal.SIGTERM)

    # ---- replies -------------------------------------------------------------------

    def _read_replies(self, worker: _Worker) -> str:
        frames, state = worker.reader.read()
        for data in frames:
            self._on_reply(worker, data)
        if state == "eof":  # keep the pipe out of the wait set; the death fd says the rest
            self._watch.discard(worker.reader.fd)
        return state

    def _on_reply(self, worker: _Worker, data: bytes) -> None:
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

    def _on_death(self, worker: _Worker) -> None:
        _kill_group(worker.pid)   # what the task started dies with it
        # Everything it wrote before dying.  Not "until EOF": a grandchild may
        # hold the write end open for as long as it lives.
        while self._read_replies(worker) == "more":
            pass
        exitcode = None
        if self.start_method == "forkserver":
            # Not our child: its status comes through the fork server, which
            # reports 255 when it cannot read it.  Read it ourselves first.
            exitcode = zombie_exit_status(worker.pid, diagnosis.SOURCES)
            worker.process.join(1.0)
            if exitcode is None and worker.process.exitcode != 255:
                exitcode = worker.process.exitcode
        else:
            worker.process.join()
            exitcode = worker.process.exitcode
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

    def _crash_error(self, worker: _Worker, culprit: Unit, offset: Optional[int], item: int,
                     exitcode: Optional[int], known: bool,
                     crash_stack: Optional[str]) -> WorkerCrashedError:
        phase = {DECODING: "decoding", SENDING: "sending"}.get(item, "running")
        cls = {"timeout": TaskTimeoutError, "memory": WorkerMemoryError}.get(
            worker.guard_kill or "", WorkerCrashedError)
        if worker.guard_kill == "memory":
            verdict = diagnosis.Diagnosis(diagnosis.CONFIRMED, "poolguard's memory guard "
                                          "killed it", ["max_worker_memory"])
        elif known:
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

    def _on_fruitless_death(self, worker: _Worker, task_id: int, exitcode: Optional[int],
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

    def _forget(self, worker: _Worker) -> None:
        self._watch.discard(worker.reader.fd)
        self._watch.discard(worker.death_fd)
        del self._workers[worker.index]
        os.close(worker.reader.fd)
        os.close(worker.crash_fd)
        self._spiller.close_fd(worker.task_fd)
        if worker.pidfd is not None:
            os.close(worker.pidfd)
        worker.watch.close()
        try:
            worker.process.close()
        except ValueError:
            pass  # forkserver did not report the status in time; it reaps the process

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
            _signal(worker.process, signal.SIGKILL)
            _kill_group(worker.pid)
            worker.process.join()
            self._forget(worker)
        if units:
            failure = error if error is not None else PoolTerminatedError(
                "the pool shut down before this task finished")
            for unit in units:
                self._deliver_failure(unit, failure)
        self._spiller.stop()
        _alive_write_fds.discard(self._alive_w)
        for fd in (self._alive_w, self._wake_r, self._wake_w):
            os.close(fd)
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


def _signal(process, signum: int) -> None:
    try:
        os.kill(process.pid, signum)
    except (ProcessLookupError, TypeError):
        pass


def _kill_group(pid: int) -> None:
    """SIGKILL the process group a worker made for itself (its pid), before
    the worker is reaped: while its zombie exists, the id cannot be reused."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass   # no such group: nothing was left, or it never made one


def _signal_name(exitcode: Optional[int]) -> Optional[str]:
    from .errors import signal_name
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
