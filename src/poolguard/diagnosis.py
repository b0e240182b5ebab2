"""Why did a worker die?  Evidence gathered while it lived and read at its death.

The engine calls three things here:

* :class:`KernelLog`, one per pool: new kernel log records, read without
  blocking, to find the OOM killer's record of a pid;
* :class:`WorkerWatch`, one per worker: RSS samples and the worker's memory
  cgroup with its OOM-kill counter, recorded while the worker is alive
  (``/proc/PID`` is gone after its death);
* :func:`diagnose`, at a death: a verdict on OOM with its evidence.

Every source may be missing or unreadable (no cgroup, no permission on
``/dev/kmsg``, a container, another OS).  Then the verdict degrades to
"unknown"; nothing here raises or blocks.
"""
from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .wire.slots import SENT_BY_COMMAND


@dataclass
class Sources:
    """Where the evidence is read from (tests point these at empty places)."""

    proc: str = "/proc"
    cgroup: str = "/sys/fs/cgroup"
    kmsg: str = "/dev/kmsg"


SOURCES = Sources()

CONFIRMED, LIKELY, POSSIBLE, RULED_OUT, UNKNOWN = (
    "confirmed", "likely", "possible", "ruled out", "unknown")
CRASH_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT")
NEAR_LIMIT = 0.9   # an RSS above this share of the limit counts as "near"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


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


# ---- the kernel log ----------------------------------------------------------------

_KILLED = re.compile(r"Killed process (\d+) ")
_OOM_KILL = re.compile(r"oom-kill:.*?oom_memcg=([^,]*),.*?pid=(\d+)")


class KernelLog:
    """New records of the kernel log since this object was made."""

    MAX_REMEMBERED = 256

    def __init__(self, sources: Sources = SOURCES):
        self.problem: Optional[str] = None
        self._records: Dict[int, Dict[str, str]] = {}
        try:
            self._fd: Optional[int] = os.open(sources.kmsg, os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self._fd, 0, os.SEEK_END)   # only what happens from now on
        except OSError as exc:
            self._fd = None
            self.problem = f"{sources.kmsg} not readable ({exc.strerror or exc})"

    @property
    def readable(self) -> bool:
        return self._fd is not None

    def oom_record(self, pid: int) -> Optional[Dict[str, str]]:
        """The OOM killer's record for *pid*, if it wrote one."""
        self._drain()
        return self._records.get(pid)

    def _drain(self) -> None:
        if self._fd is None:
            return
        for _ in range(100_000):   # records since the last read; bounded anyway
            try:
                raw = os.read(self._fd, 8192)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == 32:   # EPIPE: records were overwritten; go on
                    continue
                self.problem = f"kernel log read failed ({exc.strerror or exc})"
                self.close()
                return
            if not raw:
                return
            text = raw.decode("utf-8", "replace")
            message = text.split(";", 1)[-1].strip()
            match = _OOM_KILL.search(message)
            if match:
                self._remember(int(match.group(2)), "memcg", match.group(1))
                continue
            match = _KILLED.search(message)
            if match and "out of memory" in message.lower():
                self._remember(int(match.group(1)), "line", message)

    def _remember(self, pid: int, key: str, value: str) -> None:
        self._records.setdefault(pid, {})[key] = value
        while len(self._records) > self.MAX_REMEMBERED:
            self._records.pop(next(iter(self._records)))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ---- memory cgroups ----------------------------------------------------------------

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
        rss = int(text.split()[1]) * _PAGE if text else 0
    except (ValueError, IndexError):
        return None
    return rss or None


# ---- per-worker record -------------------------------------------------------------

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
            rss = int(os.pread(self._statm, 128, 0).split()[1]) * _PAGE
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


# ---- the verdict -------------------------------------------------------------------

@dataclass
class Diagnosis:
    verdict: str                     # confirmed, likely, possible, ruled out, unknown
    evidence: str                    # one sentence a person can check
    checked: List[str]               # what was looked at
    outside_kill: bool = False       # SIGKILL/SIGTERM with no OOM evidence
    self_kill: bool = False          # the task signalled its own process

    @property
    def oom(self) -> Optional[bool]:
        if self.verdict in (CONFIRMED, LIKELY):
            return True
        if self.verdict == RULED_OUT:
            return False
        return None


def mib(n: Optional[int]) -> str:
    return "?" if n is None else f"{n / 2**20:.0f} MiB"


def diagnose(signame: Optional[str], watch: Optional[WorkerWatch],
             kernel_log: Optional[KernelLog], sources: Sources = SOURCES,
             sent: int = 0) -> Diagnosis:
    """Weigh the evidence on a dead worker; never raises.  *sent*: the
    signal the task sent its own process, as its slot recorded it."""
    try:
        own = _sent_by_task(sent, signame)
        if own is not None:
            return Diagnosis(RULED_OUT, own, [], self_kill=True)
        return _diagnose(signame, watch, kernel_log, sources)
    except Exception as exc:   # a reader we did not foresee failing
        return Diagnosis(UNKNOWN, f"diagnosis failed: {exc!r}", [])


def _sent_by_task(sent: int, signame: Optional[str]) -> Optional[str]:
    if sent == SENT_BY_COMMAND and signame is not None:
        return ("the task killed its own process: a command it started (os.system or "
                "subprocess) named its pid with kill")
    if sent > 0 and signame is not None and signame == _signal_name(sent):
        return f"the task sent {signame} to its own process (os.kill)"
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _diagnose(signame: Optional[str], watch: Optional[WorkerWatch],
              kernel_log: Optional[KernelLog], sources: Sources) -> Diagnosis:
    if signame in CRASH_SIGNALS:
        return Diagnosis(RULED_OUT, f"{signame} is a crash, not an OOM kill", [])
    if signame not in ("SIGKILL", "SIGTERM"):
        return Diagnosis(UNKNOWN if signame else RULED_OUT,
                         "the worker ended itself" if not signame else f"killed by {signame}",
                         [])
    checked: List[str] = []
    pid = watch.pid if watch else None
    cgroup = watch.cgroup if watch else None
    record = None
    if kernel_log is not None and kernel_log.readable and pid is not None:
        record = kernel_log.oom_record(pid)
        checked.append("kernel log: " + ("OOM record for this pid" if record
                                         else "no OOM record for this pid"))
    elif kernel_log is not None:
        checked.append(f"kernel log: {kernel_log.problem or 'not read'}")
    if record and record.get("memcg"):
        cgroup = MemoryCgroup.by_name(record["memcg"], sources) or cgroup
    limit = cgroup.limit() if cgroup else None
    where = _where(cgroup, limit, watch)
    if record and signame == "SIGKILL":
        line = record.get("line", "an oom-kill record")
        return Diagnosis(CONFIRMED, f"the kernel OOM killer killed it{where}; kernel log: "
                                    f"{line[:200]}", checked)
    found = (_counter_rose(cgroup, watch, signame, where, checked)
             or _near_ceiling(limit, watch, signame, sources, checked))
    if found is not None:
        return found
    verdict = (RULED_OUT if record is None and kernel_log is not None and kernel_log.readable
               and signame == "SIGKILL" else UNKNOWN)
    return Diagnosis(verdict, f"no evidence of an OOM kill ({'; '.join(checked) or 'nothing readable'})"
                     ": it came from outside the process (a job scheduler's time or memory "
                     "limit, a user, a container runtime)", checked, outside_kill=True)


def _where(cgroup: Optional["MemoryCgroup"], limit: Optional[int],
           watch: Optional[WorkerWatch]) -> str:
    where = ""
    if cgroup is not None:
        where = f" in memory cgroup {cgroup.name} (limit {mib(limit)}"
        peak = cgroup.peak()
        where += f", peak usage {mib(peak)})" if peak is not None else ")"
    if watch is not None and watch.task_peak is not None:
        where += f"; worker RSS peaked at {mib(watch.task_peak)} during the task"
    return where


def _counter_rose(cgroup: Optional["MemoryCgroup"], watch: Optional[WorkerWatch],
                  signame: str, where: str, checked: List[str]) -> Optional[Diagnosis]:
    if cgroup is None or watch is None or watch.oom_kills_before is None:
        return None
    now = cgroup.oom_kills()
    if now is None:
        return None
    checked.append(f"cgroup {cgroup.name} oom_kill counter: {watch.oom_kills_before} -> {now}")
    if now > watch.oom_kills_before and signame == "SIGKILL":
        return Diagnosis(LIKELY, f"the OOM kill counter of its memory cgroup rose while the "
                                 f"task ran{where}", checked)
    return None


def _near_ceiling(limit: Optional[int], watch: Optional[WorkerWatch], signame: str,
                  sources: Sources, checked: List[str]) -> Optional[Diagnosis]:
    rss = watch.rss_last if watch else None
    ceiling = limit
    if ceiling is None:
        ceiling = _available_memory(sources)
        ceiling_text = f"{mib(ceiling)} available on the machine"
    else:
        ceiling_text = f"the cgroup limit {mib(ceiling)}"
    if rss is None:
        return None
    checked.append(f"last RSS {mib(rss)} against {ceiling_text}")
    if ceiling and rss >= NEAR_LIMIT * ceiling and signame == "SIGKILL":
        return Diagnosis(POSSIBLE, f"its last RSS sample, {mib(rss)}, was near {ceiling_text}",
                         checked)
    return None


class CgroupUnavailable(Exception):
    """No memory cgroup can be created here; the message says why."""


def create_memory_cgroup(limit: int, name: str,
                         sources: Sources = SOURCES) -> MemoryCgroup:
    """Make a memory cgroup with a *limit* in bytes (needs root), for
    examples and tests of the OOM killer.  Remove it with ``os.rmdir`` once
    no process is left in it (``procs_file``)."""
    root = sources.cgroup
    name = "/" + name.strip("/")
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        control = read_text(os.path.join(root, "cgroup.subtree_control")) or ""
        if "memory" not in control.split():
            raise CgroupUnavailable("cgroup v2 without the memory controller enabled "
                                    "for child groups")
        cgroup, limit_file = MemoryCgroup(name, os.path.join(root, name[1:]), 2), "memory.max"
    elif os.path.isdir(os.path.join(root, "memory")):
        cgroup = MemoryCgroup(name, os.path.join(root, "memory", name[1:]), 1)
        limit_file = "memory.limit_in_bytes"
    else:
        raise CgroupUnavailable(f"no memory cgroup hierarchy under {root}")
    try:
        os.mkdir(cgroup.directory)
    except OSError as exc:
        raise CgroupUnavailable(f"cannot create {cgroup.directory}: {exc.strerror}") from None
    try:
        with open(os.path.join(cgroup.directory, limit_file), "w") as f:
            f.write(str(limit))
        swap = os.path.join(cgroup.directory, "memory.swap.max")
        if os.path.exists(swap):
            with open(swap, "w") as f:
                f.write("0")
    except OSError as exc:
        os.rmdir(cgroup.directory)
        raise CgroupUnavailable(f"cannot set a memory limit: {exc.strerror}") from None
    return cgroup


def join_cgroup(procs_file: str) -> None:
    """Move the calling process into the cgroup whose ``cgroup.procs`` this is."""
    with open(procs_file, "w") as f:
        f.write(str(os.getpid()))


def _available_memory(sources: Sources) -> Optional[int]:
    text = read_text(f"{sources.proc}/meminfo")
    for line in (text or "").splitlines():
        if line.startswith("MemAvailable:"):
            try:
                return int(line.split()[1]) * 1024
            except (IndexError, ValueError):
                return None
    return None


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
