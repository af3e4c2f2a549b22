"""The pool's worker processes as its manager sees them: records, start, kill, and what an end means for a job.

Imports ``_forkserver`` (types), ``_worker`` (``worker_main``), ``_executor``
(types), ``_job``, ``_errors`` and psutil only; the manager
(:class:`taskgraph._pool.ProcessPool`) decides when each of these happens.

A worker starts forked by the pool's fork server, or spawned by
multiprocessing when there is none. Killing one kills its process tree and
then its process group (what its tasks started, also what its death
orphaned), before it is reaped so that the group's id cannot be reused.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import signal
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import psutil

from taskgraph._errors import WorkerDiedError, WorkerStartError
from taskgraph._worker import Frames, worker_main

if TYPE_CHECKING:
    from taskgraph._executor import DoneCallback
    from taskgraph._forkserver import ForkServer
    from taskgraph._job import Job


@dataclasses.dataclass(slots=True)
class Entry:
    """A job in the pool: its callback and the message that carries it."""

    job: Job
    done: DoneCallback
    message: bytes


class Worker:
    """The manager thread's record of one worker process."""

    __slots__ = ("conn", "cpu", "exitcode", "finished_jobs", "frames", "index", "jobs", "name", "pid", "process")

    def __init__(self, pid: int, conn: Connection, index: int, cpu: int | None, process: Any = None) -> None:
        self.pid = pid
        self.conn: Connection | None = conn
        self.frames = Frames(conn)  # what it sends, read from conn
        self.index = index
        self.name = f"taskgraph-worker-{index}"
        self.cpu = cpu
        self.process = process  # the multiprocessing.Process under spawn; None when forked by the server
        # The job it runs, then the short ones sent to wait behind it (see ProcessPool).
        self.jobs: collections.deque[Entry] = collections.deque()
        self.finished_jobs = 0
        self.exitcode: int | None = None


def start_worker(server: ForkServer | None, context: Any, index: int, levels: dict[str, int], nice: bool,
                 cpu: int | None) -> Worker:
    """Start worker number ``index``: forked by ``server``, or spawned from
    the multiprocessing ``context`` when there is no server.

    Raises:
        OSError: (or any error of multiprocessing) when it cannot be started.
    """
    name = f"taskgraph-worker-{index}"
    if server is not None:
        options = {"levels": levels, "nice": nice, "cpu": cpu, "name": name}
        pid, conn = server.start_worker(options)
        return Worker(pid, conn, index, cpu)
    parent_conn, child_conn = context.Pipe(duplex=True)
    try:
        process = context.Process(
            target=worker_main, args=(child_conn, levels, nice, cpu, None), name=name, daemon=False,
        )
        process.start()
    except BaseException:
        parent_conn.close()
        raise
    finally:
        child_conn.close()
    return Worker(process.pid, parent_conn, index, cpu, process)


def log_levels() -> dict[str, int]:
    """Levels configured in this process, so workers drop what would be dropped here."""
    levels = {"": logging.getLogger().level}
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return levels


def usable_cpus() -> list[int] | None:
    """The cores this process may run on, or None where the platform cannot
    pin processes (psutil has no ``cpu_affinity`` there, e.g. macOS)."""
    if not hasattr(psutil.Process, "cpu_affinity"):
        return None
    return sorted(psutil.Process().cpu_affinity())  # type: ignore[attr-defined,unused-ignore]


def kill_tree(pid: int) -> None:
    """Kill a worker, the processes below it and what is left of its process group."""
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        children = process.children(recursive=True)
        for victim in [process, *children]:
            with contextlib.suppress(psutil.Error):
                victim.kill()
    kill_group(pid)


def kill_group(pid: int) -> None:
    """Kill what is left of a worker's process group (the processes its tasks
    started, also those orphaned by the worker's death). Call it before the
    worker is reaped, so that its pid, the group's id, cannot be reused."""
    if hasattr(os, "killpg"):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


# -- what a worker's end (or failed start) means for its job -----------------------------


def describe_exit(exitcode: int | None) -> str:
    """Explain a worker's exit code in words, with the likely cause."""
    if exitcode is None:
        return "an unknown exit status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = {
            "SIGKILL": " (killed: often the out-of-memory killer or a job queue's limit)",
            "SIGSEGV": " (segmentation fault: a crash in native code)",
            "SIGBUS": " (bus error: a crash in native code or a truncated memory map)",
            "SIGABRT": " (aborted by native code)",
            "SIGTERM": " (terminated by another process)",
        }.get(name, "")
        return f"signal {name}{hint}"
    return f"exit code {exitcode} (the task or a library called os._exit or exited the process)"


def not_started(job: Job) -> WorkerDiedError:
    """For a job the pool never sent because it is closing."""
    return WorkerDiedError(f"task {job.name!r} was not started because the graph is shutting down")


def stopped(job: Job) -> WorkerDiedError:
    """For a job whose worker the pool stopped or killed because it is closing."""
    return WorkerDiedError(f"task {job.name!r} was stopped because the graph is shutting down")


def died(worker: Worker, job: Job) -> WorkerDiedError:
    """For the job of a worker that died while running it."""
    return WorkerDiedError(
        f"the worker process (pid {worker.pid}) running task {job.name!r} died with "
        f"{describe_exit(worker.exitcode)} before the task returned." + _death_hint(worker)
    )


def _death_hint(worker: Worker) -> str:
    if worker.finished_jobs == 0 and worker.exitcode == 1 and worker.process is not None:
        return (
            " It died before finishing any task: a worker process could not start. With the "
            "spawn start method each worker imports the main script, so the script's top-level "
            "code must be under `if __name__ == '__main__':`; the worker's own error is printed "
            "on stderr above."
        )
    return (
        " If it ran out of memory, run fewer tasks at once (a smaller n_workers) or split the "
        "task; partial targets are not recorded and the task runs again next time."
    )


def start_failed(job: Job, error: BaseException) -> WorkerStartError:
    """For a job that could not run because no worker could be started for it."""
    return WorkerStartError(
        f"task {job.name!r} could not run: a worker process could not be started "
        f"({type(error).__name__}: {error}). If it says too many open files, raise the "
        "limit (ulimit -n) or use a smaller n_workers; if it says no memory, free some "
        "or use fewer workers."
    )


def server_start_failed(error: OSError) -> WorkerStartError:
    """For a pool whose fork server could not be started."""
    return WorkerStartError(
        f"the fork server that starts worker processes could not be started ({error}); raise "
        "the open-file limit (ulimit -n) or free memory, or pass start_method='spawn'"
    )


__all__ = ["Entry", "Worker", "describe_exit", "died", "kill_group", "kill_tree", "log_levels", "not_started",
           "server_start_failed", "start_failed", "start_worker", "stopped", "usable_cpus"]
