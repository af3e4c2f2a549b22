"""The scheduler: sole owner of graph and task state.

Everything that changes a task's state happens in one thread (a daemon thread
for ``n_workers >= 0``; the caller's own thread, inside ``add_task``, for
``n_workers < 0``). Other threads only put messages in its inbox::

    add_task ──('add', task)──────────┐
    close/join ──('all added', None)──┤
    executor ──('done', JobResult)────┤──> inbox ──> scheduler thread
    join/Ctrl-C ──('abort', error)────┘              │
                                                     ├─> decide() (ledger read, stat)
                                                     ├─> executor.submit(job)
                                                     └─> ledger.record()/flush()

Messages are handled in batches: everything in the inbox is taken at once,
and the records of finished tasks are committed to the ledger in groups
(``COMMIT_INTERVAL_S``); a task's claim (and, from a scheduler thread, its
``join()`` waiters) is released only once its record is committed, while its
dependents are made ready at once. Ready tasks wait in a heap ordered by
priority (higher first, first-added first among equals), or by a scheduling
policy's key (``_policy``), or among equal priorities by their remaining
critical path (``_rekey``), and go to the executor only while it has a free
slot, so the order is honoured at every dispatch. A policy may also hold a
ready task back (memory admission) while others start. The scheduler thread
waits with a timeout only for what needs the clock: progress, a due group
commit, and tasks another process is running.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from taskgraph import _threads
from taskgraph._arguments import tree as argument_tree
from taskgraph._cache_use import CacheUse, restored_bytes
from taskgraph._claims import Claims
from taskgraph._decide import Decision, Reason, decide
from taskgraph._errors import (
    LedgerError,
    TaskCancelledError,
    TaskGraphError,
    TaskGraphTerminatedError,
    WorkerDiedError,
    WorkerStartError,
)
from taskgraph._executor import Executor
from taskgraph._failure import Failure
from taskgraph._failure import describe as describe_failure
from taskgraph._fingerprint import is_content_algorithm
from taskgraph._history import SHORT_S, FunctionKey, History
from taskgraph._identity import describe_arguments
from taskgraph._job import Job, JobResult, check_storable
from taskgraph._ledger import Ledger, Outcome, UntrustedResultError
from taskgraph._policy import LongestFirst, MemoryLimit, Policy, PriorityOrder
from taskgraph._progress import Progress
from taskgraph._task import Task

LOGGER = logging.getLogger("taskgraph.Task")

_ELSEWHERE_POLL_S = 0.25
#: Group commit: the records of finished tasks are committed at once when the
#: last commit is at least this old; otherwise they wait for the first of: a
#: task finishing after that, a task that is not known to be short (see
#: SHORT_S) about to start, the scheduler thread's timed wake-up, or
#: ``close()``/``join()``. So commits come at most about 50 times a second
#: however short the tasks, and a kill can cost only short tasks that
#: finished within this window of the last commit: they run again, and no
#: committed record is touched.
COMMIT_INTERVAL_S = 0.02
# How many ready tasks a dispatch looks past when the policy holds the first
# ones back: bounds the work per dispatch when many tasks wait for memory.
_HELD_SCAN = 32


def _function_key(task: Task) -> FunctionKey:
    """What the history keys a function's mean duration by."""
    function = task._identity.function
    return function.name, function.source_hash


class Scheduler:
    """Decides, dispatches and records tasks; see the module docstring."""

    def __init__(
        self,
        ledger: Ledger,
        executor: Executor,
        finished: threading.Condition,
        *,
        threaded: bool,
        reporting_interval: float | None,
        dry_run: bool = False,
        progress: Progress | None = None,
        claims: Claims | None = None,
        policy: Policy | None = None,
        memory_limit: float | None = None,
        keep_going: bool = False,
        cache: CacheUse | None = None,
    ) -> None:
        self._ledger = ledger
        # The shared cache, consulted only for tasks that must run.
        self._cache = cache
        # None keeps the plain priority heap: no policy call per task.
        self._policy = policy
        self._memory_limit = memory_limit
        self._executor = executor
        self._local = executor.in_process
        self._finished_condition = finished
        self._dry_run = dry_run
        self._claims = claims
        self._progress = progress
        self._failed_count = 0
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._ready: list[tuple[Any, int, Task]] = []
        # Keyed by task_id: Task equality is natcap's "same call" equality, and
        # two calls that differ only in their targets are equal but distinct.
        self._blockers: dict[int, tuple[Task, int]] = {}
        self._dependents: dict[int, list[Task]] = {}
        self._running: dict[int, Task] = {}
        self._started_at: dict[int, float] = {}
        # Ready tasks that another process is running at the moment.
        self._elsewhere: dict[int, Task] = {}
        # Finished tasks whose records are not committed yet (group commit:
        # see COMMIT_INTERVAL_S), and when the ledger was last committed.
        self._unnotified: list[Task] = []
        self._last_commit = -COMMIT_INTERVAL_S
        # Inline, the caller's own thread is the scheduler: a finished task's
        # waiters are woken at once, and only its claim waits for the commit.
        self._threaded = threaded
        # Every task added whose waiters are not released yet, whatever its
        # state: what a failure of the scheduler itself must finish.
        self._unfinished: dict[int, Task] = {}
        # Durations of earlier runs and of this one (read from the ledger when
        # first needed), for two choices: short jobs may wait behind another in
        # a worker (the executor's queue_depth), and with several workers, ready
        # tasks of equal priority start by their remaining critical path.
        self._history = History(ledger.durations)
        self._overlap = 0 if executor.synchronous else executor.queue_depth
        self._short_running: set[int] = set()  # running tasks whose jobs were sent as short
        self._order_by_path = not executor.synchronous and executor.capacity > 1
        self._by_path = False
        self._paths: dict[int, float] = {}
        self._paths_known = -1
        self._next_rekey = 0.0
        self._known = 0
        self._finished_count = 0
        self._failure: BaseException | None = None
        # keep_going: a failed task stops only its dependents; they are kept
        # here in order, and each cancelled task's failed ancestor by task_id.
        self._keep_going = keep_going
        self._failed_tasks: list[Task] = []
        self._blame: dict[int, Task] = {}
        self._killing = False
        self._stopped = False
        self._stop_requested = False
        self._reporting_interval = reporting_interval or None
        self._next_report = time.monotonic() + (self._reporting_interval or 0)
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = _threads.start(self._loop, "taskgraph-scheduler")

    # -- called from other threads (messages only) -----------------------------------

    def add(self, task: Task) -> None:
        self._inbox.put(("add", task))
        if self._thread is None:
            self._drive()

    def abort(self, error: BaseException) -> None:
        """Stop the graph: kill running jobs, cancel the rest."""
        # Killing the executor is thread-safe and must not wait for the
        # scheduler thread, which may be busy; the rest happens in order.
        self._killing = True
        self._executor.shutdown(kill=True)
        self._inbox.put(("abort", error))
        if self._thread is None:
            self._drive()

    def all_added(self) -> None:
        """No more tasks are coming for now: progress can show a total."""
        self._inbox.put(("all added", None))
        if self._thread is None:
            self._drive()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the scheduler thread after the graph is idle, then close the ledger."""
        self._inbox.put(("stop", None))
        if self._thread is None:
            self._drive()
        elif self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def failure(self) -> BaseException | None:
        """The first failure that stopped the graph, if any."""
        return self._failure

    @property
    def failed_tasks(self) -> list[Task]:
        """With ``keep_going``: the tasks that failed so far, in order."""
        return list(self._failed_tasks)

    # -- the scheduler's own thread ---------------------------------------------------

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
                due = max(0.0, self._last_commit + COMMIT_INTERVAL_S - time.monotonic())
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

    def _drive(self) -> None:
        while not self._stopped:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                if not self._elsewhere or self._failure is not None:
                    return
                # Inline: add_task returns only once its task is done, so wait
                # here for the other process that is running it.
                time.sleep(_ELSEWHERE_POLL_S)
                self._recheck_elsewhere()
                self._dispatch()
                self._report()
                continue
            try:
                self._batch(message)
            except BaseException as error:
                self._crash(error)
            self._report()

    def _crash(self, error: BaseException) -> None:
        """Something raised inside the scheduler itself (not a task): stop the
        graph and finish every task, whatever its state, so that no ``join()``
        waits for a task that nothing will finish. Results that arrive later
        for tasks finished here are ignored."""
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
        with self._finished_condition:
            self._finished_condition.notify_all()
        if self._stop_requested and not self._stopped:
            with contextlib.suppress(BaseException):
                self._stop_now()  # the batch held the stop message: never leave join() waiting
            self._stopped = True

    def _batch(self, first: tuple[str, Any]) -> None:
        messages = [first]
        while True:
            try:
                messages.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        finished: list[Task] = []
        stop = False
        # close()/join(), Ctrl-C and the end commit what finished at once.
        force = False
        for kind, payload in messages:
            if kind == "add":
                self._on_add(payload, finished)
            elif kind == "done":
                self._on_done(payload, finished)
            elif kind == "abort":
                force = True
                self._fail_graph(payload)
                if self._executor.synchronous:
                    # Interrupted inside submit(): no result will ever come.
                    for task in self._running.values():
                        self._cancel(task)
                        finished.append(task)
                    self._running.clear()
                    self._short_running.clear()
            elif kind == "all added":
                force = True
                if self._progress is not None:
                    self._progress.all_added()
            elif kind == "stop":
                stop = force = self._stop_requested = True
                # Only after an abort can jobs still be out (threads cannot be
                # killed): their results will not be read, so release waiters.
                for task in self._running.values():
                    self._cancel(task)
                    finished.append(task)
                self._running.clear()
                self._short_running.clear()
        # Dependents of the finished tasks become ready now, but the finished
        # tasks' claims (and, from a scheduler thread, their waiters) are
        # released only once their records are committed: by the group commit.
        self._release(finished)
        self._unnotified.extend(finished)
        if not self._threaded:
            self._wake(finished)
        self._dispatch(force)
        if stop:
            self._stop_now()

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

    def _on_add(self, task: Task, finished: list[Task]) -> None:
        self._known += 1
        self._ledger.consider(task._identity.record_key)  # part of this run's graph, whatever happens to it
        self._unfinished[task.task_id] = task
        if self._progress is not None:
            self._progress.added(task.task_id, self._estimate(task))
        if task._memory is not None and not isinstance(self._policy, MemoryLimit):
            self._memory_aware()
        if self._failure is not None:
            self._cancel(task)
            finished.append(task)
            return
        stopped = next((dep for dep in task._dependencies if dep._state in ("failed", "cancelled")), None)
        if stopped is not None:
            self._cancel(task, upstream=stopped)
            finished.append(task)
            return
        waiting = 0
        for dep in task._dependencies:
            if dep._state not in ("ran", "restored", "skipped", "would-run"):
                waiting += 1
                self._dependents.setdefault(dep.task_id, []).append(task)
        if waiting:
            self._blockers[task.task_id] = (task, waiting)
        else:
            self._push_ready(task)

    def _push_ready(self, task: Task) -> None:
        if self._policy is None:
            if self._by_path:  # see _rekey
                heapq.heappush(self._ready, ((-task._priority, -self._paths.get(task.task_id, 0.0)),
                                             task.task_id, task))
            else:
                heapq.heappush(self._ready, (-task._priority, task.task_id, task))
        else:
            heapq.heappush(self._ready, (self._policy.key(task), task.task_id, task))

    def _memory_aware(self) -> None:
        """A task declared its memory: admit tasks by memory from now on.

        The built-in orders keep their keys (``MemoryLimit`` delegates to
        them); the heap is keyed again, since without a policy its keys may
        hold the critical path (see :meth:`_rekey`). A custom policy is left
        as it is: it decides admission itself.
        """
        if self._policy is None or type(self._policy) in (PriorityOrder, LongestFirst):
            policy = self._policy = MemoryLimit(self._memory_limit, self._policy)
            self._ready = [(policy.key(task), task.task_id, task) for _, _, task in self._ready]
            heapq.heapify(self._ready)

    def _on_done(self, result: JobResult, finished: list[Task]) -> None:
        task = self._running.pop(result.task_id, None)
        self._short_running.discard(result.task_id)
        if task is None:
            return  # finished already (cancelled when the scheduler failed): the result is ignored
        self._started_at.pop(result.task_id, None)
        if result.ended:
            task._started = result.started
            task._duration = result.ended - result.started
            if result.error is None:
                self._history.observe(task._identity.record_key, _function_key(task), task._duration)
            task._cpu_time = result.cpu_time
            task._peak_memory = result.peak_memory
            task._worker = result.worker
        if result.error is None and task._store_result and self._local:
            # Ran in this process, so its value has not been through a pickle
            # yet, and the ledger stores it pickled: fail the task, not the commit.
            check_storable(result, task.task_name)
        restored = self._cache.finished(result) if self._cache is not None else None
        if result.error is not None:
            if self._killing and isinstance(result.error, WorkerDiedError):
                self._cancel(task)
            else:
                task._state = "failed"
                task._error = result.error
                if not isinstance(result.error, TaskGraphError) and hasattr(result.error, "add_note"):
                    # The task's own exception is re-raised as itself; a note
                    # says which task raised it (MemoryError has no message).
                    result.error.add_note(f"raised by taskgraph task {task.task_name!r}")
                LOGGER.error("task %r failed: %s: %.500s", task.task_name, type(result.error).__name__, result.error)
                failure = describe_failure(result.error, result.frames, result.remote_traceback)
                self._ledger.record(self._outcome(task, result, failure))
                self._task_failed(task, result.error)
            finished.append(task)
            return
        for (path, algorithm), entry in result.digests.items():
            self._ledger.store_digest(path, algorithm, entry)
        self._ledger.record(self._outcome(task, result, None))
        if task._store_result:
            task._result = result.result
        task._state = "ran"
        if restored is not None:
            # Its targets came from the shared cache: the function did not run.
            task._state = "restored"
            task._reasons = (restored, *task._reasons)
            self._ledger.record_decision(task._identity.record_key, task.task_name, True,
                                         [reason.as_dict() for reason in task._reasons])
        finished.append(task)

    def _outcome(self, task: Task, result: JobResult, failure: Failure | None) -> Outcome:
        identity = task._identity
        return Outcome(
            record_key=identity.record_key,
            task_key=identity.key,
            name=task.task_name,
            func=identity.function.name,
            source_hash=identity.function.source_hash,
            args=describe_arguments(task._args, task._kwargs),
            hash_algorithm=task._hash_algorithm,
            store_result=task._store_result,
            started=result.started or time.time(),
            ended=result.ended or time.time(),
            worker=result.worker,
            inputs=result.inputs,
            targets=result.targets,
            deps=[dep._identity.record_key for dep in task._dependencies],
            result=result.result,
            error=failure.text if failure is not None else None,
            fresh=not task._had_record,
            cpu_time=result.cpu_time,
            peak_memory=result.peak_memory,
            failure=(failure.type, failure.message, failure.frames_json()) if failure is not None else None,
            arguments=argument_tree(task._args, task._kwargs),
        )

    def _commit(self, finished: list[Task]) -> bool:
        """Commit the ledger's buffered writes; on failure stop the graph."""
        self._last_commit = time.monotonic()
        try:
            self._ledger.flush()
            return True
        except LedgerError as error:
            LOGGER.error("%s", error)
            committed = error.committed  # what fitted, a task at a time
            for task in finished:
                if task._state in ("ran", "restored") and task._identity.record_key not in committed:
                    task._state = "failed"
                    task._error = error
            self._fail_graph(error)
            self._cancel_pending()
            return False

    def _finish(self, finished: list[Task]) -> None:
        """Tasks that need no commit of their own: release waiters and dependents."""
        self._notify(finished)
        self._release(finished)

    def _notify(self, finished: list[Task]) -> None:
        """Release the claims and waiters of tasks whose outcome is settled."""
        if not finished:
            return
        if self._claims is not None:
            for task in finished:
                self._claims.release(task._identity.record_key)
        self._wake(finished)

    def _wake(self, finished: Sequence[Task]) -> None:
        """Release the ``join()`` waiters of ``finished`` (once each)."""
        woken = False
        for task in finished:
            if not task._finished:
                task._finished = woken = True
                self._unfinished.pop(task.task_id, None)
        if woken:
            with self._finished_condition:
                self._finished_condition.notify_all()

    def _release(self, finished: list[Task]) -> None:
        for task in finished:
            self._finished_count += 1
            if task._state == "failed":
                self._failed_count += 1
            if self._progress is not None:
                self._progress.finished(task.task_id, task._state, task.task_name, task._duration,
                                        restored_bytes(task._reasons) if task._state == "restored" else 0)
            for dependent in self._dependents.pop(task.task_id, ()):
                if task._state in ("failed", "cancelled"):
                    if dependent._state == "pending":
                        self._blockers.pop(dependent.task_id, None)
                        self._cancel(dependent, upstream=task)
                        self._finish([dependent])
                    continue
                entry = self._blockers.get(dependent.task_id)
                if entry is None:
                    continue  # cancelled already: a task that finished after the graph stopped
                left = entry[1] - 1
                if left:
                    self._blockers[dependent.task_id] = (dependent, left)
                else:
                    del self._blockers[dependent.task_id]
                    self._push_ready(dependent)

    def _dispatch(self, force: bool = False) -> None:
        """Start what can start, then, when the group commit is due (or
        ``force``), commit and release every task settled on the way."""
        self._start_ready()
        if self._unnotified and (force or time.monotonic() - self._last_commit >= COMMIT_INTERVAL_S):
            self._commit(self._unnotified)
            self._notify(self._unnotified)
            self._unnotified = []

    def _start_ready(self) -> None:
        # _killing is set by abort() (Ctrl-C) before its message arrives:
        # start nothing more in the meantime.
        while self._failure is None and not self._killing:
            slots = self._free_slots()
            if self._order_by_path and self._running and len(self._ready) > max(slots, 0):
                # More tasks ready than workers free: order them by their remaining critical path.
                # (Not while nothing runs: a rerun that skips everything never pays for it.)
                self._rekey()
            starting: list[tuple[Task, Decision]] = []
            held: list[tuple[Any, int, Task]] = []
            while self._ready and self._failure is None and (
                len(starting) < slots or (self._overlap and self._may_overlap(len(starting)))
            ):
                entry = heapq.heappop(self._ready)
                task = entry[2]
                if self._policy is not None and not self._admit(task, starting):
                    held.append(entry)
                    if len(held) >= _HELD_SCAN:
                        break
                    continue
                if self._dry_run:
                    self._plan(task)
                    continue
                decision = self._decide(task)
                if decision is not None:
                    starting.append((task, decision))
            for entry in held:
                heapq.heappush(self._ready, entry)
            if not starting:
                return
            # Finished tasks wait for the group commit only while what starts
            # is known to be short: a task that may take long (or fill the
            # disk) starts only once the records before it are committed, so
            # it never holds them back. (A dependent may start before its
            # dependencies' records are committed: commits are in order, so
            # its own record can never be committed without theirs.)
            if self._unnotified and not all(self._is_short(task) for task, _ in starting):
                committed = self._commit(self._unnotified)
                self._notify(self._unnotified)
                self._unnotified = []
                if not committed:
                    for task, _ in starting:
                        self._cancel(task)
                    self._finish([task for task, _ in starting])
                    return
            if self._claims is None:
                for task, decision in starting:
                    self._start(task, decision)
            else:
                self._claim_and_start(starting)

    def _claim_and_start(self, starting: list[tuple[Task, Decision]]) -> None:
        """Start the tasks of ``starting`` that this process can claim."""
        assert self._claims is not None
        claimed = []
        for task, decision in starting:
            if self._claims.claim(task._identity.record_key):
                claimed.append((task, decision))
            else:
                # Another process is running this very task: wait for it,
                # then decide again (it will most likely be up to date).
                LOGGER.info("task %r is being run by another process on this workspace; waiting for it",
                            task.task_name)
                self._elsewhere[task.task_id] = task
        # Another process may have recorded a task between its decision
        # (perhaps from the ledger's snapshot) and its claim: then it is
        # decided again, which will most likely skip it. If nothing else has
        # written the ledger since it was opened (one check for the round,
        # after the claims), nothing has.
        recheck = bool(claimed) and self._ledger.written_elsewhere()
        for task, decision in claimed:
            if recheck and self._ledger.lookup(task._identity.record_key, fresh=True) != decision.record:
                again = self._decide(task)
                if again is None:
                    continue  # up to date now; its claim goes with its notification
                decision = again
            self._start(task, decision)

    def _free_slots(self) -> int:
        """How many more jobs may start now. Short jobs may wait two to a
        worker (see ``_may_overlap``), so they count as half a worker each,
        rounded up: a long or unknown task is not held back while a worker
        is idle behind a pair of short ones. (If the pair is on two workers
        after all, the pool keeps the job until the first is free.)"""
        running = len(self._running)
        if not self._short_running:
            return self._executor.capacity - running
        short = len(self._short_running)
        return self._executor.capacity - (running - short) - (short + 1) // 2

    def _may_overlap(self, starting: int) -> bool:
        """Whether the next ready task may go to the executor beyond its
        capacity, to wait behind a running one: only a task known to be short
        (a long or unknown one never waits behind another)."""
        if self._policy is not None or len(self._running) + starting >= self._executor.capacity + self._overlap:
            return False
        estimate = self._estimate(self._ready[0][2])
        return estimate is not None and estimate < SHORT_S

    def _estimate(self, task: Task) -> float | None:
        return self._history.estimate(task._identity.record_key, _function_key(task))

    def _is_short(self, task: Task) -> bool:
        """Known (from its own or its function's recorded durations) to take
        less than SHORT_S."""
        estimate = self._estimate(task)
        return estimate is not None and estimate < SHORT_S

    def _rekey(self) -> None:
        """Order the ready tasks (among equal priorities) by their remaining
        critical path: their own expected duration plus the longest chain of
        expected durations through the tasks that wait for them, from the
        ledger's history (a function's mean for a task with no record of its
        own). Recomputed when tasks were added since, at most every 50 ms (or
        four times what the last computation took), so a graph that is still
        growing costs little."""
        now = time.monotonic()
        if self._policy is not None or self._known == self._paths_known or now < self._next_rekey:
            return
        started = time.perf_counter()
        default = self._history.default()
        paths: dict[int, float] = {}
        for _, _, root in self._ready:
            stack: list[tuple[Task, bool]] = [(root, False)]
            while stack:
                task, expanded = stack.pop()
                task_id = task.task_id
                if task_id in paths:
                    continue
                waiting = self._dependents.get(task_id, ())
                if not expanded:
                    stack.append((task, True))
                    stack.extend((child, False) for child in waiting if child.task_id not in paths)
                    continue
                own = self._estimate(task)
                paths[task_id] = (default if own is None else own) + max(
                    (paths.get(child.task_id, 0.0) for child in waiting), default=0.0)
        self._paths = paths
        self._paths_known = self._known
        self._ready = [((-task._priority, -paths.get(task.task_id, 0.0)), task.task_id, task)
                       for _, _, task in self._ready]
        heapq.heapify(self._ready)
        self._by_path = True
        self._next_rekey = now + max(0.05, 4 * (time.perf_counter() - started))

    def _admit(self, task: Task, starting: list[tuple[Task, Decision]]) -> bool:
        """The policy's word on starting ``task`` now; always yes when
        nothing else runs (so a task too large for the limit runs alone)."""
        if self._dry_run or not (self._running or starting):
            return True
        assert self._policy is not None
        running = [*self._running.values(), *(other for other, _ in starting)]
        return self._policy.admit(task, running)

    def _decide(self, task: Task) -> Decision | None:
        """Decide one ready task; finish it if it is up to date. Returns the
        decision of a task that must run, or None."""
        try:
            decision = decide(task, self._ledger, self._ledger)
        except Exception as error:
            task._state = "failed"
            task._error = error
            LOGGER.error("task %r could not be checked: %s: %.500s", task.task_name, type(error).__name__, error)
            self._task_failed(task, error)
            self._finish([task])
            return None
        if not decision.run and task._store_result:
            decision = self._load_result(task, decision)
        task._reasons = decision.reasons
        task._had_record = decision.record is not None
        self._ledger.record_decision(
            task._identity.record_key, task.task_name, decision.run,
            [reason.as_dict() for reason in decision.reasons],
        )
        if decision.run:
            return decision
        task._state = "skipped"
        LOGGER.debug("task %r is up to date: skipped", task.task_name)
        # Dependents may go ahead at once; waiters are woken with the commit
        # (inline at once: see _threaded).
        self._release([task])
        self._unnotified.append(task)
        if not self._threaded:
            self._wake((task,))
        return None

    def _load_result(self, task: Task, decision: Decision) -> Decision:
        """Give an up-to-date task its stored result; if the result fails its
        authentication check it is not unpickled and the task runs again."""
        try:
            task._result = self._ledger.load_result(task._identity.record_key)
        except UntrustedResultError as error:
            LOGGER.warning("task %r: %s. It runs again.", task.task_name, error)
            reason = Reason("result_untrusted", f"its stored result was refused: {error}")
            return Decision(True, (reason,), decision.inputs, decision.record)
        return decision

    def _start(self, task: Task, decision: Decision) -> None:
        if LOGGER.isEnabledFor(logging.DEBUG):
            LOGGER.debug("task %r runs: %s", task.task_name, "; ".join(map(str, decision.reasons)))
        known = {}
        if is_content_algorithm(task._hash_algorithm):
            for path in decision.inputs:
                entry = self._ledger.lookup_digest(path, task._hash_algorithm)
                if entry is not None:
                    known[(path, task._hash_algorithm)] = entry
        job = Job(
            task_id=task.task_id,
            name=task.task_name,
            func=task._func,
            args=task._args,
            kwargs=task._kwargs,
            payload=task._payload,
            inputs=decision.inputs,
            input_mode=task._hash_algorithm,
            targets=task._target_path_list,
            target_mode=task._target_mode,
            want_result=task._store_result,
            known_digests=known,
            priority=task._priority,
            cache=None if self._cache is None else self._cache.job_for(task, decision, known, self._ledger),
        )
        if self._overlap:
            job.short = self._is_short(task)
            if job.short:
                self._short_running.add(task.task_id)
        task._payload = None  # sent once; free the memory
        task._state = "running"
        task._started = time.time()
        self._running[task.task_id] = task
        self._started_at[task.task_id] = time.monotonic()
        if self._progress is not None:
            self._progress.started(task.task_id)
        try:
            self._executor.submit(job, self._job_done)
        except Exception as error:  # a backend's submit should not raise; if it does, the task fails
            self._job_done(JobResult(task.task_id, error=WorkerStartError(
                f"task {task.task_name!r} could not be started: {type(error).__name__}: {error}"
            )))

    def _recheck_elsewhere(self) -> None:
        """Tasks another process was running: back to the ready queue once it
        has finished (or died)."""
        if not self._elsewhere or self._failure is not None:
            return
        assert self._claims is not None
        for task in list(self._elsewhere.values()):
            if not self._claims.held_elsewhere(task._identity.record_key):
                del self._elsewhere[task.task_id]
                self._push_ready(task)

    def _plan(self, task: Task) -> None:
        """Dry run: decide, record nothing, run nothing."""
        upstream = [dep for dep in task._dependencies if dep._state == "would-run"]
        if upstream:
            task._reasons = tuple(
                Reason("dependency_would_run", f"dependency {dep.task_name!r} would run")
                for dep in upstream
            )
        else:
            decision = decide(task, self._ledger, self._ledger)
            if not decision.run and task._store_result:
                decision = self._load_result(task, decision)
            task._reasons = decision.reasons
        task._state = "would-run" if task._reasons else "skipped"
        self._finish([task])

    def _job_done(self, result: JobResult) -> None:
        self._inbox.put(("done", result))

    # -- failure ---------------------------------------------------------------------

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
        cancelled = [task for _, _, task in self._ready]
        cancelled.extend(task for task, _ in self._blockers.values())
        cancelled.extend(self._elsewhere.values())
        self._ready.clear()
        self._blockers.clear()
        self._elsewhere.clear()
        for task in cancelled:
            self._cancel(task)
        self._finish(cancelled)

    # -- progress --------------------------------------------------------------------

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

    def _report(self) -> None:
        if self._progress is not None:
            if self._stopped:
                self._progress.end(self._ending())
            else:
                self._progress.tick()
        if not self._reporting_interval or time.monotonic() < self._next_report:
            return
        self._next_report = time.monotonic() + self._reporting_interval
        now = time.monotonic()
        percent = 100.0 * self._finished_count / self._known if self._known else 100.0
        running = "\n".join(
            f"\t{task.task_name}: executing for {now - self._started_at[task_id]:.2f}s"
            for task_id, task in self._running.items()
        )
        LOGGER.info(
            "taskgraph execution status: tasks added: %d\n"
            "\ttasks complete: %d (%.1f%%)\n"
            "\ttasks waiting for a free worker: %d\n"
            "\ttasks waiting for dependencies: %d\n"
            "\ttasks executing (%d)%s%s",
            self._known, self._finished_count, percent, len(self._ready), len(self._blockers),
            len(self._running), ":\n" if running else "", running,
        )


__all__ = ["Scheduler"]
