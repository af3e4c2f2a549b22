"""How the ledger's values are stored in rows and read back.

Owns the stored form of paths and text, what the writer takes in
(``Outcome``) and hands out (``TaskRecord``, the plain tuples of its
snapshot, ``Previous``), the one way a row
becomes a ``Fingerprint`` and the one way a row becomes a ``CachedDigest``,
and the re-execution key. Leaf module: the standard library, xxhash,
``_fingerprint`` and ``_frozen``; no SQL is run here.

Paths (``files.path``, ``digests.path``) are TEXT, except a file name that is
not valid UTF-8 (``os.listdir`` returns such names with surrogate escapes):
it is stored as a BLOB of the file system's own bytes (``os.fsencode``), so it
is kept exactly. Other text (names, arguments, errors) that is not valid UTF-8
is stored with backslash escapes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import xxhash

from taskgraph._fingerprint import CachedDigest, FileStat, Fingerprint
from taskgraph._frozen import field, frozen, record


def stored_path(path: str) -> str | bytes:
    """A path as the ledger stores it: its text, or, for a name that is not
    valid UTF-8, the file system's own bytes (kept exactly)."""
    if path.isascii():
        return path
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return os.fsencode(path)
        except UnicodeError:  # not a file name on this system at all
            return path.encode("utf-8", "surrogatepass")
    return path


def loaded_path(value: str | bytes) -> str:
    """A path as the ledger stored it, back as ``str`` (with surrogate escapes
    for bytes that are not UTF-8, as ``os.listdir`` returns it)."""
    return value if type(value) is str else os.fsdecode(value)


def stored_text(value: str | None) -> str | None:
    """Text for a TEXT column: as it is when valid UTF-8, else with the
    characters that are not (lone surrogates) as backslash escapes."""
    if value is None or value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def fingerprint(row: Sequence[Any]) -> Fingerprint:
    """A file's fingerprint from its columns of ``files``: (mode, size,
    mtime_ns, digest, taken_at_ns)."""
    mode, size, mtime_ns, digest, taken_at_ns = row
    return Fingerprint(mode, size, mtime_ns, digest, taken_at_ns)


def files_of(rows: Iterable[Sequence[Any]]) -> tuple[dict[str, Fingerprint], dict[str, Fingerprint]]:
    """(inputs, targets) of one record, each path -> Fingerprint, from its
    rows of ``files``: (role, path, mode, size, mtime_ns, digest, taken_at_ns)."""
    inputs: dict[str, Fingerprint] = {}
    targets: dict[str, Fingerprint] = {}
    for row in rows:
        (inputs if row[0] == "input" else targets)[loaded_path(row[1])] = fingerprint(row[2:])
    return inputs, targets


def cached_digest(row: Sequence[Any]) -> CachedDigest:
    """A digest cache entry from its columns of ``digests``: (dev, ino, size,
    mtime_ns, ctime_ns, is_dir, digest, hashed_at_ns)."""
    dev, ino, size, mtime_ns, ctime_ns, is_dir, digest, hashed_at_ns = row
    return CachedDigest(FileStat(size, mtime_ns, ctime_ns, dev, ino, bool(is_dir)), digest, hashed_at_ns)


@frozen
class TaskRecord:
    """What the ledger holds about one task."""

    record_key: str
    name: str
    state: str
    hash_algorithm: str
    store_result: bool
    inputs: dict[str, Fingerprint]
    targets: dict[str, Fingerprint]
    has_result: bool
    ended: float | None
    error: str | None


@frozen
class Previous:
    """The earlier record a new task is compared with (same name)."""

    record_key: str
    task_key: str
    func: str
    source_hash: str
    args: str
    #: The arguments' tree (``_arguments.tree``); None in records of older ledgers.
    arguments: str | None


@record
class Outcome:
    """A finished task as the scheduler hands it to the ledger."""

    record_key: str
    task_key: str
    name: str
    func: str
    source_hash: str
    args: str
    hash_algorithm: str
    store_result: bool
    started: float
    ended: float
    worker: str
    inputs: dict[str, Fingerprint] = field(default_factory=dict)
    targets: dict[str, Fingerprint] = field(default_factory=dict)
    deps: Sequence[str] = ()
    result: Any = None
    error: str | None = None
    #: True when the ledger held no record of this task before this run.
    fresh: bool = False
    #: The run report: CPU seconds and peak resident memory (bytes), if measured.
    cpu_time: float | None = None
    peak_memory: int | None = None
    #: A failed task: the exception as raised, (type, message, the user's
    #: frames as JSON), see ``_failure.Failure``; ``error`` is its whole text.
    failure: tuple[str, str, str] | None = None
    #: The arguments' tree (``_arguments.tree``), to say later what changed.
    arguments: str | None = None



# A task in the ledger's snapshot: (name, state, hash_algorithm,
# store_result, ended, error, has_result, files, record id), each file (role,
# path, mode, size, mtime_ns, digest, taken_at_ns).
FileRow = tuple[str, str, str, int, int, "str | None", int]
SnapshotRow = tuple[str, str, str, bool, "float | None", "str | None", bool, tuple[FileRow, ...], "int | None"]
# A digest cache row in the snapshot: (dev, ino, size, mtime_ns, ctime_ns,
# is_dir, digest, hashed_at_ns).
DigestRow = tuple[int, int, int, int, int, int, str, int]


def snapshot_record(record_key: str, row: SnapshotRow) -> TaskRecord:
    """The record of a task in the snapshot."""
    name, state, algorithm, store_result, ended, error, has_result, files, _ = row
    if not files:
        return TaskRecord(record_key, name, state, algorithm, store_result, {}, {}, has_result, ended, error)
    inputs, targets = files_of(files)
    return TaskRecord(record_key, name, state, algorithm, store_result, inputs, targets, has_result, ended, error)


def exec_key(record_key: str, inputs: dict[str, Fingerprint]) -> str:
    """The re-execution key: the task's record key and what its input files
    were (path, size, mtime, digest) when it last ran. Equal keys mean the
    same call on the same inputs."""
    hasher = xxhash.xxh3_128(record_key.encode())
    for path in sorted(inputs):
        fp = inputs[path]
        hasher.update(f"\0{path}\0{fp.mode}\0{fp.size}\0{fp.mtime_ns}\0{fp.digest}".encode(
            "utf-8", "surrogatepass"))
    return str(hasher.hexdigest())
