"""concurrent.futures code, unchanged but for the import: one task kills its
worker, its future alone fails, the executor goes on."""
import concurrent.futures as cf
import os
import signal

from poolguard import ProcessPoolExecutor, WorkerCrashedError


def work(i):
    if i == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return i * 10


if __name__ == "__main__":
    with ProcessPoolExecutor(max_workers=2) as executor:
        futures = {executor.submit(work, i): i for i in range(8)}
        for future in cf.as_completed(futures):
            i = futures[future]
            try:
                print(f"task {i}: {future.result()}")
            except WorkerCrashedError as exc:
                print(f"task {i}: worker {exc.pid} killed by {exc.signal}")
        print("afterwards:", executor.submit(work, 9).result())
