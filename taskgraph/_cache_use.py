"""The scheduler's side of the shared cache: which tasks it serves, what a
job is told about it, and what a hit records.

Imports ``_cache``, ``_cache_entry`` and ``_cache_job`` only once a cache is
configured (a graph without one never loads them, nor their ``socket``,
``secrets`` and ``hmac``), ``_identity``, ``_fingerprint`` and ``Reason`` from
``_decide``. The scheduler calls it only for a task that must run (after the
up-to-date check said so), so up-to-date tasks never cost the cache anything;
the job (``_job.run_job``) does the cache's work where the task runs.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from taskgraph._decide import Reason
from taskgraph._fingerprint import CHECK_ALGORITHM, CachedDigest, DigestCache
from taskgraph._identity import SelfReferenceError, portable_identity

if TYPE_CHECKING:
    from taskgraph._cache import Cache
    from taskgraph._cache_job import CacheJob
    from taskgraph._decide import Decision
    from taskgraph._job import JobResult
    from taskgraph._task import Task

LOGGER = logging.getLogger("taskgraph.Task")

#: Environment variables that set ``TaskGraph(cache=..., cache_key=...)``.
CACHE_ENV = "TASKGRAPH_CACHE"
CACHE_KEY_ENV = "TASKGRAPH_CACHE_KEY"


class CacheUse:
    """One graph's use of a cache: makes each running task's ``CacheJob``,
    counts hits and misses, and writes the run's summary into the cache."""

    def __init__(self, cache: Cache, key_file: str | None, workspace: str) -> None:
        self.cache = cache
        self.key_file = key_file
        self.workspace = workspace
        self.started = time.time()
        self.hits = 0
        self.misses = 0
        self.stored = 0
        self.put_failures = 0
        self.problems = 0
        self.restored_bytes = 0
        self.stored_bytes = 0
        self.seconds_saved = 0.0

    def job_for(self, task: Task, decision: Decision, known: dict[tuple[str, str], CachedDigest],
                digests: DigestCache) -> CacheJob | None:
        """The cache part of the job of ``task``, or None when the cache does
        not serve it: ``transient_run`` tasks, tasks without targets unless
        their result is shared, and tasks with a stored result when no key
        file is configured (pickles are shared only with one). Adds the
        inputs' known xxh3-128 digests to ``known`` so the job need not
        read them."""
        share = task._store_result and self.key_file is not None
        if task._transient_run or (task._store_result and not share) or not (task._target_path_list or share):
            return None
        try:
            portable = portable_identity(task._func, task._args, task._kwargs, task._target_path_list,
                                         decision.inputs, self.workspace)
        except (SelfReferenceError, RecursionError):
            return None
        except Exception as error:  # the cache only saves work: it never stops a task
            LOGGER.warning("task %r: its cache key cannot be made (%s: %s); it runs without the cache",
                           task.task_name, type(error).__name__, error)
            return None
        for path in portable.inputs:
            if (path, CHECK_ALGORITHM) not in known:
                entry = digests.lookup_digest(path, CHECK_ALGORITHM)
                if entry is not None:
                    known[(path, CHECK_ALGORITHM)] = entry
        from taskgraph._cache_job import CacheJob  # a graph without a cache never imports it

        return CacheJob(self.cache.root, portable.template, portable.inputs, portable.labels, self.key_file,
                        share, task.task_name, task._identity.function.name)

    def finished(self, result: JobResult) -> Reason | None:
        """Count what the cache did for a job; the reason to record if the
        task was restored from it."""
        outcome = result.cache
        if outcome is None:
            return None
        self.problems += len(outcome.problems)
        if outcome.put_error is not None:
            self.put_failures += 1
        if outcome.stored:
            self.stored += 1
            self.stored_bytes += outcome.stored_bytes
        if outcome.event == "miss":
            self.misses += 1
        if outcome.event != "hit" or result.error is not None:
            return None
        self.hits += 1
        self.restored_bytes += outcome.restored_bytes
        self.seconds_saved += outcome.seconds
        return Reason(
            "restored_from_cache", f"restored from cache ({outcome.made_by})",
            old=None, new={"host": outcome.host, "user": outcome.user, "made_at": outcome.made_at,
                           "bytes": outcome.restored_bytes, "seconds": outcome.seconds, "key": outcome.key},
        )

    def close(self) -> None:
        """Write this run's summary into the cache (``taskgraph cache stats``)."""
        if not (self.hits or self.misses or self.put_failures or self.problems):
            return
        from taskgraph._cache_entry import who

        host, user = who()
        summary = {
            "host": host, "user": user, "pid": os.getpid(), "started": self.started, "ended": time.time(),
            "hits": self.hits, "misses": self.misses, "stored": self.stored, "put_failures": self.put_failures,
            "problems": self.problems, "restored_bytes": self.restored_bytes, "stored_bytes": self.stored_bytes,
            "seconds_saved": self.seconds_saved,
        }
        try:
            self.cache.record_run(summary)
        except OSError as error:
            LOGGER.warning("could not write this run's summary into the cache %s: %s", self.cache.root, error)


def restored_bytes(reasons: tuple[Any, ...]) -> int:
    """The bytes a restored task's ``restored_from_cache`` reason says came from the cache."""
    for reason in reasons:
        if getattr(reason, "code", None) == "restored_from_cache" and isinstance(reason.new, dict):
            return int(reason.new.get("bytes", 0))
    return 0


def open_cache(cache: Any, cache_key: Any, workspace: str) -> CacheUse | None:
    """The cache a ``TaskGraph`` uses: ``cache`` (a directory; None reads
    ``TASKGRAPH_CACHE``; False: none) with ``cache_key`` (a key file; None
    reads ``TASKGRAPH_CACHE_KEY``). A cache that cannot be used is a warning,
    not an error: the graph runs without it, as it would with none.

    Raises:
        TypeError: if ``cache`` or ``cache_key`` is neither a path, None nor False.
    """
    if cache is None:
        cache = os.environ.get(CACHE_ENV) or None
    if cache is None or cache is False:
        return None
    if cache_key is None:
        cache_key = os.environ.get(CACHE_KEY_ENV) or None
    for name, value in (("cache", cache), ("cache_key", cache_key)):
        if value is not None and value is not False and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{name} must be a path, None or False, got {value!r}")
    from taskgraph._cache import Cache
    from taskgraph._cache_entry import CacheUnusable, read_team_key

    try:
        opened = Cache.open(os.fspath(cache))
    except CacheUnusable as error:
        LOGGER.warning("the cache is not used: %s", error)
        return None
    key_file = None
    if cache_key is not None and cache_key is not False:
        key_file = os.path.abspath(os.fspath(cache_key))
        try:
            read_team_key(key_file)
        except CacheUnusable as error:
            LOGGER.warning("%s; the cache %s is used for targets only, and tasks with store_result=True run",
                           error, opened.root)
            key_file = None
    return CacheUse(opened, key_file, workspace)


__all__ = ["CACHE_ENV", "CACHE_KEY_ENV", "CacheUse", "open_cache", "restored_bytes"]
