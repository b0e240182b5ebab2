"""One worker's memory as the supervisor records it while the worker lives
(/proc/PID is gone after its death): RSS samples, its memory cgroup and that
cgroup's OOM-kill counter."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from .cgroups import MemoryCgroup
from .proc import PAGE, SOURCES, Sources


@dataclass
class WorkerWatch:
    """What the supervisor knows of one worker's memory while it lives."""

    pid: int
    sources: Sources = field(default_factory=lambda: SOURCES)
    rss_last: Optional[int] = None
    task_peak: Optional[int] = None      # peak RSS seen during the current task
    cgroup: Optional[MemoryCgroup] = None
    oom_kills_before: Optional[int] = None
    _statm: Optional[int] = None

    def sample_rss(self) -> Optional[int]:
        """The worker's RSS now, cheaply (one pread of /proc/PID/statm on a
        descriptor kept open), for the memory guard's frequent checks."""
        try:
            if self._statm is None:
                self._statm = os.open(f"{self.sources.proc}/{self.pid}/statm", os.O_RDONLY)
            rss = int(os.pread(self._statm, 128, 0).split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            return None
        if rss == 0:   # an exited process (a zombie) reads as zeros: not a sample
            return None
        self.rss_last = rss
        self.task_peak = rss if self.task_peak is None else max(self.task_peak, rss)
        return rss

    def sample(self) -> None:
        """One RSS sample; also notices the worker moving to another cgroup."""
        if self.sample_rss() is None:
            return
        cgroup = MemoryCgroup.of_pid(self.pid, self.sources)
        if cgroup is not None and cgroup != self.cgroup:
            self.cgroup = cgroup
            self.oom_kills_before = cgroup.oom_kills()

    def close(self) -> None:
        if self._statm is not None:
            os.close(self._statm)
            self._statm = None

    def task_done(self) -> None:
        self.task_peak = self.rss_last
