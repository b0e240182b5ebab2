"""Frames on the pipes: ``multiprocessing.connection``'s length prefix, so the
worker side reads and writes them with an ordinary ``Connection``.  Written
(``frame``) and parsed (``split_frames``, and the worker's ``FrameInput``)
here only."""
from __future__ import annotations

import collections
import os
import struct
from typing import Deque, List, Optional, Tuple, Union

LENGTH = struct.Struct("!i")         # the frame's length; -1: a LONG_LENGTH follows
LONG_LENGTH = struct.Struct("!Q")


def frame(head: bytes, body: bytes = b"") -> Tuple[bytes, ...]:
    """*head* + *body* length-prefixed as ``Connection.send_bytes`` does, as
    buffers for one ``os.writev``: a large body is not copied to join them.
    (A tuple of bytes: the garbage collector stops tracking it, which counts
    with 20,000 futures pending.)"""
    n = len(head) + len(body)
    prefix = LENGTH.pack(-1) + LONG_LENGTH.pack(n) if n > 0x7FFFFFFF else LENGTH.pack(n)
    if len(body) < 1 << 16:
        return (prefix + head + body,)
    return (prefix + head, body)


def split_frames(buf: Union[bytes, bytearray]) -> Tuple[List[bytes], int]:
    """The complete frames at the start of *buf*, and how many bytes they took."""
    with memoryview(buf) as view:   # one copy of each frame, not two
        return _split(buf, view)


def _split(buf: Union[bytes, bytearray], view: memoryview) -> Tuple[List[bytes], int]:
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
        frames.append(bytes(view[pos + head:pos + head + n]))
        pos += head + n
    return frames, pos


class FrameInput:
    """The worker's blocking reader of its task pipe: one read takes every
    frame already there, and a large frame is read straight into its own
    buffer (no joining of pieces)."""

    def __init__(self, fd: int, read_size: int = 1 << 20):
        self.fd = fd
        self._read_size = read_size
        self._buf = bytearray()
        self._frames: Deque[Union[bytes, bytearray]] = collections.deque()

    def recv(self) -> Union[bytes, bytearray]:
        """The next frame's content; EOFError when the pipe is closed."""
        while not self._frames:
            data = os.read(self.fd, self._read_size)
            if not data:
                raise EOFError
            if self._buf:
                self._buf += data
                frames, pos = split_frames(self._buf)
                del self._buf[:pos]
            else:   # the usual case: frames straight from what was read
                frames, pos = split_frames(data)
                self._buf += data[pos:]
            self._frames.extend(frames)
            if not frames:
                large = self._read_large()
                if large is not None:
                    return large
        return self._frames.popleft()

    def wait_for(self, content: bytes, stop: bytes) -> None:
        """Read until a frame that is *content*, or *stop*, or the end; every
        other frame (a task sent ahead) stays queued, in order, and so does
        *stop*."""
        held: List[Union[bytes, bytearray]] = []
        try:
            while True:
                data = self.recv()
                if data == content:
                    return
                held.append(data)
                if data == stop:
                    return
        except EOFError:
            return   # the parent is gone: the next recv() says so again
        finally:
            self._frames.extendleft(reversed(held))

    def _read_large(self) -> Optional[bytearray]:
        """A frame larger than one read: the rest goes into a buffer of its size."""
        buf = self._buf
        if len(buf) < LENGTH.size:
            return None
        (n,) = LENGTH.unpack_from(buf)
        head = LENGTH.size
        if n == -1:
            if len(buf) < head + LONG_LENGTH.size:
                return None
            (n,) = LONG_LENGTH.unpack_from(buf, head)
            head += LONG_LENGTH.size
        if n <= self._read_size:
            return None
        out = bytearray(n)
        got = len(buf) - head
        out[:got] = buf[head:]
        del buf[:]
        view = memoryview(out)
        while got < n:
            count = os.readv(self.fd, [view[got:]])
            if not count:
                raise EOFError
            got += count
        return out
