"""A user's program touching every public API, checked by ``mypy --strict``
in CI (``.ci/run``): the types a user sees must be as precise as the
standard library's stubs.  Never run; only type-checked."""
from __future__ import annotations

import asyncio
import multiprocessing.pool
from concurrent.futures import Future
from typing import Iterator, List

import poolguard


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def pool_calls(pool: poolguard.Pool) -> int:
    one: int = pool.apply(square, (3,))
    many: List[int] = pool.map(square, range(10), progress=True)
    pairs: List[int] = pool.starmap(add, [(1, 2), (3, 4)])
    lazy: poolguard.IMapIterator[int] = pool.imap(square, range(10))
    unordered: Iterator[int] = pool.imap_unordered(square, range(10), chunksize=2)
    pending: poolguard.AsyncResult[int] = pool.apply_async(square, (2,))
    mapped: poolguard.MapResult[int] = pool.map_async(square, range(3))
    return one + sum(many) + sum(pairs) + sum(lazy) + sum(unordered) + pending.get(1.0) \
        + sum(mapped.get())


def written_for_the_stdlib(pool: multiprocessing.pool.Pool) -> int:
    """Code typed for the standard library's Pool accepts poolguard's."""
    pending: multiprocessing.pool.AsyncResult[int] = pool.apply_async(square, (2,))
    lazy: multiprocessing.pool.IMapIterator[int] = pool.imap(square, range(3))
    return pending.get() + sum(lazy) + sum(pool.map(square, range(3)))


def executor_calls(executor: poolguard.ProcessPoolExecutor) -> int:
    future: Future[int] = executor.submit(square, 3)
    results: Iterator[int] = executor.map(square, range(10), chunksize=None)
    return future.result() + sum(results)


async def awaiting(pool: poolguard.Pool) -> int:
    value: int = await pool.apply_async(square, (3,))
    values: List[int] = await pool.map_async(square, range(3))
    total = 0
    async for x in pool.imap(square, range(3)):
        total += x
    return value + sum(values) + total


def shared_and_reports() -> str:
    executor: poolguard.ProcessPoolExecutor = poolguard.get_executor(2, task_timeout=5.0)
    lazy: Iterator[int] = executor.map(square, iter(range(10)), buffersize=4)
    stats: poolguard.PoolStats = executor.stats()
    slots: List[poolguard.WorkerStats] = list(stats.workers)
    busy: float = stats.busy + sum(w.busy for w in slots)
    peak: int | None = stats.peak_rss
    return f"{sum(lazy)} {busy} {peak} {stats.since(stats).tasks}"


def guards_and_stopping(pool: poolguard.Pool,
                        executor: poolguard.ProcessPoolExecutor) -> str:
    one: int = pool.apply(square, (3,), task_timeout=5.0, retries=2, retry_on=["crash"])
    values: List[int] = pool.map(square, range(4), soft_timeout=1.0, task_timeout=2.0)
    result: poolguard.ApplyResult[int] = pool.apply_async(square, (2,),
                                                          max_worker_memory="1GiB")
    stopped: bool = result.stop() or pool.imap(square, range(3), task_timeout=None).stop()
    careful: poolguard.ExecutorOptions = executor.with_options(task_timeout=5.0)
    future: poolguard.StoppableFuture[int] = careful.submit(square, 4)
    more: Iterator[int] = careful.map(square, range(3))
    stopped = stopped or future.stop() or executor.submit(square, 5).stop()
    try:
        future.result()
    except poolguard.TaskStoppedError as exc:
        return f"{exc.pid} {one} {values} {list(more)} {stopped}"
    except poolguard.SoftTimeoutError as exc:
        return str(exc.limit)
    return ""


def errors(exc: BaseException) -> str:
    if isinstance(exc, poolguard.WorkerCrashedError) and exc.task is not None:
        item: int | None = exc.task.item
        return f"{exc.task.function} {exc.pid} {exc.signal} {exc.oom} {item}"
    if isinstance(exc, poolguard.TaskTimeoutError):
        return str(exc.limit)
    return ""


def main() -> None:
    with poolguard.Pool(2, task_timeout=5.0, retries=1) as pool:
        print(pool_calls(pool), asyncio.run(awaiting(pool)), written_for_the_stdlib(pool))
    with poolguard.Pool(cluster="tcp://scheduler:8786") as on_a_cluster:
        print(pool_calls(on_a_cluster))
    with poolguard.ProcessPoolExecutor(2, max_worker_memory="1GiB") as executor:
        print(executor_calls(executor))
        with poolguard.Pool(2, soft_timeout=1.0, task_timeout=5.0) as pool:
            print(guards_and_stopping(pool, executor))
    print(shared_and_reports())
