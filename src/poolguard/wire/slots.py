"""Each worker's slot: four int64 words in shared memory.

Before each task the worker writes the task id into its own slot, and before
each item of a chunk the item's index (and, with a task_timeout, its start
time).  The parent reads the slot after the worker's death, so it learns
exactly which item was running without any lock a dying worker could hold.
The fourth word says whether the task signalled its own process (worker/loop.py's
audit hook), so that such a death is not blamed on the outside.
"""
from __future__ import annotations

import mmap
import os
import struct
import tempfile
from enum import IntEnum
from multiprocessing import reduction
from typing import Any, NamedTuple, Optional, Tuple


class TaskWord(IntEnum):
    """The first word of a slot, when no task runs."""
    IDLE = -1
    INITIALIZING = -2


class ItemWord(IntEnum):
    """The second word of a slot, outside the item loop."""
    DECODING = -1      # the task frame is being unpickled
    SENDING = -2       # the result is being pickled and written


IDLE, INITIALIZING = TaskWord.IDLE, TaskWord.INITIALIZING
DECODING, SENDING = ItemWord.DECODING, ItemWord.SENDING
SENT_BY_COMMAND = -1   # fourth word: a command the task started named our pid with "kill"
# The words of a slot, as the worker writes them (a slot is written in place:
# a memoryview of four int64).  Slot below names them for reading.
TASK_WORD, ITEM_WORD, START_WORD, SENT_WORD = 0, 1, 2, 3

_SLOT = struct.Struct("qqqq")
# Slots sit this many bytes apart, so that no two workers write to one cache
# line (two 64-byte lines: some CPUs fetch lines in pairs).  Packed, two
# workers writing their item index every item slowed a map of tiny tasks by
# a third.
_STRIDE = 128


class Slot(NamedTuple):
    task_id: int       # a unit's id, or a TaskWord
    item: int          # the running item's offset in the unit, or an ItemWord
    started: int       # CLOCK_MONOTONIC ns when the unit (or, timed, the item) started
    sent: int = 0      # signal the task sent its own process, SENT_BY_COMMAND, or 0


class SharedSlots:
    """One [task id, item, start time, signal sent] row of int64 per worker slot, in
    shared memory the pool owns and frees (a memfd; passed to spawned workers
    as a descriptor).  The start time (CLOCK_MONOTONIC ns) is the unit's, or
    each item's when the pool has a task_timeout."""

    def __init__(self, count: int, fd: Optional[int] = None):
        self.size = _STRIDE * count
        if fd is None:
            fd = _anonymous_file(self.size)
        self.fd = fd
        self.map = mmap.mmap(fd, self.size)

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_attach, (reduction.DupFd(self.fd), self.size // _STRIDE))

    def read(self, index: int) -> "Slot":
        return Slot._make(_SLOT.unpack_from(self.map, _STRIDE * index))

    def write(self, index: int, task_id: int, item: int) -> None:
        _SLOT.pack_into(self.map, _STRIDE * index, task_id, item, 0, 0)

    def view(self, index: int) -> memoryview:
        """The worker's fast handle on its own slot."""
        start = _STRIDE * index
        return memoryview(self.map)[start:start + _SLOT.size].cast("q")

    def duplicate(self) -> "SharedSlots":
        """The same slots through a descriptor of its own, closed apart."""
        return SharedSlots(self.size // _STRIDE, os.dup(self.fd))

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def _attach(dup_fd: Any, count: int) -> SharedSlots:
    return SharedSlots(count, dup_fd.detach())


def _anonymous_file(size: int) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("poolguard-slots", os.MFD_CLOEXEC)
    else:
        fd, path = tempfile.mkstemp(prefix="poolguard-slots-")
        os.unlink(path)
    os.ftruncate(fd, size)
    return fd
