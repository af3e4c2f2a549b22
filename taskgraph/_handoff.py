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
    return Job(
        task_id=task.task_id,
        name=task.task_name,
        func=task._func,
        args=task._args,
        kwargs=task._kwargs,
        payload=task._payload,
        inputs=decision.inputs,
        input_mode=task._hash_algorithm,
        targets=task._target_path_list,
        target_mode=task._target_mode,
        want_result=task._store_result,
        known_digests=known,
        priority=task._priority,
        cache=cache,
    )


def outcome_of(task: Task, result: JobResult, failure: Failure | None) -> Outcome:
    """What the ledger records of ``task``, finished with ``result`` (``failure``: how it failed)."""
    identity = task._identity
    arguments, text = tree_and_text(task._args, task._kwargs)
    return Outcome(
        record_key=identity.record_key,
        task_key=identity.key,
        name=task.task_name,
        func=identity.function.name,
        source_hash=identity.function.source_hash,
        args=text,
        hash_algorithm=task._hash_algorithm,
        store_result=task._store_result,
        started=result.started or time.time(),
        ended=result.ended or time.time(),
        worker=result.worker,
        inputs=result.inputs,
        targets=result.targets,
        deps=[dep._identity.record_key for dep in task._dependencies],
        result=result.result,
        error=failure.text if failure is not None else None,
        fresh=not task._had_record,
        cpu_time=result.cpu_time,
        peak_memory=result.peak_memory,
        failure=(failure.type, failure.message, failure.frames_json()) if failure is not None else None,
        arguments=arguments,
    )


__all__ = ["job_for", "outcome_of"]
