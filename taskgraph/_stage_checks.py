"""The argument checks that ``TaskSequencer`` and ``Topology`` share: the
executor they are given, positive counts, functions sent to worker processes.

Imports ``_backends`` (``is_dask_client``), ``_executor`` and ``_errors``. Each
check raises an :class:`InvalidArgumentError` (a ``ValueError``) naming the
argument, what was given and what to pass instead.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from taskgraph._backends import is_dask_client
from taskgraph._errors import InvalidArgumentError
from taskgraph._executor import Executor

__all__ = ["check_executor", "check_picklable", "positive_int"]


def check_executor(executor: Any, names: tuple[str, ...]) -> bool:
    """Refuse an ``executor`` that is none of ``names``, a ``distributed.Client``
    or an :class:`Executor`; return whether it is a Dask client."""
    remote = is_dask_client(executor)
    if not isinstance(executor, Executor) and not remote and executor not in names:
        raise InvalidArgumentError(
            f"executor must be one of {', '.join(map(repr, names))}, a distributed.Client or an "
            f"Executor, got {executor!r}"
        )
    return remote


def positive_int(value: Any, argument: str) -> int:
    """``value`` if it is an integer >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{argument} must be a positive integer, got {value!r}")
    return value


def check_picklable(func: Callable[..., Any], owner: str, remedy: str) -> None:
    """Refuse a function that worker processes cannot receive; ``owner`` names
    its stage or work, ``remedy`` says what to do instead."""
    try:
        pickle.dumps(func)
    except Exception as error:
        raise InvalidArgumentError(
            f"{owner}: its function cannot be pickled to send it to worker processes ({error}). {remedy}"
        ) from error
