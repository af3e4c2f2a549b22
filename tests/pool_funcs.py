"""Task functions for the process-pool tests (importable by spawned workers)."""

from __future__ import annotations

import os
import time


def pids(path):
    """Write this worker's pid and its parent's; return both."""
    with open(path, "w") as stream:
        stream.write(f"{os.getpid()} {os.getppid()}")
    return os.getpid(), os.getppid()


def big_result(marker, size):
    """Return ``size`` bytes, after saying (in ``marker``) that the call is done."""
    value = b"x" * size
    with open(marker, "w") as stream:
        stream.write("returning")
    return value


def kill_self():
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def sleep(seconds):
    time.sleep(seconds)


class WorkerOnlyValue:
    """A value that pickles in the worker process that made it, but not again
    in the calling process (as with a handle to a resource that only the
    worker holds): storing it fails inside the scheduler, not in the task."""

    def __init__(self):
        self.made_in = os.getpid()

    def __reduce__(self):
        if os.getpid() != self.made_in:
            raise RuntimeError("this value can only be pickled in the process that made it")
        return (_rebuild, (self.made_in,))


def _rebuild(made_in):
    value = WorkerOnlyValue.__new__(WorkerOnlyValue)
    value.made_in = made_in
    return value


def make_worker_only_value():
    return WorkerOnlyValue()


def chatty(logger_name, index, records, size):
    """Log ``records`` numbered records, then return ``size`` bytes that name ``index``."""
    import logging

    logger = logging.getLogger(logger_name)
    for number in range(records):
        logger.warning("task %d record %d", index, number)
    return (str(index).encode() * size)[:size]
