"""``multitask``: SOFIA Redux's way to run one function over many items, in series or in parallel.

A client of the executor layer (``make_executor``, ``call_job``) and of
``_shared``; it never touches the scheduler or the ledger. Nothing is recorded:
every call runs every item that is not skipped.

How one call runs::

    caller thread ──call_job──> executor (inline | threads | niced processes)
         ▲                          │ _run_item(func, args, kwargs, item) in a worker
         └──── inbox (JobResult) ◄──┘ outcome: value or exception, and the item's log records

The caller thread keeps at most ``capacity`` items in flight, takes each result
from its inbox, and, when ``logger`` is given, replays the log records of
finished items in item order (item 0's records, then item 1's, ...), so the
log reads as if the items had run in series.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import pickle
import queue
import re
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from taskgraph._backends import make_executor
from taskgraph._errors import InvalidArgumentError, TaskExecutionError
from taskgraph._executor import Executor
from taskgraph._job import Job, JobResult, RemoteTraceback, call_job, dumps_or, flatten_record
from taskgraph._shared import SharedArray

LOGGER = logging.getLogger("taskgraph.multitask")

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}  # joblib's (binary) units
_SHARE_DEPTH = 4  # how deep into tuples, lists and dicts of ``args`` arrays are looked for


# -- argument checks (at the call) ----------------------------------------------------


def _cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, where there is one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def n_jobs(jobs: object) -> int:
    """How many items run at once for SOFIA Redux's ``jobs``.

    ``None``, 0 and 1: one (in series). A negative integer: CPU count + jobs + 1
    (-1 is every CPU, -2 all but one). A fraction between 0 and 1: that share of
    the CPUs. Never less than one.
    """
    if jobs is None:
        return 1
    valid = isinstance(jobs, numbers.Real) and not isinstance(jobs, bool)
    value = float(jobs) if isinstance(jobs, numbers.Real) and valid else float("nan")
    if value != value:
        raise InvalidArgumentError(
            f"multitask got jobs={jobs!r}; use None or 1 (in series), a positive number of "
            "workers, a negative number (-1: every CPU), or a fraction of the CPUs such as 0.5."
        )
    cpus = _cpu_count()
    if 0 < value < 1:
        return max(int(cpus * value), 1)
    if not value.is_integer():
        raise InvalidArgumentError(
            f"multitask got jobs={jobs!r}: only a value between 0 and 1 may be a fraction "
            "(a share of the CPUs); otherwise give a whole number."
        )
    count = cpus + int(value) + 1 if value < 0 else int(value)
    return max(count, 1)


def parse_nbytes(max_nbytes: object) -> int | None:
    """Bytes for SOFIA Redux's (joblib's) ``max_nbytes``: an int, or a string such as ``'1M'``."""
    if max_nbytes is None:
        return None
    whole = isinstance(max_nbytes, numbers.Integral) and not isinstance(max_nbytes, bool)
    if isinstance(max_nbytes, numbers.Integral) and whole and int(max_nbytes) >= 0:
        return int(max_nbytes)
    if isinstance(max_nbytes, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)B?\s*", max_nbytes.upper())
        if match:
            return int(float(match.group(1)) * _UNITS[match.group(2)])
    raise InvalidArgumentError(
        f"multitask got max_nbytes={max_nbytes!r}; use a number of bytes, a string such as "
        "'100K', '1M' or '2G', or None to send arrays to worker processes by pickle."
    )


def _items_to_run(n_items: int, skip: Sequence[Any] | None) -> list[int]:
    if skip is None:
        return list(range(n_items))
    flags = list(skip)
    if len(flags) != n_items:
        raise InvalidArgumentError(
            f"multitask got a skip list of {len(flags)} flags for {n_items} items; give one "
            "flag per item of the iterable (True omits that item from the result)."
        )
    return [index for index, flag in enumerate(flags) if not flag]


# -- large arrays through shared memory -----------------------------------------------


class _Shared:
    """Stands in ``args`` for an array that multitask put in shared memory.
    Pickles as the small :class:`SharedArray` descriptor."""

    __slots__ = ("handle",)

    def __init__(self, handle: SharedArray) -> None:
        self.handle = handle


def _share(value: Any, threshold: int, made: dict[int, SharedArray], depth: int = 0) -> Any:
    """``value`` with every plain numpy array over ``threshold`` bytes replaced by a :class:`_Shared`."""
    np = sys.modules.get("numpy")
    if np is None:  # no numpy imported: there can be no arrays
        return value
    if type(value) is np.ndarray and value.nbytes > threshold and not value.dtype.hasobject:
        if id(value) not in made:
            made[id(value)] = SharedArray(value)
        return _Shared(made[id(value)])
    if depth >= _SHARE_DEPTH:
        return value
    if type(value) in (tuple, list):
        return type(value)(_share(part, threshold, made, depth + 1) for part in value)
    if type(value) is dict:
        return {key: _share(part, threshold, made, depth + 1) for key, part in value.items()}
    return value


def _unshare(value: Any, depth: int = 0) -> Any:
    """The inverse of :func:`_share`, in the worker: read-only arrays over the shared memory.

    Read-only as joblib's memory maps are: a worker process could not change the
    caller's array by pickle either. Tasks that write use ``shared_array`` themselves.
    """
    if isinstance(value, _Shared):
        array = value.handle.array.view()
        array.flags.writeable = False
        return array
    if depth >= _SHARE_DEPTH:
        return value
    if type(value) in (tuple, list):
        return type(value)(_unshare(part, depth + 1) for part in value)
    if type(value) is dict:
        return {key: _unshare(part, depth + 1) for key, part in value.items()}
    return value


# -- log records kept per item -------------------------------------------------------------


_current = threading.local()


class _KeepItemRecords(logging.Filter):
    """On every handler while items run with ``logger=``: a record emitted by a
    thread that is running an item is kept for that item instead of being
    emitted now (the caller replays it in item order). Handlers filter after
    their level check, so only records some handler would emit are kept, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        kept: list[logging.LogRecord] | None = getattr(_current, "records", None)
        if kept is None:
            return True
        if record.__dict__.get("_taskgraph_kept") != id(kept):
            record._taskgraph_kept = id(kept)
            kept.append(flatten_record(record))  # ready to pickle, as the process pool sends records
        return False


_KEEPER = _KeepItemRecords()
_keeper_lock = threading.Lock()
_keeper_users = 0
_keeper_handlers: list[logging.Handler] = []


def _every_handler() -> list[logging.Handler]:
    loggers = [logging.getLogger(), *(
        logger for logger in list(logging.root.manager.loggerDict.values()) if isinstance(logger, logging.Logger)
    )]
    handlers = {id(h): h for logger in loggers for h in logger.handlers}
    if logging.lastResort is not None:
        handlers[id(logging.lastResort)] = logging.lastResort
    return list(handlers.values())


@contextlib.contextmanager
def _keeping_records(kept: list[logging.LogRecord]) -> Iterator[None]:
    """Keep the records this thread emits in ``kept`` (handlers added meanwhile are not covered)."""
    global _keeper_users
    with _keeper_lock:
        if _keeper_users == 0:
            _keeper_handlers[:] = _every_handler()
            for handler in _keeper_handlers:
                handler.addFilter(_KEEPER)
        _keeper_users += 1
    previous = getattr(_current, "records", None)
    _current.records = kept
    try:
        yield
    finally:
        _current.records = previous
        with _keeper_lock:
            _keeper_users -= 1
            if _keeper_users == 0:
                for handler in _keeper_handlers:
                    handler.removeFilter(_KEEPER)
                _keeper_handlers.clear()


def _replay(records: list[logging.LogRecord]) -> None:
    """Emit kept records through the loggers they were sent to, in this thread."""
    for record in records:
        record.__dict__.pop("_taskgraph_kept", None)
        target = logging.getLogger(record.name)
        if target.isEnabledFor(record.levelno):
            target.handle(record)


# -- one item, in a worker ---------------------------------------------------------------


@dataclass(slots=True)
class _Outcome:
    """What one item gave: its value, or the exception it raised, and its log records."""

    value: Any = None
    error: BaseException | None = None
    remote_traceback: str | None = None
    records: list[logging.LogRecord] = field(default_factory=list)


def _run_item(
    func: Callable[..., Any], args: Any, kwargs: Any, item: Any, keep_records: bool, remote: bool,
    shared: bool, label: str,
) -> _Outcome | bytes:
    """Call ``func`` on one item; never raises for the item's own failure.

    ``remote``: this runs in a worker process, so the outcome is pickled here,
    where an unpicklable value can still be reported as this item's failure.
    """
    if shared:
        args, kwargs = _unshare(args), _unshare(kwargs)
    records: list[logging.LogRecord] = []
    with _keeping_records(records) if keep_records else contextlib.nullcontext():
        try:
            value = func(args, item) if kwargs is None else func(args, kwargs, item)
            outcome = _Outcome(value=value)
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # SystemExit too: it must not end a worker process
            outcome = _Outcome(error=error)
            if remote:
                outcome.remote_traceback = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    outcome.records = records
    if not remote:
        return outcome

    def unpicklable(pickling_error: Exception) -> _Outcome:
        if outcome.error is None:
            message = (
                f"{label} returned a {type(outcome.value).__name__} that cannot be pickled "
                f"({pickling_error}) to send it back from the worker process; return a picklable "
                "value, or run in threads (force_threading=True)."
            )
        else:
            message = (
                f"{label} raised {type(outcome.error).__name__}: {outcome.error}, and that exception "
                f"cannot be pickled ({pickling_error}) to send it back from the worker process."
            )
        records = outcome.records
        try:
            pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            records = []  # the log records may be what cannot be pickled: it goes without them
        return _Outcome(error=TaskExecutionError(message), remote_traceback=outcome.remote_traceback,
                        records=records)

    return dumps_or(outcome, unpicklable)


# -- one call, in the caller ---------------------------------------------------------


class _ParallelUnavailableError(Exception):
    """The parallel machinery failed before any item ran (internal: multitask runs in series)."""


def _never_started(result: JobResult) -> bool:
    """Whether a job failed before its call began: the worker could not unpickle
    it (a function defined in a notebook or in ``python -c``, which a fresh
    interpreter cannot import). ``run_job`` stamps ``started`` when it begins."""
    return isinstance(result.error, TaskExecutionError) and not result.started


def _worker_ready() -> None:
    """The job that starts each worker process before any item is sent."""


def _start_workers(executor: Executor) -> None:
    """Start every worker process with an empty job, and wait for them.

    A worker that cannot start (its interpreter fails to import the main
    script, processes cannot be created) is then told apart from an item that
    kills its worker: only the first runs the items in series, in this process.
    """
    inbox: queue.SimpleQueue[JobResult] = queue.SimpleQueue()
    sent = 0
    try:
        for slot in range(executor.capacity):
            executor.submit(call_job(-1 - slot, "multitask worker start", _worker_ready, remote=True), inbox.put)
            sent += 1
    except Exception as error:
        raise _ParallelUnavailableError(f"its worker processes could not start: {error!r}") from error
    finally:
        results = [inbox.get() for _ in range(sent)]
    for result in results:
        if result.error is not None:
            raise _ParallelUnavailableError(
                f"its worker processes could not start: {result.error}"
            ) from result.error


def _describe(item: Any) -> str:
    text = repr(item)
    return text if len(text) <= 80 else text[:77] + "..."


class _Call:
    """One ``multitask`` call: the items, and their outcomes as they come back."""

    def __init__(self, func: Callable[..., Any], items: list[Any], args: Any, kwargs: Any,
                 logger: logging.Logger | None) -> None:
        self.func = func
        self.items = items
        self.args = args
        self.kwargs = kwargs
        self.logger = logger
        self.name = getattr(func, "__qualname__", None) or repr(func)

    def label(self, index: int) -> str:
        return f"multitask item {index} ({_describe(self.items[index])}) of {self.name}"

    def run(self, todo: list[int], mode: str, n_workers: int, threshold: int | None) -> list[Any]:
        """Run the items ``todo`` with ``mode`` ('serial', 'threads' or 'processes')."""
        remote = mode == "processes"
        made: dict[int, SharedArray] = {}
        executor: Executor | None = None
        clean_exit = False
        try:
            args, kwargs = self.args, self.kwargs
            if remote and threshold is not None:
                args, kwargs = _share(args, threshold, made), _share(kwargs, threshold, made)
            try:
                if mode == "serial":
                    executor = make_executor(-1)
                elif mode == "threads":
                    executor = make_executor(n_workers, executor="threads")
                else:
                    executor = make_executor(n_workers)
            except Exception as error:
                raise _ParallelUnavailableError(f"its worker pool could not start: {error!r}") from error
            values = self._drive(executor, todo, args, kwargs, remote, len(made), mode != "serial")
            clean_exit = True
            return values
        finally:
            if executor is not None:
                executor.shutdown(kill=not clean_exit)
            for handle in made.values():
                handle.close()

    def _drive(self, executor: Executor, todo: list[int], args: Any, kwargs: Any, remote: bool,
               n_shared: int, parallel: bool) -> list[Any]:
        keep_records = parallel and self.logger is not None
        inbox: queue.SimpleQueue[JobResult] = queue.SimpleQueue()
        outcomes: dict[int, _Outcome] = {}
        upcoming = iter(todo)
        replayed = 0  # items of ``todo`` whose records were replayed
        in_flight = 0
        failed = False

        def make_job(index: int) -> Job:
            label = self.label(index)
            call = (self.func, args, kwargs, self.items[index], keep_records, remote, n_shared > 0, label)
            try:
                return call_job(index, label, _run_item, call, remote=remote)
            except Exception as error:
                if index != todo[0]:
                    raise InvalidArgumentError(
                        f"{label} cannot be pickled for a worker process ({error!r}); make the "
                        "item picklable, or run in threads (force_threading=True)."
                    ) from error
                raise _ParallelUnavailableError(
                    f"{self.name} or its arguments cannot be pickled for a worker process ({error!r})"
                ) from error

        first_job = make_job(todo[0]) if todo else None
        if remote and first_job is not None:
            LOGGER.debug("multitask %s: %d array(s) passed through shared memory; each call "
                         "pickles to %d bytes", self.name, n_shared, len(first_job.payload or b""))
            _start_workers(executor)

        def submit(index: int) -> None:
            job = first_job if index == todo[0] and first_job is not None else make_job(index)
            executor.submit(job, inbox.put)

        def top_up() -> None:
            nonlocal in_flight
            while not failed and in_flight < executor.capacity:
                index = next(upcoming, None)
                if index is None:
                    return
                submit(index)  # (an inline executor has already put the result in the inbox)
                in_flight += 1

        top_up()
        while in_flight:
            result = inbox.get()
            in_flight -= 1
            outcome = self._outcome(result, remote, first=not outcomes)
            outcomes[result.task_id] = outcome
            failed = failed or outcome.error is not None
            while not failed and replayed < len(todo) and todo[replayed] in outcomes:
                _replay(outcomes[todo[replayed]].records)
                replayed += 1
            top_up()
        if failed:
            first = min(index for index, outcome in outcomes.items() if outcome.error is not None)
            # Items are submitted in order, so every item before ``first`` has finished.
            for index in todo[replayed:todo.index(first) + 1]:
                _replay(outcomes[index].records)
            self._raise(first, outcomes[first])
        return [outcomes[index].value for index in todo]

    def _outcome(self, result: JobResult, remote: bool, first: bool) -> _Outcome:
        """The item's outcome from an executor's result."""
        if result.error is not None:
            if first and _never_started(result):
                raise _ParallelUnavailableError(str(result.error)) from result.error
            # The worker started (see _start_workers), so if it died, this item killed it.
            return _Outcome(error=result.error)
        if not remote:
            outcome: _Outcome = result.result
            return outcome
        try:
            decoded: _Outcome = pickle.loads(result.result)
        except Exception as error:
            label = self.label(result.task_id)
            return _Outcome(error=TaskExecutionError(
                f"the result of {label} could not be unpickled in the calling process ({error!r}); "
                "return only types this process can import."
            ))
        if decoded.error is not None and decoded.remote_traceback:
            decoded.error.__cause__ = RemoteTraceback(decoded.remote_traceback)
        return decoded

    def _raise(self, index: int, outcome: _Outcome) -> None:
        error = outcome.error
        assert error is not None
        note = f"raised by {self.label(index)}"
        if hasattr(error, "add_note"):
            error.add_note(note)
        else:  # Python 3.10: kept where 3.11's traceback would show it
            error.__notes__ = [*getattr(error, "__notes__", []), note]  # type: ignore[attr-defined,unused-ignore]
        raise error


def multitask(
    func: Callable[..., Any],
    iterable: Iterable[Any],
    args: Any,
    kwargs: Any,
    jobs: float | None = None,
    skip: Sequence[Any] | None = None,
    max_nbytes: int | str | None = "1M",
    force_threading: bool = False,
    force_processes: bool = False,
    logger: logging.Logger | None = None,
) -> list[Any]:
    """Run ``func`` once per item of ``iterable``, in series or in parallel (SOFIA Redux's ``multitask``).

    ``result[i] = func(args, iterable[i])`` when ``kwargs`` is None, else
    ``func(args, kwargs, iterable[i])``; results come back in the order of
    ``iterable``.

    Args:
        func: the function to call once per item.
        iterable: the items; each is passed to ``func`` as its last argument.
        args: passed to ``func`` as its first argument, the same for every item.
        kwargs: None for ``func(args, item)``; anything else is passed as the
            second argument, ``func(args, kwargs, item)``.
        jobs: None, 0 or 1: in series, in this thread. A positive number: that
            many workers. A negative number: CPU count + jobs + 1 (-1: every
            CPU). A fraction between 0 and 1: that share of the CPUs.
        skip: one flag per item; True omits that item from the result.
        max_nbytes: numpy arrays in ``args`` or ``kwargs`` (also inside
            tuples, lists and dicts) bigger than this reach worker processes
            through shared memory, read-only, instead of a pickle per item. An
            int, a string such as ``'1M'``, or None to pickle them.
        force_threading: run in threads of this process.
        force_processes: run in worker processes even when called from a
            thread other than the main one (where threads are the default).
        logger: when given, log records that items emit are held back and
            emitted, through the loggers they were sent to, grouped per item
            and in item order, as if the items had run in series. Without it,
            records are emitted as they happen.

    Returns:
        ``[func(args, item) for each item not skipped]``, in order.

    Raises:
        InvalidArgumentError: an argument is unusable (both ``force_threading``
            and ``force_processes``, a ``skip`` list of the wrong length...).
        Exception: the first (in item order) exception raised by ``func``,
            as it was raised, with a note naming the item; from a worker
            process its traceback there is chained as ``__cause__``.

    If the parallel machinery fails before any item ran (``func`` or ``args``
    cannot be pickled, the worker processes cannot start), a ``RuntimeWarning``
    says why and the items run in series in this thread.
    """
    if force_threading and force_processes:
        raise InvalidArgumentError(
            "multitask got both force_threading=True and force_processes=True; choose one: "
            "threads share this process's memory, processes use every CPU for Python code."
        )
    items = list(iterable)
    todo = _items_to_run(len(items), skip)
    threshold = parse_nbytes(max_nbytes)
    n_workers = min(n_jobs(jobs), len(todo))
    call = _Call(func, items, args, kwargs, logger)
    if n_workers <= 1:
        mode = "serial"
    elif force_threading or (not force_processes and threading.current_thread() is not threading.main_thread()):
        mode = "threads"
    else:
        mode = "processes"
    if mode != "serial":
        try:
            return call.run(todo, mode, n_workers, threshold)
        except _ParallelUnavailableError as why:
            warnings.warn(
                f"multitask could not run {call.name} in parallel: {str(why).rstrip('.')}. Running its {len(todo)} "
                "items in series in this thread instead.",
                RuntimeWarning,
                stacklevel=2,
            )
    return call.run(todo, "serial", 1, None)


__all__ = ["multitask", "n_jobs", "parse_nbytes"]
