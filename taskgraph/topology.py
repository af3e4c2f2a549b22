"""``Topology``: fluidimage's queues-and-works pipelines, on taskgraph's executors.

A client of the executor layer (through :mod:`taskgraph._stream`) and of the
public ``TaskGraph`` API, which records finished items in the workspace's
ledger so that a second ``compute`` skips them. Imports ``_stream``,
``_stage_checks``, ``_backends``, ``_executor``, ``_graph`` and ``_errors``.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import pickle
import re
import threading
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from taskgraph._backends import make_executor
from taskgraph._errors import InvalidArgumentError, InvalidTaskError, StageError
from taskgraph._executor import Executor
from taskgraph._graph import TaskGraph
from taskgraph._stage_checks import check_executor, check_picklable, positive_int
from taskgraph._stream import Buffer, Engine, Stage

LOGGER = logging.getLogger("taskgraph.topology")

#: Work kinds, as in fluidimage (a work may have several: ``('global', 'one shot')``).
KINDS = ("global", "one shot", "io", "eat key value")
#: The backends ``compute(executor=...)`` names.
EXECUTORS = ("processes", "threads", "sequential")
#: Where the traceback of each failed item is written, under ``path_dir_result``.
ERRORS_DIRNAME = "errors"

#: A queue of a topology: an insertion-ordered dict ``key -> value`` with a ``name``.
Queue = Buffer


@dataclass(eq=False)
class Work:
    """One work of a topology, as given to :meth:`Topology.add_work`."""

    name: str
    func: Callable[..., Any]
    inputs: tuple[Queue, ...]
    outputs: tuple[Queue, ...]
    kinds: frozenset[str]
    inputs_as_tuple: bool
    outputs_as_tuple: bool

    @property
    def kind(self) -> str:
        """What the engine does with it: ``'one shot'``, ``'global'`` or ``'map'``."""
        if "one shot" in self.kinds:
            return "one shot"
        return "global" if "global" in self.kinds else "map"


class Topology:
    """Queues of items and the works that move items between them.

    A work takes the oldest item of its input queue, computes it and puts the
    result under the same key in its output queue(s). Works run concurrently;
    a work starts no new item while its output queue is full
    (``nb_items_queue_max``), so a fast reader cannot flood memory ahead of a
    slow computation.

    Args:
        path_dir_result: a directory for what the run leaves behind: the
            traceback of each item that failed in the last compute
            (``errors/<work>-<key>.txt``) and the ledger that
            records finished items, so that a later :meth:`compute` over the
            same items skips them and still fills :attr:`results`. None:
            nothing is written or remembered.
        nb_max_workers: how many items are computed at once; default the
            number of CPUs.

    Attributes:
        queues: the queues, in the order they were added.
        works: the works, in the order they were added.
        results: after :meth:`compute`, the items of the queues that no work
            consumes (the last queues), ``key -> value``, merged, in the order
            their keys first appeared (usually the order the first queue was filled).
        errors: after :meth:`compute`, one :class:`~taskgraph.StageError` per
            failed item (``.stage`` is the work, ``.item`` the key).
    """

    def __init__(self, path_dir_result: str | os.PathLike[str] | None = None,
                 nb_max_workers: int | None = None) -> None:
        self.path_dir_result = None if path_dir_result is None else os.fspath(path_dir_result)
        self.nb_max_workers = _check_workers(nb_max_workers)
        self.queues: list[Queue] = []
        self.works: list[Work] = []
        self.results: dict[Any, Any] = {}
        self.errors: list[StageError] = []

    def add_queue(self, name: str, kind: str | None = None) -> Queue:
        """Add and return an empty queue (a dict ``key -> value`` with a ``name``).

        ``kind`` is accepted for fluidimage compatibility and ignored.
        """
        if any(existing.name == name for existing in self.queues):
            raise InvalidArgumentError(
                f"the topology already has a queue named {name!r}: give each queue its own name."
            )
        queue = Queue(name)
        self.queues.append(queue)
        return queue

    def add_work(
        self,
        name: str,
        func: Callable[..., Any] | None = None,
        input_queue: Queue | str | tuple[Queue | str, ...] | None = None,
        output_queue: Queue | str | tuple[Queue | str, ...] | None = None,
        kind: str | tuple[str, ...] | None = None,
        *,
        func_or_cls: Callable[..., Any] | None = None,
    ) -> Work:
        """Add a work that moves items from ``input_queue`` to ``output_queue``.

        Args:
            name: for messages and the ledger.
            func: by ``kind``: default, ``out[key] = func(value)`` in worker
                processes (CPU-bound work); ``'io'``, the same in threads of
                this process; ``'eat key value'``, ``func((key, value))``;
                ``'global'``, ``func(input_queue, output_queue)`` called in
                this process whenever its queues change, to move what it can
                (joins; ``input_queue`` may be a tuple); ``'one shot'``,
                ``func(input_queue, output_queue)`` once, before the others
                (typically to fill the first queue).
            input_queue: a queue (or its name), or a tuple of them for a global work.
            output_queue: a queue, a tuple of queues (each gets the result) or
                None (results are dropped: a work that only saves).
            kind: None, one of the kinds above, or a tuple of them.
            func_or_cls: fluidimage's name for ``func``, accepted so that
                ``add_work(..., func_or_cls=f)`` calls work unchanged (a
                function or bound method; fluidimage's ``params_cls`` is not
                supported).

        Raises:
            InvalidArgumentError: (a ValueError) naming the work and what is wrong.
        """
        if func_or_cls is not None:
            if func is not None:
                raise InvalidArgumentError(f"work {name!r}: give func or func_or_cls, not both.")
            func = func_or_cls
        if any(work.name == name for work in self.works):
            raise InvalidArgumentError(f"the topology already has a work named {name!r}: give each work its own name.")
        if not callable(func):
            raise InvalidArgumentError(f"work {name!r}: func must be callable, got {func!r}")
        kinds = _parse_kind(name, kind)
        inputs = self._queues_of(name, "input_queue", input_queue)
        outputs = self._queues_of(name, "output_queue", output_queue)
        work = Work(name, func, inputs, outputs, kinds, isinstance(input_queue, tuple),
                    isinstance(output_queue, tuple))
        if work.kind == "map" and len(inputs) != 1:
            raise InvalidArgumentError(
                f"work {name!r} computes one item at a time, so it needs exactly one input_queue "
                f"(got {len(inputs)}); a work that joins several queues has kind='global'."
            )
        if work.kind == "global" and not inputs:
            raise InvalidArgumentError(
                f"global work {name!r} has no input_queue: it is called when its input queues "
                "change. A work that only fills queues at the start has kind='one shot'."
            )
        self.works.append(work)
        return work

    def _queues_of(self, work: str, argument: str, given: Any) -> tuple[Queue, ...]:
        if given is None:
            return ()
        found = []
        for item in given if isinstance(given, tuple) else (given,):
            matches = [queue for queue in self.queues if queue is item or queue.name == item]
            if not matches:
                raise InvalidArgumentError(
                    f"work {work!r}: {argument} {item!r} is not a queue of this topology; "
                    "create it with add_queue first."
                )
            found.append(matches[0])
        return tuple(found)

    # -- computing -----------------------------------------------------------------------

    def compute(
        self,
        executor: Any = "processes",
        nb_max_workers: int | None = None,
        nb_items_queue_max: int | None = None,
        stop_if_error: bool = False,
    ) -> None:
        """Run every work until no item is left to move; fill :attr:`results`.

        Args:
            executor: ``'processes'`` (default: CPU-bound works in niced
                worker processes, ``'io'`` works in threads of this process),
                ``'threads'`` (every work in threads), ``'sequential'`` (one
                item at a time in this thread), a ``distributed.Client`` (CPU
                works on that Dask cluster, at most ``nb_max_workers`` items at
                once; ``'io'`` works in threads here), or an
                :class:`~taskgraph._executor.Executor` that the caller owns
                (``'io'`` works then run in threads).
            nb_max_workers: overrides the constructor's value for this run.
            nb_items_queue_max: how many items a queue that some work consumes
                may hold; default ``max(4 * nb_max_workers, 8)``. Queues that
                no work consumes (the results) are not bounded.
            stop_if_error: False (default): an item that fails is recorded in
                :attr:`errors` (and its traceback written under
                ``path_dir_result/errors/``), dropped, and every other item
                finishes. True: the first failure stops the run (running
                worker processes are killed) and is raised.

        Raises:
            StageError: with ``stop_if_error``, the first failure (``.stage``
                names the work, ``.item`` the key; ``__cause__`` is the
                work's own exception). A global or one-shot work that raises
                always stops the run.
        """
        remote = check_executor(executor, EXECUTORS)
        workers = _check_workers(nb_max_workers) or self.nb_max_workers or os.cpu_count() or 1
        bound = positive_int(max(4 * workers, 8) if nb_items_queue_max is None else nb_items_queue_max,
                             "nb_items_queue_max")
        if not self.works:
            raise InvalidArgumentError("the topology has no work: add some with add_work before compute().")
        consumed = self._reset_queues(bound)
        if remote or executor == "processes":
            for work in self.works:
                _check_picklable(work)
        lanes, owned = _make_lanes(executor, workers, any("io" in work.kinds for work in self.works))
        stages = self._stages(workers)
        self._clear_tracebacks()
        memo = None if self.path_dir_result is None else _LedgerMemo(self.path_dir_result)
        engine = Engine(
            stages, lanes, owned, stop_on_error=stop_if_error, memo=memo,
            hint="" if stop_if_error else " The other items go on.",
        )
        self.errors = []
        try:
            self.errors = engine.run()
        except StageError as first:
            self._write_traceback(first)
            raise
        finally:
            if memo is not None:
                memo.close()
        for failure in self.errors:
            self._write_traceback(failure)
        self.results = self._merged_results(consumed, engine.first_seen)
        self._warn_leftovers(consumed)
        self._warn_failures()

    def _reset_queues(self, bound: int) -> set[int]:
        """Empty the queues some work fills and bound those some work consumes (whose ids it returns)."""
        consumed = {id(queue) for work in self.works for queue in work.inputs}
        produced = {id(queue) for work in self.works for queue in work.outputs}
        for queue in self.queues:
            if id(queue) in produced:
                queue.clear()  # what a previous compute left is computed again
            queue.bound = bound if id(queue) in consumed else None
            queue.incoming = queue.high_water = 0
        return consumed

    def _stages(self, workers: int) -> list[Stage]:
        return [
            Stage(work.name, work.func, work.inputs, work.outputs, kind=work.kind,
                  call="key value" if "eat key value" in work.kinds else "value",
                  workers=workers, lane="io" if "io" in work.kinds else "main",
                  sources_as_tuple=work.inputs_as_tuple, sinks_as_tuple=work.outputs_as_tuple)
            for work in self.works
        ]

    def _merged_results(self, consumed: set[int], first_seen: Iterable[Any]) -> dict[Any, Any]:
        """The items of the queues no work consumes, merged."""
        merged: dict[Any, Any] = {}
        for queue in self.queues:
            if id(queue) not in consumed:
                merged.update(queue)
        # In the order the keys first appeared (the order the first queue was filled
        # in), not the order items happened to finish.
        order = {key: index for index, key in enumerate(first_seen)}
        return dict(sorted(merged.items(), key=lambda item: order.get(item[0], len(order))))

    def _warn_failures(self) -> None:
        if not self.errors:
            return
        where = ("; tracebacks in " + os.path.join(self.path_dir_result, ERRORS_DIRNAME)
                 if self.path_dir_result else "")
        LOGGER.warning(
            "%d item(s) failed: %s%s. The other items finished; see topology.errors.",
            len(self.errors), ", ".join(f"{e.stage}[{e.item!r}]" for e in self.errors), where,
        )

    def _warn_leftovers(self, consumed: set[int]) -> None:
        for queue in self.queues:
            if id(queue) in consumed and queue:
                LOGGER.warning(
                    "queue %r still holds %d item(s) that no work took (%s): a global work that "
                    "consumes it left them, for example keys it could not pair.",
                    queue.name, len(queue), ", ".join(map(repr, list(queue)[:5])),
                )

    def _clear_tracebacks(self) -> None:
        """``errors/`` describes the last compute: drop the tracebacks of an earlier one."""
        if self.path_dir_result is None:
            return
        directory = os.path.join(self.path_dir_result, ERRORS_DIRNAME)
        if os.path.isdir(directory):
            for name in os.listdir(directory):
                if name.endswith(".txt"):
                    os.remove(os.path.join(directory, name))

    def _write_traceback(self, failure: StageError) -> None:
        if self.path_dir_result is None:
            return
        directory = os.path.join(self.path_dir_result, ERRORS_DIRNAME)
        os.makedirs(directory, exist_ok=True)
        label = failure.stage if failure.item is None else f"{failure.stage}-{failure.item}"  # None: a global work
        safe = _file_safe(label)
        if safe != label:  # keys that differ only in replaced characters keep a file each
            safe += "-" + hashlib.sha256(label.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        name = safe + ".txt"
        with open(os.path.join(directory, name), "w") as stream:
            stream.write("".join(traceback.format_exception(type(failure), failure, failure.__traceback__)))

    def __repr__(self) -> str:
        return f"<Topology {len(self.queues)} queues, works {[work.name for work in self.works]}>"


def _make_lanes(executor: Any, workers: int, io: bool) -> tuple[dict[str, Executor], list[str]]:
    """The executors of one compute: ``main`` for works, ``io`` for ``'io'`` works (if any)."""
    if executor in ("sequential", "threads"):  # one backend serves both lanes
        shared = make_executor(workers, executor=executor)
        return {"main": shared, "io": shared}, [] if executor == "sequential" else ["main"]
    if isinstance(executor, Executor):
        main, owned = executor, []
    else:  # a distributed.Client, or worker processes
        main, owned = make_executor(workers, executor=executor or "processes"), ["main"]
    if not io:
        return {"main": main}, owned
    return {"main": main, "io": make_executor(workers, executor="threads")}, [*owned, "io"]


#: The result of the item being recorded (see :func:`_recorded`).
_delivery = threading.local()


def _recorded(work: str, key: Any, func: Callable[..., Any], value: Any) -> Any:
    """Stands in the ledger for one item of a work: ``func`` computed on ``value``.

    Its arguments are the item's identity; calling it returns the result the
    executor just computed (so recording never computes twice).
    """
    return _delivery.result


def _counted(func: Callable[..., Any]) -> Callable[..., Any]:
    """What of a work's function identifies its items in the ledger. A bound
    method (fluidimage's pattern: works are methods of a Topology subclass)
    counts by its function, not by the object it is bound to, whose queues
    change as items flow (it would never be the same twice)."""
    return func.__func__ if inspect.ismethod(func) else func


class _LedgerMemo:
    """Finished items of a topology, kept in the workspace's ledger through ``TaskGraph``.

    Each finished item is a task of :func:`_recorded` with ``store_result``:
    a dry-run graph tells whether an item is recorded (and gives its result)
    without running anything; an inline graph records new results.
    """

    def __init__(self, workspace: str) -> None:
        self._check = TaskGraph(workspace, -1, dry_run=True, progress=False)
        self._record = TaskGraph(workspace, -1, progress=False)

    def lookup(self, stage: Stage, key: Any, value: Any) -> tuple[bool, Any]:
        try:
            task = self._check.add_task(_recorded, args=(stage.name, key, _counted(stage.func), value),
                                        store_result=True, task_name=f"{stage.name}[{key!r}]")
        except InvalidTaskError as error:
            raise InvalidArgumentError(
                f"work {stage.name!r}, item {key!r}: the item cannot be recorded in the ledger under "
                f"path_dir_result ({error}). Make the work's function and values picklable, or use "
                "path_dir_result=None to compute without remembering finished items."
            ) from error
        if task.state == "skipped":
            return True, task.get()
        return False, None

    def record(self, stage: Stage, key: Any, value: Any, result: Any) -> None:
        # The ledger pickles stored results: check first, so that a result that
        # cannot be stored costs only its record, never the run.
        try:
            pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            LOGGER.warning(
                "work %r, item %r: its result (a %s) cannot be pickled (%s), so it is not recorded "
                "and the item will be computed again next time.", stage.name, key, type(result).__name__, error,
            )
            return
        _delivery.result = result
        try:
            self._record.add_task(_recorded, args=(stage.name, key, _counted(stage.func), value), store_result=True,
                                  task_name=f"{stage.name}[{key!r}]")
        finally:
            _delivery.result = None

    def close(self) -> None:
        for graph in (self._check, self._record):
            graph.close()
            graph.join()


def _check_picklable(work: Work) -> None:
    """A CPU work's function goes to worker processes: refuse one that cannot, naming the work."""
    if work.kind == "map" and "io" not in work.kinds:
        check_picklable(work.func, f"work {work.name!r}", "Define it at the top level of a module, give the "
                        "work kind='io' (threads), or compute with executor='threads'.")


def _parse_kind(work: str, kind: str | tuple[str, ...] | None) -> frozenset[str]:
    if kind is None:
        return frozenset()
    kinds = (kind,) if isinstance(kind, str) else kind
    unknown = [k for k in kinds if k not in KINDS]
    if not isinstance(kinds, tuple) or unknown:
        raise InvalidArgumentError(
            f"work {work!r}: unknown kind {kind!r}; use None or one (or a tuple) of "
            f"{', '.join(map(repr, KINDS))}."
        )
    return frozenset(kinds)


def _check_workers(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidArgumentError(f"nb_max_workers must be a positive integer or None, got {value!r}")
    return value


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:150]
