"""Lifecycle promises: Ctrl-C, nested processes, progress logs, the digest cache."""

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import engine_funcs as f
import psutil
import pytest

import taskgraph

INTERRUPT_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, time
    sys.path.insert(0, {tests!r})
    import psutil, engine_funcs, taskgraph
    if __name__ == "__main__":
        # A shell running this as a background job ignores SIGINT; a user's
        # script at a terminal has Python's handler: give it that back.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        ws = sys.argv[1]
        graph = taskgraph.TaskGraph(ws, 2)
        for i in range(5):
            target = os.path.join(ws, f"quick{{i}}.txt")
            graph.add_task(engine_funcs.write, args=(target, i), target_path_list=[target], task_name=f"quick{{i}}")
        graph.add_task(engine_funcs.sleep, args=(60,), task_name="long")
        graph.add_task(engine_funcs.sleep, args=(60,), task_name="long2")
        # fork: the fork server and 2 workers; spawn: 2 workers and the resource tracker
        while len(psutil.Process().children(recursive=True)) < 3:
            time.sleep(0.01)
        with open(os.path.join(ws, "pids.json"), "w") as stream:
            json.dump([p.pid for p in psutil.Process().children(recursive=True)], stream)
        graph.close()
        graph.join()
""")


INLINE_INTERRUPT_SCRIPT = textwrap.dedent("""
    import os, signal, sqlite3, sys
    sys.path.insert(0, {tests!r})
    import reliability_funcs, taskgraph
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ws = sys.argv[1]
    graph = taskgraph.TaskGraph(ws, -1)
    for i in range(5):
        target = os.path.join(ws, f"quick{{i}}.txt")
        graph.add_task(reliability_funcs.write_bytes, args=(target, i), target_path_list=[target],
                       task_name=f"quick{{i}}")
    try:
        graph.add_task(reliability_funcs.interrupt_self, task_name="interrupted")
    except KeyboardInterrupt:
        print("KeyboardInterrupt from add_task")
    con = sqlite3.connect(os.path.join(ws, taskgraph.LEDGER_FILENAME))
    print(sorted(row[0] for row in con.execute("SELECT name FROM tasks WHERE state='done'")))
""")


def test_ctrl_c_inside_an_inline_task_raises_keyboard_interrupt_and_keeps_what_finished(tmp_path):
    script = tmp_path / "inline_interrupt.py"
    script.write_text(INLINE_INTERRUPT_SCRIPT.format(tests=os.path.dirname(__file__)))
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(ws)], capture_output=True, text=True, timeout=60)
    lines = proc.stdout.splitlines()
    assert lines[0] == "KeyboardInterrupt from add_task", (proc.stdout, proc.stderr)
    assert lines[1] == str([f"quick{i}" for i in range(5)])
    assert "scheduler failed" not in proc.stderr


def test_ctrl_c_stops_workers_keeps_ledger_and_raises(tmp_path):
    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPT_SCRIPT.format(tests=os.path.dirname(__file__)))
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(ws)], stderr=subprocess.PIPE, text=True)
    pids_file = ws / "pids.json"
    deadline = time.monotonic() + 60
    while not (pids_file.exists() and len(list(ws.glob("quick*.txt"))) == 5) and time.monotonic() < deadline:
        time.sleep(0.02)
    # Interrupt once the quick tasks' records are committed (the long ones run then).
    def committed():
        try:
            con = sqlite3.connect(f"file:{ws / taskgraph.LEDGER_FILENAME}?mode=ro", uri=True, timeout=1)
            try:
                return con.execute("SELECT count(*) FROM tasks WHERE state='done' AND name LIKE 'quick%'"
                                   ).fetchone()[0] == 5
            finally:
                con.close()
        except sqlite3.Error:
            return False
    while not committed() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err
    survivors = []
    for pid in json.loads(pids_file.read_text()):
        try:
            survivors.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    # Every child (the workers, and multiprocessing's resource tracker, which
    # follows its parent) is gone within a few seconds.
    _, alive = psutil.wait_procs(survivors, timeout=10)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    con = sqlite3.connect(str(ws / taskgraph.LEDGER_FILENAME))
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    done = {row[0] for row in con.execute("SELECT name FROM tasks WHERE state='done'")}
    con.close()
    assert {f"quick{i}" for i in range(5)} <= done


def test_tasks_may_start_their_own_processes(tmp_path):
    with taskgraph.TaskGraph(str(tmp_path), 1) as graph:
        task = graph.add_task(f.use_own_pool, args=(5,), store_result=True)
    assert task.get() == sum(i * i for i in range(5))


def test_reporting_interval_logs_progress(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="taskgraph"):
        with taskgraph.TaskGraph(str(tmp_path), 0, reporting_interval=0.05) as graph:
            graph.add_task(f.sleep, args=(0.3,), task_name="sleeper")
    assert "taskgraph execution status" in caplog.text
    assert "sleeper: executing for" in caplog.text


def test_unchanged_content_hashed_input_is_not_read_again(tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(1 << 20))
    old = time.time_ns() - 10_000_000_000  # clearly older than any racy window
    os.utime(source, ns=(old, old))
    out = str(tmp_path / "out.txt")

    def run():
        with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
            return graph.add_task(f.copy_bytes, args=(out, str(source)), target_path_list=[out],
                                  hash_algorithm="xxh3_128")

    def hashed_at():
        con = sqlite3.connect(str(tmp_path / taskgraph.LEDGER_FILENAME))
        row = con.execute("SELECT hashed_at_ns FROM digests WHERE path=?", (str(source),)).fetchone()
        con.close()
        return row[0]

    assert run().state == "ran"
    first = hashed_at()
    assert run().state == "skipped"
    assert run().state == "skipped"
    assert hashed_at() == first  # never hashed again: the cache answered
    with open(source, "r+b") as stream:  # same size, new bytes
        stream.write(b"\0" * 16)
    task = run()
    assert task.state == "ran" and [r.code for r in task.reasons] == ["input_changed"]


def test_a_dependencys_racy_target_is_not_read_again_as_its_dependents_input(tmp_path):
    """The digest taken as a racily clean target was recorded serves the
    dependent's record of the same file as an input; the next check, which
    trusts no racy digest, still reads it and finds it unchanged."""
    shared, out = str(tmp_path / "shared.bin"), str(tmp_path / "out.txt")
    workspace = str(tmp_path / "ws")

    def run():
        with taskgraph.TaskGraph(workspace, -1) as graph:
            first = graph.add_task(f.write_racy, args=(shared, 4 << 20), target_path_list=[shared])
            read_before = psutil.Process().io_counters().read_chars
            # write() names the file in its arguments (an input) but does not read it.
            second = graph.add_task(f.write, args=(out, shared), target_path_list=[out], dependent_task_list=[first])
            return first, second, psutil.Process().io_counters().read_chars - read_before

    first, second, read = run()
    assert (first.state, second.state) == ("ran", "ran")
    assert read < 1 << 20  # the 4 MiB input was not hashed again
    con = sqlite3.connect(os.path.join(workspace, taskgraph.LEDGER_FILENAME))
    digests = {role: digest for role, digest in con.execute("SELECT role, digest FROM files WHERE path=?", (shared,))}
    con.close()
    assert digests["input"] is not None and digests["input"] == digests["target"]
    first, second, read = run()
    assert (first.state, second.state) == ("skipped", "skipped")
    assert read >= 4 << 20  # still racy: checked by reading it


def test_a_racy_digest_is_reused_for_a_record_only_within_the_racy_window(tmp_path):
    from taskgraph._fingerprint import CHECK_ALGORITHM, CachedDigest, MemoryDigestCache, file_stat, take

    path = str(tmp_path / "racy.bin")
    f.write_racy(path, 64)
    real = take(path, "sizetimestamp").digest  # a future mtime: racy, so hashed

    def recorded(hashed_ago_ns, trust_racy=True):
        cache = MemoryDigestCache()
        entry = CachedDigest(file_stat(path), "0" * 32, time.time_ns() - hashed_ago_ns)
        cache.store_digest(path, CHECK_ALGORITHM, entry)
        return take(path, "sizetimestamp", cache, trust_racy=trust_racy).digest

    assert recorded(0) == "0" * 32  # just hashed, same stat: taken as it is
    assert recorded(0, trust_racy=False) == real  # a check never takes a racy digest
    assert recorded(10_000_000_000) == real  # hashed long before (the window is 2 s): read again


@pytest.mark.timeout(30)
def test_a_large_file_from_the_future_is_hashed_not_waited_for(tmp_path):
    # A large racy file is fingerprinted once its timestamp tick has passed, but an mtime an hour
    # ahead (another machine's clock, an unpacked archive) is not waited for.
    from taskgraph._fingerprint import take

    path = tmp_path / "big.bin"
    with open(path, "wb") as stream:
        stream.truncate(64 << 20)
    ahead = time.time_ns() + 3600 * 1_000_000_000
    os.utime(path, ns=(ahead, ahead))
    fingerprint = take(str(path), "sizetimestamp")
    assert fingerprint is not None and fingerprint.digest is not None and fingerprint.size == 64 << 20


@pytest.mark.parametrize("func,phrase", [
    (f.unpicklable_result, "cannot be pickled"),
    (f.raise_unpicklable, "cannot travel"),
])
def test_what_cannot_come_back_from_a_worker_is_a_clear_error(tmp_path, func, phrase):
    graph = taskgraph.TaskGraph(str(tmp_path), 1)
    task = graph.add_task(func, store_result=True, task_name="sender")
    graph.close()
    with pytest.raises(taskgraph.TaskExecutionError, match=phrase) as info:
        graph.join(timeout=60)
    assert "sender" in str(info.value)
    assert task.state == "failed"


def test_join_timeout_returns_false_then_completes(tmp_path):
    graph = taskgraph.TaskGraph(str(tmp_path), 0)
    task = graph.add_task(f.sleep, args=(0.5,))
    assert task.join(timeout=0.01) is False
    with pytest.raises(taskgraph.TaskTimeoutError):
        graph.add_task(f.square, args=(3,), store_result=True, dependent_task_list=[task]).get(timeout=0.01)
    graph.close()
    assert graph.join(timeout=30) is True


@pytest.mark.timeout(60)
def test_joins_from_many_threads_all_wake_as_their_tasks_finish(tmp_path):
    # Task.join() waits on one condition for the graph, notified only when
    # someone waits: every waiter, on whichever thread, wakes when its task
    # finishes (and a timed-out one leaves no waiter counted behind).
    import threading

    import history_funcs

    graph = taskgraph.TaskGraph(str(tmp_path), 0)
    gate = tmp_path / "gate"
    tasks = [graph.add_task(history_funcs.wait_for, args=(str(gate), 30 + i), task_name=f"w{i}")
             for i in range(4)]
    assert all(task.join(timeout=0.01) is False for task in tasks)
    assert graph._finished_condition._waiting == 0
    woken = []
    threads = [threading.Thread(target=lambda task=task: woken.append(task.join(timeout=30))) for task in tasks]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    gate.write_text("")
    for thread in threads:
        thread.join(timeout=40)
    assert woken == [True] * 4
    graph.close()
    assert graph.join(timeout=30) is True
    assert graph._finished_condition._waiting == 0


@pytest.mark.timeout(60)
def test_a_task_added_while_another_thread_runs_an_inline_task_is_not_lost_when_the_graph_stops(tmp_path):
    # Inline, add_task from a second thread waits while the first runs its
    # task. If the graph is stopped meanwhile, the waiting task still ends
    # (cancelled), and nothing waits for it forever.
    import threading

    import history_funcs

    graph = taskgraph.TaskGraph(str(tmp_path), -1)
    gate = tmp_path / "gate"
    outcome = {}

    def add(name, *args):
        try:
            outcome[name] = graph.add_task(*args, task_name=name)
        except Exception as error:
            outcome[name] = error

    running = threading.Thread(target=add, args=("long", history_funcs.wait_for, (str(gate), 30)))
    running.start()
    deadline = time.monotonic() + 10
    while not graph.report() and time.monotonic() < deadline:  # (until the long task runs)
        time.sleep(0.01)
    waiting = threading.Thread(target=add, args=("waiting", None))
    waiting.start()
    time.sleep(0.3)
    stopping = threading.Thread(target=graph.terminate)
    stopping.start()
    time.sleep(0.3)
    gate.write_text("")
    for thread in (running, waiting, stopping):
        thread.join(timeout=30)
    task = outcome["waiting"]
    assert isinstance(task, taskgraph.TaskCancelledError) or task.state == "cancelled", task
    with pytest.raises(taskgraph.TaskGraphTerminatedError):
        graph.join(timeout=10)


@pytest.mark.parametrize("n_workers", [-1, 0])
def test_a_stored_result_that_cannot_be_pickled_fails_its_task_in_process(tmp_path, n_workers):
    # In this process the value never crosses a pickle until the ledger stores
    # it: the task must fail with a clear error, and the graph must not hang.
    graph = taskgraph.TaskGraph(str(tmp_path), n_workers)
    try:
        task = graph.add_task(f.unpicklable_result, store_result=True, task_name="sender")
    except taskgraph.TaskExecutionError as error:  # n_workers=-1 runs it inside add_task
        assert n_workers < 0 and "sender" in str(error)
    graph.close()
    with pytest.raises(taskgraph.TaskExecutionError, match="cannot be pickled") as info:
        graph.join(timeout=60)
    assert "sender" in str(info.value) and "store_result" in str(info.value)
    if n_workers == 0:
        assert task.state == "failed"
    # The ledger is usable and the next run, with a storable result, completes.
    with taskgraph.TaskGraph(str(tmp_path), n_workers) as again:
        fine = again.add_task(f.square, args=(4,), store_result=True)
    assert fine.get() == 16
