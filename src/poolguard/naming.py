"""One home for naming what a message names: a signal, a function, a
call's arguments.

How an argument is shown where a task is named (a crash's message,
``status()``): short, and saying what matters.  An array's values say
little and fill the line ahead of what does (a grid search's candidate
parameters): arrays, data frames and sparse matrices are shown by type,
shape and dtype, at any depth; everything else as ``reprlib`` shortens it."""
from __future__ import annotations

import functools
import reprlib
import signal
from typing import Any, Dict, Optional, Sequence

SMALL = 6   # elements: an array this small is shown with its values
# Signals of a crash in the process's own code (native code, mostly).
CRASH_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT")


def signal_name(signum: Optional[int]) -> Optional[str]:
    """``SIGKILL`` for 9; ``signal 99`` for a number with no name."""
    if signum is None:
        return None
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def function_name(func: Any) -> str:
    """The user's function behind wrappers: checkpoint's, ``functools.partial``,
    scikit-learn's ``delayed``."""
    for _ in range(5):
        if isinstance(func, functools.partial):
            func = func.func
        elif hasattr(func, "__wrapped__"):
            func = func.__wrapped__
        elif callable(getattr(func, "function", None)):   # scikit-learn's _FuncWrapper
            func = func.function
        else:
            break
    return getattr(func, "__qualname__", None) or repr(func)


def arguments_text(args: Sequence[Any], kwds: Dict[Any, Any]) -> str:
    """``1, 'a', x=3``: the arguments of a call as a crash message shows them."""
    parts = [short_repr(a) for a in args] + [f"{k}={short_repr(v)}" for k, v in kwds.items()]
    return clip(", ".join(parts))


def clip(text: str, limit: int = 200) -> str:
    """*text* cut to *limit* characters, ending "..." when cut."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Repr(reprlib.Repr):
    def repr1(self, x: Any, level: int) -> str:
        described = array_text(x)
        return described if described is not None else super().repr1(x, level)


_REPR = _Repr()
_REPR.maxdict = 12   # a dict of options or parameters is usually what names the call
# What call_text shows whole: still bounded (a parameter may be a large object).
_REPR_WHOLE = _Repr()
_REPR_WHOLE.maxdict = _REPR_WHOLE.maxlist = _REPR_WHOLE.maxtuple = 40
_REPR_WHOLE.maxstring = _REPR_WHOLE.maxother = 80


def short_repr(obj: Any) -> str:
    """``<ndarray (150, 4) float64>`` for an array, ``reprlib.repr`` else."""
    try:
        return _REPR.repr(obj)
    except Exception:
        return f"<{type(obj).__name__} with failing repr>"


def array_text(obj: Any) -> Optional[str]:
    """numpy arrays, pandas frames and series, scipy sparse matrices (and
    anything with a tuple ``shape`` and a ``dtype`` or ``dtypes``): the type,
    shape and dtype; None for other objects and for small arrays."""
    if isinstance(obj, (str, bytes, int, float, tuple, list, dict, set)):
        return None
    try:
        shape = getattr(obj, "shape", None)
        if not isinstance(shape, tuple) or not shape:
            return None
        dtype = getattr(obj, "dtype", None)
        if dtype is None:
            dtypes = getattr(obj, "dtypes", None)   # a data frame: one per column
            if dtypes is None:
                return None
            kinds = sorted({str(d) for d in dtypes})
            dtype = kinds[0] if len(kinds) == 1 else "mixed"
        size = 1
        for n in shape:
            size *= int(n)
        if size <= SMALL:
            return None
        return f"<{type(obj).__name__} {shape} {dtype}>"
    except Exception:   # a proxy or a lazy object that will not say
        return None


def call_text(args: Sequence[Any], kwds: Dict[str, Any], whole: Sequence[str] = (),
              limit: int = 200) -> str:
    """``1, 'a', x=3``: the arguments as a crash message shows them, in
    *limit* characters; but the keywords named in *whole* come first among
    the keywords and are never cut (a grid search's candidate parameters)."""
    parts = [short_repr(a) for a in args]
    parts += [f"{k}={_REPR_WHOLE.repr(kwds[k])}" for k in whole if k in kwds]
    kept = ", ".join(parts)
    rest = ", ".join(f"{k}={short_repr(v)}" for k, v in kwds.items() if k not in whole)
    if not rest:
        return kept
    room = max(limit - len(kept) - 2, 0)
    if len(rest) > room:
        rest = rest[:max(room - 3, 0)] + "..."
    return f"{kept}, {rest}" if kept else rest
