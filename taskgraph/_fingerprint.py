"""File fingerprints: what a file looked like, and whether it still does.

Leaf module: imports only the standard library and xxhash.

Three kinds of fingerprint, chosen per task by ``hash_algorithm``:

* ``'sizetimestamp'``: size and ``st_mtime_ns``. Cheapest; a touched file counts
  as changed.
* ``'exists'``: only that the path exists.
* a content hash (any xxhash name such as ``'xxh3_128'``, or any hashlib name
  such as ``'md5'``): the digest of the bytes. A touched but unchanged file
  counts as unchanged.

Cheap checks come first (doit's rule): stat once; a size change is a change
without reading anything; content digests are looked up in a digest cache keyed
by ``(path, device, inode, size, mtime_ns, ctime_ns)`` so an unchanged file is
never read twice.

**Racily clean files.** A filesystem's timestamps tick coarsely (a few
milliseconds on Linux, one or two seconds on FAT, HFS+ or ext3), so a file
rewritten with the same size within the tick in which it was fingerprinted
keeps its mtime. A fingerprint whose mtime lies within :func:`racy_window_ns`
of the moment it was taken is therefore not trusted on its own: a content
digest (xxh3-128) is taken with it and compared on the next check, and a cached
digest is only reused when the file's mtime was clearly older than the moment
it was hashed.
"""

from __future__ import annotations

import os
import stat as stat_module
import time
from typing import TYPE_CHECKING, Protocol

import xxhash

from taskgraph._frozen import frozen

if TYPE_CHECKING:
    import hashlib

__all__ = [
    "CHECK_ALGORITHM",
    "CachedDigest",
    "Change",
    "DigestCache",
    "FileStat",
    "Fingerprint",
    "MemoryDigestCache",
    "compare",
    "file_stat",
    "hash_file",
    "is_content_algorithm",
    "racy_window_ns",
    "take",
    "validate_algorithm",
]

#: The content hash used to settle racily clean ``sizetimestamp`` fingerprints.
CHECK_ALGORITHM = "xxh3_128"

_XXHASH_ALGORITHMS = {
    "xxh32": xxhash.xxh32,
    "xxh64": xxhash.xxh64,
    "xxh3_64": xxhash.xxh3_64,
    "xxh3_128": xxhash.xxh3_128,
    "xxh128": xxhash.xxh128,
}
_BUFFER_SIZE = 1 << 20
# A racily clean file this large is worth waiting out its timestamp tick for
# (at most the racy window) rather than being read again on the next run.
_SETTLE_BYTES = 64 << 20


def validate_algorithm(algorithm: object) -> str | None:
    """Return an error message if ``algorithm`` is not a known hash mode, else None."""
    if not isinstance(algorithm, str):
        return f"hash_algorithm must be a string, got {type(algorithm).__name__}"
    if algorithm in ("sizetimestamp", "exists") or algorithm in _XXHASH_ALGORITHMS:
        return None
    import hashlib

    if algorithm in hashlib.algorithms_available:
        try:
            hashlib.new(algorithm).hexdigest()
        except TypeError:
            # shake_* digests need a length; they make no sense for files here.
            return f"hash_algorithm {algorithm!r} needs a digest length; use 'xxh3_128' or 'sha256'"
        return None
    known = ", ".join(sorted(["sizetimestamp", "exists", *_XXHASH_ALGORITHMS]))
    return (
        f"unknown hash_algorithm {algorithm!r}; use one of {known} "
        "or a name from hashlib.algorithms_available such as 'md5' or 'sha256'"
    )


def is_content_algorithm(algorithm: str) -> bool:
    """True when ``algorithm`` fingerprints file contents."""
    return algorithm not in ("sizetimestamp", "exists")


def _hashlib_new(algorithm: str) -> hashlib._Hash:
    import hashlib  # only for hashlib's algorithms: OpenSSL's is a slow import

    return hashlib.new(algorithm)


def hash_file(path: str, algorithm: str, size: int | None = None) -> str:
    """Return the hex digest of the file at ``path``.

    ``size`` (the file's size from a stat just taken) lets a small file be
    read in one call into a buffer of its own size: a fresh 1 MiB buffer
    costs more than reading a file of a few bytes.

    Raises:
        OSError: if the file cannot be read.
    """
    factory = _XXHASH_ALGORITHMS.get(algorithm)
    hasher = factory() if factory is not None else _hashlib_new(algorithm)
    with open(path, "rb", buffering=0) as stream:
        if size is not None and size < _BUFFER_SIZE:
            # One more byte than expected tells a file that grew meanwhile.
            data = stream.read(size + 1)
            hasher.update(data)
            if len(data) <= size:
                return str(hasher.hexdigest())
        buffer = bytearray(_BUFFER_SIZE)
        view = memoryview(buffer)
        while True:
            count = stream.readinto(buffer)
            if not count:
                break
            hasher.update(view[:count])
    return str(hasher.hexdigest())


@frozen
class FileStat:
    """The parts of ``os.stat`` that fingerprints use."""

    size: int
    mtime_ns: int
    ctime_ns: int
    dev: int
    ino: int
    is_dir: bool


def file_stat(path: str) -> FileStat | None:
    """Stat ``path``; None when it does not exist or cannot be a path at all."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        # ValueError: embedded NUL; OSError: missing, name too long, no access.
        return None
    return FileStat(
        st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino,
        stat_module.S_ISDIR(st.st_mode),
    )


def racy_window_ns(mtime_ns: int) -> int:
    """How close to "now" an mtime must be before it cannot be trusted.

    A whole-second mtime suggests a filesystem with one- or two-second
    timestamps (FAT, HFS+, ext3): two seconds. Otherwise 20 ms, which covers
    the kernel's coarse clock tick (1 to 10 ms) that stamps file times.
    """
    if mtime_ns % 1_000_000_000 == 0:
        return 2_000_000_000
    return 20_000_000


def _is_racy(mtime_ns: int, taken_at_ns: int) -> bool:
    return mtime_ns >= taken_at_ns - racy_window_ns(mtime_ns)


@frozen
class CachedDigest:
    """A digest cache entry: the stat a digest was computed for, and when."""

    stat: FileStat
    digest: str
    hashed_at_ns: int


class DigestCache(Protocol):
    """Where content digests are remembered between checks (the ledger)."""

    def lookup_digest(self, path: str, algorithm: str) -> CachedDigest | None: ...

    def store_digest(self, path: str, algorithm: str, entry: CachedDigest) -> None: ...


class MemoryDigestCache:
    """A digest cache in a dict: used in workers, whose entries the scheduler
    then writes to the ledger's cache."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], CachedDigest] = {}

    def lookup_digest(self, path: str, algorithm: str) -> CachedDigest | None:
        return self.entries.get((path, algorithm))

    def store_digest(self, path: str, algorithm: str, entry: CachedDigest) -> None:
        self.entries[(path, algorithm)] = entry


def _digest(
    path: str, st: FileStat, algorithm: str, cache: DigestCache | None, racy_since_ns: int | None = None
) -> str:
    """Content digest of ``path`` whose current stat is ``st``, via the cache
    (an entry hashed in the racy window of its mtime only if hashed at or
    after ``racy_since_ns``: see :func:`take`)."""
    if cache is not None:
        entry = cache.lookup_digest(path, algorithm)
        if (
            entry is not None
            and entry.stat == st
            and (not _is_racy(st.mtime_ns, entry.hashed_at_ns)
                 or (racy_since_ns is not None and entry.hashed_at_ns >= racy_since_ns))
        ):
            return entry.digest
    hashed_at_ns = time.time_ns()
    digest = hash_file(path, algorithm, st.size)
    if cache is not None:
        after = file_stat(path)
        # Only remember the digest if the file did not change while we read it.
        if after == st:
            cache.store_digest(path, algorithm, CachedDigest(st, digest, hashed_at_ns))
    return digest


@frozen
class Fingerprint:
    """What a file looked like when it was fingerprinted.

    Attributes:
        mode: the ``hash_algorithm`` it was taken with.
        size: size in bytes (-1 for ``'exists'``).
        mtime_ns: modification time (0 for ``'exists'``).
        digest: content digest for content modes; for ``'sizetimestamp'`` an
            xxh3-128 digest only when the fingerprint was racily clean; else None.
        taken_at_ns: wall-clock time the fingerprint was taken.
    """

    mode: str
    size: int
    mtime_ns: int
    digest: str | None
    taken_at_ns: int


def take(path: str, mode: str, cache: DigestCache | None = None, *, trust_racy: bool = False) -> Fingerprint | None:
    """Fingerprint ``path`` with ``mode``; None if it does not exist.

    Directories are fingerprinted by size and mtime whatever the mode, since
    their contents cannot be hashed as a stream.

    ``trust_racy``: a racily clean ``'sizetimestamp'`` fingerprint may take
    its check digest from a cache entry for this very stat even if that
    digest was itself taken in the racy window, provided it was taken at
    most that window ago (:func:`racy_window_ns`; a dependency's target,
    hashed as it was recorded a moment before). Only for a fingerprint that is recorded: had
    the file been rewritten within the same tick since, the record holds the
    older content's digest, and the next check (which trusts no racy digest)
    finds it changed and runs the task again. A rewrite that puts the old
    bytes back within the tick would go unseen, as it would between any
    digest and the call that reads the file: the reuse widens that moment by
    at most the racy window. Not for a digest used at once as the content's
    (the shared cache's key).

    Raises:
        OSError: if a content mode cannot read the file.
    """
    taken_at_ns = time.time_ns()
    st = file_stat(path)
    if st is None:
        return None
    if mode == "exists":
        return Fingerprint(mode, -1, 0, None, taken_at_ns)
    window = racy_window_ns(st.mtime_ns)
    wait_ns = st.mtime_ns + window - taken_at_ns
    if st.size >= _SETTLE_BYTES and not st.is_dir and 0 < wait_ns <= window:
        # Just written and large: wait until its timestamp tick has passed, so
        # the fingerprint (and any digest) is trustworthy on its own and the
        # file is not read again on the next run. (Not for an mtime in the
        # future, from another machine's clock or an archive: it may be hours
        # away, and the file is hashed instead.)
        time.sleep(wait_ns / 1e9)
        taken_at_ns = time.time_ns()
        st = file_stat(path)
        if st is None:
            return None
    if st.is_dir:
        return Fingerprint(mode, st.size, st.mtime_ns, None, taken_at_ns)
    if is_content_algorithm(mode):
        return Fingerprint(mode, st.size, st.mtime_ns, _digest(path, st, mode, cache), taken_at_ns)
    digest = None
    if _is_racy(st.mtime_ns, taken_at_ns):
        # A racy digest is reused only if taken within the racy window before now (see above).
        since = taken_at_ns - racy_window_ns(st.mtime_ns) if trust_racy else None
        digest = _digest(path, st, CHECK_ALGORITHM, cache, since)
    return Fingerprint(mode, st.size, st.mtime_ns, digest, taken_at_ns)


@frozen
class Change:
    """How a file differs from its recorded fingerprint.

    ``what`` is one of ``'missing'``, ``'mode'``, ``'size'``, ``'mtime'``,
    ``'content'``; ``old`` and ``new`` are the compared values.
    """

    path: str
    what: str
    old: object
    new: object

    def describe(self) -> str:
        """One line for logs and ``taskgraph explain``."""
        if self.what == "missing":
            return f"{self.path} is missing"
        old, new = self.old, self.new
        if self.what == "mtime" and isinstance(old, int) and isinstance(new, int):
            old, new = _format_ns(old), _format_ns(new)
        elif self.what == "content" and isinstance(old, str) and isinstance(new, str):
            old, new = old[:12], new[:12]
        elif self.what == "size":
            old, new = f"{old} bytes", f"{new} bytes"
        return f"{self.path}: {self.what} changed ({old} -> {new})"


def _format_ns(ns: int) -> str:
    """A nanosecond timestamp, readable and still precise."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}"


def compare(
    path: str, recorded: Fingerprint, mode: str, cache: DigestCache | None = None, st: FileStat | None = None,
) -> Change | None:
    """Return how ``path`` differs from ``recorded`` under ``mode``, or None
    (``st``: its stat if just taken, else it is stat'ed here).

    Raises:
        OSError: if a content digest is needed and the file cannot be read.
    """
    if st is None:
        st = file_stat(path)
    if st is None:
        return Change(path, "missing", "exists", None)
    if recorded.mode != mode:
        return Change(path, "mode", recorded.mode, mode)
    if mode == "exists":
        return None
    if st.is_dir:
        if (st.size, st.mtime_ns) != (recorded.size, recorded.mtime_ns):
            return Change(path, "mtime", recorded.mtime_ns, st.mtime_ns)
        return None
    if st.size != recorded.size:
        return Change(path, "size", recorded.size, st.size)
    if is_content_algorithm(mode):
        # No shortcut on size+mtime: mtimes can be set back (cp -p, rsync -t).
        # The digest cache keys on ctime and inode too, which cannot.
        digest = _digest(path, st, mode, cache)
        if digest != recorded.digest:
            return Change(path, "content", recorded.digest, digest)
        return None
    if st.mtime_ns != recorded.mtime_ns:
        return Change(path, "mtime", recorded.mtime_ns, st.mtime_ns)
    if recorded.digest is not None:
        digest = _digest(path, st, CHECK_ALGORITHM, cache)
        if digest != recorded.digest:
            return Change(path, "content", recorded.digest, digest)
    return None
