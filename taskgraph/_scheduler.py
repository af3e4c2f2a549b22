"""The scheduler: sole owner of graph and task state.

Everything that changes a task's state happens in one thread (a daemon thread
for ``n_workers >= 0``; the caller's own thread, inside ``add_task``, for
``n_workers < 0``, under a lock). Other threads only put messages in its
inbox (inline, a call that finds no other thread driving hands its message
over directly)::

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
critical path (``_ready``), and go to the executor only while it has a free
slot, so the order is honoured at every dispatch. A policy may also hold a
ready task back (memory admission) while others start. The scheduler thread
waits with a timeout only for what needs the clock: progress, a due group
commit, and tasks another process is running (that loop, and the inline
one, are in ``_driving``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from taskgraph import _threads
from taskgraph._cache_use import CacheUse, restored_bytes
from taskgraph._claims import Claims
from taskgraph._decide import Decision
from taskgraph._driving import COMMIT_INTERVAL_S, GROUP_MAX_TASKS, INLINE_COMMIT_INTERVAL_S, Driving
from taskgraph._errors import (
    LedgerError,
    TaskGraphError,
    WorkerDiedError,
    WorkerStartError,
)
from taskgraph._executor import Executor
from taskgraph._failure import describe as describe_failure
from taskgraph._fingerprint import CHECK_ALGORITHM, is_content_algorithm
from taskgraph._handoff import job_for, outcome_of
from taskgraph._history import History
from taskgraph._job import JobResult, check_storable
from taskgraph._ledger import Ledger
from taskgraph._policy import Policy
from taskgraph._progress import Progress, log_status
from taskgraph._ready import Entry, ReadyQueue, function_key
from taskgraph._task import Task

LOGGER = logging.getLogger("taskgraph.Task")

# The states in which a task's dependents may go ahead.
_DONE = frozenset(("ran", "restored", "skipped", "would-run"))

# How many ready tasks a dispatch looks past when the policy holds the first
# ones back: bounds the work per dispatch when many tasks wait for memory.
_HELD_SCAN = 32


class Scheduler(Driving):
    """Decides, dispatches and records tasks; see the module docstring."""

    def __init__(
        self,
        ledger: Ledger,
        executor: Executor,
        finished: _threads.Finished,
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
        self._memory_limit = memory_limit
        self._executor = executor
        self._local = executor.in_process
        self._finished_condition = finished
        self._dry_run = dry_run
        self._claims = claims
        self._progress = progress
        self._failed_count = 0
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
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
        self._commit_interval = COMMIT_INTERVAL_S if threaded else INLINE_COMMIT_INTERVAL_S
        self._last_commit = -self._commit_interval
        # Inline, the caller's own thread is the scheduler: a finished task's
        # waiters are woken at once, and only its claim waits for the commit.
        self._threaded = threaded
        self._to_wake: list[Task] = []  # inline: finished in this call, woken before it returns
        # Inline there is no scheduler thread to commit a group that is due
        # after add_task returned: a short-lived committer thread does, under
        # this lock, which every inline entry into the scheduler holds (so
        # another graph or process waits on a claim at most about the
        # group commit's window, INLINE_COMMIT_INTERVAL_S).
        self._inline_lock = threading.RLock()
        self._committer: threading.Thread | None = None
        # Set when a commit failed: nothing finished after it is recorded (a
        # dependent may have started before its dependency's record was committed).
        self._commit_failed: LedgerError | None = None
        # Every task added whose waiters are not released yet, whatever its
        # state: what a failure of the scheduler itself must finish.
        self._unfinished: dict[int, Task] = {}
        # Durations of earlier runs and of this one (read from the ledger when
        # first needed), for two choices: short jobs may wait behind another in
        # a worker (the executor's queue_depth), and with several workers, ready
        # tasks of equal priority start by their remaining critical path.
        self._history = History(ledger.durations)
        self._ready = ReadyQueue(self._history, policy)
        self._overlap = 0 if executor.synchronous else executor.queue_depth
        self._short_running: set[int] = set()  # running tasks whose jobs were sent as short
        self._order_by_path = not executor.synchronous and executor.capacity > 1
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
        # Inline, with no display to tell and no dry run, a task added with its
        # dependencies done and nothing else ready is decided at once (see _batch).
        self._at_once = not threaded and progress is None and not dry_run
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = _threads.start(self._loop, "taskgraph-scheduler")

    # -- called from other threads (messages only) -----------------------------------

    def add(self, task: Task) -> None:
        # Inline, when no other thread is driving (the lock is free, or this
        # thread's own, inside a task), the message need not wait in the
        # inbox. Never while waiting for the lock: a waiting message must be
        # in the inbox, where whoever drives (or stops the graph) finds it.
        if self._thread is None and self._inline_lock.acquire(blocking=False):
            try:
                if self._inbox.empty():
                    self._drive(("add", task))
                    return
            finally:
                self._inline_lock.release()
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

    def _batch(self, first: tuple[str, Any]) -> None:
        if first[0] == "add" and self._ready_at_once(first[1]):
            self._add_ready(first[1])
            return
        messages = [first]
        inbox = self._inbox
        while not inbox.empty():  # the only reader: see _drive_locked
            messages.append(inbox.get_nowait())
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
            self._to_wake.extend(finished)
        self._dispatch(force)
        if stop:
            self._stop_now()

    def _ready_at_once(self, task: Task) -> bool:
        """Whether an added task is the batch's only business and ready now
        (see ``_add_ready``): inline with no display or dry run, the graph
        going, nothing else ready, running or in the inbox, no policy or
        memory hint, and every dependency done."""
        return (self._at_once and self._failure is None and not self._killing and not self._ready
                and self._ready.policy is None and not self._running and self._inbox.empty()
                and task._memory is None and all(dep._state in _DONE for dep in task._dependencies))

    def _add_ready(self, task: Task) -> None:
        """The batch of one added task whose dependencies are all done, with
        nothing else ready or running: what ``_on_add`` and ``_dispatch``
        do, without the ready queue (inline, most tasks; see ``_batch``)."""
        self._known += 1
        self._ledger.consider(task._identity.record_key)
        self._unfinished[task.task_id] = task
        decision = self._decide(task)
        if decision is not None:
            # (Inline, it has run when this returns; a task it added from
            # inside its run is ready, and starts once its result is handled.)
            self._start_picked([(task, decision)])
        self._commit_if_due()

    def _on_add(self, task: Task, finished: list[Task]) -> None:
        self._known += 1
        self._ledger.consider(task._identity.record_key)  # part of this run's graph, whatever happens to it
        self._unfinished[task.task_id] = task
        if self._progress is not None:
            self._progress.added(task.task_id, self._ready.estimate(task))
        if task._memory is not None:
            self._ready.by_memory(self._memory_limit)
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
            if dep._state not in _DONE:
                waiting += 1
                self._dependents.setdefault(dep.task_id, []).append(task)
        if waiting:
            self._blockers[task.task_id] = (task, waiting)
        else:
            self._ready.push(task)

    def _on_done(self, result: JobResult, finished: list[Task]) -> None:
        task = self._running.pop(result.task_id, None)
        self._short_running.discard(result.task_id)
        if task is None:
            return  # finished already (cancelled when the scheduler failed): the result is ignored
        self._started_at.pop(result.task_id, None)
        if self._commit_failed is not None:
            # The ledger could not take earlier records, which this task may
            # depend on: it is not recorded (it runs again next time). A task
            # that failed by itself keeps its own exception.
            task._state = "failed"
            task._error = result.error if result.error is not None else self._commit_failed
            finished.append(task)
            return
        if result.ended:
            task._started = result.started
            task._duration = result.ended - result.started
            if result.error is None:
                self._history.observe(task._identity.record_key, function_key(task), task._duration)
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
                self._ledger.record(outcome_of(task, result, failure))
                self._task_failed(task, result.error)
            finished.append(task)
            return
        for (path, algorithm), entry in result.digests.items():
            self._ledger.store_digest(path, algorithm, entry)
        self._ledger.record(outcome_of(task, result, None))
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

    def _commit(self, finished: list[Task]) -> bool:
        """Commit the ledger's buffered writes; on failure stop the graph."""
        self._last_commit = time.monotonic()
        try:
            self._ledger.flush()
            return True
        except LedgerError as error:
            self._commit_failed = error
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
                    self._ready.push(dependent)

    def _dispatch(self, force: bool = False) -> None:
        """Start what can start, then, when the group commit is due (or
        ``force``), commit and release every task settled on the way."""
        self._start_ready()
        self._commit_if_due(force)

    def _commit_if_due(self, force: bool = False) -> None:
        unnotified = self._unnotified
        if unnotified and (force or time.monotonic() - self._last_commit >= self._commit_interval
                           or len(unnotified) >= GROUP_MAX_TASKS or self._ledger.lazy_rows_full()):
            self._commit_now()

    def _commit_now(self) -> bool:
        """Commit the finished tasks' records and release them; False if the commit failed."""
        committed = self._commit(self._unnotified)
        self._notify(self._unnotified)
        self._unnotified = []
        return committed

    def _start_ready(self) -> None:
        # _killing is set by abort() (Ctrl-C) before its message arrives:
        # start nothing more in the meantime.
        while self._failure is None and not self._killing:
            starting = self._pick()
            if not starting or not self._start_picked(starting):
                return

    def _start_picked(self, starting: list[tuple[Task, Decision]]) -> bool:
        """Start the tasks ``_pick`` decided must run; False if the commit
        before them failed (they are cancelled)."""
        # Finished tasks wait for the group commit only while what starts
        # is known to be short: a task that may take long (or fill the
        # disk) starts only once the records before it are committed, so
        # it never holds them back. (A dependent may start before its
        # dependencies' records are committed: commits are in order, so
        # its own record can never be committed without theirs.)
        if self._unnotified and not all(self._ready.is_short(task) for task, _ in starting):
            if not self._commit_now():
                for task, _ in starting:
                    self._cancel(task)
                self._finish([task for task, _ in starting])
                return False
        if self._claims is None:
            for task, decision in starting:
                self._start(task, decision)
        else:
            self._claim_and_start(starting)
        return True

    def _pick(self) -> list[tuple[Task, Decision]]:
        """Take the ready tasks that start now, in order, and decide each: the
        up-to-date ones finish here; returns those that must run."""
        running, short = len(self._running), len(self._short_running)
        slots = self._ready.free_slots(self._executor.capacity, running, short)
        if self._order_by_path and running and len(self._ready) > max(slots, 0):
            # More tasks ready than workers free: order them by their remaining critical path.
            # (Not while nothing runs: a rerun that skips everything never pays for it.)
            self._ready.rekey(self._dependents, self._known)
        starting: list[tuple[Task, Decision]] = []
        held: list[Entry] = []
        while self._ready and self._failure is None and (
            len(starting) < slots or self._ready.may_overlap(self._executor.capacity + self._overlap,
                                                             running + len(starting))
        ):
            entry = self._ready.pop()
            task = entry[2]
            if self._ready.policy is not None and not self._admit(task, starting):
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
        self._ready.put_back(held)
        return starting

    def _admit(self, task: Task, starting: list[tuple[Task, Decision]]) -> bool:
        """The policy's word on starting ``task`` now; always yes when
        nothing else runs (so a task too large for the limit runs alone)."""
        if self._dry_run or not (self._running or starting):
            return True
        assert self._ready.policy is not None
        running = [*self._running.values(), *(other for other, _ in starting)]
        return self._ready.policy.admit(task, running)

    def _start(self, task: Task, decision: Decision) -> None:
        if LOGGER.isEnabledFor(logging.DEBUG):
            LOGGER.debug("task %r runs: %s", task.task_name, "; ".join(map(str, decision.reasons)))
        known = {}
        # The inputs' digests the ledger holds: a content mode's, or the check
        # digest a racily clean 'sizetimestamp' input needs (most often a
        # dependency's target, just hashed): the job need not read them again.
        algorithm = task._hash_algorithm if is_content_algorithm(task._hash_algorithm) else (
            CHECK_ALGORITHM if task._hash_algorithm == "sizetimestamp" else None)
        if algorithm is not None:
            for path in decision.inputs:
                entry = self._ledger.lookup_digest(path, algorithm)
                if entry is not None:
                    known[(path, algorithm)] = entry
        cache = None if self._cache is None else self._cache.job_for(task, decision, known, self._ledger)
        job = job_for(task, decision, known, cache)
        if self._overlap:
            job.short = self._ready.is_short(task)
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

    def _job_done(self, result: JobResult) -> None:
        self._inbox.put(("done", result))

    # -- progress --------------------------------------------------------------------

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
        log_status(self._known, self._finished_count, len(self._ready), len(self._blockers),
                   [(task.task_name, now - self._started_at[task_id]) for task_id, task in self._running.items()])

__all__ = ["Scheduler"]
