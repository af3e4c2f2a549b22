"""The file operations the shared cache is built on: durable writes (fsync of
a file and of its directory), mode bits by descriptor, and copies that share
blocks where the filesystem can (reflink), else copy in the kernel
(``copy_file_range``), else through a buffer, hashing what they copy.

Leaf module: imports the standard library and xxhash only.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any

import xxhash

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_BUFFER_SIZE = 1 << 20
# Linux's FICLONE ioctl (_IOW(0x94, 9, int)): share the source's extents.
_FICLONE = 0x40049409


def fsync_dir(path: str) -> None:
    """Make a rename or link in the directory ``path`` durable (POSIX)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is done
    finally:
        os.close(fd)


def chmod(fd: int, path: str, mode: int) -> None:
    """Set a file's mode bits (by descriptor where the platform can)."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:  # pragma: no cover - Windows before Python 3.13
        os.chmod(path, mode)


def write_all(fd: int, data: memoryview) -> None:
    """Write all of ``data`` (``os.write`` may write less than asked)."""
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _read_hashing(stream: Any, write: Callable[[memoryview], None] | None) -> tuple[str, int]:
    """Read the open binary ``stream`` to its end, hashing what is read and
    handing each chunk to ``write`` if given: (xxh3-128 digest, size)."""
    hasher = xxhash.xxh3_128()
    buffer = bytearray(_BUFFER_SIZE)
    view = memoryview(buffer)
    size = 0
    while True:
        count = stream.readinto(buffer)
        if not count:
            break
        hasher.update(view[:count])
        if write is not None:
            write(view[:count])
        size += count
    return str(hasher.hexdigest()), size


def _copy_hashing(source: Any, fd: int) -> tuple[str, int]:
    """Copy the open binary ``source`` to ``fd`` while hashing what is copied."""
    return _read_hashing(source, lambda chunk: write_all(fd, chunk))


def hash_fd(fd: int) -> tuple[str, int]:
    """xxh3-128 digest and size of an open file's whole content."""
    os.lseek(fd, 0, os.SEEK_SET)
    with open(fd, "rb", buffering=0, closefd=False) as stream:
        return _read_hashing(stream, None)


def _reflink(source_fd: int, fd: int) -> bool:
    """Make ``fd`` share the source's blocks (btrfs, XFS, bcachefs, ...): no
    data is copied, and a later write to either file copies only what it
    changes, so an edit in one workspace never reaches another. False where
    the filesystem cannot."""
    if fcntl is None or not sys.platform.startswith("linux"):
        return False
    try:
        fcntl.ioctl(fd, _FICLONE, source_fd)
    except OSError:
        return False
    return True


def _kernel_copy(source_fd: int, fd: int) -> bool:
    """Copy with ``copy_file_range`` (Linux): no trip through this process's
    memory, and a server-side copy on NFS 4.2. False where it is not
    available (then nothing was written)."""
    copy_file_range = getattr(os, "copy_file_range", None)
    if copy_file_range is None:
        return False
    offset = 0
    while True:
        try:
            count = copy_file_range(source_fd, fd, 1 << 30, offset, offset)
        except OSError as error:
            if offset == 0 and error.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                                               errno.EBADF, errno.EPERM):
                return False
            raise
        if not count:
            return True
        offset += count


def clone_or_copy(source: Any, fd: int) -> tuple[str, int]:
    """Fill ``fd`` with the bytes of ``source``: a reflink where possible, else
    a copy; return the xxh3-128 digest and size of what ``fd`` now holds
    (read back from it, so the digest is that of the bytes written)."""
    if _reflink(source.fileno(), fd) or _kernel_copy(source.fileno(), fd):
        return hash_fd(fd)
    return _copy_hashing(source, fd)


def write_new(path: str, data: bytes, mode: int | None = None, sync: bool = True, create_mode: int = 0o600) -> None:
    """Write ``data`` to a new file at ``path`` (there must be none), then set
    its mode bits to ``mode`` (if given) and fsync it (if ``sync``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, create_mode)
    try:
        write_all(fd, memoryview(data))
        if mode is not None:
            chmod(fd, path, mode)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["chmod", "clone_or_copy", "fsync_dir", "hash_fd", "write_all", "write_new"]
