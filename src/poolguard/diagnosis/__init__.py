"""Why did a worker die?  Evidence gathered while it lived and read at its death.

The engine calls three things here:

* :class:`KernelLog` (kernel_log.py), one per pool: new kernel log records,
  read without blocking, to find the OOM killer's record of a pid;
* :class:`WorkerWatch` (watch.py), one per worker: RSS samples and the
  worker's memory cgroup (cgroups.py) with its OOM-kill counter, recorded
  while the worker is alive (``/proc/PID`` is gone after its death);
* :func:`diagnose` (verdict.py), at a death: a verdict on OOM with its evidence.

proc.py reads /proc for the engine and the launchers (a process's state,
its RSS, a zombie's exit status).  Not imported here: cgroup_tools.py
makes a memory cgroup with a limit, for ``doctor``, the OOM example and the
tests, and a pids cgroup for the tests of fork failing.

Every source may be missing or unreadable (no cgroup, no permission on
``/dev/kmsg``, a container, another OS).  Then the verdict degrades to
"unknown"; nothing here raises or blocks.  The engine reads ``SOURCES``
from this package (``diagnosis.SOURCES``) at each use: a test replaces it here.
"""
from .cgroups import MemoryCgroup, pids_limit_reached
from .kernel_log import KernelLog
from .proc import (SOURCES, Sources, process_state, read_int, read_text, rss_of,
                   zombie_exit_status)
from .verdict import (CONFIRMED, LIKELY, NEAR_LIMIT, POSSIBLE, RULED_OUT,
                      UNKNOWN, Diagnosis, diagnose, mib)
from .watch import WorkerWatch

__all__ = ["MemoryCgroup", "pids_limit_reached",
           "KernelLog", "SOURCES", "Sources", "process_state", "read_int", "read_text",
           "rss_of", "zombie_exit_status", "CONFIRMED", "LIKELY",
           "NEAR_LIMIT", "POSSIBLE", "RULED_OUT", "UNKNOWN", "Diagnosis", "diagnose", "mib",
           "WorkerWatch"]
