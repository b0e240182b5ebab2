"""Large results outside the result pipe, in one copy to the caller.

Through the pipe a result of N bytes costs the caller 2N at its peak: the
received frame and the object unpickled from it live at once.  Here the
worker pickles its results with protocol 5 and takes every large buffer out
of band (NumPy arrays and anything else that hands out a ``PickleBuffer``,
and the large ``bytes`` and ``bytearray`` among the results, which pickle
would write in band and are wrapped to go out of band).  It writes them into
one memfd, sends a small reply that says where they are, and keeps the
memfd, and its results, until the parent answers RELEASE on the task pipe.

The parent (result_intake.py) opens the memfd through
``/proc/<worker>/fd/<n>`` and rebuilds each buffer:

* memory (a NumPy array): a view of one private mapping of the file, which
  becomes the array's memory: the worker's copy into the file is the only one;
* ``bytes``: where the worker may read its parent's memory (then the parent,
  its ancestor, may read the worker's: see buffers.py), it is not written to
  the file: the parent reads it straight from the worker into a new
  ``bytes``, the only copy;
* ``bytearray``, and ``bytes`` elsewhere: read from the file straight into a
  new object of that size (such objects cannot live on a mapping), freeing
  the file's pages behind the read: the caller never holds both.

Then it answers RELEASE.  Nothing can leak: the parent's descriptor is
closed before the results are delivered, the mapping belongs to the objects
built on it, and a worker that dies before the parent has its results takes
its memfd with it (the parent then leaves the task to the worker's death,
which fails it as a crash).
"""
from __future__ import annotations

import os
import pickle
import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

from . import buffers

MIN_SIZE = buffers.MIN_SIZE
BYTES, BYTEARRAY, MEMORY = 0, 1, 2     # what the parent rebuilds a buffer as
REMOTE = 3          # a bytes the parent reads from the worker's memory
HANDLE_SIZE = struct.Struct("!I")     # prefix of a reply body with shared buffers
_NAME = "poolguard-results"
_SEARCH_LIMIT = 64    # results searched for large bytes before pickling (see encode)
AVAILABLE = buffers.AVAILABLE


def as_bytes(data: Any) -> bytes:
    return data if type(data) is bytes else bytes(data)


def as_bytearray(data: Any) -> bytearray:
    return data if type(data) is bytearray else bytearray(data)


class _Large:
    """A large ``bytes`` or ``bytearray`` result while pickling: the pickler
    writes those in band, so they are wrapped to go out of band; the parent
    hands the rebuilt object itself to ``as_bytes`` (no copy)."""

    __slots__ = ("data",)

    def __init__(self, data: "bytes | bytearray"):
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        rebuild = as_bytes if type(self.data) is bytes else as_bytearray
        return rebuild, (pickle.PickleBuffer(self.data),)


def _wrap_all(out: List[Any], depth: int) -> Tuple[List[Any], int]:
    """*out* with its large bytes and bytearrays wrapped, looking into
    tuples, lists and dicts of up to _SEARCH_LIMIT members, *depth* levels
    down; and how many were (*out* itself if none).  One wrapper an object:
    an object found twice comes back once, as pickle's memo would have it."""
    memo: Dict[int, _Large] = {}
    wrapped = [_wrap(v, depth, memo) for v in out]
    return (wrapped, len(memo)) if memo else (out, 0)


def _wrap(value: Any, depth: int, memo: Dict[int, _Large]) -> Any:
    kind = type(value)
    if kind is bytes or kind is bytearray:
        if len(value) < MIN_SIZE:
            return value
        wrapper = memo.get(id(value))
        if wrapper is None:
            wrapper = memo[id(value)] = _Large(value)
        return wrapper
    if depth <= 0 or kind not in _CONTAINERS or len(value) > _SEARCH_LIMIT:
        return value   # a long one is not searched: that would cost more than it saves
    if kind is dict:
        new = {k: _wrap(v, depth - 1, memo) for k, v in value.items()}
        changed = any(new[k] is not v for k, v in value.items())
        return new if changed else value
    items = [_wrap(v, depth - 1, memo) for v in value]
    if all(a is b for a, b in zip(items, value, strict=True)):
        return value
    return tuple(items) if kind is tuple else items


_CONTAINERS = (tuple, list, dict)
_BYTES = (bytes, bytearray)


class _Collector(buffers.Collector):
    """Also notes what each buffer came from: the parent rebuilds bytes and
    bytearrays as such, everything else as memory."""

    def __init__(self) -> None:
        super().__init__(MIN_SIZE)
        self.kinds: List[int] = []

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        inband = super().__call__(buffer)
        if not inband:
            owner = type(self.taken[-1].obj)
            self.kinds.append(BYTES if owner is bytes else
                              BYTEARRAY if owner is bytearray else MEMORY)
        return inband

    def clear(self) -> None:
        if self.taken:
            self.taken.clear()
            self.kinds.clear()


_COLLECTOR = _Collector()


class Outgoing:
    """The worker's side of a reply's large buffers, kept until the parent
    has them: in one memfd, but for each whole ``bytes`` when *remote* (the
    parent may read our memory: see buffers.py): the parent reads that
    straight from us into a new ``bytes``, the only copy."""

    __slots__ = ("fd", "handle", "_views")

    def __init__(self, views: Sequence[memoryview], kinds: Sequence[int], remote: bool):
        self.fd = -1
        self._views = views   # what the parent reads from our memory stays alive
        entries: List[Tuple[int, int, int]] = []
        local = []
        for i, (view, kind) in enumerate(zip(views, kinds, strict=True)):
            if remote and kind == BYTES and _whole_bytes(view):
                entries.append((buffers.address_of(cast(bytes, view.obj)), view.nbytes, REMOTE))
            else:
                entries.append((0, 0, kind))   # its place in the file: below
                local.append(i)
        size = 0
        if local:
            self.fd = os.memfd_create(_NAME, os.MFD_CLOEXEC)
            try:
                size, layout = buffers.write_buffers(self.fd, [views[i] for i in local])
            except BaseException:
                self.close()
                raise
            for i, place in zip(local, layout, strict=True):
                entries[i] = (*place, kinds[i])
        inode = os.fstat(self.fd).st_ino if self.fd >= 0 else 0
        self.handle = (self.fd, inode, size, entries)

    def close(self) -> None:
        self._views = ()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _whole_bytes(view: memoryview) -> bool:
    return type(view.obj) is bytes and view.nbytes == len(view.obj)


_remote = [False]   # may the parent read this worker's memory?  (allow_remote)


def allow_remote(allowed: bool) -> None:
    """Worker side, at start: whether it could read the parent's memory, so
    that the parent, its ancestor, can read its own."""
    _remote[0] = allowed and buffers.REMOTE_POSSIBLE


def encode(out: List[Any], extra: Any = None,
           with_extra: bool = False) -> Tuple[bytes, Optional[Outgoing]]:
    """Worker side: the reply body for *out* (``(out, extra)`` if
    *with_extra*), and the memfd holding its large buffers (None if it has
    none; then the body is a plain pickle).  Raises what pickling raises."""
    if not AVAILABLE:
        return pickle.dumps((out, extra) if with_extra else out, buffers.PROTOCOL5), None
    collector = _COLLECTOR   # one per process: tiny results make no object for it
    try:
        wrapped, found = out, 0
        if len(out) <= _SEARCH_LIMIT:   # the cheap look: the results themselves
            for value in out:
                if type(value) in _BYTES and len(value) >= MIN_SIZE:
                    wrapped, found = _wrap_all(out, 0)
                    break
        body = pickle.dumps((wrapped, extra) if with_extra else wrapped, 5,
                            buffer_callback=collector)
        if len(body) >= MIN_SIZE:   # something large stayed in the pickle: look deeper
            deeper, more = _wrap_all(out, 2)
            if more > found:
                collector.clear()
                body = _dumps(deeper, extra, with_extra, collector)
        if not collector.taken:
            return body, None
        try:
            outgoing = Outgoing(list(collector.taken), collector.kinds, _remote[0])
        except OSError:   # no memory for a memfd: through the pipe after all
            return pickle.dumps((out, extra) if with_extra else out, buffers.PROTOCOL5), None
    finally:
        collector.clear()
    handle = pickle.dumps(outgoing.handle, buffers.PROTOCOL5)
    return HANDLE_SIZE.pack(len(handle)) + handle + body, outgoing


def _dumps(out: List[Any], extra: Any, with_extra: bool, collector: _Collector) -> bytes:
    return pickle.dumps((out, extra) if with_extra else out, buffers.PROTOCOL5,
                        buffer_callback=collector)
