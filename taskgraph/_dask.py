"""The Dask executor: jobs run on a ``distributed`` cluster.

Only this module imports Dask, and only when a graph asks for it. The ledger,
the up-to-date decisions and the scheduling stay in the calling process; the
cluster only runs :func:`~taskgraph._job.run_job`, so target fingerprints are
taken on the worker that wrote the files and large targets never travel.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import threading
import time
import uuid
from typing import Any

from taskgraph._errors import MissingDependencyError, SharedFilesystemError, TaskExecutionError, WorkerDiedError
from taskgraph._executor import DoneCallback, Executor
from taskgraph._job import Job, JobResult, RemoteTraceback, encode_result, run_job

LOGGER = logging.getLogger("taskgraph.Task")
INSTALL = "pip install 'taskgraph[dask]'"
_CAPACITY_REFRESH_S = 5.0


def require_distributed() -> Any:
    """Import ``distributed``, or say exactly how to install it."""
    try:
        import distributed
    except ImportError as error:
        raise MissingDependencyError(
            f"running tasks on a Dask cluster needs dask.distributed, which is not installed: {INSTALL}"
        ) from error
    return distributed


def run_on_worker(payload: bytes, spec: tuple[Any, ...]) -> bytes:
    """What a Dask worker runs: check the shared filesystem, then the job."""
    task_id, name, inputs = spec[0], spec[1], spec[2]
    try:
        from distributed import get_worker

        where = f"Dask worker {get_worker().address} (pid {os.getpid()})"
    except (ImportError, ValueError):
        where = f"pid {os.getpid()}"
    unseen = [path for path in inputs if not os.path.exists(path)]
    if unseen:
        outcome = JobResult(task_id, worker=where, error=SharedFilesystemError(
            f"task {name!r}: {len(unseen)} input file(s) that the scheduling process sees do not "
            f"exist on {where}: {', '.join(unseen[:5])}. Put inputs and targets on a filesystem "
            "that every Dask worker shares (and use the same absolute paths there)."
        ))
        return encode_result(outcome, name)
    try:
        call = pickle.loads(payload)
    except BaseException as error:
        return encode_result(JobResult(task_id, worker=where, error=TaskExecutionError(
            f"task {name!r} could not be unpickled on {where} ({error!r}); its function and "
            "argument types must be importable on every Dask worker."
        )), name)
    outcome = run_job(call, *spec)
    outcome.worker = where
    return encode_result(outcome, name)


class DaskExecutor(Executor):
    """Submits each job to a ``distributed.Client``.

    Args:
        client: a connected ``distributed.Client``; or None to connect to
            ``address`` (a client made here is closed at shutdown).
        address: the scheduler's address, e.g. ``'tcp://10.0.0.1:8786'``.
        max_in_flight: how many tasks may be on the cluster at once; by
            default four times the cluster's threads, re-read every few seconds
            so an adaptive cluster can grow.
    """

    def __init__(self, client: Any = None, address: str | None = None, max_in_flight: int | None = None) -> None:
        distributed = require_distributed()
        self._own_client = client is None
        self._client = client if client is not None else distributed.Client(address)
        self._max_in_flight = max_in_flight if max_in_flight and max_in_flight > 0 else None
        self._capacity = 1
        self._capacity_at = 0.0
        self._lock = threading.Lock()
        self._futures: dict[str, Any] = {}
        self._closed = False
        with contextlib.suppress(Exception):  # older distributed: no log forwarding
            self._client.forward_logging(level=logging.getLogger().getEffectiveLevel())

    @property
    def capacity(self) -> int:  # type: ignore[override]
        if self._max_in_flight is not None:
            return self._max_in_flight
        now = time.monotonic()
        if now - self._capacity_at > _CAPACITY_REFRESH_S:
            self._capacity_at = now
            try:
                threads = sum(self._client.nthreads().values())
            except Exception:
                threads = 0
            self._capacity = max(4 * threads, self._capacity if threads == 0 else 1)
        return self._capacity

    def submit(self, job: Job, done: DoneCallback) -> None:
        assert job.payload is not None
        key = f"taskgraph-{job.name[:40]}-{uuid.uuid4().hex[:12]}"
        try:
            future = self._client.submit(
                run_on_worker, job.payload, job.spec(), key=key, priority=job.priority, pure=False
            )
        except Exception as error:
            done(JobResult(job.task_id, error=WorkerDiedError(
                f"task {job.name!r} could not be sent to the Dask scheduler ({error!r}); check that "
                "the cluster is running and reachable."
            )))
            return
        with self._lock:
            self._futures[key] = future
        future.add_done_callback(lambda fut: self._finished(fut, job, done))

    def _finished(self, future: Any, job: Job, done: DoneCallback) -> None:
        with self._lock:
            self._futures.pop(future.key, None)
        status = future.status
        if status == "finished":
            try:
                result: JobResult = pickle.loads(future.result())
            except Exception as error:
                result = JobResult(job.task_id, error=TaskExecutionError(
                    f"the result of task {job.name!r} could not be read back from the Dask "
                    f"cluster ({error!r})"
                ))
            if result.error is not None and result.remote_traceback:
                result.error.__cause__ = RemoteTraceback(result.remote_traceback)
            done(result)
            return
        if status == "error":
            cause: BaseException
            try:
                cause = future.exception()
            except Exception as lost:
                cause = lost
            if type(cause).__name__ == "KilledWorker":
                message = (
                    f"task {job.name!r} killed the Dask worker(s) running it ({cause}): it crashed "
                    "them or ran out of memory. Give workers more memory, or split the task."
                )
            else:
                message = f"task {job.name!r} failed on the Dask cluster: {type(cause).__name__}: {cause}"
            failure = WorkerDiedError(message)
            failure.__cause__ = cause
            done(JobResult(job.task_id, error=failure))
            return
        done(JobResult(job.task_id, error=WorkerDiedError(
            f"task {job.name!r} was cancelled on the Dask cluster (status {status!r}): the "
            "connection to the scheduler was lost, or the graph is stopping."
        )))

    def shutdown(self, kill: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            futures = list(self._futures.values())
        if futures:
            with contextlib.suppress(Exception):
                self._client.cancel(futures)
        if self._own_client:
            with contextlib.suppress(Exception):
                self._client.close()
