"""Shared arrays: real worker processes map the same memory, and nothing is left in /dev/shm."""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys

import pytest
from procs import leaves_nothing, shm_segments, wait_until

import taskgraph

np = pytest.importorskip("numpy")

SHM = "/dev/shm"
pytestmark = pytest.mark.skipif(not os.path.isdir(SHM), reason="needs POSIX shared memory in /dev/shm")


@pytest.fixture(autouse=True)
def nothing_left():
    """Every test leaves no shared-memory segment and no child process behind."""
    with leaves_nothing():
        yield


# -- task functions (module level: worker processes import this module) --------------


def fill_row(shared: taskgraph.SharedArray, row: int) -> float:
    """Write ``row`` into row ``row`` and return the sum the worker saw before."""
    seen = float(shared.array[row].sum())
    shared.array[row] = row
    return seen


def add_under_lock(shared: taskgraph.SharedArray, times: int, task: int) -> None:
    del task  # only makes each task distinct
    for _ in range(times):
        with shared.lock:
            # A read-modify-write that loses updates unless the lock excludes other processes.
            value = shared.array[0]
            shared.array[0] = value + 1


# -- tests -----------------------------------------------------------------------------


def test_workers_read_and_write_the_same_memory(tmp_path):
    data = np.ones((4, 250_000))  # 8 MB
    with taskgraph.shared_array(data) as shared:
        assert len(pickle.dumps(shared)) < 1_000  # what a task's payload carries
        with taskgraph.TaskGraph(str(tmp_path), n_workers=2) as graph:
            tasks = [graph.add_task(fill_row, args=(shared, row), store_result=True, transient_run=True)
                     for row in range(4)]
            graph.join(timeout=60)
        assert [task.get(timeout=5) for task in tasks] == [250_000.0] * 4
        assert (shared.array == np.arange(4)[:, None]).all()
        assert (data == 1).all()  # the caller's array was copied, not changed


def test_lock_excludes_other_processes(tmp_path):
    with taskgraph.SharedArray.zeros(1, dtype=np.int64) as counter:
        with taskgraph.TaskGraph(str(tmp_path), n_workers=2) as graph:
            for task in range(4):
                graph.add_task(add_under_lock, args=(counter, 200, task), transient_run=True)
            graph.join(timeout=60)
        assert counter.array[0] == 800


def test_handle_behaves_like_the_array():
    with taskgraph.shared_array(np.arange(6, dtype=np.int32).reshape(2, 3)) as shared:
        assert np.shares_memory(np.asarray(shared), shared.array)
        assert shared.shape == (2, 3) and shared.dtype == np.int32 and shared.nbytes == 24
        shared[1, 2] = 50
        assert shared[1].tolist() == [3, 4, 50] and len(shared) == 2
        assert not np.shares_memory(np.array(shared, copy=True), shared.array)
    with taskgraph.shared_array(np.zeros((0, 3))) as empty:
        assert pickle.loads(pickle.dumps(empty)).shape == (0, 3)
    assert taskgraph.SharedNumpyArray is taskgraph.SharedArray


def test_close_frees_at_once_and_later_use_is_an_error():
    shared = taskgraph.shared_array(np.arange(10.0))
    name, lock_path = shared.name, shared.lock.path
    view = shared.array[2:4]
    payload = pickle.dumps(shared)
    assert name in shm_segments() and os.path.exists(lock_path)
    shared.close()
    shared.close()  # idempotent
    assert name not in shm_segments() and not os.path.exists(lock_path)
    assert view.tolist() == [2.0, 3.0]  # an earlier view is never unmapped under the caller
    with pytest.raises(taskgraph.SharedArrayError, match="closed"):
        shared.array  # noqa: B018
    with pytest.raises(taskgraph.SharedArrayError, match="cannot be sent"):
        pickle.dumps(shared)
    with pytest.raises(taskgraph.SharedArrayError, match="no longer exists") as caught:
        pickle.loads(payload)
    assert isinstance(caught.value, RuntimeError) and name in str(caught.value)


def test_dropping_the_owner_frees_the_segment():
    shared = taskgraph.shared_array(np.arange(10.0))
    name = shared.name
    del shared
    gc.collect()
    assert name not in shm_segments()


def test_objects_cannot_be_shared():
    with pytest.raises(taskgraph.InvalidArgumentError, match="Python objects") as caught:
        taskgraph.shared_array(np.array([object(), 1], dtype=object))
    assert isinstance(caught.value, ValueError)


ATTACH_AND_EXIT = """
import pickle, sys
import taskgraph
shared = pickle.loads(sys.stdin.buffer.read())
shared.array[0] = 42
"""


def test_a_process_that_attaches_and_exits_leaves_the_segment_alone():
    # On Python < 3.13 SharedMemory(name) in another process registers the segment with that
    # process's resource tracker, which unlinks it (with a "leaked" warning) when the process ends.
    with taskgraph.shared_array(np.zeros(4)) as shared:
        done = subprocess.run([sys.executable, "-c", ATTACH_AND_EXIT], input=pickle.dumps(shared),
                              capture_output=True, timeout=60, check=True)
        assert b"leaked" not in done.stderr, done.stderr.decode()
        assert shared.name in shm_segments()
        assert shared.array[0] == 42


OWNER_THEN_SLEEP = """
import sys, time
import numpy as np
import taskgraph
shared = taskgraph.shared_array(np.zeros(1000))
print(shared.name, flush=True)
time.sleep(60)
"""


def test_a_killed_owner_still_frees_its_segment():
    owner = subprocess.Popen([sys.executable, "-c", OWNER_THEN_SLEEP], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        name = owner.stdout.readline().strip()
        assert name in shm_segments()
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
        # The owner's resource tracker sees it die and unlinks what it had registered.
        assert wait_until(lambda: name not in shm_segments(), timeout=30)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(timeout=30)
        owner.stdout.close()
        owner.stderr.close()


def test_dask_workers_on_this_host_attach_the_same_memory(tmp_path, dask_client):
    with taskgraph.SharedArray.zeros((4, 1000)) as shared:
        with taskgraph.TaskGraph(str(tmp_path), n_workers=0, executor=dask_client) as graph:
            tasks = [graph.add_task(fill_row, args=(shared, row), store_result=True, transient_run=True)
                     for row in range(4)]
            graph.join(timeout=60)
        assert [task.get(timeout=5) for task in tasks] == [0.0] * 4
        assert (shared.array == np.arange(4)[:, None]).all()


def _total(shared):
    return float(shared.array.sum())


@pytest.mark.parametrize("n_workers", [-1, 1])
def test_same_data_in_a_new_segment_is_skipped_and_other_data_runs(tmp_path, n_workers):
    data = np.arange(1000, dtype=np.float64)
    workspace = str(tmp_path / "ws")

    def run(values):
        with taskgraph.shared_array(values) as shared, taskgraph.TaskGraph(workspace, n_workers) as graph:
            task = graph.add_task(_total, args=(shared,), store_result=True, task_name="total")
            graph.join()
            return task.get(), task.state

    assert run(data) == (data.sum(), "ran")
    assert run(data.copy()) == (data.sum(), "skipped")  # same content, new segment name
    changed = data.copy()
    changed[7] = -1.0
    assert run(changed) == (changed.sum(), "ran")
