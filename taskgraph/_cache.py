"""The shared target cache: finished work that other workspaces reuse.

Owns the directory: its layout, objects by digest, atomic writes,
digest-checked restores and the per-key lock. Imports the standard library,
xxhash, ``_cache_entry`` (manifests, the team key), ``_cache_files`` (file
operations) and ``_version`` (for the marker) only: it runs in worker
processes, beside ``_job``.

A cache is a directory, local or on a shared filesystem, that many
workspaces, processes and users read and write at once::

    CACHE/
      taskgraph-cache.json   marker: {"format": 1, ...}
      objects/ab/cdef...     file contents, named by their xxh3-128 digest (read-only)
      entries/12/3456...     one manifest per cache key
      locks                  byte-range locks: which process computes which key now
      tmp/                   files being written, renamed into place when complete
      quarantine/            objects that failed their digest check
      runs/                  one small JSON summary per run that used the cache

An *entry* (a manifest, ``_cache_entry``) says which object each target of a
task is, and which object its stored result is.

**Atomicity.** Every file is written under a temporary name in ``tmp/``,
fsync'd, then linked (objects: the first copy wins, so two processes putting
the same content end with one copy) or renamed (manifests) into place, and
the directory fsync'd. Objects are written before the manifest that names
them, so a reader never sees half an entry, and a process killed at any
moment leaves at most a temporary file (removed by ``prune``).

**Trust.** Targets are data: an object is materialised only if its bytes have
the digest its manifest names; a corrupt object is moved to ``quarantine/``
and the task runs. Stored results are pickles, and unpickling one runs code:
they are put and used only with a key file, and used only when the
manifest's MAC verifies with it.

**Who computes what.** A process about to compute a key that is not in the
cache takes a POSIX byte-range lock (``fcntl.lockf``) on one byte of
``locks``; another process that wants the same key waits for that lock, then
finds the entry and restores it instead of computing it again. The kernel
drops the locks of a process that dies.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import socket
import stat as stat_module
import time
from collections.abc import Iterator
from typing import Any

import xxhash

from taskgraph._cache_entry import (
    FORMAT,
    CacheUnusable,
    Entry,
    EntryProblem,
    StoredFile,
    decode_entry,
    encode_entry,
    who,
)
from taskgraph._cache_files import chmod, clone_or_copy, fsync_dir, write_new

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
#: Whether this platform has POSIX byte-range locks (not Windows).
_LOCKS = fcntl is not None

LOGGER = logging.getLogger("taskgraph.Task")

MARKER = "taskgraph-cache.json"
_SUBDIRS = ("objects", "entries", "tmp", "quarantine", "runs")
_MAX_MANIFEST_BYTES = 1 << 20


# -- the cache directory ------------------------------------------------------------------------


class Cache:
    """One cache directory. Cheap to make; every method is safe to call from
    several processes (and users) at once."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._locks_fd: int | None = None

    @classmethod
    def open(cls, root: str, create: bool = True) -> Cache:
        """The cache at ``root``, made (with its marker) if ``create`` and missing.

        Raises:
            CacheUnusable: if it cannot be made or read, is of a newer
                format, or (``create=False``) is not a taskgraph cache.
        """
        cache = cls(root)
        marker = os.path.join(cache.root, MARKER)
        try:
            if create:
                os.makedirs(cache.root, exist_ok=True)
                for name in _SUBDIRS:
                    cache._directory(os.path.join(cache.root, name))
                if not os.path.exists(marker):
                    cache._make_marker(marker)
                cache._make_locks()
            with open(marker, "rb") as stream:
                info = json.loads(stream.read(1 << 16))
        except FileNotFoundError as error:
            raise CacheUnusable(f"{cache.root} is not a taskgraph cache ({MARKER} not found)") from error
        except (OSError, ValueError) as error:
            raise CacheUnusable(f"cannot use {cache.root} as a taskgraph cache: {error}") from error
        version = info.get("format") if isinstance(info, dict) else None
        if version != FORMAT:
            raise CacheUnusable(
                f"{cache.root} is a taskgraph cache of format {version!r}; this taskgraph reads format "
                f"{FORMAT}: upgrade taskgraph, or use another directory"
            )
        return cache

    def _make_marker(self, marker: str) -> None:
        from taskgraph._version import __version__

        host, user = who()
        text = json.dumps({"format": FORMAT, "created_by": f"taskgraph {__version__}",
                           "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": host, "user": user})
        with self._scratch() as temporary:
            write_new(temporary, text.encode(), mode=0o444, create_mode=0o644)
            try:
                os.link(temporary, marker)
            except FileExistsError:
                pass
            except OSError:
                if not os.path.exists(marker):
                    os.replace(temporary, marker)
        fsync_dir(self.root)

    # -- names and permissions --

    def _root_mode(self) -> int:
        try:
            return stat_module.S_IMODE(os.stat(self.root).st_mode)
        except OSError:
            return 0o755

    def _directory(self, path: str) -> None:
        """Make a directory of the cache (and its missing parents within it)
        with the root's permission bits, whatever this process's umask: in a
        team's cache (``chmod 2775``) every member may write what another
        member's run made."""
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path)
        if parent != self.root and len(parent) > len(self.root):
            self._directory(parent)
        try:
            os.mkdir(path)
        except FileExistsError:
            return
        with contextlib.suppress(OSError):
            os.chmod(path, self._root_mode())

    def _make_locks(self) -> None:
        """The lock file, writable by whoever may write the cache (a lock
        needs a descriptor open for writing)."""
        path = os.path.join(self.root, "locks")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return  # there already (or not writable: runs then compute without locks)
        try:
            chmod(fd, path, 0o600 | (self._root_mode() & 0o066))
        finally:
            os.close(fd)

    def object_path(self, digest: str) -> str:
        return os.path.join(self.root, "objects", digest[:2], digest[2:])

    def entry_path(self, key: str) -> str:
        return os.path.join(self.root, "entries", key[:2], key[2:])

    def _temporary(self, directory: str | None = None, stem: str = "") -> str:
        folder = directory if directory is not None else os.path.join(self.root, "tmp")
        return os.path.join(folder, f"{stem}{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(6)}.tmp")

    @contextlib.contextmanager
    def _scratch(self) -> Iterator[str]:
        """A temporary name in ``tmp/``; what is left under it afterwards is removed."""
        temporary = self._temporary()
        try:
            yield temporary
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)

    def _entry_mode(self) -> int:
        """Manifests may be touched (a hit marks them used) by whoever may
        write the cache: group-writable in a group-writable cache."""
        return 0o644 | (self._root_mode() & stat_module.S_IWGRP)

    # -- reading --

    def read_entry(self, key: str, secret: bytes | None) -> Entry | None:
        """The entry for ``key``, or None if there is none.

        Raises:
            EntryProblem: if the manifest is damaged or untrusted.
        """
        path = self.entry_path(key)
        try:
            with open(path, "rb") as stream:
                data = stream.read(_MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise EntryProblem(f"its manifest cannot be read ({error})") from error
        if len(data) > _MAX_MANIFEST_BYTES:
            raise EntryProblem("its manifest is too large to be one")
        return decode_entry(data, secret, key)

    def touch(self, key: str) -> None:
        """Mark an entry used now (for least-recently-used pruning)."""
        with contextlib.suppress(OSError):
            os.utime(self.entry_path(key))

    def quarantine(self, digest: str, problem: str) -> None:
        """Move a corrupt object aside so it is never served again (a later
        put of the same content writes a good copy)."""
        aside = os.path.join(self.root, "quarantine", f"{digest}.{time.strftime('%Y%m%dT%H%M%S')}."
                                                      f"{secrets.token_hex(3)}")
        try:
            os.replace(self.object_path(digest), aside)
        except FileNotFoundError:
            return
        except OSError as error:
            LOGGER.warning("cannot move the corrupt cache object %s aside (%s)", self.object_path(digest), error)
            return
        LOGGER.warning("the cache object %s is corrupt (%s); it was moved to %s and is not used",
                       self.object_path(digest), problem, aside)

    def _open_object(self, digest: str, size: int) -> Any:
        path = self.object_path(digest)
        try:
            stream = open(path, "rb", buffering=0)
        except FileNotFoundError as error:
            raise EntryProblem(f"its object {digest[:12]} is missing") from error
        except OSError as error:
            raise EntryProblem(f"its object {digest[:12]} cannot be read ({error})") from error
        actual = os.fstat(stream.fileno()).st_size
        if actual != size:
            stream.close()
            problem = f"{actual} bytes instead of {size}"
            self.quarantine(digest, problem)
            raise EntryProblem(f"its object {digest[:12]} is corrupt ({problem})")
        return stream

    def read_object(self, digest: str, size: int) -> bytes:
        """The bytes of an object, checked against its digest.

        Raises:
            EntryProblem: if it is missing or corrupt (then it is quarantined).
        """
        with self._open_object(digest, size) as stream:
            data = bytes(stream.read())
        found = xxhash.xxh3_128_hexdigest(data)
        if found != digest:
            self.quarantine(digest, f"its digest is {found}")
            raise EntryProblem(f"its object {digest[:12]} is corrupt (its bytes have another digest)")
        return data

    def materialise(self, stored: StoredFile, destination: str) -> str:
        """Write an object's bytes beside ``destination`` under a temporary
        name, checked against its digest; return that name (the caller renames
        it into place). A reflink where the filesystem allows, else a copy:
        never a hard link, which an edit in one workspace would carry into
        the cache and every other workspace.

        Raises:
            EntryProblem: if the object is missing or corrupt (quarantined).
            OSError: if the destination cannot be written.
        """
        folder = os.path.dirname(destination) or "."
        os.makedirs(folder, exist_ok=True)
        temporary = self._temporary(folder, f".{os.path.basename(destination)[:80]}.taskgraph-restore.")
        with self._open_object(stored.digest, stored.size) as stream:
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                try:
                    digest, size = clone_or_copy(stream, fd)
                    chmod(fd, temporary, stored.mode & 0o7777)
                finally:
                    os.close(fd)
                if digest != stored.digest or size != stored.size:
                    self.quarantine(stored.digest, f"its bytes have digest {digest}")
                    raise EntryProblem(f"its object {stored.digest[:12]} is corrupt (its bytes have another digest)")
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        return temporary

    # -- writing --

    def store_file(self, path: str, digest: str | None) -> tuple[str, int, int]:
        """Put the file at ``path`` into the objects; returns (digest, size,
        bytes newly written). ``digest``, when known, lets an object that is
        already there be reused without reading the file.

        Raises:
            OSError: if it cannot be written (disk full, permissions).
        """
        if digest is not None:
            size = os.stat(path).st_size
            if self._reuse(digest, size):
                return digest, size, 0
        with self._scratch() as temporary:
            with open(path, "rb", buffering=0) as source:
                fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    digest, size = clone_or_copy(source, fd)
                    chmod(fd, temporary, 0o444)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            written = 0 if self._reuse(digest, size) else self._install(temporary, self.object_path(digest))
        return digest, size, written

    def store_bytes(self, data: bytes) -> tuple[str, int, int]:
        """Put ``data`` into the objects; returns (digest, size, bytes newly written)."""
        digest = xxhash.xxh3_128_hexdigest(data)
        if self._reuse(digest, len(data)):
            return digest, len(data), 0
        with self._scratch() as temporary:
            write_new(temporary, data, mode=0o444)
            written = self._install(temporary, self.object_path(digest))
        return digest, len(data), written

    def _reuse(self, digest: str, size: int) -> bool:
        """An object of the right size is there: mark it used now (so a
        concurrent prune keeps it) and reuse it."""
        path = self.object_path(digest)
        try:
            if os.stat(path).st_size != size:
                return False
        except OSError:
            return False
        with contextlib.suppress(OSError):
            os.utime(path)
        return True

    def _install(self, temporary: str, final: str) -> int:
        """Link a complete temporary file to its final name; returns its size
        if it was installed, 0 if another process installed one first."""
        folder = os.path.dirname(final)
        self._directory(folder)
        size = os.stat(temporary).st_size
        try:
            os.link(temporary, final)
        except FileExistsError:
            # Another process put it first (identical bytes), or a damaged
            # copy of the wrong size is there: replace only the latter.
            try:
                if os.stat(final).st_size == size:
                    return 0
            except FileNotFoundError:
                pass
            os.replace(temporary, final)
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
            os.replace(temporary, final)  # no hard links here: last writer wins, same bytes
        fsync_dir(folder)
        return size

    def write_entry(self, entry: Entry, secret: bytes | None) -> bool:
        """Install a manifest unless an equally good one is there (the first
        writer's "made by" is kept). Returns True if this one was written."""
        path = self.entry_path(entry.key)
        try:
            existing = self.read_entry(entry.key, secret)
        except EntryProblem:
            existing = None  # damaged or untrusted: replace it
        if existing is not None and (existing.result is not None or entry.result is None) and (
            existing.signed or secret is None
        ) and {t.label for t in existing.targets} == {t.label for t in entry.targets}:
            self.touch(entry.key)
            return False
        with self._scratch() as temporary:
            write_new(temporary, encode_entry(entry, secret), mode=self._entry_mode())
            folder = os.path.dirname(path)
            self._directory(folder)
            os.replace(temporary, path)
            fsync_dir(folder)
        return True

    # -- who computes what --

    @contextlib.contextmanager
    def computing(self, key: str, task: str) -> Iterator[bool]:
        """Hold the lock that says this process computes ``key``, waiting for
        another process that holds it. Yields whether it had to wait. Without
        working locks (no ``fcntl``, a filesystem without lock support) it
        yields at once: two processes may then compute the same key."""
        fd = self._lock_fd()
        if fd is None:
            yield False
            return
        offset = int(key[:15], 16) + 1
        waited = False
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
            except (BlockingIOError, PermissionError):
                waited = True
                LOGGER.info("task %r: another process is computing the same cache entry; waiting for it", task)
                fcntl.lockf(fd, fcntl.LOCK_EX, 1, offset)
        except OSError as error:  # ENOLCK: no lock support on this filesystem
            LOGGER.debug("task %r: no cache lock (%s); it may be computed twice", task, error)
        try:
            yield waited
        finally:
            os.close(fd)  # drops the lock

    def _lock_fd(self) -> int | None:
        if not _LOCKS:
            return None
        path = os.path.join(self.root, "locks")
        for _ in range(2):
            try:
                return os.open(path, os.O_RDWR)
            except FileNotFoundError:
                self._make_locks()
            except OSError:
                return None
        return None

    # -- runs --

    def record_run(self, summary: dict[str, Any]) -> None:
        """Write one run's hit and miss counts (``taskgraph cache stats``)."""
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}.json"
        final = os.path.join(self.root, "runs", name)
        with self._scratch() as temporary:
            write_new(temporary, json.dumps(summary, sort_keys=True).encode(), sync=False, create_mode=0o644)
            self._directory(os.path.dirname(final))
            os.replace(temporary, final)


__all__ = ["MARKER", "Cache"]
