"""The core engine's promises, with real files, real processes and a real ledger."""

import logging
import os
import pathlib
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import engine_funcs as f
import psutil
import pytest
import sqlitedict
from procs import child_pids, no_new_children

import taskgraph

MODES = [-1, 0, 2]


def executions(workspace):
    path = os.path.join(workspace, "executions.log")
    if not os.path.exists(path):
        return []
    with open(path) as stream:
        return stream.read().split()


def reset(workspace):
    path = os.path.join(workspace, "executions.log")
    if os.path.exists(path):
        os.remove(path)


def build(workspace, n_workers, mode="sizetimestamp"):
    """a, b -> ab -> final; c independent. Returns the tasks."""
    ws = str(workspace)
    p = {name: os.path.join(ws, f"{name}.txt") for name in ("a", "b", "ab", "c", "final")}
    graph = taskgraph.TaskGraph(ws, n_workers)
    a = graph.add_task(f.write, args=(p["a"], "A"), target_path_list=[p["a"]], hash_algorithm=mode, task_name="a")
    b = graph.add_task(f.write, args=(p["b"], "B"), target_path_list=[p["b"]], hash_algorithm=mode, task_name="b")
    ab = graph.add_task(f.concat, args=(p["ab"], p["a"], p["b"]), target_path_list=[p["ab"]],
                        dependent_task_list=[a, b], hash_algorithm=mode, task_name="ab", store_result=True)
    c = graph.add_task(f.write, args=(p["c"], "C"), target_path_list=[p["c"]], hash_algorithm=mode, task_name="c")
    final = graph.add_task(f.concat, args=(p["final"], p["ab"]), target_path_list=[p["final"]],
                           dependent_task_list=[ab], hash_algorithm=mode, task_name="final")
    graph.close()
    graph.join(timeout=60)
    return {"a": a, "b": b, "ab": ab, "c": c, "final": final}, p


@pytest.mark.parametrize("n_workers", MODES)
def test_second_run_executes_nothing(tmp_path, n_workers):
    tasks, _ = build(tmp_path, n_workers)
    assert sorted(executions(tmp_path)) == ["a.txt", "ab.txt", "b.txt", "c.txt", "final.txt"]
    assert all(t.state == "ran" for t in tasks.values())
    reset(tmp_path)
    tasks, p = build(tmp_path, n_workers)
    assert executions(tmp_path) == []
    assert all(t.state == "skipped" for t in tasks.values())
    assert tasks["ab"].get(timeout=5) == 2  # recorded result of a skipped task
    assert open(p["final"]).read() == "AB"


@pytest.mark.parametrize("n_workers", MODES)
def test_touched_input_reruns_task_and_dependents_only(tmp_path, n_workers):
    _, p = build(tmp_path, n_workers)
    reset(tmp_path)
    st = os.stat(p["a"])
    os.utime(p["a"], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    tasks, _ = build(tmp_path, n_workers)
    # "a" itself: its target changed, so it reruns; then ab and final follow.
    assert sorted(executions(tmp_path)) == ["a.txt", "ab.txt", "final.txt"]
    assert tasks["b"].state == "skipped" and tasks["c"].state == "skipped"
    assert {r.code for r in tasks["a"].reasons} == {"target_changed"}


def test_content_mode_ignores_touch_but_sees_content(tmp_path):
    _, p = build(tmp_path, -1, mode="xxh3_128")
    reset(tmp_path)
    st = os.stat(p["ab"])
    os.utime(p["ab"], ns=(st.st_atime_ns, st.st_mtime_ns + 7_000_000_000))
    build(tmp_path, -1, mode="xxh3_128")
    assert executions(tmp_path) == []
    with open(p["ab"], "w") as stream:
        stream.write("XY")  # same size, new content
    os.utime(p["ab"], ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime
    tasks, _ = build(tmp_path, -1, mode="xxh3_128")
    assert sorted(executions(tmp_path)) == ["ab.txt"]
    assert tasks["ab"].reasons[0].code == "target_changed"


def test_same_size_rewrite_within_timestamp_tick_is_seen(tmp_path):
    # The racily-clean case: same size, same mtime, different content.
    target = str(tmp_path / "t.txt")
    for content in ("test text", "TEST TEXT", "test text"):
        with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
            graph.add_task(f.write, args=(target, content), target_path_list=[target])
    assert open(target).read() == "test text"


@pytest.mark.parametrize("algorithm", ["xxh3_128", "md5"])
def test_a_file_is_hashed_whole_whatever_its_size_hint(tmp_path, algorithm):
    # The size from a stat lets a small file be read in one call; a file that
    # grew or shrank since that stat is still hashed whole.
    from taskgraph._fingerprint import _BUFFER_SIZE, hash_file

    path = str(tmp_path / "f.bin")
    for size in (0, 1, 4096, _BUFFER_SIZE - 1, _BUFFER_SIZE, 3 * _BUFFER_SIZE + 5):
        with open(path, "wb") as stream:
            stream.write(os.urandom(size))
        whole = hash_file(path, algorithm)
        for hint in {size, max(0, size - 1), size + 1, 0, 7}:
            assert hash_file(path, algorithm, hint) == whole, (size, hint)
    assert hash_file(path, "md5") == __import__("hashlib").md5(open(path, "rb").read()).hexdigest()


def test_transient_run_always_runs(tmp_path):
    target = str(tmp_path / "t.txt")
    for _ in range(2):
        with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
            graph.add_task(f.write, args=(target, "x"), target_path_list=[target], transient_run=True)
    assert executions(tmp_path) == ["t.txt", "t.txt"]


def test_relative_absolute_and_pathlib_are_one_task(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    graph = taskgraph.TaskGraph(str(tmp_path), -1)
    first = graph.add_task(f.write, args=("./t.txt", "x"), target_path_list=["./t.txt"])
    second = graph.add_task(f.write, args=(str(tmp_path / "t.txt"), "x"), target_path_list=[tmp_path / "t.txt"])
    third = graph.add_task(f.write, args=(pathlib.Path("t.txt").absolute(), "x"), target_path_list=["t.txt"])
    assert first is second is third
    assert executions(tmp_path) == ["t.txt"]


def test_duplicates(tmp_path):
    graph = taskgraph.TaskGraph(str(tmp_path), 0)
    t1, t2 = str(tmp_path / "1.txt"), str(tmp_path / "2.txt")
    a = graph.add_task(f.concat, args=(t1,), kwargs={}, target_path_list=[t1])
    assert graph.add_task(f.concat, args=(t1,), target_path_list=[t1]) is a
    with pytest.raises(taskgraph.DuplicateTaskError) as info:
        graph.add_task(f.concat, args=(t1,), target_path_list=[t1, t2])
    assert isinstance(info.value, RuntimeError)
    graph.close()
    graph.join(timeout=30)


def test_add_task_errors_name_the_task(tmp_path):
    graph = taskgraph.TaskGraph(str(tmp_path), 2)
    with pytest.raises(taskgraph.InvalidTaskError, match="not tasks") as info:
        graph.add_task(f.write, args=("x", 1), dependent_task_list=["nope"], task_name="mytask")
    assert "mytask" in str(info.value) and isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="target_path_list"):
        graph.add_task(f.write, target_path_list=[1], task_name="mytask")
    with pytest.raises(ValueError, match="unknown hash_algorithm"):
        graph.add_task(f.write, hash_algorithm="nohash", task_name="mytask")
    with pytest.raises(taskgraph.InvalidTaskError, match="cannot be pickled") as info:
        graph.add_task(lambda: None, task_name="lambda task")
    assert "lambda task" in str(info.value) and "module level" in str(info.value)
    with pytest.raises(taskgraph.InvalidTaskError, match="argument 0"):
        graph.add_task(f.sleep, args=(lambda: 1,), task_name="bad arg")
    graph.close()
    with pytest.raises(taskgraph.TaskGraphClosedError):
        graph.add_task(f.sleep, args=(0,))
    graph.join(timeout=30)


def test_missing_target_is_an_error_naming_the_path(tmp_path):
    graph = taskgraph.TaskGraph(str(tmp_path), -1)
    missing = str(tmp_path / "never.txt")
    with pytest.raises(taskgraph.MissingTargetError, match=r"never\.txt"):
        graph.add_task(f.write, args=(str(tmp_path / "other.txt"), "x"), target_path_list=[missing])


@pytest.mark.parametrize("n_workers", [0, 2])
def test_failure_reaches_join_and_cancels_dependents(tmp_path, n_workers):
    before = child_pids()
    graph = taskgraph.TaskGraph(str(tmp_path), n_workers)
    bad = graph.add_task(f.fail, task_name="bad")
    after = graph.add_task(f.sleep, args=(0,), dependent_task_list=[bad], task_name="after")
    graph.close()
    with pytest.raises(ZeroDivisionError) as info:
        graph.join(timeout=60)
    if n_workers > 0:
        assert "fail" in str(info.value.__cause__)  # the worker's traceback
    with pytest.raises(taskgraph.TaskCancelledError):
        after.join(timeout=5)
    assert after.state == "cancelled"
    with pytest.raises(taskgraph.TaskGraphTerminatedError):
        graph.add_task(f.sleep, args=(0,))
    con = sqlite3.connect(os.path.join(tmp_path, taskgraph.LEDGER_FILENAME))
    assert con.execute("SELECT state FROM tasks WHERE name='bad'").fetchone() == ("failed",)
    con.close()
    assert no_new_children(before)


@pytest.mark.parametrize("func,signal_name", [
    (f.sigkill_self, "SIGKILL"), (f.segfault, "SIGSEGV"), (f.hard_exit, "exit code 3"),
])
def test_dead_worker_fails_its_task_without_hanging(tmp_path, func, signal_name):
    before = child_pids()
    graph = taskgraph.TaskGraph(str(tmp_path), 2)
    slow = graph.add_task(f.sleep, args=(30,), task_name="slow")
    graph.add_task(func, task_name="victim")
    graph.close()
    started = time.monotonic()
    with pytest.raises(taskgraph.WorkerDiedError) as info:
        graph.join(timeout=60)
    assert time.monotonic() - started < 20
    assert "victim" in str(info.value) and signal_name in str(info.value)
    assert slow.state == "cancelled"
    assert no_new_children(before)


def test_workers_are_niced_and_caller_is_not(tmp_path):
    before = psutil.Process().nice()
    with taskgraph.TaskGraph(str(tmp_path), 1) as graph:
        task = graph.add_task(f.niceness, store_result=True)
    assert task.get() == (10 if not psutil.WINDOWS else psutil.BELOW_NORMAL_PRIORITY_CLASS)
    assert psutil.Process().nice() == before


def test_worker_logs_reach_parent_handlers(tmp_path):
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("engine.test.worker")
    handler = Keep()
    logger.addHandler(handler)
    try:
        with taskgraph.TaskGraph(str(tmp_path), 1) as graph:
            graph.add_task(f.log_message, args=("engine.test.worker", "hello from a worker"))
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["hello from a worker"]
    assert records[0].processName != "MainProcess"


def test_priority_orders_ready_tasks(tmp_path):
    order = str(tmp_path / "order.txt")
    graph = taskgraph.TaskGraph(str(tmp_path), 0)
    gate = graph.add_task(f.sleep, args=(0.3,), task_name="gate")
    for label, priority in (("low", 1), ("high", 10), ("mid", 5)):
        graph.add_task(f.append_order, args=(order, label), dependent_task_list=[gate],
                       priority=priority, transient_run=True, task_name=label)
    graph.close()
    graph.join(timeout=30)
    assert open(order).read().split() == ["high", "mid", "low"]


def test_ledger_is_queryable_and_results_are_a_sqlitedict(tmp_path):
    tasks, _ = build(tmp_path, -1)
    path = os.path.join(tmp_path, taskgraph.LEDGER_FILENAME)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    names = {row[0] for row in con.execute("SELECT name FROM tasks WHERE state='done'")}
    assert names == {"a", "b", "ab", "c", "final"}
    targets = con.execute(
        "SELECT count(*) FROM files JOIN tasks USING (record_key) WHERE role='target'").fetchone()
    assert targets == (5,)
    con.close()
    with sqlitedict.SqliteDict(path, tablename="results", flag="r", journal_mode="WAL") as results:
        assert results[tasks["ab"].key] == 2


@pytest.mark.parametrize("content", [b"garbage" * 100, None])
def test_bad_ledger_is_moved_aside_not_deleted(tmp_path, content, caplog):
    path = os.path.join(tmp_path, taskgraph.LEDGER_FILENAME)
    if content is None:  # a foreign SQLite database (natcap-like)
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE taskgraph_data (task_reexecution_hash TEXT)")
        con.commit()
        con.close()
    else:
        with open(path, "wb") as stream:
            stream.write(content)
    original = open(path, "rb").read()
    with caplog.at_level(logging.WARNING, logger="taskgraph"):
        build(tmp_path, -1)
    aside = [name for name in os.listdir(tmp_path) if name.endswith(".bad")]
    assert len(aside) == 1
    assert open(os.path.join(tmp_path, aside[0]), "rb").read() == original
    assert "every task will run once" in caplog.text and aside[0] in caplog.text


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import engine_funcs, taskgraph
    if __name__ == "__main__":
        ws = sys.argv[1]
        graph = taskgraph.TaskGraph(ws, int(sys.argv[2]))
        prev, prev_task = None, None
        for i in range(60):
            target = os.path.join(ws, f"t{{i:03d}}.txt")
            inputs = (prev,) if prev else ()
            deps = [prev_task] if prev_task else []
            prev_task = graph.add_task(engine_funcs.concat, args=(target, *inputs),
                                       target_path_list=[target], dependent_task_list=deps,
                                       task_name=f"t{{i:03d}}")
            prev = target
        graph.close()
        graph.join()
""")


@pytest.mark.parametrize("n_workers", [-1, 2])
def test_killed_main_process_leaves_a_good_ledger(tmp_path, n_workers):
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT.format(tests=os.path.dirname(__file__)))
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(ws), str(n_workers)])
    deadline = time.monotonic() + 60
    while len(executions(ws)) < 10 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    ledger = ws / taskgraph.LEDGER_FILENAME
    con = sqlite3.connect(str(ledger))
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    done = {row[0] for row in con.execute("SELECT name FROM tasks WHERE state='done'")}
    con.close()
    assert done, "some tasks had finished and were recorded"
    reset(ws)
    subprocess.run([sys.executable, str(script), str(ws), str(n_workers)], check=True, timeout=120)
    rerun = {name[:-4] for name in executions(ws)}
    assert not (rerun & done), "a recorded task ran again"
    assert rerun | done == {f"t{i:03d}" for i in range(60)}


TWO_PROCESS_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import engine_funcs, taskgraph
    if __name__ == "__main__":
        ws, start = sys.argv[1], int(sys.argv[2])
        with taskgraph.TaskGraph(ws, -1) as graph:
            for i in range(start, start + 150):
                target = os.path.join(ws, f"s{{i:04d}}.txt")
                graph.add_task(engine_funcs.write, args=(target, i), target_path_list=[target])
""")


def test_processes_sharing_a_workspace(tmp_path):
    script = tmp_path / "share.py"
    script.write_text(TWO_PROCESS_SCRIPT.format(tests=os.path.dirname(__file__)))
    ws = tmp_path / "ws"
    ws.mkdir()
    procs = [subprocess.Popen([sys.executable, str(script), str(ws), str(start)],
                              stderr=subprocess.PIPE, text=True) for start in (0, 50, 100, 150)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "locked" not in err
    con = sqlite3.connect(str(ws / taskgraph.LEDGER_FILENAME))
    assert con.execute("SELECT count(*) FROM tasks WHERE state='done'").fetchone() == (300,)
    con.close()


def test_pickled_result_roundtrip_with_store_result(tmp_path):
    with taskgraph.TaskGraph(str(tmp_path), 2) as graph:
        task = graph.add_task(f.concat, args=(str(tmp_path / "o.txt"),), store_result=True,
                              target_path_list=[str(tmp_path / "o.txt")])
    assert task.get(timeout=5) == 0
    assert pickle.loads(pickle.dumps(task.get())) == 0
    with pytest.raises(ValueError, match="store_result"):
        graph2 = taskgraph.TaskGraph(str(tmp_path), -1)
        graph2.add_task(f.sleep, args=(0,)).get()


@pytest.mark.parametrize("n_workers", [-1, 2])
def test_changed_source_file_reruns_its_readers_only(tmp_path, n_workers):
    source = tmp_path / "source.txt"
    source.write_text("v1")
    old = time.time_ns() - 60_000_000_000
    os.utime(source, ns=(old, old))

    def run():
        ws = str(tmp_path)
        with taskgraph.TaskGraph(ws, n_workers) as graph:
            reader = graph.add_task(f.concat, args=(os.path.join(ws, "r.txt"), str(source)),
                                    target_path_list=[os.path.join(ws, "r.txt")], task_name="reader")
            graph.add_task(f.concat, args=(os.path.join(ws, "d.txt"), os.path.join(ws, "r.txt")),
                           target_path_list=[os.path.join(ws, "d.txt")], dependent_task_list=[reader],
                           task_name="downstream")
            graph.add_task(f.write, args=(os.path.join(ws, "other.txt"), "x"),
                           target_path_list=[os.path.join(ws, "other.txt")], task_name="other")
        return sorted(executions(tmp_path))

    assert run() == ["d.txt", "other.txt", "r.txt"]
    reset(tmp_path)
    os.utime(source, ns=(old, old + 1_000_000_000))  # touched: new mtime, same bytes
    assert run() == ["d.txt", "r.txt"]
    reset(tmp_path)
    assert run() == []
    con = sqlite3.connect(os.path.join(tmp_path, taskgraph.LEDGER_FILENAME))
    keys = dict(con.execute("SELECT name, exec_key FROM tasks"))
    con.close()
    assert len(set(keys.values())) == 3


def test_natcap_import_paths_and_logger_name(tmp_path, caplog):
    import taskgraph.Task
    from taskgraph.Task import TaskGraph

    assert TaskGraph is taskgraph.TaskGraph
    assert isinstance(taskgraph.Task, type)  # the class, not the module
    # natcap logs to "taskgraph.Task": settings there keep working.
    with caplog.at_level(logging.DEBUG, logger="taskgraph.Task"):
        with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
            graph.add_task(f.sleep, args=(0,), task_name="quiet")
    assert any(record.name == "taskgraph.Task" and "quiet" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("n_workers", MODES)
def test_same_call_with_disjoint_targets_chains_and_joins(tmp_path, n_workers):
    # Three calls equal but for their targets: natcap makes each depend on the
    # one before; a join after them must still run exactly once.
    ws = str(tmp_path)
    src = os.path.join(ws, "src.txt")
    with taskgraph.TaskGraph(ws, n_workers) as graph:
        first = graph.add_task(f.write, args=(src, "s"), target_path_list=[src])
        copies = [graph.add_task(f.concat, args=(os.path.join(ws, f"m{i}.txt"), src),
                                 target_path_list=[os.path.join(ws, f"m{i}.txt")], dependent_task_list=[first])
                  for i in range(3)]
        joined = os.path.join(ws, "join.txt")
        graph.add_task(f.concat, args=(joined, *(os.path.join(ws, f"m{i}.txt") for i in range(3))),
                       target_path_list=[joined], dependent_task_list=copies)
    assert copies[0] == copies[1] and copies[1] is not copies[0]
    assert copies[0] in copies[1]._dependencies and copies[1] in copies[2]._dependencies
    assert sorted(executions(ws)) == ["join.txt", "m0.txt", "m1.txt", "m2.txt", "src.txt"]
    assert open(joined).read() == "sss"


def wait_until_claimed(ws, timeout=30):
    """Until some process holds a claim in the workspace (the slow task started):
    probing the claims file's lock from here, as another process would."""
    import fcntl
    import struct

    path = ws / (taskgraph.LEDGER_FILENAME + ".claims")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            with open(path, "rb") as stream:
                # F_GETLK over the whole file: l_type stays F_UNLCK when nothing is locked.
                request = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
                answer = fcntl.fcntl(stream.fileno(), fcntl.F_GETLK, request)
                if struct.unpack("hhqqi", answer)[0] != fcntl.F_UNLCK:
                    return
        time.sleep(0.02)
    raise AssertionError("no process claimed a task in time")


SAME_TASK_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import engine_funcs, taskgraph
    if __name__ == "__main__":
        ws, n_workers = sys.argv[1], int(sys.argv[2])
        target = os.path.join(ws, "slow.txt")
        with taskgraph.TaskGraph(ws, n_workers) as graph:
            task = graph.add_task(engine_funcs.slow_write, args=(target, "x", 2.0), target_path_list=[target])
        print(task.state)
""")


@pytest.mark.parametrize("n_workers", [-1, 2])
def test_a_task_another_process_is_running_is_waited_for_then_skipped(tmp_path, n_workers):
    script = tmp_path / "same.py"
    script.write_text(SAME_TASK_SCRIPT.format(tests=os.path.dirname(__file__)))
    ws = tmp_path / "ws"
    ws.mkdir()
    first = subprocess.Popen([sys.executable, str(script), str(ws), str(n_workers)], stdout=subprocess.PIPE, text=True)
    wait_until_claimed(ws)
    second = subprocess.Popen([sys.executable, str(script), str(ws), str(n_workers)], stdout=subprocess.PIPE, text=True)
    out_first, _ = first.communicate(timeout=60)
    out_second, _ = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0
    assert out_first.strip() == "ran" and out_second.strip() == "skipped"
    assert executions(ws) == ["slow.txt"]


def test_a_claim_left_by_a_killed_process_is_taken_over(tmp_path):
    script = tmp_path / "same.py"
    script.write_text(SAME_TASK_SCRIPT.format(tests=os.path.dirname(__file__)))
    ws = tmp_path / "ws"
    ws.mkdir()
    first = subprocess.Popen([sys.executable, str(script), str(ws), "-1"], stdout=subprocess.PIPE, text=True)
    wait_until_claimed(ws)
    first.kill()
    first.wait(timeout=30)
    second = subprocess.run([sys.executable, str(script), str(ws), "-1"], capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and second.stdout.strip() == "ran"


def test_reasons_say_what_changed_in_the_call(tmp_path, monkeypatch):
    module = tmp_path / "step_module.py"
    module.write_text("def step(path, n):\n    open(path, 'w').write(str(n))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import step_module

    target = str(tmp_path / "out.txt")

    def run(n):
        with taskgraph.TaskGraph(str(tmp_path / "ws"), -1) as graph:
            return graph.add_task(step_module.step, args=(target, n), target_path_list=[target], task_name="step")

    assert [r.code for r in run(1).reasons] == ["new_task"]
    reason = run(2).reasons[0]
    assert reason.code == "arguments_changed" and reason.old.endswith("1") and reason.new.endswith("2")
    module.write_text("def step(path, n):\n    open(path, 'w').write(str(n * 10))\n")
    importlib.reload(step_module)
    assert [r.code for r in run(2).reasons] == ["function_changed"]
    assert run(2).state == "skipped"


def wait_until_running(task, timeout=30):
    deadline = time.monotonic() + timeout
    while task.state != "running":
        assert time.monotonic() < deadline, f"task {task.task_name!r} did not start"
        time.sleep(0.01)


def test_a_second_graph_in_the_same_process_keeps_the_first_graphs_claims(tmp_path):
    # POSIX locks belong to the process: a second graph on the workspace that
    # opened and closed its own descriptor of the claims file would drop the
    # first graph's claims, and another process would run the task again.
    script = tmp_path / "same.py"
    script.write_text(SAME_TASK_SCRIPT.format(tests=os.path.dirname(__file__)))
    ws = tmp_path / "ws"
    ws.mkdir()
    target = str(ws / "slow.txt")
    first = taskgraph.TaskGraph(str(ws), 1)
    try:
        slow = first.add_task(f.slow_write, args=(target, "x", 2.0), target_path_list=[target])
        wait_until_running(slow)  # claimed (F_GETLK cannot see this process's own locks)
        with taskgraph.TaskGraph(str(ws), -1) as second:
            second.add_task(f.square, args=(3,), task_name="unrelated")
        other = subprocess.run([sys.executable, str(script), str(ws), "-1"], capture_output=True, text=True,
                               timeout=60)
        assert other.returncode == 0, other.stderr
        assert other.stdout.strip() == "skipped"  # it waited for the first graph's run
    finally:
        first.close()
        first.join(timeout=60)
    assert executions(ws) == ["slow.txt"]


def test_two_graphs_of_one_process_do_not_run_one_task_at_once(tmp_path):
    target = str(tmp_path / "slow.txt")
    first = taskgraph.TaskGraph(str(tmp_path), 0)
    second = taskgraph.TaskGraph(str(tmp_path), 0)
    try:
        a = first.add_task(f.slow_write, args=(target, "x", 1.0), target_path_list=[target])
        wait_until_running(a)
        b = second.add_task(f.slow_write, args=(target, "x", 1.0), target_path_list=[target])
        assert b.join(timeout=60) and a.join(timeout=60)
        assert (a.state, b.state) == ("ran", "skipped")
    finally:
        for graph in (first, second):
            graph.close()
            graph.join(timeout=60)
    assert executions(tmp_path) == ["slow.txt"]


def test_a_tasks_reasons_pickle_with_every_protocol_and_stay_immutable(tmp_path):
    """What a script may keep of a run (a task's reasons, the fingerprints inside them) survives
    pickling with any protocol, and a reason cannot be changed by mistake."""
    import dataclasses

    from taskgraph._fingerprint import file_stat, take

    target = str(tmp_path / "out.txt")
    with taskgraph.TaskGraph(str(tmp_path / "ws"), -1) as graph:
        task = graph.add_task(f.write, args=(target, "x"), target_path_list=[target])
    values = [*task.reasons, take(target, "sizetimestamp"), file_stat(target)]
    for value in values:
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            copy = pickle.loads(pickle.dumps(value, protocol))
            assert copy == value and hash(copy) == hash(value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.reasons[0].code = "changed"
