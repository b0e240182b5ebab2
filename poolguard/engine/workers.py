"""The supervisor's record of one worker: its process handle (see
launch.py), its pipes, what it has in flight, and what the guards did to it."""
from __future__ import annotations

import collections
from dataclasses import dataclass
import os
import re
import signal
from typing import Deque, List, Optional, Tuple

from .. import diagnosis
from .launch import WorkerProcess
from ..wire.channels import FrameReader
from ..diagnosis import WorkerWatch
from ..errors import TaskInfo
from ..worker import worker_main
from .jobs import Unit

_WORKER_FILE = f'"{worker_main.__code__.co_filename}"'   # as faulthandler quotes it


class Worker:
    """The supervisor's record of one worker process."""

    def __init__(self, index: int, process: WorkerProcess, task_fd: int, result_fd: int, crash_fd: int):
        self.index = index                  # its slot in the shared array
        self.process = process
        self.pid: int = process.pid
        self.task_fd = task_fd
        self.reader = FrameReader(result_fd)
        self.crash_fd = crash_fd            # faulthandler's output at a fatal signal
        os.set_blocking(crash_fd, False)
        self.watch = WorkerWatch(self.pid, diagnosis.SOURCES)
        self.death_fd = process.death_fd
        self.inflight: Deque[Unit] = collections.deque()
        self.sent = 0                       # units ever sent (maxtasksperchild)
        self.ready = False                  # initializer done
        self.init_failed = False
        self.retiring = False               # announced a planned exit
        self.stopping = False               # we sent STOP
        self.terminated = False             # we sent SIGTERM (terminate)
        self._escalation: List[Tuple[float, int]] = []   # (when, signal) still to send
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
        return trim_stack(text)[-8000:] or None

    def escalate(self, steps: List[Tuple[float, int]]) -> None:
        """Signals to send at the given monotonic times, unless it dies first."""
        self._escalation = sorted(steps)

    def next_signal_at(self) -> Optional[float]:
        return self._escalation[0][0] if self._escalation else None

    def send_due_signals(self, now: float) -> None:
        while self._escalation and now >= self._escalation[0][0]:
            signal_process(self.process, self._escalation.pop(0)[1])

    def pop_unit(self, unit_id: int) -> Optional[Unit]:
        for unit in self.inflight:
            if unit.id == unit_id:
                self.inflight.remove(unit)
                return unit
        return None


@dataclass(frozen=True)
class WorkerStatus:
    """What one worker is doing, as ``Pool.status()`` reports it."""

    pid: int
    state: str                  # "starting", "idle", "busy", or "stopped" (SIGSTOP, debugger)
    task: Optional[TaskInfo]    # what it runs, when busy
    elapsed: Optional[float]    # seconds since that item (or its chunk) started
    rss: Optional[int]          # resident memory in bytes

    def __str__(self) -> str:
        text = f"worker {self.pid}: {self.state}"
        if self.task is not None:
            text += f" {self.task}"
        if self.elapsed is not None:
            text += f" for {self.elapsed:.1f} s"
        if self.rss is not None:
            text += f", RSS {self.rss / 2**20:.0f} MiB"
        return text


def trim_stack(text: str) -> str:
    """faulthandler's output without our frames: in each thread's block, the
    frames from the worker loop down (the same in every crash); the block of
    the worker's own parent-watching thread goes entirely."""
    blocks = re.split(r"\n\s*\n|\n(?=(?:Current thread|Thread) 0x)", text)
    kept = []
    for block in blocks:
        if _HELPER_FRAME in block:
            continue
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if _WORKER_FILE in line:
                lines = lines[:i]
                break
        if lines:
            kept.append("\n".join(lines))
    return "\n\n".join(kept)


_HELPER_FRAME = "in _watch_parent"


def signal_process(process, signum: int) -> None:
    """Signal a worker not yet reaped (so its pid cannot have been reused)."""
    try:
        os.kill(process.pid, signum)
    except (ProcessLookupError, TypeError):
        pass


def kill_group(pid: int) -> None:
    """SIGKILL the process group a worker made for itself (its pid), before
    the worker is reaped: while its zombie exists, the id cannot be reused."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass   # no such group: nothing was left, or it never made one

