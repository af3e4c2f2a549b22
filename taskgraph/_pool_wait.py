"""What the pool's manager thread waits on, kept for the pool's life.

Standard library only (a leaf).

``multiprocessing.connection.wait`` builds a new selector on every call and
registers every handle again: with a job a millisecond, that was a third of
the manager's time. :class:`Waiter` keeps one selector (epoll on Linux, kqueue
on BSD and macOS): a handle is registered once, when its worker starts, and
unregistered before it is closed (a closed descriptor left in an epoll set
would stay there, and its number could not be registered again). Where pipes
cannot be selected (Windows), it keeps the same set and calls
``multiprocessing.connection.wait`` on it.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import selectors
from typing import Any


class Waiter:
    """A set of handles (objects with ``fileno()``, or descriptors) to wait on."""

    def __init__(self) -> None:
        self._selector: selectors.BaseSelector | None = (
            selectors.DefaultSelector() if os.name == "posix" else None
        )
        self._handles: dict[int, Any] = {}  # id(handle) -> handle, where there is no selector

    def add(self, handle: Any) -> None:
        """Wait on ``handle`` from now on (until :meth:`remove`)."""
        if self._selector is not None:
            self._selector.register(handle, selectors.EVENT_READ, handle)
        else:
            self._handles[id(handle)] = handle

    def remove(self, handle: Any) -> None:
        """Stop waiting on ``handle``; call it before the handle is closed. A
        handle that is not there is ignored."""
        if self._selector is not None:
            try:
                self._selector.unregister(handle)
            except (KeyError, ValueError, OSError):
                # Closed already (its fileno() fails): found by identity instead.
                for key in list(self._selector.get_map().values()):
                    if key.data is handle:
                        self._selector.unregister(key.fd)
        else:
            self._handles.pop(id(handle), None)

    def wait(self, timeout: float | None) -> list[Any]:
        """The handles that are ready (readable, closed, or exited) within
        ``timeout`` seconds (None: no limit); empty after the time-out."""
        if self._selector is not None:
            return [key.data for key, _ in self._selector.select(timeout)]
        return multiprocessing.connection.wait(list(self._handles.values()), timeout)

    def close(self) -> None:
        if self._selector is not None:
            self._selector.close()
        self._handles.clear()


__all__ = ["Waiter"]
