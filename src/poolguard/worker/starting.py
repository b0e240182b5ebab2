"""What a start of a worker may fail with, said alike by the pool's
launchers and by the zygote that forks workers on their behalf."""
from __future__ import annotations

import errno as codes
from typing import Any

from .. import diagnosis


class StartError(Exception):
    """A worker could not be started (the message says why)."""


def describe_start_error(exc: BaseException) -> str:
    """Why a worker could not be started, naming the resource when one ran out."""
    text = f"{type(exc).__name__}: {exc}"
    errno = getattr(exc, "errno", None)
    if errno is None:
        return text
    what = {codes.EMFILE: "out of file descriptors (RLIMIT_NOFILE)",
            codes.ENFILE: "the system is out of file descriptors",
            codes.EAGAIN: "fork() failed (EAGAIN): no more processes allowed (RLIMIT_NPROC "
                          "for a user who is not root, or a cgroup's pids.max) or out of "
                          "kernel memory",
            codes.ENOMEM: "fork() failed: out of memory"}.get(errno)
    if errno == codes.EAGAIN:
        full = diagnosis.pids_limit_reached(diagnosis.SOURCES)
        if full is not None:   # the cause, read where the fork failed
            what = f"fork() failed (EAGAIN): no more processes allowed in {full}"
    return f"{what}: {text}" if what else text


def started_pid(process: Any) -> int:
    """The pid of *process*, whose ``start()`` has returned; StartError when
    it started no process of ours.  A stand-in for ``Process`` (a test's
    mock) starts nothing, and its pid converts to 1: signalling that would
    hit init's process group, the whole machine."""
    pid = process.pid
    if type(pid) is not int or pid <= 1:
        raise StartError(f"{type(process).__name__}.start() started no process (pid {pid!r})")
    return pid
