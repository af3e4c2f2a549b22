"""Fault injection with real processes, real signals and real files: the main
process killed at random moments, workers dying every way they can, disk full,
several processes on one workspace.

(The basic cases live in test_engine_core.py and test_engine_lifecycle.py;
these extend them.) The long kill loop is ``tests/stress/kill_loop.py``.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import disks
import engine_funcs as f
import psutil
import pytest
import reliability_funcs as r
from procs import child_pids, no_new_children

import taskgraph

STRESS = os.path.join(os.path.dirname(__file__), "stress")
sys.path.insert(0, STRESS)

import kill_loop  # noqa: E402

TESTS = os.path.dirname(__file__)


def integrity(ledger_path):
    con = sqlite3.connect(str(ledger_path))
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def wait_for_file(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.01)


# -- the main process killed --------------------------------------------------------------


def test_main_process_killed_at_random_moments_then_rerun_completes(tmp_path):
    """The quick version of tests/stress/kill_loop.py: a few SIGKILLs (and
    perhaps a SIGINT) at random moments of a 150-task run, each followed by
    the loop's checks (ledger intact, no record lost, no recorded task rerun,
    partial targets rebuilt, no worker left), then a run that completes."""
    before = child_pids()
    stats = kill_loop.run(kills=5, n_tasks=150, seed=20261123, root=str(tmp_path), kills_per_cycle=5)
    assert stats.kills + stats.interrupts == 5
    assert stats.cycles >= 1  # more when a signal came after a run had ended
    assert stats.records_lost == 0 and stats.recorded_tasks_rerun == 0 and stats.orphans == 0
    assert no_new_children(before)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_ctrl_c_in_a_busy_process_pool_run_stops_it_at_once(tmp_path, fraction):
    """SIGINT while the scheduler is dispatching a 300-task run to worker
    processes: the run ends with KeyboardInterrupt within seconds (no worker
    is started after the interrupt, so none is waited for), every worker is
    gone, and the ledger keeps what finished."""
    import random

    before = child_pids()
    stats = kill_loop.Stats()
    ws = tmp_path / "ws"
    ws.mkdir()
    expected = kill_loop.workload.expected(300)
    random.seed(fraction)
    # (_signal_mid_run checks that an interrupted run ends in KeyboardInterrupt)
    kill_loop._signal_mid_run(str(ws), 2, 300, 0.3 + fraction, signal.SIGINT, stats)
    kill_loop._check_after_signal(str(ws), set(), 0, expected, stats)
    assert no_new_children(before)


# -- workers dying --------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_worker_killed_from_outside_fails_its_task_at_once(tmp_path, signum):
    before = child_pids()
    pid_file = str(tmp_path / "worker.pid")
    graph = taskgraph.TaskGraph(str(tmp_path), 2)
    graph.add_task(r.sleep_then, args=(60,), task_name="bystander")
    graph.add_task(r.report_pid_and_sleep, args=(pid_file, 60), task_name="victim")
    graph.close()
    wait_for_file(pid_file)
    started = time.monotonic()
    os.kill(int(open(pid_file).read()), signum)
    with pytest.raises(taskgraph.WorkerDiedError, match="victim") as info:
        graph.join(timeout=60)
    assert time.monotonic() - started < 20
    assert signal.Signals(signum).name in str(info.value)
    assert no_new_children(before)


def test_worker_dying_leaves_no_grandchild(tmp_path):
    """A task that started a process of its own and then died: the pool kills
    the worker's whole tree, so nothing outlives the graph."""
    before = child_pids()
    pid_file = str(tmp_path / "grandchild.pid")
    graph = taskgraph.TaskGraph(str(tmp_path), 1)
    graph.add_task(r.start_grandchild_then_die, args=(pid_file,), task_name="parent_of_orphan")
    graph.close()
    with pytest.raises(taskgraph.WorkerDiedError, match="parent_of_orphan"):
        graph.join(timeout=60)
    grandchild = int(open(pid_file).read())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(grandchild) and time.monotonic() < deadline:
        try:
            if psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    alive = psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE
    if alive:
        psutil.Process(grandchild).kill()
    assert not alive, "the task's own child process outlived the graph"
    assert no_new_children(before)


@pytest.mark.parametrize("func,expected,phrase", [
    (r.abort, taskgraph.WorkerDiedError, "SIGABRT"),
    (r.segfault, taskgraph.WorkerDiedError, "SIGSEGV"),
    (r.exhaust_memory, MemoryError, ""),
])
def test_worker_faults_name_the_task_and_leave_nothing_running(tmp_path, func, expected, phrase):
    """Native crashes and a real MemoryError (address space capped in the
    worker): the error reaches join() within seconds and names the task,
    in its message or (for the task's own exception) in a note."""
    before = child_pids()
    graph = taskgraph.TaskGraph(str(tmp_path), 2)
    graph.add_task(r.sleep_then, args=(60,), task_name="bystander")
    graph.add_task(func, task_name="faulty")
    graph.close()
    started = time.monotonic()
    with pytest.raises(expected) as info:
        graph.join(timeout=60)
    assert time.monotonic() - started < 20
    text = str(info.value) + " ".join(getattr(info.value, "__notes__", []))
    assert phrase in text
    if sys.version_info >= (3, 11):  # exception notes
        assert "faulty" in text
    assert no_new_children(before)


@pytest.mark.parametrize("func,phrase", [
    (f.unpicklable_result, "cannot be pickled"),
    (f.raise_unpicklable, "cannot travel"),
])
def test_what_cannot_come_back_stops_the_graph_and_leaves_no_worker(tmp_path, func, phrase):
    before = child_pids()
    graph = taskgraph.TaskGraph(str(tmp_path), 2)
    graph.add_task(r.sleep_then, args=(60,), task_name="bystander")
    graph.add_task(func, store_result=True, task_name="sender")
    graph.close()
    started = time.monotonic()
    with pytest.raises(taskgraph.TaskExecutionError, match=phrase) as info:
        graph.join(timeout=60)
    assert time.monotonic() - started < 20
    assert "sender" in str(info.value)
    assert no_new_children(before)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are new in Python 3.11")
@pytest.mark.parametrize("n_workers", [-1, 0, 2])
def test_task_exception_carries_the_task_name(tmp_path, n_workers):
    graph = taskgraph.TaskGraph(str(tmp_path), n_workers)
    with pytest.raises(RecursionError) as info:
        graph.add_task(r.recursion_forever, task_name="deep")
        graph.close()
        graph.join(timeout=60)
    assert any("deep" in note for note in getattr(info.value, "__notes__", []))


# -- disk full ------------------------------------------------------------------------------

FULL_SCRIPT = textwrap.dedent("""
    import json, os, resource, signal, sys
    sys.path.insert(0, {tests!r})
    import reliability_funcs, taskgraph
    if __name__ == "__main__":
        ws, n_workers, limit, target_bytes, result_bytes = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
        if limit:
            # Files may not grow past `limit` bytes: writes fail with EFBIG,
            # as on a full disk (SIGXFSZ would kill the process instead).
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        states = {{}}
        error = None
        graph = taskgraph.TaskGraph(ws, n_workers)
        tasks = {{}}
        try:
            for i in range(4):
                target = os.path.join(ws, f"small{{i}}.bin")
                tasks[f"small{{i}}"] = graph.add_task(reliability_funcs.write_bytes, args=(target, 100),
                                                    target_path_list=[target], task_name=f"small{{i}}")
            big = os.path.join(ws, "big.bin")
            tasks["big"] = graph.add_task(reliability_funcs.write_bytes, args=(big, target_bytes),
                                          target_path_list=[big], dependent_task_list=list(tasks.values()),
                                          task_name="big")
            tasks["result"] = graph.add_task(reliability_funcs.big_result, args=(result_bytes,),
                                             store_result=True, dependent_task_list=[tasks["big"]],
                                             task_name="result")
            graph.close()
            graph.join(timeout=60)
        except BaseException as exc:
            error = {{"type": type(exc).__name__, "text": str(exc),
                      "is_taskgraph": isinstance(exc, taskgraph.TaskGraphError),
                      "notes": getattr(exc, "__notes__", [])}}
        print(json.dumps({{"error": error, "states": {{k: t.state for k, t in tasks.items()}}}}))
""")


def run_full_script(tmp_path, ws, limit, target_bytes, result_bytes, n_workers=-1):
    import json

    script = tmp_path / "full.py"
    script.write_text(FULL_SCRIPT.format(tests=TESTS))
    proc = subprocess.run(
        [sys.executable, str(script), str(ws), str(n_workers), str(limit), str(target_bytes), str(result_bytes)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def recorded_done(ws):
    con = sqlite3.connect(str(ws / taskgraph.LEDGER_FILENAME))
    try:
        return {row[0] for row in con.execute("SELECT name FROM tasks WHERE state='done'")}
    finally:
        con.close()


@pytest.mark.parametrize("n_workers", [-1, 2])
def test_file_size_limit_while_writing_a_target(tmp_path, n_workers):
    """A target cannot be written (EFBIG, like a full disk): the task fails
    with the OS error naming it, finished tasks stay recorded, and a run with
    room skips them and completes."""
    ws = tmp_path / "ws"
    ws.mkdir()
    out, err = run_full_script(tmp_path, ws, 1 << 20, 4 << 20, 10, n_workers)
    assert out["error"]["type"] == "OSError" and "File too large" in out["error"]["text"]
    # (inline, the error is raised by add_task itself, as in natcap taskgraph)
    assert out["states"].get("big", "failed") == "failed"
    assert out["states"].get("result", "cancelled") == "cancelled"
    assert "task 'big' failed" in err
    assert integrity(ws / taskgraph.LEDGER_FILENAME) == "ok"
    assert recorded_done(ws) == {f"small{i}" for i in range(4)}
    out, _ = run_full_script(tmp_path, ws, 0, 4 << 20, 10, n_workers)
    assert out["error"] is None
    assert out["states"] == {**{f"small{i}": "skipped" for i in range(4)}, "big": "ran", "result": "ran"}


def test_file_size_limit_while_committing_the_ledger(tmp_path):
    """The ledger cannot grow (a 2 MiB stored result, files limited to 1 MiB):
    a LedgerError that says what to do, nothing committed before is lost, and
    a run with room completes."""
    ws = tmp_path / "ws"
    ws.mkdir()
    out, _ = run_full_script(tmp_path, ws, 1 << 20, 1000, 2 << 20)
    assert out["error"]["type"] == "LedgerError" and out["error"]["is_taskgraph"]
    assert "free disk space" in out["error"]["text"]
    assert integrity(ws / taskgraph.LEDGER_FILENAME) == "ok"
    assert recorded_done(ws) == {f"small{i}" for i in range(4)} | {"big"}
    out, _ = run_full_script(tmp_path, ws, 0, 1000, 2 << 20)
    assert out["error"] is None
    assert out["states"]["result"] == "ran" and out["states"]["big"] == "skipped"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MiB tmpfs (root only): a disk that really fills up."""
    with disks.small_tmpfs(tmp_path, "3m") as mount_point:
        yield mount_point


@pytest.mark.parametrize("where", ["target", "ledger"])
def test_real_full_disk(tmp_path, small_tmpfs, where):
    """On a really full file system (ENOSPC), whether a target or the ledger
    hits it: a clear error, the ledger intact, and after making room the next
    run skips what was recorded and completes."""
    ws = small_tmpfs / "ws"
    ws.mkdir()
    target_bytes, result_bytes = (8 << 20, 10) if where == "target" else (1000, 8 << 20)
    out, _ = run_full_script(tmp_path, ws, 0, target_bytes, result_bytes)
    if where == "target":
        assert out["error"]["type"] == "OSError" and "No space left" in out["error"]["text"]
    else:
        assert out["error"]["type"] == "LedgerError" and "free disk space" in out["error"]["text"]
    assert integrity(ws / taskgraph.LEDGER_FILENAME) == "ok"
    done = recorded_done(ws)
    if where == "ledger":
        # The stored result does not fit: every record before it is committed.
        assert done == {f"small{i}" for i in range(4)} | {"big"}
    else:
        # The small tasks finished within one group commit (COMMIT_INTERVAL_S)
        # before the big target filled the disk: what was committed stays,
        # what was not runs again (below); nothing else is recorded.
        assert done <= {f"small{i}" for i in range(4)}
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    out, _ = run_full_script(tmp_path, ws, 0, target_bytes, result_bytes)
    assert out["error"] is None
    assert {name for name, state in out["states"].items() if state == "skipped"} == done
    assert out["states"]["result"] == "ran"


# -- several processes on one workspace --------------------------------------------------

OVERLAP_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import reliability_funcs, taskgraph
    if __name__ == "__main__":
        ws, n_workers, start, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        journal = os.path.join(ws, "journal.txt")
        with taskgraph.TaskGraph(ws, n_workers) as graph:
            tasks = {{}}
            for i in range(start, stop):
                target = os.path.join(ws, f"o{{i:03d}}.txt")
                deps = [tasks[i - 10]] if i - 10 in tasks else []
                tasks[i] = graph.add_task(
                    reliability_funcs.write_journaled, args=(target, journal, i, 0.01),
                    target_path_list=[target], ignore_path_list=[journal],
                    dependent_task_list=deps, task_name=f"o{{i:03d}}")
""")


def test_four_processes_on_one_workspace_run_each_task_once(tmp_path):
    """Four processes (inline, thread and process modes) run overlapping
    graphs on one workspace at once: no "database is locked", no lost record,
    and no task runs twice: a process that finds a task claimed by another
    waits for it and then skips it."""
    script = tmp_path / "overlap.py"
    script.write_text(OVERLAP_SCRIPT.format(tests=TESTS))
    ws = tmp_path / "ws"
    ws.mkdir()
    ranges = [(0, 120), (30, 150), (60, 180), (0, 180)]
    procs = [
        subprocess.Popen([sys.executable, str(script), str(ws), str(n_workers), str(a), str(b)],
                         stderr=subprocess.PIPE, text=True)
        for n_workers, (a, b) in zip([-1, 0, 2, 2], ranges, strict=True)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "locked" not in err and "busy" not in err
    runs = (ws / "journal.txt").read_text().split("\n")
    names = [line.split()[0] for line in runs if line]
    twice = sorted({name for name in names if names.count(name) > 1})
    assert twice == [], f"ran more than once: {twice}"
    assert len(names) == 180
    assert recorded_done(ws) == {f"o{i:03d}" for i in range(180)}
    assert integrity(ws / taskgraph.LEDGER_FILENAME) == "ok"
