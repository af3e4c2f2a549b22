"""Scheduling policies: which ready task starts next, and whether it may start now.

Leaf module (imports ``psutil`` only). The scheduler keeps ready tasks in a
heap ordered by ``policy.key(task)`` (smallest first, first-added first among
equal keys) and, before starting the task at the top, asks
``policy.admit(task, running)``. A task that is not admitted stays ready and
the next one is tried, so smaller tasks may go ahead of a large one while it
waits for memory.

The default, natcap's order (higher ``priority`` first), is not a policy
object at all: the scheduler's plain heap path does no extra work per task.
A policy sees tasks only through the read-only properties of
:class:`~taskgraph.Task`: ``task_name``, ``priority``, ``memory`` (MiB or
None) and ``expected_time`` (seconds or None).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class TaskView(Protocol):
    """What a policy may read of a task (a :class:`~taskgraph.Task`)."""

    @property
    def task_name(self) -> str: ...

    @property
    def priority(self) -> float: ...

    @property
    def memory(self) -> float | None: ...

    @property
    def expected_time(self) -> float | None: ...


class Policy:
    """Base class of scheduling policies: natcap's priority order, no limit.

    Subclass it and override :meth:`key`, :meth:`admit` or both; pass an
    instance as ``TaskGraph(..., scheduler=policy)``. Both methods run in the
    scheduler's thread for every ready task, so keep them cheap and never
    block in them.
    """

    def key(self, task: TaskView) -> Any:
        """A sortable value: ready tasks with smaller keys start first.

        Tasks with equal keys start in the order they were added.
        """
        return -task.priority

    def admit(self, task: TaskView, running: Sequence[TaskView]) -> bool:
        """Whether ``task`` may start now, beside the ``running`` tasks.

        Never called when nothing is running: a task that does not fit
        alone still runs (alone), so the graph cannot stall.
        """
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PriorityOrder(Policy):
    """``scheduler='priority'``: higher ``priority`` first (natcap's order)."""


class LongestFirst(Policy):
    """``scheduler='longest_first'``: longest ``expected_time`` first, then
    higher ``priority``. Tasks without an ``expected_time`` count as 0 s.

    Starting long tasks first shortens the makespan of a batch of independent
    tasks: the short ones fill the gaps at the end instead of one long task
    running alone.
    """

    def key(self, task: TaskView) -> Any:
        return (-(task.expected_time or 0.0), -task.priority)


class MemoryLimit(Policy):
    """Memory-aware admission on top of an ordering policy.

    A task starts only while the ``memory`` estimates of the running tasks
    plus its own stay within ``limit`` MiB (tasks without an estimate count
    as 0 MiB); a task runs alone when nothing else is running, even if its
    estimate exceeds the limit.

    Args:
        limit: MiB; None takes the memory available (psutil) when the policy
            is made.
        order: the policy that orders ready tasks (default: priority).
    """

    def __init__(self, limit: float | None = None, order: Policy | None = None) -> None:
        if limit is None:
            import psutil

            limit = psutil.virtual_memory().available / 2**20
        self.limit = float(limit)
        self.order = order if order is not None else PriorityOrder()

    def key(self, task: TaskView) -> Any:
        return self.order.key(task)

    def admit(self, task: TaskView, running: Sequence[TaskView]) -> bool:
        used = sum(other.memory or 0.0 for other in running)
        return used + (task.memory or 0.0) <= self.limit and self.order.admit(task, running)

    def __repr__(self) -> str:
        return f"MemoryLimit(limit={self.limit:.0f}, order={self.order!r})"


#: The names ``TaskGraph(scheduler=...)`` accepts.
POLICY_NAMES = {"priority": PriorityOrder, "longest_first": LongestFirst}


def make_policy(scheduler: str | Policy | None, memory_limit: float | None) -> Policy | None:
    """The policy for ``TaskGraph(scheduler=..., memory_limit=...)``; None for
    the default plain priority heap.

    Raises:
        ValueError: for an unknown name or a memory limit that is not a
            positive number (the caller turns it into its own error).
    """
    if scheduler is None or scheduler == "priority":
        order: Policy | None = None
    elif isinstance(scheduler, Policy):
        order = scheduler
    elif isinstance(scheduler, str) and scheduler in POLICY_NAMES:
        order = POLICY_NAMES[scheduler]()
    else:
        raise ValueError(
            f"scheduler must be one of {sorted(POLICY_NAMES)} or a taskgraph.Policy instance, "
            f"got {scheduler!r}"
        )
    if memory_limit is not None:
        if isinstance(memory_limit, bool) or not isinstance(memory_limit, (int, float)) or not memory_limit > 0:
            raise ValueError(f"memory_limit must be a positive number of MiB or None, got {memory_limit!r}")
        return MemoryLimit(memory_limit, order)
    return order


__all__ = ["POLICY_NAMES", "LongestFirst", "MemoryLimit", "Policy", "PriorityOrder", "TaskView", "make_policy"]
