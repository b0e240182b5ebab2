"""Drop-in replacement: change the import, keep the code.

A worker is killed in the middle of a map; with multiprocessing.Pool this
program would hang for ever.  With poolguard, imap_unordered reports that
item's crash and the other results still arrive.
"""
import os
import signal

import poolguard  # was: import multiprocessing


def work(i):
    if i == 4:   # stands for the OOM killer or a scheduler killing this worker
        os.kill(os.getpid(), signal.SIGKILL)
    return i * i


if __name__ == "__main__":
    results, crashed = [], []
    with poolguard.Pool(2) as pool:       # was: multiprocessing.Pool(2)
        it = pool.imap_unordered(work, [1, 2, 3, 4])
        for _ in range(4):
            try:
                results.append(next(it))
            except poolguard.WorkerCrashedError as exc:
                crashed.append(exc)
    print(f"{len(results)} results, {len(crashed)} crashed: "
          + ", ".join(f"item {e.task.arguments} (signal {e.signal})" for e in crashed))
    print("results:", sorted(results))
