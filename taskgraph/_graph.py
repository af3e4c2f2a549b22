"""``TaskGraph``: the user API. Validates at ``add_task``, then hands tasks to
the scheduler. Holds no execution state of its own."""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from types import TracebackType
from typing import Any

from taskgraph import _validate as validate
from taskgraph._backends import make_executor
from taskgraph._cache_use import open_cache
from taskgraph._claims import Claims
from taskgraph._decide import Reason
from taskgraph._errors import (
    DuplicateTaskError,
    InvalidTaskError,
    TaskGraphClosedError,
    TaskGraphTerminatedError,
    TasksFailedError,
    TaskTimeoutError,
    UnpicklableTaskError,
)
from taskgraph._fingerprint import validate_algorithm
from taskgraph._identity import SelfReferenceError, normalize_path, task_identity
from taskgraph._job import first_unpicklable, noop
from taskgraph._ledger import Ledger
from taskgraph._policy import Policy, make_policy
from taskgraph._pool import check_start_method, usable_cpus
from taskgraph._progress import Progress, make_display, wanted
from taskgraph._scheduler import Scheduler
from taskgraph._task import Task, TaskState

LOGGER = logging.getLogger("taskgraph.Task")
# Files beside the ledger that belong to it (SQLite's, the lock, claims, key).
_LEDGER_SIDECARS = ("-wal", "-shm", "-journal", ".lock", ".claims", ".key")


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


# Hash algorithms that passed validate_algorithm (hashlib's need a trial digest).
_KNOWN_ALGORITHMS: set[str] = set()
_NO_PATHS: frozenset[str] = frozenset()


def _one_line(error: BaseException) -> str:
    """``Type: first line of the message``, at most 200 characters of it."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__


def _unpicklable_part(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """Name the first part of a call that cannot be pickled."""
    parts: list[tuple[str, Any]] = [("the function", func)]
    parts += [(f"argument {index}", value) for index, value in enumerate(args)]
    parts += [(f"keyword argument {name!r}", value) for name, value in kwargs.items()]
    found = first_unpicklable(parts)
    return "the call" if found is None else f"{found[0]} ({found[1]})"


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
        if isinstance(n_workers, bool) or not isinstance(n_workers, int):
            raise InvalidTaskError(f"n_workers must be an integer, got {n_workers!r}")
        if getattr(multiprocessing.current_process(), "_inheriting", False):
            # A spawn worker is importing the main script, whose top level makes a
            # graph: left to go on, it would wait for its own workers forever.
            raise InvalidTaskError(
                "TaskGraph() was called while a worker process started with 'spawn' imported the "
                "main script: its top-level code runs again in every such worker. Put it under "
                "`if __name__ == '__main__':`, or use start_method='fork' (the default on Linux)."
            )
        if start_method is not None and not isinstance(start_method, str):
            raise InvalidTaskError(f"start_method must be 'fork', 'spawn' or None, got {start_method!r}")
        if n_workers > 0 and executor is None and scheduler_address is None:
            try:
                start_method = check_start_method(start_method)
            except ValueError as error:
                raise InvalidTaskError(f"TaskGraph: {error}") from error
        try:
            policy = make_policy(scheduler, memory_limit)
        except ValueError as error:
            raise InvalidTaskError(f"TaskGraph: {error}") from error
        self._check_pinning(n_workers, bind_cpus, executor, scheduler_address)
        if cache is True or not (cache is None or cache is False or isinstance(cache, (str, os.PathLike))):
            raise InvalidTaskError(f"cache must be a directory path, None or False, got {cache!r}")
        if cache_key is not None and not isinstance(cache_key, (str, os.PathLike)):
            raise InvalidTaskError(f"cache_key must be the path of a key file or None, got {cache_key!r}")
        try:
            show_progress = wanted(progress, sys.stderr)
        except ValueError as error:
            raise InvalidTaskError(f"TaskGraph: {error}") from error
        if reporting_interval is not None and (
            not isinstance(reporting_interval, (int, float)) or reporting_interval < 0
        ):
            raise InvalidTaskError(
                f"reporting_interval must be a number of seconds or None, got {reporting_interval!r}"
            )
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
        self._task_ids: set[int] = set()
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
        self._finished_condition = threading.Condition(threading.Lock())
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

    @staticmethod
    def _check_pinning(n_workers: int, bind_cpus: bool, executor: Any, scheduler_address: str | None) -> None:
        """Check that ``bind_cpus=True`` can be met here."""
        if not bind_cpus:
            return
        if n_workers <= 0 or executor is not None or scheduler_address is not None:
            raise InvalidTaskError(
                f"bind_cpus=True pins worker processes to cores, so it needs n_workers > 0 and no "
                f"Dask executor; got n_workers={n_workers!r}"
                + (" with a Dask executor" if executor is not None or scheduler_address else "")
            )
        cpus = usable_cpus()
        if cpus is None:
            raise InvalidTaskError(
                "bind_cpus=True: this platform cannot pin processes to cores (psutil has no "
                "cpu_affinity here, e.g. on macOS); drop bind_cpus"
            )
        if n_workers > len(cpus):
            raise InvalidTaskError(
                f"bind_cpus=True gives each worker a core of its own, but n_workers={n_workers} "
                f"exceeds the {len(cpus)} cores this process may use ({cpus}); use "
                f"n_workers <= {len(cpus)}"
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
            task, is_new = self._make_task(
                label, func, args, kwargs, target_path_list, ignore_path_list,
                hash_target_files, dependent_task_list, ignore_directories, priority,
                hash_algorithm, transient_run, store_result, memory, expected_time,
            )
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

    def _make_task(
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
        memory: float | None = None,
        expected_time: float | None = None,
    ) -> tuple[Task, bool]:
        def invalid(message: str) -> InvalidTaskError:
            return InvalidTaskError(f"task {name!r}: {message}")

        if func is None:
            func = noop
        elif not callable(func):
            raise invalid(f"func must be callable, got {type(func).__name__}")
        call_args = validate.call_args(args, invalid)
        call_kwargs = validate.call_kwargs(kwargs, invalid)
        deps = validate.dependencies(dependent_task_list, invalid, Task)
        if deps:
            foreign = [dep for dep in deps if id(dep) not in self._task_ids]
            if foreign:
                raise invalid(
                    f"dependent_task_list holds tasks of another TaskGraph: {foreign!r}. "
                    "Dependencies must be added to the same graph."
                )
        raw_targets = validate.path_list(target_path_list, "target_path_list", invalid)
        if raw_targets:
            validate.check_target_names(raw_targets, invalid)
        raw_ignore = validate.path_list(ignore_path_list, "ignore_path_list", invalid)
        if type(hash_algorithm) is not str or hash_algorithm not in _KNOWN_ALGORITHMS:
            problem = validate_algorithm(hash_algorithm)
            if problem is not None:
                raise invalid(problem)
            _KNOWN_ALGORITHMS.add(hash_algorithm)
        validate.check_priority(priority, invalid)
        if memory is not None:
            memory = validate.hint(memory, "memory", "MiB", invalid)
        if expected_time is not None:
            expected_time = validate.hint(expected_time, "expected_time", "seconds", invalid)
        targets = tuple(sorted({normalize_path(path) for path in raw_targets})) if raw_targets else ()
        if targets:
            validate.check_normalised_targets(targets, invalid)
        own = self._ledger_path
        for path in targets:
            if path.startswith(own) and (path == own or path[len(own):] in _LEDGER_SIDECARS):
                raise invalid(
                    f"target {path} is one of taskgraph's own files in the workspace; a task that "
                    "wrote it would destroy the ledger. Choose another file name."
                )
        try:
            identity = task_identity(func, call_args, call_kwargs, targets)
        except SelfReferenceError as error:
            raise invalid(str(error)) from error
        except RecursionError as error:
            raise invalid(
                "an argument is nested too deeply to identify the call (deeper than Python's "
                "recursion limit); flatten it, or pass it in a file named in the arguments"
            ) from error
        existing = self._by_key.get(identity.key)
        if existing is not None:
            old, new = set(existing._target_path_list), set(targets)
            if old == new:
                LOGGER.debug("task %r is a duplicate of %r; returning it", name, existing.task_name)
                return existing, False
            if old & new:
                raise DuplicateTaskError(
                    f"task {name!r} calls the same function with the same arguments as task "
                    f"{existing.task_name!r} but their target lists only partly overlap "
                    f"({sorted(new)} vs {sorted(old)}): both would write "
                    f"{sorted(old & new)}. Give the tasks the same target list or disjoint ones."
                )
            if not any(dep is existing for dep in deps):
                deps.append(existing)
        payload = None
        if (self._n_workers > 0 or self._remote) and not self._dry_run:
            try:
                payload = pickle.dumps((func, call_args, call_kwargs), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as error:
                raise UnpicklableTaskError(
                    f"task {name!r}: {_unpicklable_part(func, call_args, call_kwargs)} cannot be pickled, and "
                    "this graph sends every task to another process to run. Define "
                    "the function at module level (not a lambda, nested function or method of an "
                    "unpicklable object), pass picklable arguments, or use n_workers=0 to run "
                    "tasks in a thread."
                ) from error
        task = Task(
            task_id=len(self._tasks),
            task_name=name,
            func=func,
            args=call_args,
            kwargs=call_kwargs,
            identity=identity,
            targets=targets,
            ignore=frozenset([normalize_path(path) for path in raw_ignore]) if raw_ignore else _NO_PATHS,
            ignore_directories=bool(ignore_directories),
            hash_algorithm=hash_algorithm,
            hash_target_files=bool(hash_target_files),
            transient_run=bool(transient_run),
            store_result=bool(store_result),
            priority=priority,
            dependencies=tuple(deps),
            payload=payload,
            finished=self._finished_condition,
            memory=None if memory is None else float(memory),
            expected_time=None if expected_time is None else float(expected_time),
        )
        self._tasks.append(task)
        self._task_ids.add(id(task))
        self._by_key[identity.key] = task
        return task, True

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
            raise self._failures_error(failed)
        return True

    def _failures_error(self, failed: list[Task]) -> TasksFailedError:
        """keep_going: one error naming every failed task, chained to the first failure."""
        failures = [(task.task_name, task._error) for task in failed if task._error is not None]
        cancelled = sum(task._state == "cancelled" for task in self._tasks)
        listed = "; ".join(f"{name!r} ({_one_line(error)})" for name, error in failures)
        plural = len(failures) != 1
        stopped = (
            f"{cancelled} task{'s' if cancelled != 1 else ''} depending on {'them' if plural else 'it'} "
            "did not run; every other task finished" if cancelled else "Every other task finished"
        )
        error = TasksFailedError(
            f"{len(failures)} task{'s' if plural else ''} failed: {listed}. {stopped}. Fix the "
            f"failure{'s' if plural else ''} and run again: the finished tasks are skipped "
            f"(`taskgraph status {self._workspace} --failed` shows the errors).",
            failures,
        )
        error.__cause__ = failures[0][1] if failures else None
        return error

    def plan(self, timeout: float | None = None) -> list[PlanEntry]:
        """What each task added so far did (or, in a dry run, would do) and why.

        Waits for the decisions (in a dry run they are made inside
        ``add_task``), logs one line per task that runs, and returns one
        :class:`PlanEntry` per task in the order they were added.

        Raises:
            TaskTimeoutError: if ``timeout`` passes before every task is decided.
        """
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
        counts = collections.Counter(task._state for task in self._tasks)
        return Statistics(
            added=len(self._tasks),
            pending=counts["pending"],
            running=counts["running"],
            ran=counts["ran"],
            skipped=counts["skipped"],
            failed=counts["failed"],
            cancelled=counts["cancelled"],
            would_run=counts["would-run"],
            elapsed=time.monotonic() - self._created,
            task_seconds=sum(task._duration for task in self._tasks),
            restored=counts["restored"],
            restored_bytes=self._cache.restored_bytes if self._cache is not None else 0,
        )

    def report(self) -> list[TaskReport]:
        """What running each task cost: one :class:`TaskReport` per task that
        ran (or failed), in the order they were added, then those running
        now. Tasks that were skipped, cancelled or not started yet are left
        out. Callable at any time; complete after :meth:`join`.

        The same figures are recorded in the ledger (``taskgraph status``).
        """
        done: list[TaskReport] = []
        running: list[TaskReport] = []
        now = time.time()
        for task in list(self._tasks):
            state, started = task._state, task._started
            if state == "running" and started is not None:
                running.append(TaskReport(task.task_name, task.key, state, started, max(0.0, now - started),
                                          None, None, ""))
            elif state in ("ran", "restored", "failed") and started is not None:
                done.append(TaskReport(task.task_name, task.key, state, started, task._duration,
                                       task._cpu_time, task._peak_memory, task._worker))
        return done + running

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
