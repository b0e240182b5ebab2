"""What crosses the cluster between the pool and a dask worker.

To the worker, one dask task per bundle of units (one unit, unless many
wait)::

    run_units(token, config, [payload, ...])
        payload = (kind, call, name, start, count, pickle((func_bytes, items)))

(the function and the items pickled apart: if they do not unpickle on the
worker, only that unit fails, and says why).

Back, each unit's outcome: ``(parts, retried)``.  The sub-pool on the worker
may split a unit (a worker died on one item: the items before and after it
run again without it), so a unit comes back as one or more *parts*, each
``(start, count, status, blob)`` covering ``count`` items from ``start``:

* ``OK``: ``blob`` pickles the values (per-item kinds: ``(values, errors)``,
  ``errors`` mapping an offset to an encoded failure);
* ``RAISED``: the task's own exception, as ``messages.encode_exception``
  encodes it, with the traceback from the process it ran in;
* ``ERROR``: one of poolguard's errors (a death, a timeout, ...), pickled.

Everything is pickled by us, and dask carries bytes: a part that does not
unpickle here fails only its own items, with the original text.
"""
from __future__ import annotations

import pickle
from multiprocessing.pool import RemoteTraceback  # type: ignore[attr-defined]
from typing import Any, Dict, List, Tuple

from ..engine.jobs import Unit, deliver
from ..naming import function_name
from ..errors import ResultDecodingError, UnpicklableTaskError
from ..wire.messages import (PER_ITEM, PROTOCOL, decode_exception, encode_exception,
                             encoding_error)

OK, RAISED, ERROR = 0, 1, 2

Part = Tuple[int, int, int, bytes]   # start, count, status, blob
Payload = Tuple[int, str, str, int, int, bytes]   # kind, call, name, start, count, body


def encode_unit(unit: Unit) -> Payload:
    """Pool side: what a unit becomes on its way to a dask worker."""
    job = unit.job
    body = pickle.dumps((unit.func_bytes, list(unit.items)), protocol=PROTOCOL)
    return job.kind, job.call, function_name(job.func), unit.start, len(unit.items), body


def deliver_parts(unit: Unit, found: List[Part], retried: int) -> None:
    """Pool side: a unit's outcome, part by part, to its job."""
    job = unit.job
    for _ in range(retried):
        job.unit_retried(unit)
    for start, count, status, blob in found:
        lo = start - unit.start
        part = unit if (lo, count) == (0, len(unit.items)) else \
            Unit.placeholder(job, start, unit.items[lo:lo + count])
        if status == OK:
            ok, value = decode_values(part, blob)
        else:
            ok, value = False, decode_failure(status, blob)
        deliver(part, ok, value)


def encode_failure(exc: BaseException) -> Tuple[int, bytes]:
    """Worker side: a task's exception (it came from a child process, with
    its traceback) or one of ours."""
    cause = exc.__cause__
    if isinstance(cause, RemoteTraceback):
        return RAISED, encode_exception(exc, _inner_text(cause))
    try:
        return ERROR, pickle.dumps(exc, protocol=PROTOCOL)
    except Exception:   # ours always pickle; anything else goes as text
        return RAISED, encode_exception(exc)


def decode_failure(status: int, blob: bytes) -> BaseException:
    """Pool side; never raises."""
    if status == RAISED:
        return decode_exception(blob)
    try:
        exc = pickle.loads(blob)
        if isinstance(exc, BaseException):
            return exc
        raise TypeError(f"unpickled a {type(exc).__name__}, not an exception")
    except BaseException as err:
        return UnpicklableTaskError(f"an error report from the cluster did not unpickle: "
                                    f"{err!r}", reason=repr(err))


def encode_values(kind: int, values: Any) -> Tuple[int, bytes]:
    """Worker side: a unit's values; if they do not pickle again, the
    encoding error (they came from pickles, so this is rare)."""
    try:
        if kind in PER_ITEM:
            results, errors = values
            encoded = {i: encode_failure(e) for i, e in errors.items()}
            return OK, pickle.dumps((results, encoded), protocol=PROTOCOL)
        return OK, pickle.dumps(values, protocol=PROTOCOL)
    except Exception as exc:
        return encode_failure(encoding_error(f"the result could not be pickled on the dask "
                                             f"worker: {exc!r}", "<result>"))


def decode_values(part: Unit, blob: bytes) -> Tuple[bool, Any]:
    """Pool side: *part*'s (True, values) or (False, the error); never
    raises.  The part is described only when its values do not unpickle."""
    kind = part.job.kind
    try:
        values = pickle.loads(blob)
        if kind in PER_ITEM:
            results, encoded = values
            errors: Dict[int, BaseException] = {
                i: decode_failure(*failure) for i, failure in encoded.items()}
            return True, (results, errors)
        return True, values
    except BaseException as exc:
        return False, encoding_error(f"the result could not be unpickled here: {exc!r}",
                                     f"<result of {part.job.describe(part, None)}>",
                                     ResultDecodingError)


def _inner_text(cause: RemoteTraceback) -> str:
    """The traceback text inside a RemoteTraceback (without its quotes)."""
    text = str(getattr(cause, "tb", ""))
    return text.strip().strip('"').strip("\n") + "\n"
