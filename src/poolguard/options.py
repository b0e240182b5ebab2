"""Validation of the constructor options both fronts share."""
from __future__ import annotations

import multiprocessing
import re
from dataclasses import dataclass
from typing import (TYPE_CHECKING, Any, Callable, Dict, FrozenSet, Iterable, Mapping, Optional,
                    TypedDict, Union)

if TYPE_CHECKING:
    from .checkpoint import CheckpointArg


def checkpointed(func: Callable[..., Any], checkpoint: "CheckpointArg") -> Callable[..., Any]:
    """*func* wrapped for ``checkpoint=``, or itself.  The checkpoint module
    (hashing, HMAC keys, ``inspect``) is imported only by programs that use it."""
    if checkpoint is None:
        return func
    from . import checkpoint as store
    return store.checkpointed(func, checkpoint)


def resolve_context(context: Any) -> multiprocessing.context.BaseContext:
    """A context object from ``None`` (the default), a start method name, or a context."""
    if context is None:
        return multiprocessing.get_context()
    if isinstance(context, str):
        return multiprocessing.get_context(context)
    if not hasattr(context, "Process") or not hasattr(context, "get_start_method"):
        raise TypeError(f"context must be a multiprocessing context or a start method "
                        f"name, not {type(context).__name__}")
    chosen: multiprocessing.context.BaseContext = context
    return chosen


def resolve_workers(n: Optional[int], what: str) -> int:
    if n is None:
        from loky import cpu_count  # counts what cgroups and affinity allow
        return max(1, int(cpu_count()))
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{what} must be an int or None, not {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{what} must be at least 1, not {n}")
    return n


def check_max_tasks(n: Optional[int], what: str) -> Optional[int]:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what} must be a positive int or None, not {n!r}")
    return n


def check_initializer(initializer: Any) -> None:
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")


RETRY_KINDS = ("crash", "oom", "timeout", "memory")
_SIZE = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30,
         "t": 2**40, "tib": 2**40}


@dataclass(frozen=True)
class Guards:
    """The keyword-only guard options of both fronts, checked."""

    task_timeout: Optional[float] = None      # seconds an item may run
    max_worker_memory: Optional[int] = None   # bytes of RSS a worker may use
    retries: int = 0                          # re-runs of a task whose worker died
    retry_on: FrozenSet[str] = frozenset(RETRY_KINDS)
    soft_timeout: Optional[float] = None      # seconds before SoftTimeoutError in the task


class CallGuards(TypedDict, total=False):
    """The guards one call may set for itself (keyword-only arguments of the
    Pool's methods and of ``ProcessPoolExecutor.with_options``).  A key
    given replaces the pool's value for that call only; ``None`` turns that
    guard off for it."""

    task_timeout: Optional[float]
    soft_timeout: Optional[float]
    max_worker_memory: Union[int, str, None]
    retries: int
    retry_on: Optional[Iterable[str]]


def parse_size(value: Union[int, str]) -> int:
    """Bytes from an int or a string such as "2GiB", "500MB", "1.5G".
    KB/MB/GB are powers of 1000; K/M/G and KiB/MiB/GiB powers of 1024."""
    if isinstance(value, bool):
        raise TypeError("a memory size must be an int or a string like '2GiB', not bool")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        if not match or match.group(2).lower() not in _SIZE:
            raise ValueError(f"cannot read {value!r} as a memory size; "
                             "write e.g. 2147483648, '2GiB' or '500MB'")
        size = int(float(match.group(1)) * _SIZE[match.group(2).lower()])
    else:
        raise TypeError(f"a memory size must be an int or a string like '2GiB', "
                        f"not {type(value).__name__}")
    if size <= 0:
        raise ValueError(f"a memory size must be positive, not {value!r}")
    return size


def _seconds(value: Optional[float], name: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, "
                        f"not {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive, finite number of seconds, "
                         f"not {value!r}")
    return float(value)


def make_guards(task_timeout: Optional[float] = None,
                max_worker_memory: Union[int, str, None] = None, retries: int = 0,
                retry_on: Optional[Iterable[str]] = None,
                soft_timeout: Optional[float] = None) -> Guards:
    """The guards checked: TypeError or ValueError naming the bad one."""
    timeout = _seconds(task_timeout, "task_timeout")
    soft = _seconds(soft_timeout, "soft_timeout")
    if soft is not None and timeout is not None and soft >= timeout:
        raise ValueError(f"soft_timeout ({soft:g} s) must be shorter than task_timeout "
                         f"({timeout:g} s): the task gets SoftTimeoutError first, and is "
                         f"killed at task_timeout if it has not ended")
    memory = None if max_worker_memory is None else parse_size(max_worker_memory)
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be an int, not {type(retries).__name__}")
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, not {retries}")
    if retry_on is None:
        kinds = frozenset(RETRY_KINDS)
    else:
        if isinstance(retry_on, str):
            retry_on = [retry_on]
        kinds = frozenset(retry_on)
        unknown = kinds - set(RETRY_KINDS)
        if unknown:
            raise ValueError(f"retry_on takes {', '.join(RETRY_KINDS)}; "
                             f"not {', '.join(sorted(unknown))}")
    return Guards(timeout, memory, retries, kinds, soft)


def call_guards(pool: Guards, given: Mapping[str, Any]) -> Optional[Guards]:
    """The guards of one call: *pool*'s, with what the call *given* replaces
    (None when it gives none).  TypeError for a name that is no guard."""
    if not given:
        return None
    unknown = sorted(set(given) - set(CallGuards.__annotations__))
    if unknown:
        raise TypeError(f"unexpected keyword argument {', '.join(map(repr, unknown))}; "
                        f"the guards of one call are {', '.join(CallGuards.__annotations__)}")
    merged: Dict[str, Any] = {
        "task_timeout": pool.task_timeout, "max_worker_memory": pool.max_worker_memory,
        "retries": pool.retries, "retry_on": pool.retry_on, "soft_timeout": pool.soft_timeout}
    merged.update(given)
    return make_guards(**merged)
