"""taskgraph: a persistent dependency-graph build engine for long pipelines.

A drop-in replacement for the public API of natcap ``taskgraph`` 0.11::

    import taskgraph

    with taskgraph.TaskGraph("workspace", n_workers=4) as graph:
        a = graph.add_task(make_a, args=("a.tif",), target_path_list=["a.tif"])
        graph.add_task(slope, args=("a.tif", "slope.tif"),
                       target_path_list=["slope.tif"], dependent_task_list=[a])

Run it twice and the second run executes nothing.
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

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
    TasksFailedError,
    TaskTimeoutError,
    UnpicklableTaskError,
    WorkerDiedError,
    WorkerStartError,
)
from taskgraph._version import __version__

if TYPE_CHECKING:
    from taskgraph._decide import Reason
    from taskgraph._graph import TaskGraph
    from taskgraph._ledger import LEDGER_FILENAME
    from taskgraph._policy import LongestFirst, MemoryLimit, Policy, PriorityOrder
    from taskgraph._shared import SharedArray, SharedLock, SharedNumpyArray, shared_array
    from taskgraph._snapshots import PlanEntry, Statistics, TaskReport
    from taskgraph._task import Task, TaskState
    from taskgraph.multitask import multitask
    from taskgraph.sequencer import TaskSequencer
    from taskgraph.topology import Topology

    _TASKGRAPH_DATABASE_FILENAME = LEDGER_FILENAME

# The rest of the public names are imported on first use: a worker process
# started with ``spawn`` imports ``taskgraph._worker`` (and so this file)
# without the engine, the ledger (SQLite) and the layers it never uses.
_LAZY = {
    "Reason": ("taskgraph._decide", "Reason"),
    "PlanEntry": ("taskgraph._snapshots", "PlanEntry"),
    "Statistics": ("taskgraph._snapshots", "Statistics"),
    "TaskGraph": ("taskgraph._graph", "TaskGraph"),
    "TaskReport": ("taskgraph._snapshots", "TaskReport"),
    "LEDGER_FILENAME": ("taskgraph._ledger", "LEDGER_FILENAME"),
    #: natcap taskgraph's name for the ledger file name, kept for old scripts.
    "_TASKGRAPH_DATABASE_FILENAME": ("taskgraph._ledger", "LEDGER_FILENAME"),
    "LongestFirst": ("taskgraph._policy", "LongestFirst"),
    "MemoryLimit": ("taskgraph._policy", "MemoryLimit"),
    "Policy": ("taskgraph._policy", "Policy"),
    "PriorityOrder": ("taskgraph._policy", "PriorityOrder"),
    "SharedArray": ("taskgraph._shared", "SharedArray"),
    "SharedLock": ("taskgraph._shared", "SharedLock"),
    "SharedNumpyArray": ("taskgraph._shared", "SharedNumpyArray"),
    "shared_array": ("taskgraph._shared", "shared_array"),
    "Task": ("taskgraph._task", "Task"),
    "TaskState": ("taskgraph._task", "TaskState"),
    "multitask": ("taskgraph.multitask", "multitask"),
    "TaskSequencer": ("taskgraph.sequencer", "TaskSequencer"),
    "Topology": ("taskgraph.topology", "Topology"),
}
# Names that are also submodules (natcap's ``taskgraph/Task.py``, and
# ``taskgraph/multitask.py``): importing the submodule must not replace the
# class or function of the same name.
_SHADOWED = frozenset({"Task", "multitask"})


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'taskgraph' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return  # the submodule stays reachable in sys.modules; the name keeps its object
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

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
    "TaskState",
    "TaskTimeoutError",
    "TasksFailedError",
    "Topology",
    "UnpicklableTaskError",
    "WorkerDiedError",
    "WorkerStartError",
    "__version__",
    "multitask",
    "shared_array",
]
