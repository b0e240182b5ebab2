"""What /proc tells of a process, for the engine and its launchers: its
state, its RSS, the exit status of a zombie; and the machine's free memory.

Every reader answers None when the file is missing or unreadable (the
process gone, another OS, no permission); none raises or blocks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional


@dataclass
class Sources:
    """Where the evidence is read from (tests point these at empty places)."""

    proc: str = "/proc"
    cgroup: str = "/sys/fs/cgroup"
    kmsg: str = "/dev/kmsg"


SOURCES = Sources()

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_text(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, ValueError):
        return None


def read_int(path: str) -> Optional[int]:
    text = read_text(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat_fields(pid: int, sources: Sources) -> List[str]:
    """/proc/PID/stat from field 3 (the state) on; empty when unreadable."""
    text = read_text(f"{sources.proc}/{pid}/stat")
    if not text or ")" not in text:
        return []
    return text.rsplit(")", 1)[1].split()


def process_state(pid: int, sources: Sources = SOURCES) -> Optional[str]:
    """The state letter of /proc/PID/stat (R, S, D, T, t, Z...), or None."""
    fields = _stat_fields(pid, sources)
    return fields[0] if fields else None


def rss_of(pid: int, sources: Sources = SOURCES) -> Optional[int]:
    """Resident memory of a live process in bytes, or None."""
    text = read_text(f"{sources.proc}/{pid}/statm")
    try:
        rss = int(text.split()[1]) * PAGE if text else 0
    except (ValueError, IndexError):
        return None
    return rss or None


def zombie_exit_status(pid: int, sources: Sources = SOURCES) -> Optional[int]:
    """The exit status of a dead process not yet reaped, as Process.exitcode
    reports it (negative for a signal); for workers we are not the parent of
    (forkserver), whose status reaches us second-hand."""
    fields = _stat_fields(pid, sources)
    if len(fields) < 50 or fields[0] != "Z":
        return None
    try:
        status = int(fields[49])   # field 52 of stat: exit_code, as waitpid reports it
    except ValueError:
        return None
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return None


def available_memory(sources: Sources) -> Optional[int]:
    """MemAvailable of /proc/meminfo in bytes, or None."""
    text = read_text(f"{sources.proc}/meminfo")
    for line in (text or "").splitlines():
        if line.startswith("MemAvailable:"):
            try:
                return int(line.split()[1]) * 1024
            except (IndexError, ValueError):
                return None
    return None
