"""The ``taskgraph`` command, run as a real console script against real ledgers."""

import argparse
import inspect
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
import history_funcs
import pytest
import reliability_funcs

import taskgraph
from taskgraph._escape import terminal

PIPELINE = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import engine_funcs, taskgraph
    if __name__ == "__main__":
        ws, modes = sys.argv[1], sys.argv[2].split(",")
        source = os.path.join(ws, "source.txt")
        if not os.path.exists(source):
            open(source, "w").write("s")
        graph = taskgraph.TaskGraph(ws, 2)
        a = graph.add_task(engine_funcs.concat, args=(os.path.join(ws, "a.txt"), source),
                           target_path_list=[os.path.join(ws, "a.txt")], task_name="alpha")
        b = graph.add_task(engine_funcs.concat, args=(os.path.join(ws, "b.txt"), os.path.join(ws, "a.txt")),
                           target_path_list=[os.path.join(ws, "b.txt")], dependent_task_list=[a],
                           task_name="beta")
        # "change" changes one value deep in gamma's argument.
        value = {{"catchment_1": {{"area_km2": 655.2 if "change" in modes else 631.6056, "note": "x" * 80}}}}
        c = graph.add_task(engine_funcs.write, args=(os.path.join(ws, "c.txt"), value),
                           target_path_list=[os.path.join(ws, "c.txt")], task_name="gamma")
        if "fail" in modes:
            graph.add_task(engine_funcs.fail, dependent_task_list=[b, c], task_name="broken")
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

    def run(self, fail=False, change=False):
        modes = ",".join(["ok"] + ["fail"] * fail + ["change"] * change)
        return subprocess.run([sys.executable, str(self.script), str(self.path), modes],
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
    assert result.stdout.startswith("current graph: run 2, ended ")
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:-1]}
    assert set(lines) == {"alpha", "beta", "gamma"}, result.stdout
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


def test_explain_names_the_latest_run_that_skipped_a_task(workspace):
    # Neither a new task's decision (committed with its record) nor a plain
    # skip after an earlier run's decision is written: runs 2 to 4 skip beta,
    # and explain names the latest of them.
    db = str(workspace / taskgraph.LEDGER_FILENAME)

    def beta_decision():
        con = sqlite3.connect(db)
        try:
            return con.execute("SELECT decisions.run_id, action, reasons FROM decisions JOIN tasks "
                               "USING (record_key) WHERE tasks.name='beta'").fetchone()
        finally:
            con.close()

    # (with workers, a commit may come between beta's decision and its record: then it is written)
    written = beta_decision()
    assert written is None or written[:2] == (1, "run")
    result = tg("explain", workspace, "beta")
    assert re.search(r"last decision \(.*, run 1\): it ran", result.stdout), result.stdout
    assert "no record of this task (it never ran)" in result.stdout
    assert workspace.run() == 0  # run 2: beta skipped
    assert beta_decision() == written  # not written
    result = tg("explain", workspace, "beta")
    assert re.search(r"last decision \(.*, run 2\): it was skipped \(up to date\)", result.stdout), result.stdout
    assert "new task" not in result.stdout
    assert workspace.run() == 0 and workspace.run() == 0  # runs 3 and 4 skip it again
    assert beta_decision() == written  # still not written
    result = tg("explain", workspace, "beta")
    assert result.returncode == 0, result.stderr
    assert re.search(r"last decision \(.*, run 4\): it was skipped \(up to date\)", result.stdout), result.stdout


def test_a_task_that_leaves_the_graph_was_last_seen_in_the_last_run_that_skipped_it(tmp_path):
    # Its decision was written once, in run 1 (it ran); runs 2 to 4 skipped
    # it without writing one; run 5 no longer has it: it is history, last seen
    # in run 4, and its decision became run 4's skip when run 4's set left.
    from taskgraph._ledger_read import LedgerReader

    ws = str(tmp_path)
    target = os.path.join(ws, "b.txt")
    for run in range(1, 6):
        with taskgraph.TaskGraph(ws, -1) as graph:
            graph.add_task(engine_funcs.write, args=(os.path.join(ws, "a.txt"), "a"),
                           target_path_list=[os.path.join(ws, "a.txt")], task_name="a")
            if run < 5:
                b = graph.add_task(engine_funcs.write, args=(target, "b"), target_path_list=[target], task_name="b")
        if run == 4:
            run_4_started = time.time()
    reader = LedgerReader(ws)
    try:
        run, when = reader.last_seen(b.key)
        assert run == 4
        stale = {row.record_key: row for row in reader.stale(5)}
    finally:
        reader.close()
    assert when is not None and when < run_4_started + 1 and b.key in stale and stale[b.key].last_run == 4
    result = tg("explain", ws, "b")
    assert "run 4): it was skipped" in result.stdout, result.stdout


def test_a_skip_after_another_graph_ran_the_task_is_written(tmp_path):
    # Graph A read which records have a decision (so that their plain skips
    # need not be written); graph B (another connection) then runs X; A's later
    # skip of X must replace B's decision: A's run started before it, so the
    # reader would not take A's unwritten skip over B's row.
    ws = str(tmp_path)
    source = os.path.join(ws, "x.in")

    def add(graph, name):
        src = os.path.join(ws, f"{name}.in")
        return graph.add_task(engine_funcs.concat, args=(os.path.join(ws, f"{name}.out"), src),
                              target_path_list=[os.path.join(ws, f"{name}.out")], task_name=name)

    for name in ("x", "y"):
        with open(os.path.join(ws, f"{name}.in"), "w") as stream:
            stream.write("1")
    for _ in range(2):
        with taskgraph.TaskGraph(ws, -1) as graph:
            add(graph, "x")
            add(graph, "y")
    b = taskgraph.TaskGraph(ws, -1)
    a = taskgraph.TaskGraph(ws, -1)
    assert add(a, "y").state == "skipped"  # A reads its plain skips
    with open(source, "w") as stream:
        stream.write("22")
    assert add(b, "x").state == "ran"
    b.close()
    b.join()
    time.sleep(0.01)
    assert add(a, "x").state == "skipped"
    a.close()
    a.join()
    result = tg("explain", ws, "x")
    assert "it was skipped (up to date)" in result.stdout, result.stdout


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
        if result.returncode == 0 and [t["recorded"] for t in json.loads(result.stdout)["tasks"]].count("done") == 4:
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=30)
    result = tg("status", ws, "--json")
    assert result.returncode == 0, result.stderr
    tasks = json.loads(result.stdout)["tasks"]
    recorded = [task for task in tasks if task["recorded"] == "done"]
    assert sorted(task["name"] for task in recorded) == ["quick0", "quick1", "quick2", "quick3"]
    assert all(task["targets"] == "ok" for task in recorded)
    # The task that was running has no record; its run's decision names it.
    assert [(task["name"], task["state"]) for task in tasks if task["recorded"] is None] in (
        [], [("long", "interrupted")])


# -- runs, the current graph and the history --------------------------------------------


def status_json(workspace, *options):
    result = tg("status", workspace, "--json", *options)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_two_runs_with_a_changed_argument_and_a_failure(workspace, tmp_path):
    first = {row["name"]: row["key"] for row in status_json(workspace)["tasks"]}
    assert workspace.run(fail=True, change=True) == 3

    failed = tg("explain", workspace, "broken")
    assert failed.returncode == 0, failed.stderr
    assert "last run failed at " in failed.stdout
    assert ": ZeroDivisionError: division by zero" in failed.stdout
    assert 'engine_funcs.py", line ' in failed.stdout and "return 1 / 0" in failed.stdout

    changed = tg("explain", workspace, "gamma")
    assert changed.returncode == 0, changed.stderr
    current_gamma = next(row["key"] for row in status_json(workspace)["tasks"] if row["name"] == "gamma")
    assert current_gamma != first["gamma"]
    assert changed.stdout.startswith(f"task 'gamma' (key {current_gamma[:12]}), in the current graph (run 2)")
    assert "its arguments changed: args[1]['catchment_1']['area_km2']: 631.6056 -> 655.2" in changed.stdout
    assert f"1 older record of this name (history): {first['gamma'][:12]} (run 1, " in changed.stdout

    # The current graph is exactly what run 2 was given.
    data = status_json(workspace)
    assert data["current_run"] == 2 and data["history"] == 1
    assert sorted((row["name"], row["state"]) for row in data["tasks"]) == [
        ("alpha", "skipped"), ("beta", "skipped"), ("broken", "failed"), ("gamma", "ran")]
    assert all(row["current"] for row in data["tasks"])
    assert current_gamma in {row["key"] for row in data["tasks"]}
    everything = status_json(workspace, "--all")
    assert {row["key"]: row["state"] for row in everything["tasks"]}[first["gamma"]] == "stale"
    text = tg("status", workspace).stdout
    assert "1 older record is history (not considered since run 2)" in text

    forgot = tg("forget", workspace, "--stale", "--yes")
    assert forgot.returncode == 0, forgot.stderr
    assert forgot.stdout.startswith("forgot 1 record(s) of history")
    after = status_json(workspace, "--all")
    assert sorted(row["key"] for row in after["tasks"]) == sorted(row["key"] for row in data["tasks"])
    assert after["history"] == 0 and all(row["current"] for row in after["tasks"])

    mermaid = tmp_path / "g.mmd"
    assert tg("graph", workspace, "-o", mermaid).returncode == 0
    assert mermaid.read_text().startswith("flowchart LR\n")
    report = tmp_path / "report.html"
    made = tg("report", workspace, "-o", report)
    assert made.returncode == 0, made.stderr
    page = report.read_text()
    assert '<svg id="graph"' in page and '<svg id="timeline"' in page and "ZeroDivisionError" in page


def test_forget_stale_asks_first_and_keeps_recent_history(workspace):
    assert workspace.run(change=True) == 0
    history = [row["key"] for row in status_json(workspace, "--all")["tasks"] if row["state"] == "stale"]
    assert len(history) == 1
    refused = tg("forget", workspace, "--stale")
    assert refused.returncode == 1 and "--yes" in refused.stderr and "'gamma'" in refused.stderr
    recent = tg("forget", workspace, "--stale", "--older-than", "30d", "--yes")
    assert recent.returncode == 0 and recent.stdout.startswith("nothing to forget")
    assert len(status_json(workspace, "--all")["tasks"]) == 4
    # Make the old record 40 days old, as months of history would.
    con = sqlite3.connect(str(workspace / taskgraph.LEDGER_FILENAME))
    with con:
        con.execute("UPDATE decisions SET decided_at = decided_at - 40 * 86400 WHERE record_key = ?", history)
        con.execute("UPDATE tasks SET ended = ended - 40 * 86400 WHERE record_key = ?", history)
    con.close()
    old = tg("forget", workspace, "--stale", "--older-than", "30d", "--yes")
    assert old.returncode == 0 and old.stdout.startswith("forgot 1 record(s)"), old.stdout
    assert [row["name"] for row in status_json(workspace, "--all")["tasks"]].count("gamma") == 1
    bad = tg("forget", workspace, "--stale", "--older-than", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    log = workspace / "executions.log"
    log.write_text("")
    assert workspace.run(change=True) == 0
    assert log.read_text() == ""  # the current graph was untouched: nothing runs


def test_explain_and_forget_name_the_current_record(workspace):
    assert workspace.run(change=True) == 0
    old, new = sorted((row for row in status_json(workspace, "--all")["tasks"] if row["name"] == "gamma"),
                      key=lambda row: row["state"] == "stale", reverse=True)
    assert old["state"] == "stale" and new["state"] == "ran"
    history = tg("explain", workspace, old["key"][:8])
    assert history.returncode == 0
    assert "history: not in the current graph (run 2); last considered run 1" in history.stdout
    assert tg("forget", workspace, "gamma", "--yes").returncode == 0
    remaining = {row["key"] for row in status_json(workspace, "--all")["tasks"]}
    assert old["key"] in remaining and new["key"] not in remaining


def line_of(func):
    """The line of a one-line function's body."""
    return inspect.getsourcelines(func)[1] + 1


def test_failed_tasks_show_type_message_and_the_users_frames(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import history_funcs, taskgraph
        if __name__ == "__main__":
            graph = taskgraph.TaskGraph(sys.argv[1], int(sys.argv[2]))
            try:
                graph.add_task(history_funcs.nested, args=({{"present": 1}},), task_name="step 3")
                graph.close()
                graph.join()
            except KeyError:
                sys.exit(3)
    """))
    for n_workers in (2, 0, -1):
        ws = tmp_path / f"ws{n_workers}"
        ws.mkdir()
        run = subprocess.run([sys.executable, str(script), str(ws), str(n_workers)], capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 3, run.stderr
        explained = tg("explain", ws, "step 3").stdout
        assert ": KeyError: 'missing'\n" in explained, (n_workers, explained)
        assert "raised by taskgraph task" not in explained
        failed = tg("status", ws, "--failed").stdout
        frames = failed.splitlines()[3:-1]
        assert [line.strip() for line in frames] == [
            f'File "{history_funcs.__file__}", line {line_of(history_funcs.nested)}, in nested',
            "return helper(values)",
            f'File "{history_funcs.__file__}", line {line_of(history_funcs.helper)}, in helper',
            'return values["missing"]',
            "KeyError: 'missing'",
        ], (n_workers, failed)
        row = status_json(ws)["tasks"][0]
        assert (row["error_type"], row["error_message"]) == ("KeyError", "'missing'")
        assert [frame["function"] for frame in row["error_frames"]] == ["nested", "helper"]


def test_trace_says_which_run_it_exports(workspace, tmp_path):
    assert workspace.run() == 0  # run 2 executes nothing
    out = tmp_path / "trace.json"
    result = tg("trace", workspace, "-o", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("run 2, the latest, executed nothing (3 skipped): the trace is of run 1")
    assert "3 tasks of run 1" in result.stdout
    assert tg("trace", workspace, "-o", out, "--run", "1").stdout.startswith("wrote ")
    none = tg("trace", workspace, "-o", out, "--run", "2")
    assert none.returncode == 1 and "runs with tasks to show: 1" in none.stderr


def test_graph_format_follows_the_file_name(workspace, tmp_path):
    for name, start in (("g.mmd", "flowchart LR"), ("g.mermaid", "flowchart LR"), ("g.dot", "digraph"),
                        ("g.gv", "digraph"), ("g.json", "{"), ("g.txt", "digraph")):
        result = tg("graph", workspace, "-o", tmp_path / name)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / name).read_text().startswith(start), name
    explicit = tg("graph", workspace, "--format", "json", "-o", tmp_path / "x.mmd")
    assert explicit.returncode == 0 and (tmp_path / "x.mmd").read_text().startswith("{")


def test_every_argument_has_help():
    from taskgraph._cli import build_parser

    parser = build_parser()

    def commands_of(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield f"{prefix} {name}", sub
                    yield from commands_of(sub, f"{prefix} {name}")

    for name, sub in commands_of(parser, "taskgraph"):
        for action in sub._actions:
            if not isinstance(action, argparse._SubParsersAction):  # (its commands have theirs)
                assert action.help, f"`{name}`: {action.dest} has no help text"
        if not name.startswith("taskgraph cache"):
            assert "workspace directory" in sub.format_help(), name


def test_wrong_workspaces_and_short_prefixes_say_what_is_wrong(workspace, tmp_path):
    missing = tg("status", tmp_path / "nowhere")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    a_file = tg("status", workspace / "a.txt")
    assert a_file.returncode == 1 and "is a file, not a workspace directory" in a_file.stderr
    natcap = tmp_path / "natcap"
    natcap.mkdir()
    (natcap / "taskgraph_data.db").write_bytes(b"")
    natcap_result = tg("explain", natcap, "x")
    assert natcap_result.returncode == 1
    assert "is a natcap taskgraph workspace" in natcap_result.stderr and "runs every task once" in natcap_result.stderr
    for result in (missing, a_file, natcap_result):
        assert len(result.stderr.strip().splitlines()) == 1
    key = status_json(workspace)["tasks"][0]["key"]
    short = tg("explain", workspace, key[:3])
    assert short.returncode == 1 and "a key prefix needs at least 4 characters" in short.stderr


def test_status_says_a_run_is_in_progress_and_when_it_was_killed(tmp_path):
    gate = tmp_path / "gate"
    script = tmp_path / "live.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import history_funcs, taskgraph
        if __name__ == "__main__":
            ws, wait = sys.argv[1], sys.argv[2] == "wait"
            graph = taskgraph.TaskGraph(ws, 1)
            quick = os.path.join(ws, "quick.txt")
            # It runs again when waiting: its commit carries the run's decisions.
            graph.add_task(history_funcs.write, args=(quick, 2 if wait else 1), target_path_list=[quick],
                           task_name="quick")
            if wait:
                graph.add_task(history_funcs.wait_for, args=({str(gate)!r}, 60), task_name="waiting")
            graph.close()
            graph.join()
    """))
    ws = tmp_path / "ws"
    ws.mkdir()
    assert subprocess.run([sys.executable, str(script), str(ws), "no"], timeout=120).returncode == 0
    proc = subprocess.Popen([sys.executable, str(script), str(ws), "wait"])
    try:
        deadline = time.monotonic() + 60
        while True:
            data = status_json(ws)
            states = {row["name"]: (row["state"], row["run"]) for row in data["tasks"] if row["run"] == 2}
            if data["later_runs"] and data["later_runs"][0]["status"] == "running" and states:
                break
            assert time.monotonic() < deadline, data
            time.sleep(0.1)
        text = tg("status", ws).stdout
        assert "run 2 is in progress (pid " in text
        assert states == {"quick": ("ran", 2), "waiting": ("running", 2)}, states
        refused = tg("forget", ws, "--stale", "--yes")
        assert refused.returncode == 1 and "run 2 is in progress" in refused.stderr
    finally:
        proc.kill()
        proc.wait(timeout=30)
    text = tg("status", ws).stdout
    assert "run 2 did not finish" in text and "killed or crashed" in text
    data = status_json(ws)
    assert data["current_run"] == 1
    assert {row["name"]: row["state"] for row in data["tasks"] if row["run"] == 2} == {
        "quick": "ran", "waiting": "interrupted"}


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
    states = "ran|restored|skipped|failed|stale|cancelled|running|pending|interrupted"
    node = re.compile(rf'  k[0-9a-f]+\["[^"<>`]*<br/>[0-9.]+s"\]:::({states})')
    edge = re.compile(r"  k[0-9a-f]+ --> k[0-9a-f]+")
    style = re.compile(rf"  classDef ({states}) fill:#[0-9a-f]{{6}}")
    assert lines[0] == "flowchart LR"
    assert all(node.fullmatch(line) or edge.fullmatch(line) or style.fullmatch(line) for line in lines[1:]), lines
    assert sum(bool(node.fullmatch(line)) for line in lines) == len(HOSTILE_NAMES)


def test_hostile_names_stay_on_their_line_in_status_and_explain(hostile):
    result = tg("status", hostile)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == 2 + len(HOSTILE_NAMES) + 1 + 1  # run, header, rows, summary
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
    assert tg("status", ws).stdout.splitlines()[2].split()[-1] == "missing"


def test_a_workspace_whose_name_is_not_utf8(tmp_path):
    ws = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"ws\xff"))
    with taskgraph.TaskGraph(ws, -1) as graph:
        graph.add_task(reliability_funcs.identity, args=(1,), task_name="one")
    result = tg("status", ws)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2].split()[:2] == ["one", "ran"]
    missing = tg("status", ws + "-missing")
    assert missing.returncode == 1 and "ws\\xff-missing" in missing.stderr
