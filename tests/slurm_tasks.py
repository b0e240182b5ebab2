"""Tasks for the tests on SLURM (tests/features/test_slurm.py), in a light module:
the dask workers in the SLURM jobs import it, and so do the task processes
(importing the test module would bring pytest along)."""
from __future__ import annotations

import os
import signal
import time


def inc(x):
    return x + 1


def square(x):
    return x * x


def die_at(x, bad=7, folder=None):
    """SIGKILL its own process on item *bad*, first writing the time into
    *folder* (for the test that measures death to error)."""
    if x == bad:
        if folder:
            with open(os.path.join(folder, "death.tmp"), "w") as f:
                f.write(repr(time.time()))
            os.replace(os.path.join(folder, "death.tmp"), os.path.join(folder, "death"))
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def die_once(folder, x):
    """SIGKILL its own process the first time it runs for x == 3."""
    marker = os.path.join(folder, f"died-{x}")
    if x == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def hog(mib):
    chunks = []
    for _ in range(mib // 16):
        chunks.append(bytearray(16 * 2**20))
        time.sleep(0.002)
    return len(chunks)


def nap(seconds, x=None):
    time.sleep(seconds)
    return x


def where(_):
    """The SLURM job and the process a task ran in."""
    return os.environ.get("SLURM_JOB_ID"), os.getpid()


def tick(x):
    time.sleep(0.5)
    return x
