"""``taskgraph.boss``: taylorism's Boss, workers and schedulers on a TaskGraph.

Built on the engine's public objects: each :class:`Boss` owns one :class:`TaskGraph`
on a temporary workspace (removed when the boss ends) and adds one task per
instruction set, with ``transient_run=True`` (nothing is skipped: a boss
runs what it is told) and ``store_result=True`` (a job's return value is its
report). The graph's scheduler thread and process pool do the work: the boss
has no pool, polling loop or registry of its own, and its scheduler is one of
the graph's scheduling policies::

    taylorism limit     TaskGraph
    'threads'           n_workers=max_threads (0: half the CPUs), priority order
    'memory'            n_workers=max_threads (0: every CPU), memory_limit
    'threads+memory'    n_workers=max_threads (0: half the CPUs), memory_limit,
                        scheduler='longest_first' (unless nosort)
    binded=True         bind_cpus=True

Instructions named ``memory`` (MiB) and ``expected_time`` (s) are the job's
scheduling hints (``memory`` defaults to the scheduler's ``memory_per_task``
under a memory limit); ``name`` names the job in the report. They reach the
worker too when its signature takes them.

Unlike taylorism, the reports of the jobs that finished before a failure
stay in the report, and a worker is a plain callable or any class with a
``_task()`` method (no footprints).
"""

from __future__ import annotations

import inspect
import logging
import os
import pickle
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import psutil

from taskgraph._errors import InvalidArgumentError, JobFailedError, TaskGraphTerminatedError, UnpicklableTaskError
from taskgraph._graph import TaskGraph
from taskgraph._job import first_unpicklable
from taskgraph._task import Task

LOGGER = logging.getLogger("taskgraph.boss")

#: Instructions the boss reads itself (they reach the worker only if it takes them).
SCHEDULING_INSTRUCTIONS = ("name", "memory", "expected_time")
LIMITS = ("threads", "memory", "threads+memory")


@dataclass(frozen=True, slots=True)
class BossScheduler:
    """taylorism's scheduler settings; made by :func:`scheduler`."""

    limit: str = "threads"
    max_threads: int = 0
    max_memory: float | None = None
    memory_per_task: float = 2048.0
    memory_max_percentage: float = 0.75
    binded: bool = False
    nosort: bool = False

    @property
    def memory_limited(self) -> bool:
        return "memory" in self.limit

    def n_workers(self) -> int:
        """Worker processes: ``max_threads``, or half the CPUs (every CPU
        for ``limit='memory'``, where memory alone limits what runs)."""
        if self.max_threads > 0:
            return self.max_threads
        cpus = os.cpu_count() or 1
        return cpus if self.limit == "memory" else max(1, cpus // 2)

    def memory_limit(self) -> float | None:
        """MiB the jobs' memory estimates may add up to, or None."""
        if not self.memory_limited:
            return None
        if self.max_memory is not None:
            return self.max_memory
        return psutil.virtual_memory().total / 2**20 * self.memory_max_percentage

    def graph_options(self) -> dict[str, Any]:
        """The :class:`TaskGraph` arguments for these settings."""
        return {
            "scheduler": "longest_first" if self.limit == "threads+memory" and not self.nosort else "priority",
            "memory_limit": self.memory_limit(),
            "bind_cpus": self.binded,
        }


def scheduler(
    limit: str = "threads",
    max_threads: int = 0,
    max_memory: float | None = None,
    memory_per_task: float = 2048.0,
    memory_max_percentage: float = 0.75,
    binded: bool = False,
    nosort: bool = False,
) -> BossScheduler:
    """taylorism's scheduler: how many jobs run at once, and in what order.

    Args:
        limit: ``'threads'`` (at most ``max_threads`` jobs at once),
            ``'memory'`` (jobs whose ``memory`` estimates fit in the memory
            limit) or ``'threads+memory'`` (both, longest ``expected_time``
            first).
        max_threads: worker processes; 0 means half the CPUs (every CPU for
            ``'memory'``).
        max_memory: the memory limit in MiB; None means
            ``memory_max_percentage`` of the machine's total memory.
        memory_per_task: MiB assumed for a job without a ``memory`` instruction.
        memory_max_percentage: see ``max_memory``.
        binded: pin each worker process to a core of its own.
        nosort: with ``'threads+memory'``, keep the order the instructions
            were given in instead of longest ``expected_time`` first.

    Raises:
        InvalidArgumentError: (a ValueError) for an unknown limit or a
            number out of range.
    """
    if limit not in LIMITS:
        raise InvalidArgumentError(f"scheduler: limit must be one of {LIMITS}, got {limit!r}")
    if isinstance(max_threads, bool) or not isinstance(max_threads, int) or max_threads < 0:
        raise InvalidArgumentError(f"scheduler: max_threads must be an integer >= 0, got {max_threads!r}")
    for label, value in (("max_memory", max_memory), ("memory_per_task", memory_per_task)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise InvalidArgumentError(f"scheduler: {label} must be a positive number of MiB, got {value!r}")
    if not isinstance(memory_max_percentage, (int, float)) or not 0 < memory_max_percentage <= 1:
        raise InvalidArgumentError(
            f"scheduler: memory_max_percentage must be in (0, 1], got {memory_max_percentage!r}"
        )
    return BossScheduler(limit, max_threads, max_memory, float(memory_per_task), float(memory_max_percentage),
                         bool(binded), bool(nosort))


def _accepted(worker: Any) -> set[str] | None:
    """The keyword arguments ``worker`` takes (None: any, through ``**kwargs``)."""
    try:
        # A class's signature is its constructor's, without self.
        parameters = inspect.signature(worker).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}


def run_instructions(worker: Any, index: int, instructions: dict[str, Any], shared: dict[str, Any]) -> Any:
    """What each task of a boss runs (in a worker process): one job.

    ``index`` only keeps identical instruction sets apart (one task each).
    Shared arrays reach the worker as numpy arrays mapped on shared memory.
    """
    del index
    kwargs = dict(instructions)
    for key, value in shared.items():
        kwargs[key] = getattr(value, "array", value)
    if isinstance(worker, type):
        return worker(**kwargs)._task()
    return worker(**kwargs)


@dataclass(slots=True)
class _Job:
    name: str
    instructions: dict[str, Any]
    task: Task | None = None


class Boss:
    """Gives instruction sets to workers and collects their reports.

    Args:
        worker: a callable taking the instructions as keyword arguments, or
            a class built with them that has a ``_task()`` method; defined
            at module level (jobs run in worker processes). Its return value
            is the job's report.
        scheduler: a :func:`scheduler`; default ``scheduler()`` (half the
            CPUs, in the order given).
        name: names the jobs that have no ``name`` instruction
            (``'<name>-<n>'``; default ``'worker'``).
        verbose: log every job's report when the boss finishes.
        maxlenreport: in verbose mode, the most lines logged per report.
        sharedmemory_common_instructions: instructions that every job gets
            from shared memory instead of a copy: numpy arrays (copied once
            into shared memory, freed when the boss ends) or
            :class:`~taskgraph.SharedArray` handles (left to their owner).
            Jobs receive numpy arrays.

    Use as a context manager, or call :meth:`make_them_work` and then
    :meth:`wait_till_finished` (or :meth:`end`).
    """

    def __init__(
        self,
        worker: Callable[..., Any] | type,
        scheduler: BossScheduler | None = None,
        name: str | None = None,
        verbose: bool = False,
        maxlenreport: int = 1024,
        sharedmemory_common_instructions: Mapping[str, Any] | None = None,
    ) -> None:
        if worker is None or not callable(worker):
            raise InvalidArgumentError(
                f"Boss: worker must be a function taking the instructions as keyword arguments or a "
                f"class with a _task() method, got {worker!r}"
            )
        if isinstance(worker, type) and not callable(getattr(worker, "_task", None)):
            raise InvalidArgumentError(f"Boss: the worker class {worker.__name__} has no _task() method")
        try:
            pickle.dumps(worker)
        except Exception as error:
            raise InvalidArgumentError(
                f"Boss: the worker {worker!r} cannot be pickled ({error}), and jobs run in worker "
                "processes: define it at module level (not a lambda, nested function or class)"
            ) from error
        if scheduler is not None and not isinstance(scheduler, BossScheduler):
            raise InvalidArgumentError(
                f"Boss: scheduler must come from taskgraph.boss.scheduler(...), got {scheduler!r}"
            )
        self._worker = worker
        self._accepted = _accepted(worker)
        self._scheduler = scheduler if scheduler is not None else BossScheduler()
        self.name = name or "worker"
        self.verbose = verbose
        self.maxlenreport = maxlenreport
        self._lock = threading.Lock()
        self._jobs: list[_Job] = []
        self._working = False
        self._status = "pending"
        self._failure: BaseException | None = None
        self._owned_shared: list[Any] = []
        self._shared = self._share(dict(sharedmemory_common_instructions or {}))
        self._workspace = tempfile.mkdtemp(prefix="taskgraph-boss-")
        # Safety net for a boss never ended: its workspace goes at exit.
        self._remove_workspace = weakref.finalize(self, shutil.rmtree, self._workspace, True)
        try:
            self._graph = TaskGraph(
                self._workspace, self._scheduler.n_workers(), progress=False,
                **self._scheduler.graph_options(),
            )
        except BaseException:
            self._release()
            raise

    def _share(self, shared: dict[str, Any]) -> dict[str, Any]:
        from taskgraph._shared import SharedArray

        out: dict[str, Any] = {}
        for key, value in shared.items():
            if isinstance(value, SharedArray):
                out[key] = value
                continue
            try:
                handle = SharedArray(value)
            except BaseException:
                self._release()
                raise
            self._owned_shared.append(handle)
            out[key] = handle
        return out

    # -- instructions -------------------------------------------------------------------

    def set_instructions(
        self,
        common_instructions: Mapping[str, Any] | None = None,
        individual_instructions: Mapping[str, Any] | None = None,
        fatal: bool = True,
    ) -> None:
        """Add jobs: one per position in the ``individual_instructions`` lists,
        each with the ``common_instructions`` too. While the boss works, the
        jobs start as soon as the scheduler allows.

        Raises:
            InvalidArgumentError: (a ValueError, at this call) lists of unequal
                lengths, a value that is not a list, a name given both
                commonly and individually, or an instruction the worker does
                not take.
            TaskGraphTerminatedError: after a job failed or the boss was
                stopped (with ``fatal``, the boss also stops).
        """
        common = dict(common_instructions or {})
        individual = {key: value for key, value in (individual_instructions or {}).items()}
        try:
            jobs = self._expand(common, individual)
        except InvalidArgumentError:
            if fatal and self._working:
                self.stop_them_working()
            raise
        with self._lock:
            if self._status in ("finished", "failed", "stopped"):
                raise TaskGraphTerminatedError(
                    f"the boss {self.name!r} has {self._status}: it takes no more instructions. "
                    "Start a new boss (run_as_server or Boss) for more jobs."
                )
            first = len(self._jobs)
            new = [
                _Job(str(instructions.get("name", f"{self.name}-{first + offset}")), instructions)
                for offset, instructions in enumerate(jobs)
            ]
            if not self._working:
                self._jobs.extend(new)
                return
            try:
                self._add(new, first)
            finally:
                # A job the graph refused (say, an unpicklable instruction) is not listed.
                self._jobs.extend(job for job in new if job.task is not None)

    def _expand(self, common: dict[str, Any], individual: dict[str, Any]) -> list[dict[str, Any]]:
        for key, values in individual.items():
            if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
                raise InvalidArgumentError(
                    f"individual instruction {key!r} must be a list (one value per job), got "
                    f"{type(values).__name__}"
                )
        lengths = {key: len(values) for key, values in individual.items()}
        if len(set(lengths.values())) > 1:
            raise InvalidArgumentError(
                f"individual instructions must all have the same length (one value per job), got "
                f"lengths {lengths}"
            )
        both = sorted(set(common) & set(individual))
        if both:
            raise InvalidArgumentError(f"instructions {both} are given both commonly and individually")
        clashing = sorted(set(self._shared) & (set(common) | set(individual)))
        if clashing:
            raise InvalidArgumentError(f"instructions {clashing} are also shared-memory instructions")
        if self._accepted is not None:
            unknown = sorted(
                key for key in {*common, *individual, *self._shared}
                if key not in self._accepted and key not in SCHEDULING_INSTRUCTIONS
            )
            if unknown:
                raise InvalidArgumentError(
                    f"the worker {getattr(self._worker, '__name__', self._worker)!r} takes no "
                    f"instruction {', '.join(map(repr, unknown))}; it takes {sorted(self._accepted)}"
                )
        count = next(iter(lengths.values()), 0)
        return [{**common, **{key: values[i] for key, values in individual.items()}} for i in range(count)]

    def _add(self, jobs: list[_Job], first: int) -> None:
        """Hand jobs to the graph (under ``self._lock``); ``first`` is the
        index of the first of them among all the boss's jobs."""
        memory_limited = self._scheduler.memory_limited
        for index, job in enumerate(jobs, start=first):
            instructions = job.instructions
            for_worker = {
                key: value for key, value in instructions.items()
                if key not in SCHEDULING_INSTRUCTIONS or self._accepted is None or key in self._accepted
            }
            memory = instructions.get("memory", self._scheduler.memory_per_task) if memory_limited else None
            try:
                job.task = self._graph.add_task(
                    run_instructions, args=(self._worker, index, for_worker, self._shared), task_name=job.name,
                    transient_run=True, store_result=True, memory=memory,
                    expected_time=instructions.get("expected_time"),
                )
            except UnpicklableTaskError as error:
                found = first_unpicklable((f"instruction {key!r}", value) for key, value in for_worker.items())
                culprit = "the worker" if found is None else found[0]
                raise InvalidArgumentError(
                    f"job {job.name!r}: {culprit} cannot be pickled to send it to a worker process "
                    f"({error.__cause__!r}). Give instructions that pickle (numbers, strings, lists, "
                    "dicts, numpy or shared arrays) and a worker defined at module level."
                ) from error.__cause__

    # -- working ----------------------------------------------------------------------------

    def make_them_work(self, terminate: bool = False, stop_listening: bool = False) -> None:
        """Start the jobs given so far; later instructions start as they come.

        Args:
            terminate: no more instructions will come (the graph closes).
            stop_listening: accepted for taylorism's signature; jobs always report.
        """
        del stop_listening
        with self._lock:
            if not self._working:
                self._working = True
                self._status = "running"
                try:
                    self._add(self._jobs, 0)
                except TaskGraphTerminatedError:
                    pass  # a job failed already: wait_till_finished raises it
        if terminate:
            self._graph.close()

    def wait_till_finished(self) -> None:
        """Wait for every job, then release the workers.

        No instruction can be added afterwards.

        Raises:
            JobFailedError: (a RuntimeError) the first job that raised, with
                its ``name`` and ``instructions``; its exception is the
                ``__cause__``. The other jobs were stopped; the reports of
                those that had finished stay in :meth:`get_report`.
        """
        self.make_them_work(terminate=True)
        try:
            self._graph.join()
        except BaseException as error:
            self._on_failure(error)
        else:
            with self._lock:
                if self._status == "running":
                    self._status = "finished"
        finally:
            self._release()
            self._log_reports()
        if self._failure is not None and self._status == "failed":
            raise self._failure

    def _on_failure(self, error: BaseException) -> None:
        with self._lock:
            if self._status == "stopped":
                return
            if self._failure is not None:
                return
            self._status = "failed"
            failed = next((job for job in self._jobs if job.task is not None and job.task.state == "failed"), None)
        if failed is None:
            self._failure = error
            return
        failure = JobFailedError(
            f"job {failed.name!r} of the boss failed with {type(error).__name__}: {error}; its "
            f"instructions: {failed.instructions!r}. The other jobs were stopped.",
            failed.name, failed.instructions,
        )
        failure.__cause__ = error
        self._failure = failure

    def stop_them_working(self) -> None:
        """Stop now: kill the running jobs, drop the others; the boss ends."""
        with self._lock:
            if self._status in ("pending", "running"):
                self._status = "stopped"
        self._graph.terminate()
        try:
            self._graph.join()
        except BaseException as error:
            self._on_failure(error)
        finally:
            self._release()

    def end(self) -> None:
        """Finish: like :meth:`wait_till_finished`, and a no-op once finished.

        Raises:
            JobFailedError: the first failed job, if not raised already.
        """
        if self._status in ("pending", "running"):
            self.wait_till_finished()

    def get_report(self, interim: bool = True) -> dict[str, Any]:
        """The reports so far: ``{'workers_report': [{'name', 'report'}, ...],
        'status': ...}``, in the order the instructions were given.

        ``status`` is ``'pending'`` (before :meth:`make_them_work`),
        ``'running'``, ``'finished'``, ``'failed'`` or ``'stopped'``. Only jobs
        that finished are listed. With ``interim=False``, waits for every job
        first (and raises like :meth:`wait_till_finished`).
        """
        if not interim:
            self.end()
        with self._lock:
            jobs = list(self._jobs)
            status = self._status
        reports = [
            {"name": job.name, "report": job.task.get()}
            for job in jobs
            if job.task is not None and job.task.state in ("ran", "restored")
        ]
        return {"workers_report": reports, "status": status}

    def resources(self) -> list[Any]:
        """What each job cost: the graph's :meth:`TaskGraph.report`."""
        return self._graph.report()

    def _log_reports(self) -> None:
        if not self.verbose:
            return
        for entry in self.get_report()["workers_report"]:
            lines = str(entry["report"]).splitlines()
            LOGGER.info("%s: %s", entry["name"], "\n".join(lines[: self.maxlenreport]))

    def _release(self) -> None:
        """Free what the boss owns: its shared arrays and its workspace."""
        for handle in self._owned_shared:
            handle.close()
        self._owned_shared = []
        remove = getattr(self, "_remove_workspace", None)  # None when __init__ failed early
        if remove is not None:
            remove()

    def __enter__(self) -> Boss:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.stop_them_working()
            return
        self.end()

    def __repr__(self) -> str:
        return f"<Boss {self.name!r} {self._status} jobs={len(self._jobs)}>"


def run_as_server(
    common_instructions: Mapping[str, Any] | None = None,
    individual_instructions: Mapping[str, Any] | None = None,
    scheduler: BossScheduler | None = None,
    verbose: bool = False,
    maxlenreport: int = 1024,
    sharedmemory_common_instructions: Mapping[str, Any] | None = None,
    worker: Callable[..., Any] | type | None = None,
) -> Boss:
    """Make a boss, give it the instructions and set it working.

    More instructions may follow with :meth:`Boss.set_instructions`; call
    :meth:`Boss.wait_till_finished` (or :meth:`Boss.end`, or use the boss as
    a context manager) when no more will come.
    """
    if worker is None:
        raise InvalidArgumentError("run_as_server: pass worker=, the function or class that does each job")
    boss = Boss(worker, scheduler, verbose=verbose, maxlenreport=maxlenreport,
                sharedmemory_common_instructions=sharedmemory_common_instructions)
    try:
        boss.set_instructions(common_instructions, individual_instructions)
        boss.make_them_work()
    except BaseException:
        boss.stop_them_working()
        raise
    return boss


def batch_main(
    common_instructions: Mapping[str, Any] | None = None,
    individual_instructions: Mapping[str, Any] | None = None,
    scheduler: BossScheduler | None = None,
    verbose: bool = False,
    maxlenreport: int = 1024,
    print_report: Callable[[Any], Any] | None = print,
    sharedmemory_common_instructions: Mapping[str, Any] | None = None,
    worker: Callable[..., Any] | type | None = None,
) -> dict[str, Any]:
    """Run every instruction set and wait for all of them: :func:`run_as_server`
    then :meth:`Boss.wait_till_finished`.

    ``print_report`` (if not None) is called with each job's report entry;
    the whole report is returned.

    Raises:
        JobFailedError: the first job that raised.
    """
    boss = run_as_server(common_instructions, individual_instructions, scheduler, verbose, maxlenreport,
                         sharedmemory_common_instructions, worker)
    with boss:
        boss.wait_till_finished()
    report = boss.get_report()
    if print_report is not None:
        for entry in report["workers_report"]:
            print_report(entry)
    return report


__all__ = ["Boss", "BossScheduler", "batch_main", "run_as_server", "scheduler"]
