"""A pipeline step that dies half-way for lack of memory, then resumes.

The first run caps each worker at 200 MiB; items from 40 on need 300 MiB,
so the step fails there (WorkerMemoryError; a kernel OOM kill goes the same
way).  Every result that finished is already in the store.  The second run,
with more memory, runs only the items the first one did not finish.

    python examples/resume.py [STORE]      (default: a new temporary directory)
"""
import os
import sys
import tempfile

import poolguard


def process(i, log):
    with open(log, "a") as f:        # to count the calls; one short line each
        f.write(f"{i}\n")
    if i >= 40:
        block = bytearray(300 << 20)
        block[::4096] = b"\x01" * len(block[::4096])   # touch every page
    return i * i


def calls(log):
    with open(log) as f:
        return len(f.read().split())


def run(store, log, memory):
    step = poolguard.Checkpoint(store, step="squares")
    with poolguard.Pool(2, max_worker_memory=memory) as pool:
        return pool.starmap(process, [(i, log) for i in range(80)], chunksize=1,
                            checkpoint=step)


if __name__ == "__main__":
    store = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="poolguard-resume-")
    log = os.path.join(store, "calls.log")
    open(log, "w").close()
    try:
        run(store, log, "200MiB")
    except poolguard.WorkerMemoryError as exc:
        print(f"first run failed: {exc.summary()}")
    first = calls(log)
    stored = sum(info.entries for info in poolguard.checkpoint.steps(store))
    print(f"first run: {first} calls, {stored} results stored")
    open(log, "w").close()
    results = run(store, log, "1GiB")
    assert results == [i * i for i in range(80)]
    print(f"second run: {calls(log)} calls (the {80 - stored} missing items), "
          f"80 results, all right")
    print(f"store: {store}  (python -m poolguard checkpoint {store})")
