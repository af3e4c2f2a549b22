"""The workspace's secret and the authentication codes of stored results.

Owns the key file beside the ledger (``taskgraph_ledger.sqlite.key``: 32
random bytes, mode 0600, created atomically on first use), the HMAC-SHA256 of
a stored result and schema 2's older HMAC, and the private files taskgraph
creates in a workspace. Leaf module: the standard library and ``_errors``;
``hashlib`` and ``hmac`` are imported by the functions that use them, so a
graph that stores no result never loads them.

Stored results are pickles, and unpickling runs code: a result is unpickled
only when its HMAC, keyed by this secret, verifies (see ``_ledger``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from taskgraph._errors import LedgerError

LOGGER = logging.getLogger("taskgraph.Task")

#: The workspace's secret for the HMAC of stored results (beside the ledger).
KEY_SUFFIX = ".key"
_KEY_BYTES = 32
_MAC_CONTEXT = b"taskgraph stored result v2\0"
# Schema 2's HMAC: record key and bytes only (checked once, by the upgrade).
_MAC_CONTEXT_V1 = b"taskgraph stored result v1\0"
#: Files taskgraph creates in a workspace are for their owner's eyes only.
FILE_MODE = 0o600


def private_file(path: str, flags: int = os.O_RDWR) -> int:
    """Open (creating if missing) a file only its owner may read or write."""
    return os.open(path, flags | os.O_CREAT, FILE_MODE)


def _read_key(path: str) -> bytes | None:
    """The workspace key, or None if the file is damaged or not trustworthy
    (then it is moved aside with a warning)."""
    with open(path, "rb") as stream:
        info = os.fstat(stream.fileno())
        key = stream.read(_KEY_BYTES + 1)
    problem = None
    if len(key) != _KEY_BYTES:
        problem = f"it holds {len(key)} bytes instead of {_KEY_BYTES}"
    elif hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        problem = f"it belongs to another user (uid {info.st_uid})"
    if problem is None:
        if os.name == "posix" and info.st_mode & 0o077:  # (Windows has no such mode bits)
            # Others could read the secret: tighten, and say so.
            os.chmod(path, FILE_MODE)
            LOGGER.warning(
                "the taskgraph key %s was readable by other users; it is now readable by its "
                "owner only. If others may have copied it, delete it: stored results will "
                "then be computed again.", path,
            )
        return key
    aside = f"{path}.{time.strftime('%Y%m%dT%H%M%S')}.{os.urandom(3).hex()}.bad"
    os.rename(path, aside)
    LOGGER.warning(
        "the taskgraph key %s cannot be used because %s; it was moved to %s and a new key "
        "made, so tasks with stored results will run once.", path, problem, aside,
    )
    return None


def workspace_key(path: str, create: bool = True) -> bytes | None:
    """The secret keying the HMAC of stored results, made on first use.

    Creation is atomic: the random bytes are written to a private temporary
    file, which is then hard-linked to ``path``; the link fails if another
    process made the key first, and that key is used. None if there is no key
    and ``create`` is False.
    """
    for _ in range(3):
        try:
            key = _read_key(path)
        except FileNotFoundError:
            key = None
        if key is not None:
            return key
        if not create:
            return None
        temporary = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        fd = private_file(temporary, os.O_WRONLY | os.O_EXCL)
        try:
            os.write(fd, os.urandom(_KEY_BYTES))  # what secrets.token_bytes() reads
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        except OSError:
            # No hard links on this file system: an exclusive rename instead
            # (a reader may then briefly see no key, never half a key).
            if not os.path.exists(path):
                os.replace(temporary, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
    raise LedgerError(f"cannot make the taskgraph key {path}: it keeps being replaced or damaged")


def result_mac(key: bytes, record_key: str, run_key: str, value: bytes) -> bytes:
    """HMAC-SHA256 binding a stored result's bytes to its task's record key
    and to the exec key of the run that computed it (``run_key``: the input
    fingerprints of that run), so that the result of one run cannot stand in
    for another's."""
    return _sha256_mac(key, _MAC_CONTEXT + record_key.encode() + b"\0" + run_key.encode() + b"\0" + bytes(value))


def macs_equal(one: bytes, other: bytes) -> bool:
    """Whether two authentication codes are equal, in constant time."""
    import hmac

    return hmac.compare_digest(one, other)


def schema_2_mac(key: bytes, record_key: str, value: bytes) -> bytes:
    return _sha256_mac(key, _MAC_CONTEXT_V1 + record_key.encode() + b"\0" + bytes(value))


def _sha256_mac(key: bytes, message: bytes) -> bytes:
    import hashlib
    import hmac

    return hmac.new(key, message, hashlib.sha256).digest()
