"""What crosses the scheduler's edges: a task as a job for an executor, and a
finished task as an outcome for the ledger.

Pure translations: reads a ``Task`` and writes nothing of it. Imports
``_arguments`` (the tree and the readable arguments), ``_job``, ``_ledger``
(``Outcome``), ``_failure`` and ``_task``/``_decide`` (types).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from taskgraph._arguments import tree_and_text
from taskgraph._fingerprint import CachedDigest
from taskgraph._job import Job, JobResult
from taskgraph._ledger import Outcome

if TYPE_CHECKING:
    from taskgraph._cache_job import CacheJob
    from taskgraph._decide import Decision
    from taskgraph._failure import Failure
    from taskgraph._task import Task


def job_for(
    task: Task, decision: Decision, known: dict[tuple[str, str], CachedDigest], cache: CacheJob | None,
) -> Job:
    """The job that runs ``task`` as ``decision`` found it (its inputs), with
    the input digests the scheduler already holds (``known``)."""
    return Job(  # (its fields in order: positional arguments cost less than keywords)
        task.task_id, task.task_name, task._func, task._args, task._kwargs, task._payload, decision.inputs,
        task._hash_algorithm, task._target_path_list, task._target_mode, task._store_result, known,
        task._priority, False, cache,
    )


def outcome_of(task: Task, result: JobResult, failure: Failure | None) -> Outcome:
    """What the ledger records of ``task``, finished with ``result`` (``failure``: how it failed)."""
    identity = task._identity
    arguments, text = tree_and_text(task._args, task._kwargs)
    return Outcome(  # (its fields in order: positional arguments cost less than keywords)
        identity.record_key, identity.key, task.task_name, identity.function.name, identity.function.source_hash,
        text, task._hash_algorithm, task._store_result, result.started or time.time(),
        result.ended or time.time(), result.worker, result.inputs, result.targets,
        [dep._identity.record_key for dep in task._dependencies], result.result,
        failure.text if failure is not None else None, not task._had_record, result.cpu_time, result.peak_memory,
        (failure.type, failure.message, failure.frames_json()) if failure is not None else None, arguments,
    )


__all__ = ["job_for", "outcome_of"]
