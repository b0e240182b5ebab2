"""asyncio: awaiting a pool's results on a real event loop, never blocking it
(a ticker coroutine must keep running while a result is awaited)."""
from __future__ import annotations

import asyncio
import functools

import pytest

import poolguard
import tasks
from conftest import PROMPT


async def _ticking(awaitable, tick: float = 0.005):
    """Await *awaitable* while a ticker counts; the count proves the loop ran."""
    ticks = 0
    done = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(tick)
            ticks += 1

    task = asyncio.ensure_future(ticker())
    try:
        return await awaitable, ticks
    finally:
        done.set()
        await task


def test_await_apply_async_and_map_async(method):
    async def main(pool):
        value, ticks = await _ticking(pool.apply_async(tasks.sleep_then, (0.3, "slept")))
        assert value == "slept" and ticks >= 5   # the loop ran while we waited
        assert await pool.map_async(tasks.square, range(10)) == [i * i for i in range(10)]
        ready = pool.apply_async(tasks.square, (7,))
        ready.wait(PROMPT)
        assert await ready == 49   # already finished: no waiting at all
        many = await asyncio.gather(*(pool.apply_async(tasks.add, (i, 1)) for i in range(50)))
        assert many == list(range(1, 51))

    with poolguard.Pool(2, context=method) as pool:
        asyncio.run(main(pool))


def test_a_sigkill_surfaces_in_the_awaiting_coroutine(method):
    async def main(pool):
        doomed = pool.apply_async(tasks.sleep_then_die, (0.2,))
        with pytest.raises(poolguard.WorkerCrashedError) as info:
            await asyncio.wait_for(_ticking(doomed), PROMPT + 0.5)
        assert info.value.signal == "SIGKILL"
        assert info.value.task.function == "sleep_then_die"
        with pytest.raises(ZeroDivisionError):
            await pool.apply_async(divmod, (1, 0))
        assert await pool.apply_async(tasks.square, (3,)) == 9   # the pool goes on

    with poolguard.Pool(2, context=method) as pool:
        asyncio.run(main(pool))


@pytest.mark.parametrize("call", ["imap", "imap_unordered"])
def test_async_for_over_imap_with_a_crash_in_the_middle(call):
    async def main(pool):
        seen, errors = [], []
        results = getattr(pool, call)(functools.partial(tasks.die_at, at=5), range(10))
        iterator = results.__aiter__()
        while True:
            try:
                seen.append(await iterator.__anext__())
            except StopAsyncIteration:
                break
            except poolguard.WorkerCrashedError as exc:   # raised at its place; then on
                errors.append(exc.task.item)
        return seen, errors

    with poolguard.Pool(2) as pool:
        seen, errors = asyncio.run(main(pool))
    assert errors == [5]
    expected = [x * 2 for x in range(10) if x != 5]
    assert (seen if call == "imap" else sorted(seen)) == expected


@pytest.mark.parametrize("call", ["imap", "imap_unordered"])
def test_async_for_goes_on_after_the_caller_caught_a_failed_item(call):
    """As with a synchronous imap: the failed item raises at its place, the
    caller catches it, and the same iterator gives the rest, whether taken
    again with ``async for`` or with ``anext()``."""
    async def main(pool):
        results = getattr(pool, call)(functools.partial(tasks.die_at, at=2), range(8))
        seen, errors = [], []
        while True:
            try:
                async for value in results:
                    seen.append(value)
                break
            except poolguard.WorkerCrashedError as exc:
                errors.append(exc.task.item)
        raising = getattr(pool, call)(functools.partial(tasks.raise_at, at=0), range(4))
        rest = []
        while True:
            try:
                rest.append(await anext(raising))
            except StopAsyncIteration:
                break
            except ValueError:
                rest.append("raised")
        return seen, errors, rest

    with poolguard.Pool(2) as pool:
        seen, errors, rest = asyncio.run(main(pool))
    assert errors == [2] and sorted(map(str, rest)) == ["1", "2", "3", "raised"]
    expected = [x * 2 for x in range(8) if x != 2]
    assert (seen if call == "imap" else sorted(seen)) == expected


def test_async_for_over_a_lazy_iterable():
    async def main(pool):
        return [x async for x in pool.imap(tasks.square, (i for i in range(300)), 7)]

    with poolguard.Pool(2) as pool:
        assert asyncio.run(main(pool)) == [i * i for i in range(300)]


def test_a_cancelled_await_leaves_the_task_and_the_pool_alone():
    async def main(pool):
        slow = pool.apply_async(tasks.sleep_then, (0.5, "late"))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow, 0.05)   # cancels our waiter, not the task
        assert await slow == "late"

    with poolguard.Pool(1) as pool:
        asyncio.run(main(pool))


def test_the_executor_with_run_in_executor_and_wrap_future(method):
    async def main(executor):
        loop = asyncio.get_running_loop()
        value, ticks = await _ticking(loop.run_in_executor(executor, tasks.sleep_then, 0.3, 5))
        assert value == 5 and ticks >= 5
        assert await asyncio.wrap_future(executor.submit(tasks.add, 2, 3)) == 5
        with pytest.raises(poolguard.WorkerCrashedError) as info:
            await loop.run_in_executor(executor, tasks.sleep_then_die, 0.1)
        assert info.value.task.function == "sleep_then_die"
        assert await loop.run_in_executor(executor, tasks.square, 4) == 16

    with poolguard.ProcessPoolExecutor(2, mp_context=method) as executor:
        asyncio.run(main(executor))
