"""The niced process pool (``n_workers > 0``): the calling process's side.

One thread, the pool's manager, owns every worker and every job, as in
CPython's ``concurrent.futures.process``. The scheduler's ``shutdown`` only
posts a request and wakes it; so does ``submit``, unless the manager's lock is
free and a worker can take the job now (see :meth:`ProcessPool._hand_over`).
Who writes and who reads what::

    scheduler ──submit(job, done)/shutdown()──> requests queue + wake-up socket
        │                                             │
        └──(small job, a worker free for it: under the manager's lock)──┐
                                                                        ▼
    manager thread ──job──> worker.conn ──> worker process (taskgraph._worker)
         ▲                                              │
         └── worker.conn ('R' result, 'L' log record) ──┘
         └── fork server socket (a worker's exit status) or spawn sentinels
         │
         └──> done(JobResult): exactly once per job, from :meth:`_finish` only

Each worker has its own duplex pipe and runs one job at a time, so when a
worker dies the pool knows exactly which task it was running: that task fails
with :class:`WorkerDiedError` naming the signal or exit code, a fresh worker
takes its place on the next job, and nothing waits forever. A worker that
cannot be started fails its task with :class:`WorkerStartError` and the cause;
``submit`` itself never raises.

How workers start (``start_method``):

- ``'fork'`` (the default on Linux and other POSIX systems but macOS): workers
  are forked by a fork server (:mod:`taskgraph._forkserver`), itself forked
  from the caller when the pool is made, before the engine starts any thread.
  Workers start in milliseconds, with every module the caller had imported,
  and a script without ``if __name__ == "__main__":`` is not run again in
  them. natcap taskgraph 0.11 forks too on Linux (its ``NoDaemonProcess`` is
  a default-context ``multiprocessing.Process``), but from the calling
  process while its threads run; here no worker is forked beside an engine
  thread.
- ``'spawn'`` (the default on macOS and Windows, as multiprocessing's and so
  natcap's there): each worker starts a fresh interpreter, imports the main
  script as ``__mp_main__`` (so its top level must be guarded) and imports
  only ``taskgraph._worker`` of this package before its first job.

``TASKGRAPH_START_METHOD`` in the environment sets the default.

Workers are not daemonic (tasks may start processes of their own), lower
their own priority with psutil (the caller's priority is untouched), ignore
SIGINT (the parent decides what Ctrl-C does), and exit when the calling
process dies. With ``bind_cpus`` each worker is pinned to a core of its own.

This module decides when a worker starts, stops or is killed; how (its
record, starting and killing it, the errors of its end) is
:mod:`taskgraph._pool_workers`'. Imports ``_executor``, ``_forkserver``,
``_pool_workers``, ``_pool_wait``, ``_worker``, ``_threads``, ``_job`` and ``_errors``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import pickle
import queue
import socket
import sys
import threading
import time
import weakref
from typing import Any

from taskgraph import _forkserver, _threads
from taskgraph._errors import TaskExecutionError, WorkerDiedError
from taskgraph._executor import DoneCallback, Executor
from taskgraph._job import Job, JobResult, RemoteTraceback
from taskgraph._pool_wait import Waiter
from taskgraph._pool_workers import (
    Entry,
    Worker,
    describe_exit,
    died,
    kill_group,
    kill_tree,
    log_levels,
    not_started,
    server_start_failed,
    start_failed,
    start_worker,
    stopped,
    usable_cpus,
)
from taskgraph._worker import LOG, STOP

LOGGER = logging.getLogger("taskgraph.Task")

_STOP_GRACE_S = 5.0  # shutdown(kill=False): how long workers may take to stop before they are killed
_KILL_GRACE_S = 5.0  # after a kill: how long until a worker whose end was never seen is given up
START_METHODS = ("fork", "spawn")
# A short job waits behind another in a worker only if its message fits in the pipe's buffer.
_QUEUE_MAX_BYTES = 32 * 1024
ENVIRONMENT_VARIABLE = "TASKGRAPH_START_METHOD"


def default_start_method() -> str:
    """``TASKGRAPH_START_METHOD`` if set, else ``'fork'`` where the platform
    forks safely (POSIX but macOS), else ``'spawn'``."""
    chosen = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if chosen:
        return chosen
    if _forkserver.available() and sys.platform != "darwin":
        return "fork"
    return "spawn"


def check_start_method(start_method: str | None) -> str:
    """The start method to use, or ValueError saying what is allowed here."""
    method = default_start_method() if start_method is None else start_method
    source = f"{ENVIRONMENT_VARIABLE}={method!r}" if start_method is None else f"start_method={method!r}"
    if method not in START_METHODS:
        raise ValueError(f"{source}: the start method must be one of {', '.join(map(repr, START_METHODS))}")
    if method == "fork" and not _forkserver.available():
        raise ValueError(f"{source}: this platform cannot fork worker processes; use 'spawn'")
    return method


class ProcessPool(Executor):
    """``n_workers`` niced worker processes, one job each at a time.

    Args:
        n_workers: how many worker processes run at once.
        start_method: ``'fork'`` or ``'spawn'`` (see the module docstring);
            None takes :func:`default_start_method`.
        nice: lower the workers' priority.
        bind_cpus: pin each worker to a core of its own (from the cores
            this process may use); a worker that replaces a dead one takes
            its core. The caller checks :func:`usable_cpus` first.

    Raises:
        ValueError: for a start method this platform does not have.
        WorkerStartError: when the fork server cannot be started.
    """

    def __init__(
        self, n_workers: int, start_method: str | None = None, nice: bool = True, bind_cpus: bool = False
    ) -> None:
        self.capacity = n_workers
        self.queue_depth = n_workers  # one short job may wait behind each worker's short job
        self.start_method = check_start_method(start_method)
        self._free_cpus: list[int] | None = None
        if bind_cpus:
            cpus = usable_cpus()
            if cpus is None or len(cpus) < n_workers:
                raise ValueError(f"cannot pin {n_workers} workers to their own cores: usable cores {cpus}")
            self._free_cpus = cpus[:n_workers]
        self._nice = nice
        self._server: _forkserver.ForkServer | None = None
        if self.start_method == "fork":
            # Now, before the manager thread below (and the scheduler's) exist.
            try:
                self._server = _forkserver.start()
            except OSError as error:
                raise server_start_failed(error) from error
            if self._server is None:
                LOGGER.warning(
                    "taskgraph threads of another graph are running in this process and no fork server "
                    "is alive to copy, so this pool's workers start with 'spawn' (each imports the main "
                    "script). Make this graph before starting the other, or pass start_method='spawn'."
                )
                self.start_method = "spawn"
        self._context: Any = multiprocessing.get_context("spawn")
        self._requests: queue.SimpleQueue[tuple[str, Any, Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        # What the manager waits on: the wake-up socket, each worker's pipe (and
        # its sentinel under spawn), the fork server's socket while it lives.
        self._waiter = Waiter()
        self._waiter.add(self._wake_r)
        if self._server is not None:
            self._waiter.add(self._server)
        # Set by the first request after the manager last looked: later ones
        # need not write to the pipe again (a write per job costs a system call).
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        # Owned by the manager thread from here on, which holds this lock
        # whenever it is not waiting; the thread that submits a job takes it
        # to hand the job straight to a worker that can take it (_hand_over).
        self._lock = threading.Lock()
        self._levels: dict[str, int] | None = None
        self._workers: list[Worker] = []
        self._idle: list[Worker] = []
        self._backlog: collections.deque[Entry] = collections.deque()
        self._closing = False
        # Set, under the lock, just before the manager takes its last requests:
        # from then on submit() fails a job itself (no request would be read).
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._killing = False
        self._deadline = 0.0
        self._next_index = 0
        # Workers start on first use: a rerun that skips every task starts none.
        self._manager = _threads.start(self._manage, "taskgraph-pool-manager")
        # Safety net only: shutdown() stops the pool in normal use. (weakref.finalize
        # also runs at interpreter exit, before multiprocessing would wait for
        # non-daemonic workers.)
        self._finalizer = weakref.finalize(self, ProcessPool._emergency_stop, self._workers, self._server)

    @staticmethod
    def _emergency_stop(workers: list[Worker], server: _forkserver.ForkServer | None) -> None:
        for worker in list(workers):
            if worker.exitcode is None:
                kill_tree(worker.pid)
        if server is not None:
            server.close()

    # -- called from other threads: post and wake ------------------------------------

    def submit(self, job: Job, done: DoneCallback) -> None:
        assert job.payload is not None
        if self._hand_over(job, done):
            return
        with self._stop_lock:
            if not self._stopped:
                self._requests.put(("job", job, done))
                self._wake()
                return
        # The manager has taken its last requests: the job fails here, at once.
        done(JobResult(job.task_id, error=not_started(job)))

    def _hand_over(self, job: Job, done: DoneCallback) -> bool:
        """Give a small job to a worker that can take it now (idle, or for a
        short job, busy with a short one), here in the caller's thread, under
        the manager's lock: it saves the round through the manager thread
        (its wake-up, then its send), which is most of the cost of each link
        of a chain. False when the manager must take it: a request is waiting
        before it (so order is kept), a worker must be started, the pool is
        closing, or the message is large or cannot be made."""
        if not self._lock.acquire(blocking=False):
            return False  # the manager is at work: it takes the job in its turn
        try:
            if self._closing or not self._requests.empty() or (
                    not self._idle and len(self._workers) < self.capacity):
                return False
            try:
                message = self._message(job)
            except Exception:
                return False  # the manager fails it, saying why
            if len(message) > _QUEUE_MAX_BYTES:
                return False
            self._backlog.append(Entry(job, done, message))
            self._drain_backlog()  # a job no worker can take yet stays for the manager's next event
            return True
        finally:
            self._lock.release()

    def shutdown(self, kill: bool = False) -> None:
        self._requests.put(("shutdown", kill, None))
        self._wake()
        if self._manager is threading.current_thread():
            return
        self._manager.join(_STOP_GRACE_S + 2 * _KILL_GRACE_S)
        if self._manager.is_alive():
            LOGGER.warning("the process pool's manager thread did not stop in time")

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"w")

    # -- the manager thread ------------------------------------------------------------

    def _manage(self) -> None:
        try:
            self._run()
        except BaseException as error:  # a bug here must not leave jobs waiting forever
            with self._lock:
                self._fail_all(error)
        finally:
            with self._lock:
                self._wind_up()

    def _run(self) -> None:
        """Take requests and handle whatever is ready, until the pool is closing
        and no worker is left. Everything but the wait holds the lock (see
        :meth:`_hand_over`)."""
        while True:
            with self._lock:
                self._take_requests()
                if self._server is not None and (self._server.pending or self._server.gone):
                    # Exits read while a worker was starting, or the server found gone
                    # then: settle what that tells about the workers.
                    self._on_ready(self._server)
                if self._closing and not self._workers:
                    return
                timeout = max(0.0, self._deadline - time.monotonic()) if self._closing else None
            ready = self._waiter.wait(timeout)
            with self._lock:
                if not ready and self._closing and time.monotonic() >= self._deadline:
                    self._escalate()
                for handle in ready:
                    self._on_ready(handle)

    def _fail_all(self, error: BaseException) -> None:
        """The manager thread failed: kill every worker and fail its jobs."""
        LOGGER.exception("the process pool's manager thread failed")
        self._closing = self._killing = True  # so that nothing below starts a worker
        failure = WorkerDiedError(f"the process pool failed: {type(error).__name__}: {error}")
        for worker in list(self._workers):
            kill_tree(worker.pid)
            with contextlib.suppress(BaseException):
                self._forget(worker, failure)

    def _wind_up(self) -> None:
        """The manager's last act: fail every job it still holds or is given, release the server and the pipe."""
        self._closing = True
        with self._stop_lock:
            self._stopped = True
        self._take_requests()  # jobs that came with or after the shutdown: not started
        for worker in list(self._workers):  # given up (only after a failure of this thread)
            for entry in worker.jobs:
                with contextlib.suppress(BaseException):
                    self._finish(entry, JobResult(entry.job.task_id, error=WorkerDiedError(
                        f"task {entry.job.name!r} was stopped because the process pool stopped")))
            worker.jobs.clear()
        with contextlib.suppress(BaseException):
            self._drain_backlog()  # closing: every job still waiting fails as not started
        self._finalizer.detach()
        self._waiter.close()
        if self._server is not None:
            self._server.close()
        for handle in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                handle.close()

    def _take_requests(self) -> None:
        while True:
            try:
                kind, first, second = self._requests.get_nowait()
            except queue.Empty:
                return
            if kind == "job":
                self._assign(first, second)
            elif kind == "shutdown":
                self._begin_shutdown(kill=first)

    def _begin_shutdown(self, kill: bool) -> None:
        if not self._closing:
            self._closing = True
            self._deadline = time.monotonic() + _STOP_GRACE_S
            for worker in self._workers:
                if worker.conn is not None:
                    with contextlib.suppress(OSError):
                        worker.conn.send_bytes(STOP)
        if kill and not self._killing:
            self._kill_all()

    def _kill_all(self) -> None:
        self._killing = True
        self._deadline = time.monotonic() + _KILL_GRACE_S
        for worker in list(self._workers):
            self._read_what_is_there(worker)  # a result already in the pipe is delivered, not lost
            kill_tree(worker.pid)

    def _escalate(self) -> None:
        """A shutdown deadline passed: kill the workers, or after a kill,
        give up on the ones whose end was never seen."""
        if not self._killing:
            self._kill_all()
            return
        for worker in list(self._workers):
            self._forget(worker, None)

    def _on_ready(self, handle: Any) -> None:
        if handle is self._wake_r:
            self._on_wake()
            return
        if handle is self._server:
            self._on_server()
            return
        for worker in self._workers:
            if handle is worker.conn:
                self._on_readable(worker)
                return
            if worker.process is not None and handle == worker.process.sentinel:
                worker.process.join(_KILL_GRACE_S)
                worker.exitcode = worker.process.exitcode
                self._on_death(worker)
                return

    def _on_wake(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError: drained already
            while self._wake_r.recv(4096):
                pass
        with self._wake_lock:
            self._wake_pending = False  # requests posted from now on wake it again
        self._take_requests()

    def _on_server(self) -> None:
        """The fork server reported workers' exits, or is gone."""
        assert self._server is not None
        for pid, exitcode in self._server.exits():
            for worker in self._workers:
                if worker.pid == pid:
                    worker.exitcode = exitcode
                    self._on_death(worker)
                    break
        if self._server.gone:
            self._waiter.remove(self._server)
            # Its workers' exits will not be reported: a closed pipe is their end now.
            for worker in list(self._workers):
                if worker.conn is None:
                    self._on_death(worker)

    def _on_readable(self, worker: Worker) -> None:
        assert worker.conn is not None
        try:
            messages = worker.frames.read()
        except (EOFError, OSError):
            self._pipe_closed(worker)
            return
        for data in messages:
            self._on_message(worker, data)

    def _read_what_is_there(self, worker: Worker) -> None:
        """Handle the messages already in a worker's pipe, without waiting."""
        with contextlib.suppress(EOFError, OSError):
            while worker.jobs and worker.conn is not None and worker.conn.poll():
                for data in worker.frames.read():
                    self._on_message(worker, data)

    def _pipe_closed(self, worker: Worker) -> None:
        """The worker's end of its pipe closed: it has died, or is dying.
        Its exit status (from its sentinel or the fork server) completes it."""
        self._close_conn(worker)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        if worker.process is None and (self._server is None or self._server.gone):
            self._on_death(worker)

    def _close_conn(self, worker: Worker) -> None:
        if worker.conn is not None:
            self._waiter.remove(worker.conn)  # before it is closed
            with contextlib.suppress(OSError):
                worker.conn.close()
            worker.conn = None

    def _on_message(self, worker: Worker, data: bytes) -> None:
        tag, body = data[:1], data[1:]
        if tag == LOG:
            try:
                record = pickle.loads(body)
                logger = logging.getLogger(record.name)
                if logger.isEnabledFor(record.levelno):
                    logger.handle(record)
            except Exception:  # a broken log record or handler must not stop the pool
                LOGGER.exception("could not relay a log record from %s", worker.name)
            return
        if not worker.jobs:
            return  # the job was given up already
        job = worker.jobs[0].job
        try:
            result: JobResult = pickle.loads(body)
        except Exception as error:
            result = JobResult(job.task_id, error=TaskExecutionError(
                f"the result of task {job.name!r} could not be unpickled in the calling process "
                f"({error!r}); return only types importable here."
            ))
        if result.error is not None and result.remote_traceback:
            result.error.__cause__ = RemoteTraceback(result.remote_traceback)
        worker.finished_jobs += 1
        self._finish(worker.jobs.popleft(), result)
        if not worker.jobs and not self._closing:
            if self._backlog:
                self._send(worker, self._backlog.popleft())
            else:
                self._idle.append(worker)

    @staticmethod
    def _finish(entry: Entry, result: JobResult) -> None:
        """Hand a job's result to its ``done``: the one place that calls it
        (each entry leaves the pool's lists before it comes here, so once)."""
        entry.done(result)

    def _on_death(self, worker: Worker) -> None:
        self._read_what_is_there(worker)  # what it sent before it died: a result may be there
        kill_group(worker.pid)
        error = None
        if worker.jobs:
            job = worker.jobs[0].job
            error = stopped(job) if self._killing else died(worker, job)
        self._forget(worker, error)

    def _forget(self, worker: Worker, error: BaseException | None) -> None:
        """Drop a worker that has ended; its job, if any, fails with ``error``."""
        with contextlib.suppress(ValueError):
            self._workers.remove(worker)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        if worker.cpu is not None and self._free_cpus is not None:
            self._free_cpus.append(worker.cpu)  # its replacement takes the core
        if worker.process is not None:
            self._waiter.remove(worker.process.sentinel)
        self._close_conn(worker)
        entries, worker.jobs = list(worker.jobs), collections.deque()
        if entries:
            first = entries.pop(0)
            self._finish(first, JobResult(first.job.task_id, error=error or stopped(first.job), worker=worker.name))
        # Jobs that waited behind the one that died never started: they go to
        # another worker (or, when the pool is closing, fail as not started).
        for entry in reversed(entries):
            self._backlog.appendleft(entry)
        self._drain_backlog()

    def _assign(self, job: Job, done: DoneCallback) -> None:
        if self._closing:
            # Shut down (after a failure or Ctrl-C) while the scheduler was still
            # dispatching: start nothing that nothing would stop.
            done(JobResult(job.task_id, error=not_started(job)))
            return
        try:
            message = self._message(job)
        except Exception as error:
            done(JobResult(job.task_id, error=TaskExecutionError(
                f"task {job.name!r} could not be sent to a worker process: {type(error).__name__}: {error}"
            )))
            return
        self._backlog.append(Entry(job, done, message))
        self._drain_backlog()

    @staticmethod
    def _message(job: Job) -> bytes:
        return pickle.dumps((job.payload, job.spec()), protocol=pickle.HIGHEST_PROTOCOL)

    def _drain_backlog(self) -> None:
        """Give waiting jobs to workers: an idle one, a new one while fewer than
        ``capacity`` run, or, for a short job, a worker busy with a short job
        (it waits there, so the round trip overlaps the job before it)."""
        while self._backlog:
            entry = self._backlog[0]
            if self._closing:
                self._backlog.popleft()
                self._finish(entry, JobResult(entry.job.task_id, error=not_started(entry.job)))
                continue
            worker = self._idle.pop() if self._idle else None
            if worker is None and len(self._workers) < self.capacity:
                try:
                    worker = self._start_worker()
                except Exception as error:
                    self._backlog.popleft()
                    self._finish(entry, JobResult(entry.job.task_id, error=start_failed(entry.job, error)))
                    continue
            if worker is None and entry.job.short and len(entry.message) <= _QUEUE_MAX_BYTES:
                # Only a small message: a busy worker reads its pipe between jobs, so a
                # large one would block this thread until the job before it ends.
                worker = next((w for w in self._workers if len(w.jobs) == 1 and w.jobs[0].job.short
                               and w.conn is not None), None)
            if worker is None:
                return  # it waits for the next worker to finish
            self._send(worker, self._backlog.popleft())

    def _send(self, worker: Worker, entry: Entry) -> None:
        worker.jobs.append(entry)
        assert worker.conn is not None
        try:
            worker.conn.send_bytes(entry.message)
        except OSError:
            # The worker died before it got the job: its exit status, seen
            # next, fails the job with the cause.
            self._pipe_closed(worker)

    def _start_worker(self) -> Worker:
        index = self._next_index
        self._next_index += 1
        if self._levels is None:
            self._levels = log_levels()
        cpu = self._free_cpus.pop(0) if self._free_cpus else None
        try:
            worker = start_worker(self._server, self._context, index, self._levels, self._nice, cpu)
        except BaseException:
            if cpu is not None and self._free_cpus is not None:
                self._free_cpus.append(cpu)
            raise
        self._workers.append(worker)
        self._waiter.add(worker.conn)
        if worker.process is not None:
            self._waiter.add(worker.process.sentinel)
        return worker


__all__ = ["ENVIRONMENT_VARIABLE", "START_METHODS", "ProcessPool", "check_start_method", "default_start_method",
           "describe_exit", "usable_cpus"]
