"""Checks of ``add_task``'s arguments, before anything is identified or run.

Leaf module: imports ``_errors`` only. Each check raises an
:class:`InvalidTaskError` (a ``ValueError``, as natcap raised) made by the
caller's ``invalid`` function, which names the task; the message names the
argument, shows what was given and says what to pass instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

from taskgraph._errors import InvalidTaskError

Invalid = Callable[[str], InvalidTaskError]


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
    if isinstance(paths, (str, bytes, PurePath)) or not _iterable(paths):
        raise invalid(
            f"{argument} must be a list of str or pathlib paths, got {type(paths).__name__} "
            f"{shown(paths)}" + ("; for one path pass [path]" if isinstance(paths, (str, PurePath)) else "")
        )
    listed: list[Any] = list(paths)
    for path in listed:
        if type(path) is not str and not isinstance(path, (str, PurePath)):
            what = "Values passed to target_path_list are not strings" if argument == "target_path_list" else (
                f"{argument} holds a value that is not a path")
            raise invalid(
                f"{what}: {shown(path)} ({type(path).__name__}) in {shown(paths)}. "
                f"{argument} must be a list of str or pathlib paths."
            )
    return listed


def check_target_names(raw: list[str | PurePath], invalid: Invalid) -> None:
    """Refuse target entries that cannot name a file a task writes."""
    for path in raw:
        text = os.fspath(path)
        if not text:
            raise invalid(
                "target_path_list holds an empty path ''; name each file the task writes"
            )
        if "\0" in text:
            raise invalid(f"target {text!r} contains a NUL character, which no file name can hold")


def check_normalised_targets(targets: tuple[str, ...], invalid: Invalid) -> None:
    """Refuse normalised targets that are a file system's root directory."""
    for path in targets:
        if os.path.dirname(path) == path:
            raise invalid(
                f"target {path!r} is the root directory of the file system: it always exists, so "
                "it cannot tell whether the task wrote anything. Name the files the task writes."
            )


def dependencies(deps: Any, invalid: Invalid, task_type: type) -> list[Any]:
    """``dependent_task_list`` as a list (of Tasks: checked here too)."""
    if deps is None:
        return []
    if isinstance(deps, task_type):
        raise invalid(
            f"dependent_task_list must be a list of Tasks, got a single Task {shown(deps)}; "
            "pass [task]"
        )
    if isinstance(deps, (str, bytes)) or not _iterable(deps):
        raise invalid(
            f"dependent_task_list must be a list of Tasks, got {type(deps).__name__} {shown(deps)}"
        )
    listed = list(deps)
    bad = [dep for dep in listed if not isinstance(dep, task_type)]
    if bad:
        raise invalid(
            f"Objects passed to dependent task list that are not tasks: {shown(bad)}. "
            "Pass the Task objects returned by add_task."
        )
    return listed


def check_priority(priority: Any, invalid: Invalid) -> None:
    if type(priority) is int or (type(priority) is float and not math.isnan(priority)):
        return
    if isinstance(priority, bool) or not isinstance(priority, (int, float)):
        raise invalid(f"priority must be a number, got {shown(priority)}")
    if isinstance(priority, float) and math.isnan(priority):
        raise invalid("priority is NaN, which cannot be ordered; pass a number")


def hint(value: Any, argument: str, unit: str, invalid: Invalid) -> float:
    """A scheduling hint (``memory``, ``expected_time``) as a float >= 0."""
    number = None
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = None
    if number is None or not 0 <= number < math.inf:
        raise invalid(f"{argument} must be a number of {unit} >= 0, or None for unknown; got {shown(value)}")
    return number


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True
