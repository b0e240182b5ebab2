"""One small adapter per pool, so every workload runs the same code on each.

An adapter starts a pool with N workers and offers ``map`` (a list back),
``submit`` (a handle with ``result(timeout)``), ``pids`` and ``close``.  A
peer that is not installed is skipped with a line saying so.
"""
from __future__ import annotations

import multiprocessing
import os
from typing import Any, Callable, Dict, List, Optional

import psutil


class Adapter:
    name = ""
    default_chunk_is_one = False     # map's default chunk size is 1 (slow on tiny tasks)
    survives_crash = True            # the pool stays usable after a worker dies

    def __init__(self, workers: int):
        self.workers = workers

    def map(self, fn: Callable, items: List[Any], chunksize: Optional[int] = None) -> list:
        raise NotImplementedError

    def submit(self, fn: Callable, *args: Any):
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def worker_pids(self) -> List[int]:
        """Pids of the pool's workers (children of ours, less multiprocessing's helpers)."""
        helpers = _helper_pids()
        return [c.pid for c in psutil.Process().children(recursive=True)
                if c.pid not in helpers]

    def close_quietly(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _helper_pids() -> set:
    from multiprocessing import forkserver, resource_tracker
    pids = {getattr(forkserver._forkserver, "_forkserver_pid", None),
            getattr(resource_tracker._resource_tracker, "_pid", None)}
    return {p for p in pids if p}


class _Handle:
    """A uniform ``result(timeout)`` over AsyncResult and Future."""

    def __init__(self, obj, getter: str):
        self.obj, self.getter = obj, getter

    def result(self, timeout: Optional[float] = None):
        return getattr(self.obj, self.getter)(timeout)


class Poolguard(Adapter):
    name = "poolguard"

    def __init__(self, workers: int, **options):
        super().__init__(workers)
        import poolguard
        self.pool = poolguard.Pool(workers, **options)

    def map(self, fn, items, chunksize=None):
        return self.pool.map(fn, items, chunksize)

    def submit(self, fn, *args):
        return _Handle(self.pool.apply_async(fn, args), "get")

    def worker_pids(self):
        return self.pool.pids

    def close(self):
        self.pool.terminate()


class PoolguardExecutor(Adapter):
    name = "poolguard executor"

    def __init__(self, workers: int):
        super().__init__(workers)
        import poolguard
        self.pool = poolguard.ProcessPoolExecutor(workers)

    def map(self, fn, items, chunksize=None):
        # No chunksize: batches sized from measured task times.
        return list(self.pool.map(fn, items, chunksize=chunksize))

    def submit(self, fn, *args):
        return _Handle(self.pool.submit(fn, *args), "result")

    def worker_pids(self):
        return self.pool.pids

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


class Multiprocessing(Adapter):
    name = "multiprocessing.Pool"
    survives_crash = False   # hangs: the lost task is never failed

    def __init__(self, workers: int):
        super().__init__(workers)
        self.pool = multiprocessing.Pool(workers)

    def map(self, fn, items, chunksize=None):
        return self.pool.map(fn, items, chunksize)

    def submit(self, fn, *args):
        return _Handle(self.pool.apply_async(fn, args), "get")

    def close(self):
        self.pool.terminate()

    def worker_pids(self):
        return [p.pid for p in self.pool._pool]


class Billiard(Multiprocessing):
    name = "billiard"
    survives_crash = True

    def __init__(self, workers: int):
        Adapter.__init__(self, workers)
        import billiard
        self.pool = billiard.Pool(workers)


class Executor(Adapter):
    name = "ProcessPoolExecutor"
    default_chunk_is_one = True
    survives_crash = False   # BrokenProcessPool: a new executor is needed

    def __init__(self, workers: int):
        super().__init__(workers)
        from concurrent.futures import ProcessPoolExecutor
        self.pool = ProcessPoolExecutor(workers)

    def map(self, fn, items, chunksize=None):
        return list(self.pool.map(fn, items, chunksize=chunksize or 1))

    def submit(self, fn, *args):
        return _Handle(self.pool.submit(fn, *args), "result")

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)

    def worker_pids(self):
        return list(self.pool._processes or ())


class Loky(Executor):
    name = "loky"

    def __init__(self, workers: int):
        Adapter.__init__(self, workers)
        from loky import ProcessPoolExecutor
        self.pool = ProcessPoolExecutor(workers)

    def close(self):
        self.pool.shutdown(wait=True, kill_workers=True)


class Pebble(Adapter):
    name = "pebble"
    default_chunk_is_one = True

    def __init__(self, workers: int):
        super().__init__(workers)
        import pebble
        self.pool = pebble.ProcessPool(max_workers=workers)

    def map(self, fn, items, chunksize=None):
        return list(self.pool.map(fn, items, chunksize=chunksize or 1).result())

    def submit(self, fn, *args):
        return _Handle(self.pool.schedule(fn, args), "result")

    def close(self):
        self.pool.stop()
        self.pool.join()


class Mpire(Adapter):
    name = "mpire"

    def __init__(self, workers: int):
        super().__init__(workers)
        import mpire
        self.pool = mpire.WorkerPool(n_jobs=workers)
        self.pool.__enter__()

    def map(self, fn, items, chunksize=None):
        # mpire unpacks tuple items as arguments; wrap so every pool sees one argument.
        return self.pool.map(fn, [(item,) for item in items], chunk_size=chunksize,
                             progress_bar=False)

    def submit(self, fn, *args):
        return _Handle(self.pool.apply_async(fn, args), "get")

    def close(self):
        self.pool.terminate()


ALL = [Poolguard, PoolguardExecutor, Multiprocessing, Executor, Loky, Pebble, Billiard, Mpire]
_MODULES = {"loky": "loky", "pebble": "pebble", "billiard": "billiard", "mpire": "mpire"}


def available(names: Optional[List[str]] = None) -> Dict[str, type]:
    """The adapters whose package is installed; prints a line for each missing one."""
    import importlib.util
    found = {}
    for cls in ALL:
        if names and cls.name not in names:
            continue
        module = _MODULES.get(cls.name)
        if module and importlib.util.find_spec(module) is None:
            print(f"skipped {cls.name}: not installed (pip install --group bench)")
            continue
        found[cls.name] = cls
    return found


def version_of(name: str) -> str:
    import importlib.metadata
    import platform
    package = {"poolguard": "poolguard", "poolguard executor": "poolguard", "loky": "loky", "pebble": "pebble",
               "billiard": "billiard", "mpire": "mpire"}.get(name)
    if package is None:
        return f"Python {platform.python_version()}"
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def cpu_info() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs{', ' + model if model else ''}"
