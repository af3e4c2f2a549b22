"""The up-to-date check: should a task run, and why.

Every decision returns its reasons, with old and new values, never a bare
bool: the same objects are logged, stored on the Task (``Task.reasons``) and,
through the ledger's ``decisions`` table, shown by ``taskgraph explain``. Cheap checks come first; a file is read only
when its stat cannot settle the question and the digest cache has no answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskgraph._arguments import changes, shorten, text_change
from taskgraph._arguments import tree as argument_tree
from taskgraph._failure import from_text
from taskgraph._fingerprint import DigestCache, FileStat, compare
from taskgraph._frozen import frozen
from taskgraph._identity import describe_arguments, input_files
from taskgraph._ledger import TaskRecord

if TYPE_CHECKING:
    from taskgraph._ledger import Ledger
    from taskgraph._task import Task


@dataclass(frozen=True, slots=True)  # public: immutable at run time too
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
    #: For ``arguments_changed``: which argument, as Python would index it
    #: (``args[0]['catchment_1']['area_km2']``, ``kwargs['factor']``); ``old``
    #: and ``new`` are then that value's renderings.
    argument: str | None = None

    def __str__(self) -> str:
        return self.detail

    def as_dict(self) -> dict[str, object]:
        """A JSON-friendly form, as stored in the ledger's ``decisions`` table."""
        out: dict[str, object] = {"code": self.code, "detail": self.detail, "path": self.path,
                                  "old": self.old, "new": self.new}
        if self.argument is not None:
            out["argument"] = self.argument
        return out


@frozen
class Decision:
    """The outcome of the check."""

    run: bool
    reasons: tuple[Reason, ...]
    inputs: tuple[str, ...]
    record: TaskRecord | None


def _failure_summary(error: str | None) -> str:
    kind, message = from_text(error or "")
    if not kind:
        return ""
    headline = f"{kind}: {message}" if message else kind
    return f" ({shorten(headline.splitlines()[0], 100)})"


def _short_name(qualified: str) -> str:
    return qualified.rsplit(".", 1)[-1]


def _why_new(task: Task, ledger: Ledger) -> Reason:
    """A task with no record: compare with the last task of the same name."""
    previous = ledger.previous_by_name(task.task_name)
    if previous is None:
        return Reason("new_task", "no record of this task (it never ran)")
    info = task._identity.function
    if previous.task_key == task._identity.key:
        return Reason("targets_changed", "its target list changed since its last run")
    # What counts is the function's name and source, not its module: a
    # script's functions are __main__.f when it runs and script.f when it is
    # imported, and both are the same function.
    if _short_name(previous.func) != _short_name(info.name):
        return Reason("function_changed", f"the function changed since its last run ({previous.func} -> "
                      f"{info.name})", old=previous.func, new=info.name)
    if previous.source_hash != info.source_hash:
        return Reason("function_changed", f"the source of {info.name} changed since its last run",
                      old=previous.source_hash[:12], new=info.source_hash[:12])
    return _arguments_reason(task, previous.args, previous.arguments)


def _arguments_reason(task: Task, old_text: str, old_tree: str | None) -> Reason:
    """Which argument changed, with old and new values shortened around the
    difference."""
    if old_tree is not None:
        found = changes(old_tree, argument_tree(task._args, task._kwargs))
        if found:
            first = found[0]
            detail = f"its arguments changed: {first.describe()}"
            if len(found) > 1:
                more = ", ".join(change.path for change in found[1:4])
                detail += f" (and {len(found) - 1} more: {more}{', ...' if len(found) > 4 else ''})"
            return Reason("arguments_changed", detail, old=first.old, new=first.new, argument=first.path)
        return Reason("arguments_changed",
                      "its arguments changed in a way their printed form does not show", old=old_text)
    # A record from an older ledger kept only the arguments' text.
    now = describe_arguments(task._args, task._kwargs)
    if now == old_text:
        return Reason("arguments_changed",
                      "its arguments changed in a way their printed form does not show", old=old_text, new=now)
    return Reason("arguments_changed", f"its arguments changed ({text_change(old_text, now)})",
                  old=old_text, new=now)


def decide(task: Task, ledger: Ledger, cache: DigestCache) -> Decision:
    """Decide whether ``task`` must run, looking at its record and the disk."""
    candidates = task._identity.candidate_paths
    found = input_files(candidates, task._ignore, task._ignore_directories) if candidates else {}
    inputs = tuple(found)
    record = ledger.lookup(task._identity.record_key)
    reasons: list[Reason] = []
    if task._transient_run:
        reasons.append(Reason("transient_run", "transient_run=True: runs every time"))
    unusable = _unusable_record(task, ledger, record)
    if unusable is not None:
        reasons.append(unusable)
        return Decision(True, tuple(reasons), inputs, record)
    assert record is not None
    if task._store_result and not record.has_result:
        reasons.append(Reason("result_missing", "store_result=True but no result is recorded"))
    # Targets first: a missing target is a stat away, and the commonest cause.
    reasons.extend(_target_reasons(task, record, cache))
    reasons.extend(_input_reasons(found, record, task._hash_algorithm, cache))
    return Decision(bool(reasons), tuple(reasons), inputs, record)


def _unusable_record(task: Task, ledger: Ledger, record: TaskRecord | None) -> Reason | None:
    """Why the record cannot let the task skip whatever the disk says (none, a
    failed run, another hash algorithm), or None when the files decide."""
    if record is None:
        return _why_new(task, ledger)
    if record.state != "done":
        summary = _failure_summary(record.error)
        return Reason("previous_run_failed", f"its last run failed{summary}", old=record.error)
    if record.hash_algorithm != task._hash_algorithm:
        return Reason(
            "hash_algorithm_changed",
            f"hash_algorithm changed ({record.hash_algorithm} -> {task._hash_algorithm})",
            old=record.hash_algorithm, new=task._hash_algorithm,
        )
    return None


def _target_reasons(task: Task, record: TaskRecord, cache: DigestCache) -> list[Reason]:
    """Each target that was never recorded, is missing, changed or cannot be read."""
    reasons: list[Reason] = []
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
    return reasons


def _input_reasons(inputs: dict[str, FileStat], record: TaskRecord, algorithm: str,
                   cache: DigestCache) -> list[Reason]:
    """Each input file added since the record, gone, changed or unreadable
    (``inputs``: each with its stat, just taken)."""
    reasons: list[Reason] = []
    if not inputs and not record.inputs:  # the common task without input files
        return reasons
    for path in inputs:
        if path not in record.inputs:
            reasons.append(Reason("input_added", f"new input file {path}", path))
    for path, recorded in record.inputs.items():
        st = inputs.get(path)
        if st is None:
            reasons.append(Reason("input_removed", f"input file {path} is gone or no longer an input", path))
            continue
        try:
            change = compare(path, recorded, algorithm, cache, st)
        except OSError as error:
            reasons.append(Reason("input_changed", f"input {path} cannot be read ({error})", path))
            continue
        if change is not None:
            reasons.append(Reason("input_changed", f"input {change.describe()}", path, change.old, change.new))
    return reasons
