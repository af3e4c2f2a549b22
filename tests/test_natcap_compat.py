"""natcap taskgraph 0.11.2's own test suite, run against this package.

The sdist is fetched with pip into a cache outside the repository
(``~/.cache/taskgraph-compat``, or ``$TASKGRAPH_COMPAT_CACHE``) and its
``tests/test_task.py`` is extracted into a temporary folder; nothing of it is
kept in the project. Its tests then run with pytest in a subprocess, importing
*this* ``taskgraph``. No network and no cached copy: the test is skipped.

``DESELECTED`` lists the natcap tests that reach into natcap's private helpers,
threads, database table or files; every other test must pass. ``XFAIL`` is for
natcap tests that fail because our public behaviour differs: they are run and
marked ``xfail(strict=True)``, so the list stays honest both ways. It is empty:
no public-API test fails. docs/natcap-compat.md explains each entry.

The second half of this file checks, with our own tests, the guarantees the
deselected natcap tests were after, through what replaces natcap's internals
here: ``Task.key``, ``taskgraph._identity.normalize_path``,
``taskgraph._fingerprint.take`` and the ledger's ``tasks``, ``files`` and
``results`` tables.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import xml.etree.ElementTree as ElementTree

import pytest

import taskgraph
from taskgraph._fingerprint import take
from taskgraph._identity import normalize_path

VERSION = "0.11.2"
SDIST = f"taskgraph-{VERSION}.tar.gz"
SDIST_SHA256 = "1df18759418150e74c54dfd7c23d1272974e88e7f96257de3ec65156ef1de532"
MEMBER = f"taskgraph-{VERSION}/tests/test_task.py"
CACHE = os.environ.get("TASKGRAPH_COMPAT_CACHE") or os.path.join(
    os.path.expanduser("~"), ".cache", "taskgraph-compat"
)

#: natcap tests that test natcap's internals, not its public API.
DESELECTED = {
    "test_get_file_stats": "imports the private helper taskgraph.Task._get_file_stats",
    "test_very_long_string": "imports the private helper taskgraph.Task._get_file_stats",
    "test_filter_non_files": "imports the private helpers taskgraph.Task._filter_non_files and _normalize_path",
    "test_kwargs_hashed": "compares the private attribute Task._task_id_hash",
    "test_same_timestamp_and_value": "compares the private attribute Task._task_id_hash",
    "test_empty_task": "reads natcap's private SQLite table taskgraph_data",
    "test_task_chain_single_thread": "counts the rows of natcap's private SQLite table taskgraph_data",
    "test_malformed_taskgraph_database": "expects natcap's private taskgraph_data table to be repaired in place",
    "test_terminate_log": "joins the private threads TaskGraph._logging_monitor_thread and "
                          "_execution_monitor_thread",
    "test_history_rst_format": "runs rstcheck on natcap's own HISTORY.rst (natcap's release notes, not code)",
}

#: natcap tests that fail because our public behaviour differs (none so far).
XFAIL: dict[str, str] = {}

RETRYING_SHIM = textwrap.dedent('''\
    """Stand-in for the ``retrying`` package: only ``retry`` with exponential waits."""
    import functools
    import time


    def retry(stop_max_attempt_number=5, wait_exponential_multiplier=1, wait_exponential_max=1000, **_):
        def decorate(func):
            @functools.wraps(func)
            def call(*args, **kwargs):
                attempt = 1
                while True:
                    try:
                        return func(*args, **kwargs)
                    except Exception:
                        if attempt >= stop_max_attempt_number:
                            raise
                    time.sleep(min(wait_exponential_multiplier * 2 ** attempt, wait_exponential_max) / 1000.0)
                    attempt += 1
            return call
        return decorate
''')

CONFTEST = textwrap.dedent('''\
    import json
    import os

    import pytest

    import taskgraph

    XFAIL = json.loads(os.environ["COMPAT_XFAIL"])


    def pytest_configure(config):
        expected = os.environ["COMPAT_EXPECT_TASKGRAPH"]
        if os.path.realpath(taskgraph.__file__) != os.path.realpath(expected):
            raise pytest.UsageError(f"imported {taskgraph.__file__}, not the package under test {expected}")


    def pytest_collection_modifyitems(items):
        for item in items:
            if item.name in XFAIL:
                item.add_marker(pytest.mark.xfail(reason=XFAIL[item.name], strict=True))
''')


def _sha256(path):
    with open(path, "rb") as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def _sdist():
    """The cached sdist, downloaded with pip on first use; skips the test if that fails."""
    archive = os.path.join(CACHE, SDIST)
    if os.path.exists(archive) and _sha256(archive) == SDIST_SHA256:
        return archive
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as download:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--disable-pip-version-check", f"taskgraph=={VERSION}", "-d", download]
        try:
            process = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.skip(f"pip download of natcap taskgraph {VERSION} timed out (no network?)")
        fetched = os.path.join(download, SDIST)
        if process.returncode != 0 or not os.path.exists(fetched):
            pytest.skip(
                f"cannot fetch natcap taskgraph {VERSION}'s sdist (no network?): `{' '.join(command)}` "
                f"exited {process.returncode}: {process.stderr.strip()[-400:]}"
            )
        digest = _sha256(fetched)
        assert digest == SDIST_SHA256, f"{SDIST} from PyPI has sha256 {digest}, expected {SDIST_SHA256}"
        os.replace(fetched, archive)
    return archive


@pytest.fixture(scope="module")
def natcap_suite(tmp_path_factory):
    """A folder holding natcap's test_task.py and what it needs to run; the file's text."""
    folder = tmp_path_factory.mktemp("natcap-suite")
    with tarfile.open(_sdist()) as tar:
        source = tar.extractfile(MEMBER).read()
    (folder / "test_task.py").write_bytes(source)
    if importlib.util.find_spec("retrying") is None:
        (folder / "retrying.py").write_text(RETRYING_SHIM)
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "pytest.ini").write_text("[pytest]\n")  # keep this repository's settings out
    return folder, source.decode("utf-8")


def _outcomes(report):
    outcomes = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        skipped = case.find("skipped")
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif skipped is not None:
            outcome = "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
        else:
            outcome = "passed"
        if outcomes.get(case.get("name")) != "failed":  # a teardown error is a second entry
            outcomes[case.get("name")] = outcome
    return outcomes


def test_natcap_suite_passes_against_this_package(natcap_suite):
    folder, source = natcap_suite
    natcap_tests = set(re.findall(r"^    def (test_\w+)\(self", source, re.MULTILINE))
    assert len(natcap_tests) == 46
    assert set(DESELECTED) <= natcap_tests, set(DESELECTED) - natcap_tests
    assert set(XFAIL) <= natcap_tests - set(DESELECTED), set(XFAIL)

    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])),
        COMPAT_EXPECT_TASKGRAPH=taskgraph.__file__,
        COMPAT_XFAIL=json.dumps(XFAIL),
    )
    command = [sys.executable, "-m", "pytest", "test_task.py", "-q", "-p", "no:cacheprovider",
               "--junitxml=report.xml", "-o", "junit_family=xunit2",
               *(f"--deselect=test_task.py::TaskGraphTests::{name}" for name in sorted(DESELECTED))]
    if importlib.util.find_spec("pytest_timeout") is not None:
        command.append("--timeout=120")
    process = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    output = process.stdout[-6000:] + process.stderr[-2000:]
    assert (folder / "report.xml").exists(), output
    outcomes = _outcomes(folder / "report.xml")

    assert set(outcomes) == natcap_tests - set(DESELECTED), output
    unexpected = {name: outcome for name, outcome in outcomes.items()
                  if outcome != ("xfailed" if name in XFAIL else "passed")}
    assert not unexpected, f"natcap tests with unexpected outcomes: {unexpected}\n{output}"
    assert process.returncode == 0, output


# -- what the deselected tests were after, checked through our own API ------------------------
# These graphs run inline or in a thread (n_workers <= 0), so their functions
# need not be importable by worker processes; the one with a worker uses a builtin.


def _write(path, text):
    with open(path, "w") as stream:
        stream.write(text)


def _concat(in_paths, out_path):
    with open(out_path, "w") as out:
        for path in in_paths:
            with open(path) as stream:
                out.write(stream.read())


def _accept(*args, **kwargs):
    return None


def _add(a, b):
    return a + b


def _rows(workspace, sql, *params):
    connection = sqlite3.connect(os.path.join(workspace, taskgraph.LEDGER_FILENAME))
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def _inputs(workspace, task):
    rows = _rows(workspace, "SELECT path FROM files WHERE record_key=? AND role='input'", task.key)
    return sorted(path for (path,) in rows)


def test_a_task_without_function_is_recorded_and_skipped_next_time(tmp_path):
    # natcap records it too (its own test_empty_task reads the table with
    # executescript(), which returns no rows, so its assertion always holds).
    with taskgraph.TaskGraph(tmp_path, 0) as graph:
        first = graph.add_task()
    assert first.state == "ran"
    assert _rows(tmp_path, "SELECT state FROM tasks WHERE record_key=?", first.key) == [("done",)]
    with taskgraph.TaskGraph(tmp_path, 0) as graph:
        again = graph.add_task()
    assert again.state == "skipped"


def test_a_script_may_keep_its_own_attributes_on_a_task(tmp_path):
    # natcap's Task is a plain class: pipelines hang their own notes on the tasks.
    with taskgraph.TaskGraph(tmp_path, -1) as graph:
        task = graph.add_task(task_name="join")
        task.output_raster = "dem.tif"
        assert task.output_raster == "dem.tif" and vars(task) == {"output_raster": "dem.tif"}


def test_a_chain_with_one_duplicate_leaves_one_record_per_distinct_task(tmp_path):
    a, b, ab, aab = (str(tmp_path / name) for name in ("a.txt", "b.txt", "ab.txt", "aab.txt"))
    with taskgraph.TaskGraph(tmp_path, -1) as graph:
        make_a = graph.add_task(_write, args=(a, "a"), target_path_list=[a])
        make_b = graph.add_task(_write, args=(b, "b"), target_path_list=[b])
        join_ab = graph.add_task(_concat, args=([a, b], ab), target_path_list=[ab],
                                 dependent_task_list=[make_a, make_b])
        first = graph.add_task(_concat, args=([a, ab], aab), target_path_list=[aab],
                               dependent_task_list=[join_ab], task_name="first")
        duplicate = graph.add_task(_concat, args=([a, ab], aab), target_path_list=[aab],
                                   dependent_task_list=[join_ab], task_name="duplicate")
    assert duplicate is first
    assert sorted(key for (key,) in _rows(tmp_path, "SELECT record_key FROM tasks")) == sorted(
        task.key for task in (make_a, make_b, join_ab, first))
    assert open(aab).read() == "aab"


def test_a_foreign_database_in_place_of_the_ledger_is_moved_aside(tmp_path):
    ledger = tmp_path / taskgraph._TASKGRAPH_DATABASE_FILENAME
    connection = sqlite3.connect(ledger)
    connection.execute("CREATE TABLE taskgraph_data (bad_name_1 TEXT NOT NULL, bad_name_2 BLOB NOT NULL)")
    connection.commit()
    connection.close()
    with taskgraph.TaskGraph(tmp_path, 0) as graph:
        task = graph.add_task(_add, args=(1, 2), store_result=True)
    assert task.get() == 3
    assert [name for name in os.listdir(tmp_path) if name.endswith(".bad")]
    assert _rows(tmp_path, "SELECT COUNT(*) FROM tasks") == [(1,)]
    assert _rows(tmp_path, "SELECT COUNT(*) FROM results WHERE key=?", task.key) == [(1,)]


@pytest.mark.parametrize("ignore_directories", [True, False])
def test_inputs_are_the_existing_files_in_nested_arguments(tmp_path, ignore_directories):
    folder = tmp_path / "folder"
    folder.mkdir()
    data = folder / "data.txt"
    data.write_text("1\n")
    missing = tmp_path / "missing.txt"
    arguments = [str(missing), str(folder), str(data), 10, {"a": {"b": str(data)}}, {"a": {"b": folder, "c": 9}}]
    with taskgraph.TaskGraph(tmp_path, -1) as graph:
        task = graph.add_task(_accept, args=(arguments,), ignore_directories=ignore_directories)
    expected = [normalize_path(data)] if ignore_directories else sorted([normalize_path(data), normalize_path(folder)])
    assert _inputs(tmp_path, task) == expected


def test_ignore_path_list_and_targets_are_not_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("kept.txt", "ignored.txt"):
        (tmp_path / name).write_text(name)
    out = "out.txt"
    with taskgraph.TaskGraph(tmp_path, -1) as graph:
        task = graph.add_task(
            _concat, args=(["kept.txt", str(tmp_path / "ignored.txt")], out), target_path_list=[out],
            ignore_path_list=["./ignored.txt"], ignore_directories=False)
    assert normalize_path("./ignored.txt") == normalize_path(tmp_path / "ignored.txt")
    assert _inputs(tmp_path, task) == [normalize_path(tmp_path / "kept.txt")]
    assert task.target_path_list == [normalize_path(tmp_path / out)]


def test_very_long_strings_are_not_paths(tmp_path):
    strings = ["c:" + r"\\\\x\\\\" * 2 ** 10 + "foo", "not a path " * 2 ** 11, "a/b" * 5000]
    for text in strings:
        assert take(text, "sizetimestamp") is None
    with taskgraph.TaskGraph(tmp_path, -1) as graph:
        task = graph.add_task(_accept, args=(strings,))
    assert task.state == "ran"
    assert _inputs(tmp_path, task) == []


def test_keyword_arguments_and_file_names_count_in_the_identity(tmp_path):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    for path in (first, second):
        path.write_text("same")
        os.utime(path, ns=(10**18, 10**18))
    assert take(str(first), "sizetimestamp").mtime_ns == take(str(second), "sizetimestamp").mtime_ns
    with taskgraph.TaskGraph(tmp_path, -1) as graph:
        kw_a = graph.add_task(_accept, kwargs={"content": ["value a"]})
        kw_b = graph.add_task(_accept, kwargs={"content": ["value b"]})
        path_a = graph.add_task(_accept, kwargs={"path": str(first)})
        path_b = graph.add_task(_accept, kwargs={"path": str(second)})
    assert kw_a.key != kw_b.key and kw_a != kw_b
    assert path_a.key != path_b.key and path_a != path_b


def test_join_keeps_the_graph_open_and_close_then_join_stops_every_thread(tmp_path):
    before = set(threading.enumerate())
    graph = taskgraph.TaskGraph(tmp_path, 1, reporting_interval=5.0)
    graph.add_task()
    assert graph.join()
    later = graph.add_task(pow, args=(2, 3), store_result=True)
    assert later.get() == 8
    graph.close()
    assert graph.join()
    for thread in set(threading.enumerate()) - before:
        thread.join(5)
        assert not thread.is_alive(), thread
