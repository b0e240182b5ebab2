"""The soak's task functions (tests/soak.py): what a worker runs.  A module
of their own, importable by workers started by spawn and forkserver.

A task is described by a tuple ``(kind, call, index, markers, size, delay,
memory_cap)``:
``task(spec)`` for ``map``-like calls and ``task_star(*spec)`` for the
others.  What each kind does is what the soak's model (soak_model.py)
expects of it."""
from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from typing import Any

RETURN = "return"            # returns value_for(call, index, size)
RAISE = "raise"              # raises SoakError(call, index)
KILL = "kill"                # SIGKILLs its own process
EXIT = "exit"                # os._exit(3)
SEGV = "segv"                # reads address 0
TIMEOUT = "timeout"          # sleeps far past task_timeout
MEMORY = "memory"            # grows past max_worker_memory, then holds
UNPICKLABLE = "unpicklable"  # returns an object that does not pickle
FIRST = "first"              # SIGKILLs its process on its first attempt only

OVERSLEEP = 20.0   # seconds a TIMEOUT or MEMORY task lasts when no guard stops it
BLOCK = 16 << 20   # bytes a MEMORY task adds at a time


class SoakError(Exception):
    """What a RAISE task raises: its args name the call and the item."""


class Unpicklable:
    """A result holding a lock: it cannot be pickled."""

    def __init__(self, call: int, index: int) -> None:
        self.tag = (call, index)
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Unpicklable{self.tag}"


def value_for(call: int, index: int, size: int) -> Any:
    """The value a RETURN task gives (and a FIRST task once retried)."""
    return (call, index, b"v" * size)


def marker_path(markers: str, call: int, index: int) -> str:
    return os.path.join(markers, f"{call}-{index}")


def task(spec: tuple[Any, ...]) -> Any:
    return task_star(*spec)


def task_star(kind: str, call: int, index: int, markers: str, size: int, delay: float,
              memory_cap: int) -> Any:
    if delay:
        time.sleep(delay)
    if kind == RAISE:
        raise SoakError(call, index)
    if kind == KILL:
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == EXIT:
        os._exit(3)
    elif kind == SEGV:
        ctypes.string_at(0)
    elif kind == TIMEOUT:
        time.sleep(OVERSLEEP)
    elif kind == MEMORY:
        _grow(memory_cap)
    elif kind == UNPICKLABLE:
        return Unpicklable(call, index)
    elif kind == FIRST:
        try:   # the marker says the first attempt happened
            os.close(os.open(marker_path(markers, call, index),
                             os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    if kind in (KILL, SEGV):
        time.sleep(OVERSLEEP)   # the signal may take a moment to land
    return value_for(call, index, size)


def _grow(cap: int) -> None:
    """Past the cap (2.5 times it at most), then hold the memory: the guard
    must stop the task; if it does not, the task returns after OVERSLEEP."""
    held = []
    while len(held) * BLOCK < cap * 5 // 2:
        held.append(b"m" * BLOCK)   # written: resident, unlike a fresh bytearray
    time.sleep(OVERSLEEP)
