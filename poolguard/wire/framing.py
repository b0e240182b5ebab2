"""Frames on the pipes: ``multiprocessing.connection``'s length prefix, so the
worker side reads and writes them with an ordinary ``Connection``.  Written
(``frame``) and parsed (``split_frames``) here only."""
from __future__ import annotations

import struct
from typing import List, Tuple

LENGTH = struct.Struct("!i")         # the frame's length; -1: a LONG_LENGTH follows
LONG_LENGTH = struct.Struct("!Q")


def frame(head: bytes, body: bytes = b"") -> List[bytes]:
    """*head* + *body* length-prefixed as ``Connection.send_bytes`` does, as
    buffers for one ``os.writev``: a large body is not copied to join them."""
    n = len(head) + len(body)
    prefix = LENGTH.pack(-1) + LONG_LENGTH.pack(n) if n > 0x7FFFFFFF else LENGTH.pack(n)
    if len(body) < 1 << 16:
        return [prefix + head + body]
    return [prefix + head, body]


def split_frames(buf: bytearray) -> Tuple[List[bytes], int]:
    """The complete frames at the start of *buf*, and how many bytes they took."""
    frames = []
    pos = 0
    while len(buf) - pos >= LENGTH.size:
        (n,) = LENGTH.unpack_from(buf, pos)
        head = LENGTH.size
        if n == -1:
            if len(buf) - pos < LENGTH.size + LONG_LENGTH.size:
                break
            (n,) = LONG_LENGTH.unpack_from(buf, pos + LENGTH.size)
            head += LONG_LENGTH.size
        if len(buf) - pos - head < n:
            break
        frames.append(bytes(buf[pos + head:pos + head + n]))
        pos += head + n
    return frames, pos
