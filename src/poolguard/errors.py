"""Exceptions raised by poolguard.

Every error here pickles and unpickles with its attributes, so it can cross
process boundaries again (a pool inside a worker, a result stored to disk).
"""
from __future__ import annotations

import pickle
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]
from typing import Any, List, Optional, Sequence, Tuple

from .advice import ADVICE, PHASES, explain
from .naming import signal_name


class PoolguardError(Exception):
    """Base class of poolguard's own errors.

    They pickle with their attributes, whatever their ``__init__`` takes
    (keyword-only attributes would be lost by Exception's default pickling)."""

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


@dataclass(frozen=True)
class TaskInfo:
    """What a worker was running: enough to find the culprit input again
    (``str()`` of it: ``square(2) (item 1 of map)``).

    Attributes:
        function: The function's qualified name.
        arguments: A truncated repr of the arguments, e.g. ``"2"`` or
            ``"1, x=3"``.
        item: The index in the input, for the map-like calls.
        call: ``"apply"``, ``"map"``, ``"starmap"``, ``"imap"``,
            ``"imap_unordered"`` or ``"submit"``.
    """

    function: str                  # qualified name of the function
    arguments: str                 # truncated repr of the arguments, e.g. "2" or "1, x=3"
    item: Optional[int] = None     # index in the input for map-like calls
    call: str = "apply"            # apply, map, starmap, imap, imap_unordered, submit

    def __str__(self) -> str:
        text = f"{self.function}({self.arguments})"
        if self.item is not None:
            text += f" (item {self.item} of {self.call})"
        return text


class WorkerCrashedError(PoolguardError, BrokenProcessPool):
    """A worker process died while it ran a task; this task was the one.

    Also a ``concurrent.futures.process.BrokenProcessPool`` (so a
    ``RuntimeError``): code written for the standard executor catches it.
    Unlike there, only this task failed and the pool goes on.

    Attributes:

    - ``pid``; ``exitcode`` as ``multiprocessing.Process.exitcode`` (negative
      for a signal, ``None`` when the status could not be read); ``signal``,
      the name (``"SIGKILL"``) or ``None``;
    - ``task``: :class:`TaskInfo` or ``None``; ``phase``: ``"running"``,
      ``"decoding"`` (the arguments) or ``"sending"`` (the result);
    - ``oom``: ``True`` (confirmed or likely), ``False`` (ruled out, e.g. a
      segfault) or ``None`` (possible, or unknown); ``oom_verdict``: one of
      ``"confirmed"``, ``"likely"``, ``"possible"``, ``"ruled out"``,
      ``"unknown"``; ``oom_evidence``: the evidence, as text;
    - ``peak_rss``: the highest RSS sampled during the task, ``last_rss``: the
      last sample before death (bytes, or ``None``);
    - ``crash_stack``: the Python stack faulthandler wrote at a fatal signal;
    - ``attempts``: with ``retries``, one line per earlier failed attempt;
    - ``host``: on a cluster, the machine the worker ran on, and
      ``dask_worker`` the address of the dask worker that started it (both
      ``None`` on one machine).
    """

    host: Optional[str] = None
    dask_worker: Optional[str] = None
    stack_title = "Python stack at the crash, as faulthandler wrote it"
    advice: Optional[str] = None   # a guard's own "What to do:" line, else by verdict

    def __init__(self, message: str, *, pid: Optional[int] = None,
                 exitcode: Optional[int] = None, signal: Optional[str] = None,
                 task: Optional[TaskInfo] = None, oom: Optional[bool] = None,
                 peak_rss: Optional[int] = None, phase: Optional[str] = None,
                 oom_verdict: str = "unknown", oom_evidence: str = "",
                 last_rss: Optional[int] = None, crash_stack: Optional[str] = None):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal
        self.task = task
        self.oom = oom
        self.peak_rss = peak_rss
        self.phase = phase
        self.oom_verdict = oom_verdict
        self.oom_evidence = oom_evidence
        self.last_rss = last_rss
        self.crash_stack = crash_stack
        self.attempts: List[str] = []

    def summary(self) -> str:
        """One line for the list of attempts: pid, how, verdict."""
        how = self.signal or (f"exit code {self.exitcode}" if self.exitcode is not None
                              else "unknown status")
        return f"worker {self.pid}: {how}, {type(self).__name__}, OOM {self.oom_verdict}"

    def add_attempts(self, earlier: Sequence[str]) -> None:
        """Record earlier attempts of the same task, in the message too."""
        self.attempts = list(earlier) + [self.summary()]
        lines = "; ".join(f"{i}. {line}" for i, line in enumerate(self.attempts, 1))
        self.args = (f"{self.args[0]}\nFailed after {len(self.attempts)} attempts: {lines}",
                     ) + self.args[1:]

    def place(self, host: str, dask_worker: str, note: str = "", advice: str = "") -> None:
        """Say where the worker ran (on a cluster), in the message too:
        "worker 123 on node7 (dask worker tcp://...) was killed ...", with
        *note* before the "What to do:" line and *advice* instead of it."""
        self.host, self.dask_worker = host, dask_worker
        message = str(self.args[0]) if self.args else ""
        head = f"worker {self.pid} "
        if message.startswith(head):
            message = f"{head}on {host} (dask worker {dask_worker}) {message[len(head):]}"
        body, todo, old_advice = message.rpartition("\nWhat to do: ")
        if todo:
            message = body + (f"\n{note}" if note else "") + todo + (advice or old_advice)
        self.args = (message,) + self.args[1:]

    @classmethod
    def from_death(cls, *, pid: int, exitcode: Optional[int], task: Optional[TaskInfo],
                   phase: str = "running", exit_status_known: bool = True,
                   diagnosis: Any = None, peak_rss: Optional[int] = None,
                   last_rss: Optional[int] = None, crash_stack: Optional[str] = None,
                   guard: Optional[str] = None) -> "WorkerCrashedError":
        """Build the error and its message from what the engine found.
        *diagnosis* is a :class:`poolguard.diagnosis.Diagnosis` or ``None``;
        *guard* says how poolguard's own guard stopped the worker, if it did."""
        signame = signal_name(-exitcode) if exitcode is not None and exitcode < 0 else None
        if not exit_status_known or exitcode is None:
            exitcode, signame = None, None
        how = guard or (f"was killed by {signame}" if signame else
                        f"exited with code {exitcode}" if exitcode is not None else
                        "died (exit status unknown)")
        what = PHASES.get(phase, f"while {phase}")
        message = f"worker {pid} {how} {what}" + (f" {task}" if task is not None else "")
        cause, advice = explain(diagnosis, signame, exitcode, crash_stack)
        if guard is None:   # poolguard stopped it itself: no guessing at other causes
            message += cause
        if peak_rss is not None and "RSS peaked" not in message:
            message += f" (RSS peaked at {peak_rss / 2**20:.0f} MiB during the task)"
        if crash_stack:
            message += f"\n{cls.stack_title}:\n{crash_stack}"
        message += "\nWhat to do: " + (cls.advice or ADVICE[advice])
        oom = diagnosis.oom if diagnosis is not None else (
            False if signame in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT") else None)
        return cls(message, pid=pid, exitcode=exitcode, signal=signame, task=task, oom=oom,
                   peak_rss=peak_rss, phase=phase,
                   oom_verdict=diagnosis.verdict if diagnosis is not None else "unknown",
                   oom_evidence=diagnosis.evidence if diagnosis is not None else "",
                   last_rss=last_rss, crash_stack=crash_stack)


class TaskTimeoutError(WorkerCrashedError, TimeoutError):
    """The task ran past ``task_timeout``; its worker was stopped and replaced.
    ``limit`` is the timeout in seconds; ``crash_stack`` holds where every
    thread of the worker was when the timeout fired."""

    stack_title = "Where the worker was when task_timeout fired (every thread)"
    limit: Optional[float] = None

    advice = ("the stack above shows where the task was; raise task_timeout= if it needs "
              "longer, or look there for what it waited on.")


class WorkerMemoryError(WorkerCrashedError, MemoryError):
    """The worker went over ``max_worker_memory`` while running this task and
    was killed.  ``limit`` is the cap and ``rss`` the size seen, in bytes."""

    limit: Optional[int] = None
    rss: Optional[int] = None

    advice = ("raise max_worker_memory= if the task needs that much, or make it use less "
              "(smaller inputs or chunks, fewer copies).")


class TaskStoppedError(WorkerCrashedError):
    """The call was stopped on request (``AsyncResult.stop()``,
    ``future.stop()``): the worker running it was killed and replaced, and
    no other call was touched.  Never retried.  ``pid`` is ``None`` when
    the call was stopped before a worker ran it."""

    advice = "nothing: the call was stopped as asked."


class SoftTimeoutError(PoolguardError):
    """Raised inside a task that ran past ``soft_timeout``, where it runs, so
    that it can clean up (close files, write partial output) and end.  A
    subclass of ``Exception``: ``except Exception`` and ``finally`` blocks
    run.  If the task does not end, ``task_timeout`` still stops it.
    ``limit`` is the soft timeout in seconds."""

    def __init__(self, message: str, *, limit: Optional[float] = None):
        super().__init__(message)
        self.limit = limit


class WorkerInitError(PoolguardError, BrokenProcessPool):
    """The pool's initializer failed in a worker (raised or died), or no
    worker could be started.  A ``BrokenProcessPool`` too, as the standard
    executor raises then.

    ``exc`` is the initializer's exception when it could be brought back,
    ``remote_traceback`` its traceback text.  The pool stops respawning after
    this; the next submission tries once more.
    """

    def __init__(self, message: str, *, exc: Optional[BaseException] = None,
                 remote_traceback: Optional[str] = None, pid: Optional[int] = None):
        super().__init__(message)
        self.exc = exc
        self.remote_traceback = remote_traceback
        self.pid = pid


class PoolThrottledError(WorkerInitError):
    """Workers kept dying before doing any work (a crashing initializer, a
    broken environment); the pool stopped starting new ones and failed the
    waiting tasks.  The next call tries again."""


class UnpicklableTaskError(PoolguardError):
    """A task raised an exception that could not be carried back intact.

    Either it could not be pickled in the worker or not unpickled here (for
    example an exception class whose ``__init__`` takes two arguments).  The
    original type name, message and traceback are kept as text.
    """

    def __init__(self, message: str, *, type_name: str = "", text: str = "",
                 remote_traceback: str = "", reason: str = ""):
        super().__init__(message)
        self.type_name = type_name
        self.text = text
        self.remote_traceback = remote_traceback
        self.reason = reason


class ResultEncodingError(MaybeEncodingError, pickle.PicklingError):   # type: ignore[misc]
    """A task's result could not be pickled in the worker.
    ``multiprocessing.pool.MaybeEncodingError`` (what Pool raises) and
    ``pickle.PicklingError`` (what the standard executor raises)."""


class ResultDecodingError(ResultEncodingError, BrokenProcessPool):
    """A task's result could not be rebuilt here (its unpickling raised).
    Also a ``BrokenProcessPool``, as the standard executor raises then;
    only this task failed."""


class TaskDecodeError(PoolguardError, BrokenProcessPool):
    """The worker could not unpickle the task (its function or arguments).
    ``exc`` is what unpickling raised.  A ``BrokenProcessPool``, as the
    standard executor raises then; only this task failed."""

    def __init__(self, message: str, *, exc: Optional[BaseException] = None):
        super().__init__(message)
        self.exc = exc


class PoolTerminatedError(PoolguardError):
    """The pool was terminated before this task finished."""


class WorkerStoppedWarning(RuntimeWarning):
    """A busy worker has been stopped (SIGSTOP, a debugger, a cgroup freezer)
    for a while: its task waits and, without task_timeout, so does the
    caller.  Issued once per stop; ``pool.status()`` shows it too."""


class HelperDiedWarning(RuntimeWarning):
    """A process the pool relies on, not a worker (its zygote, the zygote's
    standby), died: which, its pid, how, and what the pool does instead.
    Issued once per death."""


def _rebuild(cls: Any, args: tuple[Any, ...], state: dict[Any, Any]) -> Any:
    # TaskTimeoutError is a TimeoutError: its memory layout is OSError's, whose
    # __new__ must make it (the first __new__ in its MRO is RuntimeError's).
    err = OSError.__new__(cls) if issubclass(cls, OSError) else cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err
