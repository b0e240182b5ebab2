"""File I/O of the store, for directories that others write into and that
many processes on many hosts use at once (NFS included, so no ``flock``).

- A file is read only if it is a regular file: opened with ``O_NONBLOCK``
  (a FIFO planted at the path would block ``open`` forever) and
  ``O_NOFOLLOW``, checked with ``fstat``, and read only as far as asked.
- A file that is replaced is written to a unique temporary file in its
  directory and renamed over it (readers see the old file or the new one);
  a file that must not be replaced once there (the key, a step's identity)
  is linked into place, which fails if one exists, so readers see it whole
  or not at all and the first writer wins everywhere.
- The store's own reads and writes go through ``pread``/``pwrite``: system
  calls nothing else in a worker makes, so the fault tests inject errors
  into exactly these with ``strace``.
"""
from __future__ import annotations

import errno
import os
import stat

_READ_FLAGS = (os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
# Where a file system has no hard links (link(2) refused as unsupported).
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


class NotRegularFile(OSError):
    """What is at the path is a FIFO, a device, a directory or a socket."""


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """A descriptor on the regular file at *path*, and its status.  Never
    blocks; a symbolic link raises ELOOP, anything else NotRegularFile."""
    fd = os.open(path, _READ_FLAGS)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(errno.EINVAL, f"not a regular file ({_kind(info.st_mode)})",
                                 path)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_at(fd: int, size: int, offset: int) -> bytes:
    """Up to *size* bytes from *offset* (fewer only at the end of the file)."""
    parts = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def read_small(path: str, limit: int) -> bytes:
    """The content of the regular file at *path*, refused (EFBIG) past
    *limit* bytes."""
    return read_file(path, limit)[0]


def read_file(path: str, limit: int) -> tuple[bytes, os.stat_result]:
    """read_small's content, and the status of the very file read."""
    fd, info = open_regular(path)
    try:
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"{info.st_size} bytes, more than {limit} expected",
                          path)
        return read_at(fd, limit, 0), info
    finally:
        os.close(fd)


def write_temp(directory: str, name: str, data: bytes, mode: int = 0o644,
               fsync: bool = False) -> str:
    """*data* in a new, unique temporary file in *directory*; its path."""
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, _CREATE_FLAGS, mode)
    try:
        try:
            view = memoryview(data)
            offset = 0
            while offset < len(view):
                offset += os.pwrite(fd, view[offset:], offset)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        remove(tmp)
        raise
    return tmp


def make_dirs(directory: str, mode: int = 0o777, fsync: bool = False) -> None:
    """*directory* and its parents; one made by another process at the same
    moment is fine.  With *fsync*, the new names are made durable."""
    parent = os.path.dirname(directory)
    if parent != directory and not os.path.isdir(parent):
        make_dirs(parent, fsync=fsync)        # *mode* is the leaf's, as in os.makedirs
    try:
        os.mkdir(directory, mode)
    except FileExistsError:
        return
    except OSError:
        if not os.path.isdir(directory):   # not the race: a real failure
            raise
        return
    if fsync:
        sync_dir(parent)


def write_atomically(path: str, data: bytes, fsync: bool = False) -> None:
    """Replace *path* by *data*: readers see the old file or the new one,
    never a part.  The directory is made if missing.  With *fsync*, the
    content and the rename are on stable storage when this returns."""
    directory, name = os.path.split(path)
    try:
        tmp = write_temp(directory, name, data, fsync=fsync)
    except FileNotFoundError:   # the first entry of its directory
        make_dirs(directory, fsync=fsync)
        tmp = write_temp(directory, name, data, fsync=fsync)
    try:
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise
    if fsync:
        sync_dir(directory)


def link_into_place(tmp: str, path: str) -> bool:
    """Give the whole file *tmp* the name *path* unless *path* exists; True
    if this call made it.  *tmp* is removed either way."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        # On NFS the reply to a link that succeeded can be lost and the
        # retry answer EEXIST: then tmp has two names.
        try:
            return os.stat(tmp).st_nlink == 2
        except OSError:
            return False
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        if os.path.lexists(path):   # no links here: a rename; a tie leaves one whole file
            return False
        os.rename(tmp, path)
        return True
    finally:
        remove(tmp)


def create_once(path: str, data: bytes, mode: int = 0o644, fsync: bool = False) -> bool:
    """Make *path* hold *data*, whole, unless it exists; True if made here."""
    directory, name = os.path.split(path)
    made = link_into_place(write_temp(directory, name, data, mode, fsync), path)
    if made and fsync:
        sync_dir(directory)
    return made


def sync_dir(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:   # gone already
        pass


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return f"mode {mode:o}"
