"""One step's directory of entries: reads that trust only what this step
wrote for these arguments, writes that never stop the work."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import sys
import time
import warnings
from typing import Any, Optional, Tuple

from . import files
from .entry import HEADER, PROTOCOL, Verdict, argument_key, binding, check_header, \
    encode_entry

WRITE_ATTEMPTS = 3
_RETRY_PAUSE = 0.05                     # seconds, doubled after each failed attempt
_IDENTITY = re.compile(r"[0-9a-f]{32}\n?")

_REFUSED = {
    Verdict.OLD: "was written by an older version of poolguard (another entry format): "
                 "not trusted",
    Verdict.FOREIGN: "is not a checkpoint entry: not trusted",
    Verdict.UNTRUSTED: "was not written for this item of this step with this store's key "
                       "(planted, altered, moved or copied from another entry, step or "
                       "store, or written under another key): not trusted",
    Verdict.DAMAGED: "is damaged (its value does not match its header)",
}


class CheckpointWarning(UserWarning):
    """The result store could not be read or written; work goes on without it."""


class Store:
    """One step's directory of entries.  Every method degrades instead of raising."""

    def __init__(self, root: str, step: str, secret: bytes, fsync: bool = False):
        self.root = root
        self.step = step
        self.secret = secret      # authenticates entries (load_key)
        self.fsync = fsync        # entries on stable storage before their value is returned
        self.dir = os.path.join(root, step_dir_name(step))
        self.writable = True
        self.identity: Optional[str] = None    # the step's, from its step.id file
        self._usable = True
        self._warned = False
        self._in_worker = False

    def __getstate__(self) -> dict[Any, Any]:
        return {"root": self.root, "step": self.step, "secret": self.secret,
                "fsync": self.fsync, "writable": self.writable, "identity": self.identity,
                "usable": self._usable}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        self.__init__(state["root"], state["step"], state["secret"],  # type: ignore[misc]
                      state["fsync"])
        self.writable = state["writable"]
        self.identity = state["identity"]
        self._usable = state["usable"]
        self._in_worker = True

    # ---- keys and entries ------------------------------------------------------

    def key(self, args: tuple[Any, ...], kwds: dict[Any, Any]) -> Optional[str]:
        return argument_key(args, kwds)

    def entry_path(self, key: str) -> str:
        return os.path.join(self.dir, key[:2], key + ".entry")

    def _binding(self, key: str) -> Optional[bytes]:
        identity = self.identity if self.identity is not None else self._load_identity()
        return None if identity is None else binding(self.step, identity, key)

    def get(self, key: str) -> Tuple[bool, Any]:
        """(True, value) for a whole entry written for *key* in this step
        under this store's key; (False, None) for a missing, truncated,
        unreadable or untrusted one, computed again."""
        bound = self._binding(key)
        if bound is None:
            return False, None
        path = self.entry_path(key)
        try:
            payload = self._read(path, bound)
        except FileNotFoundError:
            return False, None
        except OSError as exc:
            how = ("is a symbolic link, not followed" if exc.errno == errno.ELOOP
                   else f"is {exc.strerror}: not trusted"
                   if isinstance(exc, files.NotRegularFile)
                   else f"cannot be read: {exc}")
            self._warn(f"{path} {how}; computing it again", disable=False)
            return False, None
        if payload is None:
            return False, None
        try:
            return True, pickle.loads(payload)
        except Exception:   # e.g. a class that no longer exists
            return False, None

    def _read(self, path: str, bound: bytes) -> Optional[bytes]:
        """The entry's value if it is whole and authentic, else None (having
        said why, when it is more than an interrupted write)."""
        fd, info = files.open_regular(path)
        try:
            header = files.read_at(fd, HEADER.size, 0)
            verdict, length, digest = check_header(header, info.st_size, self.secret, bound)
            if verdict is Verdict.OK:
                payload = files.read_at(fd, length, HEADER.size)
                if hashlib.sha256(payload).digest() == digest:
                    return payload
                verdict = (Verdict.TRUNCATED if len(payload) < length   # shrunk meanwhile
                           else Verdict.DAMAGED)
        finally:
            os.close(fd)
        if verdict is not Verdict.TRUNCATED:
            self._warn(f"{path} {_REFUSED[verdict]}; computing it again", disable=False)
        return None

    def put(self, key: str, value: Any) -> bool:
        """Store *value*; False (after one warning) if it cannot be stored."""
        if not self.writable:
            return False
        bound = self._binding(key)
        if bound is None:
            return False
        try:
            data = encode_entry(pickle.dumps(value, protocol=PROTOCOL), self.secret, bound)
        except Exception as exc:
            self._warn(f"a result of {self.step} could not be pickled for the store "
                       f"({exc!r}); it is returned but not stored", disable=False)
            return False
        path = self.entry_path(key)
        error: Optional[OSError] = None
        for attempt in range(WRITE_ATTEMPTS):
            try:
                files.write_atomically(path, data, fsync=self.fsync)
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
        """Make the step's directory, its description and its identity, and
        check that an entry can be written; if not, warn once and run
        without storing (or without the store at all, if it has no identity)."""
        try:
            files.make_dirs(self.dir, fsync=self.fsync)
            if self._load_identity() is None:
                return
            info = os.path.join(self.dir, "step.json")
            if not os.path.lexists(info):
                files.create_once(info, json.dumps(
                    {"step": self.step, "function": function}, indent=1).encode())
            files.remove(files.write_temp(self.dir, "probe", b""))
        except OSError as exc:
            self._warn(f"cannot write to {self.dir}: {exc}; stored results are still "
                       f"used where readable, new ones are not stored")
            if self.identity is None:   # no directory: nothing to read either
                self._usable = False

    def _load_identity(self) -> Optional[str]:
        """The step's identity: random, made once with the step (a file
        linked into place, so every process agrees on it); None, after one
        warning, if it cannot be had (then the store is not used)."""
        if not self._usable:
            return None
        path = os.path.join(self.dir, "step.id")
        try:
            try:
                text = files.read_small(path, 64)
            except FileNotFoundError:
                if self.writable:   # flushed: entries are worth nothing without it
                    files.make_dirs(self.dir, fsync=True)
                    files.create_once(path, os.urandom(16).hex().encode() + b"\n",
                                      fsync=True)
                text = files.read_small(path, 64)
        except OSError as exc:
            problem = f"cannot be read or made: {exc}"
        else:
            if _IDENTITY.fullmatch(text.decode("latin-1")):
                self.identity = text.decode().strip()
                return self.identity
            problem = "is damaged (not 32 hexadecimal digits)"
        self._usable = False
        self._warn(f"the step's identity {path} {problem}; the store is not used "
                   f"(nothing read from it or written to it)")
        return None

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


def step_dir_name(step: str) -> str:
    """A directory name for *step*: readable, and different for different names."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", step).strip("._")[:80] or "step"
    return f"{safe}-{hashlib.sha256(step.encode()).hexdigest()[:8]}"
