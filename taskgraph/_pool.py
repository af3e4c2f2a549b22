"""The niced process pool (``n_workers > 0``).

Who writes and who reads what::

    scheduler thread ──submit()──> worker.conn ──> worker process (run_job)
                                                        │
    manager thread  <── worker.conn ('R' result, 'L' log record) ─┘
         │  also waits on every worker's sentinel and on a wake-up pipe
         └──> done(JobResult)  (puts the result in the scheduler's inbox)

Each worker has its own duplex pipe and runs one job at a time, so when a
worker's sentinel fires the pool knows exactly which task it was running: that
task fails with :class:`WorkerDiedError` naming the signal or exit code, a fresh
worker takes its place, and nothing waits forever. Workers are started with the
``spawn`` method (as natcap taskgraph does: safe with the threads of the calling
process), are not daemonic (tasks may start processes of their own), lower
their own priority with psutil (the caller's priority is untouched), ignore
SIGINT (the parent decides what Ctrl-C does), and exit when the parent dies.
With ``bind_cpus`` each worker is pinned to a core of its own.

The run report is measured in the worker, around each job: CPU time is the
worker process's user + system time plus that of the child processes it
waited for; peak memory is the worker's resident set size, sampled every
10 ms by a thread while the job runs and completed by the kernel's exact
high-water mark (``ru_maxrss``) whenever the job raised it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import psutil

from taskgraph._errors import TaskExecutionError, WorkerDiedError
from taskgraph._executor import DoneCallback, Executor
from taskgraph._job import Job, JobResult, encode_result, run_job

LOGGER = logging.getLogger("taskgraph.Task")

_RESULT = b"R"
_LOG = b"L"
_STOP = b""
_JOIN_TIMEOUT_S = 5.0
_SAMPLE_S = 0.01
_PARK_AFTER_S = 1.0


class _RemoteTraceback(Exception):
    """Carries a worker's traceback text as the ``__cause__`` of a task's exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def low_priority() -> int:
    """The niceness (POSIX) or priority class (Windows) workers run at."""
    if psutil.WINDOWS:
        return int(psutil.BELOW_NORMAL_PRIORITY_CLASS)  # type: ignore[attr-defined,unused-ignore]
    return 10


def describe_exit(exitcode: int | None) -> str:
    """Explain a worker's exit code in words, with the likely cause."""
    if exitcode is None:
        return "an unknown exit status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = {
            "SIGKILL": " (killed: often the out-of-memory killer or a job queue's limit)",
            "SIGSEGV": " (segmentation fault: a crash in native code)",
            "SIGBUS": " (bus error: a crash in native code or a truncated memory map)",
            "SIGABRT": " (aborted by native code)",
            "SIGTERM": " (terminated by another process)",
        }.get(name, "")
        return f"signal {name}{hint}"
    return f"exit code {exitcode} (the task or a library called os._exit or exited the process)"


# -- inside a worker process ------------------------------------------------------


class _PipeLogHandler(logging.Handler):
    """Sends log records to the parent over the worker's pipe."""

    def __init__(self, conn: Connection, lock: threading.Lock) -> None:
        super().__init__()
        self._conn = conn
        self._lock = lock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg = record.getMessage()
            record.args = None
            if record.exc_info:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
                record.exc_info = None
            data = pickle.dumps(record)
            with self._lock:
                self._conn.send_bytes(_LOG + data)
        except Exception:
            self.handleError(record)


def _exit_with_parent() -> None:
    """Exit this worker (and its children) as soon as the parent process dies."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    multiprocessing.connection.wait([parent.sentinel])
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children(recursive=True):
            child.kill()
    os._exit(70)


def _max_rss() -> int:
    """This process's resident-set high-water mark in bytes (0 where unknown)."""
    try:
        import resource
    except ImportError:  # Windows: psutil knows the peak working set
        return int(getattr(psutil.Process().memory_info(), "peak_wset", 0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if psutil.MACOS else int(peak) * 1024  # macOS counts bytes, Linux KiB


def _rss_reader(process: psutil.Process) -> Callable[[], int]:
    """A function returning this process's resident set size in bytes.

    On Linux it reads ``/proc/self/statm`` through a descriptor kept open
    (about 2 us, against 10 us for psutil, which opens the file each time).
    """
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
    except OSError:
        return lambda: int(process.memory_info().rss)
    page = os.sysconf("SC_PAGE_SIZE")
    return lambda: int(os.pread(fd, 128, 0).split()[1]) * page


class _PeakSampler:
    """Samples this process's RSS while a job runs, from one thread that lives
    as long as the worker.

    Starting and stopping a job only flip a flag under a lock: the thread keeps
    its own 10 ms rhythm and is never woken per job (a wake-up per job would
    cost more than a short job itself). It parks after a second without a job
    and is woken by the next one. Sampling alone misses spikes shorter than
    the period; the kernel's high-water mark is exact but covers the process's
    whole life, so it is used only when it rose during the job (the job itself
    set it).
    """

    def __init__(self, process: psutil.Process) -> None:
        self._rss = _rss_reader(process)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._active = False
        self._parked = False
        self._generation = 0
        self._peak = 0
        self._last_job = time.monotonic()
        self._high_before = 0
        threading.Thread(target=self._sample, name="taskgraph-memory-sampler", daemon=True).start()

    def _sample(self) -> None:
        while True:
            time.sleep(_SAMPLE_S)
            with self._lock:
                active, generation = self._active, self._generation
                if not active and time.monotonic() - self._last_job > _PARK_AFTER_S:
                    self._parked = True
                    self._wake.clear()
                parked = self._parked
            if parked:
                self._wake.wait()
                continue
            if not active:
                continue
            try:
                rss = self._rss()
            except (psutil.Error, OSError):
                continue
            with self._lock:
                if generation == self._generation:  # still the same job
                    self._peak = max(self._peak, rss)

    def start(self) -> None:
        self._high_before = _max_rss()
        with self._lock:
            self._generation += 1
            self._peak = 0
            self._active = True
            parked, self._parked = self._parked, False
        if parked:
            self._wake.set()

    def stop(self) -> int:
        with self._lock:
            self._active = False
            self._generation += 1
            self._last_job = time.monotonic()
            peak = self._peak
        with contextlib.suppress(psutil.Error, OSError):
            peak = max(peak, self._rss())
        high = _max_rss()
        return max(peak, high) if high > self._high_before else peak


def _cpu_seconds() -> float:
    """CPU time of this process and of the child processes it waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _measured_run(call: Any, spec: tuple[Any, ...], sampler: _PeakSampler) -> JobResult:
    """Run a job and fill in its CPU time and peak memory (for this process)."""
    cpu_before = _cpu_seconds()
    sampler.start()
    try:
        outcome = run_job(call, *spec)
    finally:
        peak = sampler.stop()
    outcome.cpu_time = _cpu_seconds() - cpu_before
    outcome.peak_memory = peak
    return outcome


def _worker_main(conn: Connection, levels: dict[str, int], nice: bool, cpu: int | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "setpgid"):
        # A process group of its own: processes the task starts stay in it,
        # so they can be found and killed even after this worker has died
        # (when they are no longer its children).
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
    process = psutil.Process()
    if nice:
        with contextlib.suppress(psutil.Error, OSError):
            process.nice(low_priority())
    if cpu is not None:
        process.cpu_affinity([cpu])  # type: ignore[attr-defined,unused-ignore]
    sampler = _PeakSampler(process)
    threading.Thread(target=_exit_with_parent, name="taskgraph-parent-watch", daemon=True).start()
    send_lock = threading.Lock()
    root = logging.getLogger()
    root.handlers = [_PipeLogHandler(conn, send_lock)]
    for name, level in levels.items():
        (root if name == "" else logging.getLogger(name)).setLevel(level)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if data == _STOP:
            return
        payload, spec = pickle.loads(data)
        task_id, name = spec[0], spec[1]
        try:
            call = pickle.loads(payload)
        except BaseException as error:
            outcome = JobResult(task_id, error=TaskExecutionError(
                f"task {name!r} could not be unpickled in the worker process ({error!r}); "
                "define its function and argument types at module level in an importable "
                "module (the worker starts a fresh interpreter)."
            ))
        else:
            outcome = _measured_run(call, spec, sampler)
        blob = encode_result(outcome, name)
        with send_lock:
            conn.send_bytes(_RESULT + blob)


# -- in the calling process ----------------------------------------------------------


class _Worker:
    __slots__ = ("conn", "cpu", "done", "finished_jobs", "index", "job", "process")

    def __init__(self, process: Any, conn: Connection, index: int, cpu: int | None) -> None:
        self.process = process
        self.conn = conn
        self.index = index
        self.cpu = cpu
        self.job: Job | None = None
        self.done: DoneCallback | None = None
        self.finished_jobs = 0


def _log_levels() -> dict[str, int]:
    """Levels configured in this process, so workers drop what would be dropped here."""
    levels = {"": logging.getLogger().level}
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return levels


def _kill_tree(pid: int) -> None:
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        children = process.children(recursive=True)
        for victim in [process, *children]:
            with contextlib.suppress(psutil.Error):
                victim.kill()
    _kill_group(pid)


def _kill_group(pid: int) -> None:
    """Kill what is left of a worker's process group (the processes its tasks
    started, also those orphaned by the worker's death). Call it before the
    worker is reaped, so that its pid, the group's id, cannot be reused."""
    if hasattr(os, "killpg"):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def usable_cpus() -> list[int] | None:
    """The cores this process may run on, or None where the platform cannot
    pin processes (psutil has no ``cpu_affinity`` there, e.g. macOS)."""
    if not hasattr(psutil.Process, "cpu_affinity"):
        return None
    return sorted(psutil.Process().cpu_affinity())  # type: ignore[attr-defined,unused-ignore]


class ProcessPool(Executor):
    """``n_workers`` niced worker processes, one job each at a time.

    Args:
        n_workers: how many worker processes run at once.
        start_method: the multiprocessing start method.
        nice: lower the workers' priority.
        bind_cpus: pin each worker to a core of its own (from the cores
            this process may use); a worker that replaces a dead one takes
            its core. The caller checks :func:`usable_cpus` first.
    """

    def __init__(
        self, n_workers: int, start_method: str = "spawn", nice: bool = True, bind_cpus: bool = False
    ) -> None:
        self.capacity = n_workers
        self._free_cpus: list[int] | None = None
        if bind_cpus:
            cpus = usable_cpus()
            if cpus is None or len(cpus) < n_workers:
                raise ValueError(f"cannot pin {n_workers} workers to their own cores: usable cores {cpus}")
            self._free_cpus = cpus[:n_workers]
        self._context: Any = multiprocessing.get_context(start_method)
        self._nice = nice
        self._levels: dict[str, int] = {}
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._closing = False
        self._next_index = 0
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        # Workers start on first use: a rerun that skips every task starts none.
        self._manager = threading.Thread(
            target=self._manage, name="taskgraph-pool-manager", daemon=True
        )
        self._manager.start()
        # Safety net only: close()/join() shut the pool down in normal use.
        # (weakref.finalize also runs at interpreter exit, before multiprocessing
        # would wait for these non-daemonic workers).
        self._finalizer = weakref.finalize(self, ProcessPool._emergency_stop, self._workers)

    @staticmethod
    def _emergency_stop(workers: list[_Worker]) -> None:
        for worker in workers:
            if worker.process.is_alive():
                _kill_tree(worker.process.pid)

    def _spawn(self, job: Job, done: DoneCallback) -> _Worker | None:
        """Start a worker that is given ``job`` at once (None if the pool
        was shut down meanwhile)."""
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        with self._lock:
            index = self._next_index
            self._next_index += 1
            if index == 0:
                self._levels = _log_levels()
            cpu = self._free_cpus.pop(0) if self._free_cpus else None
        process = self._context.Process(
            target=_worker_main,
            args=(child_conn, self._levels, self._nice, cpu),
            name=f"taskgraph-worker-{index}",
            daemon=False,
        )
        process.start()
        child_conn.close()
        worker = _Worker(process, parent_conn, index, cpu)
        worker.job, worker.done = job, done
        with self._lock:
            closing = self._closing
            if not closing:
                self._workers.append(worker)
        if closing:  # shut down while it started: shutdown() did not see it
            _kill_tree(process.pid)
            process.join(_JOIN_TIMEOUT_S)
            parent_conn.close()
            return None
        self._wake()  # the manager thread must start watching the new worker
        return worker

    def submit(self, job: Job, done: DoneCallback) -> None:
        assert job.payload is not None
        message = pickle.dumps((job.payload, job.spec()), protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            closing = self._closing
            worker = None
            if not closing and self._idle:
                worker = self._idle.pop()
                worker.job = job
                worker.done = done
        if not closing and worker is None:
            worker = self._spawn(job, done)
            closing = worker is None
        if closing or worker is None:
            # Shut down (after Ctrl-C, from another thread) while the scheduler
            # was still dispatching: start no new worker, which nothing would stop.
            done(JobResult(job.task_id, error=WorkerDiedError(
                f"task {job.name!r} was not started because the graph is shutting down"
            )))
            return
        try:
            worker.conn.send_bytes(message)
        except OSError:
            # The worker died before it got the job; the manager thread notices
            # its sentinel and fails the job with the exit status.
            pass

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"w")

    def _manage(self) -> None:
        while True:
            with self._lock:
                if self._closing and not any(w.job for w in self._workers):
                    return
                by_handle: dict[Any, tuple[str, _Worker | None]] = {self._wake_r: ("wake", None)}
                for worker in self._workers:
                    by_handle[worker.conn] = ("conn", worker)
                    by_handle[worker.process.sentinel] = ("died", worker)
            for handle in multiprocessing.connection.wait(list(by_handle)):
                kind, maybe_worker = by_handle[handle]
                if kind == "wake":
                    with contextlib.suppress(EOFError, OSError):
                        while self._wake_r.poll():
                            self._wake_r.recv_bytes()
                    continue
                assert maybe_worker is not None
                worker = maybe_worker
                if worker not in self._workers:
                    continue  # already handled via its other handle this round
                if kind == "conn":
                    try:
                        data = worker.conn.recv_bytes()
                    except (EOFError, OSError):
                        self._on_death(worker)
                        continue
                    self._on_message(worker, data)
                else:
                    self._on_death(worker)

    def _on_message(self, worker: _Worker, data: bytes) -> None:
        tag, body = data[:1], data[1:]
        if tag == _LOG:
            try:
                record = pickle.loads(body)
                logger = logging.getLogger(record.name)
                if logger.isEnabledFor(record.levelno):
                    logger.handle(record)
            except Exception:  # a broken log record or handler must not stop the pool
                LOGGER.exception("could not relay a log record from %s", worker.process.name)
            return
        job, done = worker.job, worker.done
        try:
            result: JobResult = pickle.loads(body)
        except Exception as error:
            name = job.name if job else "?"
            result = JobResult(job.task_id if job else -1, error=TaskExecutionError(
                f"the result of task {name!r} could not be unpickled in the calling process "
                f"({error!r}); return only types importable here."
            ))
        if result.error is not None and result.remote_traceback:
            result.error.__cause__ = _RemoteTraceback(result.remote_traceback)
        with self._lock:
            worker.job = None
            worker.done = None
            worker.finished_jobs += 1
            if not self._closing:
                self._idle.append(worker)
        if done is not None:
            done(result)

    def _on_death(self, worker: _Worker) -> None:
        # Read what the worker sent before it died (a result may be there).
        with contextlib.suppress(EOFError, OSError):
            while worker.job is not None and worker.conn.poll():
                self._on_message(worker, worker.conn.recv_bytes())
        _kill_group(worker.process.pid)
        worker.process.join(_JOIN_TIMEOUT_S)
        with self._lock:
            self._workers.remove(worker)
            with contextlib.suppress(ValueError):
                self._idle.remove(worker)
            if worker.cpu is not None and self._free_cpus is not None:
                self._free_cpus.append(worker.cpu)  # its replacement takes the core
            job, done = worker.job, worker.done
            worker.job = worker.done = None
            exitcode = worker.process.exitcode
            at_start = worker.finished_jobs == 0 and exitcode == 1
        worker.conn.close()
        if at_start and job is not None:
            hint = (
                " It died before finishing any task: a worker process could not start. With "
                "the spawn start method each worker imports the main script, so the script's "
                "top-level code must be under `if __name__ == '__main__':`; the worker's own "
                "error is printed on stderr above."
            )
        else:
            hint = (
                " If it ran out of memory, run fewer tasks at once (a smaller n_workers) or "
                "split the task; partial targets are not recorded and the task runs again next "
                "time."
            )
        if job is not None and done is not None:
            error = WorkerDiedError(
                f"the worker process (pid {worker.process.pid}) running task {job.name!r} died "
                f"with {describe_exit(exitcode)} before the task returned." + hint
            )
            done(JobResult(job.task_id, error=error, worker=worker.process.name))

    def shutdown(self, kill: bool = False) -> None:
        with self._lock:
            if self._closing:
                already = True
            else:
                already = False
                self._closing = True
            workers = list(self._workers)
        if not already:
            for worker in workers:
                if kill:
                    _kill_tree(worker.process.pid)
                else:
                    with contextlib.suppress(OSError):
                        worker.conn.send_bytes(_STOP)
        self._wake()
        for worker in workers:
            worker.process.join(_JOIN_TIMEOUT_S if not kill else 1.0)
            if worker.process.is_alive():
                _kill_tree(worker.process.pid)
                worker.process.join(_JOIN_TIMEOUT_S)
        if kill:
            # Jobs killed mid-run report nothing: fail them now.
            with self._lock:
                orphans = [(w.job, w.done) for w in workers if w.job is not None]
                for worker in workers:
                    worker.job = worker.done = None
            for job, done in orphans:
                if job is not None and done is not None:
                    done(JobResult(job.task_id, error=WorkerDiedError(
                        f"task {job.name!r} was stopped because the graph is shutting down"
                    )))
        self._wake()
        if self._manager is not threading.current_thread():
            self._manager.join(_JOIN_TIMEOUT_S)
            if self._manager.is_alive():
                # Still reading a worker's last messages: closing the pipes
                # under it would fail its wait(); it closes each on the
                # worker's death, and the process exits without them.
                LOGGER.warning("the process pool's manager thread did not stop within %s s", _JOIN_TIMEOUT_S)
                self._finalizer.detach()
                return
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.close()
        self._finalizer.detach()
        with contextlib.suppress(OSError):
            self._wake_r.close()
            self._wake_w.close()


__all__ = ["ProcessPool", "describe_exit", "usable_cpus"]
