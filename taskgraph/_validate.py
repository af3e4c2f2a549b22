"""Checks of ``add_task``'s arguments (one per argument) and of ``TaskGraph``'s
options, and ``Call``, the validated call.

Imports ``_errors``, ``_fingerprint`` (``validate_algorithm``), ``_identity``
(``normalize_path``) and ``Task`` of ``_task`` for typing only.

Each check of an ``add_task`` argument raises an :class:`InvalidTaskError` (a
``ValueError``, as natcap raised) made by the caller's ``invalid`` function,
which names the task; the message names the argument, shows what was given
and says what to pass instead.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from taskgraph._errors import InvalidTaskError, UnpicklableTaskError
from taskgraph._fingerprint import validate_algorithm
from taskgraph._frozen import frozen
from taskgraph._identity import is_pure_path, normalize_path
from taskgraph._job import first_unpicklable

if TYPE_CHECKING:
    from pathlib import PurePath

    from taskgraph._task import Task

Invalid = Callable[[str], InvalidTaskError]

# Hash algorithms that passed validate_algorithm (hashlib's need a trial digest).
_KNOWN_ALGORITHMS: set[str] = set()
_NO_PATHS: frozenset[str] = frozenset()


@frozen
class Call:
    """One ``add_task`` call, checked: what the Task is made of.

    Attributes:
        name: the task's name.
        func: the function (``noop`` for ``func=None``).
        args, kwargs: the call's arguments, as a tuple and a dict.
        dependencies: the tasks it waits for, all of its graph.
        targets: the normalised target paths, sorted, without repeats.
        ignore: the normalised paths of ``ignore_path_list``.
        memory, expected_time: the scheduling hints, or None.
        The other attributes are ``add_task``'s arguments of the same names.
    """

    name: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    dependencies: tuple[Task, ...]
    targets: tuple[str, ...]
    ignore: frozenset[str]
    ignore_directories: bool
    hash_algorithm: str
    hash_target_files: bool
    transient_run: bool
    store_result: bool
    priority: float
    memory: float | None
    expected_time: float | None


def pickled_call(call: Call) -> bytes:
    """The call pickled, for a graph that sends every task to another process.

    Raises:
        UnpicklableTaskError: naming the first part of the call that cannot be pickled.
    """
    try:
        return pickle.dumps((call.func, call.args, call.kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        parts: list[tuple[str, Any]] = [("the function", call.func)]
        parts += [(f"argument {index}", value) for index, value in enumerate(call.args)]
        parts += [(f"keyword argument {name!r}", value) for name, value in call.kwargs.items()]
        found = first_unpicklable(parts)
        part = "the call" if found is None else f"{found[0]} ({found[1]})"
        raise UnpicklableTaskError(
            f"task {call.name!r}: {part} cannot be pickled, and this graph sends every task to another "
            "process to run. Define the function at module level (not a lambda, nested function or "
            "method of an unpicklable object), pass picklable arguments, or use n_workers=0 to run "
            "tasks in a thread."
        ) from error


def shown(value: Any) -> str:
    """A short ``repr`` of a value the user passed, which cannot raise."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= 200 else text[:197] + "..."


def task_label(task_name: Any, func: Any) -> str:
    """The task's name for messages and the ledger.

    Raises:
        InvalidTaskError: if ``task_name`` is given and is not a string.
    """
    if isinstance(task_name, str):
        return str(task_name)
    name = getattr(func, "__name__", None)
    label = name if isinstance(name, str) and name else "noop" if func is None else type(func).__name__
    if task_name is not None:
        raise InvalidTaskError(
            f"task {label!r}: task_name must be a string, got {type(task_name).__name__} "
            f"{shown(task_name)}; pass a str or leave it out to use the function's name"
        )
    return label


def function(func: Any, invalid: Invalid) -> Callable[..., Any]:
    """``func``, if it can be called."""
    if not callable(func):
        raise invalid(f"func must be callable, got {type(func).__name__}")
    checked: Callable[..., Any] = func
    return checked


def call_args(args: Any, invalid: Invalid) -> tuple[Any, ...]:
    """``args`` as a tuple of positional arguments."""
    if args is None:
        return ()
    if type(args) is tuple:
        return args
    if isinstance(args, (str, bytes, bytearray, dict)) or not _iterable(args):
        raise invalid(
            f"args must be a list or tuple of positional arguments, got {type(args).__name__} "
            f"{shown(args)}; for a single argument pass args=[value]"
        )
    if isinstance(args, (set, frozenset)):
        raise invalid(
            f"args must be a list or tuple of positional arguments, got a {type(args).__name__}, "
            "whose order is not defined; for one set argument pass args=[the_set]"
        )
    return tuple(args)


def call_kwargs(kwargs: Any, invalid: Invalid) -> dict[str, Any]:
    """``kwargs`` as a dict of keyword arguments, each named by a string."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise invalid(f"kwargs must be a dict, got {type(kwargs).__name__} {shown(kwargs)}")
    for name in kwargs:
        if not isinstance(name, str):
            raise invalid(
                f"kwargs keys must be strings (the names of keyword arguments), got "
                f"{type(name).__name__} {shown(name)}"
            )
    return dict(kwargs)


def path_list(paths: Any, argument: str, invalid: Invalid) -> list[str | PurePath]:
    """``paths`` (``target_path_list`` or ``ignore_path_list``) as a list of
    str or pathlib paths."""
    if paths is None:
        return []
    if isinstance(paths, (str, bytes)) or is_pure_path(paths) or not _iterable(paths):
        raise invalid(
            f"{argument} must be a list of str or pathlib paths, got {type(paths).__name__} "
            f"{shown(paths)}" + ("; for one path pass [path]" if isinstance(paths, str) or is_pure_path(paths) else "")
        )
    listed: list[Any] = list(paths)
    for path in listed:
        if type(path) is not str and not (isinstance(path, str) or is_pure_path(path)):
            what = "Values passed to target_path_list are not strings" if argument == "target_path_list" else (
                f"{argument} holds a value that is not a path")
            raise invalid(
                f"{what}: {shown(path)} ({type(path).__name__}) in {shown(paths)}. "
                f"{argument} must be a list of str or pathlib paths."
            )
    return listed


def target_list(paths: Any, invalid: Invalid) -> list[str | PurePath]:
    """``target_path_list`` as given: a list of paths that can name a file a task writes."""
    raw = path_list(paths, "target_path_list", invalid)
    for path in raw:
        text = os.fspath(path)
        if not text:
            raise invalid(
                "target_path_list holds an empty path ''; name each file the task writes"
            )
        if "\0" in text:
            raise invalid(f"target {text!r} contains a NUL character, which no file name can hold")
    return raw


def targets(raw: list[str | PurePath], ledger_path: str, ledger_files: Iterable[str],
            invalid: Invalid) -> tuple[str, ...]:
    """The targets normalised and sorted, none of them a file system's root
    directory or one of the ledger's files (``ledger_path`` and the names
    ending it with ``ledger_files``)."""
    if not raw:
        return ()
    normalised = tuple(sorted({normalize_path(path) for path in raw}))
    for path in normalised:
        if os.path.dirname(path) == path:
            raise invalid(
                f"target {path!r} is the root directory of the file system: it always exists, so "
                "it cannot tell whether the task wrote anything. Name the files the task writes."
            )
    for path in normalised:
        if path.startswith(ledger_path) and (path == ledger_path or path[len(ledger_path):] in ledger_files):
            raise invalid(
                f"target {path} is one of taskgraph's own files in the workspace; a task that "
                "wrote it would destroy the ledger. Choose another file name."
            )
    return normalised


def ignored(paths: Any, invalid: Invalid) -> frozenset[str]:
    """``ignore_path_list`` as normalised paths."""
    raw = path_list(paths, "ignore_path_list", invalid)
    return frozenset([normalize_path(path) for path in raw]) if raw else _NO_PATHS


def dependencies(deps: Any, task_type: type[Task], graph_tasks: Sequence[Task], invalid: Invalid) -> tuple[Task, ...]:
    """``dependent_task_list`` as a tuple of Tasks of this graph (``graph_tasks``, by ``task_id``)."""
    if deps is None:
        return ()
    if isinstance(deps, task_type):
        raise invalid(
            f"dependent_task_list must be a list of Tasks, got a single Task {shown(deps)}; "
            "pass [task]"
        )
    if isinstance(deps, (str, bytes)) or not _iterable(deps):
        raise invalid(
            f"dependent_task_list must be a list of Tasks, got {type(deps).__name__} {shown(deps)}"
        )
    listed = tuple(deps)
    count = len(graph_tasks)
    for dep in listed:  # one pass for the common list of this graph's tasks
        if type(dep) is not task_type or not (dep.task_id < count and graph_tasks[dep.task_id] is dep):
            break
    else:
        return listed
    bad = [dep for dep in listed if not isinstance(dep, task_type)]
    if bad:
        raise invalid(
            f"Objects passed to dependent task list that are not tasks: {shown(bad)}. "
            "Pass the Task objects returned by add_task."
        )
    foreign = [dep for dep in listed if not (dep.task_id < count and graph_tasks[dep.task_id] is dep)]
    if foreign:
        raise invalid(
            f"dependent_task_list holds tasks of another TaskGraph: {foreign!r}. "
            "Dependencies must be added to the same graph."
        )
    return listed


def hash_algorithm(algorithm: Any, invalid: Invalid) -> str:
    """``hash_algorithm``, if taskgraph knows it."""
    if type(algorithm) is not str or algorithm not in _KNOWN_ALGORITHMS:
        problem = validate_algorithm(algorithm)
        if problem is not None:
            raise invalid(problem)
        _KNOWN_ALGORITHMS.add(algorithm)
    checked: str = algorithm
    return checked


def priority(value: Any, invalid: Invalid) -> float:
    """``priority``, as given, if it is a number that can be ordered."""
    if not (type(value) is int or (type(value) is float and not math.isnan(value))):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid(f"priority must be a number, got {shown(value)}")
        if isinstance(value, float) and math.isnan(value):
            raise invalid("priority is NaN, which cannot be ordered; pass a number")
    checked: float = value
    return checked


def hint(value: Any, argument: str, unit: str, invalid: Invalid) -> float | None:
    """A scheduling hint (``memory``, ``expected_time``) as a float >= 0, or None (unknown)."""
    if value is None:
        return None
    number = None
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = None
    if number is None or not 0 <= number < math.inf:
        raise invalid(f"{argument} must be a number of {unit} >= 0, or None for unknown; got {shown(value)}")
    return number


# -- TaskGraph's options ----------------------------------------------------------------


def n_workers(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTaskError(f"n_workers must be an integer, got {value!r}")


def not_importing_main() -> None:
    """Refuse a graph made while a spawn worker imports the main script."""
    # A spawn worker has imported multiprocessing before the script; a
    # process that has not is not one (and need not pay for its import).
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is not None and getattr(multiprocessing.current_process(), "_inheriting", False):
        # Left to go on, the graph would wait for its own workers forever.
        raise InvalidTaskError(
            "TaskGraph() was called while a worker process started with 'spawn' imported the "
            "main script: its top-level code runs again in every such worker. Put it under "
            "`if __name__ == '__main__':`, or use start_method='fork' (the default on Linux)."
        )


def start_method(value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise InvalidTaskError(f"start_method must be 'fork', 'spawn' or None, got {value!r}")


def pinning(n_workers: int, bind_cpus: bool, executor: Any, scheduler_address: str | None,
            usable_cpus: Callable[[], list[int] | None]) -> None:
    """Check that ``bind_cpus=True`` can be met here (``usable_cpus()``: the cores
    this process may use, None where it cannot pin)."""
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


def cache(value: Any, key: Any) -> None:
    """``cache`` and ``cache_key``."""
    if value is True or not (value is None or value is False or isinstance(value, (str, os.PathLike))):
        raise InvalidTaskError(f"cache must be a directory path, None or False, got {value!r}")
    if key is not None and not isinstance(key, (str, os.PathLike)):
        raise InvalidTaskError(f"cache_key must be the path of a key file or None, got {key!r}")


def reporting_interval(value: Any) -> None:
    if value is not None and (not isinstance(value, (int, float)) or value < 0):
        raise InvalidTaskError(f"reporting_interval must be a number of seconds or None, got {value!r}")


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True
