"""The run report: one self-contained HTML page about a workspace.

A client of ``_view`` (which reads the ledger through ``LedgerReader``): the
current graph drawn with each task's state and duration, a timeline of the
last run (one lane per worker), the tasks that cost most wall time, CPU time
and memory, the failures with their tracebacks, and what the next run would
do and why (from the ledger and the disk alone).

The page is plain HTML and inline SVG, drawn here; it has no script, and its
Content-Security-Policy lets it load nothing, so it shows the same offline and
cannot reach the network. Every text from the ledger (task names can hold any
text) is escaped, and characters that HTML cannot hold are written as
``\\xNN`` escapes.
"""

from __future__ import annotations

import html
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from taskgraph._failure import format_frames
from taskgraph._ledger_read import LedgerReader, RunRow, TaskRow
from taskgraph._version import __version__
from taskgraph._view import (
    Entry,
    Plan,
    View,
    build,
    describe_counts,
    ended_run_states,
    executed,
    executed_in,
    failure_of,
    mebibytes,
    plan,
    seconds,
    when,
)

#: Fill colours of the states (the graph command uses the same).
COLOURS = {
    "ran": "#81c784", "restored": "#a5d6a7", "skipped": "#dcedc8", "failed": "#e57373", "cancelled": "#ffcc80",
    "running": "#64b5f6", "pending": "#bbdefb", "interrupted": "#ffb74d", "stale": "#e0e0e0",
}
_NODE_W, _NODE_H, _GAP_X, _GAP_Y = 176, 38, 56, 14
#: Above this many tasks the graph is drawn by families of names (digits
#: stand for any number: "slope 1", "slope 2" are the family "slope #").
_MAX_NODES = 300
_MAX_BARS = 3000
_TOP = 10
_MAX_PLAN_ROWS = 500
_MAX_FAILURES = 50
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _clean(text: str) -> str:
    """Characters HTML cannot hold (controls, lone surrogates) as visible escapes."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 256 else f"\\u{ord(m[0]):04x}", text)


def esc(text: object) -> str:
    """Text from the ledger, safe in HTML content and attribute values."""
    return html.escape(_clean(str(text)), quote=True)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# -- the graph -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Node:
    key: str
    label: str
    detail: str
    state: str
    layer: int = 0
    order: float = 0.0


def _family(name: str) -> str:
    return re.sub(r"\d+", "#", name)


def _worst(states: Sequence[str]) -> str:
    for state in ("failed", "interrupted", "running", "cancelled", "pending", "ran", "restored", "skipped", "stale"):
        if state in states:
            return state
    return states[0] if states else "stale"


def _graph_nodes(entries: Sequence[Entry], edges: Sequence[tuple[str, str]]) -> tuple[
        list[_Node], list[tuple[str, str]], str]:
    """The nodes and edges to draw, and a note (how the graph was simplified)."""
    if len(entries) <= _MAX_NODES:
        nodes = [
            _Node(entry.key, entry.name,
                  f"{entry.name}\n{entry.state}, {duration(entry.duration)} (run {entry.run or '-'})"
                  f"\nkey {entry.key[:12]}", entry.state)
            for entry in entries
        ]
        return nodes, list(edges), ""
    return _family_nodes(entries, edges)


def _family_node(family: str, members: list[Entry]) -> _Node:
    """The node of a family of names: its count, its states and its time."""
    states = [member.state for member in members]
    tally = ", ".join(f"{states.count(state)} {state}" for state in COLOURS if state in states)
    total = sum(member.duration or 0 for member in members)
    return _Node(family, f"{family} (x{len(members)})" if len(members) > 1 else family,
                 f"{family}: {len(members)} tasks ({tally}), {duration(total)} in all", _worst(states))


def _family_nodes(entries: Sequence[Entry], edges: Sequence[tuple[str, str]]) -> tuple[
        list[_Node], list[tuple[str, str]], str]:
    """A node per family of names, the edges between families, and a note."""
    families: dict[str, list[Entry]] = {}
    for entry in entries:
        families.setdefault(_family(entry.name), []).append(entry)
    of = {entry.key: _family(entry.name) for entry in entries}
    nodes = [_family_node(family, members) for family, members in families.items()]
    family_edges = sorted({(of[a], of[b]) for a, b in edges if of[a] != of[b]})
    note = (f"{len(entries)} tasks, drawn as {len(nodes)} families of names (digits in a name stand for any "
            "number); each family has the colour of its worst state")
    if len(nodes) > _MAX_NODES:
        nodes = nodes[:_MAX_NODES]
        kept = {node.key for node in nodes}
        family_edges = [(a, b) for a, b in family_edges if a in kept and b in kept]
        note += f"; only the first {_MAX_NODES} families are drawn"
    return nodes, family_edges, note


def _links(nodes: list[_Node], edges: Sequence[tuple[str, str]]) -> tuple[
        dict[str, list[str]], dict[str, list[str]]]:
    """Each node's parents and children (edges to nodes not drawn, and
    loops, left out)."""
    parents: dict[str, list[str]] = {node.key: [] for node in nodes}
    children: dict[str, list[str]] = {node.key: [] for node in nodes}
    for a, b in edges:
        if a in parents and b in parents and a != b:
            parents[b].append(a)
            children[a].append(b)
    return parents, children


def _sources_first(parents: dict[str, list[str]], children: dict[str, list[str]]) -> list[str]:
    """Kahn's order; a cycle (which a graph of tasks cannot have) is laid flat."""
    waiting = {key: len(parents[key]) for key in parents}
    ready = [key for key in parents if not waiting[key]]
    order: list[str] = []
    while ready:
        key = ready.pop()
        order.append(key)
        for child in children[key]:
            waiting[child] -= 1
            if not waiting[child]:
                ready.append(child)
    return order + [key for key in parents if key not in set(order)]


def _renumber(members: list[_Node]) -> None:
    for position, node in enumerate(members):
        node.order = position


def _sweep(layers: dict[int, list[_Node]], index: dict[str, _Node], around: dict[str, list[str]],
           reverse: bool) -> None:
    """One sweep over the layers: each node goes to the mean position of its
    neighbours in ``around`` (its parents or its children)."""
    for number in sorted(layers, reverse=reverse):
        members = layers[number]
        for node in members:
            neighbours = around[node.key]
            if neighbours:
                node.order = sum(index[key].order for key in neighbours) / len(neighbours)
        members.sort(key=lambda node: node.order)
        _renumber(members)


def _layout(nodes: list[_Node], edges: Sequence[tuple[str, str]]) -> tuple[int, int]:
    """Layers by longest path from the sources, ordered within a layer by
    the mean position of their neighbours (a few sweeps). Returns the
    number of layers and the size of the largest."""
    index = {node.key: node for node in nodes}
    parents, children = _links(nodes, edges)
    for key in _sources_first(parents, children):
        index[key].layer = max((index[parent].layer + 1 for parent in parents[key]), default=0)
    layers: dict[int, list[_Node]] = {}
    for node in nodes:
        layers.setdefault(node.layer, []).append(node)
    for members in layers.values():
        _renumber(members)
    for sweep in range(4):
        downwards = sweep % 2 == 0
        _sweep(layers, index, parents if downwards else children, reverse=not downwards)
    return len(layers), max((len(members) for members in layers.values()), default=0)


def graph_svg(view: View) -> tuple[str, str]:
    """The current graph as an inline SVG element, and a note."""
    entries = [entry for entry in view.entries if entry.state != "stale"]
    if not entries:
        return '<svg id="graph" class="graph" width="400" height="40" role="img"><text x="8" y="24">no task ' \
               'in the current graph</text></svg>', ""
    nodes, edges, note = _graph_nodes(entries, view.edges)
    n_layers, tallest = _layout(nodes, edges)
    width = n_layers * (_NODE_W + _GAP_X) - _GAP_X + 20
    height = tallest * (_NODE_H + _GAP_Y) - _GAP_Y + 20
    where = {node.key: (10 + node.layer * (_NODE_W + _GAP_X), 10 + int(node.order) * (_NODE_H + _GAP_Y))
             for node in nodes}
    parts = [f'<svg id="graph" class="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="task graph">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#78909c"/></marker></defs>']
    for a, b in edges:
        if a not in where or b not in where:
            continue
        (x1, y1), (x2, y2) = where[a], where[b]
        x1, y1, y2 = x1 + _NODE_W, y1 + _NODE_H // 2, y2 + _NODE_H // 2
        middle = (x1 + x2) / 2
        parts.append(f'<path class="edge" d="M {x1} {y1} C {middle:.0f} {y1}, {middle:.0f} {y2}, {x2} {y2}" '
                     'marker-end="url(#arrow)"/>')
    for number, node in enumerate(nodes):
        x, y = where[node.key]
        label = _cut(node.label, 24)
        sub = node.detail.splitlines()[1] if "\n" in node.detail else node.detail[len(node.label):]
        parts.append(
            f'<g class="node state-{esc(node.state)}" id="node-{number}"><title>{esc(node.detail)}</title>'
            f'<rect x="{x}" y="{y}" width="{_NODE_W}" height="{_NODE_H}" rx="6" '
            f'fill="{COLOURS.get(node.state, "#eee")}"/>'
            f'<text x="{x + 8}" y="{y + 15}" class="label">{esc(label)}</text>'
            f'<text x="{x + 8}" y="{y + 30}" class="sub">{esc(_cut(sub.strip(" :"), 30))}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts), note


# -- the timeline --------------------------------------------------------------------------


def duration(value: float | None) -> str:
    """A duration as a person reads it: milliseconds below a second."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.1f} ms" if value < 0.01 else f"{value * 1000:.0f} ms"
    return seconds(value)


def _tick_label(value: float, step: float) -> str:
    if step < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.0f}s" if value < 60 else seconds(value)


def _tick(span: float) -> float:
    """A round step giving about eight ticks over ``span`` seconds."""
    raw = max(span / 8, 1e-3)
    power = 10 ** math.floor(math.log10(raw))
    for step in (1, 2, 5, 10):
        if raw <= step * power:
            return float(step * power)
    return float(10 * power)


def timeline_run(view: View) -> tuple[int | None, list[TaskRow], str]:
    """The run the timeline shows (the latest that executed tasks), its tasks
    and a note when it is not the latest run."""
    tasks = executed(view.reader)
    if not tasks:
        return None, [], ""
    last = max(task.run_id for task in tasks if task.run_id is not None)
    note = ""
    latest = max((run.run_id for run in view.runs), default=last)
    if latest != last:
        note = f"run {latest}, the latest, executed nothing; this is run {last}, the latest that executed tasks"
    return last, executed_in(tasks, last), note


_LABEL_W, _PLOT_W, _LANE_H, _LANES_TOP = 230, 900, 26, 28


def _longest(tasks: Sequence[TaskRow]) -> tuple[Sequence[TaskRow], str]:
    """The tasks drawn (the longest, if there are too many), and a note."""
    if len(tasks) <= _MAX_BARS:
        return tasks, ""
    kept = sorted(sorted(tasks, key=lambda t: -(t.duration or 0))[:_MAX_BARS], key=lambda t: t.started or 0)
    return kept, f"the {_MAX_BARS} longest of {len(tasks)} tasks are drawn"


def _ticks(span: float, scale: float, height: int) -> list[str]:
    """The grid lines and time labels of the timeline."""
    parts = []
    step = _tick(span)
    mark = 0.0
    while mark <= span + 1e-9:
        x = _LABEL_W + mark * scale
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{_LANES_TOP - 6}" x2="{x:.1f}" y2="{height - 6}"/>'
                     f'<text class="tick" x="{x:.1f}" y="{_LANES_TOP - 10}">{esc(_tick_label(mark, step))}</text>')
        mark += step
    return parts


def _lane(worker: str, lane: int, width: int) -> str:
    y = _LANES_TOP + lane * _LANE_H
    return (f'<rect class="lane" x="0" y="{y}" width="{width}" height="{_LANE_H}" '
            f'fill="{"#fafafa" if lane % 2 else "#ffffff"}"/>'
            f'<text class="worker" x="6" y="{y + 17}"><title>{esc(worker)}</title>'
            f'{esc(_cut(worker, 34))}</text>')


def _bar(number: int, task: TaskRow, lane: int, origin: float, scale: float) -> str:
    """One task's bar: from its start to its end, its name inside if it fits."""
    y = _LANES_TOP + lane * _LANE_H + 3
    x = _LABEL_W + ((task.started or 0) - origin) * scale
    bar = max((task.duration or 0) * scale, 1.5)
    state = "failed" if task.state == "failed" else "ran"
    tip = (f"{task.name}\n{duration(task.duration)} wall, {duration(task.cpu_time)} CPU, "
           f"{mebibytes(task.peak_memory)} peak\nstarted {when(task.started)} on {task.worker}")
    text = ""
    if bar > 40:
        text = f'<text class="bar-label" x="{x + 4:.1f}" y="{y + 14}">{esc(_cut(task.name, int(bar / 7)))}</text>'
    return (f'<g class="bar state-{state}" id="bar-{number}"><title>{esc(tip)}</title>'
            f'<rect x="{x:.1f}" y="{y}" width="{bar:.1f}" height="{_LANE_H - 6}" rx="3" '
            f'fill="{COLOURS[state]}"/>{text}</g>')


def timeline_svg(tasks: Sequence[TaskRow]) -> tuple[str, str]:
    """A Gantt chart of the tasks: one lane per worker, a bar per task."""
    if not tasks:
        return ('<svg id="timeline" class="timeline" width="400" height="40" role="img"><text x="8" y="24">'
                'no task has run yet</text></svg>', "")
    tasks, note = _longest(tasks)
    origin = min(task.started or 0 for task in tasks)
    end = max((task.started or 0) + (task.duration or 0) for task in tasks)
    span = max(end - origin, 1e-3)
    lanes: dict[str, int] = {}
    for task in tasks:
        lanes.setdefault(task.worker or "?", len(lanes))
    scale = _PLOT_W / span
    width, height = _LABEL_W + _PLOT_W + 20, _LANES_TOP + len(lanes) * _LANE_H + 10
    parts = [f'<svg id="timeline" class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="timeline of the run">']
    parts += _ticks(span, scale, height)
    parts += [_lane(worker, lane, width) for worker, lane in lanes.items()]
    parts += [_bar(number, task, lanes[task.worker or "?"], origin, scale) for number, task in enumerate(tasks)]
    parts.append("</svg>")
    return "".join(parts), note


# -- costs ---------------------------------------------------------------------------------


def bars_svg(name: str, rows: Sequence[tuple[str, float]], fmt: Callable[[float], str]) -> str:
    """A horizontal bar chart of (label, value), largest first."""
    if not rows:
        return '<p class="none">not measured</p>'
    label_w, plot_w, row_h = 220, 360, 20
    most = max(value for _, value in rows) or 1.0
    height = len(rows) * row_h + 4
    parts = [f'<svg class="bars" id="{name}" xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 80}" '
             f'height="{height}" role="img">']
    for index, (label, value) in enumerate(rows):
        y = index * row_h + 2
        bar = max(plot_w * value / most, 1.0)
        parts.append(f'<g><title>{esc(label)}: {esc(fmt(value))}</title>'
                     f'<text class="bar-name" x="{label_w - 6}" y="{y + 13}">{esc(_cut(label, 30))}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{bar:.1f}" height="{row_h - 5}" rx="2"/>'
                     f'<text class="value" x="{label_w + bar + 5:.1f}" y="{y + 13}">{esc(fmt(value))}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _top(entries: Sequence[Entry], value: Callable[[Entry], float | None]) -> list[tuple[str, float]]:
    measured = [(entry.name, value(entry)) for entry in entries]
    found = [(name, float(figure)) for name, figure in measured if figure is not None]
    return sorted(found, key=lambda pair: -pair[1])[:_TOP]


# -- the page ------------------------------------------------------------------------------


_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#263238;margin:0;background:#f5f7f8}
header{background:#263238;color:#eceff1;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#b0bec5}main{padding:8px 24px 40px}
section{background:#fff;border:1px solid #dde3e6;border-radius:8px;padding:10px 16px 16px;margin:16px 0}
h2{font-size:16px;margin:6px 0 10px}nav a{color:#90caf9;margin-right:14px}
.scroll{overflow:auto;max-height:760px;border:1px solid #eceff1;border-radius:4px}
.note,.none{color:#607d8b;font-size:13px}.edge{fill:none;stroke:#90a4ae;stroke-width:1.2}
.node rect{stroke:#546e7a;stroke-width:.8}.node text{font-size:12px}.node .sub{fill:#455a64;font-size:11px}
.node.state-failed rect{stroke:#b71c1c;stroke-width:2}.tick{font-size:11px;fill:#607d8b;text-anchor:middle}
.grid{stroke:#eceff1}.worker{font-size:12px;fill:#37474f}.bar rect{stroke:#2e7d32;stroke-width:.5}
.bar.state-failed rect{stroke:#b71c1c}.bar-label{font-size:11px;fill:#1b2a1b}
.bars rect{fill:#64b5f6}.bar-name{font-size:12px;text-anchor:end}.value{font-size:11px;fill:#455a64}
.costs{display:flex;flex-wrap:wrap;gap:18px}.costs h3{font-size:13px;margin:4px 0}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{border-bottom:1px solid #cfd8dc}.legend span{display:inline-block;padding:1px 8px;border-radius:4px;
margin:0 6px 4px 0;border:1px solid #b0bec5;font-size:12px}
pre{background:#263238;color:#eceff1;padding:10px;border-radius:6px;overflow:auto;font-size:12px}
.failure h3{font-size:14px;margin:10px 0 4px;color:#b71c1c}code{font-size:12px}
"""


def _legend(states: Sequence[str]) -> str:
    return '<p class="legend">' + "".join(
        f'<span style="background:{COLOURS[state]}">{state}</span>' for state in COLOURS if state in states) + "</p>"


def _run_text(view: View, run: RunRow | None) -> str:
    if run is None:
        return "no run has ended yet"
    found = describe_counts(ended_run_states(view.reader, run.run_id))
    given = f"{run.tasks} tasks" + (f": {found}" if found else "") if run.tasks is not None else ""
    return f"run {run.run_id}, ended {when(run.ended)}" + (f" ({given})" if given else "")


def _head(view: View, workspace: str) -> list[str]:
    """The document's head and the page's header."""
    return [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>taskgraph report: {esc(os.path.basename(workspace) or workspace)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<header><h1>taskgraph run report</h1><p>{esc(workspace)} · current graph: "
        f"{esc(_run_text(view, view.run(view.current)))}"
        f" · made {esc(when(time.time()))} by taskgraph {esc(__version__)}</p>"
        '<nav><a href="#graph-section">graph</a><a href="#timeline-section">timeline</a>'
        '<a href="#costs">costs</a><a href="#failures">failures</a><a href="#next-run">next run</a></nav></header>',
        "<main>",
    ]


def _later_runs(view: View) -> list[str]:
    """A note for each run after the current graph's."""
    parts = []
    for run, status in view.later:
        word = "is in progress" if status == "running" else "did not finish (its process is gone)"
        parts.append(f'<p class="note">run {run.run_id} {word}: started {esc(when(run.started))}, pid {run.pid}; '
                     "what it recorded is shown with the current graph.</p>")
    return parts


def _note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>' if text else ""


def _graph_section(view: View, shown: Sequence[Entry]) -> list[str]:
    graph, graph_note = graph_svg(view)
    return [
        f'<section id="graph-section"><h2>The current graph ({len(shown)} tasks, {len(view.edges)} '
        "dependencies)</h2>", _legend([entry.state for entry in shown]),
        _note(graph_note),
        f'<div class="scroll">{graph}</div>',
        '<p class="note">Each box is a task: its name, its state in the run that last considered it and its '
        "duration; hover for details. Arrows go from a dependency to its dependent.</p></section>",
    ]


def _timeline_section(run_id: int | None, run_tasks: Sequence[TaskRow], run_note: str) -> list[str]:
    timeline, bars_note = timeline_svg(run_tasks)
    return [
        f'<section id="timeline-section"><h2>Timeline of run {run_id if run_id is not None else "-"} '
        f"({len(run_tasks)} tasks ran)</h2>",
        _note(run_note),
        _note(bars_note),
        f'<div class="scroll">{timeline}</div>',
        '<p class="note">One lane per worker; each bar is a task from its start to its end. Tasks that ran '
        "again in a later run show there instead.</p></section>",
    ]


def _costs_section(shown: Sequence[Entry]) -> list[str]:
    return [
        '<section id="costs"><h2>What cost most</h2><div class="costs">',
        "<div><h3>wall time</h3>" + bars_svg("cost-wall", _top(shown, lambda t: t.duration), duration) + "</div>",
        "<div><h3>CPU time</h3>" + bars_svg("cost-cpu", _top(shown, lambda t: t.cpu_time), duration) + "</div>",
        "<div><h3>peak memory</h3>" + bars_svg(
            "cost-memory", _top(shown, lambda t: t.peak_memory), lambda v: mebibytes(int(v))) + "</div>",
        "</div></section>",
    ]


def _failure(task: TaskRow) -> str:
    """One failure: the user's frames and the exception, the whole traceback folded."""
    failure = failure_of(task)
    assert failure is not None
    frames = "\n".join(format_frames(failure.frames, failure.omitted))
    return (
        f'<div class="failure"><h3>{esc(task.name)}: {esc(failure.headline())}</h3>'
        f'<p class="note">key {esc(task.record_key[:12])}, run {task.run_id}, '
        f"{esc(when(task.ended))}, on {esc(task.worker or '-')}</p>"
        + (f"<pre>{esc(frames)}\n{esc(failure.headline())}</pre>" if frames else "")
        + f"<details><summary>the whole traceback</summary><pre>{esc(failure.text)}</pre></details></div>"
    )


def _failures_section(failed: Sequence[TaskRow]) -> list[str]:
    parts = [f'<section id="failures"><h2>Failures ({len(failed)})</h2>']
    if not failed:
        parts.append('<p class="none">no task of the current graph failed in its last run</p>')
    parts += [_failure(task) for task in failed[:_MAX_FAILURES]]
    if len(failed) > _MAX_FAILURES:
        parts.append(f'<p class="note">and {len(failed) - _MAX_FAILURES} more</p>')
    parts.append("</section>")
    return parts


def _next_run_section(decisions: Sequence[Plan], would_run: Sequence[Plan]) -> list[str]:
    own = sum(item.action == "run" for item in decisions)
    parts = [
        f'<section id="next-run"><h2>What the next run would do</h2><p>It would run <b>{len(would_run)}</b> of '
        f"{len(decisions)} tasks ({own} for reasons of their own, {len(would_run) - own} because they read what "
        f"those write) and skip {len(decisions) - len(would_run)}, as far as the ledger and the files show: a "
        "change to a function's source or to its arguments is seen only when the script runs.</p>",
    ]
    if would_run:
        parts.append('<table id="plan"><tr><th>task</th><th>would</th><th>why</th></tr>')
        for item in would_run[:_MAX_PLAN_ROWS]:
            why = "<br>".join(esc(reason) for reason in item.reasons)
            verb = "run" if item.action == "run" else "run after"
            parts.append(f"<tr><td>{esc(item.entry.name)}</td><td>{verb}</td><td>{why}</td></tr>")
        parts.append("</table>")
        if len(would_run) > _MAX_PLAN_ROWS:
            parts.append(f'<p class="note">and {len(would_run) - _MAX_PLAN_ROWS} more</p>')
    parts.append("</section>")
    return parts


def _history_section(view: View) -> list[str]:
    if not view.history:
        return []
    one = view.history == 1
    return [f'<section id="history"><h2>History</h2><p>{view.history} older record{"" if one else "s"} '
            f"{'is' if one else 'are'} not part of the current graph (no run since run {view.current} "
            f"considered {'it' if one else 'them'}): <code>taskgraph status --all</code> lists "
            f"{'it' if one else 'them'}, <code>taskgraph forget --stale</code> drops "
            f"{'it' if one else 'them'}.</p></section>"]


def render(view: View) -> tuple[str, str]:
    """The page and a one-line summary of it."""
    workspace = os.path.abspath(view.reader.workspace)
    run_id, run_tasks, run_note = timeline_run(view)
    shown = [entry for entry in view.entries if entry.state != "stale"]
    failed_rows = view.failed()
    failed = [failed_rows[entry.key] for entry in shown if entry.key in failed_rows]
    decisions = plan(view)
    would_run = [item for item in decisions if item.action != "skip"]
    out = [
        *_head(view, workspace), *_later_runs(view), *_graph_section(view, shown),
        *_timeline_section(run_id, run_tasks, run_note), *_costs_section(shown), *_failures_section(failed),
        *_next_run_section(decisions, would_run), *_history_section(view), "</main></body></html>\n",
    ]
    summary = (f"{len(shown)} tasks in the graph, {len(run_tasks)} in the timeline of run {run_id}, "
               f"{len(failed)} failed, {len(would_run)} would run next")
    return "\n".join(part for part in out if part), summary


def write_report(reader: LedgerReader, path: str) -> str:
    """Write the report of the workspace ``reader`` reads to ``path``; returns a summary."""
    view = build(reader)
    page, summary = render(view)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        stream.write(page)
    os.replace(temporary, path)
    return summary
