"""Managing a shared cache: what it holds, pruning it, verifying it.

Used by ``taskgraph cache stats|prune|verify`` (``_cli_cache``); imports
``_cache`` and the standard library. Every operation is safe while other
processes use the cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat as stat_module
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from taskgraph._cache import Cache
from taskgraph._cache_entry import Entry, EntryProblem
from taskgraph._cache_files import hash_fd

#: Objects unreferenced for less than this long are kept by ``prune``: a put
#: may be about to name them.
GRACE_S = 15 * 60.0
#: A temporary file not written for this long is a leftover of a process that
#: was killed (a put in progress writes its file all the time).
LEFTOVER_S = 3600.0
_KEPT_RUNS = 1000


@dataclass(slots=True)
class Scan:
    """What a walk over a cache found."""

    entries: dict[str, tuple[str, float, int]] = field(default_factory=dict)  # key -> (path, last used, bytes)
    parsed: dict[str, Entry] = field(default_factory=dict)
    bad_entries: dict[str, str] = field(default_factory=dict)  # key -> problem
    objects: dict[str, tuple[str, int, float]] = field(default_factory=dict)  # digest -> (path, size, mtime)
    leftovers: list[tuple[str, int, float]] = field(default_factory=list)  # tmp files: (path, size, mtime)
    quarantined: list[tuple[str, int, float]] = field(default_factory=list)

    @property
    def object_bytes(self) -> int:
        return sum(size for _, size, _ in self.objects.values())

    @property
    def entry_bytes(self) -> int:
        return sum(size for _, _, size in self.entries.values())


def _files(folder: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(name within the shard, path, stat) of every file in a two-level store."""
    try:
        shards = sorted(os.scandir(folder), key=lambda item: item.name)
    except FileNotFoundError:
        return
    for shard in shards:
        if not shard.is_dir(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):
            for item in os.scandir(shard.path):
                try:
                    info = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat_module.S_ISREG(info.st_mode):
                    yield shard.name + item.name, item.path, info


def _flat(folder: str) -> list[tuple[str, int, float]]:
    found = []
    with contextlib.suppress(FileNotFoundError):
        for item in os.scandir(folder):
            with contextlib.suppress(FileNotFoundError):
                info = item.stat(follow_symlinks=False)
                found.append((item.path, info.st_size, info.st_mtime))
    return found


def scan(cache: Cache, secret: bytes | None = None) -> Scan:
    """Read every manifest and stat every object (reads no object)."""
    found = Scan()
    for key, path, info in _files(os.path.join(cache.root, "entries")):
        found.entries[key] = (path, info.st_mtime, info.st_size)  # a hit touches its entry
        try:
            entry = cache.read_entry(key, secret)
        except EntryProblem as error:
            found.bad_entries[key] = str(error)
            continue
        if entry is not None:
            found.parsed[key] = entry
    for digest, path, info in _files(os.path.join(cache.root, "objects")):
        found.objects[digest] = (path, info.st_size, info.st_mtime)
    found.leftovers = _flat(os.path.join(cache.root, "tmp"))
    found.quarantined = _flat(os.path.join(cache.root, "quarantine"))
    return found


def recent_runs(cache: Cache, limit: int = 10) -> list[dict[str, Any]]:
    """The latest runs' summaries, newest first."""
    runs: list[dict[str, Any]] = []
    for path, _, _ in sorted(_flat(os.path.join(cache.root, "runs")), key=lambda item: item[2], reverse=True):
        if len(runs) >= limit:
            break
        try:
            with open(path, "rb") as stream:
                summary = json.loads(stream.read(1 << 16))
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict):
            runs.append(summary)
    return runs


@dataclass(slots=True)
class PruneReport:
    """What ``prune`` removed (or, in a dry run, would remove)."""

    entries: int = 0
    objects: int = 0
    bad_entries: int = 0
    leftovers: int = 0
    quarantined: int = 0
    freed_bytes: int = 0
    size_before: int = 0
    size_after: int = 0
    #: Unreferenced objects kept because they were used within the grace
    #: period (a put may be about to name them), and their bytes.
    kept_recent: int = 0
    pending_bytes: int = 0


def _unlink(path: str, dry_run: bool) -> bool:
    if dry_run:
        return True
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _named(entry: Entry) -> set[str]:
    """The digests of the objects an entry names: its targets' and its result's."""
    return {t.digest for t in entry.targets} | ({entry.result[0]} if entry.result else set())


class _Pruning:
    """One prune: what the scan found, what is removed, and how many bytes
    the cache holds as it goes (``size``; the unreferenced objects kept for
    the grace period, ``pending``, count as gone already, so that recent
    objects do not make this prune evict more entries)."""

    def __init__(self, found: Scan, dry_run: bool, old: float) -> None:
        self.found = found
        self.dry_run = dry_run
        self.old = old
        self.report = PruneReport(size_before=found.object_bytes + found.entry_bytes)
        self.size = self.report.size_before
        self.pending = 0
        self.refs: dict[str, int] = {}
        for entry in found.parsed.values():
            for digest in _named(entry):
                self.refs[digest] = self.refs.get(digest, 0) + 1

    def drop_object(self, digest: str) -> None:
        """Remove an unreferenced object, unless it was written or reused
        since ``old``: a put may be about to name it (the next prune after
        the grace period removes it if nothing does)."""
        path, object_size, mtime = self.found.objects.pop(digest)
        recent = mtime >= self.old
        if not recent and not self.dry_run:
            with contextlib.suppress(FileNotFoundError):
                recent = os.stat(path).st_mtime >= self.old  # reused since the scan
        if recent:
            self.report.kept_recent += 1
            self.pending += object_size
            self.size -= object_size
        elif _unlink(path, self.dry_run):
            self.report.objects += 1
            self.report.freed_bytes += object_size
            self.size -= object_size

    def drop_entry(self, key: str) -> bool:
        """Remove a manifest; False if another process removed it first."""
        path, _, entry_size = self.found.entries[key]
        if not _unlink(path, self.dry_run):
            return False
        self.report.freed_bytes += entry_size
        self.size -= entry_size
        return True

    def drop_damaged(self) -> None:
        for key in self.found.bad_entries:
            if self.drop_entry(key):
                self.report.bad_entries += 1

    def drop_unreferenced(self) -> None:
        for digest in [d for d in self.found.objects if d not in self.refs]:
            self.drop_object(digest)

    def drop_old_files(self, folder: list[tuple[str, int, float]], count: str, limit: float) -> None:
        """Remove the files of a flat folder last written before ``limit``;
        ``count`` names the report's field that counts them."""
        for path, file_size, mtime in folder:
            if mtime < limit and _unlink(path, self.dry_run):
                setattr(self.report, count, getattr(self.report, count) + 1)
                self.report.freed_bytes += file_size

    def evict(self, max_size: int) -> None:
        """Remove the least recently used entries, and the objects only they
        name, until the cache holds at most ``max_size`` bytes."""
        for key in sorted(self.found.parsed, key=lambda key: self.found.entries[key][1]):
            if self.size <= max_size:
                break
            if not self.drop_entry(key):
                continue
            self.report.entries += 1
            for digest in _named(self.found.parsed[key]):
                self.refs[digest] -= 1
                if self.refs[digest] == 0 and digest in self.found.objects:
                    self.drop_object(digest)

    def finish(self) -> PruneReport:
        self.report.size_after = max(0, self.size + self.pending)
        self.report.pending_bytes = self.pending
        return self.report


def prune(cache: Cache, max_size: int | None, dry_run: bool = False, grace_s: float = GRACE_S,
          now: float | None = None) -> PruneReport:
    """Remove damaged manifests, leftover temporary files (an hour old),
    quarantined and unreferenced objects, then (with ``max_size``) the least
    recently used entries until the cache holds at most ``max_size`` bytes.

    Safe while others use the cache: an object is removed only if it has not
    been written or reused for ``grace_s`` seconds before this prune began
    (a put in progress reuses or writes its objects just before its
    manifest); a reader that loses an entry this way runs its task.
    """
    started = time.time() if now is None else now
    found = scan(cache)
    pruning = _Pruning(found, dry_run, old=started - grace_s)
    pruning.drop_damaged()
    pruning.drop_unreferenced()
    pruning.drop_old_files(found.leftovers, "leftovers", started - max(grace_s, LEFTOVER_S))
    pruning.drop_old_files(found.quarantined, "quarantined", started - grace_s)
    if max_size is not None:
        pruning.evict(max_size)
    runs = sorted(_flat(os.path.join(cache.root, "runs")), key=lambda item: item[2], reverse=True)
    for path, _, _ in runs[_KEPT_RUNS:]:
        _unlink(path, dry_run)
    return pruning.finish()


@dataclass(slots=True)
class VerifyReport:
    """What ``verify`` found. An entry is bad when its manifest is damaged
    or untrusted, or an object it names is missing or corrupt."""

    entries: int = 0
    bad: dict[str, str] = field(default_factory=dict)  # key -> problem
    objects: int = 0
    bad_objects: dict[str, str] = field(default_factory=dict)  # digest -> problem
    unreferenced: int = 0
    leftovers: int = 0
    quarantined: int = 0
    bytes: int = 0
    #: With a key: entries whose stored result is not signed with it (their
    #: targets are used, their results never).
    untrusted: int = 0


def _object_problems(found: Scan) -> dict[str, str]:
    """digest -> problem of every object that cannot be read or whose bytes
    have another digest (each object is read whole)."""
    problems: dict[str, str] = {}
    for digest, (path, _, _) in found.objects.items():
        try:
            with open(path, "rb", buffering=0) as stream:
                actual, _ = hash_fd(stream.fileno())
        except OSError as error:
            problems[digest] = f"cannot be read ({error})"
            continue
        if actual != digest:
            problems[digest] = f"its bytes have digest {actual}"
    return problems


def _entry_problem(entry: Entry, found: Scan, bad_objects: dict[str, str]) -> str | None:
    """What is wrong with the objects an entry names (the last of them that
    is missing, corrupt or of another size), None if nothing."""
    named = [(t.digest, t.size, f"target {t.label}") for t in entry.targets]
    if entry.result:
        named.append((entry.result[0], entry.result[1], "result"))
    problem = None
    for digest, size, what in named:
        if digest not in found.objects:
            problem = f"the object of its {what} ({digest[:12]}) is missing"
        elif digest in bad_objects:
            problem = f"the object of its {what} ({digest[:12]}) is corrupt: {bad_objects[digest]}"
        elif found.objects[digest][1] != size:
            problem = f"the object of its {what} ({digest[:12]}) has {found.objects[digest][1]} bytes, not {size}"
    return problem


def verify(cache: Cache, secret: bytes | None = None, repair: bool = False) -> VerifyReport:
    """Read every manifest and every object, checking each against its
    digest. With ``repair``, damaged manifests are removed and corrupt
    objects quarantined (the next put of their task repairs the entry)."""
    found = scan(cache, secret)
    report = VerifyReport(entries=len(found.entries), objects=len(found.objects),
                          leftovers=len(found.leftovers), quarantined=len(found.quarantined),
                          bytes=found.object_bytes + found.entry_bytes, bad=dict(found.bad_entries),
                          bad_objects=_object_problems(found))
    referenced: set[str] = set()
    for key, entry in found.parsed.items():
        if secret is not None and entry.result is not None and not entry.signed:
            report.untrusted += 1
        referenced |= _named(entry)
        problem = _entry_problem(entry, found, report.bad_objects)
        if problem is not None:
            report.bad[key] = problem
    report.unreferenced = len(set(found.objects) - referenced)
    if repair:
        for digest, problem in report.bad_objects.items():
            cache.quarantine(digest, problem)
        for key in found.bad_entries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(found.entries[key][0])
    return report


def parse_size(text: str) -> int:
    """``'50G'``, ``'500MiB'``, ``'1.5T'``, ``'1000'`` -> bytes (K, M, G, T are powers of 1024).

    Raises:
        ValueError: if it is not a size.
    """
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    factor = 1
    for suffix, power in (("K", 1), ("M", 2), ("G", 3), ("T", 4), ("P", 5)):
        if value.endswith(suffix):
            value, factor = value[:-1], 1024 ** power
            break
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{text!r} is not a size; write it like 50G, 500M or 1.5T") from None
    if number < 0:
        raise ValueError(f"{text!r}: a size cannot be negative")
    return int(number * factor)



__all__ = [
    "GRACE_S", "LEFTOVER_S", "PruneReport", "Scan", "VerifyReport", "parse_size", "prune", "recent_runs", "scan",
    "verify",
]
