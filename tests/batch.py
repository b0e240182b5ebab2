"""The one-node SLURM that tools/slurm.sh starts, as the tests see it."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Iterable, Optional, Set

TESTS = os.path.dirname(os.path.abspath(__file__))
START = "`tools/slurm.sh up DIR` (as root), then export the SLURM_CONF it prints"
CLUSTER_NAME = "poolguard"   # what tools/slurm.sh names its cluster


def _run(*command: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def slurm_unavailable() -> Optional[str]:
    """Why the tests cannot use a SLURM here, or None.  Only the cluster
    tools/slurm.sh starts is used: the tests submit and cancel jobs."""
    if shutil.which("sbatch") is None:
        if os.geteuid() != 0:
            return "SLURM is not installed, and installing it (tools/slurm.sh) needs root"
        if shutil.which("apt-get") is None:
            return "SLURM is not installed, and there is no apt-get to install it"
        return f"SLURM is not installed: {START}"
    conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    if not os.path.exists(conf):
        return f"SLURM is installed but not configured ({conf} does not exist): {START}"
    try:
        config = _run("scontrol", "show", "config")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"SLURM does not answer ({exc}): {START}"
    if config.returncode != 0:
        last = (config.stderr.strip().splitlines() or ["no answer"])[-1]
        return f"SLURM is not up ({last[:200]}): {START}"
    names = [line.split("=", 1)[1].strip() for line in config.stdout.splitlines()
             if line.startswith("ClusterName")]
    if names != [CLUSTER_NAME]:
        return (f"the SLURM reached is {names}, not the test cluster of tools/slurm.sh: "
                f"{START}")
    return None


def queued(jobs: Optional[Iterable[str]] = None) -> Set[str]:
    """Ids of the jobs in the queue (pending, running or completing), of
    *jobs* only if given."""
    out = _run("squeue", "-h", "-o", "%A").stdout.split()
    found = set(out)
    return found if jobs is None else found & set(jobs)


def wait_gone(jobs: Iterable[str], timeout: float) -> None:
    jobs = set(jobs)
    deadline = time.monotonic() + timeout
    while queued(jobs):
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs {sorted(queued(jobs))} still in squeue after "
                                 f"{timeout} s")
        time.sleep(0.2)
