"""``taskgraph graph``, ``trace`` and ``report``: a workspace written out for
other tools: the graph as Graphviz dot, a Mermaid flowchart or JSON (or an
image through Graphviz), a run as a Chrome trace, the HTML run report.

Imports ``_view``, ``_ledger``'s read side, ``_escape``, ``_cli_common``, and
``_report`` when a report is asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from typing import Any, TextIO

from taskgraph._cli_common import CommandError
from taskgraph._escape import dot_id, dot_label, mermaid_id, mermaid_label
from taskgraph._ledger_read import LedgerReader, RunRow, TaskRow
from taskgraph._view import View, build, executed, executed_in, seconds

_STATE_COLOURS = {"ran": "#a5d6a7", "restored": "#c8e6c9", "skipped": "#e8f5e9", "failed": "#ef9a9a",
                  "stale": "#e0e0e0", "cancelled": "#ffe0b2", "running": "#90caf9", "pending": "#e3f2fd",
                  "interrupted": "#ffcc80"}

# -- graph --------------------------------------------------------------------------------


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
        label = f"{dot_label(node['name'])}\\n{seconds(node['duration'])}"
        colour = _STATE_COLOURS.get(node["state"], "#eeeeee")
        lines.append(f'  {dot_id(node["key"][:16])} [label="{label}", fillcolor="{colour}"];')
    lines += [f"  {dot_id(a[:16])} -> {dot_id(b[:16])};" for a, b in edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid(nodes: list[dict[str, Any]], edges: list[tuple[str, str]]) -> str:
    lines = ["flowchart LR"]
    for node in nodes:
        label = f"{mermaid_label(node['name'])}<br/>{seconds(node['duration'])}"
        lines.append(f'  {mermaid_id(node["key"])}["{label}"]:::{node["state"]}')
    lines += [f"  {mermaid_id(a)} --> {mermaid_id(b)}" for a, b in edges]
    lines += [f"  classDef {state} fill:{colour}" for state, colour in _STATE_COLOURS.items()]
    return "\n".join(lines) + "\n"


def _json(nodes: list[dict[str, Any]], edges: list[tuple[str, str]]) -> str:
    return json.dumps({"nodes": nodes, "edges": [{"from": a, "to": b} for a, b in edges]}, indent=1) + "\n"


_WRITERS = {"dot": _dot, "mermaid": _mermaid, "json": _json}
_FORMATS_BY_SUFFIX = {".dot": "dot", ".gv": "dot", ".mmd": "mermaid", ".mermaid": "mermaid", ".json": "json"}
_IMAGE_SUFFIXES = (".svg", ".png", ".pdf")


def _render_image(text: str, suffix: str, output: str) -> None:
    """Draw dot source into an image file with Graphviz."""
    dot = shutil.which("dot")
    if dot is None:
        raise CommandError(
            "rendering an image needs Graphviz's `dot`, which is not installed: install it "
            "(apt-get install graphviz, brew install graphviz or conda install graphviz), or "
            "write the source with `-o graph.dot` (or a Mermaid chart with `-o graph.mmd`)"
        )
    subprocess.run([dot, f"-T{suffix[1:]}", "-o", output], input=text, text=True, check=True)


def cmd_graph(args: argparse.Namespace, out: TextIO) -> int:
    reader = LedgerReader(args.workspace)
    view = build(reader, everything=args.all, check_targets=False)
    nodes, edges = _graph_model(view)
    suffix = os.path.splitext(args.output)[1].lower() if args.output else ""
    image = suffix in _IMAGE_SUFFIXES
    fmt = "dot" if image else (args.format or _FORMATS_BY_SUFFIX.get(suffix, "dot"))
    text = _WRITERS[fmt](nodes, edges)
    if image:
        _render_image(text, suffix, args.output)
        out.write(f"wrote {args.output} ({len(nodes)} tasks, {len(edges)} dependencies)\n")
    elif args.output:
        with open(args.output, "w", encoding="utf-8") as stream:
            stream.write(text)
        out.write(f"wrote {args.output} ({fmt}, {len(nodes)} tasks, {len(edges)} dependencies)\n")
    else:
        out.write(text)
    return 0


# -- trace --------------------------------------------------------------------------------


def _check_run(workspace: str, run_id: int, runs: dict[int, RunRow], tasks: list[TaskRow]) -> None:
    """Refuse a run that does not exist, or has no task to show."""
    if run_id not in runs:
        raise CommandError(f"there is no run {run_id} in {workspace} (runs 1 to {max(runs, default=0)})")
    ran_in = {task.run_id for task in tasks}
    if run_id not in ran_in:
        raise CommandError(
            f"no task recorded in {workspace} last ran in run {run_id} (it executed nothing, or "
            "every task it ran has run again since): runs with tasks to show: "
            + (", ".join(str(run) for run in sorted(run for run in ran_in if run is not None)) or "none")
        )


def _latest_with_tasks(workspace: str, runs: dict[int, RunRow], tasks: list[TaskRow]) -> tuple[int, str]:
    """The latest run that executed tasks, and a note if it is not the latest run."""
    if not tasks:
        raise CommandError(f"no task has run in {workspace} yet")
    last = max(task.run_id for task in tasks if task.run_id is not None)
    latest = max(runs, default=last)
    if latest == last:
        return last, ""
    later = runs[latest]
    did = (f"{later.skipped} skipped" if later.skipped is not None else "its tasks skipped")
    return last, (f"run {latest}, the latest, executed nothing ({did}): the trace is of run {last}, the latest "
                  "that executed tasks (`--run N` chooses another)\n")


def _trace_events(ran: list[TaskRow], run_id: int) -> tuple[list[dict[str, Any]], int]:
    """The Chrome trace events of a run's tasks (a thread per worker), and how many workers."""
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
    events.append({"name": "process_name", "ph": "M", "pid": 1, "args": {"name": f"taskgraph run {run_id}"}})
    return events, len(rows)


def cmd_trace(args: argparse.Namespace, out: TextIO) -> int:
    reader = LedgerReader(args.workspace)
    runs = {run.run_id: run for run in reader.runs()}
    tasks = executed(reader)
    if args.run_id is not None:
        _check_run(args.workspace, args.run_id, runs, tasks)
        last, note = args.run_id, ""
    else:
        last, note = _latest_with_tasks(args.workspace, runs, tasks)
    ran = executed_in(tasks, last)
    run = runs.get(last)
    if run is not None and run.ended is None:
        note += f"run {last} has not ended: the trace has the tasks it recorded so far\n"
    events, workers = _trace_events(ran, last)
    with open(args.output, "w", encoding="utf-8") as stream:
        json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, stream)
    out.write(f"{note}wrote {args.output}: {len(ran)} tasks of run {last} on {workers} workers; "
              "open it in https://ui.perfetto.dev or chrome://tracing\n")
    return 0


# -- report -------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    from taskgraph._report import write_report  # (only this command draws)

    reader = LedgerReader(args.workspace)
    try:
        summary = write_report(reader, args.output)
    finally:
        reader.close()
    out.write(f"wrote {args.output}: {summary}; open it in a web browser (it needs no network)\n")
    return 0
