"""The verdict on a dead worker: was it an OOM kill?  Confirmed by the
kernel log, likely when its memory cgroup's OOM-kill counter rose, possible
when its last RSS was near its ceiling; ruled out for a crash signal or a
kill the task sent itself; else unknown.  Each comes with its evidence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ..naming import CRASH_SIGNALS, signal_name
from ..wire.slots import SENT_BY_COMMAND
from .cgroups import MemoryCgroup
from .kernel_log import KernelLog
from .proc import SOURCES, Sources, available_memory
from .watch import WorkerWatch

CONFIRMED, LIKELY, POSSIBLE, RULED_OUT, UNKNOWN = (
    "confirmed", "likely", "possible", "ruled out", "unknown")
NEAR_LIMIT = 0.9   # an RSS above this share of the limit counts as "near"


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
    if sent > 0 and signame is not None and signame == signal_name(sent):
        return f"the task sent {signame} to its own process (os.kill)"
    return None


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
        ceiling = available_memory(sources)
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
