"""The up-to-date check: should a task run, and why.

Every decision returns its reasons, with old and new values, never a bare
bool: the same objects are logged, stored on the Task (``Task.reasons``) and
will feed ``taskgraph explain``. Cheap checks come first; a file is read only
when its stat cannot settle the question and the digest cache has no answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskgraph._fingerprint import DigestCache, compare
from taskgraph._identity import describe_arguments, input_files
from taskgraph._ledger import TaskRecord

if TYPE_CHECKING:
    from taskgraph._ledger import Ledger
    from taskgraph._task import Task


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason a task runs.

    ``code`` is one of ``'new_task'`` (never ran), ``'function_changed'``,
    ``'arguments_changed'``, ``'targets_changed'`` (no record of this call,
    but of an earlier call with the same task name), ``'transient_run'``,
    ``'previous_run_failed'``, ``'hash_algorithm_changed'``, ``'input_added'``,
    ``'input_removed'``, ``'input_changed'``, ``'target_missing'``,
    ``'target_changed'``, ``'result_missing'``, ``'result_untrusted'`` (its
    stored result failed its authentication check); in a dry run also
    ``'dependency_would_run'``. A task restored from the shared cache gets
    ``'restored_from_cache'`` before the reasons it had to be brought up to date.
    """

    code: str
    detail: str
    path: str | None = None
    old: object = None
    new: object = None

    def __str__(self) -> str:
        return self.detail

    def as_dict(self) -> dict[str, object]:
        """A JSON-friendly form, as stored in the ledger's ``decisions`` table."""
        return {"code": self.code, "detail": self.detail, "path": self.path,
                "old": self.old, "new": self.new}


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of the check."""

    run: bool
    reasons: tuple[Reason, ...]
    inputs: tuple[str, ...]
    record: TaskRecord | None


def _why_new(task: Task, ledger: Ledger) -> Reason:
    """A task with no record: compare with the last task of the same name."""
    previous = ledger.previous_by_name(task.task_name)
    if previous is None:
        return Reason("new_task", "no record of this task (it never ran)")
    _, func, source_hash, args = previous
    info = task._identity.function
    if func != info.name or source_hash != info.source_hash:
        what = "function" if func != info.name else f"source of {info.name}"
        return Reason("function_changed", f"the {what} changed since its last run",
                      old=func if func != info.name else source_hash[:12],
                      new=info.name if func != info.name else info.source_hash[:12])
    now = describe_arguments(task._args, task._kwargs)
    if now != args:
        return Reason("arguments_changed", f"its arguments changed ({args} -> {now})", old=args, new=now)
    return Reason("targets_changed", "its target list changed since its last run")


def decide(task: Task, ledger: Ledger, cache: DigestCache) -> Decision:
    """Decide whether ``task`` must run, looking at its record and the disk."""
    candidates = task._identity.candidate_paths
    inputs = tuple(input_files(candidates, task._ignore, task._ignore_directories)) if candidates else ()
    record = ledger.lookup(task._identity.record_key)
    reasons: list[Reason] = []
    if task._transient_run:
        reasons.append(Reason("transient_run", "transient_run=True: runs every time"))
    if record is None:
        reasons.append(_why_new(task, ledger))
        return Decision(True, tuple(reasons), inputs, None)
    if record.state != "done":
        reasons.append(Reason("previous_run_failed", "its last run failed", old=record.error))
        return Decision(True, tuple(reasons), inputs, record)
    if record.hash_algorithm != task._hash_algorithm:
        reasons.append(Reason(
            "hash_algorithm_changed",
            f"hash_algorithm changed ({record.hash_algorithm} -> {task._hash_algorithm})",
            old=record.hash_algorithm, new=task._hash_algorithm,
        ))
        return Decision(True, tuple(reasons), inputs, record)
    if task._store_result and not record.has_result:
        reasons.append(Reason("result_missing", "store_result=True but no result is recorded"))
    # Targets first: a missing target is a stat away, and the commonest cause.
    for path in task._target_path_list:
        recorded = record.targets.get(path)
        if recorded is None:
            reasons.append(Reason("target_missing", f"target {path} was never recorded", path))
            continue
        try:
            change = compare(path, recorded, task._target_mode, cache)
        except OSError as error:
            reasons.append(Reason("target_changed", f"target {path} cannot be read ({error})", path))
            continue
        if change is not None:
            code = "target_missing" if change.what == "missing" else "target_changed"
            reasons.append(Reason(code, f"target {change.describe()}", path, change.old, change.new))
    if not inputs and not record.inputs:  # the common task without input files
        return Decision(bool(reasons), tuple(reasons), inputs, record)
    current = set(inputs)
    for path in inputs:
        if path not in record.inputs:
            reasons.append(Reason("input_added", f"new input file {path}", path))
    for path, recorded in record.inputs.items():
        if path not in current:
            reasons.append(Reason("input_removed", f"input file {path} is gone or no longer an input", path))
            continue
        try:
            change = compare(path, recorded, task._hash_algorithm, cache)
        except OSError as error:
            reasons.append(Reason("input_changed", f"input {path} cannot be read ({error})", path))
            continue
        if change is not None:
            reasons.append(Reason("input_changed", f"input {change.describe()}", path, change.old, change.new))
    return Decision(bool(reasons), tuple(reasons), inputs, record)
