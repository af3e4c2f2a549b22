"""The one factory of executor backends: every layer gets its backend here.

Imports ``_executor`` (the interface and the in-process backends), and
``_pool`` and ``_dask`` when asked for them, so the backends never import one
another or this module.
"""

from __future__ import annotations

from typing import Any

from taskgraph._executor import Executor, InlineExecutor, ThreadExecutor

#: The names the layers accept for a backend (``sequential`` is ``Topology``'s word for inline).
BY_NAME = ("processes", "threads", "inline", "sequential")


def is_dask_client(value: Any) -> bool:
    """Whether ``value`` is a ``distributed.Client`` (checked without importing Dask)."""
    return type(value).__module__.split(".")[0] == "distributed"


def make_executor(
    n_workers: int,
    executor: Any = None,
    scheduler_address: str | None = None,
    start_method: str | None = None,
    bind_cpus: bool = False,
) -> Executor:
    """The one factory of backends: every layer (``TaskGraph``, the sequencer,
    ``multitask``, ``Topology``, the boss) gets its backend here, so there is
    one pool implementation and one place that knows the backend classes.

    ``executor`` decides first: an :class:`Executor` is used as it is; a
    ``distributed.Client`` (or ``scheduler_address``, a Dask scheduler's
    address) runs jobs on that cluster, ``n_workers > 0`` capping how many
    are there at once; ``'inline'`` (or ``'sequential'``) runs each job in
    the caller, ``'threads'`` in ``max(1, n_workers)`` threads, and
    ``'processes'`` in ``max(1, n_workers)`` niced worker processes. With no
    ``executor``, ``n_workers`` has natcap's meanings: ``< 0`` inline,
    ``0`` one thread, ``> 0`` that many worker processes. Processes start
    with ``start_method`` (``'fork'`` or ``'spawn'``; None: the platform's
    default, see :mod:`taskgraph._pool`), each pinned to a core of its own
    with ``bind_cpus``.
    """
    if isinstance(executor, Executor):
        return executor
    if executor in ("inline", "sequential"):
        return InlineExecutor()
    if executor == "threads":
        return ThreadExecutor(max(1, n_workers))
    if executor == "processes":
        n_workers = max(1, n_workers)
    elif executor is not None or scheduler_address is not None:
        from taskgraph._dask import DaskExecutor

        return DaskExecutor(executor, scheduler_address, n_workers if n_workers > 0 else None)
    elif n_workers < 0:
        return InlineExecutor()
    elif n_workers == 0:
        return ThreadExecutor(1)
    from taskgraph._pool import ProcessPool

    return ProcessPool(n_workers, start_method, bind_cpus=bind_cpus)


__all__ = ["BY_NAME", "is_dask_client", "make_executor"]
