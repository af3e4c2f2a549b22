"""The ``taskgraph`` command: look into a workspace's ledger.

A client of the ledger's read side (``LedgerReader``) and of the same
fingerprint comparison the scheduler uses, so what it says about files is what
the next run would decide. It never unpickles anything from the ledger.

    taskgraph status WORKSPACE [--all] [--json] [--failed]
    taskgraph explain WORKSPACE TASK
    taskgraph graph WORKSPACE [--format dot|mermaid|json] [-o FILE] [--all]
    taskgraph trace WORKSPACE -o trace.json [--run N]
    taskgraph report WORKSPACE -o report.html
    taskgraph forget WORKSPACE TASK... [--yes]
    taskgraph forget WORKSPACE --stale [--older-than 30d] [--yes]
    taskgraph clean WORKSPACE [--targets] [--yes]

What a workspace's current graph is, and which records are history, is
``_view``'s to say; the HTML report is ``_report``'s.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from taskgraph._arguments import shorten, shorten_pair
from taskgraph._errors import LedgerError, TaskGraphError
from taskgraph._escape import dot_id, dot_label, mermaid_id, mermaid_label, terminal
from taskgraph._failure import format_frames
from taskgraph._ledger import DecisionRow, LedgerReader, TaskRow, forget, forget_stale
from taskgraph._version import __version__
from taskgraph._view import Entry, View, describe_counts, failure_of, file_state, mebibytes, run_status, seconds, when
from taskgraph._view import build as build_view
from taskgraph._view import counts as view_counts

_STATE_COLOURS = {"ran": "#a5d6a7", "restored": "#c8e6c9", "skipped": "#e8f5e9", "failed": "#ef9a9a",
                  "stale": "#e0e0e0", "cancelled": "#ffe0b2", "running": "#90caf9", "pending": "#e3f2fd",
                  "interrupted": "#ffcc80"}


class CommandError(TaskGraphError):
    """A command cannot do what was asked; the message is shown as one line."""


# -- helpers -----------------------------------------------------------------------------


_when, _seconds, _mebibytes = when, seconds, mebibytes
_KEY_CHARS = frozenset("0123456789abcdef")
_MIN_PREFIX = 4


def _in_graph(task: TaskRow, current: int | None) -> bool:
    """Part of the current graph, or of a run after it (not history)."""
    return current is None or (task.seen is not None and task.seen >= current)


def _last_seen(reader: LedgerReader, task: TaskRow) -> str:
    run, at = reader.last_seen(task.record_key)
    return f"run {run}, {_when(at)}" if run else _when(at)


def _listing(reader: LedgerReader, tasks: Sequence[TaskRow], limit: int = 6, reference: TaskRow | None = None) -> str:
    """Records to choose from: key prefix, where they were last seen, and
    their arguments around where they differ from the reference's (or the
    first one's)."""
    parts = []
    reference = reference or tasks[0]
    for task in tasks[:limit]:
        if reference is not task:
            args = shorten_pair(reference.args, task.args, 40)[1]
        else:
            args = shorten(task.args, 40)
        parts.append(f"{task.record_key[:12]} ({_last_seen(reader, task)}: {args})")
    more = f", and {len(tasks) - limit} more" if len(tasks) > limit else ""
    return ", ".join(parts) + more


@dataclass(frozen=True, slots=True)
class Resolved:
    """A record named on the command line, and the other records of its name."""

    task: TaskRow
    others: list[TaskRow]
    by_key: bool


def _resolve_one(reader: LedgerReader, wanted: str, current: int | None) -> Resolved:
    """The record meant by a name or a key prefix: a name means its record in
    the current graph (or its only record); clear errors otherwise."""
    named = reader.named(wanted)
    if named:
        live = [task for task in named if _in_graph(task, current)]
        history = [task for task in named if not _in_graph(task, current)]
        if len(live) == 1:
            return Resolved(live[0], history, False)
        if len(live) > 1:
            raise CommandError(
                f"{len(live)} tasks of the current graph are named {wanted!r}; give a key prefix instead: "
                f"{_listing(reader, live)}"
            )
        if len(history) == 1:
            return Resolved(history[0], [], False)
        raise CommandError(
            f"{len(history)} records are named {wanted!r}, none of them in the current graph (run {current}); "
            f"give a key prefix instead: {_listing(reader, history)}"
        )
    prefix = wanted.lower()
    looks_like_key = bool(prefix) and set(prefix) <= _KEY_CHARS
    if looks_like_key and len(prefix) >= _MIN_PREFIX:
        matches = reader.with_prefix(prefix)
        if len(matches) == 1:
            return Resolved(matches[0], [], True)
        if matches:
            raise CommandError(
                f"{len(matches)} records have keys starting with {wanted!r}; give more of the key: "
                f"{_listing(reader, matches)}"
            )
    close = difflib.get_close_matches(wanted, reader.names(), n=5)
    hint = f"; close matches: {', '.join(repr(name) for name in close)}" if close else ""
    if looks_like_key and len(prefix) < _MIN_PREFIX:
        hint += f" (a key prefix needs at least {_MIN_PREFIX} characters)"
    raise CommandError(f"no task named {wanted!r} in {reader.workspace}{hint}")


def _restored(decision: DecisionRow) -> dict[str, Any] | None:
    """The ``restored_from_cache`` reason of a decision, if the task was restored."""
    for reason in decision.reasons:
        if reason.get("code") == "restored_from_cache":
            return reason
    return None


def _resolve(reader: LedgerReader, names: Sequence[str]) -> list[TaskRow]:
    """Tasks named by name or record-key prefix; clear errors otherwise."""
    current = reader.current_run()
    return [_resolve_one(reader, wanted, current).task for wanted in names]


def _confirm(question: str, assume_yes: bool, stdin: TextIO) -> bool:
    if assume_yes:
        return True
    if not stdin.isatty():
        raise CommandError(f"{question} Refusing without a terminal to ask on: add --yes")
    sys.stdout.write(f"{question} [y/N] ")
    sys.stdout.flush()
    return stdin.readline().strip().lower() in ("y", "yes")


def _run_lines(view: View) -> list[str]:
    """Where the current graph comes from, and any run after it."""
    lines = []
    run = view.run(view.current)
    if run is None:
        lines.append("no run has ended yet: every record is shown")
    else:
        states = view.reader.run_states(run.run_id)
        for unfinished in ("pending", "running"):  # the run ended before they finished
            states["cancelled"] = states.get("cancelled", 0) + states.pop(unfinished, 0)
        given = f"{run.tasks} tasks" if run.tasks is not None else "its tasks"
        if states:
            given += ": " + describe_counts(states)
        if view.unrecorded:
            given += (f"; {view.unrecorded} of them were never decided, so they have no record"
                      if view.unrecorded > 1 else "; 1 of them was never decided, so it has no record")
        lines.append(f"current graph: run {run.run_id}, ended {_when(run.ended)} ({given})")
    for later, status in view.later:
        if run is not None and later.run_id < run.run_id:
            continue
        where = f"pid {later.pid}" + (f" on {later.host}" if later.host != socket.gethostname() else "")
        count = view.reader.considered(later.run_id)
        if status == "running":
            if later.host != socket.gethostname():
                lines.append(f"run {later.run_id} has not ended ({where}, started {_when(later.started)}): it "
                             "may still be running there, or was killed")
            else:
                lines.append(f"run {later.run_id} is in progress ({where}, started {_when(later.started)}): "
                             f"{count} of its tasks committed so far (its decisions are committed with the "
                             "tasks it finishes) are shown with the current graph")
        else:
            lines.append(f"run {later.run_id} did not finish ({where}, started {_when(later.started)}, is gone: "
                         "killed or crashed); what it recorded is shown with the current graph")
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


# -- commands ----------------------------------------------------------------------------


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


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    reader = LedgerReader(args.workspace)
    view = build_view(reader, everything=args.all, edges=False)
    failed = view.failed()
    entries = [entry for entry in view.entries if not args.failed or entry.recorded == "failed"]
    summary: dict[str, Any] = {"tasks": len(entries), **view_counts(entry.state for entry in entries)}
    if "restored" in summary:
        decisions = [reader.decision(entry.key) for entry in entries if entry.state == "restored"]
        summary["restored_bytes"] = sum(
            int((_restored(decision) or {}).get("new", {}).get("bytes", 0))
            for decision in decisions if decision is not None
        )
    if args.json:
        runs = [{"run": run.run_id, "status": status, "started": run.started, "pid": run.pid, "host": run.host}
                for run, status in view.later]
        # One task per line: readable, greppable, and written by json's C encoder.
        head = json.dumps({"workspace": args.workspace, "current_run": view.current, "later_runs": runs})
        out.write(head[:-1] + ', "tasks": [\n')
        out.write(",\n".join(json.dumps(_status_row(entry, failed.get(entry.key))) for entry in entries))
        out.write(f'\n], "summary": {json.dumps(summary)}, "history": {view.history}}}\n')
        return 0
    for line in _run_lines(view):
        out.write(line + "\n")
    # One line per task whatever its name holds: names are shown escaped.
    names = [terminal(entry.name) for entry in entries]
    width = max([len(name) for name in names] + [4])
    out.write(f"{'TASK':<{width}}  {'STATE':<11} {'RUN':>4} {'LAST RUN':<19} {'DURATION':>9} {'CPU':>9} "
              f"{'PEAK MEM':>9}  TARGETS\n")
    lines: list[str] = []
    append = lines.append
    for name, entry in zip(names, entries, strict=True):
        duration, cpu = entry.duration, entry.cpu_time
        append(
            f"{name:<{width}}  {entry.state:<11} {entry.run or '-':>4} {_when(entry.ended):<19} "
            f"{f'{duration:.2f}s' if duration is not None and duration < 60 else _seconds(duration):>9} "
            f"{f'{cpu:.2f}s' if cpu is not None and cpu < 60 else _seconds(cpu):>9} "
            f"{_mebibytes(entry.peak_memory):>9}  {entry.targets}\n"
        )
        if args.failed and entry.key in failed:
            lines.extend(f"    {terminal(line)}\n" for line in _failure_lines(failed[entry.key]))
    out.write("".join(lines))
    counts = describe_counts({key: value for key, value in summary.items() if key not in ("tasks", "restored_bytes")})
    if "restored" in summary:
        counts += f" ({summary['restored_bytes'] / 2**20:.1f} MiB from the cache)"
    drift = sum(entry.targets in ("missing", "changed") for entry in entries)
    out.write(f"{len(entries)} tasks" + (f": {counts}" if counts else "")
              + (f"; {drift} with missing or changed targets" if drift else "") + "\n")
    if view.history and not args.all and not args.failed:
        out.write(_history_line(view) + "\n")
    return 0


def cmd_explain(args: argparse.Namespace, out: TextIO) -> int:
    reader = LedgerReader(args.workspace)
    current = reader.current_run()
    resolved = _resolve_one(reader, args.task, current)
    task = resolved.task
    inputs, targets = reader.record_files(task.record_key)
    decision = reader.decision(task.record_key)
    if _in_graph(task, current):
        where = f"in the current graph (run {current})" if current is not None and task.seen is not None \
            and task.seen == current else (f"considered by run {task.seen}" if task.seen else "")
    else:
        where = (f"history: not in the current graph (run {current}); last considered {_last_seen(reader, task)}; "
                 "`taskgraph forget --stale` drops it")
    out.write(f"task {task.name!r} (key {task.record_key[:12]})" + (f", {where}" if where else "") + "\n")
    out.write(f"  function:  {terminal(task.func)}\n  arguments: {terminal(shorten(task.args, 400))}\n")
    out.write(f"  hash:      {terminal(task.hash_algorithm)}\n")
    if decision is not None:
        verb = "ran" if decision.action == "run" else "was skipped (up to date)"
        if decision.action == "run" and _restored(decision) is not None:
            verb = "was restored from the shared cache (its function did not run)"
        out.write(f"last decision ({_when(decision.decided_at)}, run {decision.run_id}): it {verb}")
        out.write(":\n" if decision.reasons else "\n")
        for reason in decision.reasons:
            out.write(f"  - {terminal(str(reason.get('detail')))}\n")
    failure = failure_of(task)
    if failure is not None:
        out.write(f"last run failed at {_when(task.ended)} (run {task.run_id}): {terminal(failure.headline())}\n")
        for line in format_frames(failure.frames[-1:]):
            out.write(f"  {terminal(line)}\n")
    else:
        out.write(f"last run finished {_when(task.ended)} in {_seconds(task.duration)} on "
                  f"{terminal(str(task.worker))}\n")
    now: list[str] = []
    if task.state == "failed":
        now.append("its last run failed")
    for role, recorded in (("target", targets), ("input", inputs)):
        for path, fp in recorded.items():
            state = file_state(path, fp, reader, read=True)
            if state != "ok":
                now.append(f"{role} {terminal(path)} is {state}")
    if now:
        out.write("now: it would run, because:\n")
        for line in now:
            out.write(f"  - {line}\n")
    else:
        out.write(
            f"now: up to date as far as the files show ({len(inputs)} inputs and {len(targets)} "
            "targets match the ledger). A change to the function's source or its arguments is "
            "seen only when the script runs.\n"
        )
    if resolved.others:
        count = len(resolved.others)
        out.write(f"{count} older record{'s' if count > 1 else ''} of this name (history): "
                  f"{_listing(reader, resolved.others, reference=task)}; "
                  f"`taskgraph explain {args.workspace} KEY` explains one, "
                  "`taskgraph status --all` lists them\n")
    return 0


def _graph_model(view: View) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    nodes = [
        {"key": entry.key, "name": entry.name, "state": entry.state, "duration": entry.duration}
        for entry in view.entries
    ]
    return nodes, view.edges


def _dot(nodes: list[dict[str, Any]], edges: list[tuple[str, str]]) -> str:
    lines = ["digraph taskgraph {", "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];']
    for node in nodes:
        # Names are text: escaped so that they add no node, attribute or link.
        label = f"{dot_label(node['name'])}\\n{_seconds(node['duration'])}"
        colour = _STATE_COLOURS.get(node["state"], "#eeeeee")
        lines.append(f'  {dot_id(node["key"][:16])} [label="{label}", fillcolor="{colour}"];')
    lines += [f"  {dot_id(a[:16])} -> {dot_id(b[:16])};" for a, b in edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid(nodes: list[dict[str, Any]], edges: list[tuple[str, str]]) -> str:
    lines = ["flowchart LR"]
    for node in nodes:
        label = f"{mermaid_label(node['name'])}<br/>{_seconds(node['duration'])}"
        lines.append(f'  {mermaid_id(node["key"])}["{label}"]:::{node["state"]}')
    lines += [f"  {mermaid_id(a)} --> {mermaid_id(b)}" for a, b in edges]
    lines += [f"  classDef {state} fill:{colour}" for state, colour in _STATE_COLOURS.items()]
    return "\n".join(lines) + "\n"


_FORMATS_BY_SUFFIX = {".dot": "dot", ".gv": "dot", ".mmd": "mermaid", ".mermaid": "mermaid", ".json": "json"}
_IMAGE_SUFFIXES = (".svg", ".png", ".pdf")


def cmd_graph(args: argparse.Namespace, out: TextIO) -> int:
    reader = LedgerReader(args.workspace)
    view = build_view(reader, everything=args.all, check_targets=False)
    nodes, edges = _graph_model(view)
    suffix = os.path.splitext(args.output)[1].lower() if args.output else ""
    image = suffix in _IMAGE_SUFFIXES
    fmt = "dot" if image else (args.format or _FORMATS_BY_SUFFIX.get(suffix, "dot"))
    if fmt == "json":
        text = json.dumps({"nodes": nodes, "edges": [{"from": a, "to": b} for a, b in edges]}, indent=1) + "\n"
    elif fmt == "mermaid":
        text = _mermaid(nodes, edges)
    else:
        text = _dot(nodes, edges)
    if image:
        dot = shutil.which("dot")
        if dot is None:
            raise CommandError(
                "rendering an image needs Graphviz's `dot`, which is not installed: install it "
                "(apt-get install graphviz, brew install graphviz or conda install graphviz), or "
                "write the source with `-o graph.dot` (or a Mermaid chart with `-o graph.mmd`)"
            )
        subprocess.run([dot, f"-T{suffix[1:]}", "-o", args.output], input=text, text=True, check=True)
        out.write(f"wrote {args.output} ({len(nodes)} tasks, {len(edges)} dependencies)\n")
    elif args.output:
        with open(args.output, "w", encoding="utf-8") as stream:
            stream.write(text)
        out.write(f"wrote {args.output} ({fmt}, {len(nodes)} tasks, {len(edges)} dependencies)\n")
    else:
        out.write(text)
    return 0


def cmd_trace(args: argparse.Namespace, out: TextIO) -> int:
    reader = LedgerReader(args.workspace)
    runs = {run.run_id: run for run in reader.runs()}
    tasks = [task for task in reader.tasks() if task.started is not None and task.run_id is not None]
    executed = {task.run_id for task in tasks}
    note = ""
    if args.run_id is not None:
        if args.run_id not in runs:
            raise CommandError(f"there is no run {args.run_id} in {args.workspace} (runs 1 to {max(runs, default=0)})")
        if args.run_id not in executed:
            raise CommandError(
                f"no task recorded in {args.workspace} last ran in run {args.run_id} (it executed nothing, or "
                "every task it ran has run again since): runs with tasks to show: "
                + (", ".join(str(run) for run in sorted(run for run in executed if run is not None)) or "none")
            )
        last = args.run_id
    else:
        if not tasks:
            raise CommandError(f"no task has run in {args.workspace} yet")
        last = max(task.run_id for task in tasks if task.run_id is not None)
        latest = max(runs, default=last)
        if latest != last:
            later = runs[latest]
            did = (f"{later.skipped} skipped" if later.skipped is not None else "its tasks skipped")
            note = (f"run {latest}, the latest, executed nothing ({did}): the trace is of run {last}, the latest "
                    "that executed tasks (`--run N` chooses another)\n")
    ran = sorted((task for task in tasks if task.run_id == last), key=lambda task: task.started or 0)
    run = runs.get(last)
    if run is not None and run.ended is None:
        note += f"run {last} has not ended: the trace has the tasks it recorded so far\n"
    origin = min(task.started or 0 for task in ran)
    rows: dict[str, int] = {}
    events: list[dict[str, Any]] = []
    for task in ran:
        row = rows.setdefault(task.worker or "?", len(rows) + 1)
        events.append({
            "name": task.name, "cat": task.state, "ph": "X", "pid": 1, "tid": row,
            "ts": round(((task.started or 0) - origin) * 1e6), "dur": round((task.duration or 0) * 1e6),
            "args": {"key": task.record_key[:12], "state": task.state, "error": (task.error or "")[-500:]},
        })
    events += [
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": row, "args": {"name": worker}}
        for worker, row in rows.items()
    ]
    events.append({"name": "process_name", "ph": "M", "pid": 1, "args": {"name": f"taskgraph run {last}"}})
    with open(args.output, "w", encoding="utf-8") as stream:
        json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, stream)
    out.write(f"{note}wrote {args.output}: {len(ran)} tasks of run {last} on {len(rows)} workers; "
              "open it in https://ui.perfetto.dev or chrome://tracing\n")
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` in seconds (argparse type)."""
    number, unit = text[:-1], text[-1:].lower()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: write a number and a unit, one of s, m, h, d, w (30d, 12h)")
    return value * _UNITS[unit]


def _forget_stale(args: argparse.Namespace, out: TextIO) -> int:
    reader = LedgerReader(args.workspace)
    try:
        current = reader.current_run()
        if current is None:
            out.write("nothing is history: no run has ended yet, so there is no current graph\n")
            return 0
        for run in reader.runs():
            if run_status(run) == "running" and run.host == socket.gethostname():
                raise CommandError(
                    f"run {run.run_id} is in progress (pid {run.pid}): it may be using records that are "
                    "history now; forget --stale once it has ended"
                )
        before = time.time() - args.older_than if args.older_than is not None else None
        stale = reader.stale(current, before)
        kept = reader.history_count(current) - len(stale)
    finally:
        reader.close()
    if not stale:
        more = f" ({kept} history record{'s were' if kept > 1 else ' was'} seen since)" if kept else ""
        out.write(f"nothing to forget: every record is in the current graph (run {current}){more}\n"
                  if not kept else f"nothing to forget: no record was last seen before {_when(before)}{more}\n")
        return 0
    names = sorted({row.name for row in stale})
    shown = ", ".join(repr(name) for name in names[:5])
    if len(names) > 5:
        shown += f" and {len(names) - 5} more names"
    oldest = stale[0]
    question = (f"Forget {len(stale)} record(s) that no run since run {current} considered ({shown}; the oldest "
                f"last seen {_when(oldest.last_seen)}), with their files, decisions and stored results?")
    if not _confirm(question, args.yes, sys.stdin):
        out.write("nothing forgotten\n")
        return 1
    count = forget_stale(args.workspace, [row.record_key for row in stale], before)
    out.write(f"forgot {count} record(s) of history; the current graph (run {current}) is untouched"
              + (f"; {kept} more history records were seen since {_when(before)}" if kept else "") + "\n")
    return 0


def cmd_forget(args: argparse.Namespace, out: TextIO) -> int:
    if args.stale:
        if args.tasks:
            raise CommandError("give either task names or --stale, not both")
        return _forget_stale(args, out)
    if args.older_than is not None:
        raise CommandError("--older-than goes with --stale")
    if not args.tasks:
        raise CommandError("name the tasks to forget (names or key prefixes), or give --stale")
    reader = LedgerReader(args.workspace)
    tasks = _resolve(reader, args.tasks)
    reader.close()
    names = ", ".join(repr(task.name) for task in tasks)
    if not _confirm(f"Forget {len(tasks)} task(s) ({names}); they will run again next time?",
                    args.yes, sys.stdin):
        out.write("nothing forgotten\n")
        return 1
    count = forget(args.workspace, [task.record_key for task in tasks])
    out.write(f"forgot {count} task(s)\n")
    return 0


def cmd_clean(args: argparse.Namespace, out: TextIO) -> int:
    reader = LedgerReader(args.workspace)
    tasks = reader.tasks()
    targets = sorted({path for _, pair in reader.files(role="target").items() for path in pair[1]})
    reader.close()
    what = f"Forget all {len(tasks)} recorded task(s)"
    if args.targets:
        what += f" and delete their {len(targets)} recorded target file(s)"
    if not _confirm(what + "?", args.yes, sys.stdin):
        out.write("nothing cleaned\n")
        return 1
    deleted = 0
    if args.targets:
        for path in targets:
            try:
                if os.path.isfile(path) or os.path.islink(path):
                    os.remove(path)
                    deleted += 1
            except OSError as error:
                out.write(f"could not delete {terminal(path)}: {terminal(str(error))}\n")
    count = forget(args.workspace, [task.record_key for task in tasks])
    out.write(f"forgot {count} task(s)" + (f", deleted {deleted} target file(s)" if args.targets else "") + "\n")
    return 0


def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    from taskgraph._report import write_report

    reader = LedgerReader(args.workspace)
    try:
        summary = write_report(reader, args.output)
    finally:
        reader.close()
    out.write(f"wrote {args.output}: {summary}; open it in a web browser (it needs no network)\n")
    return 0


_WORKSPACE_HELP = "the workspace directory given to TaskGraph (it holds taskgraph_ledger.sqlite)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskgraph", description="Look into a taskgraph workspace's ledger.")
    parser.add_argument("--version", action="version", version=f"taskgraph {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = commands.add_parser("status", help="one line per task of the current graph")
    status.add_argument("workspace", help=_WORKSPACE_HELP)
    status.add_argument("--all", action="store_true", help="the history too: records no run since the current "
                        "graph's considered (state 'stale')")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--failed", action="store_true", help="only failed tasks, with their errors")
    status.set_defaults(run=cmd_status)

    explain = commands.add_parser("explain", help="why a task ran or was skipped, and whether it would run now")
    explain.add_argument("workspace", help=_WORKSPACE_HELP)
    explain.add_argument("task", help="task name (its record in the current graph) or a key prefix (4 or more "
                         "characters, from `status --json` or `status --all`)")
    explain.set_defaults(run=cmd_explain)

    graph = commands.add_parser("graph", help="the current task graph")
    graph.add_argument("workspace", help=_WORKSPACE_HELP)
    graph.add_argument("--format", choices=("dot", "mermaid", "json"), default=None,
                       help="what to write: Graphviz dot (the default), a Mermaid flowchart or JSON; "
                       "without it, -o's extension says (.dot/.gv, .mmd/.mermaid, .json)")
    graph.add_argument("-o", "--output", help="file to write (default: print); .svg/.png/.pdf render with Graphviz")
    graph.add_argument("--all", action="store_true", help="draw the history's records too")
    graph.set_defaults(run=cmd_graph)

    trace = commands.add_parser("trace", help="a run's timeline as a Chrome trace")
    trace.add_argument("workspace", help=_WORKSPACE_HELP)
    trace.add_argument("-o", "--output", required=True,
                       help="the trace file to write (JSON, for https://ui.perfetto.dev or chrome://tracing)")
    trace.add_argument("--run", type=int, dest="run_id", metavar="N",
                       help="which run (default: the latest that executed tasks)")
    trace.set_defaults(run=cmd_trace)

    report = commands.add_parser("report", help="an HTML page: graph, timeline, costs, failures, next run")
    report.add_argument("workspace", help=_WORKSPACE_HELP)
    report.add_argument("-o", "--output", required=True,
                        help="the HTML file to write (one self-contained file, viewable without network)")
    report.set_defaults(run=cmd_report)

    forget_cmd = commands.add_parser("forget", help="drop the records of tasks so they run again, or the history")
    forget_cmd.add_argument("workspace", help=_WORKSPACE_HELP)
    forget_cmd.add_argument("tasks", nargs="*", help="task names or key prefixes")
    forget_cmd.add_argument("--stale", action="store_true", help="drop the history: the records no run since "
                            "the current graph's considered, with their files, decisions and results")
    forget_cmd.add_argument("--older-than", type=_duration, metavar="AGE",
                            help="with --stale: only records last seen longer ago than AGE (30d, 12h, 2w)")
    forget_cmd.add_argument("--yes", action="store_true", help="do not ask")
    forget_cmd.set_defaults(run=cmd_forget)

    clean = commands.add_parser("clean", help="drop every record (and, with --targets, the recorded targets)")
    clean.add_argument("workspace", help=_WORKSPACE_HELP)
    clean.add_argument("--targets", action="store_true", help="also delete recorded target files")
    clean.add_argument("--yes", action="store_true", help="do not ask")
    clean.set_defaults(run=cmd_clean)

    from taskgraph._cli_cache import add_cache_command  # (it imports this module)

    add_cache_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``taskgraph`` console script and ``python -m taskgraph``."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args, sys.stdout))
    except (LedgerError, CommandError) as error:
        sys.stderr.write(f"taskgraph: {terminal(str(error))}\n")
        return 1
    except subprocess.CalledProcessError as error:
        sys.stderr.write(f"taskgraph: Graphviz failed ({error})\n")
        return 1
    except BrokenPipeError:
        return 0
