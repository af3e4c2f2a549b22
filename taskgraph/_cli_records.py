"""``taskgraph status`` and ``taskgraph explain``: each record's state, and why
a task ran or was skipped and whether it would run now.

Imports ``_view`` (what is shown), ``_ledger``'s read side, ``_cli_common``,
``_arguments`` (shortening), ``_failure`` and ``_escape``. What it says about
files is ``_view``'s comparison, the scheduler's own.
"""

from __future__ import annotations

import argparse
import json
import socket
from typing import Any, TextIO

from taskgraph._arguments import shorten
from taskgraph._cli_common import in_graph, last_seen, listing, resolve_one
from taskgraph._escape import terminal
from taskgraph._failure import format_frames
from taskgraph._fingerprint import Fingerprint
from taskgraph._ledger_read import DecisionRow, LedgerReader, RunRow, TaskRow
from taskgraph._view import (
    Entry,
    View,
    build,
    changed_files,
    counts,
    describe_counts,
    ended_run_states,
    failure_of,
    mebibytes,
    seconds,
    when,
)

# -- status -------------------------------------------------------------------------------


def _current_line(view: View, run: RunRow) -> str:
    """Where the current graph comes from: its run and what became of its tasks."""
    states = ended_run_states(view.reader, run.run_id)
    given = f"{run.tasks} tasks" if run.tasks is not None else "its tasks"
    if states:
        given += ": " + describe_counts(states)
    if view.unrecorded:
        given += (f"; {view.unrecorded} of them were never decided, so they have no record"
                  if view.unrecorded > 1 else "; 1 of them was never decided, so it has no record")
    return f"current graph: run {run.run_id}, ended {when(run.ended)} ({given})"


def _later_line(view: View, later: RunRow, status: str) -> str:
    """A run after the current graph's: in progress, not ended elsewhere, or killed."""
    here = socket.gethostname()
    where = f"pid {later.pid}" + (f" on {later.host}" if later.host != here else "")
    if status != "running":
        return (f"run {later.run_id} did not finish ({where}, started {when(later.started)}, is gone: "
                "killed or crashed); what it recorded is shown with the current graph")
    if later.host != here:
        return (f"run {later.run_id} has not ended ({where}, started {when(later.started)}): it "
                "may still be running there, or was killed")
    count = view.reader.considered(later.run_id)
    return (f"run {later.run_id} is in progress ({where}, started {when(later.started)}): "
            f"{count} of its tasks committed so far (its decisions are committed with the "
            "tasks it finishes) are shown with the current graph")


def _run_lines(view: View) -> list[str]:
    """Where the current graph comes from, and any run after it."""
    run = view.run(view.current)
    lines = ["no run has ended yet: every record is shown" if run is None else _current_line(view, run)]
    lines += [_later_line(view, later, status) for later, status in view.later
              if run is None or later.run_id >= run.run_id]
    return lines


def _history_line(view: View) -> str:
    count = view.history
    these = "record is" if count == 1 else "records are"
    return (f"{count} older {these} history (not considered since run {view.current}): "
            f"`taskgraph status --all` lists {'it' if count == 1 else 'them'}, "
            f"`taskgraph forget --stale` drops {'it' if count == 1 else 'them'}")


def _failure_lines(task: TaskRow) -> list[str]:
    """A failed record as the user wrote it: their frames, then type and message."""
    failure = failure_of(task)
    if failure is None:
        return []
    if failure.frames:
        lines = format_frames(failure.frames, failure.omitted)
        lines.append(failure.headline())
        lines.extend(failure.message.splitlines()[1:6])
        return lines
    return (task.error or "").rstrip().splitlines()[-6:]


def _restored(reasons: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ``restored_from_cache`` reason of a decision's reasons, if the task was restored."""
    for reason in reasons:
        if reason.get("code") == "restored_from_cache":
            return reason
    return None


def _summary(reader: LedgerReader, entries: list[Entry]) -> dict[str, Any]:
    """How many tasks, of each state, and the bytes restored from the cache."""
    summary: dict[str, Any] = {"tasks": len(entries), **counts(entry.state for entry in entries)}
    if "restored" in summary:
        # (one query: a restore's decision is always written)
        reasons = reader.stored_reasons({entry.key for entry in entries if entry.state == "restored"})
        summary["restored_bytes"] = sum(
            int((_restored(listed) or {}).get("new", {}).get("bytes", 0)) for listed in reasons.values()
        )
    return summary


def _status_row(entry: Entry, task: TaskRow | None) -> dict[str, Any]:
    failure = failure_of(task) if task is not None else None
    return {
        "name": entry.name,
        "key": entry.key,
        "state": entry.state,
        "run": entry.run,
        "current": entry.current,
        "recorded": entry.recorded or None,
        "last_run": entry.ended,
        "duration": entry.duration,
        "cpu_time": entry.cpu_time,
        "peak_memory": entry.peak_memory,
        "targets": entry.targets,
        "error": task.error if task is not None else None,
        "error_type": failure.type if failure else None,
        "error_message": failure.message if failure else None,
        "error_frames": [{"file": f, "line": n, "function": func, "code": code}
                         for f, n, func, code in failure.frames] if failure else None,
    }


def _write_json(workspace: str, view: View, entries: list[Entry], summary: dict[str, Any], out: TextIO) -> None:
    runs = [{"run": run.run_id, "status": status, "started": run.started, "pid": run.pid, "host": run.host}
            for run, status in view.later]
    failed = view.failed()
    # One task per line: readable, greppable, and written by json's C encoder.
    head = json.dumps({"workspace": workspace, "current_run": view.current, "later_runs": runs})
    out.write(head[:-1] + ', "tasks": [\n')
    out.write(",\n".join(json.dumps(_status_row(entry, failed.get(entry.key))) for entry in entries))
    out.write(f'\n], "summary": {json.dumps(summary)}, "history": {view.history}}}\n')


def _table(entries: list[Entry], failed: dict[str, TaskRow] | None) -> str:
    """The table of tasks, one line each whatever its name holds (names are
    shown escaped); with ``failed``, each failure's lines below its task."""
    names = [terminal(entry.name) for entry in entries]
    width = max([len(name) for name in names] + [4])
    lines = [f"{'TASK':<{width}}  {'STATE':<11} {'RUN':>4} {'LAST RUN':<19} {'DURATION':>9} {'CPU':>9} "
             f"{'PEAK MEM':>9}  TARGETS\n"]
    append = lines.append
    for name, entry in zip(names, entries, strict=True):
        append(
            f"{name:<{width}}  {entry.state:<11} {entry.run or '-':>4} {when(entry.ended):<19} "
            f"{seconds(entry.duration):>9} {seconds(entry.cpu_time):>9} "
            f"{mebibytes(entry.peak_memory):>9}  {entry.targets}\n"
        )
        if failed is not None and entry.key in failed:
            lines.extend(f"    {terminal(line)}\n" for line in _failure_lines(failed[entry.key]))
    return "".join(lines)


def _total_line(entries: list[Entry], summary: dict[str, Any]) -> str:
    text = describe_counts({key: value for key, value in summary.items() if key not in ("tasks", "restored_bytes")})
    if "restored" in summary:
        text += f" ({summary['restored_bytes'] / 2**20:.1f} MiB from the cache)"
    drift = sum(entry.targets in ("missing", "changed") for entry in entries)
    return (f"{len(entries)} tasks" + (f": {text}" if text else "")
            + (f"; {drift} with missing or changed targets" if drift else "") + "\n")


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    reader = LedgerReader(args.workspace)
    view = build(reader, everything=args.all, edges=False)
    entries = [entry for entry in view.entries if not args.failed or entry.recorded == "failed"]
    summary = _summary(reader, entries)
    if args.json:
        _write_json(args.workspace, view, entries, summary, out)
        return 0
    for line in _run_lines(view):
        out.write(line + "\n")
    out.write(_table(entries, view.failed() if args.failed else None))
    out.write(_total_line(entries, summary))
    if view.history and not args.all and not args.failed:
        out.write(_history_line(view) + "\n")
    return 0


# -- explain ------------------------------------------------------------------------------


def _where(reader: LedgerReader, task: TaskRow, current: int | None) -> str:
    """Where a record stands: in the current graph, considered by a later run, or history."""
    if not in_graph(task, current):
        return (f"history: not in the current graph (run {current}); last considered {last_seen(reader, task)}; "
                "`taskgraph forget --stale` drops it")
    if current is not None and task.seen is not None and task.seen == current:
        return f"in the current graph (run {current})"
    return f"considered by run {task.seen}" if task.seen else ""


def _decision_lines(decision: DecisionRow) -> str:
    """The last decision about a record, with its reasons."""
    verb = "ran" if decision.action == "run" else "was skipped (up to date)"
    if decision.action == "run" and _restored(decision.reasons) is not None:
        verb = "was restored from the shared cache (its function did not run)"
    text = f"last decision ({when(decision.decided_at)}, run {decision.run_id}): it {verb}"
    text += ":\n" if decision.reasons else "\n"
    return text + "".join(f"  - {terminal(str(reason.get('detail')))}\n" for reason in decision.reasons)


def _last_run_lines(task: TaskRow) -> str:
    """How the record's last execution ended: the failure and its last frame, or when and where."""
    failure = failure_of(task)
    if failure is None:
        return f"last run finished {when(task.ended)} in {seconds(task.duration)} on {terminal(str(task.worker))}\n"
    text = f"last run failed at {when(task.ended)} (run {task.run_id}): {terminal(failure.headline())}\n"
    return text + "".join(f"  {terminal(line)}\n" for line in format_frames(failure.frames[-1:]))


def _now_lines(reader: LedgerReader, task: TaskRow, inputs: dict[str, Fingerprint],
               targets: dict[str, Fingerprint]) -> str:
    """Whether it would run now, as far as the files show, and why."""
    now = ["its last run failed"] if task.state == "failed" else []
    now += [f"{role} {terminal(path)} is {state}"
            for role, path, state in changed_files(inputs, targets, reader, read=True)]
    if now:
        return "now: it would run, because:\n" + "".join(f"  - {line}\n" for line in now)
    return (f"now: up to date as far as the files show ({len(inputs)} inputs and {len(targets)} "
            "targets match the ledger). A change to the function's source or its arguments is "
            "seen only when the script runs.\n")


def cmd_explain(args: argparse.Namespace, out: TextIO) -> int:
    reader = LedgerReader(args.workspace)
    current = reader.current_run()
    resolved = resolve_one(reader, args.task, current)
    task = resolved.task
    inputs, targets = reader.record_files(task.record_key)
    decision = reader.decision(task.record_key)
    where = _where(reader, task, current)
    out.write(f"task {task.name!r} (key {task.record_key[:12]})" + (f", {where}" if where else "") + "\n")
    out.write(f"  function:  {terminal(task.func)}\n  arguments: {terminal(shorten(task.args, 400))}\n")
    out.write(f"  hash:      {terminal(task.hash_algorithm)}\n")
    if decision is not None:
        out.write(_decision_lines(decision))
    out.write(_last_run_lines(task))
    out.write(_now_lines(reader, task, inputs, targets))
    if resolved.others:
        count = len(resolved.others)
        out.write(f"{count} older record{'s' if count > 1 else ''} of this name (history): "
                  f"{listing(reader, resolved.others, reference=task)}; "
                  f"`taskgraph explain {args.workspace} KEY` explains one, "
                  "`taskgraph status --all` lists them\n")
    return 0
