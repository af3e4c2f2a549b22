"""How a run ends: a task's failure (the graph stops, or with ``keep_going``
only its dependents), cancellation and its reason, Ctrl-C, the scheduler's
own crash, and the ledger's close.

Part of the scheduler (a base class of ``Scheduler``, which owns all of the
state named here; nothing else calls these). Imports ``_errors``, and
``_cache_use``, ``_claims``, ``_executor``, ``_ledger``, ``_ready``,
``_task`` (types).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from taskgraph._errors import LedgerError, TaskCancelledError, TaskGraphTerminatedError

if TYPE_CHECKING:
    from taskgraph._cache_use import CacheUse
    from taskgraph._claims import Claims
    from taskgraph._executor import Executor
    from taskgraph._ledger import Ledger
    from taskgraph._ready import ReadyQueue
    from taskgraph._task import Task
    from taskgraph._threads import Finished

LOGGER = logging.getLogger("taskgraph.Task")


class RunEnding:
    """The scheduler's methods for failure, cancellation and the end of a run."""

    # The scheduler's state (see Scheduler.__init__).
    _ledger: Ledger
    _executor: Executor
    _claims: Claims | None
    _cache: CacheUse | None
    _ready: ReadyQueue
    _blockers: dict[int, tuple[Task, int]]
    _running: dict[int, Task]
    _short_running: set[int]
    _started_at: dict[int, float]
    _elsewhere: dict[int, Task]
    _unnotified: list[Task]
    _unfinished: dict[int, Task]
    _finished_condition: Finished
    _failure: BaseException | None
    _keep_going: bool
    _failed_tasks: list[Task]
    _blame: dict[int, Task]
    _failed_count: int
    _finished_count: int
    _known: int
    _killing: bool
    _stopped: bool
    _stop_requested: bool

    def _finish(self, finished: list[Task]) -> None:
        """Release the waiters and dependents of ``finished`` (the scheduler's)."""
        raise NotImplementedError

    def _fail_graph(self, error: BaseException) -> None:
        if self._failure is not None:
            return
        self._failure = error
        self._killing = True
        # Stop running jobs now: no worker outlives a failure.
        self._executor.shutdown(kill=True)
        self._cancel_pending()

    def _task_failed(self, task: Task, error: BaseException) -> None:
        """A task failed: stop the graph, or with keep_going only its dependents."""
        if self._keep_going:
            self._failed_tasks.append(task)
        else:
            self._fail_graph(error)

    def _cancel(self, task: Task, upstream: Task | None = None) -> None:
        """Cancel ``task``: the graph stopped, or (keep_going) ``upstream``,
        a task it depends on, failed or was cancelled."""
        if task._state == "running" and self._claims is not None:
            self._claims.release(task._identity.record_key)  # let other processes run it
        task._state = "cancelled"
        cause = self._failure
        if cause is None and upstream is not None:
            root = self._blame.get(upstream.task_id, upstream)
            self._blame[task.task_id] = root
            cause = root._error
            error = TaskCancelledError(
                f"task {task.task_name!r} did not run because task {root.task_name!r}, which it "
                f"depends on, failed: {type(cause).__name__}: {cause}"
            )
        else:
            error = TaskCancelledError(
                f"task {task.task_name!r} did not run because the graph stopped: "
                f"{type(cause).__name__}: {cause}"
            )
        error.__cause__ = cause
        task._error = error

    def _cancel_pending(self) -> None:
        cancelled = self._ready.tasks()
        cancelled.extend(task for task, _ in self._blockers.values())
        cancelled.extend(self._elsewhere.values())
        self._ready.clear()
        self._blockers.clear()
        self._elsewhere.clear()
        for task in cancelled:
            self._cancel(task)
        self._finish(cancelled)


    def _crash(self, error: BaseException, log: bool = True) -> None:
        """Something raised inside the scheduler itself (not a task): stop the
        graph and finish every task, whatever its state, so that no ``join()``
        waits for a task that nothing will finish. Results that arrive later
        for tasks finished here are ignored. (``log``: say so; not for a
        Ctrl-C, which the caller gets.)"""
        if log:
            LOGGER.error("the taskgraph scheduler failed; stopping the graph", exc_info=error)
        with contextlib.suppress(BaseException):
            self._fail_graph(error)
        self._ready.clear()
        self._blockers.clear()
        self._elsewhere.clear()
        self._running.clear()
        self._short_running.clear()
        self._started_at.clear()
        if self._claims is not None:
            for task in self._unnotified:  # woken already (inline) but still claimed
                with contextlib.suppress(BaseException):
                    self._claims.release(task._identity.record_key)
        self._unnotified = []
        stranded = [task for task in self._unfinished.values() if not task._finished]
        for task in stranded:
            if task._state not in ("ran", "restored", "skipped", "failed", "cancelled", "would-run"):
                self._cancel(task)
        for task in stranded:
            task._finished = True
            if self._claims is not None:
                with contextlib.suppress(BaseException):
                    self._claims.release(task._identity.record_key)
        self._unfinished.clear()
        self._finished_count = self._known
        self._finished_condition.notify_all()
        if self._stop_requested and not self._stopped:
            with contextlib.suppress(BaseException):
                self._stop_now()  # the batch held the stop message: never leave join() waiting
            self._stopped = True

    def _stop_now(self) -> None:
        self._stopped = True
        if self._claims is not None:
            self._claims.close()
        if self._cache is not None:
            self._cache.close()
        self._ledger.end_run()
        try:
            self._ledger.close()
        except LedgerError:
            LOGGER.exception("could not close the ledger cleanly")


    def _ending(self) -> str | None:
        """What stopped the run, for the final progress line (None: nothing did)."""
        failure = self._failure
        if failure is None:
            return None
        if isinstance(failure, KeyboardInterrupt):
            return "interrupted"
        if isinstance(failure, TaskGraphTerminatedError):
            return "stopped by terminate()"
        if self._failed_count:
            return "stopped after a failure"
        return f"stopped: {type(failure).__name__}"


__all__ = ["RunEnding"]
