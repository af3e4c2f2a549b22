"""Child-process and shared-memory checks shared by the test modules.

Every test that starts processes ends by asserting that none of them is left:
these helpers say which children are new since a snapshot, ignoring zombies
(reaped later by their parent) and multiprocessing's resource tracker (it
follows its parent out on its own).
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator

import psutil


def child_pids() -> set[int]:
    """The pids of this process's children, recursively: a snapshot."""
    return {child.pid for child in psutil.Process().children(recursive=True)}


def new_children(before: set[int]) -> list[psutil.Process]:
    """Live children started since ``before`` (zombies and the resource tracker aside)."""
    left = []
    for child in psutil.Process().children(recursive=True):
        try:
            if (child.pid not in before and child.status() != psutil.STATUS_ZOMBIE
                    and "resource_tracker" not in " ".join(child.cmdline())):
                left.append(child)
        except psutil.NoSuchProcess:
            pass
    return left


def no_new_children(before: set[int], timeout: float = 10.0) -> bool:
    """Whether every child started since ``before`` is gone within ``timeout``."""
    return wait_until(lambda: not new_children(before), timeout)


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it is true (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def shm_segments() -> set[str]:
    """Shared-memory segments made by taskgraph (POSIX, ``/dev/shm``)."""
    return {name for name in os.listdir("/dev/shm") if name.startswith("tg")} if os.path.isdir("/dev/shm") else set()


def processes_marked(variable: str, value: str) -> list[psutil.Process]:
    """Live processes whose environment has ``variable=value``: a subprocess
    started with it, and every process it started (they inherit it), even
    once they are no longer anyone's children."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(variable) == value:
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found


@contextlib.contextmanager
def leaves_nothing() -> Iterator[None]:
    """Asserts that the block leaves no child process and no shared-memory
    segment behind."""
    shm_before = shm_segments()
    pids_before = child_pids()
    yield
    gc.collect()
    assert wait_until(lambda: not new_children(pids_before)), new_children(pids_before)
    assert wait_until(lambda: shm_segments() <= shm_before), f"segments left: {shm_segments() - shm_before}"
