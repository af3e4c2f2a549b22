"""taskgraph: a persistent dependency-graph build engine for long pipelines.

A drop-in replacement for the public API of natcap ``taskgraph`` 0.11::

    import taskgraph

    with taskgraph.TaskGraph("workspace", n_workers=4) as graph:
        a = graph.add_task(make_a, args=("a.tif",), target_path_list=["a.tif"])
        graph.add_task(slope, args=("a.tif", "slope.tif"),
                       target_path_list=["slope.tif"], dependent_task_list=[a])

Run it twice and the second run executes nothing.
"""

# isort: off
# Load natcap's module path first: importing it later must not replace the
# ``taskgraph.Task`` class with the module (the class is bound again below).
from taskgraph import Task as _natcap_module_path  # noqa: F401

# isort: on
from taskgraph._decide import Reason
from taskgraph._errors import (
    DuplicateTaskError,
    InvalidArgumentError,
    InvalidTaskError,
    JobFailedError,
    LedgerError,
    MissingDependencyError,
    MissingTargetError,
    SharedArrayError,
    SharedFilesystemError,
    StageError,
    TaskCancelledError,
    TaskExecutionError,
    TaskGraphClosedError,
    TaskGraphError,
    TaskGraphTerminatedError,
    TaskTimeoutError,
    WorkerDiedError,
)
from taskgraph._graph import PlanEntry, Statistics, TaskGraph, TaskReport
from taskgraph._ledger import LEDGER_FILENAME
from taskgraph._policy import LongestFirst, MemoryLimit, Policy, PriorityOrder
from taskgraph._shared import SharedArray, SharedLock, SharedNumpyArray, shared_array
from taskgraph._task import Task
from taskgraph._version import __version__
from taskgraph.multitask import multitask
from taskgraph.sequencer import TaskSequencer
from taskgraph.topology import Topology

#: natcap taskgraph's name for the ledger file name, kept for old scripts.
_TASKGRAPH_DATABASE_FILENAME = LEDGER_FILENAME

__all__ = [
    "LEDGER_FILENAME",
    "DuplicateTaskError",
    "InvalidArgumentError",
    "InvalidTaskError",
    "JobFailedError",
    "LedgerError",
    "LongestFirst",
    "MemoryLimit",
    "MissingDependencyError",
    "MissingTargetError",
    "PlanEntry",
    "Policy",
    "PriorityOrder",
    "Reason",
    "SharedArray",
    "SharedArrayError",
    "SharedFilesystemError",
    "SharedLock",
    "SharedNumpyArray",
    "StageError",
    "Statistics",
    "Task",
    "TaskCancelledError",
    "TaskExecutionError",
    "TaskGraph",
    "TaskGraphClosedError",
    "TaskGraphError",
    "TaskGraphTerminatedError",
    "TaskReport",
    "TaskSequencer",
    "TaskTimeoutError",
    "Topology",
    "WorkerDiedError",
    "__version__",
    "multitask",
    "shared_array",
]
