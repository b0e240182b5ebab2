"""How a user's function is pickled for the workers: by name where the
workers can import it, by value (cloudpickle) where they cannot: a
function of ``__main__`` under spawn and forkserver, whose workers import
the main script again and have only what it defines at its top level (read
here from the script's source).  The frames that carry it are messages.py's."""
from __future__ import annotations

import ast
import sys
from types import BuiltinFunctionType, FunctionType
from typing import Any, Callable, FrozenSet, Tuple

import cloudpickle

from .messages import PROTOCOL, dumps


def dumps_call(func: Callable[..., Any], payload: Any, by_value_main: bool) -> bytes:
    """Pickle *payload*, which holds *func*.  If *func* lives in ``__main__``
    and the worker does not share our ``__main__`` (spawn, forkserver), it goes
    by value with cloudpickle; the standard pickler would send a name the
    worker may not be able to import.  A wrapper (checkpoint's) is judged by
    the function it wraps."""
    func = getattr(func, "__wrapped__", func)
    if by_value_main and getattr(func, "__module__", None) == "__main__":
        data: bytes = cloudpickle.dumps(payload, protocol=PROTOCOL)
        return data
    return dumps(payload)


def encode_function(func: Callable[..., Any], by_value_main: bool) -> Tuple[bytes, bool]:
    """*func* pickled as ``dumps_call`` does, and whether that pickle is only
    its name (a plain function the standard pickler took), so that it can be
    reused for later calls: one sent by value (a lambda, a closure) may have
    changed since."""
    data = dumps_call(func, func, by_value_main)
    by_name = (type(func) in (FunctionType, BuiltinFunctionType)
               and b"cloudpickle" not in data and len(data) < 512)
    return data, by_name


def top_level_names_of_main() -> FrozenSet[str]:
    """Functions and classes the main script defines at its top level (not
    under ``if __name__ == "__main__":``): those a spawned worker, which
    imports the script again, has too."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path or not path.endswith(".py"):
        return frozenset()
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return frozenset()
    return frozenset(node.name for node in tree.body
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
