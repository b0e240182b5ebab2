"""Making a memory cgroup with a limit (needs root), for ``doctor``, the
OOM example and the tests of the OOM killer.  The engine never uses it."""
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


def join_cgroup(procs_file: str) -> None:
    """Move the calling process into the cgroup whose ``cgroup.procs`` this is."""
    with open(procs_file, "w") as f:
        f.write(str(os.getpid()))
