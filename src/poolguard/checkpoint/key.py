"""The secret that authenticates entries: the user's own key file, made on
first use, or a key given explicitly.

The key file appears whole or not at all: it is written to a temporary file
beside it and linked into place, which fails if a key is there already, so
of many processes (threads, jobs on many hosts) making it at once exactly
one wins and every one reads the winner's.  A key too short to use, as an
older version left it when its writer was killed between creating and
writing it, is moved aside and replaced; a process that moved a whole key
aside (another had replaced the short one first) puts it back.  What
remains: if a third process links a key in that instant, the put-back
fails and the process whose key was moved keeps it for its run; later runs
compute its entries again, never read them wrong.  This can happen only
while a short key of an older version is being repaired.
"""
from __future__ import annotations

import os
from typing import Union

from .files import NotRegularFile, create_once, link_into_place, make_dirs, read_file, \
    remove, sync_dir, write_temp

KEY_SIZE = 32
MIN_KEY = 16
_KEY_LIMIT = 1 << 16        # bytes read from a key file at most
_SETTLE_ATTEMPTS = 20       # rounds of "read, else make or repair" before giving up


class CheckpointKeyError(ValueError):
    """The key that authenticates checkpoint entries cannot be had safely."""


def default_key_path() -> str:
    explicit = os.environ.get("POOLGUARD_CHECKPOINT_KEY")
    if explicit:
        return explicit
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config, "poolguard", "checkpoint.key")


def load_key(key: Union[bytes, str, "os.PathLike[str]", None]) -> bytes:
    """The secret that authenticates entries: *key* itself (bytes), the
    content of the file it names, or the user's own key file, made on first
    use (32 random bytes, mode 0600).  A key file of one's own that someone
    else owns or can read is refused."""
    if isinstance(key, bytes):
        if len(key) < MIN_KEY:
            raise ValueError(f"a checkpoint key must be at least {MIN_KEY} bytes")
        return key
    if key is not None and not isinstance(key, (str, os.PathLike)):
        raise TypeError(f"checkpoint key must be bytes or a path, not {type(key).__name__}")
    if key is None:
        return _own_key(default_key_path())
    path = os.fspath(key)
    secret, _ = _read(path)
    if len(secret) < MIN_KEY:
        raise CheckpointKeyError(f"the checkpoint key {path} holds {len(secret)} bytes; "
                                 f"at least {MIN_KEY} are needed")
    return secret


def _read(path: str) -> tuple[bytes, os.stat_result]:
    try:
        return read_file(path, _KEY_LIMIT)
    except FileNotFoundError:
        raise
    except (NotRegularFile, OSError) as exc:
        raise CheckpointKeyError(f"cannot read the checkpoint key {path}: {exc}") from None


def _own_key(path: str) -> bytes:
    for _ in range(_SETTLE_ATTEMPTS):
        try:
            secret, info = _read(path)
        except FileNotFoundError:
            _create(path)
            continue
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise CheckpointKeyError(
                f"the checkpoint key {path} is not yours alone (owner uid {info.st_uid}, "
                f"mode {info.st_mode & 0o777:o}): fix it with chmod 600, or pass a team "
                f"key explicitly with Checkpoint(path, key=...)")
        if len(secret) >= MIN_KEY:
            return secret
        _replace_short(path, info)
    raise CheckpointKeyError(f"the checkpoint key {path} keeps changing; "
                             f"{_SETTLE_ATTEMPTS} reads did not find it whole")


def _create(path: str) -> None:
    try:
        make_dirs(os.path.dirname(path) or ".", mode=0o700)
        create_once(path, os.urandom(KEY_SIZE), mode=0o600, fsync=True)
    except OSError as exc:
        raise CheckpointKeyError(f"cannot create the checkpoint key {path}: {exc}") from None


def _replace_short(path: str, short: os.stat_result) -> None:
    """Replace the short key file *short* (at *path*) by a new key, unless
    another process did it first."""
    directory = os.path.dirname(path) or "."
    try:
        tmp = write_temp(directory, os.path.basename(path), os.urandom(KEY_SIZE),
                         mode=0o600, fsync=True)
    except OSError as exc:
        raise CheckpointKeyError(f"cannot replace the checkpoint key {path}, which is "
                                 f"too short to use: {exc}") from None
    aside = f"{tmp}.short"
    try:
        if not _same_file(os.stat(path, follow_symlinks=False), short):
            remove(tmp)                 # replaced already
            return
        os.rename(path, aside)          # only one process can move a given file
    except FileNotFoundError:           # moved by another, who links theirs now
        link_into_place(tmp, path)
        return
    except OSError as exc:
        remove(tmp)
        raise CheckpointKeyError(f"cannot replace the checkpoint key {path}, which is "
                                 f"too short to use: {exc}") from None
    try:
        if _same_file(os.stat(aside), short):
            link_into_place(tmp, path)  # EEXIST: another's new key is there; fine
        else:                           # a whole key taken by mistake: put it back
            link_into_place(aside, path)
        sync_dir(directory)
    finally:
        remove(tmp)
        remove(aside)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and a.st_size < MIN_KEY
