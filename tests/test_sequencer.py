"""TaskSequencer: eumap's pipeline of stages, with real worker processes, threads and memory."""

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import stream_funcs as f
from procs import child_pids, new_children, no_new_children

import taskgraph
from taskgraph._executor import ThreadExecutor


@pytest.fixture(autouse=True)
def no_child_left():
    """After each test, no process it started is left (the resource tracker aside)."""
    before = child_pids()
    yield
    assert no_new_children(before), new_children(before)


def test_eumap_documented_example():
    """eumap's own example: rnd_data then two workers of max_value, run twice on the same object."""
    sequencer = taskgraph.TaskSequencer(tasks=[f.rnd_data, (f.max_value, 2)], verbose=True)
    first = sequencer.run([(const, 10) for const in range(0, 3)])
    second = sequencer.run([(const, 20) for const in range(3, 6)])
    assert len(first) == 3 and len(second) == 3
    # max over uniform [0, 1) data plus const: in [const, const + 1), in input order.
    for const, value in zip(range(0, 6), first + second, strict=True):
        assert isinstance(value, np.floating) and const <= value < const + 1


@pytest.mark.parametrize("executor", ["processes", "threads", "inline"])
def test_input_order_is_kept_under_random_durations(executor):
    sequencer = taskgraph.TaskSequencer([(f.jitter, 3), (f.add, 2)], executor=executor)
    for seed in range(2):
        assert sequencer.run([(index, seed) for index in range(12)]) == [11 * index for index in range(12)]


@pytest.mark.parametrize("executor", ["processes", "threads"])
def test_ordered_false_returns_completion_order(tmp_path, executor):
    # Each item waits for the next one to have finished its call: they finish about last to first.
    items = [(str(tmp_path), index, 4) for index in range(5)]
    finished = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: finished.extend(re.findall(r"finished item (\d+)", record.getMessage()))
    logger = logging.getLogger("taskgraph.stream")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        results = taskgraph.TaskSequencer([(f.after_next, 5)], executor=executor, ordered=False).run(items)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert results == [int(index) for index in finished] and sorted(results) == [0, 1, 2, 3, 4]
    for index in range(5):
        os.remove(tmp_path / f"done-{index}")
    assert taskgraph.TaskSequencer([(f.after_next, 5)], executor=executor).run(items) == [0, 1, 2, 3, 4]


def test_stages_overlap_as_a_pipeline(tmp_path):
    """Item 1 is in stage 1 while item 0 is in stage 2: stage 2 of item 0 waits for
    stage 1 of item 1 to have started, which only a pipeline allows."""
    directory = str(tmp_path)
    sequencer = taskgraph.TaskSequencer([f.start_logged, f.after_next_start], executor="processes")
    assert sequencer.run([(directory, 0), (directory, 1)]) == [0, 1]


def test_error_names_stage_and_item_and_stops(tmp_path):
    directory = str(tmp_path)
    sequencer = taskgraph.TaskSequencer([f.start_logged, f.fail_on])
    with pytest.raises(taskgraph.StageError) as caught:
        sequencer.run([(directory, index) for index in range(3, 40)])
    error = caught.value
    assert isinstance(error, RuntimeError) and isinstance(error, taskgraph.TaskGraphError)
    assert error.stage == "fail_on" and error.item == 0
    assert "'fail_on'" in str(error) and "item 0" in str(error) and "stop_on_error=False" in str(error)
    assert isinstance(error.__cause__, ValueError) and "item 3 is bad" in str(error.__cause__)
    assert "in fail_on" in str(error.__cause__.__cause__)  # the worker's traceback
    # The first stage started at most the items the bounded queue let through, not all 37.
    assert len(f.read_log(directory)) < 37


def test_error_kills_running_workers(tmp_path):
    directory = str(tmp_path)
    sequencer = taskgraph.TaskSequencer([(f.sleep_or_fail, 2)])
    with pytest.raises(taskgraph.StageError) as caught:
        sequencer.run([(directory, 0), (directory, 1)])
    assert caught.value.stage == "sleep_or_fail" and caught.value.item == 1
    # the fixture checks that the worker sleeping in item 0 was killed


@pytest.mark.parametrize("executor", ["processes", "threads", "inline"])
def test_stop_on_error_false_finishes_the_others(tmp_path, executor):
    directory = str(tmp_path)
    sequencer = taskgraph.TaskSequencer([f.start_logged, (f.fail_on, 2)], executor=executor, stop_on_error=False)
    results = sequencer.run([(directory, index) for index in range(6)])
    assert [r for i, r in enumerate(results) if i != 3] == [0, 2, 4, 8, 10]
    failure = results[3]
    assert isinstance(failure, taskgraph.StageError) and failure.stage == "fail_on" and failure.item == 3
    assert sequencer.failures == [failure]
    assert sorted(f.read_log(directory)) == [f"start {index}" for index in range(6)]
    # The next run returns only its own results and failures.
    assert sequencer.run([(directory, 1)]) == [2] and sequencer.failures == []


def test_given_executor_is_used_and_left_open():
    threads = ThreadExecutor(2)
    try:
        sequencer = taskgraph.TaskSequencer([f.jitter, f.add], executor=threads)
        assert sequencer.run([(1, 0), (2, 0)]) == [11, 22]
        assert sequencer.run([(3, 0)]) == [33]
    finally:
        threads.shutdown()


def test_invalid_arguments_are_refused_at_construction():
    with pytest.raises(taskgraph.InvalidArgumentError, match="stage 1 of tasks"):
        taskgraph.TaskSequencer([f.jitter, 3])
    with pytest.raises(taskgraph.InvalidArgumentError, match="'add': n_workers"):
        taskgraph.TaskSequencer([f.jitter, (f.add, 0)])
    with pytest.raises(ValueError, match="mem_usage_limit"):
        taskgraph.TaskSequencer([f.jitter], mem_usage_limit=75)
    with pytest.raises(taskgraph.InvalidArgumentError, match="cannot be pickled"):
        taskgraph.TaskSequencer([lambda x: x])
    with pytest.raises(taskgraph.InvalidArgumentError, match="wrap it in a list"):
        taskgraph.TaskSequencer(f.jitter)
    assert taskgraph.TaskSequencer([lambda x: x + 1], executor="threads").run([(1,), 2]) == [2, 3]


class _GateLog(logging.Handler):
    """Counts the memory gate's messages (emitted from the engine thread)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.waits = 0
        self.changed = threading.Condition()

    def emit(self, record):
        if "waits: memory use" in record.getMessage():
            with self.changed:
                self.waits += 1
                self.changed.notify_all()

    def wait_for(self, count, timeout=60):
        with self.changed:
            assert self.changed.wait_for(lambda: self.waits >= count, timeout), f"{self.waits} gate checks"


def _until(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_memory_gate_holds_the_reader_and_resumes_when_memory_drops(tmp_path):
    """The loader allocates 1 GiB per item; with the limit just above current use,
    after one load no new load starts until the consumer frees that memory."""
    megabytes = 1024
    memory = psutil.virtual_memory()
    if memory.available < 3 * (megabytes << 20):
        pytest.skip("needs 3 GiB of free memory")
    limit = memory.percent / 100 + (megabytes << 20) / memory.total / 2
    directory = str(tmp_path)
    handler = _GateLog()
    logger = logging.getLogger("taskgraph.stream")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    sequencer = taskgraph.TaskSequencer(
        [(f.load, 1, True), f.consume], mem_usage_limit=limit, wait_timeout=0.05, executor="threads",
    )
    outcome = {}
    runner = threading.Thread(
        target=lambda: outcome.update(result=sequencer.run([(directory, index, megabytes) for index in range(3)]))
    )
    try:
        runner.start()
        handler.wait_for(3)  # the gate looked at memory three times and held the loader
        assert f.read_log(directory) == ["load 0"]
        open(tmp_path / "release-0", "w").close()  # the consumer lets its GiB go
        _until(lambda: "load 1" in f.read_log(directory))
        handler.wait_for(handler.waits + 3)  # the second GiB closes the gate again
        assert f.read_log(directory) == ["load 0", "load 1"]
    finally:
        for index in range(3):
            open(tmp_path / f"release-{index}", "w").close()
        runner.join(60)
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert outcome["result"] == [megabytes << 20] * 3


def test_a_killed_worker_fails_its_item_only():
    sequencer = taskgraph.TaskSequencer([(f.die_on_one, 2)], stop_on_error=False)
    results = sequencer.run([(0,), (1,), (2,), (3,)])
    assert results[0] == 0 and results[2:] == [2, 3]
    assert isinstance(results[1], taskgraph.StageError) and results[1].item == 1
    assert isinstance(results[1].__cause__, taskgraph.WorkerDiedError)
    assert "SIGKILL" in str(results[1].__cause__)


def test_ctrl_c_stops_the_run_and_its_workers(tmp_path):
    script = tmp_path / "pipeline.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "import stream_funcs as f\n"
        "import signal\n"
        "import taskgraph\n"
        "if __name__ == '__main__':\n"
        "    signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal\n"
        f"    taskgraph.TaskSequencer([(f.sleep_logged, 2)]).run([({str(tmp_path)!r}, i) for i in range(4)])\n"
    )
    process = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
    try:
        _until(lambda: len(f.read_log(tmp_path)) == 2)  # both workers are in the stage
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode != 0 and "KeyboardInterrupt" in stderr
    survivors = []
    for line in f.read_log(tmp_path):  # the workers' pids
        with contextlib.suppress(psutil.NoSuchProcess):
            survivors.append(psutil.Process(int(line.split()[1])))
    _, alive = psutil.wait_procs(survivors, timeout=10)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []


def test_runs_on_a_dask_cluster(dask_client, tmp_path):
    sequencer = taskgraph.TaskSequencer([(f.jitter, 2), f.add], executor=dask_client)
    assert sequencer.run([(index, 0) for index in range(6)]) == [11 * index for index in range(6)]
    sequencer = taskgraph.TaskSequencer([f.start_logged, f.fail_on], executor=dask_client, stop_on_error=False)
    results = sequencer.run([(str(tmp_path), index) for index in range(5)])
    assert results[:3] == [0, 2, 4] and results[4] == 8 and results[3].stage == "fail_on"
    assert isinstance(results[3].__cause__, ValueError)


def test_memory_already_full_still_finishes_one_item_at_a_time(caplog):
    # Use is above 0.1 % from the start: nothing running could free memory, so the
    # gate lets one item through at a time instead of waiting forever.
    sequencer = taskgraph.TaskSequencer([(f.jitter, 2, True), f.add], mem_usage_limit=0.001, wait_timeout=0.05,
                                        executor="threads")
    with caplog.at_level(logging.WARNING, logger="taskgraph.stream"):
        assert sequencer.run([(index, 0) for index in range(4)]) == [0, 11, 22, 33]
    assert "'jitter' starts an item although memory use" in caplog.text


def test_the_same_function_twice_names_each_stage():
    sequencer = taskgraph.TaskSequencer([f.fail_on_twice, f.fail_on_twice], executor="inline")
    with pytest.raises(taskgraph.StageError) as caught:
        sequencer.run([(0,)])
    assert caught.value.stage == "fail_on_twice (stage 1)"


def test_a_lent_pool_is_left_within_its_capacity_after_a_failure():
    # The caller's pool cannot be killed: after a failure the run waits for
    # its jobs still running there, so the next run finds the pool as it was.
    from taskgraph._pool import ProcessPool

    before = child_pids()
    pool = ProcessPool(2)
    try:
        failing = taskgraph.TaskSequencer([(f.nap, 1), (f.fail_if_short, 1)], executor=pool)
        with pytest.raises(taskgraph.StageError):
            failing.run([(0.01,), (1.0,), (1.0,)])
        assert taskgraph.TaskSequencer([(f.nap, 2)], executor=pool).run([(0.1,), (0.1,)]) == [0.1, 0.1]
        server = pool._server.pid if pool._server is not None else None  # the fork server is no worker
        assert len([p for p in new_children(before) if p.pid != server]) <= pool.capacity
    finally:
        pool.shutdown(kill=True)
