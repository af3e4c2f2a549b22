"""Executor backends: where jobs run. The narrow interface and the in-process ones.

An executor takes :class:`~taskgraph._job.Job` objects from the scheduler and
calls back with a :class:`~taskgraph._job.JobResult` for each, from any thread.
The scheduler never gives it more than ``capacity`` jobs at once, so priorities
are decided in the scheduler's queue, not in a backlog inside the executor.

Backends: :class:`InlineExecutor` (``n_workers < 0``), :class:`ThreadExecutor`
(``n_workers == 0``), :class:`taskgraph._pool.ProcessPool` (``n_workers > 0``),
:class:`taskgraph._dask.DaskExecutor`; :mod:`taskgraph._backends` picks one.
"""

from __future__ import annotations

import abc
import queue
import threading
from collections.abc import Callable

from taskgraph import _threads
from taskgraph._job import Job, JobResult, run_job

DoneCallback = Callable[[JobResult], None]


class Executor(abc.ABC):
    """The interface every backend implements."""

    #: How many jobs may be running at once.
    capacity: int
    #: True when ``submit`` runs the job before returning (no job can still
    #: be running once ``submit`` has returned or raised).
    synchronous: bool = False
    #: True when jobs run in this process (inline or in threads): their
    #: arguments and results are not pickled on the way.
    in_process: bool = False
    #: How many jobs marked ``short`` it takes beyond ``capacity``: they wait
    #: behind a short job already running, so that the round trip of one
    #: overlaps the other. Zero: never more than ``capacity``.
    queue_depth: int = 0

    @abc.abstractmethod
    def submit(self, job: Job, done: DoneCallback) -> None:
        """Start ``job``; call ``done`` exactly once with its result.

        ``done`` may be called from any thread, or before ``submit`` returns.
        Failures of the job (its exception, a dead worker) arrive as a result
        with ``error`` set, never as an exception from ``submit``.
        """

    @abc.abstractmethod
    def shutdown(self, kill: bool = False) -> None:
        """Stop the backend. ``kill`` stops running jobs instead of waiting.

        After it returns no worker process or thread of this backend is left.
        Idempotent.
        """


class InlineExecutor(Executor):
    """Runs each job in the calling thread, inside ``submit``."""

    capacity = 1
    synchronous = True
    in_process = True

    def submit(self, job: Job, done: DoneCallback) -> None:
        done(run_job((job.func, job.args, job.kwargs), *job.spec()))

    def shutdown(self, kill: bool = False) -> None:
        pass


class ThreadExecutor(Executor):
    """Runs jobs in ``n_threads`` daemon threads of this process."""

    in_process = True

    def __init__(self, n_threads: int = 1) -> None:
        self.capacity = n_threads
        self._queue: queue.SimpleQueue[tuple[Job, DoneCallback] | None] = queue.SimpleQueue()
        self._threads = [_threads.start(self._work, f"taskgraph-thread-{i}") for i in range(n_threads)]
        self._closed = False

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, done = item
            done(run_job((job.func, job.args, job.kwargs), *job.spec()))
            # Drop the finished job now: an idle thread must not keep its
            # arguments (maybe large arrays) alive until its next job.
            del item, job, done

    def submit(self, job: Job, done: DoneCallback) -> None:
        self._queue.put((job, done))

    def shutdown(self, kill: bool = False) -> None:
        # A thread cannot be killed: with kill=True the threads are told to stop
        # and left to finish their current job on their own (they are daemons).
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        if not kill:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()


__all__ = ["DoneCallback", "Executor", "InlineExecutor", "ThreadExecutor"]
