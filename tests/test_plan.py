"""Dry runs, plan() and statistics()."""

import logging
import os
import sqlite3
import time

import engine_funcs as f
import pytest
from ledgers import downgrade

import taskgraph


def chain(ws, graph):
    a_path, b_path, c_path = (os.path.join(ws, name) for name in ("a.txt", "b.txt", "c.txt"))
    a = graph.add_task(f.write, args=(a_path, "A"), target_path_list=[a_path], task_name="a")
    b = graph.add_task(f.concat, args=(b_path, a_path), target_path_list=[b_path], dependent_task_list=[a],
                       task_name="b", store_result=True)
    c = graph.add_task(f.write, args=(c_path, "C"), target_path_list=[c_path], task_name="c")
    return a, b, c


@pytest.mark.parametrize("n_workers", [-1, 2])
def test_dry_run_runs_and_records_nothing(tmp_path, n_workers, caplog):
    ws = str(tmp_path)
    with taskgraph.TaskGraph(ws, -1) as graph:
        chain(ws, graph)
    ledger = os.path.join(ws, taskgraph.LEDGER_FILENAME)

    def snapshot():
        con = sqlite3.connect(ledger)
        rows = [con.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                for table in ("tasks", "files", "decisions", "runs")]
        con.close()
        return rows

    before = snapshot()
    os.utime(os.path.join(ws, "a.txt"), ns=(0, time.time_ns() + 10**10))  # a's target changed
    os.remove(os.path.join(ws, "executions.log"))
    with caplog.at_level(logging.INFO, logger="taskgraph"):
        with taskgraph.TaskGraph(ws, n_workers, dry_run=True) as graph:
            _, b, c = chain(ws, graph)
            plan = graph.plan()
    assert not os.path.exists(os.path.join(ws, "executions.log"))  # nothing ran
    assert snapshot() == before  # nothing recorded
    assert [(entry.name, entry.state) for entry in plan] == [("a", "would-run"), ("b", "would-run"),
                                                             ("c", "skipped")]
    assert [r.code for r in plan[0].reasons] == ["target_changed"]
    assert [r.code for r in plan[1].reasons] == ["dependency_would_run"]
    assert b.get() is None and c.state == "skipped"
    assert "dry run: 2 of 3 tasks would run" in caplog.text
    stats = graph.statistics()
    assert (stats.added, stats.would_run, stats.skipped, stats.ran) == (3, 2, 1, 0)


def test_plan_and_statistics_of_a_real_run(tmp_path):
    ws = str(tmp_path)
    with taskgraph.TaskGraph(ws, 0) as graph:
        chain(ws, graph)
        plan = graph.plan(timeout=30)
    assert {entry.state for entry in plan} == {"ran"}
    assert all(entry.reasons[0].code == "new_task" for entry in plan)
    stats = graph.statistics()
    assert stats.ran == 3 and stats.pending == stats.running == stats.failed == 0
    # The tasks' summed run time is what each ran for, and the graph lived at least that long
    # (inline and in one thread, tasks run one at a time).
    assert stats.task_seconds == pytest.approx(sum(task._duration for task in graph._tasks))
    assert 0 < stats.task_seconds <= stats.elapsed
    with pytest.raises(AttributeError):
        stats.ran = 5  # a snapshot, not a live view


def workspace_files(ws):
    return {name: os.stat(os.path.join(ws, name)).st_mtime_ns for name in os.listdir(ws)}


def test_a_dry_run_of_a_new_workspace_creates_nothing(tmp_path):
    ws = str(tmp_path / "never-made")
    with taskgraph.TaskGraph(ws, -1, dry_run=True) as graph:
        task = graph.add_task(f.square, args=(3,), task_name="square", store_result=True)
    assert task.state == "would-run" and [r.code for r in task.reasons] == ["new_task"]
    assert not os.path.exists(ws)


@pytest.mark.skipif(sqlite3.sqlite_version_info < (3, 35), reason="DROP COLUMN needs SQLite 3.35")
def test_a_dry_run_reads_an_older_ledger_without_upgrading_or_writing_it(tmp_path):
    ws = str(tmp_path)
    with taskgraph.TaskGraph(ws, -1) as graph:
        chain(ws, graph)
    ledger = os.path.join(ws, taskgraph.LEDGER_FILENAME)
    downgrade(ledger, 1)
    before = workspace_files(ws)
    with taskgraph.TaskGraph(ws, -1, dry_run=True) as graph:
        a, b, c = chain(ws, graph)
    # Its records are seen (a and c are up to date; b's result predates
    # authentication, so it would run), and nothing in the workspace changed.
    assert (a.state, b.state, c.state) == ("skipped", "would-run", "skipped")
    assert workspace_files(ws) == before
    con = sqlite3.connect(ledger)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1
    con.close()
