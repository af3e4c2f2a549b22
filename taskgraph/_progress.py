"""Progress of a run: counts, an estimate of the time left, and how they are shown.

Imports only ``_terminal`` (a leaf). The scheduler, which owns every task's
state, tells :class:`Progress` what happens (a task added, started,
finished; no more tasks to come) and calls :meth:`Progress.tick` after each
batch and on a one-second tick. A display shows it: :class:`TerminalBar`
(a status line kept below the log output, redrawn at most ten times a
second) when stderr is a terminal, :class:`LogLines` (a plain line through
the ``taskgraph`` logger every 10 % or every minute) when it is not.

The estimate: each task added brings the scheduler's estimate of its
duration, from the ledger (its last run's duration, else its function's
mean). The work left is the sum of those over the tasks not finished (less
what a running task has already spent), plus, for each task with no
estimate, the mean duration of the tasks that ran in this run so far (before
any has: the mean of the estimates).
Spread over the workers: divided by the number of workers, or by the number
of tasks left when fewer. A task that turns out to be up to date is skipped
in no time, so early in a rerun the estimate may be too high; it drops as
the skips are decided.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Protocol, TextIO

from taskgraph._frozen import frozen
from taskgraph._terminal import StatusLine, cells, clip, printable

# The bar is redrawn at most this often; log output is printed at once.
_MIN_REDRAW_S = 0.1
# A progress line in a log at least this often, and at each tenth done.
LOG_EVERY_S = 60.0
_BAR_MAX, _BAR_MIN = 30, 10
# How many failed tasks the final line names.
_NAMED_FAILURES = 3

PROGRESS_LOGGER = logging.getLogger("taskgraph")
#: natcap's logger name for the status log.
STATUS_LOGGER = logging.getLogger("taskgraph.Task")


def log_status(known: int, finished: int, ready: int, blocked: int, running: list[tuple[str, float]]) -> None:
    """natcap taskgraph's status log (``reporting_interval``): counts, and how
    long each running task (name, seconds) has been executing."""
    percent = 100.0 * finished / known if known else 100.0
    lines = "\n".join(f"\t{name}: executing for {seconds:.2f}s" for name, seconds in running)
    STATUS_LOGGER.info(
        "taskgraph execution status: tasks added: %d\n"
        "\ttasks complete: %d (%.1f%%)\n"
        "\ttasks waiting for a free worker: %d\n"
        "\ttasks waiting for dependencies: %d\n"
        "\ttasks executing (%d)%s%s",
        known, finished, percent, ready, blocked, len(running), ":\n" if lines else "", lines,
    )


def clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


@frozen
class Snapshot:
    """Where a run stands, as a display shows it."""

    total: int
    adding: bool  # more tasks may still be added: the total is not known yet
    ran: int
    skipped: int
    failed: int
    cancelled: int
    running: int
    elapsed: float
    eta: float | None  # seconds; None when unknown
    failed_names: tuple[str, ...]
    ending: str | None = None  # set on the final snapshot: None (finished) or what stopped the run
    restored: int = 0  # restored from the shared cache instead of run
    restored_bytes: int = 0

    @property
    def done(self) -> int:
        """Tasks that finished well (ran, were restored or were up to date)."""
        return self.ran + self.restored + self.skipped

    @property
    def waiting(self) -> int:
        return max(0, self.total - self.done - self.failed - self.cancelled - self.running)


class Display(Protocol):
    def update(self, snapshot: Snapshot) -> None: ...

    def finish(self, snapshot: Snapshot) -> None: ...


def _failures(snapshot: Snapshot, names: bool) -> str:
    text = f"{snapshot.failed} failed"
    if names and snapshot.failed_names:
        listed = ", ".join(repr(clip(printable(name), 40)) for name in snapshot.failed_names)
        more = snapshot.failed - len(snapshot.failed_names)
        text += f" ({listed}{f' and {more} more' if more > 0 else ''})"
    return text


# A piece of a progress text: its group ('head', 'count', 'time' or 'end'),
# its text, and the order in which it goes when the terminal is too narrow
# (highest first; 0: never). The bar and the failed tasks' names go like
# pieces.
_Piece = tuple[str, str, int]
_ZERO, _ELAPSED, _WAITING, _BAR, _HEAD, _NAMES, _RUNNING, _SKIPPED, _ETA = 10, 9, 8, 7, 6, 5, 4, 3, 2


def _head(snapshot: Snapshot, final: bool, log: bool) -> _Piece:
    if snapshot.adding and not final:
        return ("head", f"adding tasks, {snapshot.total} so far:", 0)
    if log and not final:
        percent = 100 * snapshot.done // snapshot.total if snapshot.total else 100
        return ("head", f"{snapshot.done} of {snapshot.total} tasks done ({percent}%):", 0)
    # In the final line the counts add up to the total: it may go.
    return ("head", f"{snapshot.done}/{snapshot.total} done:", _HEAD if final else 0)


def _finished_counts(snapshot: Snapshot, final: bool, names: bool) -> list[_Piece]:
    """The counts of finished tasks: ran, restored, skipped, failed, cancelled."""
    pieces: list[_Piece] = [("count", f"{snapshot.ran} ran", 0)]
    if snapshot.restored:
        pieces.append(("count", f"{snapshot.restored} restored ({snapshot.restored_bytes / 2**20:.0f} MiB)", 0))
    if final or snapshot.skipped:
        pieces.append(("count", f"{snapshot.skipped} skipped", _SKIPPED if snapshot.skipped else _ZERO))
    stopped = final and bool(snapshot.cancelled or snapshot.failed or snapshot.ending)
    if snapshot.failed or stopped:
        pieces.append(("count", _failures(snapshot, names and final), 0 if snapshot.failed else _ZERO))
    if snapshot.cancelled or stopped:
        pieces.append(("count", f"{snapshot.cancelled} cancelled", 0 if snapshot.cancelled else _ZERO))
    return pieces


def _going(snapshot: Snapshot) -> list[_Piece]:
    """While the run goes: running and waiting tasks, the time so far and the ETA."""
    pieces: list[_Piece] = [("count", f"{snapshot.running} running", _RUNNING)]
    if not snapshot.adding:
        pieces.append(("count", f"{snapshot.waiting} waiting", _WAITING))
    pieces.append(("time", f"{clock(snapshot.elapsed)} elapsed", _ELAPSED))
    if not snapshot.adding:
        pieces.append(("time", f"ETA {'?' if snapshot.eta is None else clock(snapshot.eta)}", _ETA))
    return pieces


def _pieces(snapshot: Snapshot, final: bool, names: bool, log: bool) -> list[_Piece]:
    """The pieces of a progress text (see ``_join``)."""
    pieces = [_head(snapshot, final, log), *_finished_counts(snapshot, final, names)]
    if not final:
        return pieces + _going(snapshot)
    pieces.append(("time", f"in {clock(snapshot.elapsed)}", _ELAPSED))
    if snapshot.ending:
        pieces.append(("end", snapshot.ending, 0))
    return pieces


def _join(pieces: list[_Piece], final: bool) -> str:
    """``head counts; times`` while running, ``head counts in time - end`` at the end."""
    groups: dict[str, list[str]] = {"head": [], "count": [], "time": [], "end": []}
    for group, text, _ in pieces:
        groups[group].append(text)
    text = " ".join([*groups["head"], ", ".join(groups["count"])])
    if groups["time"]:
        text += (" " + " ".join(groups["time"])) if final else ("; " + ", ".join(groups["time"]))
    if groups["end"]:
        text += " - " + " ".join(groups["end"])
    return text


def describe(snapshot: Snapshot, final: bool = False) -> str:
    """A progress text without a bar (log lines)."""
    return _join(_pieces(snapshot, final, names=True, log=True), final)


def _bar(snapshot: Snapshot, size: int) -> str:
    """The bar, ``size`` cells inside its brackets: full only when every task finished well."""
    filled = size * snapshot.done // snapshot.total if snapshot.total else size
    if snapshot.done < snapshot.total:
        filled = min(filled, size - 1)
    return f"[{'#' * filled}{'.' * (size - filled)}]"


def bar_line(snapshot: Snapshot, columns: int, final: bool = False) -> str:
    """The status line for a terminal ``columns`` wide: a bar (once the total
    is known) and the text, pieces dropped as needed so that it fits in
    ``columns - 1`` (the last column would wrap on some terminals)."""
    width = max(columns - 1, 10)
    dropped: set[int] = set() if final or not snapshot.adding else {_BAR}
    while True:
        pieces = [piece for piece in _pieces(snapshot, final, _NAMES not in dropped, log=False)
                  if piece[2] not in dropped]
        text = _join(pieces, final)
        if _BAR not in dropped:
            room = width - cells(text) - 3  # "[", "] "
            if room >= _BAR_MIN:
                return f"{_bar(snapshot, min(_BAR_MAX, room))} {text}"
        elif cells(text) <= width:
            return text
        left = {rank for _, _, rank in pieces if rank} | ({_BAR} - dropped)
        if final and snapshot.failed_names and _NAMES not in dropped:
            left.add(_NAMES)
        if not left:
            return clip(text, width)
        dropped.add(max(left))


class TerminalBar:
    """The progress bar on a terminal, below the log output (see ``_terminal``)."""

    def __init__(self, stream: TextIO) -> None:
        self._line = StatusLine(stream)
        self._drawn_at = 0.0

    def update(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        if now - self._drawn_at < _MIN_REDRAW_S:
            return
        self._drawn_at = now
        self._line.show(bar_line(snapshot, self._line.columns()))

    def finish(self, snapshot: Snapshot) -> None:
        self._line.close(bar_line(snapshot, self._line.columns(), final=True))


class LogLines:
    """Progress as plain log lines, for stderr that is not a terminal (SLURM,
    cron): one line at each further tenth of the tasks done, or after
    ``every`` seconds without one, and a final line.

    The lines are INFO records of the ``taskgraph`` logger, handed to the
    handlers of its hierarchy (the root logger's, usually) whatever the
    loggers' levels: progress was asked for, and a script that logs at
    WARNING would otherwise never show it. With no handler configured, they
    are written to stderr.
    """

    def __init__(self, every: float = LOG_EVERY_S) -> None:
        self._every = every
        self._last_at = time.monotonic()
        self._last_tenth = 0
        self._fallback: logging.Handler | None = None

    def update(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        tenth = 10 * (snapshot.done + snapshot.failed + snapshot.cancelled) // snapshot.total if (
            snapshot.total and not snapshot.adding) else self._last_tenth
        if tenth <= self._last_tenth and now - self._last_at < self._every:
            return
        self._last_at, self._last_tenth = now, max(tenth, self._last_tenth)
        self._emit(describe(snapshot))

    def finish(self, snapshot: Snapshot) -> None:
        self._emit(describe(snapshot, final=True))

    def _emit(self, message: str) -> None:
        logger = PROGRESS_LOGGER
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, "%s", (message,), None)
        if logger.hasHandlers():
            if logger.filter(record):
                logger.callHandlers(record)
            return
        if self._fallback is None:
            self._fallback = logging.StreamHandler()  # sys.stderr as it is now
            self._fallback.setFormatter(logging.Formatter("%(asctime)s taskgraph: %(message)s"))
        self._fallback.handle(record)


def wanted(setting: bool | None, stream: TextIO | None) -> bool:
    """Whether to show progress: ``setting`` if given, else the
    ``TASKGRAPH_PROGRESS`` environment variable, else whether ``stream`` is a
    terminal.

    Raises:
        ValueError: if ``TASKGRAPH_PROGRESS`` is neither on nor off.
    """
    if setting is not None:
        return bool(setting)
    value = os.environ.get("TASKGRAPH_PROGRESS", "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    if value:
        raise ValueError(
            f"TASKGRAPH_PROGRESS={value!r} is neither on ('1', 'true', 'yes') nor off ('0', 'false', 'no'); "
            "set one of those or unset it"
        )
    return stream is not None and _isatty(stream)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def make_display(stream: TextIO | None) -> Display:
    """A bar if ``stream`` is a terminal, log lines otherwise."""
    if stream is not None and _isatty(stream):
        return TerminalBar(stream)
    return LogLines()


class Progress:
    """Counts and time estimate of one graph's run, fed by the scheduler
    (and only by its thread)."""

    def __init__(self, display: Display, workers: int) -> None:
        self._display = display
        self._workers = max(1, workers)
        self._started = time.monotonic()
        self._adding = True
        self._total = 0
        self._ran = self._skipped = self._failed = self._cancelled = 0
        self._restored = self._restored_bytes = 0
        self._failed_names: list[str] = []
        # Unfinished tasks: their recorded duration, or None for a new task.
        self._expected: dict[int, float | None] = {}
        self._expected_sum = 0.0
        self._unknown = 0
        self._recorded_sum = 0.0
        self._recorded_count = 0
        self._ran_sum = 0.0
        self._ran_count = 0
        self._running: dict[int, float] = {}
        self._ended = False

    def added(self, task_id: int, recorded: float | None) -> None:
        """A task joined the graph; ``recorded`` is its expected duration, if known."""
        self._total += 1
        self._expected[task_id] = recorded
        if recorded is None:
            self._unknown += 1
        else:
            self._expected_sum += recorded
            self._recorded_sum += recorded
            self._recorded_count += 1

    def all_added(self) -> None:
        """No more tasks are coming for now (``close()`` or ``join()``)."""
        self._adding = False

    def started(self, task_id: int) -> None:
        self._running[task_id] = time.monotonic()

    def finished(self, task_id: int, state: str, name: str, duration: float, restored_bytes: int = 0) -> None:
        """A task settled: ``state`` is ``'ran'``, ``'restored'`` (from the
        shared cache, ``restored_bytes`` of it), ``'skipped'``, ``'failed'``
        or ``'cancelled'``."""
        self._running.pop(task_id, None)
        if task_id in self._expected:
            recorded = self._expected.pop(task_id)
            if recorded is None:
                self._unknown -= 1
            else:
                self._expected_sum -= recorded
        if state == "ran":
            self._ran += 1
            if duration > 0:
                self._ran_sum += duration
                self._ran_count += 1
        elif state == "restored":
            self._restored += 1
            self._restored_bytes += restored_bytes
        elif state == "skipped":
            self._skipped += 1
        elif state == "failed":
            self._failed += 1
            if len(self._failed_names) < _NAMED_FAILURES:
                self._failed_names.append(name)
        else:
            self._cancelled += 1

    def eta(self, now: float) -> float | None:
        """Seconds until every task added so far is finished; None if unknown."""
        left = len(self._expected)
        if not left:
            return 0.0
        if self._ran_count:
            mean: float | None = self._ran_sum / self._ran_count
        elif self._recorded_count:
            mean = self._recorded_sum / self._recorded_count
        else:
            mean = None
        if self._unknown and mean is None:
            return None
        work = self._expected_sum + self._unknown * (mean or 0.0)
        for task_id, started in self._running.items():
            recorded = self._expected.get(task_id)
            expected = recorded if recorded is not None else (mean or 0.0)
            work -= min(now - started, expected)  # what it has spent already
        return max(0.0, work) / min(self._workers, left)

    def snapshot(self, ending: str | None = None) -> Snapshot:
        now = time.monotonic()
        return Snapshot(
            total=self._total, adding=self._adding, ran=self._ran, skipped=self._skipped,
            failed=self._failed, cancelled=self._cancelled, running=len(self._running),
            elapsed=now - self._started, eta=self.eta(now), failed_names=tuple(self._failed_names),
            ending=ending, restored=self._restored, restored_bytes=self._restored_bytes,
        )

    def tick(self) -> None:
        if not self._ended:
            self._display.update(self.snapshot())

    def end(self, ending: str | None) -> None:
        """The final report: ``ending`` says what stopped the run (None: it finished)."""
        if self._ended:
            return
        self._ended = True
        self._adding = False
        self._display.finish(self.snapshot(ending))


__all__ = ["Progress", "Snapshot", "bar_line", "clock", "describe", "make_display", "wanted"]
