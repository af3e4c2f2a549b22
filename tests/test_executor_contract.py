"""One contract, every executor: inline, a thread, worker processes and Dask."""

import os

import engine_funcs as f
import pytest

import taskgraph

BACKENDS = ["inline", "thread", "processes", "dask"]


@pytest.fixture(params=BACKENDS)
def make_graph(request):
    def make(ws):
        if request.param == "inline":
            return taskgraph.TaskGraph(ws, -1)
        if request.param == "thread":
            return taskgraph.TaskGraph(ws, 0)
        if request.param == "processes":
            return taskgraph.TaskGraph(ws, 2)
        return taskgraph.TaskGraph(ws, 2, executor=request.getfixturevalue("dask_client"))

    return make


def executions(ws):
    path = os.path.join(ws, "executions.log")
    return sorted(open(path).read().split()) if os.path.exists(path) else []


def diamond(ws, graph):
    p = {name: os.path.join(ws, f"{name}.txt") for name in "abcd"}
    a = graph.add_task(f.write, args=(p["a"], "a"), target_path_list=[p["a"]], task_name="a")
    b = graph.add_task(f.concat, args=(p["b"], p["a"]), target_path_list=[p["b"]], dependent_task_list=[a],
                       task_name="b")
    c = graph.add_task(f.concat, args=(p["c"], p["a"]), target_path_list=[p["c"]], dependent_task_list=[a],
                       task_name="c")
    d = graph.add_task(f.concat, args=(p["d"], p["b"], p["c"]), target_path_list=[p["d"]],
                       dependent_task_list=[b, c], task_name="d", store_result=True)
    return d


def test_diamond_runs_once_and_reruns_nothing(tmp_path, make_graph):
    ws = str(tmp_path)
    with make_graph(ws) as graph:
        d = diamond(ws, graph)
    assert d.get() == 2 and open(os.path.join(ws, "d.txt")).read() == "aa"
    assert executions(ws) == ["a.txt", "b.txt", "c.txt", "d.txt"]
    os.remove(os.path.join(ws, "executions.log"))
    with make_graph(ws) as graph:
        d = diamond(ws, graph)
    assert executions(ws) == [] and d.state == "skipped" and d.get() == 2


def test_failure_cancels_dependents_and_reaches_join(tmp_path, make_graph):
    graph = make_graph(str(tmp_path))
    try:
        bad = graph.add_task(f.fail, task_name="bad")
    except ZeroDivisionError:  # inline: the task runs inside add_task
        bad = None
    if bad is not None:
        after = graph.add_task(f.sleep, args=(0,), dependent_task_list=[bad], task_name="after")
        graph.close()
        with pytest.raises(ZeroDivisionError):
            graph.join(timeout=60)
        assert bad.state == "failed" and after.state == "cancelled"
    with pytest.raises(taskgraph.TaskGraphTerminatedError):
        graph.add_task(f.sleep, args=(1,))


def test_missing_target_is_reported(tmp_path, make_graph):
    graph = make_graph(str(tmp_path))
    try:
        graph.add_task(f.write, args=(str(tmp_path / "x.txt"), "x"), target_path_list=[str(tmp_path / "y.txt")],
                       task_name="liar")
        graph.close()
        graph.join(timeout=60)
    except taskgraph.MissingTargetError as error:
        assert "y.txt" in str(error) and "liar" in str(error)
    else:
        raise AssertionError("a missing target must fail the task")
