"""Runs, the current graph and the history in the ledger itself: upgrades
keep every record, forget --stale is one transaction, concurrent runs keep
what the other uses (real SQLite files, real processes, the real CLI)."""

import collections
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import history_funcs as h
import pytest
from ledgers import downgrade
from procs import wait_until

import taskgraph
from taskgraph._cli import main
from taskgraph._errors import LedgerError
from taskgraph._ledger_read import LedgerReader

pytestmark = pytest.mark.skipif(sqlite3.sqlite_version_info < (3, 35), reason="DROP COLUMN needs SQLite 3.35")


def pipeline(ws, value, names=("a", "b")):
    with taskgraph.TaskGraph(str(ws), -1) as graph:
        first = graph.add_task(h.write, args=(str(ws / "a.txt"), value), target_path_list=[str(ws / "a.txt")],
                               task_name=names[0])
        second = graph.add_task(h.write, args=(str(ws / "b.txt"), 1), target_path_list=[str(ws / "b.txt")],
                                dependent_task_list=[first], task_name=names[1])
    return first, second


def status(ws, capsys, *options):
    capsys.readouterr()
    assert main(["status", str(ws), "--json", *options]) == 0
    return json.loads(capsys.readouterr().out)


def ledger_path(ws):
    return os.path.join(ws, taskgraph.LEDGER_FILENAME)


def rows(ws, sql):
    con = sqlite3.connect(ledger_path(ws))
    try:
        return sorted(con.execute(sql).fetchall(), key=repr)
    finally:
        con.close()


SCHEMA_3 = {
    "tasks": "SELECT record_key, task_key, exec_key, name, func, source_hash, args, hash_algorithm, store_result,"
             " state, run_id, started, ended, duration, worker, error, cpu_time, peak_memory FROM tasks",
    "files": "SELECT * FROM files", "deps": "SELECT * FROM deps", "results": "SELECT * FROM results",
    "decisions": "SELECT * FROM decisions",
    # A cache: the first rerun hashes freshly written files once more (racily clean).
    "digests": "SELECT path, algorithm, digest FROM digests",
    "runs": "SELECT run_id, started, ended, pid, host, n_workers, version FROM runs",
}


def test_a_schema_3_ledger_keeps_every_record_and_gets_its_current_graph(tmp_path, capsys):
    pipeline(tmp_path, 1)
    pipeline(tmp_path, 2)  # 'a' has a new record; its first one is history
    downgrade(ledger_path(tmp_path), 3)
    before = {table: rows(tmp_path, sql) for table, sql in SCHEMA_3.items()}
    digest = hashlib.sha256(open(ledger_path(tmp_path), "rb").read()).hexdigest()

    # Read as it is: upgraded in memory only.
    data = status(tmp_path, capsys)
    assert data["current_run"] == 2 and data["history"] == 1
    assert sorted(row["name"] for row in data["tasks"]) == ["a", "b"]
    assert hashlib.sha256(open(ledger_path(tmp_path), "rb").read()).hexdigest() == digest
    assert LedgerReader(str(tmp_path)).schema == 3

    # Upgraded in place by the next run, which keeps every record and skips everything.
    a, b = pipeline(tmp_path, 2)
    assert (a.state, b.state) == ("skipped", "skipped")
    assert rows(tmp_path, "PRAGMA user_version") == [(taskgraph._ledger.SCHEMA_VERSION,)]
    after = {table: rows(tmp_path, sql) for table, sql in SCHEMA_3.items()}
    for table in ("tasks", "files", "deps", "results", "digests"):
        assert after[table] == before[table], table
    assert after["runs"][:2] == before["runs"]
    data = status(tmp_path, capsys)
    assert data["current_run"] == 3 and data["history"] == 1


def test_forget_stale_is_one_transaction(tmp_path, capsys):
    pipeline(tmp_path, 1)
    pipeline(tmp_path, 2)
    tables = ("tasks", "files", "decisions", "deps", "considered", "digests")
    before = {table: rows(tmp_path, f"SELECT * FROM {table}") for table in tables}
    con = sqlite3.connect(ledger_path(tmp_path))
    # (files go after the records themselves: a failure there must undo those)
    con.execute("CREATE TRIGGER refuse BEFORE DELETE ON files BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
    con.commit()
    con.close()
    capsys.readouterr()
    assert main(["forget", str(tmp_path), "--stale", "--yes"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("taskgraph: cannot write the ledger") and "disk trouble" in error
    assert {table: rows(tmp_path, f"SELECT * FROM {table}") for table in tables} == before
    con = sqlite3.connect(ledger_path(tmp_path))
    con.execute("DROP TRIGGER refuse")
    con.commit()
    con.close()
    assert main(["forget", str(tmp_path), "--stale", "--yes"]) == 0
    assert rows(tmp_path, "SELECT count(*) FROM tasks") == [(2,)]
    assert rows(tmp_path, "SELECT count(*) FROM decisions WHERE record_key NOT IN (SELECT record_key FROM tasks)"
                ) == [(0,)]
    assert status(tmp_path, capsys, "--all")["history"] == 0


def memberships(ws):
    """(run, how many records it considered) of each run the ledger still knows the graph of."""
    reader = LedgerReader(str(ws))
    try:
        return sorted(collections.Counter(run for _, run, _ in reader.memberships()).items())
    finally:
        reader.close()


def test_runs_keep_one_graph_of_memberships_and_an_empty_run_changes_nothing(tmp_path, capsys):
    for value in (0, 1, 1, 0, 0):
        pipeline(tmp_path, value)
    assert memberships(tmp_path) == [(5, 2)]
    assert rows(tmp_path, "SELECT run_id, tasks, ran, skipped, failed FROM runs") == [
        (1, 2, 2, 0, 0), (2, 2, 1, 1, 0), (3, 2, 0, 2, 0), (4, 2, 1, 1, 0), (5, 2, 0, 2, 0)]
    with taskgraph.TaskGraph(str(tmp_path), -1):
        pass  # a run given no task is not a graph of the workspace
    data = status(tmp_path, capsys)
    assert data["current_run"] == 5 and len(data["tasks"]) == 2
    assert status(tmp_path, capsys, "--all")["history"] == 1  # a's record for value 0 or 1


def members_of_run_1(ws):
    """How many records run 1 considered, as committed so far (None before the ledger is made)."""
    if not os.path.exists(ledger_path(ws)):
        return None
    try:
        return dict(memberships(ws)).get(1, 0)
    except LedgerError:
        return None  # being created


def test_a_run_that_ends_keeps_what_a_run_still_going_considered(tmp_path, capsys):
    gate = tmp_path / "gate"
    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import history_funcs, taskgraph
        if __name__ == "__main__":
            ws = sys.argv[1]
            with taskgraph.TaskGraph(ws, 1) as graph:
                quick = os.path.join(ws, "slow-quick.txt")
                graph.add_task(history_funcs.write, args=(quick, 1), target_path_list=[quick], task_name="quick")
                graph.add_task(history_funcs.wait_for, args=({str(gate)!r}, 60), task_name="waiting")
    """))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)])
    try:
        # Its first task's commit carries the run's memberships.
        assert wait_until(lambda: members_of_run_1(tmp_path) == 2, timeout=60)
        pipeline(tmp_path, 1)  # run 2 ends while run 1 is still going
        assert dict(memberships(tmp_path))[1] == 2
        capsys.readouterr()
        assert main(["forget", str(tmp_path), "--stale", "--yes"]) == 1
        assert "run 1 is in progress" in capsys.readouterr().err
        gate.write_text("")
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert memberships(tmp_path) == [(1, 2), (2, 2)]
    data = status(tmp_path, capsys)
    assert data["current_run"] == 2 and sorted(row["name"] for row in data["tasks"]) == ["a", "b"]
