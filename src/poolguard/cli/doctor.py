"""``python -m poolguard doctor``: what this machine lets poolguard see."""
from __future__ import annotations

import multiprocessing
import os
import platform
import subprocess
import sys
from typing import List, Optional, Tuple

from .. import __version__, diagnosis
from ..diagnosis import KernelLog, MemoryCgroup
from ..diagnosis.cgroup_tools import CgroupUnavailable, create_memory_cgroup

_PDEATHSIG_PROBE = """
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:
    raise SystemExit("prctl(PR_SET_PDEATHSIG) failed")
value = ctypes.c_int()
libc.prctl(2, ctypes.byref(value), 0, 0, 0)
print(value.value)
"""


def _cpu_quota() -> Optional[str]:
    """The CPU limit of our cgroup, as text, or None when there is none."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    root = diagnosis.SOURCES.cgroup
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            base = os.path.join(root, controllers, path.lstrip("/"))
            if not os.path.isdir(base):
                base = os.path.join(root, "cpu", path.lstrip("/"))
            quota = diagnosis.read_int(os.path.join(base, "cpu.cfs_quota_us"))
            period = diagnosis.read_int(os.path.join(base, "cpu.cfs_period_us"))
            if quota and period and quota > 0:
                return f"{quota / period:g} CPUs (cgroup v1 cfs quota)"
        if controllers == "" and line.startswith("0:"):
            text = diagnosis.read_text(os.path.join(root, path.lstrip("/"), "cpu.max"))
            if text and not text.startswith("max"):
                quota_text, period_text = text.split()
                return f"{int(quota_text) / int(period_text):g} CPUs (cgroup v2 cpu.max)"
    return None


Rows = List[Tuple[str, str]]


def report() -> Rows:
    """What this machine lets poolguard see and do, as (what, finding) rows."""
    rows: Rows = []
    rows.append(("poolguard", f"{__version__} on Python {platform.python_version()}, "
                              f"{platform.system()} {platform.release()}"))
    methods = multiprocessing.get_all_start_methods()
    rows.append(("start methods", f"{', '.join(methods)}; default "
                                  f"{multiprocessing.get_start_method(allow_none=True) or methods[0]}"))
    rows += _cpu_rows() + _memory_rows() + _process_rows()
    return rows


def _cpu_rows() -> Rows:
    from loky import cpu_count
    why = [f"{os.cpu_count()} on the machine"]
    if hasattr(os, "sched_getaffinity"):
        why.append(f"{len(os.sched_getaffinity(0))} in the affinity mask")
    quota = _cpu_quota()
    why.append(quota or "no cgroup CPU quota")
    return [("workers by default", f"{cpu_count()} ({'; '.join(why)})")]


def _memory_rows() -> Rows:
    rows: Rows = []
    cgroup = MemoryCgroup.of_pid(os.getpid())
    if cgroup is None:
        rows.append(("memory cgroup", "none found (no OOM-kill counter, no limit to compare)"))
    else:
        limit = cgroup.limit()
        counter = cgroup.oom_kills()
        rows.append(("memory cgroup", f"{cgroup.name} (v{cgroup.version}), limit "
                                      f"{'none' if limit is None else diagnosis.mib(limit)}, "
                                      f"oom_kill counter "
                                      f"{'readable' if counter is not None else 'not available'}"))
    try:
        probe = create_memory_cgroup(64 << 20, f"poolguard-doctor-{os.getpid()}")
        os.rmdir(probe.directory)
        rows.append(("memory cgroups for tests", "can be created (the OOM tests run)"))
    except CgroupUnavailable as exc:
        rows.append(("memory cgroups for tests", f"cannot be created: {exc}"))
    log = KernelLog()
    rows.append(("kernel log", "readable: OOM kills can be confirmed" if log.readable
                 else f"{log.problem}: OOM verdicts rest on cgroup counters and RSS"))
    log.close()
    return rows


def _process_rows() -> Rows:
    rows: Rows = []
    if hasattr(os, "pidfd_open"):
        try:
            os.close(os.pidfd_open(os.getpid()))
            rows.append(("pidfd", "works: a death is seen even if a grandchild holds its pipes"))
        except OSError as exc:
            rows.append(("pidfd", f"unavailable ({exc.strerror}); using process sentinels"))
    else:
        rows.append(("pidfd", "not in this Python/OS; using process sentinels"))
    if not sys.platform.startswith("linux"):
        rows.append(("parent-death signal", "not on this OS; workers watch a pipe instead"))
        return rows
    try:
        out = subprocess.run([sys.executable, "-c", _PDEATHSIG_PROBE], capture_output=True,
                             text=True, timeout=10)
        ok = out.returncode == 0 and out.stdout.strip() == "9"
        rows.append(("parent-death signal", "works (PR_SET_PDEATHSIG)" if ok
                     else f"does not work here: {out.stderr.strip() or out.stdout.strip()}"))
    except (OSError, subprocess.TimeoutExpired) as exc:
        rows.append(("parent-death signal", f"could not be checked: {exc}"))
    return rows


def main() -> int:
    rows = report()
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0
