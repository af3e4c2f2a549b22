"""multitask: SOFIA Redux's documented behaviour, on real threads and real worker processes."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from procs import leaves_nothing, wait_until

import taskgraph
from taskgraph import multitask
from taskgraph.multitask import n_jobs, parse_nbytes

np = pytest.importorskip("numpy")

CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.fixture(autouse=True)
def nothing_left():
    """Every test leaves no worker process and no shared-memory segment behind."""
    with leaves_nothing():
        yield


# -- item functions (module level: worker processes import this module) ---------------


def add_ten(args, i):
    return args[i] + 10


def scaled(args, kwargs, i):
    return args[i] * kwargs["factor"]


def where(args, i):
    """Which process and thread ran item ``i``."""
    return os.getpid(), threading.current_thread().name


def fails_on_three(args, i):
    if i == 3:
        raise ValueError(f"item {i} is bad")
    return i


def dies_on_one(args, i):
    if i == 1:
        os._exit(1)  # the exit status of a worker that cannot start, yet this is the item's doing
    return i


def look_at_array(args, i):
    array = args["image"]
    return float(array.sum()) + i, array.flags.writeable, array.shape


def chatty(args, i):
    """Logs twice; item 0 waits until item 1 has logged, so live records interleave."""
    log = logging.getLogger("multitask_test")
    log.info("%d begins", i)
    flag = os.path.join(args, "item-1-logged")
    if i == 1:
        open(flag, "w").close()
    if i == 0 and not wait_until(lambda: os.path.exists(flag), timeout=30):
        raise TimeoutError("item 1 never ran beside item 0")
    log.info("%d ends", i)
    return i


# -- SOFIA Redux's documented examples -------------------------------------------------


@pytest.mark.parametrize("jobs", [None, 2])
def test_documented_add_ten_examples(jobs):
    numbers = list(range(5))
    assert multitask(add_ten, range(len(numbers)), numbers, None, jobs=jobs) == [10, 11, 12, 13, 14]
    skip = [False] * len(numbers)
    skip[2] = True
    assert multitask(add_ten, range(len(numbers)), numbers, None, jobs=jobs, skip=skip) == [10, 11, 13, 14]


@pytest.mark.parametrize("jobs", [None, 2])
def test_nothing_to_run_gives_an_empty_list(jobs):
    assert multitask(add_ten, iter([]), [], None, jobs=jobs) == []
    assert multitask(add_ten, range(3), [1, 2, 3], None, jobs=jobs, skip=[True] * 3) == []


def test_kwargs_form_threads_and_skip_of_any_item_type():
    items = ["a", ("b",), None, 3.5]
    values = {"a": 1, ("b",): 2, None: 3, 3.5: 4}
    got = multitask(scaled, items, values, {"factor": 10}, jobs=2, skip=[0, 1, 0, True], force_threading=True)
    assert got == [10, 30]


# -- jobs ----------------------------------------------------------------------------------


def test_jobs_counts():
    assert n_jobs(None) == n_jobs(0) == n_jobs(1) == 1
    assert n_jobs(-1) == CPUS
    assert n_jobs(-2) == max(CPUS - 1, 1)
    assert n_jobs(-1000) == 1
    assert n_jobs(0.5) == max(CPUS // 2, 1)
    assert n_jobs(3) == 3
    for bad in ("2", 1.5, -0.5, float("nan"), True):
        with pytest.raises(taskgraph.InvalidArgumentError, match="jobs"):
            n_jobs(bad)
    assert parse_nbytes("1M") == 2**20 and parse_nbytes("100k") == 102_400 and parse_nbytes(7) == 7
    with pytest.raises(ValueError, match="max_nbytes"):
        parse_nbytes("lots")


@pytest.mark.parametrize("jobs", [None, 0, 1])
def test_serial_jobs_run_in_the_calling_thread(jobs):
    me = (os.getpid(), threading.current_thread().name)
    assert multitask(where, range(3), None, None, jobs=jobs) == [me] * 3


@pytest.mark.skipif(CPUS < 2, reason="-1 means one worker on a single CPU")
def test_minus_one_is_parallel_in_worker_processes():
    places = multitask(where, range(4), None, None, jobs=-1)
    assert all(pid != os.getpid() for pid, _ in places)


def test_off_the_main_thread_threads_are_used_unless_processes_are_forced():
    got = {}

    def run():
        got["default"] = multitask(where, range(4), None, None, jobs=2)
        got["forced"] = multitask(where, range(4), None, None, jobs=2, force_processes=True)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert all(pid == os.getpid() and name.startswith("taskgraph-thread") for pid, name in got["default"])
    assert all(pid != os.getpid() for pid, _ in got["forced"])


def test_forcing_threads_and_processes_together_is_an_error():
    with pytest.raises(taskgraph.InvalidArgumentError, match=r"force_threading.*force_processes"):
        multitask(add_ten, range(2), [1, 2], None, jobs=2, force_threading=True, force_processes=True)


def test_a_skip_list_of_the_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="skip list of 2 flags for 3 items"):
        multitask(add_ten, range(3), [1, 2, 3], None, skip=[True, False])


# -- failures --------------------------------------------------------------------------


def test_an_unpicklable_function_runs_in_series_with_a_warning():
    offset = 100

    def local(args, i):  # a closure: cannot be pickled for a worker process
        return (os.getpid(), args[i] + offset)

    with pytest.warns(RuntimeWarning, match=r"cannot be pickled.*in series"):
        got = multitask(local, range(3), [1, 2, 3], None, jobs=2)
    assert got == [(os.getpid(), 101), (os.getpid(), 102), (os.getpid(), 103)]


FUNCTION_IN_MAIN = """
import os
import taskgraph

def add_ten(args, i):
    return args[i] + 10, os.getpid()

print(taskgraph.multitask(add_ten, range(3), [0, 1, 2], None, jobs=2), os.getpid())
"""


def _run_with(start_method, argv):
    env = dict(os.environ, TASKGRAPH_START_METHOD=start_method)
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120, env=env)


def test_a_function_defined_in_main_runs_in_forked_workers():
    # As in a notebook: a function defined in the __main__ of `python -c`. Forked
    # workers have it (they are copies of the caller), as under natcap on Linux.
    done = _run_with("fork", ["-c", FUNCTION_IN_MAIN])
    assert done.returncode == 0, done.stderr
    results, caller = done.stdout.strip().rsplit(" ", 1)
    pairs = ast.literal_eval(results)
    assert [value for value, _ in pairs] == [10, 11, 12]
    assert int(caller) not in {pid for _, pid in pairs}, done.stdout
    assert "RuntimeWarning" not in done.stderr, done.stderr


def test_workers_that_cannot_load_the_function_fall_back_to_series_with_a_warning():
    # A spawned worker cannot import a function defined in the __main__ of `python -c`.
    done = _run_with("spawn", ["-c", FUNCTION_IN_MAIN])
    assert done.returncode == 0, done.stderr
    pid = done.stdout.split()[-1]
    assert done.stdout.strip() == f"[(10, {pid}), (11, {pid}), (12, {pid})] {pid}"
    assert "RuntimeWarning: multitask could not run add_ten in parallel" in done.stderr
    assert "could not be unpickled in the worker" in done.stderr and "in series" in done.stderr


MAIN_THAT_WORKERS_CANNOT_IMPORT = """
import os
import taskgraph

if __name__ != "__main__":
    # Stands for top-level code that fails when a spawned worker imports the script.
    raise SystemExit(1)


def add_ten(args, i):
    return args[i] + 10, os.getpid()


if __name__ == "__main__":
    print(taskgraph.multitask(add_ten, range(3), [0, 1, 2], None, jobs=2), os.getpid())
"""


def test_workers_that_cannot_start_fall_back_to_series_with_a_warning(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(MAIN_THAT_WORKERS_CANNOT_IMPORT)
    done = _run_with("spawn", [str(script)])
    assert done.returncode == 0, done.stderr
    pid = done.stdout.split()[-1]
    assert done.stdout.strip() == f"[(10, {pid}), (11, {pid}), (12, {pid})] {pid}"
    assert "RuntimeWarning: multitask could not run add_ten in parallel: its worker processes could " \
           "not start" in done.stderr


@pytest.mark.parametrize("mode", ["serial", "threads", "processes"])
def test_the_functions_exception_propagates_naming_the_item(mode):
    options = {"serial": {}, "threads": {"jobs": 2, "force_threading": True}, "processes": {"jobs": 2}}[mode]
    with pytest.raises(ValueError, match="item 3 is bad") as caught:
        multitask(fails_on_three, range(6), None, None, **options)
    assert any("multitask item 3 (3) of fails_on_three" in note for note in caught.value.__notes__)
    if mode == "processes":
        # The worker's traceback is chained, as from the process pool.
        assert "fails_on_three" in str(caught.value.__cause__)


def lock_on_two(args, i):
    """Item 2 returns what cannot be pickled; item 4 raises what cannot be pickled."""
    if i == 2:
        return threading.Lock()
    if i == 4:
        error = ValueError("holds a lock")
        error.lock = threading.Lock()
        raise error
    return i


@pytest.mark.parametrize("bad", [2, 4])
def test_an_item_whose_outcome_cannot_be_pickled_fails_saying_so(bad):
    # In a worker process the value (or exception) has to be pickled to come
    # back: the item fails with an error that says what could not be pickled.
    items = [0, 1, bad, 3]
    with pytest.raises(taskgraph.TaskExecutionError, match="cannot be pickled") as caught:
        multitask(lock_on_two, items, None, None, jobs=2, force_processes=True)
    expected = "returned a lock" if bad == 2 else "raised ValueError: holds a lock"
    assert expected in str(caught.value)


def test_a_worker_that_dies_fails_its_item():
    with pytest.raises(taskgraph.WorkerDiedError, match="exit code 1") as caught:
        multitask(dies_on_one, range(4), None, None, jobs=2)
    assert any("multitask item 1" in note for note in caught.value.__notes__)


# -- large arrays ----------------------------------------------------------------------


def test_large_arrays_reach_workers_through_shared_memory(caplog):
    image = np.arange(1_000_000, dtype=np.float64)  # 8 MB
    caplog.set_level(logging.DEBUG, logger="taskgraph.multitask")
    got = multitask(look_at_array, range(3), {"image": image, "gain": 2}, None, jobs=2, max_nbytes="1M")
    total = float(image.sum())
    assert got == [(total + i, False, (1_000_000,)) for i in range(3)]
    shared = [r.getMessage() for r in caplog.records if "shared memory" in r.getMessage()]
    assert shared and "1 array(s) passed through shared memory" in shared[0]
    payload = int(shared[0].rsplit("pickles to ", 1)[1].split()[0])
    assert payload < 10_000  # not the 8 MB array, pickled for every item

    caplog.clear()
    multitask(look_at_array, range(2), {"image": image}, None, jobs=2, max_nbytes=None)
    message = next(r.getMessage() for r in caplog.records if "pickles to" in r.getMessage())
    assert int(message.rsplit("pickles to ", 1)[1].split()[0]) > image.nbytes


# -- logs ------------------------------------------------------------------------------


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []
        self.on_line = lambda line: None

    def emit(self, record):
        self.lines.append(record.getMessage())
        self.on_line(record.getMessage())


@pytest.fixture
def test_log():
    log = logging.getLogger("multitask_test")
    handler = ListHandler()
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)  # worker processes get this level when they start
    yield handler
    log.removeHandler(handler)
    log.setLevel(old_level)


IN_ITEM_ORDER = ["0 begins", "0 ends", "1 begins", "1 ends", "2 begins", "2 ends", "3 begins", "3 ends"]


@pytest.mark.parametrize("force_threading", [False, True], ids=["processes", "threads"])
def test_logs_are_grouped_per_item_in_item_order_with_a_logger(tmp_path, test_log, force_threading):
    got = multitask(chatty, range(4), str(tmp_path), None, jobs=2, force_threading=force_threading,
                    logger=logging.getLogger("multitask_test"))
    assert got == [0, 1, 2, 3]
    assert test_log.lines == IN_ITEM_ORDER


def waits_for_its_first_record(args, i):
    """Item 1 goes on only once this process's handler has its first record."""
    log = logging.getLogger("multitask_test")
    log.info("%d begins", i)
    if i == 1 and not wait_until(lambda: os.path.exists(os.path.join(args, "parent-has-1-begins")), timeout=30):
        raise TimeoutError("item 1's first record did not reach the handler while item 1 ran")
    log.info("%d ends", i)
    return i


@pytest.mark.parametrize("force_threading", [False, True], ids=["processes", "threads"])
def test_logs_arrive_live_without_a_logger(tmp_path, test_log, force_threading):
    # The handler marks when it has item 1's first record, and item 1 waits for
    # that mark: records held back until an item ends would time item 1 out.
    # (The order of records from two worker processes, each on its own pipe, is
    # the order the parent reads them in, so the test does not assert one.)
    test_log.on_line = lambda line: line == "1 begins" and open(tmp_path / "parent-has-1-begins", "w").close()
    got = multitask(waits_for_its_first_record, range(4), str(tmp_path), None, jobs=2,
                    force_threading=force_threading)
    assert got == [0, 1, 2, 3]
    assert sorted(test_log.lines) == sorted(IN_ITEM_ORDER)
    assert test_log.lines.index("1 begins") < test_log.lines.index("1 ends")


def test_documented_example_runs_as_a_script(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent("""
        from taskgraph import multitask

        def add_ten(args, i):
            return args[i] + 10

        if __name__ == "__main__":
            print(multitask(add_ten, range(5), list(range(5)), None, jobs=-1))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[10, 11, 12, 13, 14]"
    assert "Warning" not in done.stderr
