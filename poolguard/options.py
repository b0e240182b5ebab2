"""Validation of the constructor options both fronts share."""
from __future__ import annotations

import multiprocessing
from typing import Any, Optional


def resolve_context(context: Any) -> multiprocessing.context.BaseContext:
    """A context object from ``None`` (the default), a start method name, or a context."""
    if context is None:
        return multiprocessing.get_context()
    if isinstance(context, str):
        return multiprocessing.get_context(context)
    if not hasattr(context, "Process") or not hasattr(context, "get_start_method"):
        raise TypeError(f"context must be a multiprocessing context or a start method "
                        f"name, not {type(context).__name__}")
    return context


def resolve_workers(n: Optional[int], what: str) -> int:
    if n is None:
        from loky import cpu_count  # counts what cgroups and affinity allow
        return max(1, cpu_count())
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
