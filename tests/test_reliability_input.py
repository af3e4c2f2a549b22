"""Hostile and odd input to ``add_task`` and the file checks. Each case either
works with the meaning documented in docs/reliability.md or raises a
``TaskGraphError`` subclass naming the task; never a hang, a scheduler crash
or a damaged ledger."""

import functools
import gc
import math
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import traceback
import weakref

import numpy as np
import pytest
import reliability_funcs as r
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import taskgraph

# Modest example counts keep CI fast (TASKGRAPH_HYPOTHESIS_EXAMPLES raises
# them for a longer search); no deadline (every example touches the disk).
settings.register_profile(
    "taskgraph-reliability", max_examples=int(os.environ.get("TASKGRAPH_HYPOTHESIS_EXAMPLES", "40")),
    deadline=None,
    # The default run (CI) tries the same examples every time; asking for a
    # number of examples explores new ones.
    derandomize="TASKGRAPH_HYPOTHESIS_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("taskgraph-reliability")

LEDGER = taskgraph.LEDGER_FILENAME


def integrity(ws):
    con = sqlite3.connect(os.path.join(ws, LEDGER))
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def same(a, b):
    """Equality that counts NaN equal to NaN and compares arrays by value."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and type(a) is type(b):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def run_once(ws, n_workers=-1, **task):
    """Add one task in a fresh graph; return it (after join)."""
    with taskgraph.TaskGraph(ws, n_workers) as graph:
        added = graph.add_task(**task)
    return added


def ran_then_skipped(ws, n_workers=-1, **task):
    """The task runs, then a second graph skips it; returns its result."""
    first = run_once(ws, n_workers, **task)
    assert first.state == "ran"
    second = run_once(ws, n_workers, **task)
    assert second.state == "skipped", [str(reason) for reason in second.reasons]
    assert integrity(ws) == "ok"
    return second.get() if task.get("store_result") else None


# -- hypothesis: odd values as arguments ---------------------------------------------------



def _not_a_file(text: str) -> bool:
    # A string naming a real file is an input: a file of this machine that
    # changes by itself (hypothesis tries constants such as "/proc/self/stat")
    # rightly makes the task run again, so the skip checks leave those out.
    return not os.path.isfile(text)


path_like = st.text(alphabet="ab./\\~ é", min_size=1, max_size=30).map(lambda s: "/" + s).filter(_not_a_file)
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50).filter(_not_a_file) | st.binary(max_size=50) | path_like
    | st.text(min_size=5000, max_size=20000, alphabet="/a.")  # huge strings that look like paths
)
values = st.recursive(
    scalars,
    lambda children: (st.lists(children, max_size=4) | st.tuples(children, children)
                      | st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=20,
)


@settings(PROFILE)
@given(value=values)
def test_odd_values_are_identified_stored_and_skipped(value):
    ws = tempfile.mkdtemp(prefix="taskgraph-odd-")
    try:
        result = ran_then_skipped(ws, func=r.identity, args=(value,), store_result=True, task_name="odd")
        assert same(result, value)
    finally:
        shutil.rmtree(ws)


@settings(PROFILE, max_examples=max(1, PROFILE.max_examples // 5))  # a pool each: fewer
@given(batch=st.lists(values, min_size=1, max_size=6))
def test_odd_values_travel_to_worker_processes_and_back(batch):
    """The same values as arguments of tasks in worker processes (pickled
    there and back), many tasks in one graph; then all skipped."""
    ws = tempfile.mkdtemp(prefix="taskgraph-odd-pool-")
    try:
        for expected_state in ("ran", "skipped"):
            with taskgraph.TaskGraph(ws, 2) as graph:
                tasks = [graph.add_task(r.identity, args=(value,), store_result=True, task_name=f"v{i}")
                         for i, value in enumerate(batch)]
            for task, value in zip(tasks, batch, strict=True):
                assert task.state == expected_state  # (equal values share one Task: a duplicate)
                assert same(task.get(), value)
        assert integrity(ws) == "ok"
    finally:
        shutil.rmtree(ws)


@settings(PROFILE)
@given(name=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                    min_size=1, max_size=300))
def test_odd_file_names_as_targets(name):
    """Unicode and very long names: either the task works (and is skipped
    next time), or the file system refuses the name and the task fails with
    the OS's own error, re-raised as itself with a note naming the task."""
    ws = tempfile.mkdtemp(prefix="taskgraph-names-")
    target = os.path.join(ws, name)
    try:
        try:
            ran_then_skipped(ws, func=r.write_bytes, args=(target, 3), target_path_list=[target], task_name="named")
        except OSError as error:
            # ENAMETOOLONG past 255 bytes; "." and ".." are directories.
            assert len(name.encode()) > 255 or name in (".", ".."), error
            # The OS's own error, with a note that names the task (notes are Python 3.11+).
            if sys.version_info >= (3, 11):
                assert any("'named'" in note for note in error.__notes__), error
        assert integrity(ws) == "ok"
    finally:
        shutil.rmtree(ws)


# -- containers that cannot be identified -------------------------------------------------


def test_a_self_referencing_argument_is_an_invalid_task(tmp_path):
    loop = []
    loop.append(loop)
    with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
        with pytest.raises(taskgraph.InvalidTaskError, match=r"'selfref'.*contains itself"):
            graph.add_task(r.identity, args=(loop,), task_name="selfref")
        assert graph.add_task(r.identity, args=(1,), store_result=True).get() == 1  # still usable


def test_an_int_too_large_for_str_is_an_argument_like_any_other(tmp_path):
    # Python refuses str() of an int of more than 4,300 digits; the record shows its size instead.
    big = 10**5000
    ws = str(tmp_path / "ws")
    for value, state in ((big, "ran"), (big, "skipped"), (big + 1, "ran")):
        with taskgraph.TaskGraph(ws, -1) as graph:
            task = graph.add_task(r.identity, args=(value,), store_result=True, task_name="big")
        assert (task.state, task.get()) == (state, value)
    assert [reason.code for reason in task.reasons] == ["arguments_changed"]
    assert "bits>" in task.reasons[0].detail


def test_a_dependency_from_another_graph_is_an_invalid_task(tmp_path):
    # The other graph's task has the same position (task_id 0) as one of this graph's.
    with taskgraph.TaskGraph(str(tmp_path / "a"), -1) as first, taskgraph.TaskGraph(str(tmp_path / "b"), -1) as second:
        theirs = first.add_task(r.identity, args=(1,), task_name="theirs")
        ours = second.add_task(r.identity, args=(2,), task_name="ours")
        with pytest.raises(taskgraph.InvalidTaskError, match=r"'joined'.*another TaskGraph.*same graph"):
            second.add_task(r.identity, args=(3,), dependent_task_list=[ours, theirs], task_name="joined")
        assert second.add_task(r.identity, args=(4,), dependent_task_list=[ours], store_result=True).get() == 4


def test_a_too_deeply_nested_argument_is_an_invalid_task(tmp_path):
    deep = []
    inner = deep
    for _ in range(5000):
        inner.append([])
        inner = inner[0]
    with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
        with pytest.raises(taskgraph.InvalidTaskError, match=r"'deep'.*nested too deeply"):
            graph.add_task(r.identity, args=(deep,), task_name="deep")
        assert graph.add_task(r.identity, args=(2,), store_result=True).get() == 2


def test_numpy_arrays_and_nan_identify_by_value(tmp_path):
    ws = str(tmp_path)
    ran_then_skipped(ws, func=r.identity, args=(np.arange(5),), store_result=True)
    assert run_once(ws, func=r.identity, args=(np.arange(6),), store_result=True).state == "ran"
    assert math.isnan(ran_then_skipped(ws, func=r.identity, args=(float("nan"),), store_result=True))


def test_bytes_naming_a_file_are_data_not_a_path(tmp_path):
    """Only str and os.PathLike arguments are paths: bytes are values."""
    source = tmp_path / "in.txt"
    source.write_text("one")
    ws = str(tmp_path)
    ran_then_skipped(ws, func=r.identity, args=(os.fsencode(source),), store_result=True)
    source.write_text("two, longer")
    assert run_once(ws, func=r.identity, args=(os.fsencode(source),), store_result=True).state == "skipped"


# -- callables ----------------------------------------------------------------------------


class Adder:
    def __init__(self, n=1):
        self.n = n

    def add(self, x):
        return x + self.n


_namespace = {}
exec("def no_source(x):\n    return x * 2\n", _namespace)


@pytest.mark.parametrize("n_workers", [-1, 2])
@pytest.mark.parametrize("label,func,args,expected", [
    ("lambda", lambda x: x + 1, (1,), 2),
    ("partial", functools.partial(r.identity, 3), (), 3),
    ("bound", Adder(2).add, (1,), 3),
    ("builtin", len, ([1, 2],), 2),
    ("no_source", _namespace["no_source"], (2,), 4),
    ("class", Adder, (5,), None),
])
def test_every_kind_of_callable(tmp_path, n_workers, label, func, args, expected):
    """Lambdas and functions without source work inline and in threads; in
    worker processes they cannot be pickled, which add_task says at once.
    Everything picklable works everywhere, and is skipped the next time."""
    ws = str(tmp_path)
    try:
        result = ran_then_skipped(ws, n_workers, func=func, args=args, store_result=True, task_name=label)
    except taskgraph.InvalidTaskError as error:
        assert n_workers > 0 and label in ("lambda", "no_source")
        assert f"'{label}'" in str(error) and "pickle" in str(error)
        return
    assert label not in ("lambda", "no_source") or n_workers <= 0
    if label == "class":
        assert isinstance(result, Adder) and result.n == 5
    else:
        assert result == expected


# -- files: symlinks, directories, targets that are inputs, relative paths ----------------


def test_symlink_input_follows_its_file_and_a_loop_is_not_an_input(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("one")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    ws = str(tmp_path)
    task = {"func": r.identity, "args": ((str(link), str(loop)),), "store_result": True}
    ran_then_skipped(ws, **task)
    real.write_text("two, longer")  # through the link: an input changed
    again = run_once(ws, **task)
    assert again.state == "ran" and [reason.code for reason in again.reasons] == ["input_changed"]


def test_a_directory_target_is_checked_by_its_own_stat(tmp_path):
    """A directory named as a target must exist after the task; it is
    fingerprinted like a file (size and mtime of the directory itself, which
    change when entries are added or removed, not when a file in it is
    rewritten)."""
    out = tmp_path / "out"
    ws = str(tmp_path)
    task = {"func": r.write_bytes, "args": (str(out / "a.bin"), 3), "target_path_list": [str(out)],
            "ignore_path_list": [str(out / "a.bin")]}  # written inside the target, not read
    out.mkdir()
    ran_then_skipped(ws, **task)
    (out / "extra.bin").write_bytes(b"new entry")
    later = os.stat(out).st_mtime_ns + 10**9
    os.utime(out, ns=(later, later))
    assert run_once(ws, **task).state == "ran"


def test_a_target_that_is_also_an_argument_is_only_a_target(tmp_path):
    """A path in the target list is never an input, even if it exists and is
    passed as an argument: a task that updates a file in place reruns when
    that file changes (as a changed target), not forever."""
    path = tmp_path / "state.bin"
    path.write_bytes(b"old")
    ws = str(tmp_path)
    task = {"func": r.write_bytes, "args": (str(path), 3), "target_path_list": [str(path)]}
    ran_then_skipped(ws, **task)
    path.write_bytes(b"changed!")
    again = run_once(ws, **task)
    assert again.state == "ran" and [reason.code for reason in again.reasons] == ["target_changed"]


def test_relative_paths_with_dotdot_are_normalised(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    source = tmp_path / "in.txt"
    source.write_text("one")
    monkeypatch.chdir(tmp_path / "sub")
    ws = str(tmp_path)
    ran_then_skipped(ws, func=r.identity, args=("../sub/../in.txt",), store_result=True)
    # The absolute spelling is the same argument, so the same task.
    assert run_once(ws, func=r.identity, args=(str(source),), store_result=True).state == "skipped"
    source.write_text("two, longer")
    again = run_once(ws, func=r.identity, args=("../sub/../in.txt",), store_result=True)
    assert [reason.code for reason in again.reasons] == ["input_changed"]
    assert again.reasons[0].path == str(source)


def test_a_symlink_target_is_written_through_and_checked_by_its_file(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = elsewhere / "real.bin"
    real.write_bytes(b"")
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    ws = str(tmp_path)
    task = {"func": r.write_bytes, "args": (str(link), 3), "target_path_list": [str(link)]}
    ran_then_skipped(ws, **task)
    assert link.is_symlink() and real.read_bytes() == b"xxx"
    real.write_bytes(b"changed!")
    again = run_once(ws, **task)
    assert again.state == "ran" and [reason.code for reason in again.reasons] == ["target_changed"]


class Scaler:
    """A callable instance: its state is part of the call."""

    def __init__(self, factor):
        self.factor = factor

    def __call__(self, x):
        return x * self.factor


@pytest.mark.parametrize("first,second,arg,expected", [
    (Adder(2).add, Adder(3).add, 1, 4),
    (Scaler(2), Scaler(3), 1, 3),
    ("abc".upper, "xyz".upper, None, "XYZ"),
    (functools.partial(r.identity, 3), functools.partial(r.identity, 4), None, 4),
])
def test_what_a_callable_is_bound_to_is_part_of_the_call(tmp_path, first, second, arg, expected):
    """Methods of two different instances (and two callable instances, two
    partials) are two different calls: the second is not skipped as if it
    were the first, and returns its own result."""
    ws = str(tmp_path)
    args = () if arg is None else (arg,)
    assert run_once(ws, func=first, args=args, store_result=True).state == "ran"
    task = run_once(ws, func=second, args=args, store_result=True)
    assert task.state == "ran" and task.get() == expected
    assert run_once(ws, func=second, args=args, store_result=True).state == "skipped"


@pytest.mark.parametrize("suffix", ["", "-wal", ".key", ".claims"])
def test_taskgraphs_own_files_cannot_be_targets(tmp_path, suffix):
    """A task that wrote the ledger (or its WAL, key, claims) would destroy
    it: add_task refuses, naming the task, and the graph stays usable."""
    own = str(tmp_path / (LEDGER + suffix))
    with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
        with pytest.raises(taskgraph.InvalidTaskError, match=r"'clobber'.*taskgraph's own files"):
            graph.add_task(r.write_bytes, args=(own, 3), target_path_list=[own], task_name="clobber")
        assert graph.add_task(r.identity, args=(1,), store_result=True).get() == 1
    assert integrity(str(tmp_path)) == "ok"


# -- arguments of the wrong kind: an InvalidTaskError at add_task, naming both ------------


@pytest.mark.parametrize("arguments,argument", [
    ({"args": 5}, "args"),
    ({"args": "abc"}, "args"),
    ({"args": {1, 2}}, "args"),
    ({"kwargs": {1: 2}}, "kwargs"),
    ({"kwargs": [("a", 1)]}, "kwargs"),
    ({"target_path_list": 5}, "target_path_list"),
    ({"target_path_list": "out.txt"}, "target_path_list"),
    ({"target_path_list": [""]}, "target_path_list"),
    ({"target_path_list": ["/"]}, "root directory"),
    ({"target_path_list": ["a\0b"]}, "NUL"),
    ({"ignore_path_list": 5}, "ignore_path_list"),
    ({"ignore_path_list": [5]}, "ignore_path_list"),
    ({"dependent_task_list": 5}, "dependent_task_list"),
    ({"task_name": 5}, "task_name"),
    ({"priority": float("nan")}, "priority"),
    ({"memory": 10**400}, "memory"),
    ({"expected_time": float("nan")}, "expected_time"),
])
def test_arguments_of_the_wrong_kind_are_invalid_tasks(tmp_path, arguments, argument):
    with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
        with pytest.raises(taskgraph.InvalidTaskError) as info:
            graph.add_task(r.identity, **{"args": (1,), "task_name": "picky", **arguments})
        message = str(info.value)
        assert isinstance(info.value, ValueError)  # as natcap raised
        assert argument in message and ("'picky'" in message or argument == "task_name"), message
        assert graph.add_task(r.identity, args=(1,), store_result=True).get() == 1  # still usable
    assert integrity(str(tmp_path)) == "ok"


def test_a_single_task_as_dependent_task_list_says_to_wrap_it(tmp_path):
    with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
        first = graph.add_task(r.identity, args=(1,))
        with pytest.raises(taskgraph.InvalidTaskError, match=r"'second'.*dependent_task_list.*\[task\]"):
            graph.add_task(r.identity, args=(2,), dependent_task_list=first, task_name="second")


@pytest.mark.parametrize("n_workers", [-1, 2])
def test_a_callable_whose_hash_raises_works(tmp_path, n_workers):
    """Nothing in taskgraph needs to hash the user's callable."""
    ws = str(tmp_path)
    assert ran_then_skipped(ws, n_workers, func=r.UnhashableCallable(3), store_result=True) == 3
    assert run_once(ws, n_workers, func=r.UnhashableCallable(4), store_result=True).get() == 4


# -- file names that are not valid UTF-8 -----------------------------------------------------


@pytest.mark.parametrize("n_workers", [-1, 2])
def test_file_names_that_are_not_utf8_work_as_inputs_and_targets(tmp_path, n_workers):
    """Names as os.listdir returns them on Linux (surrogate escapes) are
    stored as their bytes, exactly: the task runs, is skipped, and reruns
    when its input changes. Nothing hangs."""
    folder = os.fsencode(str(tmp_path))
    source = os.fsdecode(os.path.join(folder, b"in\xff.txt"))
    target = os.fsdecode(os.path.join(folder, b"out\xfe\xed.txt"))
    with open(source, "w") as stream:
        stream.write("one")
    ws = str(tmp_path)
    task = {"func": r.copy_file, "args": (source, target), "target_path_list": [target], "store_result": True}

    def run():
        graph = taskgraph.TaskGraph(ws, n_workers)
        added = graph.add_task(**task)
        graph.close()
        assert graph.join(timeout=60), "join() hung"
        return added

    assert run().state == "ran"
    again = run()
    assert again.state == "skipped" and again.get() == os.path.basename(target)
    with open(source, "w") as stream:
        stream.write("two, longer")
    changed = run()
    assert [reason.code for reason in changed.reasons] == ["input_changed"]
    assert changed.reasons[0].path == source
    con = sqlite3.connect(os.path.join(ws, LEDGER))
    stored = dict(con.execute("SELECT role, path FROM files"))
    con.close()
    assert stored == {"input": os.fsencode(source), "target": os.fsencode(target)}
    assert integrity(ws) == "ok"


def test_a_task_name_and_an_error_that_are_not_utf8_are_recorded(tmp_path):
    name = os.fsdecode(b"copy \xff")
    with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
        assert graph.add_task(r.identity, args=(1,), task_name=name).state == "ran"
    with pytest.raises(FileNotFoundError):
        with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
            graph.add_task(r.copy_file, args=(os.fsdecode(b"/missing\xff"), str(tmp_path / "x")), task_name=name)
    assert integrity(str(tmp_path)) == "ok"
    with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
        assert graph.add_task(r.identity, args=(1,), task_name=name).state == "skipped"


# -- a workspace deeper than SQLite can open -------------------------------------------------


def deep_directory(base, length):
    """A directory under ``base`` whose absolute path is ``length`` bytes long."""
    path = os.path.realpath(str(base))
    while len(path) < length:
        path = os.path.join(path, "d" * min(200, length - len(path) - 1))
    os.makedirs(path, exist_ok=True)
    assert len(os.fsencode(path)) == length
    return path


def test_a_workspace_too_deep_for_sqlite_names_the_real_limit(tmp_path):
    deep = deep_directory(tmp_path, 500)
    with pytest.raises(taskgraph.LedgerError) as info:
        taskgraph.TaskGraph(deep, -1)
    message = str(info.value)
    assert "500 bytes" in message and "at most 480 bytes" in message, message
    assert "disk is not full" not in message
    shallow = deep_directory(tmp_path / "s", 480)  # the longest that works
    with taskgraph.TaskGraph(shallow, -1) as graph:
        assert graph.add_task(r.identity, args=(1,), store_result=True).get() == 1


def test_a_ledger_moved_too_deep_is_refused_not_moved_aside(tmp_path):
    ws = tmp_path / "ws"
    with taskgraph.TaskGraph(str(ws), -1) as graph:
        graph.add_task(r.identity, args=(1,), store_result=True)
    deep = deep_directory(tmp_path / "deep", 470)
    moved = os.path.join(deep, "workspace-moved-here")
    os.rename(ws, moved)
    with open(os.path.join(moved, LEDGER), "rb") as stream:
        before = stream.read()
    with pytest.raises(taskgraph.LedgerError, match="at most 480 bytes"):
        taskgraph.TaskGraph(moved, -1)
    assert not [name for name in os.listdir(moved) if name.endswith(".bad")]
    with open(os.path.join(moved, LEDGER), "rb") as stream:
        assert stream.read() == before


# -- hypothesis: anything at all as add_task's arguments -------------------------------------


def _allowed(error):
    """What may come out of add_task: taskgraph's own errors, the user's own
    exceptions from their own objects, and (n_workers=-1) what the task's
    function raised, re-raised as itself with a note naming the task."""
    if isinstance(error, (taskgraph.TaskGraphError, r.UserError)):
        return True
    if sys.version_info < (3, 11):  # no exception notes: it must come from the task's call
        frames = traceback.extract_tb(error.__traceback__)
        return any(frame.name == "run_job" and frame.filename.endswith("_job.py") for frame in frames)
    return any("raised by taskgraph task" in note for note in getattr(error, "__notes__", ()))


_small = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
_any_text = st.text(max_size=12) | st.binary(max_size=12).map(os.fsdecode)  # with surrogate escapes
_path_entry = (st.sampled_from(["", "/", ".", "a\0b", "out.txt", "sub/out.txt", "http://host//x", "//"])
               | st.binary(min_size=1, max_size=8).map(lambda raw: "out-" + os.fsdecode(raw).replace("/", "_"))
               | st.integers() | st.none() | st.binary(max_size=4))
_path_list = st.none() | st.lists(_path_entry, max_size=3) | st.tuples(_path_entry) | _small | st.binary(max_size=4)
_flag = st.booleans() | st.none() | st.integers(-1, 2) | st.just(r.BadBool())
_number = (st.none() | st.integers(-3, 3) | st.integers(min_value=2**64)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=3) | st.booleans())
_FUNCS = {
    "none": None, "identity": r.identity, "len": len, "max": max, "partial": functools.partial(r.identity, 2),
    "method": Adder(1).add, "class": Adder, "instance": Scaler(2), "unhashable": r.UnhashableCallable(),
    "lambda": lambda *a, **k: 7, "int": 5, "str": "identity", "object": object(),
}
add_task_arguments = st.fixed_dictionaries({}, optional={
    "func": st.sampled_from(sorted(_FUNCS)),  # by name: hypothesis hashes what it samples
    "args": st.none() | st.lists(_small, max_size=3) | st.tuples(_small) | _small | st.dictionaries(_any_text, _small),
    "kwargs": st.none() | st.dictionaries(_any_text, _small, max_size=2) | st.dictionaries(st.integers(), _small)
              | st.lists(_small, max_size=2) | _small,
    "task_name": st.none() | _any_text | st.integers() | st.binary(max_size=4),
    "target_path_list": _path_list,
    "ignore_path_list": _path_list,
    "hash_target_files": _flag,
    "dependent_task_list": st.sampled_from(["none", "empty", "list", "single", "int", "strings", "foreign"]),
    "ignore_directories": _flag,
    "priority": _number,
    "hash_algorithm": st.sampled_from(["sizetimestamp", "exists", "xxh3_128", "md5", "nope", "shake_128", 5, None,
                                       ["md5"], b"md5"]),
    "transient_run": _flag,
    "store_result": _flag,
    "memory": _number,
    "expected_time": _number,
})


@settings(PROFILE)
@given(arguments=add_task_arguments)
def test_add_task_raises_only_its_own_errors_and_never_hangs(arguments):
    """Whatever add_task is given, it returns a Task or raises a
    TaskGraphError (or the user's own exception), within seconds; the ledger
    stays sound and the graph usable."""
    ws = tempfile.mkdtemp(prefix="taskgraph-args-")
    here = os.getcwd()
    os.chdir(ws)  # relative targets land in the workspace
    try:
        other = taskgraph.TaskGraph(os.path.join(ws, "other"), -1)
        foreign = other.add_task(r.identity, args=(0,))
        graph = taskgraph.TaskGraph(ws, -1)
        earlier = graph.add_task(r.identity, args=(-1,), task_name="earlier")
        deps = {"none": None, "empty": [], "list": [earlier], "single": earlier, "int": 5, "strings": ["earlier"],
                "foreign": [foreign]}
        arguments = dict(arguments)
        if "dependent_task_list" in arguments:
            arguments["dependent_task_list"] = deps[arguments["dependent_task_list"]]
        if "func" in arguments:
            arguments["func"] = _FUNCS[arguments["func"]]
        outcome = {}

        def call():
            try:
                outcome["task"] = graph.add_task(**arguments)
            except BaseException as error:  # judged below, in the test's thread
                outcome["error"] = error

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(timeout=60)
        assert not caller.is_alive(), f"add_task({arguments!r}) did not return"
        error = outcome.get("error")
        assert error is None or _allowed(error), f"{type(error).__name__}: {error}"
        try:
            graph.close()
            assert graph.join(timeout=60)
        except Exception as failure:  # the task's failure, raised again by join
            assert _allowed(failure), f"{type(failure).__name__}: {failure}"
        other.close()
        other.join(timeout=60)
        assert integrity(ws) == "ok"
        with taskgraph.TaskGraph(ws, -1) as again:  # the workspace still works
            assert again.add_task(r.identity, args=(-1,), task_name="earlier").state == "skipped"
    finally:
        os.chdir(here)
        shutil.rmtree(ws)


@pytest.mark.parametrize("bound", ["partial", "method"])
def test_a_closed_graph_keeps_no_task_function_alive(tmp_path, bound):
    """A partial or bound method used as a task function, and the (large)
    argument it holds, are freed once the graph is closed and dropped."""
    holder = Adder(1)
    holder.payload = bytearray(8 << 20)
    func = functools.partial(r.identity, holder) if bound == "partial" else holder.add
    args = () if bound == "partial" else (1,)
    with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
        task = graph.add_task(func, args=args, task_name=bound)
    assert task.state == "ran"
    alive = weakref.ref(holder)
    del holder, func, graph, task
    gc.collect()
    assert alive() is None
