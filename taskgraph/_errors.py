"""Every exception taskgraph raises itself.

Leaf module: imports nothing from the package.

Each class subclasses :class:`TaskGraphError` and also the built-in type that
natcap ``taskgraph`` 0.11 raised in the same situation, so ``except ValueError``
and ``except RuntimeError`` clauses in existing pipelines keep working.
"""

from __future__ import annotations


class TaskGraphError(Exception):
    """Root of every exception raised by taskgraph itself.

    A task's own exception (say a ``ZeroDivisionError`` in the user's function)
    is re-raised as it is, not wrapped, with the worker's traceback attached as
    its ``__cause__``.
    """


class InvalidTaskError(TaskGraphError, ValueError):
    """Raised by ``add_task`` when its arguments cannot describe a task.

    For example a ``dependent_task_list`` entry that is not a ``Task``, a
    ``target_path_list`` entry that is not a path, an unknown
    ``hash_algorithm``, or (with ``n_workers > 0``) a function or argument that
    cannot be pickled for a worker process.
    """


class UnpicklableTaskError(InvalidTaskError):
    """Raised by ``add_task`` when the graph sends tasks to other processes
    (``n_workers > 0``, Dask) and the call cannot be pickled; the message
    names the part (the function, which argument) and its ``__cause__`` is
    pickle's own error."""


class TaskGraphClosedError(TaskGraphError, ValueError):
    """Raised by ``add_task`` after ``TaskGraph.close()`` was called."""


class TaskGraphTerminatedError(TaskGraphError, RuntimeError):
    """Raised by ``add_task`` after a task of the graph failed.

    A failed task stops the whole graph (as in natcap taskgraph); build a new
    ``TaskGraph`` on the same workspace to continue: tasks that finished are
    skipped.
    """


class DuplicateTaskError(TaskGraphError, RuntimeError):
    """Raised by ``add_task`` for a task whose function and arguments equal an
    earlier task's but whose target list only partly overlaps it."""


class MissingTargetError(TaskGraphError, RuntimeError):
    """A task finished without creating every path in its ``target_path_list``."""


class WorkerDiedError(TaskGraphError, RuntimeError):
    """The worker process running a task died (signal, segfault, out of memory,
    ``os._exit``) before returning a result."""


class WorkerStartError(TaskGraphError, RuntimeError):
    """A worker process for a task could not be started (too many open files,
    no memory left to fork, the fork server gone): the task fails with the
    cause, and the graph stops as for any failure."""


class TaskCancelledError(TaskGraphError, RuntimeError):
    """A task did not run because another task of the graph failed first.

    Its ``__cause__`` is the failure that stopped the graph.
    """


class TasksFailedError(TaskGraphError, RuntimeError):
    """Raised by ``TaskGraph.join()`` of a graph made with ``keep_going=True``
    when one or more of its tasks failed.

    Every task that did not depend on a failed one ran; the dependents of a
    failed task were cancelled (``TaskCancelledError``, chained to that
    failure). The message names every failed task.

    Attributes:
        failures: ``(task name, exception)`` for each failed task, in the
            order they failed. The first exception is also the ``__cause__``.
    """

    def __init__(self, message: str, failures: list[tuple[str, BaseException]] | None = None) -> None:
        super().__init__(message)
        self.failures = list(failures or [])

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.failures))


class StageError(TaskGraphError, RuntimeError):
    """A stage of a ``TaskSequencer`` or a work of a ``Topology`` raised on
    one item.

    Attributes:
        stage: the name of the stage (or work) that raised.
        item: the item it was working on: its index in the input list
            (``TaskSequencer``) or its key in the queue (``Topology``).

    The stage's own exception is the ``__cause__``; from a worker process that
    exception's ``__cause__`` in turn carries the worker's traceback text.
    """

    def __init__(self, message: str, stage: str = "", item: object = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.item = item

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.stage, self.item))


class TaskTimeoutError(TaskGraphError, RuntimeError):
    """``Task.get(timeout)`` ran out of time before the task finished."""


class TaskExecutionError(TaskGraphError, RuntimeError):
    """A task raised an exception that could not be sent back from its worker
    (it could not be pickled), or returned a result that could not be pickled.
    The message holds the original exception's type, text and traceback."""


class InvalidArgumentError(TaskGraphError, ValueError):
    """Raised by the layers built on the engine (``multitask``,
    ``shared_array``, ``TaskSequencer``, ``Topology``, the boss) at the call
    that was given an argument it cannot use (for example both
    ``force_threading`` and ``force_processes``, a ``skip`` list of the wrong
    length, an array of Python objects to share, or a stage that is not
    callable)."""


class SharedArrayError(TaskGraphError, RuntimeError):
    """A shared array could not be created, or attached in a worker: its
    segment was already freed by its owner (``close()`` or the end of the
    ``with`` block came before the tasks using it finished), or the worker runs
    on another host, where the segment does not exist."""


class LedgerError(TaskGraphError, RuntimeError):
    """The ledger (the SQLite file in the workspace) could not be opened or
    written, for example because the workspace is read-only or the disk is
    full. Nothing recorded before the error is lost.

    Attributes:
        committed: when a group of finished tasks could not be committed
            together, the record keys of those committed one at a time
            afterwards (in the order they finished, until one failed).
    """

    committed: frozenset[str] = frozenset()


class MissingDependencyError(TaskGraphError, ImportError):
    """An optional feature needs a package that is not installed; the message
    gives the exact ``pip install`` line."""


class SharedFilesystemError(TaskGraphError, RuntimeError):
    """A task's input files, seen by the scheduling process, do not exist where
    the task ran: targets and inputs must live on a filesystem every worker of
    a cluster shares."""


class JobFailedError(TaskGraphError, RuntimeError):
    """Raised by ``Boss.wait_till_finished`` (``taskgraph.boss``) when a job
    raised: the first failure stops the other jobs. ``name`` and
    ``instructions`` say which job it was; the job's own exception is the
    ``__cause__``."""

    def __init__(self, message: str, name: str = "", instructions: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.instructions = dict(instructions or {})
