"""Hostile and odd input to ``add_task`` and the file checks. Each case either
works with the meaning documented in docs/reliability.md or raises a
``TaskGraphError`` subclass naming the task; never a hang, a scheduler crash
or a damaged ledger."""

import functools
import math
import os
import shutil
import sqlite3
import tempfile

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
            assert any("named" in note for note in getattr(error, "__notes__", ["named"]))
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
