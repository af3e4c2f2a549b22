"""The process pool as users' scripts meet it: how workers start, what they
inherit, and that every failure at start, in transfer or in the scheduler
ends with a clear error, no hang and no process left.

Each case runs a real script in a fresh interpreter (the way users run
pipelines), with a timeout: a hang fails the test instead of the suite.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pool_funcs as pf
import psutil
import pytest
from procs import child_pids, no_new_children

import taskgraph
from taskgraph._pool import ProcessPool

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def run_script(tmp_path, source, *args, start_method=None, timeout=60, python_flags=()):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    env = dict(os.environ)
    env.pop("TASKGRAPH_START_METHOD", None)
    if start_method is not None:
        env["TASKGRAPH_START_METHOD"] = start_method
    env["PYTHONPATH"] = os.pathsep.join([TESTS, ROOT, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *python_flags, str(script), *map(str, args)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout, env=env)


UNGUARDED = """
    import os
    import taskgraph

    def write(path, text):
        with open(path, "w") as stream:
            stream.write(text)

    graph = taskgraph.TaskGraph("workspace", n_workers=2)
    for i in range(6):
        graph.add_task(write, args=(f"out{i}.txt", str(i)), target_path_list=[f"out{i}.txt"], task_name=f"t{i}")
    graph.close()
    graph.join()
    print("the last line")
"""


def test_a_script_without_the_main_guard_runs_as_under_natcap(tmp_path):
    done = run_script(tmp_path, UNGUARDED)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("the last line") == 1
    assert sorted(p.name for p in tmp_path.glob("out*.txt")) == [f"out{i}.txt" for i in range(6)]
    assert [(tmp_path / f"out{i}.txt").read_text() for i in range(6)] == [str(i) for i in range(6)]


@pytest.mark.parametrize("inline_graph", ["closed", "open"])
def test_an_unguarded_script_forks_its_pool_just_after_an_inline_graph(tmp_path, inline_graph):
    # The inline graph's records wait for its group commit (up to 250 ms) in a
    # short-lived committer thread; a pool made at once must still fork its
    # server from this process (no engine thread may be alive), not spawn.
    done = run_script(tmp_path, """
        import taskgraph

        def write(path, text):
            with open(path, "w") as stream:
                stream.write(text)

        first = taskgraph.TaskGraph("inline-workspace", n_workers=-1)
        for i in range(3):
            first.add_task(write, args=(f"in{i}.txt", str(i)), target_path_list=[f"in{i}.txt"], task_name=f"i{i}")
        if CLOSE:
            first.close()
            first.join()
        graph = taskgraph.TaskGraph("workspace", n_workers=2)
        for i in range(4):
            graph.add_task(write, args=(f"out{i}.txt", str(i)), target_path_list=[f"out{i}.txt"], task_name=f"t{i}")
        graph.close()
        graph.join()
        if not CLOSE:
            first.close()
            first.join()
        print("the last line")
    """.replace("CLOSE", str(inline_graph == "closed")))
    assert done.returncode == 0, done.stderr
    assert "spawn" not in done.stderr and done.stdout.count("the last line") == 1
    assert sorted(p.name for p in tmp_path.glob("out*.txt")) == [f"out{i}.txt" for i in range(4)]


def test_under_spawn_the_unguarded_script_fails_at_once_saying_why(tmp_path):
    done = run_script(tmp_path, UNGUARDED, start_method="spawn")
    assert done.returncode != 0
    assert "if __name__ == '__main__':" in done.stderr
    assert "the last line" not in done.stdout


SLOW_IMPORT = """
    import os, sys, time
    import taskgraph
    # Stands for GDAL, scipy, pint registries...: a module that is slow to import.
    # Every import of it appends a line to imports.txt.
    with open("slow_module.py", "w") as stream:
        stream.write("import os, time\\n"
                     "with open('imports.txt', 'a') as f: f.write(str(os.getpid()) + '\\\\n')\\n"
                     "time.sleep(0.5)\\n"
                     "def work(path):\\n"
                     "    open(path, 'w').write(str(os.getpid()))\\n")
    sys.path.insert(0, os.getcwd())
    import slow_module

    if __name__ == "__main__":
        with taskgraph.TaskGraph("workspace", n_workers=2) as graph:
            for i in range(6):
                graph.add_task(slow_module.work, args=(f"out{i}.txt",), target_path_list=[f"out{i}.txt"])
        workers = {open(f"out{i}.txt").read() for i in range(6)}
        print(len(workers), str(os.getpid()) in workers)
"""


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_forked_workers_do_not_import_the_task_module_again(tmp_path, start_method):
    done = run_script(tmp_path, SLOW_IMPORT, start_method=start_method)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[1] == "False"  # the tasks ran in worker processes
    imports = (tmp_path / "imports.txt").read_text().split()
    if start_method == "fork":
        assert len(imports) == 1  # the caller's import only
    else:
        assert len(imports) == 1 + int(done.stdout.split()[0])  # and one per spawned worker


def test_a_spawned_worker_imports_none_of_the_engine(tmp_path):
    done = run_script(tmp_path, """
        import sys
        import taskgraph._worker
        print(sorted(m for m in sys.modules if m.startswith("taskgraph")))
        print([m for m in ("sqlite3", "sqlitedict", "taskgraph._ledger", "taskgraph._cli") if m in sys.modules])
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == "[]"


FORK_WARNING = """
    import sys, threading, warnings
    import taskgraph
    import pool_funcs

    if __name__ == "__main__":
        # Two graphs at once: the second is made while the first one's engine
        # threads run. Its workers must still not be forked beside them.
        with taskgraph.TaskGraph("one", n_workers=1) as first:
            slow = first.add_task(pool_funcs.sleep, args=(0.5,))
            with taskgraph.TaskGraph("two", n_workers=1) as second:
                task = second.add_task(pool_funcs.pids, args=("pids.txt",), store_result=True)
        pid, parent = task.get()
        print(parent != __import__("os").getpid())
"""


def test_the_engine_never_forks_beside_its_own_threads(tmp_path):
    # Python 3.12+ warns (DeprecationWarning) on a fork from a process with
    # other threads; -W error would turn that into an unraisable error message.
    done = run_script(tmp_path, FORK_WARNING, python_flags=("-W", "always::DeprecationWarning"))
    assert done.returncode == 0, done.stderr
    assert "multi-threaded" not in done.stderr, done.stderr
    assert "start with 'spawn'" not in done.stderr, done.stderr
    assert done.stdout.strip() == "True"  # the worker's parent is a fork server, not the caller


EMFILE = """
    import os, resource, sys, time
    import taskgraph
    import pool_funcs

    if __name__ == "__main__":
        graph = taskgraph.TaskGraph("workspace", n_workers=2)
        # No descriptor left for a worker's pipe: starting one fails with EMFILE.
        open_now = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_now, hard))
        keep = []
        try:
            while True:
                keep.append(open(os.devnull))
        except OSError:
            pass
        started = time.monotonic()
        graph.add_task(pool_funcs.sleep, args=(0,), task_name="needs a worker")
        graph.close()
        try:
            graph.join()
        except taskgraph.WorkerStartError as error:
            print("WorkerStartError", time.monotonic() - started < 10)
            print(error)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX resource limits")
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_worker_that_cannot_start_fails_its_task_naming_the_cause(tmp_path, start_method):
    done = run_script(tmp_path, EMFILE, start_method=start_method)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "WorkerStartError True", done.stdout + done.stderr
    assert "'needs a worker'" in lines[1] and "Too many open files" in lines[1]


def test_an_exception_inside_the_scheduler_finishes_every_task(tmp_path):
    # The result pickles in the worker but not again here, where the ledger
    # stores it: the scheduler itself fails. Every task must still finish.
    before = child_pids()
    graph = taskgraph.TaskGraph(str(tmp_path), 2)
    bad = graph.add_task(pf.make_worker_only_value, store_result=True, task_name="bad result")
    after = graph.add_task(pf.sleep, args=(0,), dependent_task_list=[bad], task_name="after")
    others = [graph.add_task(pf.sleep, args=(0.2 + i / 100,), task_name=f"other {i}") for i in range(4)]
    graph.close()
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        graph.join(timeout=30)
    assert time.monotonic() - started < 10
    assert "can only be pickled in the process that made it" in repr(caught.value) + repr(caught.value.__cause__)
    for task in [bad, after, *others]:
        assert task._finished
        assert task._state in ("ran", "failed", "cancelled")
    assert no_new_children(before)


def test_terminate_while_a_large_result_is_in_transfer(tmp_path):
    before = child_pids()
    marker = tmp_path / "returning"
    graph = taskgraph.TaskGraph(str(tmp_path / "ws"), 2)
    task = graph.add_task(pf.big_result, args=(str(marker), 400 * 2**20), store_result=True, task_name="big")
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    graph.terminate()
    with pytest.raises(taskgraph.TaskGraphTerminatedError):
        graph.join(timeout=30)
    assert task._finished
    assert no_new_children(before)


@pytest.mark.parametrize("start_method", ["fork", "spawn"] if hasattr(os, "fork") else ["spawn"])
def test_log_records_and_results_of_every_size_arrive_whole_and_in_order(tmp_path, start_method):
    """Small and large results (a few bytes to several MiB, read in many
    pieces) and bursts of log records, from tasks that run one after another
    in the same workers: each task's records arrive, in the order it logged
    them, and every result is whole."""
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("pool.test.chatty")
    logger.addHandler(Keep())
    sizes = [1, 3 * 2**20, 10, 70_000, 0, 9 * 2**20 + 5, 2, 4]
    try:
        graph = taskgraph.TaskGraph(str(tmp_path), 2, start_method=start_method)
        tasks = [graph.add_task(pf.chatty, args=("pool.test.chatty", i, 50, size), store_result=True,
                                task_name=f"chatty{i}") for i, size in enumerate(sizes)]
        graph.close()
        assert graph.join(timeout=120)
    finally:
        logger.handlers.clear()
    for i, (task, size) in enumerate(zip(tasks, sizes, strict=True)):
        assert task.get(timeout=10) == (str(i).encode() * size)[:size]
        mine = [text for text in records if text.startswith(f"task {i} ")]
        assert mine == [f"task {i} record {number}" for number in range(50)]


def test_messages_are_read_whole_however_they_arrive():
    """The framing ``Connection.send_bytes`` writes, read back through
    ``Frames`` however the bytes are cut (a length split from its body,
    several messages in one read, the long form of a length)."""
    import socket
    import struct
    from multiprocessing.connection import Connection

    from taskgraph._worker import Frames

    ours, theirs = socket.socketpair()
    reader = Frames(Connection(ours.detach()))
    stream = b"".join([struct.pack("!i", 3), b"abc", struct.pack("!i", 0), struct.pack("!i", -1),
                       struct.pack("!Q", 5), b"hello", struct.pack("!i", 2), b"xy"])
    got = []
    for start, end in ((0, 2), (2, 7), (7, 15), (15, 22), (22, len(stream))):
        theirs.sendall(stream[start:end])  # a local socket: the next read takes all of it
        got.extend(reader.read())
    assert got == [b"abc", b"", b"hello", b"xy"]
    theirs.sendall(struct.pack("!i", 4) + b"last")
    assert reader.next() == b"last"
    theirs.close()
    with pytest.raises(EOFError):
        reader.read()


def test_a_pool_made_and_dropped_leaves_no_process():
    before = child_pids()
    pool = ProcessPool(2)
    assert pool.start_method in ("fork", "spawn")
    pool.shutdown()
    assert no_new_children(before)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork start method")
def test_the_fork_server_and_workers_leave_when_the_caller_is_killed(tmp_path):
    done = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{TESTS!r}, {ROOT!r}]
        import taskgraph, pool_funcs
        graph = taskgraph.TaskGraph({str(tmp_path / "ws")!r}, 2)
        graph.add_task(pool_funcs.sleep, args=(60,), task_name="long")
        graph.add_task(pool_funcs.sleep, args=(61,), task_name="long 2")
        time.sleep(60)
    """)])
    try:
        parent = psutil.Process(done.pid)
        deadline = time.monotonic() + 30
        while len(parent.children(recursive=True)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        family = parent.children(recursive=True)
        assert len(family) >= 3  # the fork server and two workers
        done.kill()
        done.wait(10)
        _, alive = psutil.wait_procs(family, timeout=10)
        assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        done.kill()


def test_start_method_is_checked_at_construction(tmp_path):
    with pytest.raises(taskgraph.InvalidTaskError, match="start method must be one of 'fork', 'spawn'"):
        taskgraph.TaskGraph(str(tmp_path), 2, start_method="forkserver")


def test_a_task_declaring_memory_after_the_ready_tasks_were_ordered_by_history(tmp_path):
    # The ready heap is keyed by (priority, critical path) once durations are
    # known; a task that declares memory then switches to the memory policy,
    # whose keys must replace those (mixed keys cannot be compared).
    with taskgraph.TaskGraph(str(tmp_path), 2) as graph:
        for i in range(6):
            graph.add_task(pf.sleep, args=(0.01 + i / 1000,), task_name=f"first {i}")
    graph = taskgraph.TaskGraph(str(tmp_path), 2)
    tasks = [graph.add_task(pf.sleep, args=(0.01 + i / 1000,), transient_run=True, task_name=f"again {i}")
             for i in range(6)]
    deadline = time.monotonic() + 30
    while not graph._scheduler._ready.by_path and time.monotonic() < deadline:
        time.sleep(0.001)
    assert graph._scheduler._ready.by_path, "the ready tasks were never ordered by their critical path"
    tasks.append(graph.add_task(pf.sleep, args=(0.05,), memory=10, task_name="declares memory"))
    graph.close()
    assert graph.join(timeout=30)
    assert all(task._state == "ran" for task in tasks)


SIGCHLD_BLOCKED = """
    import signal, threading
    import taskgraph
    import pool_funcs

    def make_and_run(out):
        # A thread with SIGCHLD blocked makes the graph: the fork server must
        # still hear its workers die.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        graph = taskgraph.TaskGraph("workspace", n_workers=1)
        graph.add_task(pool_funcs.kill_self, task_name="killed")
        graph.close()
        try:
            out.append(graph.join(timeout=30))
        except taskgraph.WorkerDiedError as error:
            out.append(str(error))

    if __name__ == "__main__":
        out = []
        thread = threading.Thread(target=make_and_run, args=(out,))
        thread.start()
        thread.join(60)
        print(out)
"""


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_graph_made_where_sigchld_is_blocked_still_sees_its_workers_die(tmp_path):
    done = run_script(tmp_path, SIGCHLD_BLOCKED, start_method="fork")
    assert done.returncode == 0, done.stderr
    assert "'killed' died with signal SIGKILL" in done.stdout, done.stdout + done.stderr


def test_a_second_graphs_fork_server_works_without_pidfds(tmp_path):
    # Without os.pidfd_open (old kernels, macOS, some sandboxes) servers watch
    # the caller by pid: a server forked by another server must not mistake
    # its parent for the caller.
    done = run_script(tmp_path, "import os\nif hasattr(os, 'pidfd_open'):\n    del os.pidfd_open\n"
                      + textwrap.dedent(FORK_WARNING))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
