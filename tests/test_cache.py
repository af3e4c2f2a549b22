"""The shared target cache (``TaskGraph(cache=...)``): real workspaces, real
processes, real SIGKILL, real corrupt files and a real full disk.

The long kill loop is ``tests/stress/cache_kill_loop.py``; a few kills of it
run here.
"""

import collections
import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid

import cache_funcs as f
import cache_workload
import disks
import pytest
from procs import child_pids, no_new_children, processes_marked

import taskgraph
from taskgraph import _cli
from taskgraph._cache import Cache
from taskgraph._cache_admin import prune, scan, verify

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(TESTS, "stress"))

import cache_kill_loop  # noqa: E402

WORKLOAD = os.path.join(TESTS, "cache_workload.py")
EXAMPLE = os.path.join(TESTS, os.pardir, "examples", "raster_pipeline.py")


@pytest.fixture(autouse=True)
def journal(tmp_path, monkeypatch):
    """Where the task functions journal their executions."""
    path = tmp_path / "journal.txt"
    monkeypatch.setenv(f.JOURNAL_ENV, str(path))
    monkeypatch.delenv("TASKGRAPH_CACHE", raising=False)
    monkeypatch.delenv("TASKGRAPH_CACHE_KEY", raising=False)
    return path


@pytest.fixture
def team_key(tmp_path):
    path = tmp_path / "team.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


def chain(graph, ws, text="hello"):
    """source -> upper -> concat, with a stored result beside them."""
    ws = str(ws)
    source, shout, both = (os.path.join(ws, name) for name in ("source.txt", "shout.txt", "both.txt"))
    a = graph.add_task(f.write_text, args=(source, text), target_path_list=[source], task_name="source")
    b = graph.add_task(f.upper, args=(source, shout), target_path_list=[shout], dependent_task_list=[a],
                       task_name="upper")
    c = graph.add_task(f.concat, args=(both, source, shout), target_path_list=[both], dependent_task_list=[a, b],
                       task_name="concat")
    return [a, b, c]


def run_chain(ws, cache, n_workers=0, **kwargs):
    with taskgraph.TaskGraph(str(ws), n_workers, cache=str(cache), progress=False, **kwargs) as graph:
        tasks = chain(graph, ws)
    return tasks


def files_of(ws):
    found = {}
    for folder, _, names in os.walk(ws):
        for name in names:
            if not name.startswith("taskgraph_ledger"):
                path = os.path.join(folder, name)
                with open(path, "rb") as stream:
                    found[os.path.relpath(path, ws)] = stream.read()
    return found


def entries(cache):
    return scan(Cache(str(cache))).parsed


# -- a second workspace -------------------------------------------------------------------------


def test_a_second_workspace_restores_every_task_and_runs_no_function(tmp_path, journal):
    cache = tmp_path / "cache"
    first = run_chain(tmp_path / "A", cache)
    assert [task.state for task in first] == ["ran"] * 3
    assert len(f.executions(journal)) == 3
    second = run_chain(tmp_path / "B", cache)
    assert [task.state for task in second] == ["restored"] * 3
    assert len(f.executions(journal)) == 3  # B executed no function
    assert files_of(tmp_path / "A") == files_of(tmp_path / "B")
    for task in second:
        reason = task.reasons[0]
        assert reason.code == "restored_from_cache"
        assert str(reason).startswith("restored from cache (made on ") and " by " in str(reason)
    # B's ledger recorded them like runs: a rerun of B skips them, and an
    # edit of a restored target reruns its task there.
    assert [task.state for task in run_chain(tmp_path / "B", cache)] == ["skipped"] * 3


def test_statistics_report_and_progress_count_restored_tasks(tmp_path, caplog):
    cache = tmp_path / "cache"
    run_chain(tmp_path / "A", cache)
    with caplog.at_level(logging.INFO, logger="taskgraph"):
        # progress=True with stderr not a terminal: progress lines through the logger
        with taskgraph.TaskGraph(str(tmp_path / "B"), 0, cache=str(cache), progress=True) as graph:
            chain(graph, tmp_path / "B")
    stats = graph.statistics()
    assert (stats.ran, stats.restored, stats.skipped) == (0, 3, 0)
    assert stats.restored_bytes == sum(len(data) for data in files_of(tmp_path / "B").values())
    assert [report.state for report in graph.report()] == ["restored"] * 3
    final = [record.getMessage() for record in caplog.records if record.name == "taskgraph"][-1]
    assert final.startswith("3/3 done: 0 ran, 3 restored (0 MiB), 0 skipped"), final


@pytest.mark.parametrize("n_workers", [-1, 2])
def test_restores_work_with_inline_and_process_workers(tmp_path, journal, n_workers):
    cache = tmp_path / "cache"
    run_chain(tmp_path / "A", cache, n_workers=0)
    before = child_pids()
    tasks = run_chain(tmp_path / "B", cache, n_workers=n_workers)
    assert [task.state for task in tasks] == ["restored"] * 3
    assert len(f.executions(journal)) == 3
    assert files_of(tmp_path / "A") == files_of(tmp_path / "B")
    assert no_new_children(before)


def test_the_key_ignores_where_the_workspace_is_and_how_paths_are_spelled(tmp_path, monkeypatch, journal):
    cache = tmp_path / "cache"
    run_chain(tmp_path / "deep" / "down" / "A", cache)
    (tmp_path / "B").mkdir()
    monkeypatch.chdir(tmp_path)
    tasks = run_chain("B", cache)  # relative spellings in another directory
    assert [task.state for task in tasks] == ["restored"] * 3
    assert len(f.executions(journal)) == 3


def test_input_files_count_by_content_not_by_path(tmp_path, journal):
    cache = tmp_path / "cache"
    for ws, name, text in (("A", "in.txt", "same"), ("B", "renamed.txt", "same"), ("C", "in.txt", "other")):
        (tmp_path / ws).mkdir()
        source = tmp_path / ws / name
        source.write_text(text)
        out = str(tmp_path / ws / "out.txt")
        with taskgraph.TaskGraph(str(tmp_path / ws), 0, cache=str(cache), progress=False) as graph:
            task = graph.add_task(f.upper, args=(str(source), out), target_path_list=[out])
        assert task.state == {"A": "ran", "B": "restored", "C": "ran"}[ws]
        assert (tmp_path / ws / "out.txt").read_text() == text.upper()
    assert f.executions(journal) == ["upper:out.txt", "upper:out.txt"]


def test_targets_are_restored_at_the_place_the_arguments_give_them(tmp_path, journal):
    """Labels follow the arguments, not the target list's order: the first
    half goes where the first argument says, in any workspace."""
    cache = tmp_path / "cache"
    for ws, names in (("A", ("x1.txt", "x2.txt")), ("B", ("z.txt", "a.txt"))):
        folder = tmp_path / ws
        folder.mkdir()
        (folder / "src.txt").write_text("abcdef")
        first, second = (str(folder / name) for name in names)
        with taskgraph.TaskGraph(str(folder), 0, cache=str(cache), progress=False) as graph:
            task = graph.add_task(f.split, args=(str(folder / "src.txt"), first, second),
                                  target_path_list=[second, first])
            named = graph.add_task(f.write_named, args=(str(folder), "named.txt", "n"),
                                   target_path_list=[str(folder / "named.txt")])
        assert (task.state, named.state) == (("ran", "ran") if ws == "A" else ("restored", "restored"))
        assert (open(first).read(), open(second).read()) == ("abc", "def")
        assert (folder / "named.txt").read_text() == "n"
    assert len(f.executions(journal)) == 2


def test_a_changed_input_reruns_exactly_its_dependents_and_puts_new_entries(tmp_path, journal):
    cache = tmp_path / "cache"
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "in1.txt").write_text("one")
    (ws / "in2.txt").write_text("two")

    def build(graph):
        one, two = str(ws / "one.txt"), str(ws / "two.txt")
        a = graph.add_task(f.upper, args=(str(ws / "in1.txt"), one), target_path_list=[one], task_name="a")
        b = graph.add_task(f.upper, args=(str(ws / "in2.txt"), two), target_path_list=[two], task_name="b")
        c = graph.add_task(f.concat, args=(str(ws / "both.txt"), one, two), target_path_list=[str(ws / "both.txt")],
                           dependent_task_list=[a, b], task_name="c")
        return [a, b, c]

    with taskgraph.TaskGraph(str(ws), 0, cache=str(cache), progress=False) as graph:
        build(graph)
    count = len(entries(cache))
    (ws / "in2.txt").write_text("TWO, edited")
    with taskgraph.TaskGraph(str(ws), 0, cache=str(cache), progress=False) as graph:
        tasks = build(graph)
    assert [task.state for task in tasks] == ["skipped", "ran", "ran"]
    assert len(entries(cache)) == count + 2
    assert (ws / "both.txt").read_text() == "ONETWO, EDITED"


# -- what is and is not cached ------------------------------------------------------------------


def test_stored_results_are_shared_only_with_a_key_file(tmp_path, journal, team_key):
    cache = tmp_path / "cache"

    def run(ws, **kwargs):
        (tmp_path / ws).mkdir(exist_ok=True)
        source = tmp_path / ws / "src.txt"
        source.write_text("12345")
        with taskgraph.TaskGraph(str(tmp_path / ws), 0, cache=str(cache), progress=False, **kwargs) as graph:
            counted = graph.add_task(f.count_chars, args=(str(source),), store_result=True, task_name="count")
            out = str(tmp_path / ws / "out.txt")
            made = graph.add_task(f.upper, args=(str(source), out), target_path_list=[out], task_name="upper")
        return counted, made

    counted, _ = run("A")
    assert counted.state == "ran" and counted.get() == {"chars": 5}
    counted, made = run("B")  # no key: the result is not shared, the target is
    assert (counted.state, made.state) == ("ran", "restored")
    run("C", cache_key=str(team_key))
    counted, made = run("D", cache_key=str(team_key))
    assert (counted.state, made.state) == ("restored", "restored")
    assert counted.get() == {"chars": 5}
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    counted, made = run("E", cache_key=str(other))  # another team's key: the pickle is not trusted
    assert (counted.state, made.state) == ("ran", "restored")
    assert [name.split(":")[0] for name in f.executions(journal)].count("count_chars") == 4


def test_directories_tasks_without_targets_and_transient_tasks_are_not_cached(tmp_path, journal):
    cache = tmp_path / "cache"
    for ws in ("A", "B"):
        folder = tmp_path / ws
        folder.mkdir()
        with taskgraph.TaskGraph(str(folder), 0, cache=str(cache), progress=False) as graph:
            made = graph.add_task(f.make_dir, args=(str(folder / "d"),), target_path_list=[str(folder / "d")])
            valued = graph.add_task(f.value, args=(3,), store_result=True)
            transient = graph.add_task(f.write_text, args=(str(folder / "t.txt"), "t"),
                                       target_path_list=[str(folder / "t.txt")], transient_run=True)
        assert {made.state, valued.state, transient.state} == {"ran"}
    assert len(f.executions(journal)) == 6
    assert entries(cache) == {}


def test_up_to_date_tasks_never_consult_the_cache(tmp_path):
    cache = tmp_path / "cache"
    run_chain(tmp_path / "A", cache)
    for name in ("entries", "objects", "runs"):
        shutil.rmtree(cache / name)
    tasks = run_chain(tmp_path / "A", cache)
    assert [task.state for task in tasks] == ["skipped"] * 3
    assert not any((cache / name).exists() and os.listdir(cache / name) for name in ("entries", "objects", "runs"))


def test_environment_variables_set_the_cache_and_false_turns_it_off(tmp_path, monkeypatch, journal, team_key):
    monkeypatch.setenv("TASKGRAPH_CACHE", str(tmp_path / "envcache"))
    monkeypatch.setenv("TASKGRAPH_CACHE_KEY", str(team_key))
    with taskgraph.TaskGraph(str(tmp_path / "A"), 0, progress=False) as graph:
        chain(graph, tmp_path / "A")
        graph.add_task(f.value, args=(2,), store_result=True)
    with taskgraph.TaskGraph(str(tmp_path / "B"), 0, progress=False) as graph:
        tasks = [*chain(graph, tmp_path / "B"), graph.add_task(f.value, args=(2,), store_result=True)]
    assert [task.state for task in tasks] == ["restored"] * 4 and tasks[-1].get() == 4
    with taskgraph.TaskGraph(str(tmp_path / "C"), 0, progress=False, cache=False) as graph:
        tasks = chain(graph, tmp_path / "C")
    assert [task.state for task in tasks] == ["ran"] * 3


def test_a_cache_that_cannot_be_used_is_a_warning_and_the_graph_runs(tmp_path, caplog):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    with caplog.at_level(logging.WARNING, logger="taskgraph.Task"):
        tasks = run_chain(tmp_path / "A", not_a_directory)
    assert [task.state for task in tasks] == ["ran"] * 3
    assert "the cache is not used" in caplog.text
    with pytest.raises(taskgraph.InvalidTaskError, match="cache must be"):
        taskgraph.TaskGraph(str(tmp_path / "B"), 0, cache=True)


def test_a_dry_run_neither_reads_nor_writes_the_cache(tmp_path):
    cache = tmp_path / "cache"
    run_chain(tmp_path / "A", cache)
    with taskgraph.TaskGraph(str(tmp_path / "B"), 0, cache=str(cache), dry_run=True, progress=False) as graph:
        tasks = chain(graph, tmp_path / "B")
    assert [task.state for task in tasks] == ["would-run"] * 3
    assert not (tmp_path / "B").exists()


# -- damage -------------------------------------------------------------------------------------


def damage(cache, how):
    """Damage the object of the 'upper' task's target, or its manifest."""
    entry = next(entry for entry in entries(cache).values() if entry.task == "upper")
    if how == "manifest":
        path = Cache(str(cache)).entry_path(entry.key)
        data = bytearray(open(path, "rb").read())
        data[-3] ^= 0xFF
    else:
        path = Cache(str(cache)).object_path(entry.targets[0].digest)
        data = bytearray(open(path, "rb").read())
        if how == "flip":
            data[0] ^= 0xFF
        else:
            data = data[:-1]
    os.chmod(path, 0o644)
    with open(path, "wb") as stream:
        stream.write(data)
    return entry


@pytest.mark.parametrize("how", ["flip", "truncate", "manifest"])
def test_a_damaged_entry_is_detected_ignored_reported_and_repaired(tmp_path, journal, caplog, how):
    cache = tmp_path / "cache"
    run_chain(tmp_path / "A", cache)
    damage(cache, how)
    report = verify(Cache(str(cache)))
    assert len(report.bad) == 1
    assert _cli.main(["cache", "verify", str(cache)]) == 1
    with caplog.at_level(logging.WARNING, logger="taskgraph.Task"):
        tasks = run_chain(tmp_path / "B", cache)
    assert [task.state for task in tasks] == ["restored", "ran", "restored"]
    assert ("corrupt" if how != "manifest" else "damaged") in caplog.text
    assert (tmp_path / "B" / "shout.txt").read_text() == "HELLO"  # never the damaged bytes
    report = verify(Cache(str(cache)))
    assert report.bad == {}  # the run put a good entry again
    assert report.quarantined == (0 if how == "manifest" else 1)


def test_verify_repair_and_prune_clear_damage(tmp_path, capsys):
    cache = tmp_path / "cache"
    run_chain(tmp_path / "A", cache)
    damage(cache, "flip")
    assert _cli.main(["cache", "verify", str(cache), "--repair"]) == 0
    assert "repaired" in capsys.readouterr().out
    report = verify(Cache(str(cache)))
    assert len(report.bad) == 1 and report.quarantined == 1 and report.bad_objects == {}
    assert _cli.main(["cache", "verify", str(cache), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["quarantined"] == 1


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (root only): a disk that really fills up."""
    with disks.small_tmpfs(tmp_path, "1m") as mount_point:
        yield mount_point


@pytest.mark.parametrize("n_workers", [0, 2])
def test_a_full_disk_while_putting_is_a_warning_and_the_task_succeeds(tmp_path, small_tmpfs, caplog, n_workers):
    cache = small_tmpfs / "cache"
    ws = tmp_path / "ws"
    ws.mkdir()
    with caplog.at_level(logging.WARNING, logger="taskgraph.Task"):
        with taskgraph.TaskGraph(str(ws), n_workers, cache=str(cache), progress=False) as graph:
            small = graph.add_task(f.write_bytes, args=(str(ws / "small.bin"), 1000),
                                   target_path_list=[str(ws / "small.bin")])
            big = graph.add_task(f.write_bytes, args=(str(ws / "big.bin"), 3 << 20),
                                 target_path_list=[str(ws / "big.bin")])
    assert (small.state, big.state) == ("ran", "ran")
    assert os.path.getsize(ws / "big.bin") == 3 << 20
    assert "its cache entry was not stored" in caplog.text and "No space left on device" in caplog.text
    report = verify(Cache(str(cache)))
    assert report.bad == {} and report.entries == 1 and report.leftovers == 0


def test_a_team_cache_keeps_its_permissions_whatever_the_umask(tmp_path):
    cache = tmp_path / "team-cache"
    cache.mkdir()
    cache.chmod(0o2775)  # group-writable, new files in the group
    old = os.umask(0o077)
    try:
        run_chain(tmp_path / "A", cache)
    finally:
        os.umask(old)
    store = Cache(str(cache))
    entry = next(iter(entries(cache).values()))
    for folder in ("objects", "entries", os.path.dirname(store.object_path(entry.targets[0].digest)),
                   os.path.dirname(store.entry_path(entry.key))):
        assert os.stat(os.path.join(cache, folder)).st_mode & 0o7777 == 0o2775, folder
    assert os.stat(cache / "locks").st_mode & 0o777 == 0o664
    assert os.stat(store.entry_path(entry.key)).st_mode & 0o777 == 0o664
    assert os.stat(store.object_path(entry.targets[0].digest)).st_mode & 0o777 == 0o444


# -- managing the cache -------------------------------------------------------------------------


def test_stats_status_and_explain_show_hits(tmp_path, capsys):
    cache = tmp_path / "cache"
    run_chain(tmp_path / "A", cache)
    run_chain(tmp_path / "B", cache)
    capsys.readouterr()
    assert _cli.main(["cache", "stats", str(cache), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["entries"] == 3 and stats["objects"] == 3
    assert stats["recent_totals"]["hits"] == 3 and stats["recent_totals"]["misses"] == 3
    assert _cli.main(["cache", "stats", str(cache)]) == 0
    assert "3 hits, 3 misses (50% hit rate)" in capsys.readouterr().out
    assert _cli.main(["status", str(tmp_path / "B")]) == 0
    out = capsys.readouterr().out
    assert "3 restored" in out and "MiB from the cache" in out
    assert _cli.main(["explain", str(tmp_path / "B"), "upper"]) == 0
    out = capsys.readouterr().out
    assert "restored from the shared cache" in out and "restored from cache (made on" in out
    assert _cli.main(["cache", "stats", str(tmp_path)]) == 1  # not a cache: refused
    assert "not a taskgraph cache" in capsys.readouterr().err


def test_prune_removes_least_recently_used_entries_first(tmp_path, capsys):
    cache = tmp_path / "cache"
    for index in range(4):
        ws = tmp_path / f"ws{index}"
        ws.mkdir()
        with taskgraph.TaskGraph(str(ws), 0, cache=str(cache), progress=False) as graph:
            graph.add_task(f.write_bytes, args=(str(ws / "out.bin"), 1000 * (index + 1)),
                           target_path_list=[str(ws / "out.bin")], task_name=f"w{index}")
    store = Cache(str(cache))
    old = time.time() - 3600
    for key, entry in entries(cache).items():
        used = old + int(entry.task[1:])  # w0 is the least recently used
        os.utime(store.entry_path(key), (used, used))
        for target in entry.targets:
            os.utime(store.object_path(target.digest), (old, old))
    sizes = {entry.task: entry.size + entry.manifest_bytes for entry in entries(cache).values()}
    limit = sizes["w2"] + sizes["w3"]
    assert _cli.main(["cache", "prune", str(cache), "--max-size", str(limit), "--dry-run"]) == 0
    assert "would remove 2 entries, 2 objects" in capsys.readouterr().out
    assert len(entries(cache)) == 4
    assert _cli.main(["cache", "prune", str(cache), "--max-size", str(limit)]) == 0
    assert sorted(entry.task for entry in entries(cache).values()) == ["w2", "w3"]
    assert verify(store).bad == {} and verify(store).unreferenced == 0
    assert _cli.main(["cache", "prune", str(cache), "--max-size", "lots"]) == 1


def test_prune_while_a_run_puts_entries_leaves_no_bad_entry(tmp_path):
    """prune --max-size 0 again and again while a process fills the cache:
    entries go, but no entry is left naming an object that is gone."""
    cache = tmp_path / "cache"
    env = {**os.environ, cache_workload.JOURNAL_ENV: str(tmp_path / "j.txt")}
    process = subprocess.Popen([sys.executable, WORKLOAD, str(tmp_path / "A"), str(cache), "2", "60", "20000", "s"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prunes = 0
    while process.poll() is None or prunes == 0:
        if (cache / "taskgraph-cache.json").exists():
            prune(Cache(str(cache)), 0)
            prunes += 1
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert verify(Cache(str(cache))).bad == {}
    before = child_pids()
    process = subprocess.run([sys.executable, WORKLOAD, str(tmp_path / "B"), str(cache), "0", "60", "20000", "s"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    for name, data in cache_workload.expected(60, 20000, "s").items():
        assert (tmp_path / "B" / f"{name}.bin").read_bytes() == data
    assert no_new_children(before)


# -- many processes, kills ----------------------------------------------------------------------


def test_four_processes_four_workspaces_one_cache(tmp_path):
    """The same 200-task graph in four workspaces at once, in four processes
    (inline, threads, and two process pools): every target is right, and
    each function ran once in all: a process that wants a key another one is
    computing waits for it and restores it (see "Races" in docs/sharing.md)."""
    cache, journal_path = tmp_path / "cache", tmp_path / "executions.txt"
    marker = uuid.uuid4().hex
    env = {**os.environ, cache_workload.JOURNAL_ENV: str(journal_path), "TASKGRAPH_CACHE_TEST": marker}
    modes = [2, -1, 0, 2]
    processes = [
        subprocess.Popen([sys.executable, WORKLOAD, str(tmp_path / f"ws{i}"), str(cache), str(mode), "200", "512",
                          "shared"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, mode in enumerate(modes)
    ]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        assert "Traceback" not in err and "ERROR" not in err, err
        outputs.append(json.loads(out.strip().splitlines()[-1])["states"])
    expected = cache_workload.expected(200, 512, "shared")
    for i in range(len(modes)):
        for name, data in expected.items():
            assert (tmp_path / f"ws{i}" / f"{name}.bin").read_bytes() == data
    runs = collections.Counter(line.split()[0] for line in journal_path.read_text().splitlines())
    assert set(runs) == set(expected)
    assert max(runs.values()) == 1, {name: count for name, count in runs.items() if count > 1}
    assert sum(states.get("ran", 0) for states in outputs) == 200
    assert all(states.get("ran", 0) + states.get("restored", 0) == 200 for states in outputs), outputs
    assert verify(Cache(str(cache))).bad == {}
    assert not processes_marked("TASKGRAPH_CACHE_TEST", marker)


def test_sigkill_of_the_putting_process_leaves_the_cache_valid(tmp_path):
    """The quick version of tests/stress/cache_kill_loop.py: a few SIGKILLs
    of a process putting 2 MiB targets, each followed by `taskgraph cache
    verify` (0 bad entries) and a check that no process is left; then a run
    that completes and a fresh workspace that restores it byte for byte."""
    before = child_pids()
    stats = cache_kill_loop.run(kills=4, n_tasks=40, size=2 << 20, seed=20261201, root=str(tmp_path))
    assert stats.kills == 4 and stats.orphans == 0 and stats.bad_entries == 0
    assert no_new_children(before)


# -- the example pipeline -----------------------------------------------------------------------


def run_example(workspace, cache, key, *extra):
    rasterio = pytest.importorskip("rasterio", reason="the example needs rasterio: pip install -e '.[examples]'")
    del rasterio
    env = {**os.environ, "TASKGRAPH_CACHE": str(cache), "TASKGRAPH_CACHE_KEY": str(key)}
    process = subprocess.run(
        [sys.executable, EXAMPLE, "--workspace", str(workspace), "--size", "48", "--tiles", "4", "--n-workers", "2",
         *extra], capture_output=True, text=True, timeout=120, env=env,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    # A summary line, then "  name: why" for each task that ran or was restored.
    summary, *lines = process.stdout.splitlines()
    assert summary.startswith("ran "), process.stdout
    done: dict[str, set[str]] = {"ran": set(), "restored": set()}
    whys: dict[str, str] = {}
    for line in lines:
        name, why = line[2:].split(": ", 1)
        whys[name] = why
        done["restored" if why.startswith("restored from cache (made on ") else "ran"].add(name)
    restored = int(summary.split("restored ")[1].split()[0]) if ", restored " in summary else 0
    assert restored == len(done["restored"]), process.stdout
    return done["ran"], done["restored"], whys


def test_the_example_pipeline_in_another_workspace_restores_everything(tmp_path, team_key):
    import test_example

    cache = tmp_path / "cache"
    ran, restored, _ = run_example(tmp_path / "A", cache, team_key)
    assert ran == test_example.ALL_TASKS and restored == set()
    ran, restored, whys = run_example(tmp_path / "B", cache, team_key)
    assert ran == set() and restored == test_example.ALL_TASKS  # B executed no task function
    assert all(whys[name].startswith("restored from cache (made on ") for name in restored)
    assert files_of(tmp_path / "A") == files_of(tmp_path / "B")  # byte for byte
    count = len(entries(cache))
    test_example.rewrite_tile(tmp_path / "B", 2)
    ran, restored, _ = run_example(tmp_path / "B", cache, team_key)
    assert ran == test_example.downstream_of(2) and restored == set()
    assert len(entries(cache)) == count + len(test_example.downstream_of(2))
    with open(tmp_path / "B" / "catchments.csv", newline="") as stream:
        assert len(list(csv.DictReader(stream))) == 3
    # The same edit in A: what B computed is restored there.
    test_example.rewrite_tile(tmp_path / "A", 2)
    ran, restored, _ = run_example(tmp_path / "A", cache, team_key)
    assert (ran, restored) == (set(), test_example.downstream_of(2))
    assert files_of(tmp_path / "A") == files_of(tmp_path / "B")
