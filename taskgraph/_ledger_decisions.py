"""Which decisions the ledger writes, and which it leaves for the reader to tell.

The writer's side of the ``decisions`` table (:class:`Decisions`, owned by
``Ledger``). Two kinds of decision are not written, because what else the
ledger holds says them:

- **A new task's decision committed with its record.** A task that never ran
  is decided "run" for the one reason :data:`NEW_TASK_REASONS`. That decision
  waits here instead of in the write buffer; when the task's record goes into
  the buffer it is dropped, since the record (its run, its start) says it:
  ``LedgerReader.decision()`` gives a record with no decision row, or with
  one from a run before the record's made before its task started, that
  decision. One still waiting at a commit (the task is running, or was
  cancelled) is written with it.
- **A plain skip after an earlier run's decision** (up to date, no reasons):
  the reader tells it from what the runs considered (see
  ``LedgerReader.decision()``). It is written all the same for a renamed task
  (the pair of record key and name is new), for a record this run decided
  before (a skip of the same run is not later than its row), and once another
  connection has written the ledger (runs that overlap; a new task's decision
  still waits for its record, and the reader does not take a decision made
  after the record's task started for an earlier one).

With workers (``n_workers >= 0``), a task still running at a group commit
(every 20 ms) has its new task decision written then: the saving is the
inline graph's, and that of short tasks recorded within one window.

Leaf module: the standard library only.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

#: The reasons of the decision about a task that never ran, as stored (see
#: ``_decide._why_new``: a test holds the two the same).
NEW_TASK_REASONS: list[dict[str, Any]] = [
    {"code": "new_task", "detail": "no record of this task (it never ran)", "path": None, "old": None, "new": None}
]
_REASONS = json.JSONEncoder(default=str)  # json.dumps(reasons, default=str), one encoder for all
#: :data:`NEW_TASK_REASONS` as the decision row would hold them.
NEW_TASK_TEXT = _REASONS.encode(NEW_TASK_REASONS)

#: The records of earlier runs and their names as a decision names them: the
#: decision's name, or, for a record whose decision was left to it, its own.
_DECIDED = ("SELECT record_key, name FROM decisions WHERE coalesce(run_id, -1) < ?1"
            " UNION ALL SELECT t.record_key, t.name FROM tasks t WHERE coalesce(t.run_id, -1) < ?1"
            " AND NOT EXISTS (SELECT 1 FROM decisions d WHERE d.record_key = t.record_key)")


class Decisions:
    """The decision rows of one ledger connection's run, before they are buffered."""

    def __init__(self, conn: sqlite3.Connection, written_elsewhere: Callable[[], bool]) -> None:
        self._conn = conn
        self._written_elsewhere = written_elsewhere
        #: record key -> the new task's decision row, until its record or a commit.
        self.waiting: dict[str, tuple[Any, ...]] = {}
        # Hashes of (record key, stored name) of the records decided by an
        # earlier run, read at the first plain skip. Hashes, not the
        # strings: 100,000 records cost 4 MB, not 25. (Two pairs sharing a
        # 64-bit hash would cost one decision row not being rewritten, an
        # explanation, never a record.)
        self._decided: set[int] | None = None
        # Once another connection has written the ledger, every decision is
        # written (its decisions may differ from the set read before).
        self._elsewhere_decides = False
        self._checked_elsewhere = -1.0  # monotonic time of the last look

    def add(self, buffer: list[tuple[Any, ...]], run_id: int | None, record_key: str, stored_name: str | None,
            run: bool, reasons: list[dict[str, Any]]) -> None:
        """A decision of this run: into ``buffer`` (the rows of the next
        commit), left to its record, or, a plain skip, not written."""
        # A later decision of the record says more; a skip after this run's
        # own decision is not later than it, so it is written.
        superseded = self.waiting.pop(record_key, None) is not None
        if self._skip_unwritten(run_id, record_key, stored_name, not run and not reasons) and not superseded:
            return
        if run and reasons == NEW_TASK_REASONS:  # (most often dropped by recorded(): its text is made once)
            self.waiting[record_key] = (record_key, run_id, time.time(), stored_name, "run", NEW_TASK_TEXT)
            return
        buffer.append((record_key, run_id, time.time(), stored_name, "run" if run else "skip",
                       _REASONS.encode(reasons) if reasons else "[]"))

    def recorded(self, record_key: str) -> None:
        """The record's row is going into the buffer: its new task's decision goes without saying."""
        self.waiting.pop(record_key, None)

    def flush_into(self, buffer: list[tuple[Any, ...]]) -> None:
        """At a commit: the new tasks' decisions whose records are not in it are written."""
        if self.waiting:
            buffer.extend(self.waiting.values())
            self.waiting.clear()

    def _skip_unwritten(self, run_id: int | None, record_key: str, stored_name: str | None, plain: bool) -> bool:
        """Whether a plain skip (``plain``) of this record need not be written:
        an earlier run decided it under this name. One by this run is not
        earlier: it is not read, and one written since the read takes its
        pair out."""
        if self._elsewhere_decides or not (plain or self._decided is not None):
            return False
        if self._decided is None:
            self._decided = {hash(row) for row in self._conn.execute(_DECIDED, (run_id or 0,))}
        pair = hash((record_key, stored_name))
        if plain and pair in self._decided:
            return not self._decided_elsewhere()
        if plain:
            self._decided.add(pair)
        else:
            self._decided.discard(pair)
        return False

    def _decided_elsewhere(self) -> bool:
        """Whether another connection may have written decisions since the
        decided records were read: looked at most once a millisecond (a
        PRAGMA costs more than leaving a row unwritten saves), and true for
        good once it is. So a decision another process writes is never left
        standing for a skip made more than a millisecond after its commit."""
        now = time.monotonic()
        if now - self._checked_elsewhere >= 0.001:
            self._checked_elsewhere = now
            if self._written_elsewhere():
                self._elsewhere_decides = True
                self._decided = None
        return self._elsewhere_decides


__all__ = ["NEW_TASK_REASONS", "NEW_TASK_TEXT", "Decisions"]
