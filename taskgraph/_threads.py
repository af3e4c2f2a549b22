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


def start(target: Callable[..., Any], name: str, *args: Any) -> threading.Thread:
    """Start a daemon thread of the engine, named ``name``."""
    thread = threading.Thread(target=target, name=name, args=args, daemon=True)
    with _LOCK:
        _THREADS.add(thread)
    thread.start()
    return thread


def running() -> list[threading.Thread]:
    """The engine's threads that are alive now, in this process."""
    with _LOCK:
        return [thread for thread in _THREADS if thread.is_alive()]


__all__ = ["running", "start"]
