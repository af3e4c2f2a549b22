"""Scheduling that knows resources: policies, memory admission, pinned workers,
the run report and its ledger columns, with real processes and a real ledger."""

import os
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest
import resource_funcs as rf
from ledgers import downgrade
from procs import child_pids, no_new_children

import taskgraph
from taskgraph._ledger_read import LedgerReader

MiB = 2**20


@pytest.fixture
def gate():
    rf.GATE.clear()
    rf.ORDER.clear()
    yield rf.GATE
    rf.GATE.set()


# -- policies ---------------------------------------------------------------------------


def test_longest_first_starts_the_longest_expected_time_first(tmp_path, gate):
    with taskgraph.TaskGraph(str(tmp_path), 0, scheduler="longest_first") as graph:
        # The one thread is busy until the gate opens, so every later task is
        # ready at once and the policy alone decides the order. (The gate
        # ranks first too, in case the scheduler sees several adds at once.)
        graph.add_task(rf.wait_for_gate, task_name="gate", transient_run=True, expected_time=1e6)
        for name, expected, priority in [("short", 1, 0), ("unknown", None, 5), ("long", 30, 0),
                                         ("medium", 10, 0), ("medium-urgent", 10, 1)]:
            graph.add_task(rf.note, args=(name,), task_name=name, expected_time=expected,
                           priority=priority, transient_run=True)
        gate.set()
    assert rf.ORDER == ["long", "medium-urgent", "medium", "short", "unknown"]


def test_default_order_is_priority_then_order_added(tmp_path, gate):
    with taskgraph.TaskGraph(str(tmp_path), 0) as graph:
        graph.add_task(rf.wait_for_gate, task_name="gate", transient_run=True, priority=10)
        for name, expected, priority in [("a", 30, 0), ("b", 1, 2), ("c", None, 0)]:
            graph.add_task(rf.note, args=(name,), task_name=name, expected_time=expected,
                           priority=priority, transient_run=True)
        gate.set()
    assert rf.ORDER == ["b", "a", "c"]


def test_custom_policy_orders_and_admits(tmp_path, gate):
    class Alphabetical(taskgraph.Policy):
        def key(self, task):
            return task.task_name

        def admit(self, task, running):
            return not task.task_name.startswith("z")

    with taskgraph.TaskGraph(str(tmp_path), 0, scheduler=Alphabetical()) as graph:
        graph.add_task(rf.wait_for_gate, task_name="0-gate", transient_run=True)
        for name in ["zeta", "beta", "alpha"]:
            graph.add_task(rf.note, args=(name,), task_name=name, transient_run=True)
        gate.set()
    # 'zeta' is never admitted beside another task, so it runs when nothing else does.
    assert rf.ORDER == ["alpha", "beta", "zeta"]


def test_memory_estimates_never_overlap_beyond_the_limit(tmp_path):
    before = child_pids()
    marks = tmp_path / "marks"
    marks.mkdir()
    estimates = {"a": 40, "b": 40, "c": 40, "d": 40, "big": 150, "e": 40, "free": None}
    with taskgraph.TaskGraph(str(tmp_path / "ws"), 3, memory_limit=100) as graph:
        for name, memory in estimates.items():
            graph.add_task(rf.interval, args=(str(marks), name, 0.2), task_name=name,
                           memory=memory, transient_run=True)
    spans = {}
    for name in estimates:
        start, end = map(int, (marks / name).read_text().split())
        spans[name] = (start, end)
    for name, (start, _end) in spans.items():
        # Every task whose span overlaps this one's start is running beside it.
        beside = [other for other, (s, e) in spans.items() if s <= start < e]
        used = sum(estimates[other] or 0 for other in beside)
        if name == "big":
            assert beside == ["big"], f"the 150 MiB task must run alone, ran beside {beside}"
        else:
            assert used <= 100, f"at the start of {name}: {beside} use {used} MiB > 100"
    assert no_new_children(before)


def test_memory_admission_uses_available_memory_when_no_limit_is_given(tmp_path):
    huge = psutil.virtual_memory().total / MiB * 4
    marks = tmp_path / "marks"
    marks.mkdir()
    with taskgraph.TaskGraph(str(tmp_path / "ws"), 0) as graph:
        for name in ["x", "y"]:
            graph.add_task(rf.interval, args=(str(marks), name, 0.05), task_name=name,
                           memory=huge, transient_run=True)
    assert {path.name for path in marks.iterdir()} == {"x", "y"}  # each ran, alone


def test_hints_do_not_change_identity(tmp_path):
    def build(expected, memory):
        with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
            return graph.add_task(rf.busy, args=(0.0,), task_name="t", expected_time=expected,
                                  memory=memory)

    assert build(1, 10).state == "ran"
    assert build(50, 999).state == "skipped"
    assert build(None, None).state == "skipped"


@pytest.mark.parametrize("kwargs,needle", [
    ({"memory": -1}, "memory must be a number of MiB >= 0"),
    ({"memory": "2G"}, "memory must be a number of MiB"),
    ({"expected_time": float("inf")}, "expected_time must be a number of seconds"),
    ({"expected_time": True}, "expected_time must be"),
])
def test_bad_hints_are_rejected_at_add_task(tmp_path, kwargs, needle):
    with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
        with pytest.raises(taskgraph.InvalidTaskError, match=needle) as info:
            graph.add_task(rf.busy, args=(0.0,), task_name="hinted", **kwargs)
        assert "'hinted'" in str(info.value)
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("kwargs,needle", [
    ({"scheduler": "fastest"}, "scheduler must be one of"),
    ({"memory_limit": 0}, "memory_limit must be a positive number"),
    ({"bind_cpus": True}, "needs n_workers > 0"),
])
def test_bad_scheduling_options_are_rejected_at_construction(tmp_path, kwargs, needle):
    with pytest.raises(taskgraph.InvalidTaskError, match=needle):
        taskgraph.TaskGraph(str(tmp_path), 0, **kwargs)


# -- pinned workers ---------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(psutil.Process, "cpu_affinity"), reason="no cpu_affinity here")
def test_bind_cpus_pins_each_worker_to_its_own_core(tmp_path):
    before = child_pids()
    usable = sorted(psutil.Process().cpu_affinity())
    n_workers = min(2, len(usable))
    with taskgraph.TaskGraph(str(tmp_path), n_workers, bind_cpus=True) as graph:
        tasks = [graph.add_task(rf.affinity, args=(i,), task_name=f"where-{i}", store_result=True,
                                transient_run=True) for i in range(4)]
    by_pid = {}
    for task in tasks:
        pid, cpus = task.get()
        assert len(cpus) == 1 and cpus[0] in usable
        by_pid[pid] = cpus[0]
    assert len(set(by_pid.values())) == len(by_pid), f"two workers share a core: {by_pid}"
    assert sorted(psutil.Process().cpu_affinity()) == usable  # the caller is not pinned
    assert no_new_children(before)


@pytest.mark.skipif(not hasattr(psutil.Process, "cpu_affinity"), reason="no cpu_affinity here")
def test_bind_cpus_refuses_more_workers_than_cores(tmp_path):
    usable = psutil.Process().cpu_affinity()
    with pytest.raises(taskgraph.InvalidTaskError, match="exceeds the"):
        taskgraph.TaskGraph(str(tmp_path), len(usable) + 1, bind_cpus=True)


# -- the run report ---------------------------------------------------------------------


def test_report_has_cpu_time_and_peak_memory_from_the_worker(tmp_path):
    before = child_pids()
    ws = str(tmp_path)
    with taskgraph.TaskGraph(ws, 1) as graph:
        graph.add_task(rf.burn_cpu, args=(0.2,), task_name="spin")
        graph.add_task(rf.allocate, args=(200,), task_name="hog")
        graph.add_task(rf.busy, args=(0.0,), task_name="quick")
    report = {entry.name: entry for entry in graph.report()}
    assert set(report) == {"spin", "hog", "quick"}
    spin, hog = report["spin"], report["hog"]
    # The kernel accounts a thread's CPU time to its tick (a few milliseconds).
    assert spin.state == "ran" and 0.18 <= spin.cpu_time <= spin.wall_time + 0.01
    assert spin.started is not None
    assert hog.peak_memory >= 200 * MiB
    assert "pid" in hog.worker
    assert "peak" in str(hog) and "MiB" in str(hog)

    # Recorded in the ledger and shown by `taskgraph status`.
    rows = {row.name: row for row in LedgerReader(ws).tasks()}
    assert rows["spin"].cpu_time == pytest.approx(spin.cpu_time)
    assert rows["hog"].peak_memory == hog.peak_memory
    shown = subprocess.run([sys.executable, "-m", "taskgraph", "status", ws],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "CPU" in text and "PEAK MEM" in text
    assert f"{hog.peak_memory / MiB:.0f}MiB" in text

    # A rerun skips everything: nothing in its report, the ledger keeps the figures.
    with taskgraph.TaskGraph(ws, 1) as again:
        again.add_task(rf.burn_cpu, args=(0.2,), task_name="spin")
    assert again.report() == []
    assert no_new_children(before)


def test_report_in_a_thread_and_while_running(tmp_path):
    gate_file = tmp_path / "go"
    graph = taskgraph.TaskGraph(str(tmp_path / "ws"), 0)
    graph.add_task(rf.busy, args=(0.1,), task_name="spin")
    graph.add_task(rf.wait_for_file, args=(str(gate_file),), task_name="waiting")
    deadline = time.monotonic() + 30
    while not [entry for entry in graph.report() if entry.name == "waiting" and entry.state == "running"]:
        assert time.monotonic() < deadline, "the waiting task never showed as running"
        time.sleep(0.01)
    interim = {entry.name: entry for entry in graph.report()}
    assert interim["spin"].state == "ran" and interim["spin"].cpu_time > 0
    assert interim["spin"].peak_memory is None  # shared process: not measured
    assert interim["waiting"].state == "running" and interim["waiting"].cpu_time is None
    gate_file.write_text("")
    graph.close()
    graph.join(timeout=30)
    assert [entry.state for entry in graph.report()] == ["ran", "ran"]


# -- the ledger -------------------------------------------------------------------------


@pytest.mark.skipif(sqlite3.sqlite_version_info < (3, 35), reason="DROP COLUMN needs SQLite 3.35")
def test_a_ledger_of_the_previous_schema_is_upgraded_keeping_its_records(tmp_path):
    ws = str(tmp_path)
    with taskgraph.TaskGraph(ws, -1) as graph:
        graph.add_task(rf.busy, args=(0.0,), task_name="old")
    # Make it exactly what schema 1 wrote: its tasks table, results without
    # an HMAC column, user_version 1.
    path = os.path.join(ws, taskgraph.LEDGER_FILENAME)
    downgrade(path, 1)

    con = sqlite3.connect(path)
    assert [row[1] for row in con.execute("PRAGMA table_info(tasks)")][-1] == "error"
    con.close()
    old_rows = LedgerReader(ws).tasks()  # readable before the upgrade
    assert [(row.name, row.cpu_time) for row in old_rows] == [("old", None)]

    with taskgraph.TaskGraph(ws, -1) as graph:
        task = graph.add_task(rf.busy, args=(0.0,), task_name="old")
        fresh = graph.add_task(rf.busy, args=(0.01,), task_name="new")
    assert task.state == "skipped"
    assert fresh.state == "ran"
    assert not [name for name in os.listdir(ws) if name.endswith(".bad")]
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == taskgraph._ledger.SCHEMA_VERSION
    rows = dict(con.execute("SELECT name, cpu_time FROM tasks"))
    con.close()
    assert rows["old"] is None and rows["new"] > 0


def test_terminate_kills_running_tasks_and_join_says_so(tmp_path):
    before = child_pids()
    graph = taskgraph.TaskGraph(str(tmp_path), 1)
    waiting = graph.add_task(rf.wait_for_file, args=(str(tmp_path / "never"), 60.0), task_name="waiting")
    queued = graph.add_task(rf.busy, args=(0.0,), task_name="queued")
    deadline = time.monotonic() + 30
    while waiting.state != "running":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    graph.terminate()
    with pytest.raises(taskgraph.TaskGraphTerminatedError, match="terminate"):
        graph.join(timeout=30)
    assert waiting.state == "cancelled" and queued.state == "cancelled"
    with pytest.raises(taskgraph.TaskGraphTerminatedError, match=r"the graph was stopped .*terminate") as info:
        graph.add_task(rf.busy, args=(1.0,))
    assert "failed" not in str(info.value).split("(")[0]
    assert no_new_children(before)
