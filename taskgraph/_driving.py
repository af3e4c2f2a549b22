"""How the scheduler is driven: by its own thread (``n_workers >= 0``), which
waits on the inbox with a timeout only for what needs the clock, or inline, by
the caller's thread inside each call (``n_workers < 0``), with a short-lived
committer thread for a group commit that falls due after the call returned.

Part of the scheduler (a base class of ``Scheduler``, on ``_deciding``; the
scheduler owns all of the state named here, and nothing else calls these).
Imports ``_threads`` and ``_deciding``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from taskgraph import _threads
from taskgraph._deciding import Deciding

if TYPE_CHECKING:
    from taskgraph._progress import Progress

_ELSEWHERE_POLL_S = 0.25
#: Group commit: the records of finished tasks are committed at once when the
#: last commit is at least this old; otherwise they wait for the first of: a
#: task finishing after that, a task that is not known to be short (see
#: SHORT_S) about to start, the scheduler thread's timed wake-up (inline: a
#: short-lived committer thread), or
#: ``close()``/``join()``. So commits come at most about 50 times a second
#: however short the tasks, and a kill can cost only short tasks that
#: finished within this window of the last commit: they run again, and no
#: committed record is touched. From a scheduler thread, ``Task.join()``
#: returns once the task's record is committed, so the window is short.
COMMIT_INTERVAL_S = 0.02
#: The same window inline (``n_workers < 0``), where no one waits for a
#: record: ``add_task`` returns once its task has run, and ``Task.get()`` has
#: the result at once. Each commit writes every page its rows touched, and in
#: a ledger of many records the keys of one group are spread over as many
#: pages, so a group of a quarter of a second (or GROUP_MAX_TASKS) costs
#: about a third per task of one of 20 ms (20,000 tasks of a DAG: 11% less
#: CPU in all).
INLINE_COMMIT_INTERVAL_S = 0.25
#: A group is committed once this many finished tasks wait, whatever the
#: window: each holds its claim (a POSIX lock) until then, and taking or
#: releasing one costs time in proportion to the locks this process holds
#: (2 µs at none, 13 µs at 500 here).
GROUP_MAX_TASKS = 256


class Driving(Deciding):
    """The scheduler's loops: its own thread's, and the inline caller's."""

    # The scheduler's state (see Scheduler.__init__), beyond Deciding's.
    _inbox: queue.SimpleQueue[tuple[str, Any]]
    _stopped: bool
    _reporting_interval: float | None
    _next_report: float
    _progress: Progress | None
    _last_commit: float
    _commit_interval: float  # COMMIT_INTERVAL_S, or inline INLINE_COMMIT_INTERVAL_S
    _inline_lock: threading.RLock
    _committer: threading.Thread | None

    # The scheduler's own methods, which these call.
    def _batch(self, first: tuple[str, Any]) -> None:
        raise NotImplementedError

    def _dispatch(self, force: bool = False) -> None:
        raise NotImplementedError

    def _commit_now(self) -> bool:
        raise NotImplementedError

    def _report(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stopped:
            timeout = None
            if self._reporting_interval:
                timeout = max(0.0, self._next_report - time.monotonic())
            if self._progress is not None:
                timeout = 1.0 if timeout is None else min(timeout, 1.0)  # tick the clock
            if self._elsewhere:
                # Another process holds some task: the ledger is the only way
                # to hear that it finished, so look again soon.
                timeout = _ELSEWHERE_POLL_S if timeout is None else min(timeout, _ELSEWHERE_POLL_S)
            if self._unnotified:
                # Finished tasks wait for the group commit: wake up when it is due.
                due = max(0.0, self._last_commit + self._commit_interval - time.monotonic())
                timeout = due if timeout is None else min(timeout, due)
            try:
                message = self._inbox.get(timeout=timeout)
            except queue.Empty:
                try:
                    if self._elsewhere:
                        self._recheck_elsewhere()
                    self._dispatch()
                except BaseException as error:
                    self._crash(error)
                self._report()
                continue
            try:
                self._batch(message)
            except BaseException as error:
                self._crash(error)
            self._report()

    def _drive(self, first: tuple[str, Any] | None = None) -> None:
        with self._inline_lock:
            self._drive_locked(first)
            if self._unnotified and self._committer is None and not self._stopped:
                self._committer = _threads.start(self._commit_when_due, "taskgraph-commit", short_lived=True)

    def _commit_when_due(self) -> None:
        """Inline: commit the pending group when it is due (or at once when
        a process pool about to fork asks), then end; end as soon as another
        path (``close()``, a task not known to be short) has committed it."""
        hurried = False
        while True:
            with self._inline_lock:
                if self._stopped or not self._unnotified:
                    self._committer = None
                    return
                wait = self._last_commit + self._commit_interval - time.monotonic()
                if wait <= 0 or hurried:
                    try:
                        self._commit_now()
                    except BaseException as error:
                        self._crash(error)
                    self._committer = None
                    return
            # In steps of COMMIT_INTERVAL_S at most, so that a group committed
            # by another path lets this thread end within them.
            hurried = _threads.pause(min(wait, COMMIT_INTERVAL_S))

    def _drive_locked(self, first: tuple[str, Any] | None = None) -> None:
        """Handle the inbox's messages (``first`` before them) until it is empty."""
        while not self._stopped:
            # empty() before get_nowait(): this thread is the inbox's only
            # reader, and a raised queue.Empty costs a microsecond per call.
            if first is not None:
                message, first = first, None
            elif self._inbox.empty():
                if not self._elsewhere or self._failure is not None:
                    return
                # Inline: add_task returns only once its task is done, so wait
                # here for the other process that is running it.
                time.sleep(_ELSEWHERE_POLL_S)
                self._recheck_elsewhere()
                self._dispatch()
                self._wake_finished()
                self._report()
                continue
            else:
                message = self._inbox.get_nowait()
            try:
                self._batch(message)
            except KeyboardInterrupt as interrupt:
                # Ctrl-C inside an inline task: keep what finished, stop the
                # graph, and give the caller the KeyboardInterrupt itself.
                with contextlib.suppress(Exception):
                    if self._unnotified:
                        self._commit_now()
                self._crash(interrupt, log=False)
                raise
            except BaseException as error:
                self._crash(error)
            self._wake_finished()
            self._report()

    def _wake_finished(self) -> None:
        """Inline: wake the waiters of what finished in this call, once for all."""
        if self._to_wake:
            woken, self._to_wake = self._to_wake, []
            self._wake(woken)


__all__ = ["COMMIT_INTERVAL_S", "GROUP_MAX_TASKS", "INLINE_COMMIT_INTERVAL_S", "Driving"]
