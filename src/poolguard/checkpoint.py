"""Resumable pipeline steps: a result store that crashes and races cannot corrupt.

``pool.map(func, items, checkpoint="results/")`` wraps *func* in a
:class:`Checkpointed` callable.  In the worker, before calling *func* on an
item, it looks for the item's entry in the store; if a valid one is there,
its value is returned and *func* is not called.  Otherwise *func* runs and
its value is stored before it is sent back, so a result that reached the
caller is on disk, and a rerun after any crash (worker OOM-killed, parent
killed, machine rebooted) runs only the items that never finished.

Layout::

    PATH/<step>/step.json            what the step is (written once, atomically)
    PATH/<step>/<k[:2]>/<k>.entry    one result: header, HMAC-SHA256, pickle

*step* is the function's module and qualified name unless named explicitly
(``Checkpoint(path, step="parse")``), plus a digest of its pickle for
partials, lambdas, local functions and callable objects; *k* is the SHA-256
of the pickled arguments.  So "the same call" is the same step with
arguments that pickle to the same bytes.  Editing a module-level function's
body keeps its step: name the step anew (or clear it) to start over.

Safety rules, for many processes on many hosts sharing one directory (NFS
included, so no ``flock``): every write goes to a unique temporary file in
the entry's directory and is renamed over the entry with ``os.replace``;
directories are made with ``exist_ok``; removals tolerate a missing file;
a reader that meets anything but a whole, checksummed entry treats it as
missing, so the worst a race or a crash can cause is one computation more.
An ``OSError`` from the store is retried a few times, then reported once
with a :class:`CheckpointWarning`, and the work goes on without persisting.

Trust: a pickle is code, and a shared directory can be written by others.
Each entry carries an HMAC-SHA256 of its pickle under a secret key, and an
entry is unpickled only if its HMAC checks out: by default the user's own
key (``$POOLGUARD_CHECKPOINT_KEY``, else ``~/.config/poolguard/checkpoint.key``:
32 random bytes made on first use with mode 0600, refused if others can read
it or it is not the user's), or a team key given explicitly
(``Checkpoint(path, key=...)``).  An entry that fails the check (planted,
altered, written under another key, or a symbolic link) is computed again,
with one warning naming it.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import hmac
import inspect
import json
import os
import pickle
import re
import shutil
import struct
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

MAGIC = b"poolguard-hmac\x00\x02"
_HEADER = struct.Struct("!16sQ32s")     # magic, payload length, HMAC-SHA256 of payload
KEY_SIZE = 32
_PROTOCOL = 5                           # fixed: keys must not change with Python
WRITE_ATTEMPTS = 3
_RETRY_PAUSE = 0.05                     # seconds, doubled after each failed attempt
_STALE_TEMP = 3600.0                    # seconds before `clean` removes a temp file


class CheckpointKeyError(ValueError):
    """The key that authenticates checkpoint entries cannot be had safely."""


class CheckpointWarning(UserWarning):
    """The result store could not be read or written; work goes on without it."""


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
    """

    path: Union[str, "os.PathLike[str]"]
    step: Optional[str] = None
    key: Union[bytes, str, "os.PathLike[str]", None] = None


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
    store = Store(os.path.abspath(os.fspath(checkpoint.path)), step, load_key(checkpoint.key))
    store.prepare(_function_name(func))
    return Checkpointed(func, store)


class Checkpointed:
    """*func* behind the store: a stored result is returned instead of a call."""

    def __init__(self, func: Callable[..., Any], store: "Store"):
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


class Store:
    """One step's directory of entries.  Every method degrades instead of raising."""

    def __init__(self, root: str, step: str, secret: bytes):
        self.root = root
        self.step = step
        self.secret = secret      # authenticates entries (load_key)
        self.dir = os.path.join(root, step_dir_name(step))
        self.writable = True
        self._warned = False
        self._in_worker = False

    def __getstate__(self) -> dict[Any, Any]:
        return {"root": self.root, "step": self.step, "secret": self.secret,
                "writable": self.writable}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        self.__init__(state["root"], state["step"], state["secret"])   # type: ignore[misc]
        self.writable = state["writable"]
        self._in_worker = True

    # ---- keys and entries ------------------------------------------------------

    def key(self, args: tuple[Any, ...], kwds: dict[Any, Any]) -> Optional[str]:
        """SHA-256 of the pickled arguments in canonical form (sets and dicts,
        at any depth of lists, tuples, sets and dicts, in a sorted order, so
        the key is the same in every interpreter whatever its hash seed);
        None if they do not pickle (then the item is simply run, and not
        stored)."""
        try:
            data = pickle.dumps(canonical((args, kwds) if kwds else args), protocol=_PROTOCOL)
        except Exception:
            return None
        return hashlib.sha256(data).hexdigest()

    def entry_path(self, key: str) -> str:
        return os.path.join(self.dir, key[:2], key + ".entry")

    def get(self, key: str) -> Tuple[bool, Any]:
        """(True, value) for a whole, authentic entry; (False, None) for a
        missing, truncated, unreadable or untrusted one, computed again."""
        path = self.entry_path(key)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return False, None
        except OSError as exc:
            how = ("is a symbolic link, not followed" if exc.errno == errno.ELOOP
                   else f"cannot be read: {exc}")
            self._warn(f"{path} {how}; computing it again", disable=False)
            return False, None
        payload = decode_entry(data, self.secret)
        if payload is None:
            if split_entry(data) is not None:   # whole, yet not ours: say so
                self._warn(f"{path} was not written with this store's key (planted, "
                           f"altered, or written under another key): not trusted, "
                           f"computing it again", disable=False)
            return False, None
        try:
            return True, pickle.loads(payload)
        except Exception:   # e.g. a class that no longer exists
            return False, None

    def put(self, key: str, value: Any) -> bool:
        """Store *value*; False (after one warning) if it cannot be stored."""
        if not self.writable:
            return False
        try:
            data = encode_entry(pickle.dumps(value, protocol=_PROTOCOL), self.secret)
        except Exception as exc:
            self._warn(f"a result of {self.step} could not be pickled for the store "
                       f"({exc!r}); it is returned but not stored", disable=False)
            return False
        path = self.entry_path(key)
        error: Optional[OSError] = None
        for attempt in range(WRITE_ATTEMPTS):
            try:
                write_atomically(path, data)
                return True
            except OSError as exc:
                error = exc
                if attempt + 1 < WRITE_ATTEMPTS:
                    time.sleep(_RETRY_PAUSE * 2 ** attempt)
        self._warn(f"cannot write to {self.dir}: {error}; results are no longer stored "
                   f"by this process (the work goes on)")
        return False

    # ---- set-up ----------------------------------------------------------------

    def prepare(self, function: str) -> None:
        """Make the step's directory and its description, and check that an
        entry can be written; if not, warn once and run without storing."""
        try:
            os.makedirs(self.dir, exist_ok=True)
            info = os.path.join(self.dir, "step.json")
            if not os.path.exists(info):
                write_atomically(info, json.dumps(
                    {"step": self.step, "function": function}, indent=1).encode())
            probe = os.path.join(self.dir, f"probe-{os.getpid()}-{os.urandom(4).hex()}")
            write_atomically(probe, b"")
            os.unlink(probe)
        except OSError as exc:
            self._warn(f"cannot write to {self.dir}: {exc}; stored results are still "
                       f"used where readable, new ones are not stored")

    def _warn(self, text: str, disable: bool = True) -> None:
        if disable:
            self.writable = False
        if self._warned:
            return
        self._warned = True
        if not self._in_worker:
            warnings.warn(f"poolguard checkpoint: {text}", CheckpointWarning, stacklevel=3)
            return
        # In a worker, straight to stderr: the warnings machinery there may be
        # whatever the parent had when it forked (a test runner's recorder).
        try:
            sys.stderr.write(f"poolguard worker {os.getpid()}: CheckpointWarning: "
                             f"poolguard checkpoint: {text}\n")
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass   # no stderr: the task closed it


# ---- the file format and the atomic write --------------------------------------

class _SetOf(tuple[Any, ...]):
    """A set's or frozenset's elements in canonical order (never equal to a
    plain tuple's pickle)."""


class _FrozenSetOf(tuple[Any, ...]):
    pass


class _DictOf(tuple[Any, ...]):
    """A dict's (key, value) pairs in canonical order of the keys."""


def canonical(obj: Any) -> Any:
    """*obj* with every set, frozenset and dict inside lists, tuples, sets and
    dicts replaced by a tuple in a fixed order: their pickles, which follow
    hash order, then no longer change from one interpreter to the next."""
    kind = type(obj)
    if kind is tuple or kind is list:
        return kind(canonical(item) for item in obj)
    if kind is set or kind is frozenset:
        wrapper = _SetOf if kind is set else _FrozenSetOf
        return wrapper(sorted((canonical(item) for item in obj), key=_order))
    if kind is dict:
        pairs = ((canonical(k), canonical(v)) for k, v in obj.items())
        return _DictOf(sorted(pairs, key=lambda pair: _order(pair[0])))
    return obj


def _order(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=_PROTOCOL)


def encode_entry(payload: bytes, key: bytes) -> bytes:
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    return _HEADER.pack(MAGIC, len(payload), mac) + payload


def split_entry(data: bytes) -> Optional[Tuple[bytes, bytes, bytes]]:
    """(magic, MAC, payload) of a whole entry, or None when it is truncated."""
    if len(data) < _HEADER.size:
        return None
    magic, length, mac = _HEADER.unpack_from(data)
    payload = data[_HEADER.size:]
    return (magic, mac, payload) if length == len(payload) else None


def decode_entry(data: bytes, key: bytes) -> Optional[bytes]:
    """The payload of a whole entry written under *key*, or None (truncated,
    corrupt, planted, or written under another key)."""
    parts = split_entry(data)
    if parts is None:
        return None
    magic, mac, payload = parts
    if magic != MAGIC or not hmac.compare_digest(
            hmac.new(key, payload, hashlib.sha256).digest(), mac):
        return None
    return payload


def default_key_path() -> str:
    explicit = os.environ.get("POOLGUARD_CHECKPOINT_KEY")
    if explicit:
        return explicit
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config, "poolguard", "checkpoint.key")


def load_key(key: Union[bytes, str, "os.PathLike[str]", None]) -> bytes:
    """The secret that authenticates entries: *key* itself (bytes), the
    content of the file it names, or the user's own key file, made on first
    use (32 random bytes, mode 0600, created exclusively so that two first
    runs agree).  A key file someone else owns or can read is refused."""
    if isinstance(key, bytes):
        if len(key) < 16:
            raise ValueError("a checkpoint key must be at least 16 bytes")
        return key
    if key is not None and not isinstance(key, (str, os.PathLike)):
        raise TypeError(f"checkpoint key must be bytes or a path, not {type(key).__name__}")
    path = os.fspath(key) if key is not None else default_key_path()
    if key is None:
        _make_key_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            secret = f.read()
    except OSError as exc:
        raise CheckpointKeyError(f"cannot read the checkpoint key {path}: {exc}") from None
    if key is None and (info.st_uid != os.getuid() or info.st_mode & 0o077):
        raise CheckpointKeyError(
            f"the checkpoint key {path} is not yours alone (owner uid {info.st_uid}, "
            f"mode {info.st_mode & 0o777:o}): fix it with chmod 600, or pass a team "
            f"key explicitly with Checkpoint(path, key=...)")
    if len(secret) < 16:
        raise CheckpointKeyError(f"the checkpoint key {path} holds {len(secret)} bytes; "
                                 f"at least 16 are needed")
    return secret


def _make_key_file(path: str) -> None:
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise CheckpointKeyError(f"cannot create the checkpoint key {path}: {exc}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(KEY_SIZE))


def write_atomically(path: str, data: bytes) -> None:
    """Write *data* to a temporary file beside *path*, then rename it over
    *path*: readers see the old file or the new one, never a part."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}."
                                  f"{os.urandom(6).hex()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileNotFoundError:   # first entry of its directory: make it (races are fine)
        os.makedirs(directory, exist_ok=True)
        fd = os.open(tmp, flags, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def step_dir_name(step: str) -> str:
    """A directory name for *step*: readable, and different for different names."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", step).strip("._")[:80] or "step"
    return f"{safe}-{hashlib.sha256(step.encode()).hexdigest()[:8]}"


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
    from .wire.messages import dumps
    try:
        digest = hashlib.sha256(dumps(func)).hexdigest()[:12]
    except Exception as exc:
        raise TypeError(f"cannot name a checkpoint step for {func!r} (it does not "
                        f"pickle: {exc}); pass Checkpoint(path, step=...)") from None
    return f"{name}-{digest}"


# ---- inspection (python -m poolguard checkpoint PATH) -----------------------------

@dataclass
class StepInfo:
    directory: str
    step: str
    function: str
    entries: int
    size: int
    temporary: int      # temporary files (writes in progress, or left by a killed writer)


def steps(root: str) -> List[StepInfo]:
    """What a store holds, one StepInfo a step; an unreadable part counts as empty."""
    found = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    for name in names:
        directory = os.path.join(root, name)
        if not os.path.isdir(directory):
            continue
        try:
            with open(os.path.join(directory, "step.json")) as f:
                info: Dict[str, Any] = json.load(f)
        except (OSError, ValueError):
            info = {}
        entries = size = temporary = 0
        for path in _files(directory):
            if path.endswith(".tmp"):
                temporary += 1
            elif path.endswith(".entry"):
                entries += 1
                try:
                    size += os.stat(path).st_size
                except OSError:
                    pass
        found.append(StepInfo(name, info.get("step", "?"), info.get("function", "?"),
                              entries, size, temporary))
    return found


def clear(root: str, step: str) -> bool:
    """Remove one step (by its name or its directory name); False if absent."""
    for info in steps(root):
        if step in (info.step, info.directory):
            shutil.rmtree(os.path.join(root, info.directory), ignore_errors=True)
            return True
    return False


def clean(root: str, older_than: float = _STALE_TEMP) -> int:
    """Remove temporary files older than *older_than* seconds (left by killed
    writers); returns how many went.  Safe while others write."""
    removed = 0
    now = time.time()
    for path in _files(root):
        if path.endswith(".tmp"):
            try:
                if now - os.stat(path).st_mtime > older_than:
                    os.unlink(path)
                    removed += 1
            except OSError:   # gone already (another cleaner, or renamed into place)
                pass
    return removed


def _files(directory: str) -> Iterator[str]:
    for base, _dirs, files in os.walk(directory):
        for name in files:
            yield os.path.join(base, name)


# Printed and pickled under the name users import them by.
CheckpointKeyError.__module__ = CheckpointWarning.__module__ = "poolguard"
