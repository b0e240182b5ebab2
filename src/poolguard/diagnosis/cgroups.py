"""A process's memory cgroup, found and read for either cgroup version:
its OOM-kill counter, its limit, its peak usage."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from .proc import SOURCES, Sources, read_int, read_text


@dataclass
class MemoryCgroup:
    """A memory cgroup, by its directory, for either cgroup version."""

    name: str          # path inside the hierarchy, e.g. "/job42"
    directory: str
    version: int

    @classmethod
    def of_pid(cls, pid: int, sources: Sources = SOURCES) -> Optional["MemoryCgroup"]:
        text = read_text(f"{sources.proc}/{pid}/cgroup")
        if text is None:
            return None
        v2_name = None
        for line in text.splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            if "memory" in parts[1].split(","):
                directory = os.path.join(sources.cgroup, "memory", parts[2].lstrip("/"))
                return cls(parts[2], directory.rstrip("/"), 1)
            if parts[0] == "0" and parts[1] == "":
                v2_name = parts[2]
        if v2_name is not None and os.path.exists(os.path.join(sources.cgroup,
                                                               "cgroup.controllers")):
            directory = os.path.join(sources.cgroup, v2_name.lstrip("/"))
            return cls(v2_name, directory.rstrip("/"), 2)
        return None

    @classmethod
    def by_name(cls, name: str, sources: Sources = SOURCES) -> Optional["MemoryCgroup"]:
        v1 = os.path.join(sources.cgroup, "memory", name.lstrip("/")).rstrip("/")
        if os.path.isdir(v1):
            return cls(name, v1, 1)
        v2 = os.path.join(sources.cgroup, name.lstrip("/")).rstrip("/")
        if os.path.exists(os.path.join(v2, "memory.max")):
            return cls(name, v2, 2)
        return None

    def _file(self, v1: str, v2: str) -> str:
        return os.path.join(self.directory, v1 if self.version == 1 else v2)

    def oom_kills(self) -> Optional[int]:
        text = read_text(self._file("memory.oom_control", "memory.events"))
        for line in (text or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    def limit(self) -> Optional[int]:
        value = read_int(self._file("memory.limit_in_bytes", "memory.max"))
        # cgroup v1 writes "no limit" as a huge page-rounded number.
        return None if value is None or value >= 1 << 60 else value

    def peak(self) -> Optional[int]:
        return read_int(self._file("memory.max_usage_in_bytes", "memory.peak"))

    @property
    def procs_file(self) -> str:
        return os.path.join(self.directory, "cgroup.procs")


def pids_limit_reached(sources: Sources = SOURCES) -> Optional[str]:
    """Which pids cgroup of this process's (its own or an ancestor) has as
    many tasks as its ``pids.max`` allows, said as "cgroup NAME (pids.max
    N)"; None when none is, or nothing can be read.  fork() fails there with
    EAGAIN, as past RLIMIT_NPROC, but root is not exempt."""
    text = read_text(f"{sources.proc}/self/cgroup") or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if "pids" in parts[1].split(","):
            top = os.path.join(sources.cgroup, "pids")
        elif parts[:2] == ["0", ""] and os.path.exists(os.path.join(sources.cgroup,
                                                                    "cgroup.controllers")):
            top = sources.cgroup
        else:
            continue
        name = parts[2].rstrip("/")
        while True:
            directory = os.path.join(top, name.lstrip("/"))
            limit = read_int(os.path.join(directory, "pids.max"))
            current = read_int(os.path.join(directory, "pids.current"))
            if limit is not None and current is not None and current >= limit:
                return f"cgroup {name or '/'} (pids.max {limit})"
            if not name:
                break
            name = os.path.dirname(name).rstrip("/")
    return None
