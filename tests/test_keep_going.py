"""keep_going=True: a failed task stops only the tasks that depend on it.

Every other task runs; join() raises one TasksFailedError naming every failed
task, chained to the first failure; the dependents are cancelled with the
failure as their cause; the ledger (and so `taskgraph status`) keeps every
failure; a rerun skips what finished.
"""

import os
import subprocess
import sys

import engine_funcs
import pytest
from procs import child_pids, no_new_children

import taskgraph
from taskgraph._errors import TasksFailedError


def build(graph, ws):
    """Two independent chains with a failing task each, and three plain tasks.

    ``bad1`` -> ``after1`` -> ``after1b``; ``bad2`` -> ``after2``; a join point
    ``both`` on ``ok0`` and ``after2``.
    """
    tasks = {}
    for i in range(3):
        path = os.path.join(ws, f"ok{i}.txt")
        tasks[f"ok{i}"] = graph.add_task(engine_funcs.write, args=(path, i), target_path_list=[path],
                                         task_name=f"ok{i}")
    tasks["bad1"] = graph.add_task(engine_funcs.fail, task_name="bad1")
    after1 = os.path.join(ws, "after1.txt")
    tasks["after1"] = graph.add_task(engine_funcs.write, args=(after1, "x"), target_path_list=[after1],
                                     dependent_task_list=[tasks["bad1"]], task_name="after1")
    tasks["after1b"] = graph.add_task(engine_funcs.write, args=(os.path.join(ws, "after1b.txt"), "x"),
                                      dependent_task_list=[tasks["after1"]], task_name="after1b")
    tasks["bad2"] = graph.add_task(engine_funcs.square, args=("x",), task_name="bad2",  # TypeError
                                   dependent_task_list=[tasks["ok1"]])
    tasks["after2"] = graph.add_task(engine_funcs.write, args=(os.path.join(ws, "after2.txt"), "y"),
                                     dependent_task_list=[tasks["bad2"]], task_name="after2")
    tasks["both"] = graph.add_task(dependent_task_list=[tasks["ok0"], tasks["after2"]], task_name="both")
    return tasks


@pytest.mark.parametrize("n_workers", [-1, 0, 2])
def test_independent_tasks_finish_and_join_names_every_failure(tmp_path, n_workers):
    before = child_pids()
    ws = str(tmp_path)
    graph = taskgraph.TaskGraph(ws, n_workers, keep_going=True, progress=False)
    tasks = build(graph, ws)
    graph.close()
    with pytest.raises(TasksFailedError) as raised:
        graph.join(timeout=60)
    error = raised.value
    assert isinstance(error, taskgraph.TaskGraphError) and isinstance(error, RuntimeError)
    assert sorted(name for name, _ in error.failures) == ["bad1", "bad2"]
    assert "'bad1' (ZeroDivisionError" in str(error) and "'bad2' (TypeError" in str(error)
    assert error.__cause__ is error.failures[0][1]
    assert [type(failure) for _, failure in sorted(error.failures)] == [ZeroDivisionError, TypeError]

    assert {name: task.state for name, task in tasks.items()} == {
        "ok0": "ran", "ok1": "ran", "ok2": "ran", "bad1": "failed", "bad2": "failed",
        "after1": "cancelled", "after1b": "cancelled", "after2": "cancelled", "both": "cancelled",
    }
    for i in range(3):
        assert (tmp_path / f"ok{i}.txt").read_text() == str(i)
    assert not (tmp_path / "after1.txt").exists()

    # Each dependent is cancelled with the failure upstream of it as its cause.
    for name, root in (("after1", "bad1"), ("after1b", "bad1"), ("after2", "bad2"), ("both", "bad2")):
        with pytest.raises(taskgraph.TaskCancelledError) as cancelled:
            tasks[name].join()
        assert f"task {root!r}, which it depends on, failed" in str(cancelled.value)
        assert cancelled.value.__cause__ is tasks[root]._error
    with pytest.raises(ZeroDivisionError):
        tasks["bad1"].join()
    assert no_new_children(before)


def test_tasks_can_be_added_after_a_failure(tmp_path):
    ws = str(tmp_path)
    graph = taskgraph.TaskGraph(ws, 0, keep_going=True, progress=False)
    bad = graph.add_task(engine_funcs.fail, task_name="bad")
    with pytest.raises(ZeroDivisionError):
        bad.join(timeout=30)
    late = graph.add_task(engine_funcs.write, args=(os.path.join(ws, "late.txt"), "z"),
                          target_path_list=[os.path.join(ws, "late.txt")], task_name="late")
    on_bad = graph.add_task(engine_funcs.write, args=(os.path.join(ws, "no.txt"), "z"),
                            dependent_task_list=[bad], task_name="on bad")
    graph.close()
    with pytest.raises(TasksFailedError, match="1 task failed: 'bad'"):
        graph.join(timeout=30)
    assert late.state == "ran" and on_bad.state == "cancelled"


def test_terminate_still_stops_a_keep_going_graph(tmp_path):
    graph = taskgraph.TaskGraph(str(tmp_path), 0, keep_going=True, progress=False)
    graph.add_task(engine_funcs.fail, task_name="bad")
    slow = graph.add_task(engine_funcs.sleep, args=(30,), task_name="slow")
    graph.terminate()
    with pytest.raises(taskgraph.TaskGraphTerminatedError):
        graph.join(timeout=30)
    assert slow.state in ("cancelled", "running")


SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import test_keep_going, taskgraph
from taskgraph._errors import TasksFailedError
if __name__ == "__main__":
    graph = taskgraph.TaskGraph(sys.argv[1], 2, keep_going=True, progress=False)
    test_keep_going.build(graph, sys.argv[1])
    graph.close()
    try:
        graph.join()
    except TasksFailedError as error:
        print("failed:", ",".join(sorted(name for name, _ in error.failures)))
"""


def test_status_shows_every_failure_and_a_rerun_skips_what_finished(tmp_path):
    script = tmp_path / "pipeline.py"
    script.write_text(SCRIPT.format(tests=os.path.dirname(__file__)))
    ws = tmp_path / "ws"
    run = subprocess.run([sys.executable, str(script), str(ws)], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "failed: bad1,bad2", run.stdout + run.stderr

    status = subprocess.run([sys.executable, "-m", "taskgraph", "status", str(ws), "--failed"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    failed_rows = [line.split()[0] for line in status.stdout.splitlines() if " failed " in line]
    assert sorted(failed_rows) == ["bad1", "bad2"], status.stdout
    assert "ZeroDivisionError" in status.stdout and "TypeError" in status.stdout

    with open(ws / "executions.log") as log:
        first = log.read().split()
    assert sorted(first) == ["ok0.txt", "ok1.txt", "ok2.txt"]
    rerun = subprocess.run([sys.executable, str(script), str(ws)], capture_output=True, text=True, timeout=120)
    assert rerun.stdout.strip() == "failed: bad1,bad2"
    with open(ws / "executions.log") as log:
        assert log.read().split() == first  # the tasks that finished were skipped
