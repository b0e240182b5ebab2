"""Making a memory cgroup with a limit (needs root), for ``doctor``, the
OOM example and the tests of the OOM killer; and a pids cgroup, for the
tests of fork() failing with EAGAIN (root is exempt from RLIMIT_NPROC, not
from a cgroup's pids.max).  The engine never uses them."""
from __future__ import annotations

import os

from .cgroups import MemoryCgroup
from .proc import SOURCES, Sources, read_text


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


def create_pids_cgroup(name: str, sources: Sources = SOURCES) -> str:
    """Make a pids cgroup under the calling process's own (needs root); its
    directory, where ``pids.max`` and ``cgroup.procs`` are.  Remove it with
    ``os.rmdir`` once no process is left in it."""
    own = read_text(f"{sources.proc}/self/cgroup") or ""
    parent = None
    for line in own.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and "pids" in parts[1].split(","):   # v1: its own hierarchy
            parent = os.path.join(sources.cgroup, "pids", parts[2].lstrip("/"))
            break
        if len(parts) == 3 and parts[:2] == ["0", ""]:
            v2 = os.path.join(sources.cgroup, parts[2].lstrip("/"))
            control = read_text(os.path.join(v2, "cgroup.subtree_control"))
            if control is not None and "pids" in control.split():
                parent = v2
    if parent is None:
        raise CgroupUnavailable("no pids controller for child groups of this process's "
                                "cgroup (cgroup v1 pids, or v2 with pids in its "
                                "cgroup.subtree_control)")
    directory = os.path.join(parent.rstrip("/"), name.strip("/"))
    try:
        os.mkdir(directory)
    except OSError as exc:
        raise CgroupUnavailable(f"cannot create {directory}: {exc.strerror}") from None
    if not os.path.exists(os.path.join(directory, "pids.max")):
        os.rmdir(directory)
        raise CgroupUnavailable(f"{directory} has no pids.max")
    return directory


def join_cgroup(procs_file: str) -> None:
    """Move the calling process into the cgroup whose ``cgroup.procs`` this is."""
    with open(procs_file, "w") as f:
        f.write(str(os.getpid()))
