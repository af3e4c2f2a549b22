"""What a graph tells about its tasks: :class:`PlanEntry` (``plan()``),
:class:`Statistics` (``statistics()``), :class:`TaskReport` (``report()``) and
the error naming every failed task (``keep_going``).

Imports ``_errors``, ``_task`` and ``Reason`` of ``_decide`` (for the fields'
types). Reads the tasks' state as the scheduler left it.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

from taskgraph._decide import Reason
from taskgraph._errors import TasksFailedError
from taskgraph._task import Task, TaskState


@dataclass(frozen=True, slots=True)
class PlanEntry:
    """One task in :meth:`TaskGraph.plan`: its state (``'ran'``, ``'skipped'``,
    ``'would-run'``, ``'failed'``, ``'cancelled'``) and why."""

    name: str
    key: str
    state: TaskState
    reasons: tuple[Reason, ...]


@dataclass(frozen=True, slots=True)
class Statistics:
    """A snapshot from :meth:`TaskGraph.statistics`.

    Attributes:
        added: tasks added (duplicates count once).
        pending, running, ran, skipped, failed, cancelled, would_run: tasks in
            each state.
        elapsed: seconds since the graph was created.
        task_seconds: the summed run time of the tasks that ran.
        restored: tasks restored from the shared cache (``cache=``).
        restored_bytes: the bytes of their targets and results.
    """

    added: int
    pending: int
    running: int
    ran: int
    skipped: int
    failed: int
    cancelled: int
    would_run: int
    elapsed: float
    task_seconds: float
    restored: int = 0
    restored_bytes: int = 0


@dataclass(frozen=True, slots=True)
class TaskReport:
    """One task in :meth:`TaskGraph.report`: what running it cost.

    Attributes:
        name: the task's name.
        key: its record key in the ledger.
        state: ``'ran'``, ``'restored'`` (from the shared cache: the figures
            are those of the restore), ``'failed'`` or (while the graph runs)
            ``'running'``.
        started: when it started (``time.time()``).
        wall_time: seconds from start to end (so far, while running).
        cpu_time: CPU seconds of the call, None while running. In a worker
            process: the process's user + system time plus that of the
            child processes it waited for; with ``n_workers <= 0`` or Dask:
            the CPU time of the thread that made the call only.
        peak_memory: the highest resident memory (bytes) of the worker
            process while the task ran, including the interpreter and what
            earlier tasks left in that process; None where the task shared
            its process with other work (``n_workers <= 0``, Dask).
        worker: where it ran (process name and pid).
    """

    name: str
    key: str
    state: TaskState
    started: float | None
    wall_time: float
    cpu_time: float | None
    peak_memory: int | None
    worker: str

    def __str__(self) -> str:
        cpu = "-" if self.cpu_time is None else f"{self.cpu_time:.2f}s"
        peak = "-" if self.peak_memory is None else f"{self.peak_memory / 2**20:.0f} MiB"
        return f"{self.name}: {self.state}, wall {self.wall_time:.2f}s, cpu {cpu}, peak {peak}"


def statistics(tasks: Sequence[Task], elapsed: float, restored_bytes: int) -> Statistics:
    """The counts of ``tasks`` by state, and their run time."""
    counts = collections.Counter(task._state for task in tasks)
    return Statistics(
        added=len(tasks),
        pending=counts["pending"],
        running=counts["running"],
        ran=counts["ran"],
        skipped=counts["skipped"],
        failed=counts["failed"],
        cancelled=counts["cancelled"],
        would_run=counts["would-run"],
        elapsed=elapsed,
        task_seconds=sum(task._duration for task in tasks),
        restored=counts["restored"],
        restored_bytes=restored_bytes,
    )


def reports(tasks: Sequence[Task], now: float) -> list[TaskReport]:
    """One report per task that ran, was restored or failed, in order, then those running ``now``."""
    done: list[TaskReport] = []
    running: list[TaskReport] = []
    for task in list(tasks):
        state, started = task._state, task._started
        if state == "running" and started is not None:
            running.append(TaskReport(task.task_name, task.key, state, started, max(0.0, now - started),
                                      None, None, ""))
        elif state in ("ran", "restored", "failed") and started is not None:
            done.append(TaskReport(task.task_name, task.key, state, started, task._duration,
                                   task._cpu_time, task._peak_memory, task._worker))
    return done + running


def failures_error(failed: list[Task], tasks: list[Task], workspace: str) -> TasksFailedError:
    """keep_going: one error naming every failed task, chained to the first failure."""
    failures = [(task.task_name, task._error) for task in failed if task._error is not None]
    cancelled = sum(task._state == "cancelled" for task in tasks)
    listed = "; ".join(f"{name!r} ({_one_line(error)})" for name, error in failures)
    plural = len(failures) != 1
    stopped = (
        f"{cancelled} task{'s' if cancelled != 1 else ''} depending on {'them' if plural else 'it'} "
        "did not run; every other task finished" if cancelled else "Every other task finished"
    )
    error = TasksFailedError(
        f"{len(failures)} task{'s' if plural else ''} failed: {listed}. {stopped}. Fix the "
        f"failure{'s' if plural else ''} and run again: the finished tasks are skipped "
        f"(`taskgraph status {workspace} --failed` shows the errors).",
        failures,
    )
    error.__cause__ = failures[0][1] if failures else None
    return error


def _one_line(error: BaseException) -> str:
    """``Type: first line of the message``, at most 200 characters of it."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__
