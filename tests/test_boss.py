"""taskgraph.boss: taylorism's Boss on a TaskGraph, with real worker processes."""

import os
import time

import psutil
import pytest
import resource_funcs as rf
from procs import child_pids, no_new_children

import taskgraph
from taskgraph import boss as tb


@pytest.fixture
def children():
    before = child_pids()
    yield
    assert no_new_children(before), "a worker process outlived its boss"


def wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("limit", ["threads", "memory", "threads+memory"])
@pytest.mark.parametrize("worker", [rf.sleeper, rf.Sleeper], ids=["function", "class"])
def test_sleepers_under_each_scheduler_limit(children, limit, worker):
    printed = []
    report = tb.batch_main(
        common_instructions={"wakeup_sentence": "Hello Dolly !"},
        individual_instructions={"sleeping_time": [0.2, 0.05, 0.1, 0.0], "expected_time": [2, 0.5, 1, 0]},
        scheduler=tb.scheduler(limit=limit, max_threads=2, max_memory=1000, memory_per_task=400),
        print_report=printed.append, worker=worker,
    )
    assert report["status"] == "finished"
    names = [entry["name"] for entry in report["workers_report"]]
    assert names == ["worker-0", "worker-1", "worker-2", "worker-3"]
    texts = [entry["report"] for entry in report["workers_report"]]
    assert all("Hello Dolly ! Woke up after" in text for text in texts)
    assert "0.05 s sleep" in texts[1]
    assert printed == report["workers_report"]


def test_threads_and_memory_runs_the_longest_expected_time_first(tmp_path, children):
    log, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    boss = tb.run_as_server(
        common_instructions={"log": log},
        individual_instructions={"label": ["gate"], "gate": [gate], "expected_time": [100]},
        scheduler=tb.scheduler(limit="threads+memory", max_threads=1, max_memory=10_000),
        worker=rf.recorder,
    )
    with boss:
        # The single worker is held by the first job, so these all wait together.
        boss.set_instructions({"log": log}, {"label": ["short", "long", "unknown", "medium"],
                                             "expected_time": [1, 30, None, 10]})
        open(gate, "w").close()
        boss.wait_till_finished()
    with open(log) as stream:
        assert stream.read().split() == ["gate", "long", "medium", "short", "unknown"]


def test_memory_limit_keeps_jobs_within_it(tmp_path, children):
    marks = tmp_path / "marks"
    marks.mkdir()
    names = [f"j{i}" for i in range(5)]
    tb.batch_main(
        common_instructions={"directory": str(marks), "seconds": 0.2},
        individual_instructions={"name": names, "memory": [300, 300, 300, 300, 300]},
        scheduler=tb.scheduler(limit="memory", max_threads=3, max_memory=700),
        print_report=None, worker=rf.interval,
    )
    spans = {name: tuple(map(int, (marks / name).read_text().split())) for name in names}
    for start, _end in spans.values():
        beside = [other for other, (s, e) in spans.items() if s <= start < e]
        assert len(beside) <= 2, f"{beside} ran at once: 300 MiB each within 700 MiB"


def test_interim_report_and_instructions_appended_while_running(tmp_path, children):
    gate = str(tmp_path / "gate")
    log = str(tmp_path / "log")
    boss = tb.run_as_server(
        common_instructions={"log": log},
        individual_instructions={"label": ["quick", "held"], "gate": [None, gate]},
        scheduler=tb.scheduler(max_threads=2), worker=rf.recorder,
    )
    with boss:
        wait_until(lambda: boss.get_report()["workers_report"])
        interim = boss.get_report()
        assert interim["status"] == "running"
        assert interim["workers_report"] == [{"name": "worker-0", "report": "quick"}]
        boss.set_instructions({"log": log}, {"label": ["appended"], "name": ["late"]})
        wait_until(lambda: len(boss.get_report()["workers_report"]) == 2)
        open(gate, "w").close()
        boss.wait_till_finished()
    final = boss.get_report(interim=False)
    assert final["status"] == "finished"
    assert final["workers_report"] == [
        {"name": "worker-0", "report": "quick"},
        {"name": "worker-1", "report": "held"},
        {"name": "late", "report": "appended"},
    ]
    assert [entry.name for entry in boss.resources()] == ["worker-0", "worker-1", "late"]


def test_shared_array_summed_by_several_workers(children):
    np = pytest.importorskip("numpy")
    data = np.arange(1_000_000, dtype=np.float64)
    bounds = list(range(0, 1_000_001, 250_000))
    report = tb.batch_main(
        individual_instructions={"start": bounds[:-1], "stop": bounds[1:]},
        sharedmemory_common_instructions={"array": data},
        scheduler=tb.scheduler(max_threads=2), print_report=None, worker=rf.slice_sum,
    )
    assert sum(entry["report"] for entry in report["workers_report"]) == data.sum()
    assert len(report["workers_report"]) == 4


def test_first_exception_stops_the_others_and_keeps_finished_reports(tmp_path, children):
    marks = tmp_path / "marks"
    marks.mkdir()
    boss = tb.run_as_server(
        common_instructions={"bad": 1, "marks": str(marks)},
        individual_instructions={"value": [0, 1, 2, 3]},
        scheduler=tb.scheduler(max_threads=3), worker=rf.fail_on,
    )
    with pytest.raises(taskgraph.JobFailedError) as info:
        boss.wait_till_finished()
    error = info.value
    assert isinstance(error, RuntimeError) and isinstance(error, taskgraph.TaskGraphError)
    assert error.name == "worker-1"
    assert error.instructions == {"bad": 1, "marks": str(marks), "value": 1}
    assert isinstance(error.__cause__, ValueError) and "cannot handle 1" in str(error.__cause__)
    assert "'value': 1" in str(error)
    report = boss.get_report()
    assert report["status"] == "failed"
    assert report["workers_report"] == [{"name": "worker-0", "report": "done 0"}]
    boss.end()  # already finished: nothing more to raise


def test_stop_them_working_kills_the_running_jobs(tmp_path, children):
    marks = tmp_path / "marks"
    marks.mkdir()
    with tb.run_as_server(common_instructions={"bad": -1, "marks": str(marks)},
                          individual_instructions={"value": [0, 5, 6]},
                          scheduler=tb.scheduler(max_threads=2), worker=rf.fail_on) as boss:
        wait_until(lambda: boss.get_report()["workers_report"])
        boss.stop_them_working()
    report = boss.get_report()
    assert report["status"] == "stopped"
    assert report["workers_report"] == [{"name": "worker-0", "report": "done 0"}]


@pytest.mark.parametrize("call,needle", [
    (lambda b: b.set_instructions({}, {"sleeping_time": [1, 2], "wakeup_sentence": ["a"]}),
     "same length"),
    (lambda b: b.set_instructions({"snooze": 1}, {"sleeping_time": [1]}), "takes no instruction 'snooze'"),
    (lambda b: b.set_instructions({}, {"sleeping_time": 3}), "must be a list"),
    (lambda b: b.set_instructions({"sleeping_time": 1}, {"sleeping_time": [1]}), "both commonly"),
])
def test_bad_instructions_are_rejected_where_given(call, needle):
    with tb.Boss(rf.sleeper, tb.scheduler(max_threads=1)) as boss:
        with pytest.raises(taskgraph.InvalidArgumentError, match=needle):
            call(boss)
    assert boss.get_report() == {"workers_report": [], "status": "finished"}


@pytest.mark.parametrize("kwargs,needle", [
    ({"limit": "cpu"}, "limit must be one of"),
    ({"max_threads": -1}, "max_threads must be"),
    ({"max_memory": 0}, "max_memory must be"),
    ({"memory_max_percentage": 1.5}, "memory_max_percentage"),
])
def test_bad_scheduler_settings_are_rejected(kwargs, needle):
    with pytest.raises(taskgraph.InvalidArgumentError, match=needle):
        tb.scheduler(**kwargs)


def test_scheduler_defaults_follow_taylorism():
    half = max(1, (os.cpu_count() or 1) // 2)
    assert tb.scheduler().n_workers() == half
    assert tb.scheduler(limit="memory").n_workers() == (os.cpu_count() or 1)
    total = psutil.virtual_memory().total / 2**20
    assert tb.scheduler(limit="memory").memory_limit() == pytest.approx(total * 0.75)
    assert tb.scheduler(limit="threads").memory_limit() is None
    assert tb.scheduler(limit="threads+memory").graph_options()["scheduler"] == "longest_first"
    assert tb.scheduler(limit="threads+memory", nosort=True).graph_options()["scheduler"] == "priority"


def test_unpicklable_worker_and_instruction_are_refused_where_given(tmp_path):
    with pytest.raises(taskgraph.InvalidArgumentError, match="cannot be pickled"):
        tb.Boss(lambda sleeping_time: sleeping_time)
    with tb.Boss(rf.sleeper, tb.scheduler(max_threads=1)) as boss:
        boss.make_them_work()
        with pytest.raises(taskgraph.InvalidArgumentError, match="instruction 'wakeup_sentence' cannot be pickled"):
            boss.set_instructions({"wakeup_sentence": (lambda: "hi")}, {"sleeping_time": [0]})
        boss.set_instructions({}, {"sleeping_time": [0]})
    assert boss.get_report()["workers_report"] == [
        {"name": "worker-0", "report": "Hello ! Woke up after 0 s sleep"}]


def test_instructions_after_the_boss_finished_are_refused_clearly(tmp_path):
    boss = tb.run_as_server(worker=rf.sleeper, scheduler=tb.scheduler(max_threads=1))
    boss.set_instructions({}, {"sleeping_time": [0]})
    boss.wait_till_finished()
    with pytest.raises(taskgraph.TaskGraphTerminatedError, match="has finished: it takes no more instructions"):
        boss.set_instructions({}, {"sleeping_time": [0]})
    boss.end()
