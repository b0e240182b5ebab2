"""A task that grows past a 300 MiB memory cgroup: the kernel OOM killer ends
its worker, and the error says so, with the cgroup's limit and the worker's
peak RSS.  Needs root to create the cgroup (it says why when it cannot)."""
import os
import sys
import time

import poolguard
from poolguard.diagnosis.cgroup_tools import CgroupUnavailable, create_memory_cgroup, join_cgroup


def grow():
    blocks = []
    while True:                      # 16 MiB every 50 ms, touched so it counts
        blocks.append(b"\x01" * (16 << 20))
        time.sleep(0.05)


if __name__ == "__main__":
    try:
        cgroup = create_memory_cgroup(300 << 20, f"poolguard-example-{os.getpid()}")
    except CgroupUnavailable as exc:
        sys.exit(f"cannot run this example here: {exc}")
    try:
        # Each worker joins the cgroup as it starts, as a job's processes would.
        with poolguard.Pool(1, initializer=join_cgroup,
                            initargs=(cgroup.procs_file,)) as pool:
            try:
                pool.apply(grow)
            except poolguard.WorkerCrashedError as exc:
                print(exc)
                print(f"\noom={exc.oom} verdict={exc.oom_verdict} "
                      f"peak_rss={exc.peak_rss / 2**20:.0f} MiB")
    finally:
        while open(cgroup.procs_file).read().split():
            time.sleep(0.01)
        os.rmdir(cgroup.directory)
