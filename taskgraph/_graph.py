"""``TaskGraph``: the user API. Checks each ``add_task`` call (``_validate``),
detects duplicates and hands tasks to the scheduler; holds no execution state
of its own.

Imports the engine below it: the scheduler, the ledger, the backends and the
leaves (see the module table in docs/design.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from taskgraph import _threads
from taskgraph import _validate as validate
from taskgraph._backends import make_executor
from taskgraph._cache_use import open_cache
from taskgraph._claims import CLAIMS_SUFFIX, Claims
from taskgraph._errors import (
    DuplicateTaskError,
    InvalidTaskError,
    TaskGraphClosedError,
    TaskGraphTerminatedError,
    TaskTimeoutError,
)
from taskgraph._identity import Identity, SelfReferenceError, normalize_path, task_identity
from taskgraph._job import noop
from taskgraph._ledger import KEY_SUFFIX, Ledger
from taskgraph._policy import Policy, make_policy
from taskgraph._progress import Progress, make_display, wanted
from taskgraph._scheduler import Scheduler
from taskgraph._task import Task
from taskgraph._validate import Call

if TYPE_CHECKING:
    from pathlib import PurePath

    from taskgraph._snapshots import PlanEntry, Statistics, TaskReport

__all__ = ["TaskGraph"]

LOGGER = logging.getLogger("taskgraph.Task")
# Files beside the ledger that belong to it (SQLite's, the lock, claims, key).
_LEDGER_SIDECARS = ("-wal", "-shm", "-journal", ".lock", CLAIMS_SUFFIX, KEY_SUFFIX)
_T = TypeVar("_T")


def _same_targets(call: Call, existing: Task) -> bool:
    """Whether a call identical to ``existing`` is a duplicate of it: the same
    targets. Raises DuplicateTaskError when they only partly overlap."""
    old, new = set(existing._target_path_list), set(call.targets)
    if old == new:
        return True
    if old & new:
        raise DuplicateTaskError(
            f"task {call.name!r} calls the same function with the same arguments as task "
            f"{existing.task_name!r} but their target lists only partly overlap "
            f"({sorted(new)} vs {sorted(old)}): both would write "
            f"{sorted(old & new)}. Give the tasks the same target list or disjoint ones."
        )
    return False


def _usable_cpus() -> list[int] | None:
    from taskgraph._pool import usable_cpus

    return usable_cpus()


def _option(make: Callable[..., _T], *given: Any) -> _T:
    """``make(*given)``, a ValueError it raises reported as a bad ``TaskGraph`` option."""
    try:
        return make(*given)
    except ValueError as error:
        raise InvalidTaskError(f"TaskGraph: {error}") from error


class TaskGraph:
    """A graph of tasks that run in parallel and are skipped when up to date.

    Args:
        taskgraph_cache_dir_path: the workspace directory; the ledger
            (``taskgraph_ledger.sqlite``) lives there. Created if missing.
        n_workers: ``< 0`` runs each task synchronously inside ``add_task``;
            ``0`` runs tasks in a thread of this process; ``> 0`` runs them in
            that many worker processes at lowered priority.
        reporting_interval: if set, log progress every this many seconds.
        dry_run: decide, but run nothing and record nothing: tasks that would
            run end in state ``'would-run'`` (and so do their dependents), the
            others ``'skipped'``; :meth:`plan` lists them with their reasons.
        progress: show progress. On a terminal it is a bar below the log
            output (log records are printed above it); when stderr is not a
            terminal, a plain line through the ``taskgraph`` logger at each
            tenth of the tasks done or each minute. By default: the
            ``TASKGRAPH_PROGRESS`` environment variable (``1`` or ``0``) if
            set, else a bar when stderr is a terminal and nothing otherwise;
            False turns it off.
        executor: a ``distributed.Client``: tasks then run on that Dask
            cluster (``pip install 'taskgraph[dask]'``), while the ledger and
            the decisions stay in this process. ``n_workers > 0`` then caps
            how many tasks are on the cluster at once; otherwise the cap is
            four times the cluster's threads.
        scheduler_address: instead of ``executor``, the address of a Dask
            scheduler to connect to (``'tcp://host:8786'``).
        scheduler: the order ready tasks start in: ``'priority'`` (the
            default: higher ``priority`` first, as natcap), ``'longest_first'``
            (longest ``expected_time`` first, then priority) or a
            :class:`~taskgraph.Policy` instance.
        memory_limit: MiB that the ``memory`` estimates of running tasks may
            add up to: a task waits while it would exceed it (unless nothing
            else runs). Admission applies as soon as a task declares
            ``memory``; None then takes the memory available when the first
            such task is added (psutil).
        bind_cpus: pin each worker process to a core of its own
            (``n_workers > 0``, at most one worker per usable core; Linux and
            Windows).
        keep_going: if True, a failed task does not stop the graph: its
            dependents are cancelled (chained to the failure) and every task
            that does not depend on it still runs; :meth:`join` then raises
            :class:`TasksFailedError` naming every failed task. By default the
            first failure stops the graph, as in natcap taskgraph.
        cache: a directory shared by workspaces (local or on a network
            filesystem): a task that must run is first looked up there by its
            cache key (its function, arguments and input files' contents,
            not where the workspace is); on a hit its targets are restored
            and it ends in state ``'restored'`` without running; after a run
            its targets are put there. None reads ``TASKGRAPH_CACHE`` from
            the environment; False uses no cache. See "Sharing work across
            workspaces" in the documentation.
        cache_key: a file of at least 32 random bytes shared by the team
            (None reads ``TASKGRAPH_CACHE_KEY``): with it, stored results
            (``store_result=True``) are shared too, signed with it; without
            it the cache holds targets only and tasks with stored results run.
        start_method: how worker processes start (``n_workers > 0``):
            ``'fork'`` (the default on Linux and other POSIX systems but
            macOS) forks them from a copy of this process made now, so they
            have every module imported before the graph was made and a
            script's top level is not run again in them; ``'spawn'`` (the
            default on macOS and Windows) starts each in a fresh interpreter
            that imports the main script. ``TASKGRAPH_START_METHOD`` in the
            environment sets the default.

    Use as a context manager, or call :meth:`close` then :meth:`join`.
    """

    def __init__(
        self,
        taskgraph_cache_dir_path: str | os.PathLike[str],
        n_workers: int,
        reporting_interval: float | None = None,
        *,
        dry_run: bool = False,
        progress: bool | None = None,
        executor: Any = None,
        scheduler_address: str | None = None,
        scheduler: str | Policy = "priority",
        memory_limit: float | None = None,
        bind_cpus: bool = False,
        keep_going: bool = False,
        start_method: str | None = None,
        cache: str | os.PathLike[str] | bool | None = None,
        cache_key: str | os.PathLike[str] | None = None,
    ) -> None:
        validate.n_workers(n_workers)
        validate.not_importing_main()
        validate.start_method(start_method)
        if n_workers > 0 and executor is None and scheduler_address is None:
            # The pool is imported only by a graph that has one (psutil and
            # multiprocessing are a fifth of the engine's import time).
            from taskgraph._pool import check_start_method

            start_method = _option(check_start_method, start_method)
        policy = _option(make_policy, scheduler, memory_limit)
        validate.pinning(n_workers, bind_cpus, executor, scheduler_address, _usable_cpus)
        validate.cache(cache, cache_key)
        show_progress = _option(wanted, progress, sys.stderr)
        validate.reporting_interval(reporting_interval)
        self._workspace = os.fspath(taskgraph_cache_dir_path)
        if not dry_run:  # a dry run creates nothing
            os.makedirs(self._workspace, exist_ok=True)
        self._n_workers = n_workers
        self._keep_going = bool(keep_going)
        self._dry_run = dry_run
        self._created = time.monotonic()
        self._remote = (executor is not None or scheduler_address is not None) and not dry_run
        # The backend first: a process pool forks its fork server now, before
        # this graph opens the ledger or starts a thread.
        if self._remote:
            backend = make_executor(n_workers, executor, scheduler_address)
        else:
            backend = make_executor(-1 if dry_run else n_workers, start_method=start_method,
                                    bind_cpus=bind_cpus and not dry_run)
        self._executor = backend
        try:
            self._open(n_workers, reporting_interval, dry_run, show_progress, cache, cache_key, policy,
                       memory_limit)
        except BaseException:
            # Nothing may outlive a graph that could not be made: no worker, no fork server.
            backend.shutdown(kill=True)
            ledger = getattr(self, "_ledger", None)
            if ledger is not None:
                with contextlib.suppress(Exception):
                    ledger.close()
            raise
        self._lock = threading.Lock()
        self._tasks: list[Task] = []
        self._by_key: dict[str, Task] = {}
        self._closed = False
        self._shut_down = False

    def _open(
        self,
        n_workers: int,
        reporting_interval: float | None,
        dry_run: bool,
        show_progress: bool,
        cache: Any,
        cache_key: Any,
        policy: Policy | None,
        memory_limit: float | None,
    ) -> None:
        """The ledger, the cache, the claims and the scheduler (the backend is made first)."""
        backend = self._executor
        self._ledger = Ledger(self._workspace, read_only=dry_run)
        # Where the ledger is, fixed now: SQLite opened it relative to this cwd.
        self._ledger_path = normalize_path(self._ledger.path)
        if not dry_run:
            self._ledger.begin_run(n_workers)
        self._finished_condition = _threads.Finished()
        # A dry run decides only: it neither reads nor writes the cache.
        self._cache = None if dry_run else open_cache(cache, cache_key, normalize_path(self._workspace))
        self._scheduler = Scheduler(
            self._ledger, backend, self._finished_condition,
            threaded=(n_workers >= 0 or self._remote) and not dry_run,
            reporting_interval=reporting_interval, dry_run=dry_run,
            # A dry run runs nothing: there is no progress to show.
            progress=Progress(make_display(sys.stderr), backend.capacity) if show_progress and not dry_run else None,
            claims=None if dry_run else Claims(self._ledger.path),
            policy=policy, memory_limit=memory_limit, keep_going=self._keep_going, cache=self._cache,
        )

    # -- building -------------------------------------------------------------------------

    def add_task(
        self,
        func: Callable[..., Any] | None = None,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        task_name: str | None = None,
        target_path_list: Iterable[str | PurePath] | None = None,
        ignore_path_list: Iterable[str | PurePath] | None = None,
        hash_target_files: bool = True,
        dependent_task_list: Iterable[Task] | None = None,
        ignore_directories: bool = True,
        priority: float = 0,
        hash_algorithm: str = "sizetimestamp",
        transient_run: bool = False,
        store_result: bool = False,
        memory: float | None = None,
        expected_time: float | None = None,
    ) -> Task:
        """Add ``func(*args, **kwargs)`` to the graph and return its Task.

        The task runs once every task in ``dependent_task_list`` has finished,
        unless the ledger shows it already ran with the same function, the
        same arguments and the same input files, and its targets are as it
        left them: then it is skipped.

        Args:
            func: the function to call; None adds a task that does nothing
                (useful as a join point).
            args: positional arguments for ``func``.
            kwargs: keyword arguments for ``func``.
            task_name: a name for logs and the ledger; defaults to the
                function's name.
            target_path_list: files ``func`` creates. The task fails if any is
                missing afterwards; it reruns if any is later changed or deleted.
            ignore_path_list: paths in the arguments that are not inputs.
            hash_target_files: if False, targets are only checked to exist.
            dependent_task_list: tasks that must finish before this one.
            ignore_directories: if False, directories in the arguments count
                as inputs (by size and mtime).
            priority: among ready tasks, higher runs first.
            hash_algorithm: how files are fingerprinted: ``'sizetimestamp'``,
                ``'exists'``, an xxhash name (``'xxh3_128'``, recommended for
                content) or a hashlib name (``'md5'``, ``'sha256'``).
            transient_run: if True, run even when the ledger says up to date.
            store_result: if True, keep the return value in the ledger;
                ``Task.get()`` returns it, also when the task is skipped.
            memory: the most memory the task is expected to use, in MiB: no
                task starts while the estimates of running tasks plus its
                own exceed the graph's ``memory_limit``. A hint for
                scheduling only: it does not change the task's identity.
            expected_time: how long the task is expected to run, in seconds
                (used by ``scheduler='longest_first'``); a hint only, like
                ``memory``.

        Returns:
            The new Task, or the existing one for an identical earlier call.

        Raises:
            TaskGraphClosedError: (a ValueError) after :meth:`close`.
            TaskGraphTerminatedError: (a RuntimeError) after a task failed.
            InvalidTaskError: (a ValueError) for arguments that cannot describe
                a task; the message names the task and the argument.
            DuplicateTaskError: (a RuntimeError) for a call identical to an
                earlier one whose targets only partly overlap it.
            Exception: with ``n_workers < 0`` (and not ``keep_going``), the task's own exception.
        """
        label = validate.task_label(task_name, func)
        with self._lock:
            failure = self._scheduler.failure
            if failure is not None:
                if isinstance(failure, (TaskGraphTerminatedError, KeyboardInterrupt)):
                    raise TaskGraphTerminatedError(
                        f"add_task when Taskgraph is terminated: cannot add task {label!r} because "
                        f"the graph was stopped ({type(failure).__name__}: {failure})."
                    )
                raise TaskGraphTerminatedError(
                    f"add_task when Taskgraph is terminated: cannot add task {label!r} because "
                    f"an earlier task failed ({type(failure).__name__}: "
                    f"{failure}). Fix it and run the script again: finished "
                    "tasks will be skipped."
                )
            if self._closed:
                raise TaskGraphClosedError(
                    f"The task graph is closed and cannot accept more tasks: add_task({label!r}) "
                    "was called after close()."
                )
            # Positional, here and below: a call with 15 keyword arguments
            # costs about 1.8 µs in CPython 3.11, with positional ones 0.15 µs.
            call = self._checked(
                label, func, args, kwargs, target_path_list, ignore_path_list, hash_target_files,
                dependent_task_list, ignore_directories, priority, hash_algorithm, transient_run,
                store_result, memory, expected_time,
            )
            task, is_new = self._make_task(call)
            if not is_new:  # an identical call added before
                return task
        try:
            self._scheduler.add(task)
        except KeyboardInterrupt as interrupt:
            self._terminate(interrupt)
            raise
        if self._n_workers < 0 and task._error is not None and not self._keep_going:
            if self._scheduler.failure is not None:
                # The graph stopped: end the run now (it is what the ledger's
                # current graph is), as join() would; the script usually
                # lets this exception end it.
                self._shutdown()
            raise task._error
        return task

    def _checked(
        self,
        name: str,
        func: Callable[..., Any] | None,
        args: Iterable[Any] | None,
        kwargs: dict[str, Any] | None,
        target_path_list: Iterable[str | PurePath] | None,
        ignore_path_list: Iterable[str | PurePath] | None,
        hash_target_files: bool,
        dependent_task_list: Iterable[Task] | None,
        ignore_directories: bool,
        priority: float,
        hash_algorithm: str,
        transient_run: bool,
        store_result: bool,
        memory: float | None,
        expected_time: float | None,
    ) -> Call:
        """``add_task``'s arguments checked, in this order (the first bad one is
        reported), and normalised."""

        def invalid(message: str) -> InvalidTaskError:
            return InvalidTaskError(f"task {name!r}: {message}")

        checked_func = noop if func is None else validate.function(func, invalid)
        call_args = validate.call_args(args, invalid)
        call_kwargs = validate.call_kwargs(kwargs, invalid)
        dependencies = validate.dependencies(dependent_task_list, Task, self._tasks, invalid)
        raw_targets = validate.target_list(target_path_list, invalid)
        ignore = validate.ignored(ignore_path_list, invalid)
        algorithm = validate.hash_algorithm(hash_algorithm, invalid)
        checked_priority = validate.priority(priority, invalid)
        memory = validate.hint(memory, "memory", "MiB", invalid)
        expected_time = validate.hint(expected_time, "expected_time", "seconds", invalid)
        targets = validate.targets(raw_targets, self._ledger_path, _LEDGER_SIDECARS, invalid)
        return Call(  # (its fields in order)
            name, checked_func, call_args, call_kwargs, dependencies, targets, ignore, bool(ignore_directories),
            algorithm, bool(hash_target_files), bool(transient_run), bool(store_result), checked_priority,
            memory, expected_time,
        )

    def _make_task(self, call: Call) -> tuple[Task, bool]:
        """The Task of a checked call, and whether it is new (not an identical earlier call)."""
        identity = self._identity(call)
        dependencies = call.dependencies
        existing = self._by_key.get(identity.key)
        if existing is not None:
            if _same_targets(call, existing):
                LOGGER.debug("task %r is a duplicate of %r; returning it", call.name, existing.task_name)
                return existing, False
            if not any(dep is existing for dep in dependencies):
                dependencies += (existing,)
        task = Task(  # (Task.__init__'s parameters in order)
            len(self._tasks), call.name, call.func, call.args, call.kwargs, identity, call.targets, call.ignore,
            call.ignore_directories, call.hash_algorithm, call.hash_target_files, call.transient_run,
            call.store_result, call.priority, dependencies, self._payload(call), self._finished_condition,
            call.memory, call.expected_time,
        )
        self._tasks.append(task)
        self._by_key[identity.key] = task
        return task, True

    @staticmethod
    def _identity(call: Call) -> Identity:
        try:
            return task_identity(call.func, call.args, call.kwargs, call.targets)
        except SelfReferenceError as error:
            raise InvalidTaskError(f"task {call.name!r}: {error}") from error
        except RecursionError as error:
            raise InvalidTaskError(
                f"task {call.name!r}: an argument is nested too deeply to identify the call (deeper "
                "than Python's recursion limit); flatten it, or pass it in a file named in the arguments"
            ) from error

    def _payload(self, call: Call) -> bytes | None:
        """The pickled call, for a graph that runs tasks in other processes."""
        if not (self._n_workers > 0 or self._remote) or self._dry_run:
            return None
        return validate.pickled_call(call)

    # -- finishing ------------------------------------------------------------------------

    def close(self) -> None:
        """Accept no more tasks. ``join()`` then also shuts the workers down."""
        if not self._closed and not self._shut_down:
            self._scheduler.all_added()
        self._closed = True

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every task added so far.

        When the graph is closed (or a task failed), also stop the workers and
        close the ledger.

        Returns:
            True when all tasks finished, False if ``timeout`` passed first.

        Raises:
            Exception: the first failure of the graph: a task's own exception
                (with the worker's traceback as ``__cause__``) or a
                :class:`TaskGraphError`.
            TasksFailedError: with ``keep_going=True``, once every task has
                finished, if any failed: it names them all.
            KeyboardInterrupt: after stopping the workers.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._shut_down:
            self._scheduler.all_added()
        try:
            for task in list(self._tasks):
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not task._wait(remaining):
                    return False
        except KeyboardInterrupt as interrupt:
            self._terminate(interrupt)
            raise
        failure = self._scheduler.failure
        if failure is not None:
            self._shutdown()
            raise failure
        failed = self._scheduler.failed_tasks
        if self._closed:
            self._shutdown()
        if failed:
            from taskgraph._snapshots import failures_error

            raise failures_error(failed, self._tasks, self._workspace)
        return True

    def plan(self, timeout: float | None = None) -> list[PlanEntry]:
        """What each task added so far did (or, in a dry run, would do) and why.

        Waits for the decisions (in a dry run they are made inside
        ``add_task``), logs one line per task that runs, and returns one
        :class:`PlanEntry` per task in the order they were added.

        Raises:
            TaskTimeoutError: if ``timeout`` passes before every task is decided.
        """
        from taskgraph._snapshots import PlanEntry  # the snapshots are imported when first asked for

        deadline = None if timeout is None else time.monotonic() + timeout
        for task in list(self._tasks):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not task._wait(remaining):
                raise TaskTimeoutError(f"plan() timed out waiting for task {task.task_name!r}")
        entries = [
            PlanEntry(task.task_name, task.key, task._state, tuple(task._reasons)) for task in self._tasks
        ]
        running = [entry for entry in entries if entry.state in ("ran", "restored", "would-run")]
        verb = "would run" if self._dry_run else "ran"
        LOGGER.info("%s%d of %d tasks %s", "dry run: " if self._dry_run else "", len(running), len(entries), verb)
        for entry in running:
            LOGGER.info("  %s: %s", entry.name, "; ".join(str(reason) for reason in entry.reasons))
        return entries

    def statistics(self) -> Statistics:
        """An immutable snapshot of where the graph stands."""
        from taskgraph._snapshots import statistics

        restored_bytes = self._cache.restored_bytes if self._cache is not None else 0
        return statistics(self._tasks, time.monotonic() - self._created, restored_bytes)

    def report(self) -> list[TaskReport]:
        """What running each task cost: one :class:`TaskReport` per task that
        ran (or failed), in the order they were added, then those running
        now. Tasks that were skipped, cancelled or not started yet are left
        out. Callable at any time; complete after :meth:`join`.

        The same figures are recorded in the ledger (``taskgraph status``).
        """
        from taskgraph._snapshots import reports

        return reports(self._tasks, time.time())

    def terminate(self) -> None:
        """Stop now: kill the running tasks, cancel the others, shut the
        workers down. :meth:`join` then raises :class:`TaskGraphTerminatedError`."""
        error = TaskGraphTerminatedError(
            f"the task graph on {self._workspace!r} was stopped by terminate() before every task "
            "finished; run it again to finish: tasks that finished are skipped"
        )
        with self._lock:
            self._closed = True
        self._terminate(error)

    def _terminate(self, error: BaseException) -> None:
        self._scheduler.abort(error)
        # Kill, whether or not the scheduler thread has taken in the abort yet.
        self._shutdown(kill=True)

    def _shutdown(self, kill: bool = False) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        self._scheduler.stop()
        self._executor.shutdown(kill=kill or self._scheduler.failure is not None)

    def __enter__(self) -> TaskGraph:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._terminate(exc)
            return
        self.close()
        self.join()

    def __repr__(self) -> str:
        return f"<TaskGraph {self._workspace!r} n_workers={self._n_workers} tasks={len(self._tasks)}>"
