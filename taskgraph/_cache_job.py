"""What a job does with the shared cache: compute the task's cache key,
restore the task from it or hold the key while the function runs, then put
the targets (and, with a key file, the result) there.

Imports ``_cache``, ``_fingerprint`` and the standard library: it runs in
worker processes, called by ``_job.run_job`` right where the task's inputs
were fingerprinted and its targets written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import stat as stat_module
import time
from dataclasses import dataclass, field
from typing import Any

import xxhash

from taskgraph._cache import MARKER, Cache
from taskgraph._cache_entry import Entry, EntryProblem, StoredFile, team_key, who
from taskgraph._fingerprint import CHECK_ALGORITHM, Fingerprint, MemoryDigestCache, take

LOGGER = logging.getLogger("taskgraph.Task")


@dataclass(frozen=True, slots=True)
class CacheJob:
    """What a job needs to use the cache: made by the scheduler for a task
    that must run, sent with the job (it holds no secret: the key file is
    read where the job runs).

    Attributes:
        root: the cache directory.
        template: the portable identity of the call (input files as slots).
        inputs: the input files in slot order; the cache key is the
            template followed by their content digests in this order.
        labels: (target path, label) pairs: a target's name in an entry.
        key_file: the team's cache key file, or None.
        share_result: put and use the stored result (``store_result`` with a key file).
        task, function: names, for the entry and for messages.
    """

    root: str
    template: str
    inputs: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]
    key_file: str | None
    share_result: bool
    task: str
    function: str


@dataclass(slots=True)
class CacheOutcome:
    """What the cache did for one job (sent back in the ``JobResult``).

    ``event`` is ``'hit'`` (restored; the function did not run), ``'miss'``
    (the function ran), or ``'uncacheable'`` (an input could not be hashed,
    or the outputs cannot be stored: directories).
    """

    event: str = "uncacheable"
    key: str | None = None
    made_by: str = ""
    host: str = ""
    user: str = ""
    made_at: float = 0.0
    #: Run time of the function when it was computed (seconds saved by a hit).
    seconds: float = 0.0
    restored_bytes: int = 0
    stored: bool = False
    stored_bytes: int = 0
    #: Damaged or untrusted entries and objects met on the way.
    problems: list[str] = field(default_factory=list)
    put_error: str | None = None
    waited: bool = False


def _cache_digest(path: str, fingerprint: Fingerprint | None, digests: MemoryDigestCache) -> str | None:
    """The xxh3-128 of an input file, from its fingerprint when it holds one."""
    if fingerprint is not None and fingerprint.digest is not None and fingerprint.mode in (
        CHECK_ALGORITHM, "sizetimestamp"  # (a racy sizetimestamp fingerprint carries an xxh3-128)
    ):
        return fingerprint.digest
    found = take(path, CHECK_ALGORITHM, digests)
    return None if found is None else found.digest


class CacheSession:
    """One job's use of the cache: compute the key, restore or hold the key's
    lock while the function runs, then put. Never raises for a problem of the
    cache itself: it logs, and the task runs."""

    def __init__(self, job: CacheJob, inputs: dict[str, Fingerprint], digests: MemoryDigestCache) -> None:
        self.job = job
        self.outcome = CacheOutcome()
        self._cache = Cache(job.root)
        self._secret = team_key(job.key_file) if job.key_file else None
        self._lock: contextlib.ExitStack | None = None
        self._key = self._make_key(inputs, digests)

    def _make_key(self, inputs: dict[str, Fingerprint], digests: MemoryDigestCache) -> str | None:
        if not os.path.isfile(os.path.join(self.job.root, MARKER)):
            LOGGER.warning("task %r: the cache %s cannot be reached from %s; it is not used here",
                           self.job.task, self.job.root, socket.gethostname())
            return None
        hasher = xxhash.xxh3_128(self.job.template.encode())
        for path in self.job.inputs:
            try:
                digest = _cache_digest(path, inputs.get(path), digests)
            except OSError as error:
                LOGGER.debug("task %r: input %s cannot be hashed for the cache (%s)", self.job.task, path, error)
                return None
            if digest is None:  # a directory, or gone
                return None
            hasher.update(b"\0" + digest.encode())
        key = str(hasher.hexdigest())
        self.outcome.key = key
        return key

    @property
    def wants_result(self) -> bool:
        return self.job.share_result and self._secret is not None

    def _usable(self, entry: Entry) -> bool:
        labels = {label for _, label in self.job.labels}
        if {target.label for target in entry.targets} != labels:
            return False
        if self.job.share_result:
            if entry.result is not None and not entry.signed:
                self._problem(f"cache entry {entry.key[:12]} ({entry.describe()}): its stored result is not "
                              "signed with this cache key, so it is not unpickled")
            return entry.result is not None and entry.signed
        return True

    def _lookup(self) -> Entry | None:
        assert self._key is not None
        try:
            entry = self._cache.read_entry(self._key, self._secret)
        except EntryProblem as error:
            self._problem(f"cache entry {self._key[:12]}: {error}")
            return None
        return entry if entry is not None and self._usable(entry) else None

    def _problem(self, text: str) -> None:
        if text not in self.outcome.problems:
            LOGGER.warning("task %r: %s; it is not used", self.job.task, text)
            self.outcome.problems.append(text)

    def restore(self) -> tuple[bool, Any]:
        """Restore the task from the cache if it holds the key: (True, result).
        Otherwise (False, None), holding the key's lock until :meth:`close`."""
        if self._key is None:
            return False, None
        restored = self._try_restore()
        if restored[0]:
            return restored
        # Not there: say that this process computes it, or wait for the
        # process that does and look again.
        stack = contextlib.ExitStack()
        try:
            self.outcome.waited = stack.enter_context(self._cache.computing(self._key, self.job.task))
        except BaseException:
            stack.close()
            raise
        self._lock = stack
        restored = self._try_restore()
        if restored[0]:
            self.close()
            return restored
        self.outcome.event = "miss"
        return False, None

    def _try_restore(self) -> tuple[bool, Any]:
        entry = self._lookup()
        if entry is None:
            return False, None
        destinations = dict((label, path) for path, label in self.job.labels)
        placed: list[tuple[str, str]] = []
        try:
            value = None
            if self.job.share_result and entry.result is not None:
                value = pickle.loads(self._cache.read_object(*entry.result))
            for stored in entry.targets:
                destination = destinations[stored.label]
                placed.append((self._cache.materialise(stored, destination), destination))
            for temporary, destination in placed:
                os.replace(temporary, destination)
        except (EntryProblem, OSError, pickle.UnpicklingError) as error:
            for temporary, _ in placed:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
            what = str(error) if isinstance(error, EntryProblem) else (
                f"it cannot be restored ({type(error).__name__}: {error})")
            self._problem(f"cache entry {entry.key[:12]} ({entry.describe()}): {what}")
            return False, None
        except BaseException:
            for temporary, _ in placed:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
            raise
        self._cache.touch(entry.key)
        outcome = self.outcome
        outcome.event = "hit"
        outcome.made_by = entry.describe()
        outcome.host, outcome.user = entry.host, entry.user
        outcome.made_at, outcome.seconds = entry.made_at, entry.seconds
        outcome.restored_bytes = entry.size
        return True, value

    def put(self, targets: dict[str, Fingerprint], value: Any, seconds: float) -> None:
        """Store a successful run's targets (and result) under the key. A
        failure (disk full, permissions) is a warning: the task succeeded."""
        if self._key is None or self.outcome.event != "miss":
            return
        try:
            stored = self._put(targets, value, seconds)
        except Exception as error:
            self.outcome.put_error = f"{type(error).__name__}: {error}"
            LOGGER.warning(
                "task %r: its cache entry was not stored in %s (%s: %s); the task itself succeeded, and "
                "other workspaces will compute it", self.job.task, self.job.root, type(error).__name__, error,
            )
            return
        if stored is not None:
            self.outcome.stored = True
            self.outcome.stored_bytes = stored

    def _put(self, targets: dict[str, Fingerprint], value: Any, seconds: float) -> int | None:
        assert self._key is not None
        files: list[tuple[str, str, str | None, int]] = []
        for path, label in self.job.labels:
            info = os.stat(path)
            if not stat_module.S_ISREG(info.st_mode):
                LOGGER.debug("task %r: target %s is not a file; the task is not cached", self.job.task, path)
                self.outcome.event = "uncacheable"
                return None
            fingerprint = targets.get(path)
            known = None
            if fingerprint is not None and fingerprint.digest is not None and fingerprint.mode in (
                CHECK_ALGORITHM, "sizetimestamp"
            ) and fingerprint.size == info.st_size and fingerprint.mtime_ns == info.st_mtime_ns:
                known = fingerprint.digest
            files.append((label, path, known, stat_module.S_IMODE(info.st_mode)))
        written = 0
        result = None
        if self.wants_result:
            digest, size, count = self._cache.store_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
            result, written = (digest, size), written + count
        stored: list[StoredFile] = []
        for label, path, known, mode in files:
            digest, size, count = self._cache.store_file(path, known)
            stored.append(StoredFile(label, digest, size, mode))
            written += count
        host, user = who()
        entry = Entry(self._key, tuple(sorted(stored, key=lambda item: item.label)), result, host, user,
                      time.time(), seconds, self.job.task, self.job.function, signed=self._secret is not None)
        self._cache.write_entry(entry, self._secret)
        # A prune that ran meanwhile may have taken an object this entry
        # reuses (it keeps recently used ones, so only after a long stall):
        # put it back.
        for item in stored:
            if not os.path.exists(self._cache.object_path(item.digest)):
                path = next(path for path, label in self.job.labels if label == item.label)
                written += self._cache.store_file(path, None)[2]
        return written

    def close(self) -> None:
        """Release the key's lock, if held."""
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.close()



__all__ = ["CacheJob", "CacheOutcome", "CacheSession"]
