"""Inside a worker process: the loop that runs jobs sent by the pool.

Imports ``_job`` (and through it ``_fingerprint`` and ``_errors``) and psutil
only, so a ``spawn`` worker starts without the ledger, SQLite, the CLI or the
layers. The same :func:`worker_main` runs in a worker forked by the fork
server (:mod:`taskgraph._forkserver`) and in a ``spawn`` worker started by
multiprocessing.

The run report is measured here, around each job: CPU time is the worker
process's user + system time plus that of the child processes it waited for;
peak memory is the worker's resident set size, sampled every 10 ms by a
thread while the job runs and completed by the kernel's exact high-water mark
(``ru_maxrss``) whenever the job raised it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import select
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import psutil

from taskgraph._errors import TaskExecutionError
from taskgraph._job import JobResult, encode_result, flatten_record, run_job

#: Message tags on a worker's pipe (the first byte of each message).
RESULT = b"R"
LOG = b"L"
STOP = b""
_SIZE = struct.Struct("!i")  # multiprocessing's framing: a length, or -1 and a long one
_LONG_SIZE = struct.Struct("!Q")
_READ_BYTES = 64 * 1024
_MAX_READ_BYTES = 4 * 1024 * 1024
_SAMPLE_S = 0.01
_PARK_AFTER_S = 1.0
_PARENT_POLL_S = 1.0


def low_priority() -> int:
    """The niceness (POSIX) or priority class (Windows) workers run at."""
    if psutil.WINDOWS:
        return int(psutil.BELOW_NORMAL_PRIORITY_CLASS)  # type: ignore[attr-defined,unused-ignore]
    return 10


class Frames:
    """The messages arriving on one end of a pipe, written by
    ``Connection.send_bytes`` on the other.

    ``Connection.recv_bytes`` makes two system calls per message (its length,
    then its body); here one read takes whatever has arrived, which may be
    several messages (a job's log records and its result) or part of one
    (kept until the rest comes). Where a pipe has no descriptor (Windows),
    each read is one ``recv_bytes``.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._fd = conn.fileno() if os.name == "posix" else -1
        self._buffer = bytearray()
        self._wanted = _SIZE.size  # bytes the next message needs at least
        self._messages: collections.deque[bytes] = collections.deque()
        # Small reads land here: a new 64 KiB bytes object per read, shrunk to
        # what came, cost more in page faults than the read itself.
        self._chunk = bytearray(_READ_BYTES)

    def read(self) -> list[bytes]:
        """One read (blocking until something arrives): the messages it
        completed, maybe none.

        Raises:
            EOFError: the other end is closed.
            OSError: the pipe broke.
        """
        if self._fd < 0:
            return [self._conn.recv_bytes()]
        missing = self._wanted - len(self._buffer)
        if missing > _READ_BYTES:  # the rest of a large message
            data = os.read(self._fd, min(missing, _MAX_READ_BYTES))
            if not data:
                raise EOFError
            self._buffer += data
            return self._split()
        count = os.readv(self._fd, [self._chunk])
        if not count:
            raise EOFError
        with memoryview(self._chunk) as view:
            if not self._buffer and count >= _SIZE.size and _SIZE.unpack_from(view)[0] == count - _SIZE.size:
                return [bytes(view[_SIZE.size:count])]  # exactly one message: the usual case
            self._buffer += view[:count]
        return self._split()

    def _split(self) -> list[bytes]:
        messages = []
        buffer, start, wanted = self._buffer, 0, _SIZE.size
        with memoryview(buffer) as view:
            while len(buffer) - start >= _SIZE.size:
                size, header = _SIZE.unpack_from(buffer, start)[0], _SIZE.size
                if size == -1:
                    if len(buffer) - start < _SIZE.size + _LONG_SIZE.size:
                        wanted = _SIZE.size + _LONG_SIZE.size
                        break
                    size, header = _LONG_SIZE.unpack_from(buffer, start + _SIZE.size)[0], _SIZE.size + _LONG_SIZE.size
                if len(buffer) - start < header + size:
                    wanted = header + size
                    break
                messages.append(bytes(view[start + header:start + header + size]))
                start += header + size
        del buffer[:start]
        self._wanted = wanted
        return messages

    def next(self) -> bytes:
        """The next message, waiting for it (the worker's side).

        Raises:
            EOFError: the other end is closed.
            OSError: the pipe broke.
        """
        while not self._messages:
            self._messages.extend(self.read())
        return self._messages.popleft()


class _PipeLogHandler(logging.Handler):
    """Sends log records to the parent over the worker's pipe."""

    def __init__(self, conn: Connection, lock: threading.Lock) -> None:
        super().__init__()
        self._conn = conn
        self._lock = lock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = pickle.dumps(flatten_record(record))
            with self._lock:
                self._conn.send_bytes(LOG + data)
        except Exception:
            self.handleError(record)


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


def wait_for_exit(pid: int) -> None:
    """Return once process ``pid`` has exited (at once if it is gone).

    Linux: a pidfd, readable when the process exits, so nothing polls.
    Elsewhere: a check every second.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            fd = pidfd_open(pid)
        except ProcessLookupError:
            return
        except OSError:
            pass  # an old kernel: poll below
        else:
            try:
                select.select([fd], [], [])
            finally:
                os.close(fd)
            return
    while alive(pid):
        time.sleep(_PARENT_POLL_S)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def flush_std_streams() -> None:
    """Flush what this process buffered for stdout and stderr (before a fork,
    so no copy writes it twice, and before ``os._exit``, so it is not lost)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()


def _exit_with(pid: int | None) -> None:
    """Exit this worker (and its children) as soon as the pool's process dies."""
    if pid is None:  # spawn: multiprocessing knows the parent
        parent = multiprocessing.parent_process()
        if parent is None:
            return
        multiprocessing.connection.wait([parent.sentinel])
    else:
        wait_for_exit(pid)
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children(recursive=True):
            child.kill()
    if hasattr(os, "killpg") and os.getpgid(0) == os.getpid():
        # The worker leads its own group: this also reaches what its tasks started
        # that is no longer its child (reparented after its parent exited).
        with contextlib.suppress(OSError):
            os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(70)


def _relay_logging(conn: Connection, send_lock: threading.Lock, levels: dict[str, int]) -> None:
    """Send every log record to the parent instead of this process's handlers.

    A forked worker inherits the caller's handlers: left in place, a file
    handler would write each record twice (here, and in the parent that
    handles the relayed record). So the root logger gets the pipe handler,
    other loggers lose theirs, and a logger that does not propagate keeps
    its records by getting the pipe handler too. The parent hands each record
    to the logger of the same name, so its own configuration decides.
    """
    relay = _PipeLogHandler(conn, send_lock)
    root = logging.getLogger()
    root.handlers = [relay]
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.handlers:
            logger.handlers = [] if logger.propagate else [relay]
    for name, level in levels.items():
        (root if name == "" else logging.getLogger(name)).setLevel(level)


def worker_main(
    conn: Connection, levels: dict[str, int], nice: bool, cpu: int | None = None, parent_pid: int | None = None
) -> None:
    """Run jobs from ``conn`` until told to stop or the pipe closes.

    ``parent_pid`` is the pool's process when the worker was forked by the
    fork server (its parent is the server); None under ``spawn``.
    """
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
    threading.Thread(target=_exit_with, args=(parent_pid,), name="taskgraph-parent-watch", daemon=True).start()
    send_lock = threading.Lock()
    _relay_logging(conn, send_lock, levels)
    try:
        _serve(conn, send_lock, sampler)
    finally:
        flush_std_streams()  # a forked worker leaves with os._exit: what the tasks printed goes first


def _serve(conn: Connection, send_lock: threading.Lock, sampler: _PeakSampler) -> None:
    frames = Frames(conn)
    while True:
        try:
            data = frames.next()
        except (EOFError, OSError):
            return
        if data == STOP:
            return
        payload, spec = pickle.loads(data)
        task_id, name = spec[0], spec[1]
        try:
            call = pickle.loads(payload)
        except BaseException as error:
            call = None
            outcome = JobResult(task_id, error=TaskExecutionError(
                f"task {name!r} could not be unpickled in the worker process ({error!r}); "
                "define its function and argument types at module level in an importable "
                "module (a spawn worker starts a fresh interpreter and imports them by name)."
            ))
        else:
            outcome = _measured_run(call, spec, sampler)
        blob = encode_result(outcome, name)
        del call, payload, spec, data  # an idle worker keeps no job's arguments
        with send_lock:
            conn.send_bytes(RESULT + blob)
        del outcome, blob


__all__ = ["LOG", "RESULT", "STOP", "Frames", "alive", "flush_std_streams", "low_priority", "wait_for_exit",
           "worker_main"]
