"""Claims: which process on a workspace is running which task right now.

Leaf module: standard library only.

A claim is a POSIX byte-range lock (``fcntl.lockf``) on one byte of the file
``taskgraph_ledger.sqlite.claims`` in the workspace, at an offset derived from
the task's record key. The kernel releases every lock of a process that dies,
however it dies, so there is no stale claim to detect and nothing to clean up;
taking and releasing a claim is one system call each, with no disk write. Two
record keys share a byte with probability 2^-62: the only effect would be one
task waiting for an unrelated one.

Locks are per process, so the threads of one process never block each other
(one graph never runs the same task twice anyway). Where ``fcntl`` is missing
(Windows) claims always succeed: processes sharing a workspace there may run
the same task at the same time, as with natcap taskgraph.
"""

from __future__ import annotations

import os

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

CLAIMS_SUFFIX = ".claims"


def _offset(record_key: str) -> int:
    return int(record_key[:15], 16) + 1  # 60 bits; offset 0 is left free


class Claims:
    """Byte-range locks on the workspace's claims file, one per running task."""

    def __init__(self, ledger_path: str) -> None:
        self.path = ledger_path + CLAIMS_SUFFIX
        self._fd: int | None = None
        if fcntl is not None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # the owner's only
        self._held: set[str] = set()

    def claim(self, record_key: str) -> bool:
        """Take the claim on a task; False if another process holds it."""
        if self._fd is None or record_key in self._held:
            return True
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _offset(record_key))
        except OSError:  # EAGAIN / EACCES: another process holds it
            return False
        self._held.add(record_key)
        return True

    def held_elsewhere(self, record_key: str) -> bool:
        """Whether another process holds the claim (without taking it)."""
        if self._fd is None:
            return False
        if not self.claim(record_key):
            return True
        self.release(record_key)
        return False

    def release(self, record_key: str) -> None:
        """Give up a claim (after the task's record is committed)."""
        if self._fd is None or record_key not in self._held:
            return
        self._held.discard(record_key)
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, _offset(record_key))

    def close(self) -> None:
        """Release every claim of this process."""
        if self._fd is not None:
            os.close(self._fd)  # drops all of this file's locks of this process
            self._fd = None
            self._held.clear()
