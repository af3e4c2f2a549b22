"""The public ``Task`` handle returned by ``TaskGraph.add_task``.

Imports ``_errors`` and ``_identity``; ``Reason`` of ``_decide`` for typing only.

A Task holds what ``add_task`` was given and what the scheduler decided. Only
the scheduler writes its state; user code reads it through ``join``, ``get``
and the read-only properties.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from taskgraph._errors import TaskTimeoutError
from taskgraph._identity import Identity
from taskgraph._threads import Finished

if TYPE_CHECKING:  # _decide imports this module (for its own types)
    from taskgraph._decide import Reason

#: Every value of :attr:`Task.state`.
TaskState = Literal["pending", "running", "ran", "restored", "skipped", "failed", "cancelled", "would-run"]


class Task:
    """One call of a function in a :class:`~taskgraph.TaskGraph`.

    Created by :meth:`TaskGraph.add_task`; not meant to be built directly.
    Two tasks are equal when they call the same function with the same
    arguments (target paths aside), as in natcap taskgraph.
    """

    # Slots: a graph of 100,000 tasks keeps them all, and an instance
    # dictionary of this many attributes costs about 1.5 kB a task. A
    # __dict__ slot still takes attributes a script sets on its tasks (as
    # natcap's Task did), made only when one is set.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_args",
        "_cpu_time",
        "_dependencies",
        "_duration",
        "_error",
        "_expected_time",
        "_finished",
        "_finished_condition",
        "_func",
        "_had_record",
        "_hash_algorithm",
        "_identity",
        "_ignore",
        "_ignore_directories",
        "_kwargs",
        "_memory",
        "_payload",
        "_peak_memory",
        "_priority",
        "_reasons",
        "_result",
        "_started",
        "_state",
        "_store_result",
        "_target_mode",
        "_target_path_list",
        "_transient_run",
        "_worker",
        "task_id",
        "task_name",
    )

    def __init__(
        self,
        task_id: int,
        task_name: str,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        identity: Identity,
        targets: tuple[str, ...],
        ignore: frozenset[str],
        ignore_directories: bool,
        hash_algorithm: str,
        hash_target_files: bool,
        transient_run: bool,
        store_result: bool,
        priority: float,
        dependencies: tuple[Task, ...],
        payload: bytes | None,
        finished: Finished,
        memory: float | None = None,
        expected_time: float | None = None,
    ) -> None:
        self.task_id = task_id
        self.task_name = task_name
        self._func = func
        self._args = args
        self._kwargs = kwargs
        self._identity = identity
        self._target_path_list = targets
        self._ignore = ignore
        self._ignore_directories = ignore_directories
        self._hash_algorithm = hash_algorithm
        self._target_mode = hash_algorithm if hash_target_files else "exists"
        self._transient_run = transient_run
        self._store_result = store_result
        self._priority = priority
        # Scheduling hints only: not part of the identity.
        self._memory = memory
        self._expected_time = expected_time
        self._dependencies = dependencies
        self._payload = payload
        # Written by the scheduler only.
        self._state: TaskState = "pending"
        self._result: Any = None
        self._error: BaseException | None = None
        self._reasons: tuple[Reason, ...] = ()
        self._had_record = True  # until the scheduler's check says otherwise
        self._duration = 0.0
        # The run report (set when the task ran): wall-clock start (time.time()),
        # CPU seconds, peak resident memory in bytes, where it ran.
        self._started: float | None = None
        self._cpu_time: float | None = None
        self._peak_memory: int | None = None
        self._worker = ""
        # One condition per graph, notified by the scheduler after each batch
        # of finished tasks: cheaper than an Event per task on large graphs.
        self._finished = False
        self._finished_condition = finished

    # -- read-only views ---------------------------------------------------------

    @property
    def state(self) -> TaskState:
        """``'pending'``, ``'running'``, ``'ran'``, ``'restored'`` (its targets
        came from the shared cache; the function did not run), ``'skipped'``
        (up to date), ``'failed'``, ``'cancelled'`` (another task failed
        first) or, in a dry run, ``'would-run'``."""
        return self._state

    @property
    def reasons(self) -> tuple[Reason, ...]:
        """Why the task ran (empty when it was skipped or has not been decided);
        a task restored from the shared cache has ``restored_from_cache`` first."""
        return self._reasons

    @property
    def priority(self) -> float:
        """Among ready tasks, higher starts first (with the default scheduler)."""
        return self._priority

    @property
    def memory(self) -> float | None:
        """The memory estimate given to ``add_task`` (MiB), or None."""
        return self._memory

    @property
    def expected_time(self) -> float | None:
        """The run-time estimate given to ``add_task`` (seconds), or None."""
        return self._expected_time

    @property
    def target_path_list(self) -> list[str]:
        """The normalised target paths, sorted."""
        return list(self._target_path_list)

    @property
    def key(self) -> str:
        """The task's record key in the ledger."""
        return self._identity.record_key

    # -- natcap API --------------------------------------------------------------

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the task has finished.

        Returns:
            True when it finished, False if ``timeout`` seconds passed first.

        Raises:
            Exception: the task's own exception if it failed (with the worker's
                traceback as ``__cause__``), or :class:`TaskCancelledError` if
                it never ran because another task failed.
        """
        finished = self._wait(timeout)
        if finished and self._error is not None:
            raise self._error
        return finished

    def _wait(self, timeout: float | None) -> bool:
        if self._finished:
            return True
        return self._finished_condition.wait_for(lambda: self._finished, timeout)

    def get(self, timeout: float | None = None) -> Any:
        """Return the function's result, waiting for it if needed.

        A task skipped because it was up to date returns the result recorded
        when it last ran. In a dry run, a task that would run returns None.

        Raises:
            ValueError: if the task was added without ``store_result=True``.
            TaskTimeoutError: (a RuntimeError) if ``timeout`` passes first.
            Exception: the task's own exception if it failed.
        """
        if not self._store_result:
            raise ValueError(
                f"task {self.task_name!r}: must set `store_result` to True in `add_task` "
                "to invoke get()"
            )
        if not self.join(timeout):
            raise TaskTimeoutError(
                f"call to get timed out: task {self.task_name!r} did not finish within "
                f"{timeout} s"
            )
        return self._result

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and self._identity.key == other._identity.key

    def __hash__(self) -> int:
        return hash(self._identity.key)

    def __lt__(self, other: Task) -> bool:
        return self._priority > other._priority

    def __repr__(self) -> str:
        return f"<Task {self.task_name!r} {self._state} key={self._identity.record_key[:12]}>"
