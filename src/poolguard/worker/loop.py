"""The worker side: one process runs ``worker_main`` until told to stop.

Before each task the worker writes the task id into its own slot of a small
shared-memory array, and before each item of a chunk the item's index.  The
parent reads the slot only after the worker is dead, so it learns exactly
which item was running without any lock a dying worker could hold.
"""
from __future__ import annotations

import pickle
import reprlib
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from . import lifeline
from .numbering import numbered
from .soft_timer import timer as soft_timer
from ..errors import TaskDecodeError
from ..wire import buffers, result_buffers
from ..wire.framing import FrameInput
from ..wire.messages import (APPLY, CONTROL, EACH, EACH_APPLY, INIT_FAILED, ITEM,
                             MAP, OK, PER_ITEM, PROTOCOL, RAISED, READY, RELEASE_CONTENT,
                             REPLY_HEADER, RETIRING, SHARED, STARMAP, STOP, STOP_CONTENT, STREAM,
                             TASK_HEADER, UNENCODABLE, Timing, decode_task, encode_exception)
from ..wire.slots import (DECODING, IDLE, ITEM_WORD, SENDING, SENT_WORD, START_WORD,
                          TASK_WORD)

_short_repr = reprlib.Repr()
_short_repr.maxstring = _short_repr.maxother = 200

# The memfd of the reply being sent (result_buffers.py), and the task pipe
# on which the parent's RELEASE of it comes (set by worker_main).
_held: list[result_buffers.Outgoing] = []
_frames: list[FrameInput] = []


def worker_main(spec: Any, index: int, task_conn: Connection, result_conn: Connection,
                crash_conn: Connection,
                parent_pid: Optional[int], fds_to_close: Sequence[int]) -> None:
    """The worker process: *spec* is the pool's ``WorkerSpec`` (engine/launch/),
    the three connections its own pipes, *parent_pid* the process whose death
    must end it (None: unknown), *fds_to_close* what it must not hold."""
    lifeline.prepare(crash_conn, fds_to_close)
    lifeline.forget_inherited_executors()
    watch_later = lifeline.die_with_parent(spec.alive_conn, parent_pid, spec.by_zygote)
    slot = spec.slots.view(index)
    lifeline.watch_own_signals(slot)
    # Frames are read in bulk: a burst of small tasks costs one read.
    frames = FrameInput(task_conn.fileno())
    _frames[:] = [frames]
    send, recv = result_conn.send_bytes, frames.recv
    try:
        if spec.initializer is not None:
            try:
                spec.load_initializer()(*spec.initargs)
            except BaseException as exc:
                send(REPLY_HEADER.pack(CONTROL, INIT_FAILED, 0) + encode_exception(exc))
                return
        slot[TASK_WORD] = IDLE
        # READY says whether we may read large arguments from the parent's memory.
        readable = b"\x01" if buffers.can_read_parent(spec.probe) else b"\x00"
        result_buffers.allow_remote(readable == b"\x01")
        send(REPLY_HEADER.pack(CONTROL, READY, 0) + readable)
        _serve(slot, send, recv, spec.maxtasks, (spec.timed, spec.soft_timeout), watch_later)
    except OSError:
        return  # the parent closed our pipes: it is gone or terminating us
    finally:
        lifeline.end_children()


def _serve(slot: memoryview, send: Callable[[bytes], None], recv: Callable[[], Any],
           maxtasks: Optional[int], timing: Timing,
           after_first: Optional[Callable[[], None]]) -> None:
    """Run units until told to stop; *timing*: the pool's (a call's own
    comes with its unit)."""
    clock = time.monotonic_ns
    done = 0
    cache: list[Any] = [b"", None]    # the last function's pickle, and the function
    while maxtasks is None or done < maxtasks:
        try:
            data = recv()
        except EOFError:
            return
        task_id, handle_size = TASK_HEADER.unpack_from(data)
        if task_id < 0:
            if task_id == STOP:
                return
            continue   # a RELEASE nothing waits for
        slot[START_WORD] = started = clock()   # before the item word: the parent reads them in that order
        slot[TASK_WORD], slot[ITEM_WORD], slot[SENT_WORD] = task_id, DECODING, 0
        status, body = _run_unit(slot, data, task_id, handle_size, cache, timing, clock, send)
        del data
        took = min((clock() - started) // 1000, 0xFFFFFFFF)
        send(REPLY_HEADER.pack(task_id, status, took) + body)
        del body
        _release_held()
        if after_first is not None:   # the parent-watching thread (lifeline.py)
            after_first()
            after_first = None
        slot[TASK_WORD] = IDLE
        done += 1
    send(REPLY_HEADER.pack(CONTROL, RETIRING, 0))


def _run_unit(slot: memoryview, data: bytes, task_id: int, handle_size: int, cache: list[Any],
              timing: Timing, clock: Callable[[], int],
              send: Callable[[bytes], None]) -> Tuple[int, bytes]:
    """Run one unit; the status and body of its reply.  The arguments and
    results are locals of this call, so nothing of the task outlives it in
    the worker."""
    try:
        kind, func_bytes, items, own = decode_task(data, handle_size)
        if func_bytes != cache[0]:
            cache[:] = func_bytes, pickle.loads(func_bytes)
    except BaseException as exc:   # SystemExit from a __reduce__ too
        return RAISED, encode_exception(_decode_error(exc))
    timed, soft = own or timing
    timed = timed or timing[0]
    func = cache[1] if soft is None else soft_timer.limited(cache[1], soft)
    if kind == EACH_APPLY:
        return _run_calls(slot, func, items, task_id, send, timed, clock)
    if kind == STREAM:
        return _run_stream(slot, func, items, task_id, send, timed, clock)
    if kind in PER_ITEM:
        return _run_each(slot, func, items, kind, timed, clock)
    try:
        # The loop target stores each index straight into the shared slot:
        # the cheapest per-item write we measured (about 35 ns).
        if timed and kind != APPLY:
            out = _run_timed(slot, clock, func, items, kind == STARMAP)
        elif kind == MAP:
            out = [func(item) for slot[ITEM_WORD], item in numbered(items)]
        elif kind == STARMAP:
            out = [func(*item) for slot[ITEM_WORD], item in numbered(items)]
        else:
            out = [_call(slot, func, items[0], timed, clock)]
    except BaseException as exc:  # SystemExit too: the task's error, not ours
        return RAISED, encode_exception(exc)
    slot[ITEM_WORD] = SENDING
    return _encode_results(out)


def _release_held() -> None:
    """After a reply with shared buffers: keep them until the parent has its
    own descriptor of them, then let go."""
    if _held:
        _frames[0].wait_for(RELEASE_CONTENT, STOP_CONTENT)
        for outgoing in _held:
            outgoing.close()
        _held.clear()


def _encode_results(out: list[Any]) -> Tuple[int, bytes]:
    try:
        body, outgoing = result_buffers.encode(out)
        if outgoing is not None:
            _held.append(outgoing)
            return OK | SHARED, body
        return OK, body
    except Exception as exc:
        return UNENCODABLE, pickle.dumps(
            (repr(exc), _short_repr.repr(out if len(out) != 1 else out[0])), PROTOCOL)
    except BaseException as exc:   # a __reduce__ calling exit(): the task's, as in the stdlib
        return RAISED, encode_exception(exc)


def _decode_error(exc: BaseException) -> TaskDecodeError:
    error = TaskDecodeError(f"the task could not be unpickled in the worker: "
                            f"{type(exc).__name__}: {exc}", exc=exc)
    error.__cause__ = exc
    return error


_NO_RESULTS = pickle.dumps(([], {}), PROTOCOL)


def _run_calls(slot: memoryview, func: Callable[..., Any], items: Tuple[Any, ...],
               task_id: int, send: Callable[[bytes], None], timed: bool,
               clock: Callable[[], int]) -> Tuple[int, bytes]:
    """An EACH_APPLY unit (submits): each call's arguments are unpickled as
    its first step, and its outcome is sent the moment it is known, before
    the next call starts: a death later in the unit neither loses it nor has
    it run again."""
    parts, counts, views = items
    used = 0
    status: int
    for i, part in enumerate(parts):
        if timed:
            slot[START_WORD] = clock()
        slot[ITEM_WORD] = i
        try:
            args, kwds = pickle.loads(part, buffers=views[used:used + counts[i]])
        except BaseException as exc:   # SystemExit from a __reduce__ too
            status, body = RAISED, encode_exception(_decode_error(exc))
        else:
            try:
                out = [func(*args, **kwds)]
            except BaseException as exc:   # SystemExit too: that call's error
                status, body = RAISED, encode_exception(exc)
            else:
                status, body = _encode_results(out)
            del args, kwds
        used += counts[i]
        send(REPLY_HEADER.pack(task_id, status | ITEM, i) + body)
        _release_held()
    slot[ITEM_WORD] = SENDING
    return OK, _NO_RESULTS


def _run_stream(slot: memoryview, func: Callable[..., Any], items: Sequence[Any],
                task_id: int, send: Callable[[bytes], None], timed: bool,
                clock: Callable[[], int]) -> Tuple[int, bytes]:
    """A STREAM unit (imap, one item a task): as ``_run_calls``, each
    outcome sent before the next item starts, for items that are each the
    one argument of a call, pickled together.  The last item's outcome is
    the unit's own reply, as a PER_ITEM unit's of that item: a unit of one
    item costs one reply.  (Its slot keeps the item's index while it is
    sent: a death then is that item's.)"""
    status: int
    last = len(items) - 1
    for i, item in enumerate(items):
        if timed:
            slot[START_WORD] = clock()
        slot[ITEM_WORD] = i
        try:
            value = func(item)
        except BaseException as exc:   # SystemExit too: that item's error
            if i == last:
                return _each_reply([None], {0: encode_exception(exc)})
            status, body = RAISED, encode_exception(exc)
        else:
            if i == last:
                return _each_reply([value], {})
            status, body = _encode_results([value])
            del value   # not kept while the next item runs
        send(REPLY_HEADER.pack(task_id, status | ITEM, i) + body)
        _release_held()
    return _each_reply([], {})


def _call(slot: memoryview, func: Callable[..., Any], item: Tuple[Any, Any], timed: bool,
          clock: Callable[[], int]) -> Any:
    """An APPLY unit's one call: ``item`` is (args, kwds)."""
    args, kwds = item
    if timed:   # task_timeout counts the call, as for the items of a map
        slot[START_WORD] = clock()
    slot[ITEM_WORD] = 0
    return func(*args, **kwds)


def _run_each(slot: memoryview, func: Callable[..., Any], items: Sequence[Any], kind: int,
              timed: bool, clock: Callable[[], int]) -> Tuple[int, bytes]:
    """A PER_ITEM unit: every item runs, whatever the others did; a raising item
    leaves None in the results and its encoded exception under its offset."""
    out: list[Any] = []
    errors: Dict[int, Any] = {}
    if timed:
        for i, item in enumerate(items):
            slot[START_WORD] = clock()
            slot[ITEM_WORD] = i
            try:
                out.append(func(item) if kind == EACH else func(*item))
            except BaseException as exc:   # SystemExit too: that item's error
                out.append(None)
                errors[i] = encode_exception(exc)
    else:
        start = 0
        while start < len(items):
            start = _each_until_error(slot, func, items, kind == EACH, start, out, errors)
    slot[ITEM_WORD] = SENDING
    return _each_reply(out, errors)


def _each_reply(out: list[Any], errors: Dict[int, Any]) -> Tuple[int, bytes]:
    """The reply of a PER_ITEM unit: *out* and *errors* by offset."""
    try:
        body, outgoing = result_buffers.encode(out, errors, with_extra=True)
        if outgoing is not None:
            _held.append(outgoing)
            return OK | SHARED, body
        return OK, body
    except BaseException:   # some result does not pickle: find which, fail those alone
        return OK, pickle.dumps(_encodable_only(out, errors), PROTOCOL)


def _each_until_error(slot: memoryview, func: Callable[..., Any], items: Sequence[Any],
                      plain: bool, start: int, out: list[Any], errors: Dict[int, Any]) -> int:
    """Run items from *start* on until one raises (its error noted under its
    offset, None in *out*); where to go on.  One try around the loop, not
    one an item: a tiny item costs a third less (the executor's map)."""
    append = out.append
    try:
        if plain:
            for slot[ITEM_WORD], item in numbered(items, start):
                append(func(item))
        else:
            for slot[ITEM_WORD], item in numbered(items, start):
                append(func(*item))
        return len(items)
    except BaseException as exc:   # SystemExit too: that item's error
        failed = len(out)
        append(None)
        errors[failed] = encode_exception(exc)
        return failed + 1


def _encodable_only(out: list[Any], errors: Dict[int, Any]) -> tuple[Any, ...]:
    """An item whose result does not pickle gets, in place of an encoded
    exception, the texts the parent makes its ResultEncodingError of."""
    for i, value in enumerate(out):
        try:
            pickle.dumps(value, PROTOCOL)
        except Exception as exc:
            out[i] = None
            errors[i] = (repr(exc), _short_repr.repr(value))
        except BaseException as exc:   # a __reduce__ calling exit(): the item's, as for apply
            out[i] = None
            errors[i] = encode_exception(exc)
    return out, errors


def _run_timed(slot: memoryview, clock: Callable[[], int], func: Callable[..., Any],
               items: Sequence[Any], star: bool) -> list[Any]:
    """The item loop when the pool has a task_timeout: each item's start time
    goes to the slot, before its index."""
    out = []
    for i, item in enumerate(items):
        slot[START_WORD] = clock()
        slot[ITEM_WORD] = i
        out.append(func(*item) if star else func(item))
    return out
