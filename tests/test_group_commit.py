"""Group commit: what finished is committed in groups, and what that may cost.

Short tasks' records are committed together (at most about every
``COMMIT_INTERVAL_S``), so a kill may cost the short tasks that finished
since the last commit: they run again, and nothing committed is lost. A task
that is not known to be short starts only after everything before it is
committed; from a scheduler thread, ``join()`` returns only once the task's
record is committed. Real processes, real SIGKILL, real SQLite files.
"""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import reliability_funcs as r

import taskgraph

TESTS = os.path.dirname(__file__)


def recorded(ws):
    path = os.path.join(str(ws), taskgraph.LEDGER_FILENAME)
    con = sqlite3.connect(path)
    try:
        return {row[0] for row in con.execute("SELECT name FROM tasks WHERE state='done'")}
    finally:
        con.close()


KILLED_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import reliability_funcs, taskgraph
    ws, n_workers, killer = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    graph = taskgraph.TaskGraph(ws, n_workers)
    journal = os.path.join(ws, "journal.txt")
    tasks = []
    for i in range(40):
        target = os.path.join(ws, f"s{{i:02d}}.txt")
        tasks.append(graph.add_task(reliability_funcs.write_journaled, args=(target, journal, i),
                                    target_path_list=[target], ignore_path_list=[journal],
                                    task_name=f"s{{i:02d}}"))
    if killer == "unknown":
        # A function with no recorded duration: not known to be short.
        graph.add_task(reliability_funcs.kill_process, args=(os.getpid(),), dependent_task_list=tasks,
                       task_name="killer")
    else:
        # The short tasks' own function: known to be short by now.
        target = os.path.join(ws, "killer.txt")
        graph.add_task(reliability_funcs.write_journaled, args=(target, journal, "kill", 0.0, os.getpid()),
                       target_path_list=[target], ignore_path_list=[journal],
                       dependent_task_list=tasks, task_name="killer")
    graph.close()
    graph.join()
""")


def run_killed(tmp_path, n_workers, killer):
    ws = tmp_path / "ws"
    ws.mkdir()
    script = tmp_path / "killed.py"
    script.write_text(KILLED_SCRIPT.format(tests=TESTS))
    proc = subprocess.run([sys.executable, str(script), str(ws), str(n_workers), killer],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    with open(ws / "journal.txt") as stream:
        finished = {line.split()[0][:-4] for line in stream if line.split()[0] != "killer.txt"}
    return ws, finished


@pytest.mark.parametrize("n_workers", [-1, 2])
def test_a_task_not_known_to_be_short_starts_after_everything_before_it_is_committed(tmp_path, n_workers):
    ws, finished = run_killed(tmp_path, n_workers, "unknown")
    assert finished == {f"s{i:02d}" for i in range(40)}
    # The process was killed inside the last task: every task before it is recorded.
    assert recorded(ws) == finished
    with taskgraph.TaskGraph(str(ws), -1) as graph:
        for i in range(40):
            target = str(ws / f"s{i:02d}.txt")
            task = graph.add_task(r.write_journaled, args=(target, str(ws / "journal.txt"), i),
                                  target_path_list=[target], ignore_path_list=[str(ws / "journal.txt")],
                                  task_name=f"s{i:02d}")
            assert task.state == "skipped"


@pytest.mark.parametrize("n_workers", [-1, 2])
def test_a_kill_costs_only_uncommitted_short_tasks_and_they_run_again(tmp_path, n_workers):
    ws, finished = run_killed(tmp_path, n_workers, "short")
    assert finished == {f"s{i:02d}" for i in range(40)}
    done = recorded(ws)
    # Committed in order: what is recorded finished, and the first commit is immediate (inline
    # that is s00's; with two workers s01 may finish first).
    assert done and done <= finished
    assert n_workers > 0 or "s00" in done
    journal = str(ws / "journal.txt")
    os.remove(journal)
    with taskgraph.TaskGraph(str(ws), -1) as graph:
        tasks = {}
        for i in range(40):
            target = str(ws / f"s{i:02d}.txt")
            tasks[f"s{i:02d}"] = graph.add_task(r.write_journaled, args=(target, journal, i),
                                                target_path_list=[target], ignore_path_list=[journal],
                                                task_name=f"s{i:02d}")
    assert {name for name, task in tasks.items() if task.state == "skipped"} == done
    assert {name for name, task in tasks.items() if task.state == "ran"} == finished - done
    assert recorded(ws) == finished


@pytest.mark.parametrize("n_workers", [0, 2])
def test_from_a_scheduler_thread_join_returns_once_the_record_is_committed(tmp_path, n_workers):
    ws = str(tmp_path)
    with taskgraph.TaskGraph(ws, n_workers) as graph:
        for i in range(30):
            target = os.path.join(ws, f"t{i}.txt")
            task = graph.add_task(r.write_bytes, args=(target, 10), target_path_list=[target], task_name=f"t{i}")
            task.join(timeout=60)
            # Another connection, as another process or `taskgraph status` would read it.
            assert f"t{i}" in recorded(ws)


def test_inline_results_are_there_at_once_and_join_commits_them(tmp_path):
    ws = str(tmp_path)
    graph = taskgraph.TaskGraph(ws, -1)
    tasks = [graph.add_task(r.big_result, args=(i,), store_result=True, task_name=f"r{i}") for i in range(50)]
    # Inline, add_task ran each task: its result is there without waiting for a commit.
    assert [task.get(timeout=0) for task in tasks] == [b"r" * i for i in range(50)]
    graph.close()
    graph.join(timeout=60)
    assert recorded(ws) == {f"r{i}" for i in range(50)}


FULL_LEDGER_SCRIPT = textwrap.dedent("""
    import json, resource, signal, sys
    sys.path.insert(0, {tests!r})
    import reliability_funcs, taskgraph
    ws = sys.argv[1]
    # The ledger may not grow past 1 MiB: a commit with a 2 MiB result fails with EFBIG.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    graph = taskgraph.TaskGraph(ws, -1)
    error = None
    try:
        # One function, so each task after the first is known to be short:
        # their records wait for one group commit, which the large one fails.
        for i, size in enumerate([10, 11, 12, 13, 2 << 20, 14]):
            graph.add_task(reliability_funcs.big_result, args=(size,), store_result=True, task_name=f"r{{i}}")
        graph.add_task(reliability_funcs.sleep_then, args=(0.01,), task_name="unknown")
        graph.close()
        graph.join(timeout=60)
    except taskgraph.TaskGraphError as exc:
        # Inline, the next add_task raises: its task was cancelled by the LedgerError.
        error = [type(exc).__name__, str(exc)]
    print(json.dumps(error))
""")


def run_full_ledger(tmp_path):
    """Run FULL_LEDGER_SCRIPT in a new workspace; returns the workspace and what it printed."""
    script = tmp_path / "full.py"
    script.write_text(FULL_LEDGER_SCRIPT.format(tests=TESTS))
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(ws)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return ws, json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_group_that_cannot_be_committed_commits_what_fits(tmp_path):
    ws, error = run_full_ledger(tmp_path)
    # The LedgerError itself, from the add_task whose commit failed, or the
    # cancellation of the next task, which names it.
    assert error is not None and (error[0] == "LedgerError" or "LedgerError:" in error[1])
    assert "free disk space" in error[1]
    # Every task that finished before the one whose record does not fit is recorded.
    assert recorded(ws) == {"r0", "r1", "r2", "r3"}


def run_script(tmp_path, body, *args, name="script.py"):
    script = tmp_path / name
    script.write_text(textwrap.dedent(f"""
        import json, os, resource, signal, sqlite3, sys, time
        sys.path.insert(0, {TESTS!r})
        import reliability_funcs, taskgraph
    """) + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_two_inline_graphs_in_one_process_share_a_workspace_without_waiting_forever(tmp_path):
    # Inline, a short task's record (and its claim) waits for the group
    # commit after add_task returned; a committer thread makes it, so the
    # second graph, waiting for that claim, goes on and finds it done.
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = run_script(tmp_path, """
        ws = sys.argv[1]
        def add(graph, i):
            target = os.path.join(ws, f"o{i}")
            return graph.add_task(reliability_funcs.write_bytes, args=(target, i), target_path_list=[target],
                                  task_name=f"w{i}")
        a = taskgraph.TaskGraph(ws, -1)
        add(a, 0)
        add(a, 1)
        b = taskgraph.TaskGraph(ws, -1)
        print(add(b, 1).state)
        a.close(); a.join(); b.close(); b.join()
    """, ws)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["skipped"]


def test_inline_records_are_committed_while_the_script_does_something_else(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = run_script(tmp_path, """
        ws = sys.argv[1]
        graph = taskgraph.TaskGraph(ws, -1)
        for i in range(3):
            target = os.path.join(ws, f"o{i}")
            graph.add_task(reliability_funcs.write_bytes, args=(target, i), target_path_list=[target],
                           task_name=f"w{i}")
        time.sleep(1.0)  # the script's own work, well past the inline group commit's 250 ms
        os._exit(9)  # killed there
    """, ws)
    assert proc.returncode == 9, proc.stderr
    assert recorded(ws) == {"w0", "w1", "w2"}


@pytest.mark.parametrize("n_workers", [0, 2])
def test_after_a_failed_commit_no_dependent_is_recorded_without_its_dependency(tmp_path, n_workers):
    # E (known short) starts before D's record is committed; D's record then
    # does not fit in the ledger: E's result must not be recorded either.
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = run_script(tmp_path, """
        ws, n_workers = sys.argv[1], int(sys.argv[2])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        graph = taskgraph.TaskGraph(ws, n_workers)
        try:
            for i in range(4):
                graph.add_task(reliability_funcs.big_result, args=(10 + i,), store_result=True,
                               task_name=f"a{i}").join()
            time.sleep(0.05)
            d = graph.add_task(reliability_funcs.big_result, args=(2 << 20,), store_result=True, task_name="D")
            e = graph.add_task(reliability_funcs.big_result, args=(7,), store_result=True, task_name="E",
                               dependent_task_list=[d])
            graph.close()
            graph.join(timeout=60)
        except taskgraph.TaskGraphError:
            pass
        print(d.state, e.state)
    """, ws, n_workers)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["failed", "failed"]
    assert recorded(ws) == {"a0", "a1", "a2", "a3"}


def test_a_group_committed_a_task_at_a_time_stays_in_the_current_graph(tmp_path):
    ws, _ = run_full_ledger(tmp_path)
    con = sqlite3.connect(str(ws / taskgraph.LEDGER_FILENAME))
    try:
        considered = dict(con.execute(
            "SELECT t.name, c.state FROM considered c JOIN tasks t USING (record_key)").fetchall())
        ran, failed = con.execute("SELECT ran, failed FROM runs").fetchone()
    finally:
        con.close()
    # The records committed one at a time are the current graph's, as ran;
    # the one that did not fit ended failed.
    assert {name: considered.get(name) for name in ("r0", "r1", "r2", "r3")} == dict.fromkeys(
        ("r0", "r1", "r2", "r3"), "ran")
    assert ran == 4 and failed >= 1


def test_a_ctrl_c_while_a_result_is_stored_never_commits_the_record_without_it(tmp_path):
    # Ctrl-C may land while a finished task's record is buffered: during the
    # stored result's encoding (here its second pickling raises
    # KeyboardInterrupt, as a real Ctrl-C at that moment would), the first import of
    # sqlitedict, or the making of the workspace's key. What is buffered is
    # committed on the way out: the task's row must never go in without its
    # result, or the next run would run a task recorded as done again.
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = run_script(tmp_path, """
        class Interrupting:
            # Pickled twice: to check that it can be, then to store it.
            pickled = 0

            def __reduce__(self):
                Interrupting.pickled += 1
                if Interrupting.pickled == 2:
                    raise KeyboardInterrupt
                return (int, (2,))

        def first(path):
            with open(path, "w") as stream:
                stream.write("1")
            return 1

        def second(path):
            with open(path, "w") as stream:
                stream.write("2")
            return Interrupting()

        ws = sys.argv[1]
        graph = taskgraph.TaskGraph(ws, -1)
        try:
            for name, func in (("first", first), ("second", second)):
                target = os.path.join(ws, name)
                graph.add_task(func, args=(target,), target_path_list=[target], store_result=True, task_name=name)
        except KeyboardInterrupt:
            print("interrupted")
    """, ws)
    assert proc.stdout.split() == ["interrupted"], proc.stderr
    con = sqlite3.connect(str(ws / taskgraph.LEDGER_FILENAME))
    try:
        done = {name for (name,) in con.execute(
            "SELECT name FROM tasks WHERE state='done' AND record_key NOT IN (SELECT key FROM results)")}
        recorded = {name for (name,) in con.execute("SELECT name FROM tasks WHERE state='done'")}
    finally:
        con.close()
    assert done == set()  # no record without its result
    assert recorded == {"first"}  # what finished before is kept


RERUN_SCRIPT = textwrap.dedent("""
    import json, resource, signal, sys
    sys.path.insert(0, {tests!r})
    import reliability_funcs, taskgraph, taskgraph._scheduler
    ws, limited = sys.argv[1], sys.argv[2] == "limited"
    if limited:  # the ledger may not grow past 1 MiB: the group with a 2 MiB result fails
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    # One group whatever the machine's speed: committed when "unknown" (not
    # known to be short) is about to start, with the large result in it.
    taskgraph._scheduler.INLINE_COMMIT_INTERVAL_S = 600
    graph = taskgraph.TaskGraph(ws, -1)
    try:
        for i in range(4):  # they run every time: their decisions are not a new task's
            graph.add_task(reliability_funcs.big_result, args=(10 + i,), store_result=True, transient_run=True,
                           task_name=f"r{{i}}")
        if limited:
            graph.add_task(reliability_funcs.big_result, args=(2 << 20,), store_result=True, task_name="big")
        graph.add_task(reliability_funcs.sleep_then, args=(0.01,), task_name="unknown")
        graph.close()
        graph.join(timeout=60)
    except taskgraph.TaskGraphError:
        pass
""")


def test_records_committed_a_task_at_a_time_keep_their_own_decisions(tmp_path):
    # A record with no decision of its run is read as a new task's: so when
    # a group is committed a task at a time, each record goes with its own
    # decision (here: run 2 ran them for transient_run, not as new tasks; r0
    # went alone in the run's first commit, r1 to r3 one at a time).
    from taskgraph._ledger_read import LedgerReader

    script = tmp_path / "rerun.py"
    script.write_text(RERUN_SCRIPT.format(tests=TESTS))
    ws = tmp_path / "ws"
    ws.mkdir()
    for mode in ("plain", "limited"):
        proc = subprocess.run([sys.executable, str(script), str(ws), mode], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert "cannot write the ledger" in proc.stderr
    con = sqlite3.connect(str(ws / taskgraph.LEDGER_FILENAME))
    try:
        keys = dict(con.execute("SELECT name, record_key FROM tasks WHERE run_id = 2"))
    finally:
        con.close()
    assert set(keys) == {"r0", "r1", "r2", "r3"}  # 'big' did not fit; the others did, one at a time
    reader = LedgerReader(str(ws))
    try:
        for name in ("r0", "r1", "r2", "r3"):
            decision = reader.decision(keys[name])
            assert decision.run_id == 2 and [reason["code"] for reason in decision.reasons] == ["transient_run"]
    finally:
        reader.close()
