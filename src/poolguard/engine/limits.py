"""How many descriptors a pool holds, and room for them under RLIMIT_NOFILE.

The pool's process holds, per worker: its task pipe's write end, its result
pipe's and crash pipe's read ends, its pidfd, and (once it has been sampled)
its open ``/proc/PID/statm``.  Workers started by ``multiprocessing`` (spawn,
forkserver) add two of ``multiprocessing``'s own (the process sentinel and
the end it keeps of the pipe that sent the process).  While the zygote
forks the first workers (fork), the pool also holds the child's three pipe
ends of each until the zygote has them.  A shell's usual soft limit of 1,024
is hit at about 150 workers; the hard limit is usually far above.
"""
from __future__ import annotations

import os
from typing import Optional

FDS_PER_WORKER = {"zygote": 5, "multiprocessing": 7}
STARTING_FDS = 3          # the child's pipe ends, held while a worker is being forked
SPARE_FDS = 64            # the zygote's sockets, the wake pipe, the user's own files


def descriptors_needed(workers: int, launcher: str) -> int:
    """Descriptors a pool of *workers* adds to its process, at most."""
    return workers * (FDS_PER_WORKER[launcher] + STARTING_FDS) + SPARE_FDS


def make_room(workers: int, launcher: str) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard one if a pool of *workers*
    would not fit under it (with the descriptors open now).  Where the hard
    limit is too low too, starts past it fail with a StartError that names
    RLIMIT_NOFILE."""
    try:
        import resource
    except ImportError:   # not a POSIX system
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = descriptors_needed(workers, launcher) + _open_now()
    if soft == resource.RLIM_INFINITY or soft >= needed or soft == hard:
        return
    target = hard
    ceiling = _kernel_ceiling()
    if hard == resource.RLIM_INFINITY or (ceiling is not None and hard > ceiling):
        target = ceiling if ceiling is not None else max(soft, needed)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass   # left as it was: the starts that do not fit say so


def _open_now() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return SPARE_FDS


def _kernel_ceiling() -> Optional[int]:
    """fs.nr_open: no descriptor limit may be set above it."""
    try:
        with open("/proc/sys/fs/nr_open", "rb") as file:
            return int(file.read())
    except (OSError, ValueError):
        return None
