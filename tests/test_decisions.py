"""The last decision about each record, as the reader reports it: a plain skip
(up to date, no reasons) is not written after an earlier run's decision, so
the reader tells it from what the runs considered. These tests pin down that
what it reports is what happened, also when runs overlap, a task is renamed,
a record is re-decided within its run, or a run still going keeps its sets.
Real SQLite files and the real command line."""

import os
import sqlite3
import time

import history_funcs as h
from procs import wait_until

import taskgraph
from taskgraph._cli import main
from taskgraph._ledger import Ledger
from taskgraph._ledger_forget import forget_stale
from taskgraph._ledger_read import LedgerReader


def add(graph, ws, name, value="1", task_name=None):
    target = os.path.join(ws, f"{name}.txt")
    return graph.add_task(h.write, args=(target, value), target_path_list=[target], task_name=task_name or name)


def run_graph(ws, *names):
    with taskgraph.TaskGraph(ws, -1) as graph:
        return [add(graph, ws, name) for name in names]


def stored(ws, key):
    con = sqlite3.connect(os.path.join(ws, taskgraph.LEDGER_FILENAME))
    try:
        return con.execute("SELECT run_id, name, action, reasons FROM decisions WHERE record_key=?",
                           (key,)).fetchone()
    finally:
        con.close()


def decision(ws, key):
    reader = LedgerReader(ws)
    try:
        return reader.decision(key)
    finally:
        reader.close()


def explain(ws, name, capsys):
    capsys.readouterr()
    assert main(["explain", ws, name]) == 0
    return capsys.readouterr().out


def test_neither_a_new_task_nor_a_rerun_writes_a_decision_and_the_reader_tells_both(tmp_path):
    from taskgraph._decide import Reason
    from taskgraph._ledger_decisions import NEW_TASK_REASONS

    ws = str(tmp_path)
    (a,) = run_graph(ws, "a")
    assert [reason.as_dict() for reason in a.reasons] == NEW_TASK_REASONS  # what the reader gives back
    assert [Reason("new_task", "no record of this task (it never ran)").as_dict()] == NEW_TASK_REASONS
    assert stored(ws, a.key) is None  # committed with its record, which says it
    first = decision(ws, a.key)
    assert (first.run_id, first.action, first.reasons) == (1, "run", NEW_TASK_REASONS)
    for _ in range(3):  # runs 2 to 4
        (again,) = run_graph(ws, "a")
        assert again.state == "skipped"
    assert stored(ws, a.key) is None  # not one decision row written
    last = decision(ws, a.key)
    assert (last.run_id, last.action, last.reasons) == (4, "skip", [])


def test_a_new_task_decided_but_not_recorded_has_its_decision_written(tmp_path):
    # A new task's decision waits for its record only until a commit: one
    # that never gets a record (cancelled, or running at the commit) is
    # written, so that the run's unrecorded tasks keep their names.
    ws = str(tmp_path)
    ledger = Ledger(ws)
    ledger.begin_run(-1)
    ledger.consider("0" * 32)
    from taskgraph._ledger_decisions import NEW_TASK_REASONS

    ledger.record_decision("0" * 32, "never recorded", True, NEW_TASK_REASONS)
    ledger.end_run()
    ledger.close()
    assert stored(ws, "0" * 32)[1:3] == ("never recorded", "run")


def test_a_task_that_runs_again_after_skips_has_that_run_as_its_decision(tmp_path, capsys):
    ws = str(tmp_path)
    (a,) = run_graph(ws, "a")
    run_graph(ws, "a")  # run 2: skipped, not written
    os.remove(os.path.join(ws, "a.txt"))
    (again,) = run_graph(ws, "a")  # run 3: its target is gone
    assert again.state == "ran"
    last = decision(ws, a.key)
    assert last.run_id == 3 and last.action == "run" and last.reasons
    assert "run 3): it ran" in explain(ws, "a", capsys)


def test_a_renamed_task_writes_its_skip_under_the_new_name(tmp_path, capsys):
    ws = str(tmp_path)
    with taskgraph.TaskGraph(ws, -1) as graph:
        a = add(graph, ws, "a")
    with taskgraph.TaskGraph(ws, -1) as graph:
        renamed = add(graph, ws, "a", task_name="renamed")
    assert renamed.key == a.key and renamed.state == "skipped"
    assert stored(ws, a.key)[:3] == (2, "renamed", "skip")


def test_a_skip_by_an_overlapping_run_that_started_first_is_not_the_last_decision(tmp_path, capsys):
    # Run 2 opens, then run 3; run 3 skips 'a'; then 'a's input changes and
    # run 2 runs it. Run 3's skip has the higher run id, but it came first:
    # the last decision is run 2's, and stays so when a later run drops
    # both runs' sets.
    ws = str(tmp_path)
    source = os.path.join(ws, "in.txt")
    with open(source, "w") as stream:
        stream.write("1")

    def copy_task(graph):
        target = os.path.join(ws, "out.txt")
        return graph.add_task(h.write, args=(target, source), kwargs={"read": source}, target_path_list=[target],
                              task_name="a")

    with taskgraph.TaskGraph(ws, -1) as graph:  # run 1
        first = copy_task(graph)
    two, three = taskgraph.TaskGraph(ws, -1), taskgraph.TaskGraph(ws, -1)
    assert copy_task(three).state == "skipped"
    three.close()
    three.join()
    time.sleep(0.02)
    with open(source, "w") as stream:
        stream.write("22")
    assert copy_task(two).state == "ran"
    two.close()
    two.join()
    last = decision(ws, first.key)
    assert (last.run_id, last.action) == (2, "run"), last
    assert "run 2): it ran" in explain(ws, "a", capsys)
    run_graph(ws, "other")  # run 4 ends without 'a': runs 2 and 3 leave
    assert stored(ws, first.key)[0] == 2 and stored(ws, first.key)[2] == "run"
    last = decision(ws, first.key)
    assert (last.run_id, last.action) == (2, "run"), last


def test_a_record_decided_again_within_its_run_has_its_skip_written(tmp_path):
    # Run 2 decides 'a' must run, commits that decision, then decides it
    # again (as after a claim) and finds it up to date: the reader cannot
    # tell a skip of the same run from its row, so the skip is written.
    ws = str(tmp_path)
    a, b = run_graph(ws, "a", "b")
    ledger = Ledger(ws)
    ledger.begin_run(-1)
    for key in (a.key, b.key):
        ledger.consider(key)
    ledger.record_decision(a.key, "a", True, [{"code": "input_changed", "message": "it changed"}])
    ledger.flush(force=True)
    ledger.record_decision(b.key, "b", False, [])  # the first plain skip reads the earlier decisions
    ledger.record_decision(a.key, "a", False, [])
    ledger.end_run()
    ledger.close()
    last = decision(ws, a.key)
    assert (last.run_id, last.action, last.reasons) == (2, "skip", [])
    assert stored(ws, b.key) is None  # b's skip, after run 1's decision, is not written


def test_a_record_last_skipped_by_a_run_still_going_was_seen_by_that_run(tmp_path):
    # Run 2 skips 'a' and stays open; run 3 ends without 'a', keeping run 2's
    # sets (it may still be going): 'a' is history, last seen in run 2.
    ws = str(tmp_path)
    (a,) = run_graph(ws, "a")
    time.sleep(0.01)
    before_two = time.time()
    two = taskgraph.TaskGraph(ws, -1)
    assert add(two, ws, "a").state == "skipped"
    assert add(two, ws, "b").state == "ran"  # its group commit carries the skip
    two_started = time.time()

    def committed():
        con = sqlite3.connect(os.path.join(ws, taskgraph.LEDGER_FILENAME))
        try:
            return con.execute("SELECT count(*) FROM considered_skips WHERE run_id = 2").fetchone()[0] > 0
        finally:
            con.close()

    try:
        assert wait_until(committed, timeout=30)
        run_graph(ws, "c")  # run 3
        reader = LedgerReader(ws)
        try:
            run, when = reader.last_seen(a.key)
            stale = {row.record_key: row for row in reader.stale(3)}
        finally:
            reader.close()
        assert run == 2 and when is not None and before_two <= when <= two_started
        assert stale[a.key].last_run == 2
        # Seen by run 2, so not "last seen before run 2 started": forget keeps it.
        assert forget_stale(ws, [a.key], before=before_two) == 0
        assert forget_stale(ws, [a.key], before=time.time()) == 1
    finally:
        two.close()
        two.join()


def test_a_new_task_then_a_skip_by_an_overlapping_run_that_started_first_is_the_skip(tmp_path, capsys):
    # Run 2 opens, then run 3; run 3 runs the new task 'x' (its decision goes
    # with its record); then run 2 skips 'x' and, since run 3 wrote the
    # ledger, writes that skip: the skip came last, so it is the last decision.
    ws = str(tmp_path)
    run_graph(ws, "other")  # run 1
    two, three = taskgraph.TaskGraph(ws, -1), taskgraph.TaskGraph(ws, -1)
    x = add(three, ws, "x")
    assert x.state == "ran"
    three.close()
    three.join()
    time.sleep(0.02)
    assert add(two, ws, "x").state == "skipped"
    two.close()
    two.join()
    last = decision(ws, x.key)
    assert (last.run_id, last.action, last.reasons) == (2, "skip", []), last
    assert "run 2): it was skipped" in explain(ws, "x", capsys)
