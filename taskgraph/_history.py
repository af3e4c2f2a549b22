"""How long tasks take: estimates from the ledger's record of earlier runs and
from what this run has seen so far.

Leaf module: standard library only (the scheduler hands it a function that
reads the ledger, called the first time an estimate is needed, so a rerun
that runs nothing never reads the durations).

Estimates serve two scheduling choices (see ``_scheduler``): which ready task
starts first among equals (the longest remaining critical path), and whether a
job is short enough to wait behind another in a worker.
"""

from __future__ import annotations

from collections.abc import Callable

#: A job expected to take less than this (seconds) may wait behind another short one.
SHORT_S = 0.005

#: (function name, source hash): the key for a function's mean duration.
FunctionKey = tuple[str, str]
#: What the ledger holds: each record's last duration, and per function (count, total seconds).
Durations = tuple[dict[str, float], dict[FunctionKey, tuple[int, float]]]


class History:
    """Duration estimates: a task's own last duration, else its function's
    mean (earlier runs and this one), else None (unknown)."""

    def __init__(self, load: Callable[[], Durations]) -> None:
        self._load: Callable[[], Durations] | None = load
        self._by_record: dict[str, float] = {}
        self._by_function: dict[FunctionKey, tuple[int, float]] = {}

    def _ensure(self) -> None:
        if self._load is not None:
            load, self._load = self._load, None
            by_record, by_function = load()
            by_record.update(self._by_record)  # this run's observations are newer
            self._by_record = by_record
            # This run's observations may already be there: add them up.
            for key, (count, total) in by_function.items():
                seen = self._by_function.get(key, (0, 0.0))
                self._by_function[key] = (seen[0] + count, seen[1] + total)

    @property
    def loaded(self) -> bool:
        return self._load is None

    def estimate(self, record_key: str, function: FunctionKey) -> float | None:
        """Seconds the task is expected to take, or None when nothing is known."""
        self._ensure()
        own = self._by_record.get(record_key)
        if own is not None:
            return own
        count, total = self._by_function.get(function, (0, 0.0))
        return total / count if count else None

    def default(self) -> float:
        """The estimate for a task with no estimate: the mean of all known
        functions' means (0 when nothing is known: then order is natcap's)."""
        self._ensure()
        means = [total / count for count, total in self._by_function.values() if count]
        return sum(means) / len(means) if means else 0.0

    def observe(self, record_key: str, function: FunctionKey, seconds: float) -> None:
        """A task of this run finished after ``seconds``."""
        self._by_record[record_key] = seconds
        count, total = self._by_function.get(function, (0, 0.0))
        self._by_function[function] = (count + 1, total + seconds)


__all__ = ["SHORT_S", "Durations", "FunctionKey", "History"]
