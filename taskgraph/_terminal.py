"""A status line at the bottom of a terminal, with log output printed above it.

Leaf module (standard library only). While a :class:`StatusLine` is open,
every logging handler that writes to the same terminal has its stream
swapped for a proxy: the root logger's stream handlers, any other logger's
(``taskgraph``'s own), and Python's last-resort handler, which prints
warnings when logging is not configured. Records relayed from worker
processes go through the parent's handlers, so they are covered too. The
proxy clears the status line, writes the text, and draws the line again
below it, all under one lock, so no screen line ever holds both.

Handlers are found by walking the logging tree when the line is made (in
the thread that makes the graph, before anything is drawn), and again
before each redraw, so that a handler added later (a ``logging.basicConfig``
called after the graph was made) is covered from the next redraw on. A
handler counts as writing
to the terminal when its stream is a terminal device that is the very one
the line is drawn on (same device and inode): a handler on stdout is
covered when stdout and stderr are the same terminal, a file or a pipe never
is. When the line closes, each stream is given back.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, TextIO


def _device(stream: Any) -> tuple[int, int] | None:
    """(device, inode) of the terminal ``stream`` writes to, or None if it
    is not a terminal (or has no descriptor at all)."""
    try:
        fd = stream.fileno()
        if not os.isatty(fd):
            return None
        info = os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def cells(text: str) -> int:
    """Terminal columns ``text`` takes (East Asian wide characters take two)."""
    if text.isascii():
        return len(text)
    import unicodedata  # (most text is ASCII: not loaded at every start)

    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def clip(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` columns, with ``...`` when cut."""
    if cells(text) <= width:
        return text
    if width <= 3:
        return "." * max(width, 0)
    out, used = [], 0
    for char in text:
        used += cells(char)
        if used > width - 3:
            break
        out.append(char)
    return "".join(out) + "..."


def printable(text: str) -> str:
    """``text`` with control characters (a newline in a task name) made
    harmless: the status line must stay one line."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else "?" for char in text)


class _Above:
    """The stream a redirected handler writes to: text goes above the line."""

    def __init__(self, line: StatusLine, stream: Any) -> None:
        self._line = line
        self.original = stream

    def write(self, text: str) -> int:
        self._line.write_above(text, self.original)
        return len(text)

    def flush(self) -> None:
        self.original.flush()

    def isatty(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, errors, ...
        return getattr(self.original, name)


class StatusLine:
    """One line kept at the bottom of the terminal ``stream`` belongs to.

    :meth:`show` replaces the line; :meth:`close` leaves the final one on
    screen and gives every redirected handler its stream back. Thread-safe:
    the scheduler draws, any thread may log.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._device = _device(stream)
        self._lock = threading.RLock()
        self._text: str | None = None  # the line, once shown
        self._closed = False
        self._drawn = 0  # columns of it on screen now; 0 when cleared
        self._mid_line = False  # text above ended without a newline: do not draw yet
        self._redirected: dict[logging.StreamHandler[Any], _Above] = {}
        self._last_resort: tuple[logging.Handler | None, logging.Handler] | None = None
        self._redirect_handlers()

    def columns(self) -> int:
        """The terminal's width now (it may be resized while we run)."""
        try:
            return os.get_terminal_size(self._stream.fileno()).columns or 80
        except (AttributeError, OSError, ValueError):
            import shutil  # (it brings bz2 and lzma: not loaded at every start)

            return shutil.get_terminal_size((80, 24)).columns

    # -- the line ---------------------------------------------------------------------

    def show(self, text: str) -> None:
        """Draw ``text`` (one line, at most ``columns() - 1`` wide) as the status line."""
        if self._closed:
            return
        self._redirect_handlers()  # not under the lock: see _redirect_handlers
        with self._lock:
            self._text = text
            if not self._mid_line:
                self._draw()
                self._stream.flush()

    def close(self, text: str) -> None:
        """Leave ``text`` as the final line, then stop redirecting."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._text = text
            if self._mid_line:
                self._stream.write("\n")
                self._mid_line = False
            self._draw()
            self._stream.write("\n")
            self._stream.flush()
            self._text = None
            self._drawn = 0
        self._restore_handlers()

    def write_above(self, text: str, stream: Any) -> None:
        """Write log output ``text`` (meant for ``stream``) above the line."""
        with self._lock:
            if not self._mid_line:
                self._clear()
            if stream is not self._stream:
                self._stream.flush()  # the clearing reaches the terminal first
            stream.write(text)
            self._mid_line = bool(text) and not text.endswith("\n")
            if self._text is not None and not self._mid_line:
                if stream is not self._stream:
                    stream.flush()
                self._draw()
            self._stream.flush()
            if stream is not self._stream:
                stream.flush()

    def _clear(self) -> None:
        if self._drawn:
            self._stream.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def _draw(self) -> None:
        if self._text is None:
            return
        width = cells(self._text)
        # Spaces over what is left of a longer line drawn before (no escape
        # codes: this works on any terminal, Windows' console included).
        self._stream.write("\r" + self._text + " " * max(0, self._drawn - width))
        self._drawn = width

    # -- the handlers -----------------------------------------------------------------

    def _handlers(self) -> list[logging.Handler]:
        loggers: list[Any] = [logging.getLogger(), *list(logging.Logger.manager.loggerDict.values())]
        found: list[logging.Handler] = []
        for logger in loggers:
            found.extend(getattr(logger, "handlers", ()))  # placeholders have none
        return found

    def _redirect_handlers(self) -> None:
        """Swap the stream of every handler that writes to our terminal.

        Runs without our lock: ``setStream`` takes the handler's lock, and a
        handler emitting at that moment holds it while it waits for ours.
        """
        if self._device is None or self._closed:
            return
        for handler in self._handlers():
            if not isinstance(handler, logging.StreamHandler) or handler in self._redirected:
                continue
            stream = handler.stream
            if isinstance(stream, _Above) or _device(stream) != self._device:
                continue
            proxy = _Above(self, stream)
            handler.setStream(proxy)
            self._redirected[handler] = proxy
        # The last-resort handler prints WARNING and above when logging is not
        # configured; it looks up sys.stderr at each record, so it cannot be
        # given another stream: stand a handler of ours in for it.
        resort = logging.lastResort
        if self._last_resort is None and isinstance(resort, logging.StreamHandler) and not isinstance(
            resort.stream, _Above
        ) and _device(resort.stream) == self._device:
            stand_in = logging.StreamHandler(_Above(self, resort.stream))
            stand_in.setLevel(resort.level)
            self._last_resort = (resort, stand_in)
            logging.lastResort = stand_in

    def _restore_handlers(self) -> None:
        for handler, proxy in self._redirected.items():
            if handler.stream is proxy:  # unless someone gave it another stream since
                handler.setStream(proxy.original)
        self._redirected.clear()
        if self._last_resort is not None:
            original, stand_in = self._last_resort
            if logging.lastResort is stand_in:
                logging.lastResort = original
            self._last_resort = None


__all__ = ["StatusLine", "cells", "clip", "printable"]
