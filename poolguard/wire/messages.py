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

import ast
import pickle
import struct
import sys
import traceback
from enum import IntEnum
from types import BuiltinFunctionType, FunctionType
from multiprocessing.pool import RemoteTraceback  # type: ignore[attr-defined]
from typing import Any, Callable, FrozenSet, Optional, Sequence, Tuple, Type, Union

import cloudpickle

from ..errors import ResultDecodingError, ResultEncodingError, UnpicklableTaskError
from . import buffers
from .framing import frame

PROTOCOL = pickle.HIGHEST_PROTOCOL

class Kind(IntEnum):
    """What a task frame asks the worker to do with its items."""
    APPLY = 0          # one item: (args, kwargs)
    MAP = 1            # func(item) for each item
    STARMAP = 2        # func(*item) for each item
    EACH = 3           # func(item) for each item, each item's outcome on its own
    EACH_STAR = 4      # func(*item) for each item, each item's outcome on its own


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


class Control(IntEnum):
    """Task ids below zero are control words, not tasks."""
    STOP = -1          # parent -> worker: leave the loop and exit
    WORKER = -2        # worker -> parent: a message about the worker itself


APPLY, MAP, STARMAP, EACH, EACH_STAR = Kind
PER_ITEM = frozenset((EACH, EACH_STAR))   # kinds whose items have outcomes of their own
OK, RAISED, UNENCODABLE, READY, INIT_FAILED, RETIRING = Status
STOP, CONTROL = Control

TASK_HEADER = struct.Struct("!qI")     # task id | size of the shared-buffer handle
REPLY_HEADER = struct.Struct("!qBI")   # task id | status | microseconds the unit ran


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


# Chunks of at most this many items are searched for large bytes before
# pickling; longer ones only if their pickle turns out large (the search
# would cost tiny tasks more than it saves).
_SEARCH_LIMIT = 64


def encode_task(task_id: int, kind: int, func_bytes: bytes, items: Sequence[Any],
                remote: bool = False) -> Tuple[Tuple[bytes, ...], Optional[buffers.SharedBuffers]]:
    """The frame of a task, and the shared buffers it refers to (None if its
    arguments had no large buffer).  The caller closes them when the task is
    finished, and keeps *items* until then.  *remote*: workers can read large
    ``bytes`` from our memory (see buffers.py)."""
    collector = buffers.Collector() if buffers.AVAILABLE else None
    payload: Any = items
    if collector is not None and len(items) <= _SEARCH_LIMIT:
        payload = buffers.shareable(items, kind in (STARMAP, EACH_STAR), kind == APPLY,
                                    remote) or items
    body = dumps((kind, func_bytes, payload), collector)
    if collector is None:
        return frame(TASK_HEADER.pack(task_id, 0), body), None
    if payload is items and len(body) >= buffers.MIN_SIZE and len(items) > _SEARCH_LIMIT:
        wrapped = buffers.shareable(items, kind in (STARMAP, EACH_STAR), kind == APPLY, remote)
        if wrapped is not None:
            collector.taken.clear()
            body = dumps((kind, func_bytes, wrapped), collector)
    if not collector.taken:
        return frame(TASK_HEADER.pack(task_id, 0), body), None
    try:
        shared = buffers.SharedBuffers(collector.taken)
    except OSError:   # no memory for it, or no memfd here after all: use the pipe
        return frame(TASK_HEADER.pack(task_id, 0), dumps((kind, func_bytes, items))), None
    handle = pickle.dumps(shared.handle, protocol=PROTOCOL)
    return frame(TASK_HEADER.pack(task_id, len(handle)) + handle, body), shared


def decode_task(data: bytes, handle_size: int) -> tuple[Any, ...]:
    """Worker side: (kind, func_bytes, items) of a task frame (after the
    length prefix), mapping its shared buffers if it has any."""
    view = memoryview(data)[TASK_HEADER.size:]
    task: tuple[Any, ...]
    if not handle_size:
        task = pickle.loads(view)
        return task
    handle = pickle.loads(view[:handle_size])
    task = pickle.loads(view[handle_size:], buffers=buffers.open_buffers(handle))
    return task


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
                 describe: Callable[[], str], each: bool = False) -> Tuple[bool, Any]:
    """Parent side: (True, list of results) or (False, exception) from a task's
    reply; for a PER_ITEM unit, (True, (results, {offset: exception})).  Never
    raises: whatever unpickling the body does (even raising SystemExit)
    becomes that task's error.  *describe* names the task."""
    if status == RAISED:
        return False, decode_exception(body)
    try:
        if status == OK and each:
            values, errors = pickle.loads(body)
            return True, (values, {i: decode_exception(e) if isinstance(e, bytes)
                                   else encoding_error(*e) for i, e in errors.items()})
        if status == OK:
            return True, pickle.loads(body)
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
