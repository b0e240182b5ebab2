"""Resumable pipeline steps: a result store that crashes, races and other
writers cannot corrupt.

``pool.map(func, items, checkpoint="results/")`` wraps *func* in a
:class:`Checkpointed` callable.  In the worker, before calling *func* on an
item, it looks for the item's entry in the store; if a valid one is there,
its value is returned and *func* is not called.  Otherwise *func* runs and
its value is stored before it is sent back, so a result that reached the
caller is in the store, and a rerun after a crash (worker OOM-killed, parent
killed) runs only the items that never finished.

Layout::

    PATH/<step>/step.json            what the step is (written once)
    PATH/<step>/step.id              the step's identity: random, made once
    PATH/<step>/<k[:2]>/<k>.entry    one result: header, MAC, pickle

*step* is the function's module and qualified name unless named explicitly
(``Checkpoint(path, step="parse")``), plus a digest of its pickle for
partials, lambdas, local functions and callable objects; *k* is the SHA-256
of the pickled arguments.  So "the same call" is the same step with
arguments that pickle to the same bytes.  Editing a module-level function's
body keeps its step: name the step anew (or clear it) to start over.

Modules: :mod:`.entry` (the entry format and its MAC, argument keys),
:mod:`.files` (reads that never block, writes readers never see half done),
:mod:`.key` (the secret), :mod:`.store` (one step's entries),
:mod:`.listing` (inspection and upkeep).

Safety rules, for many processes on many hosts sharing one directory (NFS
included, so no ``flock``): entries are written to a unique temporary file
and renamed into place; the key and a step's identity are linked into place
(the first writer wins, readers never see a part); directories are made
racing others; a reader opens only regular files, without blocking, and
treats anything but a whole, authentic entry as missing, so the worst a race
or a crash can cause is one computation more.  An ``OSError`` from the store
is retried a few times, then reported once with a :class:`CheckpointWarning`,
and the work goes on without storing.

Trust: a pickle is code, and a shared directory can be written by others.
Each entry carries an HMAC-SHA256 under a secret key that binds its value to
the format, the step, the step's identity and the argument key, and it is
unpickled only if that checks out: by default the user's own key
(``$POOLGUARD_CHECKPOINT_KEY``, else ``~/.config/poolguard/checkpoint.key``:
32 random bytes made on first use with mode 0600, refused if others can read
it or it is not the user's), or a team key given explicitly
(``Checkpoint(path, key=...)``).  An entry that fails the check (planted,
altered, copied or moved from another item, step or store, written under
another key or by an older version, a symbolic link, a FIFO) is computed
again, with one warning naming it.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from .files import write_atomically
from .entry import MAGIC, VERSION, _DictOf, _FrozenSetOf, _SetOf, canonical, \
    decode_entry, encode_entry
from .key import KEY_SIZE, CheckpointKeyError, default_key_path, load_key
from .listing import StepInfo, _files, clean, clear, steps  # noqa: F401 (tests)
from .store import CheckpointWarning, Store, step_dir_name

__all__ = ["Checkpoint", "CheckpointArg", "CheckpointKeyError", "CheckpointWarning",
           "Checkpointed", "KEY_SIZE", "MAGIC", "StepInfo", "Store", "VERSION", "canonical",
           "checkpointed", "clean", "clear", "decode_entry", "default_key_path",
           "default_step", "encode_entry", "load_key", "step_dir_name", "steps",
           "write_atomically"]
# Argument keys pickle these by the name poolguard.checkpoint.<name>.
_KEY_TYPES = (_SetOf, _FrozenSetOf, _DictOf)


@dataclass(frozen=True)
class Checkpoint:
    """Where results of one step are kept.  *step* names the step; by default
    it is the function's module and qualified name.  *key* authenticates the
    entries: by default the user's own key; a team that shares a store
    passes the same secret (bytes, or the path of a file holding it).

    Give it as ``checkpoint=`` to a map call (a plain path is
    ``Checkpoint(path)``): each item's result is stored as it arrives, and
    the same call made again returns the stored results without running
    their items.

    Args:
        path: The store's directory (made if missing); one store holds
            many steps.
        step: The step's name; by default the function's module and
            qualified name.  Two steps with one function need two names.
        key: The secret that signs entries (bytes, or the path of a file
            holding it); by default a key made once per user, kept in
            ``$XDG_CONFIG_HOME/poolguard/checkpoint.key`` (``~/.config``
            when unset) or where ``POOLGUARD_CHECKPOINT_KEY`` names.
        fsync: Each entry and its directory are flushed to stable storage
            before the item's value is returned, so a result the caller got
            survives a crash of the machine.  Without it (the default) a
            crash of the machine may lose the last seconds' entries, which
            are then computed again, never read wrong.
    """

    path: Union[str, "os.PathLike[str]"]
    step: Optional[str] = None
    key: Union[bytes, str, "os.PathLike[str]", None] = None
    fsync: bool = False


CheckpointArg = Union[str, "os.PathLike[str]", Checkpoint, None]


def checkpointed(func: Callable[..., Any], checkpoint: CheckpointArg) -> Callable[..., Any]:
    """*func* wrapped to use the store given as ``checkpoint=``, or *func*
    itself when there is none.  Called by the fronts in the caller's process:
    a bad argument raises here; an unusable store warns here, once."""
    if checkpoint is None:
        return func
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = Checkpoint(checkpoint)
    if not isinstance(checkpoint, Checkpoint):
        raise TypeError(f"checkpoint must be a path or a poolguard.Checkpoint, "
                        f"not {type(checkpoint).__name__}")
    if not callable(func):
        raise TypeError(f"{func!r} is not callable")
    step = checkpoint.step or default_step(func)
    if not isinstance(step, str) or not step.strip():
        raise ValueError("checkpoint step name must be a non-empty string")
    # Resolved here, once: workers (and a later os.chdir) must not read a
    # relative path against another directory.
    store = Store(os.path.abspath(os.fspath(checkpoint.path)), step,
                  load_key(checkpoint.key), fsync=bool(checkpoint.fsync))
    store.prepare(_function_name(func))
    return Checkpointed(func, store)


class Checkpointed:
    """*func* behind the store: a stored result is returned instead of a call."""

    def __init__(self, func: Callable[..., Any], store: Store):
        self.func = func
        self.store = store
        self.__wrapped__ = func     # crash reports name the user's function (pickled once:
                                    # the pickler's memo sees it is self.func)

    def __call__(self, *args: Any, **kwds: Any) -> Any:
        key = self.store.key(args, kwds)
        if key is not None:
            found, value = self.store.get(key)
            if found:
                return value
        value = self.func(*args, **kwds)
        if key is not None:
            self.store.put(key, value)
        return value


def _function_name(func: Callable[..., Any]) -> str:
    if isinstance(func, functools.partial):
        return f"partial({_function_name(func.func)})"
    func = getattr(func, "__wrapped__", func)
    module = getattr(func, "__module__", None) or "?"
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}.{name}"


def default_step(func: Callable[..., Any]) -> str:
    """The step of a call without an explicit name.  A module-level function
    is its name, so editing its body keeps its results; one of ``__main__``
    also names the script's path (two scripts' ``work`` are two steps);
    anything whose name does not tell it apart (a partial, a lambda, a local
    function, a callable object) also gets a digest of its pickle, so two of
    them never share entries."""
    name = _function_name(func)
    if name.startswith("__main__."):
        script = getattr(sys.modules.get("__main__"), "__file__", None)
        where = os.path.abspath(script) if script else "<no script file>"
        name = f"__main__[{where}].{name[len('__main__.'):]}"
    plain = (inspect.isfunction(func) or inspect.isbuiltin(func)) and "<" not in name
    if plain:
        return name
    from ..wire.messages import dumps
    try:
        digest = hashlib.sha256(dumps(func)).hexdigest()[:12]
    except Exception as exc:
        raise TypeError(f"cannot name a checkpoint step for {func!r} (it does not "
                        f"pickle: {exc}); pass Checkpoint(path, step=...)") from None
    return f"{name}-{digest}"


# Printed and pickled under the name users import them by.
CheckpointKeyError.__module__ = CheckpointWarning.__module__ = "poolguard"
