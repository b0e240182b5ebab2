"""The API reference is made from the docstrings (docs/api.rst): every
public class, method and property has one, and the user-facing calls name
each of their arguments under ``Args:``."""
from __future__ import annotations

import inspect
import re
from typing import Any, Iterator, Tuple

import pytest

import poolguard
import poolguard.progress

joblib_backend = pytest.importorskip("poolguard.joblib")

PUBLIC = [getattr(poolguard, name) for name in poolguard.__all__] + [
    poolguard.progress.ProgressInfo, joblib_backend.PoolguardBackend, joblib_backend.register]

# Made by users: their constructor's arguments are documented in the class
# docstring.  The result classes are made by the pool.
CONSTRUCTED = [poolguard.Pool, poolguard.ProcessPoolExecutor, poolguard.Checkpoint,
               joblib_backend.PoolguardBackend]
# Whose every method documents its arguments.
ARGS_DOCUMENTED = [poolguard.Pool, poolguard.ProcessPoolExecutor, poolguard.ApplyResult,
                   poolguard.MapResult, poolguard.IMapIterator]


def members(cls: type) -> Iterator[Tuple[str, Any]]:
    """Public methods and properties of *cls* that poolguard defines: not
    what it inherits from the standard library or joblib, nor the engine's
    interface of a job (poolguard.engine), which users never call."""
    for name in dir(cls):
        if name.startswith("_"):
            continue
        owner = next(k for k in cls.__mro__ if name in vars(k))
        if not owner.__module__.startswith("poolguard") \
                or owner.__module__.startswith("poolguard.engine"):
            continue
        value = vars(owner)[name]
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            yield f"{cls.__name__}.{name}", value


def undocumented_args(func: Any, doc: str, skip_first: bool) -> list:
    params = list(inspect.signature(func).parameters.values())[1 if skip_first else 0:]
    return [p.name for p in params
            if not re.search(rf"^\s*\**{p.name}:", doc, re.MULTILINE)]


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda o: o.__name__)
def test_every_public_name_and_member_has_a_docstring(obj):
    assert (obj.__doc__ or "").strip(), f"{obj.__name__} has no docstring"
    if inspect.isclass(obj):
        missing = [name for name, value in members(obj) if not (value.__doc__ or "").strip()]
        assert not missing, f"no docstring: {missing}"


@pytest.mark.parametrize("cls", CONSTRUCTED, ids=lambda c: c.__name__)
def test_constructor_arguments_are_documented(cls):
    missing = undocumented_args(cls.__init__, inspect.getdoc(cls) or "", skip_first=True)
    assert not missing, f"{cls.__name__}'s docstring has no Args entry for {missing}"


@pytest.mark.parametrize("cls", ARGS_DOCUMENTED, ids=lambda c: c.__name__)
def test_method_arguments_are_documented(cls):
    missing = {}
    for name, value in members(cls):
        doc = inspect.getdoc(value) or ""
        if isinstance(value, property) or doc.startswith("Engine hook"):
            continue
        args = undocumented_args(value, doc, skip_first=True)
        if args:
            missing[name] = args
    assert not missing, f"arguments without an Args entry: {missing}"


def test_help_on_map_says_what_it_returns_and_raises():
    doc = inspect.getdoc(poolguard.Pool.map) or ""
    for part in ("Args:", "Returns:", "Raises:", "WorkerCrashedError"):
        assert part in doc
