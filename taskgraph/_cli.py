"""The ``taskgraph`` command: look into a workspace's ledger.

A client of the ledger's read side (``LedgerReader``) and of the same
fingerprint comparison the scheduler uses, so what it says about files is what
the next run would decide. It never unpickles anything from the ledger.

    taskgraph status WORKSPACE [--json] [--failed]
    taskgraph explain WORKSPACE TASK
    taskgraph graph WORKSPACE [--format dot|mermaid|json] [-o FILE]
    taskgraph trace WORKSPACE -o trace.json
    taskgraph forget WORKSPACE TASK... [--yes]
    taskgraph clean WORKSPACE [--targets] [--yes]
    taskgraph cache stats|prune|verify CACHE ...   (see _cli_cache)
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from taskgraph._errors import LedgerError, TaskGraphError
from taskgraph._escape import dot_id, dot_label, mermaid_id, mermaid_label, terminal
from taskgraph._fingerprint import Fingerprint, compare, file_stat, is_content_algorithm
from taskgraph._ledger import DecisionRow, LedgerReader, TaskRow, forget
from taskgraph._version import __version__

_STATE_COLOURS = {"ran": "#a5d6a7", "restored": "#c8e6c9", "skipped": "#e8f5e9", "failed": "#ef9a9a",
                  "stale": "#e0e0e0"}


class CommandError(TaskGraphError):
    """A command cannot do what was asked; the message is shown as one line."""


# -- helpers -----------------------------------------------------------------------------


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def _mebibytes(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.0f}MiB"


def _seconds(duration: float | None) -> str:
    if duration is None:
        return "-"
    if duration < 60:
        return f"{duration:.2f}s"
    minutes, seconds = divmod(duration, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)}h{int(minutes):02d}m{int(seconds):02d}s" if hours else f"{int(minutes)}m{int(seconds):02d}s"


def _file_state(path: str, recorded: Fingerprint, mode: str, reader: LedgerReader, read: bool) -> str:
    """'ok', 'missing', 'changed' or (content modes, without ``read``) 'touched'."""
    if not read and is_content_algorithm(mode):
        st = file_stat(path)
        if st is None:
            return "missing"
        if st.size != recorded.size:
            return "changed"
        entry = reader.lookup_digest(path, mode)
        if entry is None or entry.stat != st:
            return "ok" if st.mtime_ns == recorded.mtime_ns else "touched"
        return "ok" if entry.digest == recorded.digest else "changed"
    try:
        change = compare(path, recorded, mode, reader)
    except OSError:
        return "unreadable"
    if change is None:
        return "ok"
    return "missing" if change.what == "missing" else "changed"


def _targets_state(task: TaskRow, targets: dict[str, Fingerprint], reader: LedgerReader) -> str:
    states = [_file_state(path, fp, fp.mode, reader, read=False) for path, fp in targets.items()]
    for worst in ("missing", "changed", "unreadable", "touched"):
        if worst in states:
            return worst
    return "ok" if states else "-"


def _states(tasks: Sequence[TaskRow], decisions: dict[str, DecisionRow]) -> dict[str, tuple[str, int | None]]:
    """record_key -> (state in the run that last considered it, that run).

    ``'stale'`` marks a record the latest run did not consider (an old
    record, for example of a call whose arguments have since changed).
    """
    latest = max((d.run_id for d in decisions.values() if d.run_id is not None), default=None)
    states: dict[str, tuple[str, int | None]] = {}
    for task in tasks:
        decision = decisions.get(task.record_key)
        run = decision.run_id if decision is not None else task.run_id
        if latest is not None and run is not None and run < latest:
            state = "stale"
        elif task.state == "failed":
            state = "failed"
        elif decision is not None and decision.action == "skip":
            state = "skipped"
        elif decision is not None and _restored(decision) is not None:
            state = "restored"
        else:
            state = "ran"
        states[task.record_key] = (state, run)
    return states


def _restored(decision: DecisionRow) -> dict[str, Any] | None:
    """The ``restored_from_cache`` reason of a decision, if the task was restored."""
    for reason in decision.reasons:
        if reason.get("code") == "restored_from_cache":
            return reason
    return None


def _resolve(reader: LedgerReader, names: Sequence[str]) -> list[TaskRow]:
    """Tasks named by name or record-key prefix; clear errors otherwise."""
    tasks = reader.tasks()
    chosen: list[TaskRow] = []
    for wanted in names:
        matches = [task for task in tasks if task.name == wanted]
        if not matches and len(wanted) >= 4:
            matches = [task for task in tasks if task.record_key.startswith(wanted.lower())]
        if not matches:
            close = difflib.get_close_matches(wanted, sorted({task.name for task in tasks}), n=5)
            hint = f"; close matches: {', '.join(repr(name) for name in close)}" if close else ""
            raise CommandError(f"no task named {wanted!r} in {reader.workspace}{hint}")
        if len(matches) > 1:
            listed = ", ".join(f"{task.record_key[:12]} ({terminal(task.args[:40])})" for task in matches[:8])
            raise CommandError(
                f"{len(matches)} tasks are named {wanted!r}; give a key prefix instead: {listed}"
            )
        chosen.append(matches[0])
    return chosen


def _confirm(question: str, assume_yes: bool, stdin: TextIO) -> bool:
    if assume_yes:
        return True
    if not stdin.isatty():
        raise CommandError(f"{question} Refusing without a terminal to ask on: add --yes")
    sys.stdout.write(f"{question} [y/N] ")
    sys.stdout.flush()
    return stdin.readline().strip().lower() in ("y", "yes")


# -- commands ----------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    reader = LedgerReader(args.workspace)
    tasks = reader.tasks()
    files = reader.files()
    decisions = reader.decisions()
    states = _states(tasks, decisions)
    rows: list[dict[str, Any]] = []
    for task in tasks:
        if args.failed and task.state != "failed":
            continue
        targets = files.get(task.record_key, ({}, {}))[1]
        state, run = states[task.record_key]
        rows.append({
            "name": task.name,
            "key": task.record_key,
            "state": state,
            "run": run,
            "recorded": task.state,
            "last_run": task.ended,
            "duration": task.duration,
            "cpu_time": task.cpu_time,
            "peak_memory": task.peak_memory,
            "targets": _targets_state(task, targets, reader),
            "error": task.error,
        })
    summary: dict[str, Any] = {"tasks": len(rows)}
    for row in rows:
        summary[row["state"]] = summary.get(row["state"], 0) + 1
    if "restored" in summary:
        summary["restored_bytes"] = sum(
            int((_restored(decisions[row["key"]]) or {}).get("new", {}).get("bytes", 0))
            for row in rows if row["state"] == "restored"
        )
    if args.json:
        json.dump({"workspace": args.workspace, "tasks": rows, "summary": summary}, out, indent=1)
        out.write("\n")
        return 0
    # One line per task whatever its name holds: names are shown escaped.
    names = [terminal(row["name"]) for row in rows]
    width = max([len(name) for name in names] + [4])
    out.write(f"{'TASK':<{width}}  {'STATE':<8} {'RUN':>4} {'LAST RUN':<19} {'DURATION':>9} {'CPU':>9} "
              f"{'PEAK MEM':>9}  TARGETS\n")
    for name, row in zip(names, rows, strict=True):
        out.write(
            f"{name:<{width}}  {row['state']:<8} {row['run'] or '-':>4} {_when(row['last_run']):<19} "
            f"{_seconds(row['duration']):>9} {_seconds(row['cpu_time']):>9} {_mebibytes(row['peak_memory']):>9}  "
            f"{row['targets']}\n"
        )
        if args.failed and row["error"]:
            for line in row["error"].rstrip().splitlines()[-6:]:
                out.write(f"    {terminal(line)}\n")
    counts = ", ".join(f"{summary[key]} {key}" for key in ("ran", "restored", "skipped", "failed", "stale")
                       if key in summary)
    if "restored" in summary:
        counts += f" ({summary['restored_bytes'] / 2**20:.1f} MiB from the cache)"
    drift = sum(row["targets"] in ("missing", "changed") for row in rows)
    out.write(f"{len(rows)} tasks" + (f": {counts}" if counts else "")
              + (f"; {drift} with missing or changed targets" if drift else "") + "\n")
    if "stale" in summary:
        out.write("(stale: recorded, but not part of the latest run; `taskgraph forget` drops them)\n")
    return 0


def cmd_explain(args: argparse.Namespace, out: TextIO) -> int:
    reader = LedgerReader(args.workspace)
    (task,) = _resolve(reader, [args.task])
    inputs, targets = reader.files().get(task.record_key, ({}, {}))
    decision = reader.decisions().get(task.record_key)
    out.write(f"task {task.name!r} (key {task.record_key[:12]})\n")
    out.write(f"  function:  {terminal(task.func)}\n  arguments: {terminal(task.args)}\n")
    out.write(f"  hash:      {terminal(task.hash_algorithm)}\n")
    if decision is not None:
        verb = "ran" if decision.action == "run" else "was skipped (up to date)"
        if decision.action == "run" and _restored(decision) is not None:
            verb = "was restored from the shared cache (its function did not run)"
        out.write(f"last decision ({_when(decision.decided_at)}, run {decision.run_id}): it {verb}")
        out.write(":\n" if decision.reasons else "\n")
        for reason in decision.reasons:
            out.write(f"  - {terminal(str(reason.get('detail')))}\n")
    if task.state == "failed":
        last_line = (task.error or "").rstrip().splitlines()[-1:] or [""]
        out.write(f"last run failed at {_when(task.ended)}: {terminal(last_line[0])}\n")
    else:
        out.write(f"last run finished {_when(task.ended)} in {_seconds(task.duration)} on "
                  f"{terminal(str(task.worker))}\n")
    now: list[str] = []
    if task.state == "failed":
        now.append("its last run failed")
    for role, recorded in (("target", targets), ("input", inputs)):
        for path, fp in recorded.items():
            state = _file_state(path, fp, fp.mode, reader, read=True)
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
    return 0


def _graph_model(reader: LedgerReader) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    tasks = reader.tasks()
    states = _states(tasks, reader.decisions())
    known = {task.record_key for task in tasks}
    nodes = [
        {"key": task.record_key, "name": task.name, "state": states[task.record_key][0],
         "duration": task.duration}
        for task in tasks
    ]
    edges = [(dep, key) for key, dep in reader.deps() if key in known and dep in known]
    return nodes, edges


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


def cmd_graph(args: argparse.Namespace, out: TextIO) -> int:
    reader = LedgerReader(args.workspace)
    nodes, edges = _graph_model(reader)
    image = args.output and os.path.splitext(args.output)[1].lower() in (".svg", ".png", ".pdf")
    fmt = "dot" if image else args.format
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
                "write the source with `--format dot -o graph.dot`"
            )
        kind = os.path.splitext(args.output)[1].lower()[1:]
        subprocess.run([dot, f"-T{kind}", "-o", args.output], input=text, text=True, check=True)
        out.write(f"wrote {args.output} ({len(nodes)} tasks, {len(edges)} dependencies)\n")
    elif args.output:
        with open(args.output, "w") as stream:
            stream.write(text)
        out.write(f"wrote {args.output} ({len(nodes)} tasks, {len(edges)} dependencies)\n")
    else:
        out.write(text)
    return 0


def cmd_trace(args: argparse.Namespace, out: TextIO) -> int:
    reader = LedgerReader(args.workspace)
    tasks = [task for task in reader.tasks() if task.started is not None and task.run_id is not None]
    if not tasks:
        raise CommandError(f"no task has run in {args.workspace} yet")
    last = max(task.run_id for task in tasks if task.run_id is not None)
    ran = sorted((task for task in tasks if task.run_id == last), key=lambda task: task.started or 0)
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
    with open(args.output, "w") as stream:
        json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, stream)
    out.write(f"wrote {args.output}: {len(ran)} tasks of run {last} on {len(rows)} workers; "
              "open it in https://ui.perfetto.dev or chrome://tracing\n")
    return 0


def cmd_forget(args: argparse.Namespace, out: TextIO) -> int:
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
    targets = sorted({path for _, pair in reader.files().items() for path in pair[1]})
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskgraph", description="Look into a taskgraph workspace's ledger.")
    parser.add_argument("--version", action="version", version=f"taskgraph {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = commands.add_parser("status", help="one line per recorded task")
    status.add_argument("workspace")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--failed", action="store_true", help="only failed tasks, with their errors")
    status.set_defaults(run=cmd_status)

    explain = commands.add_parser("explain", help="why a task ran or was skipped, and whether it would run now")
    explain.add_argument("workspace")
    explain.add_argument("task", help="task name or key prefix")
    explain.set_defaults(run=cmd_explain)

    graph = commands.add_parser("graph", help="the recorded task graph")
    graph.add_argument("workspace")
    graph.add_argument("--format", choices=("dot", "mermaid", "json"), default="dot")
    graph.add_argument("-o", "--output", help="file to write; .svg/.png/.pdf render with Graphviz")
    graph.set_defaults(run=cmd_graph)

    trace = commands.add_parser("trace", help="the last run's timeline as a Chrome trace")
    trace.add_argument("workspace")
    trace.add_argument("-o", "--output", required=True)
    trace.set_defaults(run=cmd_trace)

    forget_cmd = commands.add_parser("forget", help="drop the records of tasks so they run again")
    forget_cmd.add_argument("workspace")
    forget_cmd.add_argument("tasks", nargs="+", help="task names or key prefixes")
    forget_cmd.add_argument("--yes", action="store_true", help="do not ask")
    forget_cmd.set_defaults(run=cmd_forget)

    clean = commands.add_parser("clean", help="drop every record (and, with --targets, the recorded targets)")
    clean.add_argument("workspace")
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
