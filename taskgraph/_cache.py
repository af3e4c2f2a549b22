"""The shared target cache: finished work that other workspaces reuse.

Leaf module: imports the standard library, xxhash and ``_fingerprint`` only
(it runs in worker processes, beside ``_job``).

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

An *entry* (a manifest) says which object each target of a task is, and
which object its stored result is. Its file is a header line
``taskgraph-cache-entry 1 CHECK MAC`` followed by a JSON body: CHECK is the
xxh3-128 of the body (a damaged manifest is detected), MAC an HMAC-SHA256 of
it keyed by the team's cache key file, or ``-`` when the writer had none.

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
import getpass
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import stat as stat_module
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import xxhash

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
#: Whether this platform has POSIX byte-range locks (not Windows).
_LOCKS = fcntl is not None

LOGGER = logging.getLogger("taskgraph.Task")

FORMAT = 1
MARKER = "taskgraph-cache.json"
#: Environment variables that set ``TaskGraph(cache=..., cache_key=...)``.
CACHE_ENV = "TASKGRAPH_CACHE"
CACHE_KEY_ENV = "TASKGRAPH_CACHE_KEY"
_SUBDIRS = ("objects", "entries", "tmp", "quarantine", "runs")
_ENTRY_MAGIC = b"taskgraph-cache-entry"
_MAC_CONTEXT = b"taskgraph cache entry v1\0"
_KEY_CONTEXT = b"taskgraph cache key v1\0"
_MIN_KEY_BYTES = 32
_MAX_MANIFEST_BYTES = 1 << 20
_BUFFER_SIZE = 1 << 20
# Linux's FICLONE ioctl (_IOW(0x94, 9, int)): share the source's extents.
_FICLONE = 0x40049409


class CacheUnusable(Exception):
    """The directory cannot serve as a cache (the message says why)."""


class EntryProblem(Exception):
    """An entry or one of its objects is damaged, missing or untrusted."""


# -- small helpers ------------------------------------------------------------------------------


def who() -> tuple[str, str]:
    """(host, user) of this process, for "made on HOST by USER"."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no passwd entry (containers)
        user = str(os.getuid()) if hasattr(os, "getuid") else "?"
    return socket.gethostname(), user


def _fsync_dir(path: str) -> None:
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


def _chmod(fd: int, path: str, mode: int) -> None:
    """Set a file's mode bits (by descriptor where the platform can)."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:  # pragma: no cover - Windows before Python 3.13
        os.chmod(path, mode)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _copy_hashing(source: Any, fd: int) -> tuple[str, int]:
    """Copy the open binary ``source`` to ``fd`` while hashing what is copied."""
    hasher = xxhash.xxh3_128()
    buffer = bytearray(_BUFFER_SIZE)
    view = memoryview(buffer)
    size = 0
    while True:
        count = source.readinto(buffer)
        if not count:
            break
        hasher.update(view[:count])
        _write_all(fd, view[:count])
        size += count
    return str(hasher.hexdigest()), size


def hash_fd(fd: int) -> tuple[str, int]:
    """xxh3-128 digest and size of an open file's whole content."""
    hasher = xxhash.xxh3_128()
    buffer = bytearray(_BUFFER_SIZE)
    view = memoryview(buffer)
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)
    with open(fd, "rb", buffering=0, closefd=False) as stream:
        while True:
            count = stream.readinto(buffer)
            if not count:
                break
            hasher.update(view[:count])
            size += count
    return str(hasher.hexdigest()), size


def _reflink(source_fd: int, fd: int) -> bool:
    """Make ``fd`` share the source's blocks (btrfs, XFS, bcachefs, ...): no
    data is copied, and a later write to either file copies only what it
    changes, so an edit in one workspace never reaches another. False where
    the filesystem cannot."""
    if not _LOCKS or not sys.platform.startswith("linux"):
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


def _clone_or_copy(source: Any, fd: int) -> tuple[str, int]:
    """Fill ``fd`` with the bytes of ``source``: a reflink where possible, else
    a copy; return the xxh3-128 digest and size of what ``fd`` now holds
    (read back from it, so the digest is that of the bytes written)."""
    if _reflink(source.fileno(), fd) or _kernel_copy(source.fileno(), fd):
        return hash_fd(fd)
    return _copy_hashing(source, fd)


def read_team_key(path: str) -> bytes:
    """The secret in a cache key file (at least 32 bytes; whitespace around
    a text key, such as a final newline, is ignored).

    Raises:
        CacheUnusable: if the file cannot be read or is too short.
    """
    try:
        with open(path, "rb") as stream:
            info = os.fstat(stream.fileno())
            raw = stream.read(1 << 16)
    except OSError as error:
        raise CacheUnusable(f"cannot read the cache key file {path}: {error}") from error
    # A text key (hex, base64) may end with a newline; a binary one is used whole.
    stripped = raw.strip()
    secret = stripped if stripped and all(32 < byte < 127 for byte in stripped) else raw
    if len(secret) < _MIN_KEY_BYTES:
        raise CacheUnusable(
            f"the cache key file {path} holds {len(secret)} bytes; it needs at least {_MIN_KEY_BYTES} "
            "random bytes (make one with `head -c 32 /dev/urandom > team.key`)"
        )
    if os.name == "posix" and info.st_mode & stat_module.S_IROTH:
        LOGGER.warning(
            "the cache key file %s is readable by every user of this machine: anyone who can read it "
            "can make results that your runs will unpickle. Make it readable by your team only "
            "(chmod o-r).", path,
        )
    return hmac.new(secret, _KEY_CONTEXT, hashlib.sha256).digest()


_KEYS: dict[str, bytes | None] = {}


def team_key(path: str | None) -> bytes | None:
    """The key from ``path``, read once per process; None (with a warning) if it cannot be read."""
    if path is None:
        return None
    if path not in _KEYS:
        try:
            _KEYS[path] = read_team_key(path)
        except CacheUnusable as error:
            LOGGER.warning("%s; stored results are not shared through the cache", error)
            _KEYS[path] = None
    return _KEYS[path]


# -- entries ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One target in an entry: its label, object digest, size and mode bits."""

    label: str
    digest: str
    size: int
    mode: int


@dataclass(frozen=True, slots=True)
class Entry:
    """A manifest, read and checked."""

    key: str
    targets: tuple[StoredFile, ...]
    #: (digest, size) of the pickled result's object, or None.
    result: tuple[str, int] | None
    host: str
    user: str
    made_at: float
    seconds: float
    task: str
    function: str
    #: True when the MAC verified with this process's key.
    signed: bool
    #: Size of the manifest file.
    manifest_bytes: int = 0

    @property
    def size(self) -> int:
        """Bytes of the objects it names."""
        return sum(target.size for target in self.targets) + (self.result[1] if self.result else 0)

    def describe(self) -> str:
        made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.made_at))
        return f"made on {self.host} by {self.user} at {made}"


def _entry_body(entry: Entry) -> bytes:
    body = {
        "key": entry.key,
        "targets": [[t.label, t.digest, t.size, t.mode] for t in entry.targets],
        "result": list(entry.result) if entry.result else None,
        "host": entry.host, "user": entry.user, "made_at": entry.made_at, "seconds": entry.seconds,
        "task": entry.task, "function": entry.function,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _mac(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, _MAC_CONTEXT + body, hashlib.sha256).hexdigest()


def encode_entry(entry: Entry, secret: bytes | None) -> bytes:
    body = _entry_body(entry)
    check = xxhash.xxh3_128_hexdigest(body)
    mac = _mac(secret, body) if secret is not None else "-"
    return b"%s %d %s %s\n%s" % (_ENTRY_MAGIC, FORMAT, check.encode(), mac.encode(), body)


def decode_entry(data: bytes, secret: bytes | None, key: str | None = None) -> Entry:
    """Parse and check a manifest.

    ``Entry.signed`` says whether its MAC verifies with ``secret``.

    Raises:
        EntryProblem: if it is damaged, of another format or for another key.
    """
    header, newline, body = data.partition(b"\n")
    parts = header.split(b" ")
    if not newline or len(parts) != 4 or parts[0] != _ENTRY_MAGIC:
        raise EntryProblem("its manifest is not a taskgraph cache entry (damaged or foreign)")
    if parts[1] != b"%d" % FORMAT:
        raise EntryProblem(f"its manifest has format {parts[1].decode(errors='replace')}, not {FORMAT}")
    if xxhash.xxh3_128_hexdigest(body).encode() != parts[2]:
        raise EntryProblem("its manifest is damaged (its checksum does not match)")
    # Unsigned, or signed with another key: its targets (data, checked by
    # digest) may be used, its stored result never.
    signed = secret is not None and parts[3] != b"-" and hmac.compare_digest(parts[3], _mac(secret, body).encode())
    try:
        raw = json.loads(body)
        entry = Entry(
            key=str(raw["key"]),
            targets=tuple(StoredFile(str(label), str(digest), int(size), int(mode))
                          for label, digest, size, mode in raw["targets"]),
            result=(str(raw["result"][0]), int(raw["result"][1])) if raw["result"] else None,
            host=str(raw["host"]), user=str(raw["user"]), made_at=float(raw["made_at"]),
            seconds=float(raw["seconds"]), task=str(raw["task"]), function=str(raw["function"]),
            signed=signed, manifest_bytes=len(data),
        )
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise EntryProblem(f"its manifest cannot be read ({type(error).__name__}: {error})") from error
    if key is not None and entry.key != key:
        raise EntryProblem(f"its manifest is for another key ({entry.key[:12]})")
    return entry


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
        temporary = self._temporary()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, text.encode())
            _chmod(fd, temporary, 0o444)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, marker)
        except FileExistsError:
            pass
        except OSError:
            if not os.path.exists(marker):
                os.replace(temporary, marker)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        _fsync_dir(self.root)

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
            _chmod(fd, path, 0o600 | (self._root_mode() & 0o066))
        finally:
            os.close(fd)

    def object_path(self, digest: str) -> str:
        return os.path.join(self.root, "objects", digest[:2], digest[2:])

    def entry_path(self, key: str) -> str:
        return os.path.join(self.root, "entries", key[:2], key[2:])

    def _temporary(self, directory: str | None = None, stem: str = "") -> str:
        folder = directory if directory is not None else os.path.join(self.root, "tmp")
        return os.path.join(folder, f"{stem}{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(6)}.tmp")

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
                    digest, size = _clone_or_copy(stream, fd)
                    _chmod(fd, temporary, stored.mode & 0o7777)
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
        temporary = self._temporary()
        try:
            with open(path, "rb", buffering=0) as source:
                fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    digest, size = _clone_or_copy(source, fd)
                    _chmod(fd, temporary, 0o444)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            written = 0 if self._reuse(digest, size) else self._install(temporary, self.object_path(digest))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        return digest, size, written

    def store_bytes(self, data: bytes) -> tuple[str, int, int]:
        """Put ``data`` into the objects; returns (digest, size, bytes newly written)."""
        digest = xxhash.xxh3_128_hexdigest(data)
        if self._reuse(digest, len(data)):
            return digest, len(data), 0
        temporary = self._temporary()
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, memoryview(data))
                _chmod(fd, temporary, 0o444)
                os.fsync(fd)
            finally:
                os.close(fd)
            written = self._install(temporary, self.object_path(digest))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
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
        _fsync_dir(folder)
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
        data = encode_entry(entry, secret)
        temporary = self._temporary()
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, memoryview(data))
                _chmod(fd, temporary, self._entry_mode())
                os.fsync(fd)
            finally:
                os.close(fd)
            folder = os.path.dirname(path)
            self._directory(folder)
            os.replace(temporary, path)
            _fsync_dir(folder)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
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
        temporary = self._temporary()
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                _write_all(fd, memoryview(json.dumps(summary, sort_keys=True).encode()))
            finally:
                os.close(fd)
            self._directory(os.path.dirname(final))
            os.replace(temporary, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)


__all__ = [
    "CACHE_ENV",
    "CACHE_KEY_ENV",
    "Cache",
    "CacheUnusable",
    "Entry",
    "EntryProblem",
    "hash_fd",
    "read_team_key",
    "team_key",
    "who",
]
