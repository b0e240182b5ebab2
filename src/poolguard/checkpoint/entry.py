"""The entry format, and the argument keys entries are filed under.

An entry (format 3) is a header, then the pickled value::

    magic (16 bytes) | value length (8) | SHA-256 of the value (32) | MAC (32)

The MAC is an HMAC-SHA256, under the store's secret, of the magic, the step's
name, the step's identity (random, made with the step's directory), the
argument key, the length and the value's SHA-256.  So an entry is trusted
only where it was written: the same step of the same store, for the same
arguments.  The header is checked before anything else is read, so what is
read after it is capped by a length the writer vouched for.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import pickle
import struct
from typing import Any, Optional

VERSION = 3
_FAMILY = b"poolguard-hmac\x00"             # the magic of every format but the first
MAGIC = _FAMILY + bytes([VERSION])
HEADER = struct.Struct("!16sQ32s32s")
PROTOCOL = 5                                # fixed: keys must not change with Python


class Verdict(enum.Enum):
    OK = "ok"
    TRUNCATED = "truncated"      # shorter than its header says: an interrupted write
    OLD = "old"                  # an older format
    FOREIGN = "foreign"          # no entry of ours at all
    UNTRUSTED = "untrusted"      # the MAC fails: planted, altered, moved, another key
    DAMAGED = "damaged"          # an authentic header on a value that does not match it


def binding(step: str, identity: str, argument_key: str) -> bytes:
    """What the MAC ties an entry to, besides its value."""
    name = step.encode("utf-8", "surrogatepass")
    ident = identity.encode("ascii")
    return (MAGIC + struct.pack("!I", len(name)) + name + struct.pack("!I", len(ident))
            + ident + bytes.fromhex(argument_key))


def _mac(secret: bytes, bound: bytes, length: int, digest: bytes) -> bytes:
    return hmac.new(secret, bound + struct.pack("!Q", length) + digest, hashlib.sha256).digest()


def encode_entry(payload: bytes, secret: bytes, bound: bytes) -> bytes:
    digest = hashlib.sha256(payload).digest()
    return HEADER.pack(MAGIC, len(payload), digest,
                       _mac(secret, bound, len(payload), digest)) + payload


def check_header(header: bytes, file_size: int, secret: bytes,
                 bound: bytes) -> tuple[Verdict, int, bytes]:
    """(verdict, value length, value SHA-256) from an entry's first bytes."""
    magic = header[:len(MAGIC)]
    if len(magic) == len(MAGIC) and magic != MAGIC:
        return (Verdict.OLD if magic.startswith(_FAMILY) else Verdict.FOREIGN), 0, b""
    if len(header) < HEADER.size:
        return Verdict.TRUNCATED, 0, b""
    _, length, digest, mac = HEADER.unpack(header)
    if not hmac.compare_digest(_mac(secret, bound, length, digest), mac):
        return Verdict.UNTRUSTED, 0, b""
    if file_size != HEADER.size + length:
        return (Verdict.TRUNCATED if file_size < HEADER.size + length
                else Verdict.DAMAGED), length, digest
    return Verdict.OK, length, digest


def decode_entry(data: bytes, secret: bytes, bound: bytes) -> Optional[bytes]:
    """The value of a whole entry in *data* that is authentic for *bound*, or None."""
    verdict, length, digest = check_header(data[:HEADER.size], len(data), secret, bound)
    payload = data[HEADER.size:]
    if verdict is not Verdict.OK or hashlib.sha256(payload).digest() != digest:
        return None
    return payload


# ---- argument keys --------------------------------------------------------------

def argument_key(args: tuple[Any, ...], kwds: dict[Any, Any]) -> Optional[str]:
    """SHA-256 of the pickled arguments in canonical form (sets and dicts, at
    any depth of lists, tuples, sets and dicts, in a sorted order, so the key
    is the same in every interpreter whatever its hash seed); None if they do
    not pickle (then the item is simply run, and not stored)."""
    try:
        data = pickle.dumps(canonical((args, kwds) if kwds else args), protocol=PROTOCOL)
    except Exception:
        return None
    return hashlib.sha256(data).hexdigest()


class _SetOf(tuple[Any, ...]):
    """A set's elements in canonical order (never equal to a plain tuple's pickle)."""


class _FrozenSetOf(tuple[Any, ...]):
    pass


class _DictOf(tuple[Any, ...]):
    """A dict's (key, value) pairs in canonical order of the keys."""


# Pickled by these names whatever module holds them: keys must not change.
for _cls in (_SetOf, _FrozenSetOf, _DictOf):
    _cls.__module__ = "poolguard.checkpoint"


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
    return pickle.dumps(obj, protocol=PROTOCOL)
