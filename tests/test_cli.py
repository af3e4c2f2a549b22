"""The ``taskgraph`` command, run as a real console script against real ledgers."""

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ElementTree

import engine_funcs
import pytest
import reliability_funcs

import taskgraph
from taskgraph._escape import terminal

PIPELINE = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import engine_funcs, taskgraph
    if __name__ == "__main__":
        ws, fail = sys.argv[1], sys.argv[2] == "fail"
        source = os.path.join(ws, "source.txt")
        if not os.path.exists(source):
            open(source, "w").write("s")
        graph = taskgraph.TaskGraph(ws, 2)
        a = graph.add_task(engine_funcs.concat, args=(os.path.join(ws, "a.txt"), source),
                           target_path_list=[os.path.join(ws, "a.txt")], task_name="alpha")
        b = graph.add_task(engine_funcs.concat, args=(os.path.join(ws, "b.txt"), os.path.join(ws, "a.txt")),
                           target_path_list=[os.path.join(ws, "b.txt")], dependent_task_list=[a],
                           task_name="beta")
        graph.add_task(engine_funcs.write, args=(os.path.join(ws, "c.txt"), "c"),
                       target_path_list=[os.path.join(ws, "c.txt")], task_name="gamma")
        if fail:
            graph.add_task(engine_funcs.fail, dependent_task_list=[b], task_name="broken")
        graph.close()
        try:
            graph.join()
        except ZeroDivisionError:
            sys.exit(3)
""")


def tg(*args, stdin=subprocess.DEVNULL):
    exe = shutil.which("taskgraph", path=os.path.dirname(sys.executable)) or shutil.which("taskgraph")
    command = [exe] if exe else [sys.executable, "-m", "taskgraph"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=60, stdin=stdin)


class Workspace:
    """A workspace made by a real run of the pipeline, which can run it again."""

    def __init__(self, path, script):
        self.path, self.script = path, script

    def run(self, fail=False):
        return subprocess.run([sys.executable, str(self.script), str(self.path), "fail" if fail else "ok"],
                              capture_output=True, text=True, timeout=120).returncode

    def __truediv__(self, name):
        return self.path / name

    def __str__(self):
        return str(self.path)


@pytest.fixture
def workspace(tmp_path):
    script = tmp_path / "pipeline.py"
    script.write_text(PIPELINE.format(tests=os.path.dirname(__file__)))
    (tmp_path / "ws").mkdir()
    ws = Workspace(tmp_path / "ws", script)
    assert ws.run() == 0
    return ws


def test_status_lists_every_task(workspace):
    assert workspace.run() == 0  # second run: everything skipped
    result = tg("status", workspace)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:-1]}
    assert set(lines) == {"alpha", "beta", "gamma"}
    assert all(line[1] == "skipped" and line[-1] == "ok" for line in lines.values())
    assert result.stdout.splitlines()[-1].startswith("3 tasks: 3 skipped")
    data = json.loads(tg("status", workspace, "--json").stdout)
    assert {row["name"]: row["targets"] for row in data["tasks"]} == {"alpha": "ok", "beta": "ok", "gamma": "ok"}
    os.remove(workspace / "c.txt")
    data = json.loads(tg("status", workspace, "--json").stdout)
    assert {row["name"]: row["targets"] for row in data["tasks"]}["gamma"] == "missing"


def test_status_failed_shows_the_error(workspace):
    assert workspace.run(fail=True) == 3
    result = tg("status", workspace, "--failed")
    assert result.returncode == 0
    assert "broken" in result.stdout and "ZeroDivisionError" in result.stdout
    assert "alpha" not in result.stdout


def test_explain_says_why_and_what_now(workspace):
    result = tg("explain", workspace, "beta")
    assert result.returncode == 0, result.stderr
    assert "no record of this task" in result.stdout  # first run: new task
    assert "now: up to date" in result.stdout
    with open(workspace / "source.txt", "w") as stream:
        stream.write("changed!")
    result = tg("explain", workspace, "alpha")
    assert "now: it would run" in result.stdout and "source.txt is changed" in result.stdout
    assert workspace.run() == 0
    result = tg("explain", workspace, "alpha")
    assert "it ran" in result.stdout and "source.txt" in result.stdout and "size changed" in result.stdout


def test_names_unknown_ambiguous_and_key_prefixes(workspace):
    result = tg("explain", workspace, "alpah")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("taskgraph: no task named 'alpah'")
    assert "'alpha'" in result.stderr and "Traceback" not in result.stderr
    key = json.loads(tg("status", workspace, "--json").stdout)["tasks"][0]["key"]
    assert tg("explain", workspace, key[:8]).returncode == 0


def test_graph_formats(workspace, tmp_path):
    dot = tg("graph", workspace).stdout
    assert dot.startswith("digraph taskgraph") and dot.count("->") == 1
    mermaid = tg("graph", workspace, "--format", "mermaid").stdout
    assert mermaid.startswith("flowchart LR") and "-->" in mermaid
    data = json.loads(tg("graph", workspace, "--format", "json").stdout)
    names = {node["key"]: node["name"] for node in data["nodes"]}
    assert [(names[e["from"]], names[e["to"]]) for e in data["edges"]] == [("alpha", "beta")]
    image = tmp_path / "graph.png"
    result = tg("graph", workspace, "-o", image)
    if shutil.which("dot") is None:
        assert result.returncode == 1 and "graphviz" in result.stderr.lower()
    else:
        assert result.returncode == 0
        header = image.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
        assert 50 < width < 5000 and 20 < height < 5000


def test_trace_is_a_chrome_trace(workspace, tmp_path):
    out = tmp_path / "trace.json"
    result = tg("trace", workspace, "-o", out)
    assert result.returncode == 0, result.stderr
    events = json.loads(out.read_text())["traceEvents"]
    spans = [event for event in events if event["ph"] == "X"]
    assert {event["name"] for event in spans} == {"alpha", "beta", "gamma"}
    alpha, beta = (next(e for e in spans if e["name"] == n) for n in ("alpha", "beta"))
    assert beta["ts"] >= alpha["ts"] + alpha["dur"]  # a dependency ends before its dependent starts


def test_forget_makes_a_task_run_again(workspace):
    refused = tg("forget", workspace, "gamma")  # no terminal to ask on, no --yes
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert tg("forget", workspace, "gamma", "--yes").returncode == 0
    log = workspace / "executions.log"
    log.write_text("")
    assert workspace.run() == 0
    assert log.read_text().split() == ["c.txt"]


def test_clean_targets_deletes_only_recorded_targets(workspace):
    keep = workspace / "notes.txt"
    keep.write_text("mine")
    result = tg("clean", workspace, "--targets", "--yes")
    assert result.returncode == 0, result.stderr
    assert not (workspace / "a.txt").exists() and not (workspace / "c.txt").exists()
    assert keep.exists() and (workspace / "source.txt").exists()
    assert tg("status", workspace).stdout.splitlines()[-1] == "0 tasks"


def test_bad_workspaces_get_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for ws in (empty,):
        result = tg("status", ws)
        assert result.returncode == 1 and "no taskgraph ledger" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / taskgraph.LEDGER_FILENAME).write_bytes(b"not a database at all" * 50)
    result = tg("status", corrupt)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    newer = tmp_path / "newer"
    newer.mkdir()
    con = sqlite3.connect(str(newer / taskgraph.LEDGER_FILENAME))
    con.execute(f"PRAGMA application_id={0x54475248}")
    con.execute("PRAGMA user_version=99")
    con.close()
    result = tg("status", newer)
    assert result.returncode == 1 and "newer taskgraph" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_version():
    result = subprocess.run([sys.executable, "-m", "taskgraph", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("taskgraph ")


def test_status_of_a_ledger_from_a_killed_run(tmp_path):
    script = tmp_path / "long.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import engine_funcs, taskgraph
        if __name__ == "__main__":
            ws = sys.argv[1]
            graph = taskgraph.TaskGraph(ws, 2)
            for i in range(4):
                target = os.path.join(ws, f"quick{{i}}.txt")
                graph.add_task(engine_funcs.write, args=(target, i), target_path_list=[target], task_name=f"quick{{i}}")
            graph.add_task(engine_funcs.sleep, args=(60,), task_name="long")
            graph.close()
            graph.join()
    """))
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(ws)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result = tg("status", ws, "--json")
        if result.returncode == 0 and len(json.loads(result.stdout)["tasks"]) == 4:
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=30)
    result = tg("status", ws, "--json")
    assert result.returncode == 0, result.stderr
    tasks = json.loads(result.stdout)["tasks"]
    assert sorted(task["name"] for task in tasks) == ["quick0", "quick1", "quick2", "quick3"]
    assert all(task["targets"] == "ok" for task in tasks)


# -- names no one can inject into ------------------------------------------------------------

HOSTILE_NAMES = [
    'dot"];\n  pwn [URL="javascript:alert(1)", href="javascript:alert(2)", label="pwn"];\n  "x',  # DOT
    'back\\"slash\\N\\G &lt;b&gt; & <i>',  # Graphviz escapes and entities
    'mm"]:::ran\n  click k0 href "javascript:alert(3)"\n  evil["x',  # Mermaid
    "`**md**` #quot; #35; <img src=x onerror=alert(4)>",
    "\x1b[2J\x1b[31mred\x1b[0m\x1b]8;;https://evil.example\x07link\x1b]8;;\x07",  # terminal escapes
    "forged\nfake-task  ran  1 2030-01-01 00:00:00  0.00s  ok\r\x08\x7f\x9b",  # a forged table row
    "\u202eevil\u2028line\u200b",  # bidi override, line separator, zero width
]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A workspace whose tasks have hostile names (as a script or Topology's
    item keys could give them), one a dependency of the next."""
    ws = tmp_path_factory.mktemp("hostile")
    with taskgraph.TaskGraph(str(ws), -1) as graph:
        previous = None
        for index, name in enumerate(HOSTILE_NAMES):
            target = str(ws / f"t{index}.txt")
            previous = graph.add_task(engine_funcs.write, args=(target, index), target_path_list=[target],
                                      task_name=name, dependent_task_list=[previous] if previous else [])
    return ws


def test_hostile_names_are_plain_text_in_dot_and_svg(hostile, tmp_path):
    result = tg("graph", hostile)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    quoted = r'"(?:[^"\\]|\\.)*"'
    node = re.compile(rf'  {quoted} \[label={quoted}, fillcolor="#[0-9a-f]{{6}}"\];')
    edge = re.compile(rf"  {quoted} -> {quoted};")
    body = lines[3:-1]
    assert lines[-1] == "}" and all(node.fullmatch(line) or edge.fullmatch(line) for line in body), body
    assert sum(bool(node.fullmatch(line)) for line in body) == len(HOSTILE_NAMES)
    assert sum(bool(edge.fullmatch(line)) for line in body) == len(HOSTILE_NAMES) - 1
    if shutil.which("dot") is None:
        pytest.skip("Graphviz is not installed: the SVG is not rendered")
    svg = tmp_path / "g.svg"
    assert tg("graph", hostile, "-o", svg).returncode == 0
    tree = ElementTree.parse(svg)
    attributes = [value for element in tree.iter() for value in element.attrib.values()]
    assert not [value for value in attributes if "javascript" in value]
    assert not [element for element in tree.iter() if any("href" in key for key in element.attrib)]
    ns = "{http://www.w3.org/2000/svg}"
    nodes = [group for group in tree.iter(f"{ns}g") if group.get("class") == "node"]
    assert len(nodes) == len(HOSTILE_NAMES)
    # Each name, literally, on its node's first line (Graphviz keeps runs of
    # spaces with no-break spaces).
    shown = {next(group.iter(f"{ns}text")).text.replace("\xa0", " ") for group in nodes}
    assert shown == {terminal(name) for name in HOSTILE_NAMES}


def test_hostile_names_are_plain_text_in_mermaid(hostile):
    result = tg("graph", hostile, "--format", "mermaid")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    node = re.compile(r'  k[0-9a-f]+\["[^"<>`]*<br/>[0-9.]+s"\]:::(ran|restored|skipped|failed|stale)')
    edge = re.compile(r"  k[0-9a-f]+ --> k[0-9a-f]+")
    style = re.compile(r"  classDef (ran|restored|skipped|failed|stale) fill:#[0-9a-f]{6}")
    assert lines[0] == "flowchart LR"
    assert all(node.fullmatch(line) or edge.fullmatch(line) or style.fullmatch(line) for line in lines[1:]), lines
    assert sum(bool(node.fullmatch(line)) for line in lines) == len(HOSTILE_NAMES)


def test_hostile_names_stay_on_their_line_in_status_and_explain(hostile):
    result = tg("status", hostile)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == 1 + len(HOSTILE_NAMES) + 1 + 1  # header, rows, summary
    assert not [char for char in result.stdout if not char.isprintable() and char != "\n"]
    for name in HOSTILE_NAMES:
        assert any(line.startswith(terminal(name) + " ") for line in lines), name
    for name in HOSTILE_NAMES:
        explained = tg("explain", hostile, name)
        assert explained.returncode == 0, explained.stderr
        assert not [char for char in explained.stdout if not char.isprintable() and char != "\n"]


def test_json_output_keeps_names_exactly(hostile):
    data = json.loads(tg("status", hostile, "--json").stdout)
    assert sorted(row["name"] for row in data["tasks"]) == sorted(HOSTILE_NAMES)
    graph = json.loads(tg("graph", hostile, "--format", "json").stdout)
    assert sorted(node["name"] for node in graph["nodes"]) == sorted(HOSTILE_NAMES)


def test_file_names_that_are_not_utf8_show_readably(tmp_path):
    ws = tmp_path / "ws"
    source = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"in\xff.txt"))
    target = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"out\xfe.txt"))
    with open(source, "w") as stream:
        stream.write("one")
    with taskgraph.TaskGraph(str(ws), -1) as graph:
        graph.add_task(reliability_funcs.copy_file, args=(source, target), target_path_list=[target],
                       task_name="copy")
    os.remove(target)
    result = tg("explain", ws, "copy")
    assert result.returncode == 0, result.stderr
    assert "out\\xfe.txt is missing" in result.stdout
    assert tg("status", ws).stdout.splitlines()[1].split()[-1] == "missing"


def test_a_workspace_whose_name_is_not_utf8(tmp_path):
    ws = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"ws\xff"))
    with taskgraph.TaskGraph(ws, -1) as graph:
        graph.add_task(reliability_funcs.identity, args=(1,), task_name="one")
    result = tg("status", ws)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[:2] == ["one", "ran"]
    missing = tg("status", ws + "-missing")
    assert missing.returncode == 1 and "ws\\xff-missing" in missing.stderr
