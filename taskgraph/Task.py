"""natcap taskgraph's module path, kept so ``from taskgraph.Task import TaskGraph`` works.

New code imports from ``taskgraph`` itself.
"""

from taskgraph._graph import TaskGraph
from taskgraph._ledger import LEDGER_FILENAME as _TASKGRAPH_DATABASE_FILENAME
from taskgraph._task import Task
from taskgraph._version import __version__

__all__ = ["_TASKGRAPH_DATABASE_FILENAME", "Task", "TaskGraph", "__version__"]
