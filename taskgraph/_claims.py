"""Claims: which process on a workspace is running which task right now.

Leaf module: standard library only.

A claim is a POSIX byte-range lock (``fcntl.lockf``) on one byte of the file
``taskgraph_ledger.sqlite.claims`` in the workspace, at an offset derived from
the task's record key. The kernel releases every lock of a process that dies,
however it dies, so there is no stale claim to detect and nothing to clean up;
taking and releasing a claim is one system call each, with no disk write. Two
record keys share a byte with probability 2^-62: the only effect would be one
task waiting for an unrelated one.

POSIX locks belong to a process, not to a descriptor, and closing any
descriptor of the file drops all of the process's locks on it. So every
:class:`Claims` of one process on one workspace (two ``TaskGraph`` objects on
the same workspace) shares one descriptor, closed with the last of them, and
the claims between them are kept in this process: a task one graph is running
is held for the others as it is for other processes. Where ``fcntl`` is
missing (Windows) claims always succeed: processes sharing a workspace there
may run the same task at the same time, as with natcap taskgraph.
"""

from __future__ import annotations

import os
import threading

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

CLAIMS_SUFFIX = ".claims"


def _offset(record_key: str) -> int:
    return int(record_key[:15], 16) + 1  # 60 bits; offset 0 is left free


def _try_lock(fd: int, record_key: str) -> bool:
    """Take a task's byte without waiting; False if another process holds it."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _offset(record_key))
    except OSError:  # EAGAIN / EACCES
        return False
    return True


class _File:
    """The one descriptor of this process on one claims file, and which
    :class:`Claims` of this process holds each claim."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0
        self.owners: dict[str, Claims] = {}


#: (pid, device, inode) of a claims file -> this process's descriptor on it.
_FILES: dict[tuple[int, int, int], _File] = {}
_FILES_LOCK = threading.Lock()


class Claims:
    """Byte-range locks on the workspace's claims file, one per running task."""

    def __init__(self, ledger_path: str) -> None:
        self.path = ledger_path + CLAIMS_SUFFIX
        self._file: _File | None = None
        self._id: tuple[int, int, int] | None = None
        if fcntl is not None:
            self._open()

    def _open(self) -> None:
        with _FILES_LOCK:
            # Never open a second descriptor while one is held: closing it
            # would drop this process's locks. os.stat opens nothing.
            try:
                info = os.stat(self.path)
                shared = _FILES.get((os.getpid(), info.st_dev, info.st_ino))
            except FileNotFoundError:
                shared = None
            if shared is None:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # the owner's only
                info = os.fstat(fd)
                shared = _FILES[(os.getpid(), info.st_dev, info.st_ino)] = _File(fd)
            self._id = (os.getpid(), info.st_dev, info.st_ino)
            shared.users += 1
            self._file = shared

    def claim(self, record_key: str) -> bool:
        """Take the claim on a task; False if another process, or another
        graph of this process, holds it."""
        shared = self._file
        if shared is None:
            return True
        with _FILES_LOCK:
            owner = shared.owners.get(record_key)
            if owner is not None:
                return owner is self
            if not _try_lock(shared.fd, record_key):
                return False
            shared.owners[record_key] = self
            return True

    def held_elsewhere(self, record_key: str) -> bool:
        """Whether another process or another graph of this process holds the
        claim (without taking it)."""
        shared = self._file
        if shared is None:
            return False
        with _FILES_LOCK:
            owner = shared.owners.get(record_key)
            if owner is not None:
                return owner is not self
            if not _try_lock(shared.fd, record_key):
                return True
            fcntl.lockf(shared.fd, fcntl.LOCK_UN, 1, _offset(record_key))
            return False

    def release(self, record_key: str) -> None:
        """Give up a claim (after the task's record is committed)."""
        shared = self._file
        if shared is None:
            return
        with _FILES_LOCK:
            if shared.owners.get(record_key) is self:
                del shared.owners[record_key]
                fcntl.lockf(shared.fd, fcntl.LOCK_UN, 1, _offset(record_key))

    def close(self) -> None:
        """Release every claim of this graph; the last user closes the file."""
        shared, self._file = self._file, None
        if shared is None:
            return
        with _FILES_LOCK:
            for key in [key for key, owner in shared.owners.items() if owner is self]:
                del shared.owners[key]
                fcntl.lockf(shared.fd, fcntl.LOCK_UN, 1, _offset(key))
            shared.users -= 1
            if shared.users == 0:
                os.close(shared.fd)
                if self._id is not None and _FILES.get(self._id) is shared:
                    del _FILES[self._id]
