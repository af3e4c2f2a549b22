"""Topology: fluidimage's queues and works, under each executor, with real processes and files."""

import logging
import os

import pytest
import stream_funcs as f
from procs import child_pids, new_children, no_new_children

import taskgraph

EXECUTORS = ["sequential", "threads", "processes"]


@pytest.fixture(autouse=True)
def no_child_left():
    """After each test, no process it started is left (the resource tracker aside)."""
    before = child_pids()
    yield
    assert no_new_children(before), new_children(before)


def example(path_dir_result, nb_max_workers=2):
    """Ten images: fill (one shot) -> square (CPU) -> copy (io) -> describe (eat key value)."""
    topology = taskgraph.Topology(path_dir_result, nb_max_workers=nb_max_workers)
    names = topology.add_queue("names")
    squares = topology.add_queue("squares")
    copies = topology.add_queue("copies")
    described = topology.add_queue("described")
    topology.add_work("fill", f.fill_names, output_queue=names, kind=("global", "one shot"))
    topology.add_work("square", f.square_or_fail, input_queue=names, output_queue=squares)
    topology.add_work("copy", f.slow_copy, input_queue=squares, output_queue=copies, kind="io")
    topology.add_work("describe", f.describe, input_queue="copies", output_queue=described, kind="eat key value")
    return topology


@pytest.mark.parametrize("executor", EXECUTORS)
def test_ten_items_two_failures(tmp_path, executor):
    topology = example(tmp_path)
    topology.compute(executor=executor)
    good = [index for index in range(10) if index not in (3, 7)]
    assert topology.results == {f"im{i:02d}": f"im{i:02d}={i * i}" for i in good}
    assert list(topology.results) == [f"im{i:02d}" for i in good]  # in the order the first queue was filled
    assert sorted((error.stage, error.item) for error in topology.errors) == [("square", "im03"), ("square", "im07")]
    for error in topology.errors:
        assert isinstance(error, taskgraph.StageError) and isinstance(error.__cause__, ValueError)
        text = (tmp_path / "errors" / f"square-{error.item}.txt").read_text()
        assert "deliberately bad" in text and "square_or_fail" in text  # the work's own traceback
    assert sorted(os.listdir(tmp_path / "errors")) == ["square-im03.txt", "square-im07.txt"]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_stop_if_error_raises_the_first(tmp_path, executor):
    topology = example(tmp_path, nb_max_workers=1)
    with pytest.raises(taskgraph.StageError) as caught:
        topology.compute(executor=executor, stop_if_error=True)
    assert caught.value.stage == "square" and caught.value.item == "im03"
    assert "deliberately bad" in str(caught.value) and isinstance(caught.value.__cause__, ValueError)
    assert (tmp_path / "errors" / "square-im03.txt").exists()
    assert not (tmp_path / "errors" / "square-im07.txt").exists()  # nothing ran after the first failure


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_back_pressure_bounds_the_queues(tmp_path, executor):
    topology = example(None)
    topology.compute(executor=executor, nb_items_queue_max=2)
    queues = {queue.name: queue for queue in topology.queues}
    # square is faster than the io copy after it: its output queue fills to the bound, never past.
    assert 1 <= queues["squares"].high_water <= 2 and queues["copies"].high_water <= 2
    # The last queue has no consumer: it holds every result.
    assert len(topology.results) == 8 and queues["described"].bound is None
    assert not (tmp_path / "errors").exists()  # no path_dir_result: nothing written


@pytest.mark.parametrize("executor", EXECUTORS)
def test_global_join_of_two_queues(executor):
    topology = taskgraph.Topology()
    names = topology.add_queue("names")
    paths = topology.add_queue("paths")
    arrays = topology.add_queue("arrays")
    pairs = topology.add_queue("pairs")
    out = topology.add_queue("out")
    topology.add_work("fill", f.fill_names_and_paths, output_queue=(names, paths), kind="one shot")
    topology.add_work("read", f.read_value, input_queue=paths, output_queue=arrays, kind="io")
    topology.add_work("pair", f.pair, input_queue=(names, arrays), output_queue=pairs, kind="global")
    topology.add_work("combine", func_or_cls=f.combine, input_queue=pairs, output_queue=out)  # fluidimage's keyword
    topology.compute(executor=executor, nb_max_workers=2)
    assert topology.results == {f"k{i}": f"name{i}:{3 * i}" for i in range(6)}
    assert list(topology.results) == [f"k{i}" for i in range(6)]
    assert topology.errors == [] and not names and not arrays


def test_rerun_with_workspace_executes_nothing(tmp_path):
    workspace, log_dir = tmp_path / "result", tmp_path / "log"
    log_dir.mkdir()

    def build():
        topology = taskgraph.Topology(workspace, nb_max_workers=2)
        items = topology.add_queue("items")
        squares = topology.add_queue("squares")
        topology.add_work("fill", f.fill_logged(str(log_dir)), output_queue=items, kind=("global", "one shot"))
        topology.add_work("square", f.square_logged_or_fail, input_queue=items, output_queue=squares)
        return topology

    first = build()
    first.compute()
    assert len(f.read_log(log_dir)) == 10 and len(first.results) == 8
    for topology in (build(), first):  # a new run of the script, and the same object again
        topology.compute()
        assert topology.results == first.results
        assert sorted(error.item for error in topology.errors) == ["im03", "im07"]
    # Only the two failed items ran again (twice); the recorded ones were taken from the ledger.
    assert sorted(f.read_log(log_dir)[10:]) == ["square 3", "square 3", "square 7", "square 7"]
    assert sorted(os.listdir(workspace / "errors")) == ["square-im03.txt", "square-im07.txt"]
    stale = workspace / "errors" / "square-im05.txt"  # as if an earlier compute had failed on im05
    stale.write_text("old")
    first.compute()
    assert not stale.exists()
    assert (workspace / taskgraph.LEDGER_FILENAME).exists()


def test_invalid_topologies_are_refused_where_built():
    topology = taskgraph.Topology()
    queue = topology.add_queue("a")
    with pytest.raises(taskgraph.InvalidArgumentError, match="already has a queue named 'a'"):
        topology.add_queue("a")
    with pytest.raises(taskgraph.InvalidArgumentError, match="unknown kind 'gloabl'"):
        topology.add_work("w", f.describe, input_queue=queue, kind="gloabl")
    with pytest.raises(taskgraph.InvalidArgumentError, match="'nowhere' is not a queue"):
        topology.add_work("w", f.describe, input_queue="nowhere")
    with pytest.raises(taskgraph.InvalidArgumentError, match="exactly one input_queue"):
        topology.add_work("w", f.describe)
    with pytest.raises(ValueError, match="executor must be one of"):
        topology.compute(executor="dask")


def test_unpicklable_cpu_work_is_refused_before_anything_runs(tmp_path):
    topology = taskgraph.Topology()
    items = topology.add_queue("items")
    topology.add_work("fill", f.fill_names, output_queue=items, kind="one shot")
    topology.add_work("local", lambda value: value, input_queue=items, output_queue=topology.add_queue("out"))
    with pytest.raises(taskgraph.InvalidArgumentError, match="work 'local': its function cannot be pickled"):
        topology.compute()
    assert not items  # the one-shot did not run
    topology.compute(executor="threads")
    assert topology.results == {f"im{i:02d}": i for i in range(10)}


def test_runs_on_a_dask_cluster(dask_client, tmp_path):
    topology = example(tmp_path)
    topology.compute(executor=dask_client)
    assert len(topology.results) == 8 and sorted(error.item for error in topology.errors) == ["im03", "im07"]


def test_a_failing_global_work_stops_the_run(tmp_path):
    topology = example(tmp_path)
    topology.add_work("join", f.broken_join, input_queue="described", output_queue=topology.add_queue("joined"),
                      kind="global")
    with pytest.raises(taskgraph.StageError) as caught:
        topology.compute(executor="processes")
    assert caught.value.stage == "join" and isinstance(caught.value.__cause__, KeyError)
    assert "global work 'join' raised KeyError" in str(caught.value)
    assert (tmp_path / "errors" / "join.txt").exists()


def test_a_result_that_cannot_be_recorded_is_still_delivered(tmp_path, caplog):
    def build():
        topology = taskgraph.Topology(tmp_path, nb_max_workers=2)
        names = topology.add_queue("names")
        topology.add_work("fill", f.fill_names, output_queue=names, kind="one shot")
        topology.add_work("lock", f.make_lock, input_queue=names, output_queue=topology.add_queue("locks"), kind="io")
        return topology

    for _ in range(2):  # not recorded: computed (and warned about) both times
        caplog.clear()
        topology = build()
        with caplog.at_level(logging.WARNING, logger="taskgraph.topology"):
            topology.compute()
        assert [value for value, _ in topology.results.values()] == list(range(10))
        assert "cannot be pickled" in caplog.text and topology.errors == []


class Doubler(taskgraph.Topology):
    """fluidimage's pattern: the works are methods of a Topology subclass."""

    calls: list = []

    def __init__(self, path_dir_result):
        super().__init__(path_dir_result, nb_max_workers=2)
        first, second = self.add_queue("in"), self.add_queue("out")
        self.add_work("fill", self.fill, output_queue=first, kind="one shot")
        self.add_work("double", self.double, input_queue=first, output_queue=second)

    def fill(self, input_queue, output_queue):
        for index in range(4):
            output_queue[index] = index

    def double(self, value):
        Doubler.calls.append(value)
        return 2 * value


def test_method_works_are_remembered_across_computes(tmp_path):
    for expected_calls in ([0, 1, 2, 3], []):
        Doubler.calls = []
        topology = Doubler(str(tmp_path))
        topology.compute(executor="threads")
        assert topology.results == {0: 0, 1: 2, 2: 4, 3: 6}
        assert sorted(Doubler.calls) == expected_calls


def test_keys_differing_only_in_unsafe_characters_keep_a_traceback_each(tmp_path):
    topology = taskgraph.Topology(str(tmp_path))
    names = topology.add_queue("names")
    topology.add_work("fill", f.fill_keys, output_queue=names, kind="one shot")
    topology.add_work("boom", f.always_fail, input_queue=names, output_queue=topology.add_queue("out"))
    topology.compute(executor="sequential")
    assert len(topology.errors) == 3
    assert len(os.listdir(tmp_path / "errors")) == 3
