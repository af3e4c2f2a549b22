"""A one-line progress bar for terminals.

Leaf module. The scheduler calls :meth:`ProgressBar.update` after each batch
and on a one-second tick; the bar redraws at most ten times a second, so many
short tasks do not pay for drawing.
"""

from __future__ import annotations

import shutil
import time
from typing import TextIO

_MIN_REDRAW_S = 0.1


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class ProgressBar:
    """Draws ``[#####.....] done/total  running  failed  elapsed  ETA`` in place."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._started = time.monotonic()
        self._drawn_at = 0.0
        self._width = 0

    def update(self, done: int, total: int, running: int, failed: int, force: bool = False,
               restored: tuple[int, int] | None = None) -> None:
        """Redraw; ``restored`` is (tasks, bytes) restored from the shared cache."""
        now = time.monotonic()
        if not force and now - self._drawn_at < _MIN_REDRAW_S:
            return
        self._drawn_at = now
        elapsed = now - self._started
        eta = "?" if not done else _clock(elapsed / done * max(total - done, 0))
        text = (
            f" {done}/{total} tasks  {running} running"
            + (f"  {failed} failed" if failed else "")
            + (f"  {restored[0]} restored ({restored[1] / 2**20:.0f} MiB)" if restored else "")
            + f"  {_clock(elapsed)} elapsed  ETA {eta}"
        )
        columns = shutil.get_terminal_size((80, 20)).columns
        bar_width = max(10, min(40, columns - len(text) - 3))
        filled = bar_width * done // total if total else bar_width
        line = f"[{'#' * filled}{'.' * (bar_width - filled)}]{text}"[: columns - 1]
        self._stream.write("\r" + line + " " * max(0, self._width - len(line)))
        self._stream.flush()
        self._width = len(line)

    def close(self, done: int, total: int, running: int, failed: int,
              restored: tuple[int, int] | None = None) -> None:
        self.update(done, total, running, failed, force=True, restored=restored)
        self._stream.write("\n")
        self._stream.flush()
