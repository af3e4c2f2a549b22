"""A job: one call of a task's function, and what comes back from it.

Imports ``_errors``, ``_failure`` and ``_fingerprint`` (and ``_cache_job``
only for a job that uses the shared cache), so a spawned worker process
imports no engine, ledger or SQLite. The same :func:`run_job` runs inline, in
a thread, in a worker process and on a Dask worker: the target check and the
target fingerprints are taken right where the files were written.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from taskgraph._errors import MissingTargetError, TaskExecutionError
from taskgraph._failure import Frame, user_frames
from taskgraph._fingerprint import CachedDigest, Fingerprint, MemoryDigestCache, take
from taskgraph._frozen import field, record

if TYPE_CHECKING:
    from taskgraph._cache_job import CacheJob, CacheOutcome


@record
class Job:
    """What an executor is asked to run.

    Attributes:
        task_id: the scheduler's id for the task (unique within a graph).
        name: the task's name, for messages.
        func, args, kwargs: the call.
        payload: ``pickle.dumps((func, args, kwargs))`` when the job goes to
            another process (made once, at ``add_task``).
        inputs: normalised paths of the input files, fingerprinted with
            ``input_mode`` just before the call.
        targets: normalised paths the call must create.
        target_mode: fingerprint mode for the targets.
        want_result: whether the return value is sent back (``store_result``).
        known_digests: digests the scheduler already holds for the inputs, so
            the worker does not read an input the up-to-date check just hashed.
        priority: the task's priority (for backends that order their own queue).
        cache: how to use the shared cache (``_cache_job.CacheJob``), or None.
    """

    task_id: int
    name: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    payload: bytes | None
    inputs: tuple[str, ...]
    input_mode: str
    targets: tuple[str, ...]
    target_mode: str
    want_result: bool
    known_digests: dict[tuple[str, str], CachedDigest] = field(default_factory=dict)
    priority: float = 0
    #: Expected to take a few milliseconds at most (from the ledger's history):
    #: it may wait behind another short job in a worker (``Executor.queue_depth``).
    short: bool = False
    cache: CacheJob | None = None

    def spec(self) -> tuple[Any, ...]:
        """Everything but the call itself, as :func:`run_job` takes it."""
        return (self.task_id, self.name, self.inputs, self.input_mode, self.targets,
                self.target_mode, self.want_result, self.known_digests, self.cache)


@record
class JobResult:
    """What comes back from running a :class:`Job`."""

    task_id: int
    error: BaseException | None = None
    remote_traceback: str | None = None
    #: The user's frames of ``error`` (taskgraph's own left out), taken where
    #: it was caught: an exception that crossed a process has no traceback.
    frames: list[Frame] | None = None
    result: Any = None
    inputs: dict[str, Fingerprint] = field(default_factory=dict)
    targets: dict[str, Fingerprint] = field(default_factory=dict)
    digests: dict[tuple[str, str], CachedDigest] = field(default_factory=dict)
    started: float = 0.0
    ended: float = 0.0
    worker: str = ""
    #: CPU seconds of the call (the calling thread's; a process pool measures
    #: its worker process and waited-for children instead), None if unknown.
    cpu_time: float | None = None
    #: Peak resident memory of the worker process while the call ran, in
    #: bytes; None where the call shared its process with other work.
    peak_memory: int | None = None
    #: What the shared cache did (a ``_cache_job.CacheOutcome``), when one is used.
    cache: CacheOutcome | None = None


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised in another process
    (a worker, a Dask worker) as the ``__cause__`` of the re-raised exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def flatten_record(record: logging.LogRecord) -> logging.LogRecord:
    """Make a log record ready to pickle (as it leaves a worker): its message
    formatted, its exception as text."""
    record.msg = record.getMessage()
    record.args = None
    if record.exc_info:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
    return record


def _thread_cpu_clock() -> Callable[[], float]:
    """This thread's CPU seconds (user and system), read as cheaply as the platform allows.

    Linux: ``getrusage(RUSAGE_THREAD)``. ``time.thread_time()`` reads the same
    clock through ``CLOCK_THREAD_CPUTIME_ID``, which a virtual machine may
    serve slowly: here 0.4 µs in a tight loop but 230 µs right after the
    thread wrote a file, against 2 µs for ``getrusage`` (two reads per job).
    """
    try:
        import resource

        who = resource.RUSAGE_THREAD
    except (ImportError, AttributeError):  # Windows, macOS
        return time.thread_time

    def thread_cpu() -> float:
        usage = resource.getrusage(who)
        return usage.ru_utime + usage.ru_stime

    return thread_cpu


thread_cpu = _thread_cpu_clock()

# Where a job runs, remembered per thread (os.getpid() is a system call, and
# every job asks); forgotten in a forked child, whose pid differs.
_HERE = threading.local()


def _forget_where() -> None:
    global _HERE
    _HERE = threading.local()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_where)


def worker_name() -> str:
    """Where a job ran: the process (and thread, if not the main one)."""
    name: str | None = getattr(_HERE, "name", None)
    if name is None:
        thread = threading.current_thread()
        # Without multiprocessing imported, this is no worker of its: the main process.
        multiprocessing = sys.modules.get("multiprocessing")
        process = "MainProcess" if multiprocessing is None else multiprocessing.current_process().name
        name = f"{process} (pid {os.getpid()})"
        if thread is not threading.main_thread():
            name = f"{name} {thread.name}"
        _HERE.name = name
    return name


def first_unpicklable(parts: Iterable[tuple[str, Any]]) -> tuple[str, str] | None:
    """The label of the first value that cannot be pickled, and why
    (``"type: error"``); None when every one can."""
    for label, value in parts:
        try:
            pickle.dumps(value)
        except Exception as error:
            return label, f"{type(value).__name__}: {error}"
    return None


def call_job(
    task_id: int,
    name: str,
    func: Callable[..., Any],
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    remote: bool = False,
    priority: float = 0,
) -> Job:
    """A job that is just a call: no input fingerprints, no targets, its
    return value wanted. ``remote=True`` pickles the call now (for process
    and Dask backends), so an unpicklable call fails here, in the caller."""
    kwargs = kwargs or {}
    payload = pickle.dumps((func, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL) if remote else None
    return Job(task_id=task_id, name=name, func=func, args=args, kwargs=kwargs, payload=payload,
               inputs=(), input_mode="sizetimestamp", targets=(), target_mode="sizetimestamp",
               want_result=True, priority=priority)


def noop() -> None:
    """The function of a task added with ``func=None``."""


def run_job(
    call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]],
    task_id: int,
    name: str,
    inputs: tuple[str, ...],
    input_mode: str,
    targets: tuple[str, ...],
    target_mode: str,
    want_result: bool,
    known_digests: dict[tuple[str, str], CachedDigest] | None = None,
    cache_job: CacheJob | None = None,
) -> JobResult:
    """Fingerprint the inputs, call the function, then check and fingerprint
    its targets.

    With ``cache_job``, the shared cache is asked first: on a hit the targets
    are restored instead of calling the function (``JobResult.cache`` says
    so); after a call that succeeded, the targets are put there.

    Never raises for a failure of the task: the exception is returned in
    ``JobResult.error``.
    """
    outcome = JobResult(task_id, started=time.time(), worker=worker_name())
    cpu_started = thread_cpu()
    func, args, kwargs = call
    cache = MemoryDigestCache()
    if known_digests:
        cache.entries.update(known_digests)
    session = None
    try:
        for path in inputs:
            # A digest the scheduler knows for an input's very stat may serve a
            # racy input's record, unless the shared cache keys on it: see take().
            fingerprint = take(path, input_mode, cache, trust_racy=cache_job is None)
            if fingerprint is not None:
                outcome.inputs[path] = fingerprint
        restored = False
        if cache_job is not None:
            from taskgraph._cache_job import CacheSession  # only jobs that use a cache import it

            session = CacheSession(cache_job, outcome.inputs, cache)
            restored, value = session.restore()
        called = time.time()
        if not restored:
            value = func(*args, **kwargs)
        seconds = time.time() - called
        missing = []
        for path in targets:
            fingerprint = take(path, target_mode, cache)
            if fingerprint is None:
                missing.append(path)
            else:
                outcome.targets[path] = fingerprint
        if missing:
            raise MissingTargetError(
                f"task {name!r} finished but did not create "
                f"{len(missing)} of its targets: {', '.join(missing)}. "
                "Missing expected target path results: make the function write every "
                "path in target_path_list, or remove the paths it does not write."
            )
        if session is not None and not restored:
            session.put(outcome.targets, value, seconds)
        outcome.digests = {
            key: entry for key, entry in cache.entries.items()
            if not known_digests or known_digests.get(key) is not entry
        }
        if want_result:
            outcome.result = value
    except BaseException as error:
        if isinstance(error, (KeyboardInterrupt, SystemExit)) and threading.current_thread() is threading.main_thread():
            raise
        outcome.error = error
        outcome.remote_traceback = "".join(
            traceback.format_exception(type(error), error, error.__traceback__)
        )
        outcome.frames = user_frames(error.__traceback__)
        outcome.targets = {}
    finally:
        if session is not None:
            session.close()  # another process waiting for this key may go on
            outcome.cache = session.outcome
    outcome.ended = time.time()
    outcome.cpu_time = thread_cpu() - cpu_started
    return outcome


def _unstorable(name: str, value: Any, error: Exception) -> str:
    return (
        f"task {name!r} returned a {type(value).__name__} that cannot be pickled ({error}); with "
        "store_result=True the return value is stored in the ledger, so it must be picklable: "
        "return plain data (numbers, strings, lists, dicts, arrays), or set store_result=False."
    )


def check_storable(outcome: JobResult, name: str) -> JobResult:
    """For jobs run in this process: a result that the ledger could not store
    (it pickles stored results) fails the task here, naming it, instead of
    failing later in the ledger's commit."""
    if outcome.error is None and outcome.result is not None:
        try:
            pickle.dumps(outcome.result, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as pickling_error:
            outcome.error = TaskExecutionError(_unstorable(name, outcome.result, pickling_error))
            outcome.result = None
            outcome.targets = {}
    return outcome


def dumps_or(value: Any, replacement: Callable[[Exception], Any]) -> bytes:
    """``pickle.dumps(value)``, or, if ``value`` cannot be pickled, the pickle
    of ``replacement(error)``: what goes back to the parent in its place,
    saying why (a worker's result must never fail to arrive)."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        return pickle.dumps(replacement(error), protocol=pickle.HIGHEST_PROTOCOL)


def encode_result(outcome: JobResult, name: str) -> bytes:
    """Pickle a result to send it to the parent process.

    A value or exception that cannot be pickled becomes a
    :class:`TaskExecutionError` that says so. The exception goes without its
    traceback objects (their text is in ``remote_traceback``): a library that
    teaches pickle to keep tracebacks (tblib, which Dask's distributed
    installs) would otherwise pickle one frame per level of a deep stack.
    """
    seen: set[int] = set()
    error = outcome.error
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__cause__ or error.__context__

    def unpicklable(pickling_error: Exception) -> JobResult:
        if outcome.error is None:
            message = _unstorable(name, outcome.result, pickling_error)
        else:
            message = (
                f"task {name!r} raised {type(outcome.error).__name__}: {outcome.error}, "
                f"and that exception cannot be pickled ({pickling_error}) to send it back "
                "from the worker. Its traceback:\n" + (outcome.remote_traceback or "")
            )
        outcome.result = None
        outcome.error = TaskExecutionError(message)
        outcome.targets = {}
        return outcome

    return dumps_or(outcome, unpicklable)
