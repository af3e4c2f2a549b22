"""``TaskSequencer``: eumap's pipeline of stages, on taskgraph's executors.

A client of the executor layer (through :mod:`taskgraph._stream`); it never
touches the ``TaskGraph`` scheduler. Imports ``_stream``, ``_stage_checks``,
``_backends``, ``_executor`` and ``_errors``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from taskgraph._backends import make_executor
from taskgraph._errors import InvalidArgumentError, StageError
from taskgraph._executor import Executor
from taskgraph._stage_checks import check_executor, check_picklable, positive_int
from taskgraph._stream import Buffer, Engine, Stage

#: The backends ``executor=`` names.
EXECUTORS = ("processes", "threads", "inline")


class TaskSequencer:
    """Run a list of functions as a pipeline over many inputs.

    Each input tuple is unpacked into the first stage's function, each
    stage's returned tuple into the next one's (a value that is not a tuple
    is passed as the one argument), and the last stage's return value is the
    result. Stages run concurrently: item 2 can be in stage 1 while item 1 is
    in stage 2.

    Args:
        tasks: the stages, in order. Each is a function, ``(function,
            n_workers)`` or ``(function, n_workers, respect_mem_limit)``;
            ``n_workers`` (default 1) is how many items that stage works on
            at once.
        mem_usage_limit: fraction of system memory (0-1). A stage flagged
            with ``respect_mem_limit`` starts no new item while memory use is
            at or above it and resumes when it drops (the gate is in the
            dispatcher: a held stage occupies no worker).
        wait_timeout: seconds between memory checks while a stage is held.
        verbose: log every start and finish at INFO (printed on stderr when
            logging is not configured).
        executor: ``'processes'`` (default, like eumap: one pool of worker
            processes, as many as the stages' ``n_workers`` added up, so
            every stage can have all its workers busy at once),
            ``'threads'`` (as many threads), ``'inline'`` (one item at a time
            in the calling thread), a ``distributed.Client`` (the items run
            on that Dask cluster, at most as many at once as the stages'
            ``n_workers`` added up; ``pip install 'taskgraph[dask]'``), or an
            :class:`~taskgraph._executor.Executor` that the caller owns (it is
            not shut down after a run).
        queue_size: how many finished items may wait between two stages; a
            stage starts no new item while its output queue is full. Default
            ``max(4 * total workers, 8)``.
        stop_on_error: True (default): the first item a stage fails on stops
            the run (pending items are dropped, running worker processes are
            killed) and :meth:`run` raises a :class:`~taskgraph.StageError`
            naming the stage and the item. False: every other item finishes
            and the failed items' places in the result hold their
            :class:`~taskgraph.StageError` (also listed in :attr:`failures`).
        ordered: True (default): results in input order. False: in the order
            they finished (eumap's behaviour).

    Raises:
        InvalidArgumentError: (a ValueError) for a stage, limit or option that
            cannot work, naming it.
    """

    def __init__(
        self,
        tasks: Sequence[Callable[..., Any] | tuple[Any, ...]],
        mem_usage_limit: float = 0.75,
        wait_timeout: float = 5,
        verbose: bool = False,
        *,
        executor: Any = "processes",
        queue_size: int | None = None,
        stop_on_error: bool = True,
        ordered: bool = True,
    ) -> None:
        self._stages = _stage_list(tasks)
        _check_limits(mem_usage_limit, wait_timeout)
        remote = check_executor(executor, EXECUTORS)
        total = sum(workers for _, _, workers, _ in self._stages)
        queue_size = positive_int(max(4 * total, 8) if queue_size is None else queue_size, "queue_size")
        if remote or executor == "processes":
            for name, func, _, _ in self._stages:
                check_picklable(func, f"stage {name!r}", "Define it at the top level of a module, or pass "
                                "executor='threads'.")
        self.mem_usage_limit = float(mem_usage_limit)
        self.wait_timeout = float(wait_timeout)
        self.verbose = verbose
        self.executor = executor
        self.queue_size = queue_size
        self.stop_on_error = stop_on_error
        self.ordered = ordered
        self.n_workers = total
        #: The failures of the last :meth:`run` (with ``stop_on_error=False``).
        self.failures: list[StageError] = []

    def run(self, input_data: Iterable[Any]) -> list[Any]:
        """Feed ``input_data`` (a list of argument tuples) through the stages.

        Returns:
            One result of the last stage per input, in input order (or in
            completion order with ``ordered=False``). With
            ``stop_on_error=False`` a failed item's place holds its
            :class:`~taskgraph.StageError`.

        Raises:
            StageError: (a RuntimeError) with ``stop_on_error``, the first
                failure: ``.stage`` and ``.item`` (the input's index) name it;
                its ``__cause__`` is the stage's own exception.
        """
        if isinstance(input_data, (str, bytes)):
            raise InvalidArgumentError(
                f"run() takes a list of argument tuples, got a {type(input_data).__name__}: "
                "pass [(arg1, arg2), ...]."
            )
        items = list(input_data)
        results = Buffer("results")
        buffers = [Buffer("input")]
        buffers += [Buffer(f"after {name}", self.queue_size) for name, *_ in self._stages[:-1]]
        buffers.append(results)
        buffers[0].update(enumerate(items))
        stages = [
            Stage(name, func, (buffers[index],), (buffers[index + 1],), workers=workers,
                  respect_memory_limit=respect)
            for index, (name, func, workers, respect) in enumerate(self._stages)
        ]
        backend, owned = self._make_executor()
        engine = Engine(
            stages, {"main": backend}, ["main"] if owned else [],
            memory_limit=self.mem_usage_limit, recheck=self.wait_timeout,
            stop_on_error=self.stop_on_error, failure_sink=results, verbose=self.verbose,
            hint=(" Pass stop_on_error=False to finish the other items and get the failures in "
                  "the result." if self.stop_on_error else ""),
        )
        self.failures = []
        self.failures = engine.run()
        if self.ordered:
            return [results[index] for index in range(len(items))]
        return list(results.values())

    def _make_executor(self) -> tuple[Executor, bool]:
        """A fresh backend for one run (and whether this run owns it)."""
        if isinstance(self.executor, Executor):
            return self.executor, False
        return make_executor(self.n_workers, executor=self.executor), True

    def __repr__(self) -> str:
        stages = ", ".join(f"{name} x{workers}" for name, _, workers, _ in self._stages)
        return f"<TaskSequencer [{stages}] executor={self.executor!r}>"


def _stage_list(tasks: Any) -> list[tuple[str, Callable[..., Any], int, bool]]:
    """The parsed stages, each named after its function (and its index, when a function comes twice)."""
    stages = [_parse_stage(index, task) for index, task in enumerate(_as_list(tasks))]
    names = [name for name, *_ in stages]
    for index, (name, func, workers, respect) in enumerate(stages):
        if names.count(name) > 1:  # the same function twice: errors must say which stage
            stages[index] = (f"{name} (stage {index})", func, workers, respect)
    return stages


def _check_limits(mem_usage_limit: Any, wait_timeout: Any) -> None:
    if isinstance(mem_usage_limit, bool) or not isinstance(mem_usage_limit, (int, float)) or not (
        0 < mem_usage_limit <= 1
    ):
        raise InvalidArgumentError(
            f"mem_usage_limit must be a fraction of system memory in (0, 1], got {mem_usage_limit!r}: "
            "0.75 holds memory-bound stages at 75% use."
        )
    if isinstance(wait_timeout, bool) or not isinstance(wait_timeout, (int, float)) or wait_timeout <= 0:
        raise InvalidArgumentError(f"wait_timeout must be a positive number of seconds, got {wait_timeout!r}")


def _as_list(tasks: Any) -> list[Any]:
    if callable(tasks):
        raise InvalidArgumentError(
            "tasks must be a list of stages (functions, or (function, n_workers[, respect_mem_limit]) "
            f"tuples), got a single stage {tasks!r}: wrap it in a list."
        )
    stages = list(tasks)
    if not stages:
        raise InvalidArgumentError("tasks is empty: give at least one stage function.")
    return stages


def _parse_stage(index: int, task: Any) -> tuple[str, Callable[..., Any], int, bool]:
    """``(name, function, n_workers, respect_mem_limit)`` of one entry of ``tasks``."""
    if callable(task):
        task = (task,)
    if not isinstance(task, tuple) or not 1 <= len(task) <= 3 or not callable(task[0]):
        raise InvalidArgumentError(
            f"stage {index} of tasks is {task!r}: each stage must be a function, (function, n_workers) "
            "or (function, n_workers, respect_mem_limit)."
        )
    func = task[0]
    name = getattr(func, "__name__", None) or f"stage {index}"
    workers = task[1] if len(task) > 1 else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidArgumentError(f"stage {name!r}: n_workers must be a positive integer, got {workers!r}")
    respect = task[2] if len(task) > 2 else False
    if not isinstance(respect, bool):
        raise InvalidArgumentError(f"stage {name!r}: respect_mem_limit must be True or False, got {respect!r}")
    return name, func, workers, respect
