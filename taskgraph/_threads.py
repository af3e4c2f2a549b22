"""The engine's own threads, started in one place so that the fork server is
never forked beside one of them.

Leaf module: standard library only.

A process forked while another thread holds a lock (the ledger's, logging's,
the allocator's) inherits that lock held, by a thread that does not exist in
the child. The fork server (:mod:`taskgraph._forkserver`) is forked from the
caller when a process pool is made; it asks :func:`running` first and is
forked only when no engine thread is alive.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

_THREADS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
_LOCK = threading.Lock()


_SHORT_LIVED: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
# Set while await_short_lived waits: a short-lived thread's pause() ends at once.
_HURRY = threading.Event()


def start(target: Callable[..., Any], name: str, *args: Any, short_lived: bool = False) -> threading.Thread:
    """Start a daemon thread of the engine, named ``name``; ``short_lived``:
    it ends by itself soon, waits only through :func:`pause`, and finishes
    its work at once when :func:`await_short_lived` asks."""
    thread = threading.Thread(target=target, name=name, args=args, daemon=True)
    with _LOCK:
        _THREADS.add(thread)
        if short_lived:
            _SHORT_LIVED.add(thread)
    thread.start()
    return thread


def pause(seconds: float) -> bool:
    """A short-lived thread's wait: ``seconds``, or less; True when it was
    asked to finish its work now (:func:`await_short_lived`)."""
    return _HURRY.wait(seconds)


def await_short_lived(timeout: float) -> None:
    """Ask the short-lived threads (an inline graph's committer, which may
    otherwise wait up to its group commit's 250 ms) to finish now, and wait
    for them, at most ``timeout`` seconds, so that a process pool made just
    after can still fork its server from this process."""
    with _LOCK:
        threads = list(_SHORT_LIVED)
    _HURRY.set()
    try:
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
    finally:
        _HURRY.clear()


class Finished:
    """What ``Task.join()`` waits on: one condition for all of a graph's
    tasks, which tells its waiters only when there are any.

    ``notify_all`` costs a lock and a check of its waiters (a microsecond),
    and an inline graph finishes every task with no one waiting. A waiter
    counts itself, under the lock, before it tests its predicate; the
    notifier changes what the predicate reads before it reads the count. So
    either the waiter sees the change, or the notifier sees the waiter (the
    GIL orders the two; a build without it would need the lock here).
    """

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._waiting = 0

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        with self._condition:
            self._waiting += 1
            try:
                return self._condition.wait_for(predicate, timeout)
            finally:
                self._waiting -= 1

    def notify_all(self) -> None:
        """Wake every waiter; call after changing what their predicates read."""
        if self._waiting:
            with self._condition:
                self._condition.notify_all()


def running() -> list[threading.Thread]:
    """The engine's threads that are alive now, in this process."""
    with _LOCK:
        return [thread for thread in _THREADS if thread.is_alive()]


__all__ = ["Finished", "await_short_lived", "pause", "running", "start"]
