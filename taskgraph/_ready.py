"""The ready queue: the order in which ready tasks start.

Owns the heap of ready tasks and its keys; changes no task's state (the
scheduler does). Imports ``_history`` (estimates), ``_policy`` and ``_task``
(types).

Without a policy the key is the task's priority (higher first), then the
order tasks were added; once more tasks are ready than workers are free, the
scheduler asks for :meth:`ReadyQueue.rekey`, and among equal priorities the
task with the longest remaining critical path (its expected duration plus
the longest chain of expected durations through the tasks that wait for it)
starts first. A policy (``_policy``) replaces the key with ``policy.key``.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskgraph._history import SHORT_S, FunctionKey, History
from taskgraph._policy import LongestFirst, MemoryLimit, Policy, PriorityOrder

if TYPE_CHECKING:
    from taskgraph._task import Task

#: A heap entry: (key, task_id, task); task_id breaks ties in the order added.
Entry = tuple[Any, int, "Task"]


def function_key(task: Task) -> FunctionKey:
    """What the history keys a function's mean duration by."""
    function = task._identity.function
    return function.name, function.source_hash


class ReadyQueue:
    """Ready tasks in the order they should start (see the module docstring)."""

    def __init__(self, history: History, policy: Policy | None) -> None:
        self._history = history
        # None keeps the plain priority heap: no policy call per task.
        self.policy = policy
        self._heap: list[Entry] = []
        self._by_path = False
        self._paths: dict[int, float] = {}
        self._paths_known = -1
        self._next_rekey = 0.0

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    @property
    def by_path(self) -> bool:
        """Whether the keys hold the remaining critical path (see :meth:`rekey`)."""
        return self._by_path

    def tasks(self) -> list[Task]:
        return [task for _, _, task in self._heap]

    def clear(self) -> None:
        self._heap.clear()

    def push(self, task: Task) -> None:
        if self.policy is None:
            if self._by_path:  # see rekey
                key: Any = (-task._priority, -self._paths.get(task.task_id, 0.0))
            else:
                key = -task._priority
        else:
            key = self.policy.key(task)
        heapq.heappush(self._heap, (key, task.task_id, task))

    def pop(self) -> Entry:
        return heapq.heappop(self._heap)

    def put_back(self, entries: Iterable[Entry]) -> None:
        """Entries popped but not started (held back by the policy)."""
        for entry in entries:
            heapq.heappush(self._heap, entry)

    def first(self) -> Task:
        return self._heap[0][2]

    # -- how many start ---------------------------------------------------------------------

    @staticmethod
    def free_slots(capacity: int, running: int, short: int) -> int:
        """How many more jobs may start now, ``running`` of them running and
        ``short`` of those sent as short. Short jobs may wait two to a worker
        (see :meth:`may_overlap`), so they count as half a worker each,
        rounded up: a long or unknown task is not held back while a worker
        is idle behind a pair of short ones. (If the pair is on two workers
        after all, the pool keeps the job until the first is free.)"""
        if not short:
            return capacity - running
        return capacity - (running - short) - (short + 1) // 2

    def may_overlap(self, limit: int, busy: int) -> bool:
        """Whether the first ready task may go to the executor beyond its
        capacity (``busy`` jobs out, at most ``limit`` with those queued in
        workers), to wait behind a running one: only a task known to be short
        (a long or unknown one never waits behind another), and never under a
        policy."""
        return self.policy is None and busy < limit and bool(self._heap) and self.is_short(self.first())

    # -- estimates ----------------------------------------------------------------------

    def estimate(self, task: Task) -> float | None:
        """Seconds ``task`` is expected to take (its own or its function's record), or None."""
        return self._history.estimate(task._identity.record_key, function_key(task))

    def is_short(self, task: Task) -> bool:
        """Known (from its own or its function's recorded durations) to take less than SHORT_S."""
        estimate = self.estimate(task)
        return estimate is not None and estimate < SHORT_S

    # -- keys ------------------------------------------------------------------------------

    def by_memory(self, memory_limit: float | None) -> None:
        """A task declared its memory: admit tasks by memory from now on.

        The built-in orders keep their keys (``MemoryLimit`` delegates to
        them); the heap is keyed again, since without a policy its keys may
        hold the critical path (see :meth:`rekey`). A custom policy is left
        as it is: it decides admission itself.
        """
        if isinstance(self.policy, MemoryLimit):
            return
        if self.policy is None or type(self.policy) in (PriorityOrder, LongestFirst):
            policy = self.policy = MemoryLimit(memory_limit, self.policy)
            self._heap = [(policy.key(task), task.task_id, task) for _, _, task in self._heap]
            heapq.heapify(self._heap)

    def rekey(self, dependents: Mapping[int, Sequence[Task]], known: int) -> None:
        """Order the ready tasks (among equal priorities) by their remaining
        critical path, from the ledger's history (a function's mean for a
        task with no record of its own; ``dependents``: task_id -> the tasks
        waiting for it). Recomputed when tasks were added since (``known``
        counts them), at most every 50 ms (or four times what the last
        computation took), so a graph that is still growing costs little."""
        now = time.monotonic()
        if self.policy is not None or known == self._paths_known or now < self._next_rekey:
            return
        started = time.perf_counter()
        paths = self._critical_paths(dependents)
        self._paths = paths
        self._paths_known = known
        self._heap = [((-task._priority, -paths.get(task.task_id, 0.0)), task.task_id, task)
                      for _, _, task in self._heap]
        heapq.heapify(self._heap)
        self._by_path = True
        self._next_rekey = now + max(0.05, 4 * (time.perf_counter() - started))

    def _critical_paths(self, dependents: Mapping[int, Sequence[Task]]) -> dict[int, float]:
        """task_id -> expected seconds from its start to the end of its longest chain of dependents."""
        default = self._history.default()
        paths: dict[int, float] = {}
        for _, _, root in self._heap:
            stack: list[tuple[Task, bool]] = [(root, False)]
            while stack:
                task, expanded = stack.pop()
                task_id = task.task_id
                if task_id in paths:
                    continue
                waiting = dependents.get(task_id, ())
                if not expanded:
                    stack.append((task, True))
                    stack.extend((child, False) for child in waiting if child.task_id not in paths)
                    continue
                own = self.estimate(task)
                paths[task_id] = (default if own is None else own) + max(
                    (paths.get(child.task_id, 0.0) for child in waiting), default=0.0)
        return paths


__all__ = ["Entry", "ReadyQueue", "function_key"]
