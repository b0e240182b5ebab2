"""What the parent and a worker say to each other, and how it is framed.

Each worker has two pipes of its own (no lock is shared between workers):

    parent --task pipe-->   worker     frame: task_id (q) | handle size (I) | handle
                                              | pickle((kind, func_bytes, items))
    parent <--result pipe-- worker     frame: task_id (q) | status (B)
                                              | microseconds the unit ran (I) | body

Frames use ``multiprocessing.connection``'s length prefix, so the worker side
can read and write them with an ordinary ``Connection``.  The task id and the
status sit outside the pickle: when a body cannot be decoded, the parent still
knows which task it belongs to and delivers the failure there.  Large
buffers among the arguments travel outside the frame (see buffers.py); the
handle says where.
"""
from __future__ import annotations

import pickle
import struct
import traceback
from enum import IntEnum
from multiprocessing.pool import RemoteTraceback  # type: ignore[attr-defined]
from typing import Any, Callable, List, Optional, Sequence, Tuple, Type, Union

import cloudpickle

from ..errors import ResultDecodingError, ResultEncodingError, UnpicklableTaskError
from . import buffers
from .framing import frame

PROTOCOL = pickle.HIGHEST_PROTOCOL
# What pickling a user's object may raise that is that object's fault, in
# the pool's process: any Exception, and SystemExit from a __reduce__ that
# calls exit().  Not KeyboardInterrupt: that one is the user's, and goes on.
PICKLING_ERRORS = (Exception, SystemExit)

class Kind(IntEnum):
    """What a task frame asks the worker to do with its items."""
    APPLY = 0          # one item: (args, kwargs)
    MAP = 1            # func(item) for each item
    STARMAP = 2        # func(*item) for each item
    EACH = 3           # func(item) for each item, each item's outcome on its own
    EACH_STAR = 4      # func(*item) for each item, each item's outcome on its own
    EACH_APPLY = 5     # func(*args, **kwargs) for each item (args, kwargs), each on its own
    STREAM = 6         # func(item) for each item, each outcome sent as soon as it is known


class Status(IntEnum):
    """The status byte of a reply (worker -> parent)."""
    OK = 0             # body: pickled list of results, one per item; EACH:
                       #   pickle((results, {offset: encoded exception, or
                       #   (repr(error), repr(result)) for a result that did not pickle}))
    RAISED = 1         # body: encoded exception (see encode_exception)
    UNENCODABLE = 2    # body: pickle((repr(error), repr(result))): the result did not pickle
    READY = 3          # control: the initializer succeeded
    INIT_FAILED = 4    # control: body is an encoded exception from the initializer
    RETIRING = 5       # control: maxtasksperchild reached, a planned exit follows


# Added to OK, RAISED or UNENCODABLE: the reply of one call of an EACH_APPLY
# or STREAM unit, sent as soon as it ends (its body as for an APPLY unit; the header's
# microseconds field holds the call's offset in the unit).  The unit's own
# reply follows its last call, with no results.
ITEM = 0x80
# Added to a reply's status: its large buffers are in a memfd of the
# worker's (see result_buffers.py); the worker waits for RELEASE.
SHARED = 0x40


class Control(IntEnum):
    """Task ids below zero are control words, not tasks."""
    STOP = -1          # parent -> worker: leave the loop and exit
    WORKER = -2        # worker -> parent: a message about the worker itself
    RELEASE = -3       # parent -> worker: we have the shared buffers of your last reply


APPLY, MAP, STARMAP, EACH, EACH_STAR, EACH_APPLY, STREAM = Kind
# Kinds whose items have outcomes of their own; the last two send each
# outcome as it is known (ITEM replies).
PER_ITEM = frozenset((EACH, EACH_STAR, EACH_APPLY, STREAM))
ANSWERED_ONE_BY_ONE = frozenset((EACH_APPLY, STREAM))
OK, RAISED, UNENCODABLE, READY, INIT_FAILED, RETIRING = Status
STOP, CONTROL, RELEASE = Control

# A call's own guards, as the worker needs them: write each item's start
# time (task_timeout), and the soft timeout in seconds (None: none).
Timing = Tuple[bool, Optional[float]]
TASK_HEADER = struct.Struct("!qI")     # task id | size of the shared-buffer handle
# task id | status | microseconds the unit ran; in an ITEM reply, the offset of
# the call it answers in its unit instead
REPLY_HEADER = struct.Struct("!qBI")
STOP_CONTENT = TASK_HEADER.pack(STOP, 0)         # the whole of those frames (unprefixed)
RELEASE_CONTENT = TASK_HEADER.pack(RELEASE, 0)


def dumps(obj: Any, collector: Optional[buffers.Collector] = None) -> bytes:
    """Pickle with the standard pickler, falling back to cloudpickle for
    lambdas, closures and other objects only it can send by value."""
    try:
        return pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=collector)
    except (pickle.PicklingError, AttributeError, TypeError):
        if collector is not None:
            collector.taken.clear()
        data: bytes = cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=collector)
        return data


_APPLIES = (APPLY, EACH_APPLY)   # kinds whose items are (args, kwargs)

# Chunks of at most this many items are searched for large bytes before
# pickling; longer ones only if their pickle turns out large (the search
# would cost tiny tasks more than it saves).
_SEARCH_LIMIT = 64
# Argument types pickled in band whatever their size; kinds whose items are
# the single argument of each call.
_PLAIN_TYPES = frozenset((int, float, complex, str, bool, type(None)))
_ONE_ARGUMENT = frozenset((MAP, EACH, STREAM))


def encode_task(task_id: int, kind: int, func_bytes: bytes, items: Sequence[Any],
                remote: bool = False, timing: Optional[Timing] = None,
                ) -> Tuple[Tuple[bytes, ...], Optional[buffers.SharedBuffers]]:
    """The frame of a task, and the shared buffers it refers to (None if its
    arguments had no large buffer).  The caller closes them when the task is
    finished, and keeps *items* until then.  *remote*: workers can read large
    ``bytes`` from our memory (see buffers.py).  *timing*: the call's own
    guards, which replace the pool's in the worker (see ``Timing``)."""
    extra = () if timing is None else (timing,)
    if (kind in _ONE_ARGUMENT and len(items) <= _SEARCH_LIMIT
            and _PLAIN_TYPES.issuperset(map(type, items))):
        # Numbers, strings, None: nothing to share or to send out of band,
        # and no search for it (a tiny task's encoding took 2.6 us, 0.5 of it pickling).
        body = pickle.dumps((kind, func_bytes, items) + extra, protocol=PROTOCOL)
        return frame(TASK_HEADER.pack(task_id, 0), body), None
    collector = buffers.Collector() if buffers.AVAILABLE else None
    if kind == EACH_APPLY:
        body = dumps((kind, func_bytes, _each_call(items, collector, remote)) + extra)
    else:
        body = _encode_items(kind, func_bytes, items, collector, remote, extra)
    if collector is None or not collector.taken:
        return frame(TASK_HEADER.pack(task_id, 0), body), None
    try:
        shared = buffers.SharedBuffers(collector.taken)
    except OSError:   # no memory for it, or no memfd here after all: use the pipe
        plain = _each_call(items, None, False) if kind == EACH_APPLY else items
        return frame(TASK_HEADER.pack(task_id, 0), dumps((kind, func_bytes, plain) + extra)), None
    handle = pickle.dumps(shared.handle, protocol=PROTOCOL)
    return frame(TASK_HEADER.pack(task_id, len(handle)) + handle, body), shared


def _encode_items(kind: int, func_bytes: bytes, items: Sequence[Any],
                  collector: Optional[buffers.Collector], remote: bool,
                  extra: Tuple[Any, ...]) -> bytes:
    payload: Any = items
    if collector is not None and len(items) <= _SEARCH_LIMIT:
        payload = buffers.shareable(items, kind in (STARMAP, EACH_STAR), kind in _APPLIES,
                                    remote) or items
    body = dumps((kind, func_bytes, payload) + extra, collector)
    if (collector is not None and payload is items and len(body) >= buffers.MIN_SIZE
            and len(items) > _SEARCH_LIMIT):
        wrapped = buffers.shareable(items, kind in (STARMAP, EACH_STAR), kind in _APPLIES, remote)
        if wrapped is not None:
            collector.taken.clear()
            body = dumps((kind, func_bytes, wrapped) + extra, collector)
    return body


def _each_call(items: Sequence[Any], collector: Optional[buffers.Collector],
               remote: bool) -> Tuple[List[bytes], List[int]]:
    """EACH_APPLY: each call's (args, kwargs) pickled on its own, so that the
    worker unpickles it as that call's first step (an argument that cannot
    be unpickled fails its call alone); and how many of the collected large
    buffers each call's pickle refers to."""
    parts, counts = [], []
    for item in items:
        wrapped = buffers.shareable((item,), False, True, remote) if collector else None
        before = len(collector.taken) if collector else 0
        parts.append(dumps(wrapped[0] if wrapped else item, collector))
        counts.append(len(collector.taken) - before if collector else 0)
    return parts, counts


def decode_task(data: bytes, handle_size: int) -> tuple[Any, ...]:
    """Worker side: (kind, func_bytes, items, timing) of a task frame (after
    the length prefix), mapping its shared buffers if it has any; *timing* is
    None when the call has no guards of its own.  For EACH_APPLY, items is
    (each call's pickle, its buffer count, the buffers)."""
    view = memoryview(data)[TASK_HEADER.size:]
    views: List[memoryview] = []
    if handle_size:
        views = buffers.open_buffers(pickle.loads(view[:handle_size]))
        view = view[handle_size:]
    kind, func_bytes, items, *timing = pickle.loads(view, buffers=views)
    if kind == EACH_APPLY:
        items = (*items, views)
    return kind, func_bytes, items, timing[0] if timing else None


def encode_exception(exc: BaseException, tb_text: Optional[str] = None) -> bytes:
    """Worker side: the exception, plus a text copy that always decodes.
    *tb_text*: its traceback, when it was raised in another process."""
    if tb_text is None:
        tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        text = str(exc)
    except Exception:
        text = "<str() failed>"
    reason = ""
    try:
        exc_bytes: Optional[bytes] = dumps(exc)
    except Exception as err:
        exc_bytes = None
        reason = f"it could not be pickled in the worker: {err!r}"
    return pickle.dumps((exc_bytes, type_name, text, tb_text, reason), protocol=PROTOCOL)


def decode_exception(body: Union[bytes, memoryview]) -> BaseException:
    """Parent side: never raises; a failure gives a stand-in keeping the text."""
    try:
        exc_bytes, type_name, text, tb_text, reason = pickle.loads(body)
    except BaseException as err:  # the text part is plain strings; this is corruption
        return UnpicklableTaskError(f"undecodable error report from worker: {err!r}",
                                    reason=repr(err))
    if exc_bytes is not None:
        try:
            exc = pickle.loads(exc_bytes)
            if not isinstance(exc, BaseException):
                raise TypeError(f"unpickled a {type(exc).__name__}, not an exception")
        except BaseException as err:   # SystemExit from a __reduce__ too
            reason = f"it could not be unpickled in the parent: {err!r}"
        else:
            exc.__cause__ = remote_traceback(tb_text)
            return exc
    stand_in = UnpicklableTaskError(
        f"{type_name}: {text} (the exception could not be carried back intact: {reason})",
        type_name=type_name, text=text, remote_traceback=tb_text, reason=reason)
    stand_in.__cause__ = remote_traceback(tb_text)
    return stand_in


def decode_reply(status: int, body: Union[bytes, memoryview],
                 describe: Callable[[], str], each: bool = False,
                 shared: Optional[Sequence[Any]] = ()) -> Tuple[bool, Any]:
    """Parent side: (True, list of results) or (False, exception) from a task's
    reply; for a PER_ITEM unit, (True, (results, {offset: exception})).
    *shared*: its out-of-band buffers (result_buffers.receive).  Never
    raises: whatever unpickling the body does (even raising SystemExit)
    becomes that task's error.  *describe* names the task."""
    if status == RAISED:
        return False, decode_exception(body)
    try:
        if status == OK and each:
            values, errors = pickle.loads(body, buffers=shared)
            return True, (values, {i: decode_exception(e) if isinstance(e, bytes)
                                   else encoding_error(*e) for i, e in errors.items()})
        if status == OK:
            return True, pickle.loads(body, buffers=shared)
        if status == UNENCODABLE:
            return False, encoding_error(*pickle.loads(body))
        raise ValueError(f"unknown reply status {status}")
    except BaseException as exc:   # SystemExit from a __reduce__ too: never ours
        return False, encoding_error(
            f"the result could not be unpickled in the parent: {exc!r}",
            f"<result of {describe()}>", ResultDecodingError)


def remote_traceback(tb_text: str) -> RemoteTraceback:
    # Same layout as multiprocessing.pool, so tools that parse it keep working.
    return RemoteTraceback('\n"""\n%s"""' % tb_text)


def encoding_error(error_repr: str, value_repr: str,
                   cls: Type[ResultEncodingError] = ResultEncodingError) -> ResultEncodingError:
    """``MaybeEncodingError`` (and ``PicklingError``) from text already
    repr'd in the worker."""
    err = cls.__new__(cls)
    err.exc, err.value = error_repr, value_repr
    err.args = (error_repr, value_repr)
    return err
