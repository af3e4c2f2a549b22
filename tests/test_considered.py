"""What each run considered, as the ledger stores it: a rerun that skips every
task writes a row per commit, not per task, and every reader answers as if
each run had a row per task; a SIGKILL at any moment leaves what the killed
run committed; a schema-4 ledger is upgraded keeping every record. Real
SQLite files, real processes, real SIGKILL, the real command line.
"""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import history_funcs as h
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ledgers import downgrade
from procs import wait_until

import taskgraph
from taskgraph._cli import main
from taskgraph._ledger_considered import pack, unpack, without
from taskgraph._ledger_read import LedgerReader

TESTS = os.path.dirname(__file__)

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import history_funcs, taskgraph
    ws, n, kill_after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with taskgraph.TaskGraph(ws, -1) as graph:
        for i in range(n):
            target = os.path.join(ws, f"t{{i}}.txt")
            graph.add_task(history_funcs.write, args=(target, i), target_path_list=[target], task_name=f"t{{i}}")
            if i == kill_after:
                print("killing", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            elif i == 0:
                print("adding", flush=True)
""")


def run(tmp_path, n, kill_after=-1, killer=None):
    """Run the graph of ``n`` tasks on ``tmp_path / 'ws'`` in a process of
    its own (killed by itself after ``kill_after`` tasks, or by ``killer``,
    a function of the process); returns its exit code."""
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    script = tmp_path / "graph.py"
    script.write_text(SCRIPT.format(tests=TESTS))
    proc = subprocess.Popen([sys.executable, str(script), str(ws), str(n), str(kill_after)],
                            stdout=subprocess.PIPE, text=True)
    try:
        if killer is not None:
            assert proc.stdout.readline() == "adding\n"
            killer(proc)
        return proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait(timeout=30)


def ledger(tmp_path):
    return str(tmp_path / "ws" / taskgraph.LEDGER_FILENAME)


def considered_by_run(tmp_path):
    """run -> {state: how many} of each run the ledger knows the graph of."""
    reader = LedgerReader(str(tmp_path / "ws"))
    try:
        found = {}
        for _, run_id, state in reader.memberships():
            counts = found.setdefault(run_id, {})
            counts[state] = counts.get(state, 0) + 1
        return found
    finally:
        reader.close()


def status(ws, capsys, *options):
    capsys.readouterr()
    assert main(["status", str(ws), "--json", *options]) == 0
    data = json.loads(capsys.readouterr().out)
    return data, data["tasks"]


def count_writes(path):
    """Make the ledger count every row written to or deleted from what runs
    consider (a trigger per table and change), from any connection."""
    con = sqlite3.connect(path)
    with con:
        con.execute("CREATE TABLE writes (n INTEGER)")
        con.execute("INSERT INTO writes VALUES (0)")
        for table in ("considered", "considered_skips", "decisions", "tasks"):
            for change in ("INSERT", "UPDATE", "DELETE"):
                con.execute(f"CREATE TRIGGER count_{table}_{change} AFTER {change} ON {table}"
                            " BEGIN UPDATE writes SET n = n + 1; END")
    con.close()


def writes(path):
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT n FROM writes").fetchone()[0]
    finally:
        con.close()


def run_twice(tmp_path, n):
    """Run 1 records ``n`` tasks, run 2 skips them all: the current graph."""
    assert run(tmp_path, n) == 0
    assert run(tmp_path, n) == 0


def test_a_rerun_that_skips_every_task_writes_a_row_per_commit_not_per_task(tmp_path, capsys):
    n = 10_000
    run_twice(tmp_path, n)
    count_writes(ledger(tmp_path))
    assert run(tmp_path, n) == 0  # run 3: steady
    # A pack per commit (a no-op rerun commits every 4,096 changes and at
    # its end), and the previous run's packs dropped: a dozen rows, not 20,000.
    assert writes(ledger(tmp_path)) <= 12
    assert considered_by_run(tmp_path) == {3: {"skipped": n}}
    head, rows = status(tmp_path / "ws", capsys)
    assert head["current_run"] == 3 and len(rows) == n
    assert {(row["state"], row["run"], row["current"]) for row in rows} == {("skipped", 3, True)}
    reader = LedgerReader(str(tmp_path / "ws"))
    try:
        assert reader.run_states(3) == {"skipped": n} and reader.considered(3) == n
        assert [(run.run_id, run.tasks, run.skipped) for run in reader.runs()] == [(1, n, 0), (2, n, n), (3, n, n)]
    finally:
        reader.close()


def test_a_run_killed_in_a_rerun_keeps_what_it_committed_and_explain_names_it(tmp_path, capsys):
    n = 10_000
    run_twice(tmp_path, n)
    assert run(tmp_path, n, kill_after=9_000) == -signal.SIGKILL  # run 3
    found = considered_by_run(tmp_path)
    # Its first packs were committed (at the first dispatch once 4,096 lazy
    # rows wait), its last ones were not.
    assert found[2] == {"skipped": n} and 4_096 <= found[3]["skipped"] < 9_000 and set(found[3]) == {"skipped"}
    head, rows = status(tmp_path / "ws", capsys)
    assert head["current_run"] == 2 and len(rows) == n
    by_run = {row["run"] for row in rows if row["name"] == "t0"}
    assert by_run == {3}  # the latest run that considered it
    capsys.readouterr()
    assert main(["explain", str(tmp_path / "ws"), "t0"]) == 0
    assert "run 3): it was skipped (up to date)" in capsys.readouterr().out

    # t0 leaves the graph: it keeps its last skip, the killed run's.
    assert run(tmp_path, n, kill_after=-1) == 0  # run 4: every task again
    script = tmp_path / "graph.py"
    smaller = SCRIPT.replace("for i in range(n):", "for i in range(1, n):")
    script.write_text(smaller.format(tests=TESTS))
    subprocess.run([sys.executable, str(script), str(tmp_path / "ws"), str(n), "-1"], check=True, timeout=120)
    head, rows = status(tmp_path / "ws", capsys, "--all")
    assert head["current_run"] == 5
    t0 = [row for row in rows if row["name"] == "t0"]
    assert [row["state"] for row in t0] == ["stale"]
    reader = LedgerReader(str(tmp_path / "ws"))
    try:
        assert reader.last_seen(t0[0]["key"])[0] == 4
    finally:
        reader.close()
    capsys.readouterr()
    assert main(["explain", str(tmp_path / "ws"), t0[0]["key"][:12]]) == 0
    assert "run 4): it was skipped (up to date)" in capsys.readouterr().out
    assert considered_by_run(tmp_path) == {5: {"skipped": n - 1}}


def test_sigkill_at_random_moments_of_reruns_leaves_a_readable_ledger(tmp_path, capsys):
    n = 8_000
    run_twice(tmp_path, n)
    rng = random.Random(20261201)
    for _ in range(4):  # runs 3 to 6, each killed at a random moment
        def killer(proc):
            time.sleep(rng.uniform(0.0, 1.5))
            proc.send_signal(signal.SIGKILL)
        assert run(tmp_path, n, killer=killer) in (-signal.SIGKILL, 0)
        con = sqlite3.connect(ledger(tmp_path))
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
        found = considered_by_run(tmp_path)
        assert all(set(states) <= {"skipped", "pending"} for states in found.values()), found
        head, rows = status(tmp_path / "ws", capsys)
        assert len({row["name"] for row in rows}) == n
        assert {row["state"] for row in rows} == {"skipped"} and {row["targets"] for row in rows} == {"ok"}
    mtimes = {entry.name: entry.stat().st_mtime_ns for entry in os.scandir(tmp_path / "ws")
              if entry.name.endswith(".txt")}
    assert run(tmp_path, n) == 0  # run 7 ends: the only graph left
    assert mtimes == {entry.name: entry.stat().st_mtime_ns for entry in os.scandir(tmp_path / "ws")
                      if entry.name.endswith(".txt")}  # nothing ran
    assert considered_by_run(tmp_path) == {7: {"skipped": n}}
    head, rows = status(tmp_path / "ws", capsys)
    assert head["current_run"] == 7 and {(row["state"], row["run"]) for row in rows} == {("skipped", 7)}


def pipeline(ws, names=("a", "b", "c"), value=1):
    with taskgraph.TaskGraph(str(ws), -1) as graph:
        for name in names:
            target = os.path.join(ws, f"{name}.txt")
            graph.add_task(h.write, args=(target, value if name == "a" else 0), target_path_list=[target],
                           task_name=name)


def cli(ws, capsys, *command):
    capsys.readouterr()
    code = main([command[0], str(ws), *command[1:]])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.skipif(sqlite3.sqlite_version_info < (3, 35), reason="DROP COLUMN needs SQLite 3.35")
def test_a_schema_4_ledger_reads_the_same_and_is_upgraded_keeping_every_record(tmp_path, capsys):
    ws = tmp_path
    pipeline(ws)
    pipeline(ws)  # run 2 skips all three
    pipeline(ws, names=("a", "b"))  # run 3: c leaves the graph, last skipped by run 2
    pipeline(ws, names=("a", "b"), value=2)  # run 4: a runs again; b skipped
    commands = [("status", "--json"), ("status", "--all", "--json"), ("explain", "a"), ("explain", "b"),
                ("graph", "--format", "json", "--all")]
    keys = {row["name"] + str(row["run"]): row["key"] for row in status(ws, capsys, "--all")[1]}
    assert sorted(keys) == ["a1", "a4", "b4", "c1"]  # (a stale record shows the run it last ran in)
    commands += [("explain", key[:12]) for key in keys.values()]
    before = {command: cli(ws, capsys, *command) for command in commands}
    path = os.path.join(ws, taskgraph.LEDGER_FILENAME)
    downgrade(path, 4)  # as schema 4 wrote it: a considered row per task
    con = sqlite3.connect(path)
    tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    skipped_rows = con.execute("SELECT run_id, count(*) FROM considered WHERE state='skipped' GROUP BY run_id")
    assert "considered_skips" not in tables and skipped_rows.fetchall() == [(4, 1)]
    records = con.execute("SELECT * FROM tasks ORDER BY record_key").fetchall()
    con.close()

    # Read through a copy upgraded in memory: every command says the same.
    assert {command: cli(ws, capsys, *command) for command in commands} == before
    assert LedgerReader(str(ws)).schema == 4

    pipeline(ws, names=("a", "b"), value=2)  # run 5 upgrades it in place and skips everything
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == taskgraph._ledger.SCHEMA_VERSION
    upgraded = con.execute("SELECT * FROM tasks ORDER BY record_key").fetchall()
    assert [row[:-1] for row in upgraded] == records  # and, at the end, its id:
    ids = [row[-1] for row in upgraded]
    assert None not in ids and len(set(ids)) == len(records)
    con.close()
    head, rows = status(ws, capsys)
    assert head["current_run"] == 5 and {(row["name"], row["state"], row["run"]) for row in rows} == {
        ("a", "skipped", 5), ("b", "skipped", 5)}
    assert "run 5): it was skipped" in cli(ws, capsys, "explain", "b")[1]
    assert "run 2): it was skipped" in cli(ws, capsys, "explain", keys["c1"][:12])[1]  # its last skip


def test_a_forgotten_record_leaves_the_graph_it_was_skipped_in(tmp_path, capsys):
    pipeline(tmp_path)
    pipeline(tmp_path)  # run 2 skips a, b and c: one pack
    assert cli(tmp_path, capsys, "forget", "b", "--yes")[0] == 0
    head, rows = status(tmp_path, capsys)
    assert sorted(row["name"] for row in rows) == ["a", "c"] and "undecided" not in head
    code, out, _ = cli(tmp_path, capsys, "status")
    assert code == 0 and "never decided" not in out and out.splitlines()[-1] == "2 tasks: 2 skipped"
    reader = LedgerReader(str(tmp_path))
    try:
        assert reader.considered(2) == 2 and reader.run_states(2) == {"skipped": 2}
    finally:
        reader.close()
    pipeline(tmp_path)  # b runs again, with an id of its own
    head, rows = status(tmp_path, capsys)
    assert {(row["name"], row["state"]) for row in rows} == {("a", "skipped"), ("b", "ran"), ("c", "skipped")}


def expanded(ranges):
    return [value for first, end in ranges for value in range(first, end)]


@given(st.lists(st.integers(min_value=1, max_value=2**40), max_size=300))
def test_a_pack_holds_exactly_its_ids(ids):
    assert expanded(unpack(pack(ids))) == sorted(set(ids))


@given(st.sets(st.integers(min_value=1, max_value=200)), st.sets(st.integers(min_value=1, max_value=200)))
def test_the_ids_of_one_pack_that_another_lacks(some, others):
    assert expanded(without(unpack(pack(some)), unpack(pack(others)))) == sorted(some - others)


SLOW = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import history_funcs, taskgraph
    ws, gate, second = sys.argv[1], sys.argv[2], sys.argv[3] == "second"
    with taskgraph.TaskGraph(ws, 1) as graph:
        quick = os.path.join(ws, "quick.txt")
        graph.add_task(history_funcs.write, args=(quick, 1), target_path_list=[quick], task_name="quick")
        if second:  # a task that runs: its commit carries the skip before it
            fresh = os.path.join(ws, "fresh.txt")
            graph.add_task(history_funcs.write, args=(fresh, 2), target_path_list=[fresh], task_name="fresh")
            graph.add_task(history_funcs.wait_for, args=(gate, 60), task_name="waiting")
""")


def test_a_run_that_ends_keeps_the_skips_of_a_run_still_going(tmp_path, capsys):
    ws, gate, script = tmp_path / "ws", tmp_path / "gate", tmp_path / "slow.py"
    ws.mkdir()
    script.write_text(SLOW.format(tests=TESTS))
    subprocess.run([sys.executable, str(script), str(ws), str(gate), "first"], check=True, timeout=120)
    proc = subprocess.Popen([sys.executable, str(script), str(ws), str(gate), "second"])  # run 2
    try:
        def committed():
            try:
                return considered_by_run(tmp_path).get(2)
            except taskgraph.LedgerError:
                return None
        assert wait_until(lambda: committed() is not None and "ran" in committed(), timeout=60)
        assert committed() in ({"skipped": 1, "ran": 1, "running": 1}, {"skipped": 1, "ran": 1, "pending": 1})
        pipeline(ws, names=("a",))  # run 3 ends while run 2 is still going: it keeps run 2's pack
        assert considered_by_run(tmp_path) == {2: committed(), 3: {"ran": 1}}
        gate.write_text("")
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert considered_by_run(tmp_path) == {2: {"skipped": 1, "ran": 2}, 3: {"ran": 1}}
    head, rows = status(ws, capsys)
    assert head["current_run"] == 3 and [row["name"] for row in rows] == ["a"]
