"""Awaiting a result of the Pool's calls without blocking the event loop:
the asyncio futures that wait for a thread of ours to deliver it."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Tuple

if TYPE_CHECKING:
    import asyncio


class LoopWaiters:
    """asyncio futures waiting for something a thread of ours will do (a
    result arriving); woken from that thread with ``call_soon_threadsafe``.
    The owner calls both methods under its own lock."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: List[Tuple[Any, Any]] = []

    def new(self) -> "asyncio.Future[None]":
        import asyncio   # only where someone awaits, who has imported it already
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((loop, future))
        return future

    def wake(self) -> None:
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, []
        for loop, future in waiting:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:   # that loop is closed: nobody waits any more
                pass


def _resolve(future: Any) -> None:
    if not future.done():   # not cancelled meanwhile
        future.set_result(None)
