"""The streaming engine under ``TaskSequencer`` and ``Topology``: stages
connected by bounded queues, items dispatched to executors.

Imports ``_executor``, ``_job`` and ``_errors`` only (plus psutil for the
memory gate): it is a client of the executor layer, never of the scheduler.

::

    one-shot/global stages          map stages (one call per item)
    (called in the engine thread)   ──submit(job)──> executor lane ──done(result)──┐
                                                                                   │
    engine thread:  dispatch ──> wait on the inbox (SimpleQueue) <─────────────────┘
                    ^__________________________|   (timed wait only while a stage
                                                    is held by the memory gate)

One thread (the caller's) owns every buffer and counter. Executors only put
``(token, JobResult)`` in the inbox from their own threads; nothing else is
shared. A map stage takes the oldest item of its input buffer when it has a
free worker, its executor lane has a free slot (never more than ``capacity``
jobs), its output buffers have room (counting items already on their way, so
a bounded buffer never holds more than its bound), and, for a stage that
respects the memory limit, system memory use is below the limit. Downstream
stages are served first, so finished work drains before new work is read.
"""

from __future__ import annotations

import itertools
import logging
import queue
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil

from taskgraph._errors import InvalidTaskError, StageError
from taskgraph._executor import Executor
from taskgraph._job import JobResult, call_job

LOGGER = logging.getLogger("taskgraph.stream")

#: What the engine does with a stage (see :class:`Stage`).
KINDS = ("map", "global", "one shot")
#: How a map stage calls its function with an item's value.
CALL_STYLES = ("unpack", "value", "key value")


class Buffer(dict[Any, Any]):
    """A named queue of items: an insertion-ordered dict ``key -> value``.

    Consumed oldest first. ``bound`` (None: unbounded) limits how many items a
    producing stage lets it hold, counting the items still being computed for it.
    """

    def __init__(self, name: str, bound: int | None = None) -> None:
        super().__init__()
        self.name = name
        self.bound = bound
        #: Items being computed right now whose result will land here.
        self.incoming = 0
        #: The most items it ever held (what back-pressure tests look at).
        self.high_water = 0

    def has_room(self) -> bool:
        """Whether a producer may start one more item for this buffer."""
        return self.bound is None or len(self) + self.incoming < self.bound

    def __repr__(self) -> str:
        return f"<queue {self.name!r}: {len(self)} items>"


class Memo(Protocol):
    """Remembers results across runs (``Topology`` with a workspace)."""

    def lookup(self, stage: Stage, key: Any, value: Any) -> tuple[bool, Any]:
        """``(True, result)`` when ``stage`` already computed ``key``."""

    def record(self, stage: Stage, key: Any, value: Any, result: Any) -> None:
        """Keep the result of ``stage`` on ``key``."""


@dataclass(eq=False)
class Stage:
    """One stage of a pipeline.

    Attributes:
        name: for messages and logs.
        func: the user's function.
        sources: the input buffers (a map stage has exactly one; a one-shot
            stage may have none).
        sinks: the output buffers (none: results are dropped).
        kind: ``'map'`` (one call per item, on an executor), ``'global'``
            (``func(inputs, outputs)`` in the engine thread whenever its
            inputs or outputs changed) or ``'one shot'`` (``func(inputs,
            outputs)`` once, before anything else).
        call: for a map stage, how ``func`` gets the value: ``'unpack'``
            (``func(*value)`` when the value is a tuple), ``'value'``
            (``func(value)``) or ``'key value'`` (``func((key, value))``).
        workers: how many items of this stage may run at once.
        lane: the name of the executor it runs on.
        respect_memory_limit: whether the memory gate holds its new items.
        sources_as_tuple, sinks_as_tuple: give a global or one-shot function
            a tuple of buffers even when there is one (fluidimage passes the
            queues as the user gave them to ``add_work``).
        running: how many of its items are on an executor now.
        dirty: for a global stage, whether its buffers changed since its last call.
    """

    name: str
    func: Callable[..., Any]
    sources: tuple[Buffer, ...] = ()
    sinks: tuple[Buffer, ...] = ()
    kind: str = "map"
    call: str = "unpack"
    workers: int = 1
    lane: str = "main"
    respect_memory_limit: bool = False
    sources_as_tuple: bool = False
    sinks_as_tuple: bool = False
    running: int = field(default=0, init=False)
    dirty: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        # The layers above validate what users give; these are the engine's own invariants.
        if self.kind not in KINDS or self.call not in CALL_STYLES:
            raise InvalidTaskError(f"stage {self.name!r}: unknown kind {self.kind!r} or call style {self.call!r}")
        if self.kind == "map" and len(self.sources) != 1:
            raise InvalidTaskError(f"map stage {self.name!r} needs exactly one source buffer")

    def arguments(self, key: Any, value: Any) -> tuple[Any, ...]:
        """The positional arguments of one call of a map stage."""
        if self.call == "unpack":
            return value if isinstance(value, tuple) else (value,)
        if self.call == "key value":
            return ((key, value),)
        return (value,)

    def queue_arguments(self) -> tuple[Any, Any]:
        """What a global or one-shot function is called with."""
        inputs: Any = self.sources if self.sources_as_tuple else (self.sources[0] if self.sources else None)
        outputs: Any = self.sinks if self.sinks_as_tuple else (self.sinks[0] if self.sinks else None)
        return inputs, outputs


@dataclass(slots=True)
class _InFlight:
    stage: Stage
    key: Any
    value: Any  # kept only when a memo records it, so items do not linger in memory


class Engine:
    """Runs a set of stages to completion on the given executors.

    Args:
        stages: in pipeline order (first stage first).
        executors: lane name -> executor.
        owned: the lanes whose executor this engine shuts down at the end.
        memory_limit: fraction of system memory (0-1) at or above which
            stages that respect it start no new item; None: no gate.
        recheck: seconds between memory checks while a stage is gated.
        stop_on_error: raise the first item's failure (after killing the
            running work) instead of recording it and going on.
        memo: remembers results between runs (skips items done before).
        failure_sink: where a failed item's :class:`StageError` is put,
            under the item's key (the sequencer returns failures in place).
        verbose: log each start and finish at INFO instead of DEBUG.
        hint: appended to error messages: what the user can do.
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        executors: dict[str, Executor],
        owned: Sequence[str] = (),
        *,
        memory_limit: float | None = None,
        recheck: float = 5.0,
        stop_on_error: bool = True,
        memo: Memo | None = None,
        failure_sink: Buffer | None = None,
        verbose: bool = False,
        hint: str = "",
    ) -> None:
        self.stages = list(stages)
        self.executors = executors
        self.owned = list(owned)
        self.memory_limit = memory_limit
        self.recheck = recheck
        self.stop_on_error = stop_on_error
        self.memo = memo
        self.failure_sink = failure_sink
        self.verbose = verbose
        self.hint = hint
        #: Every item failure, in the order they happened.
        self.failures: list[StageError] = []
        #: Every key in the order it first appeared in a buffer (to give results in that order).
        self.first_seen: dict[Any, None] = {}
        self._inbox: queue.SimpleQueue[tuple[int, JobResult]] = queue.SimpleQueue()
        self._in_flight: dict[int, _InFlight] = {}
        # Lanes may share an executor: its capacity bounds the jobs of all of them.
        self._load = {id(executor): 0 for executor in executors.values()}
        self._tokens = itertools.count()
        self._gated = False
        self._remote = {
            lane: not executor.in_process for lane, executor in executors.items()
        }
        self._buffers = {id(buffer): buffer for stage in self.stages for buffer in (*stage.sources, *stage.sinks)}

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> list[StageError]:
        """Run until no stage can do more; return the failures (when not stopping on them).

        Raises:
            StageError: the first failure, with ``stop_on_error``, or any
                failure of a global or one-shot stage.
        """
        clean = False
        for buffer in self._buffers.values():
            self.first_seen.update(dict.fromkeys(buffer))
        try:
            for stage in self.stages:
                if stage.kind == "one shot":
                    self._call_global(stage)
            while True:
                self._dispatch()
                if not self._in_flight:
                    break
                # (No local variable keeps a result: its data is freed once consumed.)
                try:
                    self._finish(*self._inbox.get(timeout=self.recheck if self._gated else None))
                except queue.Empty:
                    continue  # look at memory again
                while True:  # take every result already there before dispatching again
                    try:
                        self._finish(*self._inbox.get_nowait())
                    except queue.Empty:
                        break
            clean = True
        finally:
            for lane in self.owned:
                self.executors[lane].shutdown(kill=not clean)
            if not clean:
                self._await_lent()
        return self.failures

    def _await_lent(self) -> None:
        """After a failure, wait for the jobs still running on executors the
        caller lent: they cannot be stopped without killing the caller's
        workers, and leaving them running would let the caller's next run go
        past the executor's capacity. Their results are dropped."""
        lent = {id(executor) for lane, executor in self.executors.items() if lane not in self.owned}
        while any(id(self.executors[entry.stage.lane]) in lent for entry in self._in_flight.values()):
            token, _ = self._inbox.get()
            self._in_flight.pop(token, None)

    def _dispatch(self) -> None:
        """Start every item that may start now; call globals whose queues changed."""
        progress = True
        while progress:
            progress = False
            self._gated = False
            for stage in reversed(self.stages):  # downstream first: drain before reading more
                if stage.kind == "global":
                    if stage.dirty and all(sink.has_room() for sink in stage.sinks):
                        self._call_global(stage)
                        progress = True
                elif stage.kind == "map":
                    while self._may_start(stage):
                        self._start(stage)
                        progress = True

    def _may_start(self, stage: Stage) -> bool:
        source = stage.sources[0]
        if not source or stage.running >= stage.workers:
            return False
        executor = self.executors[stage.lane]
        if self._load[id(executor)] >= executor.capacity:
            return False
        if not all(sink.has_room() for sink in stage.sinks):
            return False
        if stage.respect_memory_limit and self.memory_limit is not None:
            used = psutil.virtual_memory().percent / 100
            if used >= self.memory_limit:
                if self._in_flight:
                    self._gated = True
                    self._say(f"stage {stage.name!r} waits: memory use {used:.1%} >= limit "
                              f"{self.memory_limit:.1%}")
                    return False
                # Nothing is running that could free memory: waiting would
                # wait forever, so let one item through at a time.
                LOGGER.warning("stage %r starts an item although memory use %.1f%% >= limit %.1f%%: "
                               "nothing else is running that could free memory",
                               stage.name, used * 100, self.memory_limit * 100)
        return True

    def _start(self, stage: Stage) -> None:
        source = stage.sources[0]
        key = next(iter(source))
        value = source.pop(key)
        self._touched(source)
        if self.memo is not None:
            found, result = self.memo.lookup(stage, key, value)
            if found:
                self._say(f"stage {stage.name!r}: item {key!r} was done before, skipped")
                self._deliver(stage, key, result)
                return
        token = next(self._tokens)
        try:
            job = call_job(token, f"{stage.name}[{key!r}]", stage.func, stage.arguments(key, value),
                           remote=self._remote[stage.lane])
        except Exception as error:  # an unpicklable item fails here, in the caller
            self._fail(stage, key, error)
            return
        self._in_flight[token] = _InFlight(stage, key, value if self.memo is not None else None)
        stage.running += 1
        self._load[id(self.executors[stage.lane])] += 1
        for sink in stage.sinks:
            sink.incoming += 1
        self._say(f"stage {stage.name!r} starts item {key!r}")
        inbox = self._inbox
        self.executors[stage.lane].submit(job, lambda result: inbox.put((token, result)))

    def _finish(self, token: int, result: JobResult) -> None:
        entry = self._in_flight.pop(token, None)
        if entry is None:
            return
        stage = entry.stage
        stage.running -= 1
        self._load[id(self.executors[stage.lane])] -= 1
        for sink in stage.sinks:
            sink.incoming -= 1
        if result.error is not None:
            self._fail(stage, entry.key, result.error)
            return
        self._say(f"stage {stage.name!r} finished item {entry.key!r} in "
                  f"{result.ended - result.started:.3f} s on {result.worker}")
        if self.memo is not None:
            self.memo.record(stage, entry.key, entry.value, result.result)
        self._deliver(stage, entry.key, result.result)

    def _deliver(self, stage: Stage, key: Any, result: Any) -> None:
        self.first_seen.setdefault(key)
        for sink in stage.sinks:
            sink[key] = result
            sink.high_water = max(sink.high_water, len(sink))
            self._touched(sink)

    def _fail(self, stage: Stage, key: Any, error: BaseException) -> None:
        failure = StageError(
            f"stage {stage.name!r} raised {type(error).__name__} on item {key!r}: {error}. "
            f"Its own exception and traceback are chained to this error.{self.hint}",
            stage.name, key,
        )
        failure.__cause__ = error
        if self.stop_on_error or isinstance(error, KeyboardInterrupt):
            raise failure
        LOGGER.warning("stage %r failed on item %r: %s: %s", stage.name, key, type(error).__name__, error)
        self.failures.append(failure)
        if self.failure_sink is not None:
            self.failure_sink[key] = failure

    # -- globals ---------------------------------------------------------------------------

    def _call_global(self, stage: Stage) -> None:
        """Call a global or one-shot stage in this thread, then note what it changed."""
        stage.dirty = False
        before = {key: len(buffer) for key, buffer in self._buffers.items()}
        inputs, outputs = stage.queue_arguments()
        try:
            stage.func(inputs, outputs)
        except Exception as error:
            failure = StageError(
                f"{stage.kind} work {stage.name!r} raised {type(error).__name__}: {error}. It runs in "
                "the calling process on the queues themselves, so its failure stops the run; its "
                "traceback is chained to this error.",
                stage.name, None,
            )
            raise failure from error
        for sink in stage.sinks:
            for key in sink:
                self.first_seen.setdefault(key)
        for key, buffer in self._buffers.items():
            if len(buffer) != before[key]:
                buffer.high_water = max(buffer.high_water, len(buffer))
                self._touched(buffer)

    def _say(self, message: str) -> None:
        """Log at DEBUG; with ``verbose`` at INFO, and on stderr when logging is not set up."""
        if not self.verbose:
            LOGGER.debug("%s", message)
            return
        LOGGER.info("%s", message)
        if not LOGGER.hasHandlers():
            print(message, file=sys.stderr)

    def _touched(self, buffer: Buffer) -> None:
        """A buffer gained or lost items: globals that read or write it look again."""
        for stage in self.stages:
            if stage.kind == "global" and any(b is buffer for b in (*stage.sources, *stage.sinks)):
                stage.dirty = True


