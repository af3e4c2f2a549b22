"""The Dask executor on a real LocalCluster (worker processes on 127.0.0.1)."""

import logging
import os
import subprocess
import sys
import textwrap
import time

import engine_funcs as f
import pytest

import taskgraph

distributed = pytest.importorskip("distributed")


@pytest.fixture
def client(dask_client):
    return dask_client


def executions(ws):
    path = os.path.join(ws, "executions.log")
    return open(path).read().split() if os.path.exists(path) else []


def fan(ws, client):
    """One source, three readers in parallel, one join."""
    with taskgraph.TaskGraph(ws, 2, executor=client) as graph:
        src = os.path.join(ws, "src.txt")
        first = graph.add_task(f.write, args=(src, "s"), target_path_list=[src], task_name="source", priority=5)
        middles, paths = [], []
        for i in range(3):
            path = os.path.join(ws, f"m{i}.txt")
            paths.append(path)
            middles.append(graph.add_task(f.concat, args=(path, src), target_path_list=[path],
                                          dependent_task_list=[first], task_name=f"middle {i}"))
        joined = os.path.join(ws, "join.txt")
        last = graph.add_task(f.concat, args=(joined, *paths), target_path_list=[joined],
                              dependent_task_list=middles, task_name="join", store_result=True)
    return last


def test_fan_out_fan_in_then_a_rerun_that_runs_nothing(tmp_path, client):
    ws = str(tmp_path)
    last = fan(ws, client)
    assert last.get() == 3 and open(os.path.join(ws, "join.txt")).read() == "sss"
    assert sorted(executions(ws)) == ["join.txt", "m0.txt", "m1.txt", "m2.txt", "src.txt"]
    os.remove(os.path.join(ws, "executions.log"))
    last = fan(ws, client)
    assert executions(ws) == [] and last.state == "skipped" and last.get() == 3
    con = __import__("sqlite3").connect(os.path.join(ws, taskgraph.LEDGER_FILENAME))
    workers = {row[0] for row in con.execute("SELECT worker FROM tasks")}
    con.close()
    assert all(worker.startswith("Dask worker tcp://127.0.0.1") for worker in workers)


def test_a_failing_task_raises_with_the_worker_traceback(tmp_path, client):
    graph = taskgraph.TaskGraph(str(tmp_path), 2, executor=client)
    bad = graph.add_task(f.fail, task_name="bad")
    after = graph.add_task(f.sleep, args=(0,), dependent_task_list=[bad])
    graph.close()
    with pytest.raises(ZeroDivisionError) as info:
        graph.join(timeout=60)
    assert "def fail" in str(info.value.__cause__) or "1 / 0" in str(info.value.__cause__)
    assert after.state == "cancelled"


def test_a_killed_worker_is_an_error_naming_the_task(tmp_path, client):
    graph = taskgraph.TaskGraph(str(tmp_path), 2, executor=client)
    graph.add_task(f.sigkill_self, task_name="victim")
    graph.close()
    with pytest.raises(taskgraph.WorkerDiedError, match="victim"):
        graph.join(timeout=120)
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it for the next test


def test_inputs_the_workers_cannot_see(tmp_path, client):
    # The scheduling process sees the input; the task is told it is elsewhere:
    # a job whose input is missing where it runs is a clear error, not a crash.
    import pickle

    from taskgraph._dask import run_on_worker

    spec = (0, "lost", ("/nonexistent/on/this/worker.tif",), "sizetimestamp", (), "sizetimestamp", False, {})
    blob = client.submit(run_on_worker, pickle.dumps((f.sleep, (0,), {})), spec, pure=False).result(timeout=60)
    error = pickle.loads(blob).error
    assert isinstance(error, taskgraph.SharedFilesystemError)
    assert "lost" in str(error) and "shares" in str(error)


def test_without_distributed_the_error_says_what_to_install(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["distributed"] = None  # as if it were not installed
        import taskgraph
        try:
            taskgraph.TaskGraph({str(tmp_path)!r}, 2, scheduler_address="tcp://127.0.0.1:1")
        except taskgraph.MissingDependencyError as error:
            print(error)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60).stdout
    assert "pip install 'taskgraph[dask]'" in out


def test_worker_logs_reach_this_process(tmp_path, client, caplog):
    with caplog.at_level(logging.WARNING):
        with taskgraph.TaskGraph(str(tmp_path), 2, executor=client) as graph:
            graph.add_task(f.log_message, args=("engine.test.dask", "hello from a dask worker"))
        deadline = time.monotonic() + 10
        while "hello from a dask worker" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "hello from a dask worker" in caplog.text


def test_losing_the_cluster_is_an_error_not_a_hang(tmp_path):
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=":0", silence_logs=50)
    lost_client = distributed.Client(cluster)
    graph = taskgraph.TaskGraph(str(tmp_path), 1, executor=lost_client)
    task = graph.add_task(f.sleep, args=(30,), task_name="long")
    graph.close()
    # Lose the cluster once the task is on it (not before it was sent).
    deadline = time.monotonic() + 30
    while task._state != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert task._state == "running"
    cluster.close()
    try:
        with pytest.raises(taskgraph.WorkerDiedError, match="long"):
            graph.join(timeout=60)
    finally:
        lost_client.close()
