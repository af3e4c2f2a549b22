"""What each run considered: a row per record, but plain skips packed per commit.

Owns the stored form of a run's *considered* set (``considered`` rows,
``considered_skips`` packs of record ids), the records' ids, the writer's side of it
(:class:`Considered`: what this run was given, what became of each, what is
not committed yet), the end of a run (:func:`end_of_run`: the skips that leave
settled into ``decisions``, older runs dropped) and the read side's expansion
into one temporary table for SQL (:func:`expand`). Leaf module: the standard
library only.

Each record has a stable integer id (``tasks.record_id``, kept when its row
is replaced, given in the commit that first records it from a counter in
``meta`` that only grows: an id is never given again, not even after
``forget``). A run writes one
``considered`` row for each record it was given in any state but a plain
``'skipped'`` (``'pending'``, ``'running'``, ``'ran'``, ``'restored'``,
``'failed'``, ``'cancelled'``, and a skip that follows a committed row), and,
per group commit, one ``considered_skips`` row holding the ids of the
records it skipped (:func:`pack`). A run's state of a record is its row's if
it has one, else ``'skipped'`` if a pack of the run holds the record's id; an
id no record has any more (forgotten) counts for nothing. So a rerun that
skips every task writes one row per commit, not one per task, and when it
ends it drops the previous run's few packs rather than a row per task. Packs
and rows ride in the commits of the records beside them: what a killed run
considered is what it had committed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from taskgraph._frozen import frozen

CONSIDER = "INSERT OR REPLACE INTO considered VALUES (?,?,?)"
PACK = "INSERT OR REPLACE INTO considered_skips VALUES (?,?,?)"
#: The expanded table (:func:`expand`): (run_id, record_key, state), every
#: run's considered records.
EXPANDED = "temp.considered_all"
#: The records considered by the runs from a given one on (a subquery, after :func:`expand`).
CONSIDERED_SINCE = f"SELECT record_key FROM {EXPANDED} WHERE run_id >= ?"

#: Maps a record key to its id, None when it has none.
IdOf = Callable[[str], "int | None"]


#: Runs of consecutive record ids, each ``(first, end)`` (end excluded), in order.
Ranges = list[tuple[int, int]]


def ranges(ids: Iterable[int]) -> Ranges:
    """The ids as runs of consecutive ids, in order."""
    found: Ranges = []
    first = end = 0
    for value in sorted(ids):
        if value < end:
            continue  # (a repeat)
        if value != end or not end:
            if end:
                found.append((first, end))
            first = value
        end = value + 1
    if end:
        found.append((first, end))
    return found


def pack(ids: Iterable[int]) -> bytes:
    """A set of record ids as stored: its :func:`ranges`, each two unsigned
    LEB128 numbers (its first id less the end of the range before it, and
    its length). A rerun skips records in about the order they were first
    recorded in, so a pack is a few bytes."""
    out = bytearray()
    last = 0
    for first, end in ranges(ids):
        for number in (first - last, end - first):
            while number >= 0x80:
                out.append((number & 0x7F) | 0x80)
                number >>= 7
            out.append(number)
        last = end
    return bytes(out)


def unpack(blob: bytes) -> Ranges:
    """The ids of a pack, as :func:`ranges`."""
    numbers: list[int] = []
    number = shift = 0
    for byte in blob:
        number |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
        else:
            numbers.append(number)
            number = shift = 0
    found: Ranges = []
    end = 0
    for gap, length in zip(numbers[::2], numbers[1::2], strict=False):
        found.append((end + gap, end + gap + length))
        end += gap + length
    return found


def without(some: Ranges, others: Ranges) -> Ranges:
    """The ids of ``some`` that are not in ``others`` (both in order)."""
    left: Ranges = []
    at = 0
    for first, end in some:
        while at < len(others) and others[at][1] <= first:
            at += 1
        probe = at
        while first < end:
            if probe == len(others) or others[probe][0] >= end:
                left.append((first, end))
                break
            if others[probe][0] > first:
                left.append((first, others[probe][0]))
            first = max(first, others[probe][1])
            probe += 1
    return left


@frozen
class Taken:
    """What one commit writes of this run's considered set."""

    changed: dict[str, str]
    #: The records given a row by it.
    rowed: frozenset[str]
    packed: bool


class Considered:
    """What this run was given and what became of each record (the writer's
    side): every record's state, and the changes not yet committed."""

    def __init__(self) -> None:
        #: record key -> its state in this run.
        self.states: dict[str, str] = {}
        self._changed: dict[str, str] = {}
        # The records with a committed row in this run: a later skip of one
        # is a row too (a row says more than a pack).
        self._rowed: set[str] = set()
        self._parts = 0  # packs committed

    def note(self, record_key: str, state: str, recording: bool) -> None:
        """Note the record's state in this run (to be written when ``recording``)."""
        self.states[record_key] = state
        if recording:
            self._changed[record_key] = state

    def waiting(self) -> int:
        """How many changes are not committed yet."""
        return len(self._changed)

    def end(self) -> tuple[int, int, int, int]:
        """At the end of the run: what had not finished is cancelled. Returns
        the run's counts: tasks, ran (restored ones too), skipped, failed."""
        for key, state in self.states.items():
            if state in ("pending", "running"):
                self.states[key] = self._changed[key] = "cancelled"
        counts = dict.fromkeys(("ran", "skipped", "failed"), 0)
        for state in self.states.values():
            if state == "restored":
                counts["ran"] += 1  # (it ended as if it ran: its targets are there)
            elif state in counts:
                counts[state] += 1
        return len(self.states), counts["ran"], counts["skipped"], counts["failed"]

    def take(self, run_id: int | None, id_of: IdOf, rows: dict[str, list[tuple[Any, ...]]]) -> Taken:
        """Move the changes into the rows of a commit: the plain skips of
        records with an id into one pack, the others as rows (``run_id`` is
        None only in a dry run, which has no changes)."""
        changed, self._changed = self._changed, {}
        skipped: list[int] = []
        rowed: list[str] = []
        for key, state in changed.items():
            if state == "skipped" and key not in self._rowed:
                record_id = id_of(key)
                if record_id is not None:
                    skipped.append(record_id)
                    continue
            rows[CONSIDER].append((run_id, key, state))
            rowed.append(key)
        if skipped:
            rows[PACK].append((run_id, self._parts, pack(skipped)))
        return Taken(changed, frozenset(rowed), bool(skipped))

    def committed(self, taken: Taken) -> None:
        self._rowed |= taken.rowed
        self._parts += taken.packed

    def not_committed(self, taken: Taken, failed: Iterable[str]) -> None:
        """The commit failed: its changes wait for the next one, the records
        in ``failed`` (which did not go in) as failed."""
        for key in failed:
            self.states[key] = taken.changed[key] = "failed"
        for key, state in taken.changed.items():
            self._changed.setdefault(key, state)

    def skipped_ids(self, id_of: IdOf) -> Ranges:
        """The ids of the records this run skipped."""
        return ranges(record_id for key, state in self.states.items()
                      if state == "skipped" and (record_id := id_of(key)) is not None)


def _last_id(conn: sqlite3.Connection) -> int:
    """The last id given: the counter (or the highest id, if a tool lost it)."""
    return int(conn.execute(
        "SELECT max(coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'last_record_id'), 0),"
        " coalesce((SELECT max(record_id) FROM tasks), 0))").fetchone()[0])


def with_ids(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """In a commit, the rows of ``tasks`` to write, each ending in whether
    its record is new: a new one ends in the next id instead (those of one
    commit are consecutive, so their skips pack into one range), another
    in None (it keeps its own; see ``_ledger_commit.UPSERT_TASK``)."""
    last = _last_id(conn)
    given = []
    for row in rows:
        if row[-1]:
            last += 1
        given.append((*row[:-1], last if row[-1] else None))
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_record_id', ?)", (str(last),))
    return given


def give_ids(conn: sqlite3.Connection) -> None:
    """After a commit's records: the next ids to any that has none (a
    record written as known to the ledger, but forgotten meanwhile)."""
    new = conn.execute("SELECT rowid FROM tasks WHERE record_id IS NULL ORDER BY rowid").fetchall()
    if new:
        last = _last_id(conn)
        conn.executemany("UPDATE tasks SET record_id = ? WHERE rowid = ?",
                         [(last + number, rowid) for number, (rowid,) in enumerate(new, 1)])
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_record_id', ?)", (str(last + len(new)),))


def _marks(keep: Sequence[int]) -> str:
    return ",".join("?" * len(keep))


def end_of_run(conn: sqlite3.Connection, run_id: int, keep: Sequence[int], skipped: Ranges,
               states: dict[str, str]) -> None:
    """In the commit that ends run ``run_id``: drop what the runs before it
    considered (but for the runs in ``keep``, which may still be going on).

    First, a record whose last skip leaves with them (skipped by a run that
    goes, not by this one: ``skipped`` holds the ids of those it skipped,
    ``states`` what became of each record it was given) gets, as its
    decision (a row is made for a record that has none: its new task
    decision went with it), a plain skip by the last run that skipped it, at
    that run's start, unless its decision is that run's or was made after
    that run started, or the record ran in that run or later, or its task
    started after that run did (a plain skip is not written after an earlier
    run's decision: see ``_ledger_decisions``). In a steady rerun nothing
    leaves.
    """
    older = f"run_id < ? AND run_id NOT IN ({_marks(keep)})"
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS leaving (record_key TEXT PRIMARY KEY, run_id INTEGER)"
                 " WITHOUT ROWID")
    conn.execute("DELETE FROM temp.leaving")
    upsert = " ON CONFLICT (record_key) DO UPDATE SET run_id = max(run_id, excluded.run_id)"
    conn.executemany(
        "INSERT INTO temp.leaving VALUES (?, ?)" + upsert,
        [(key, run) for key, run in conn.execute(
            f"SELECT record_key, max(run_id) FROM considered WHERE {older} AND state = 'skipped'"
            " GROUP BY record_key", (run_id, *keep))
         if states.get(key) != "skipped"])
    packs = conn.execute(f"SELECT run_id, ids FROM considered_skips WHERE {older} ORDER BY run_id",
                         (run_id, *keep)).fetchall()
    conn.executemany(
        # (not a record whose row in that run says something else)
        "INSERT INTO temp.leaving SELECT t.record_key, ?1 FROM tasks t WHERE t.record_id >= ?2 AND t.record_id < ?3"
        " AND NOT EXISTS (SELECT 1 FROM considered c WHERE c.run_id = ?1 AND c.record_key = t.record_key)" + upsert,
        [(run, first, end) for run, blob in packs for first, end in without(unpack(blob), skipped)])
    conn.execute(
        "INSERT INTO decisions (record_key, run_id, decided_at, name, action, reasons)"
        " SELECT l.record_key, l.run_id, r.started, t.name, 'skip', '[]' FROM temp.leaving l"
        " JOIN runs r ON r.run_id = l.run_id JOIN tasks t ON t.record_key = l.record_key"
        " LEFT JOIN decisions d ON d.record_key = l.record_key"
        # Not a record that ran in that run or later (its row may have been
        # lost with a commit), nor one decided after that run started (by a
        # run that overlapped it); a record with no row was decided as it
        # was recorded (see _ledger_decisions).
        " WHERE coalesce(t.run_id, -1) < l.run_id AND coalesce(t.started, 0) <= r.started"
        " AND (d.record_key IS NULL OR (coalesce(d.run_id, -1) < l.run_id AND coalesce(d.decided_at, 0) <= r.started))"
        " ON CONFLICT (record_key) DO UPDATE SET run_id = excluded.run_id, decided_at = excluded.decided_at,"
        " action = 'skip', reasons = '[]'")
    conn.execute("DELETE FROM temp.leaving")
    for table in ("considered", "considered_skips"):
        conn.execute(f"DELETE FROM {table} WHERE {older}", (run_id, *keep))


#: Each record's latest run that considered it, and that run's start, after
#: :func:`expand` (a plain skip is not always a decision row). Read whole:
#: SQLite joined it, as a grouped subquery, to 100,000 records a row at a time.
LATEST_CONSIDERED = (f"SELECT e.record_key, e.run_id, r.started FROM (SELECT record_key, max(run_id) AS run_id"
                     f" FROM {EXPANDED} GROUP BY record_key) e JOIN runs r ON r.run_id = e.run_id")


#: A record's last run and time as its decision and its own row tell, selected
#: from :data:`RECORDS_SEEN` (what the runs considered adds to them: :func:`seen`).
SEEN_BY_RECORD = ("max(coalesce(d.run_id, 0), coalesce(t.run_id, 0)),"
                  " max(coalesce(d.decided_at, 0), coalesce(t.ended, 0))")
RECORDS_SEEN = "tasks t LEFT JOIN decisions d ON d.record_key = t.record_key"


def latest_by_record(rows: Iterable[tuple[str, int, float]]) -> dict[str, tuple[int, float]]:
    """The rows of :data:`LATEST_CONSIDERED` by record key, for :func:`seen`."""
    return {key: (run, started) for key, run, started in rows}


def seen(run: int | None, when: float | None, latest: tuple[int, float] | None) -> tuple[int | None, float | None]:
    """A record's last run and time, from its decision and record (``run``,
    ``when``) and its run and that run's start in :data:`LATEST_CONSIDERED`."""
    if latest is not None:
        run, when = max(run or 0, latest[0]), max(when or 0, latest[1])
    return run or None, when or None


def merged(some: Iterable[tuple[int, int]]) -> Ranges:
    """Ranges of ids as one list in order, overlaps merged."""
    out: Ranges = []
    for first, end in sorted(some):
        if out and first <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((first, end))
    return out


def expand(conn: sqlite3.Connection) -> None:
    """Fill :data:`EXPANDED` with what every run considered, one row per run
    and record (the packs expanded), for the queries that join it.

    (No key or index: 100,000 rows go in in a tenth of a second, in the
    order of their ids, where a primary key by record took half a second.)
    """
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {EXPANDED[5:]} (run_id INTEGER NOT NULL,"
                 " record_key TEXT NOT NULL, state TEXT NOT NULL)")
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS id_ranges (run_id INTEGER, first INTEGER, stop INTEGER)")
    conn.execute(f"DELETE FROM {EXPANDED}")
    conn.execute(f"INSERT INTO {EXPANDED} SELECT run_id, record_key, state FROM main.considered")
    by_run: dict[int, Ranges] = {}
    for run_id, blob in conn.execute("SELECT run_id, ids FROM considered_skips").fetchall():
        by_run.setdefault(run_id, []).extend(unpack(blob))
    conn.execute("DELETE FROM temp.id_ranges")
    conn.executemany("INSERT INTO temp.id_ranges VALUES (?,?,?)",
                     [(run_id, first, end) for run_id, some in by_run.items() for first, end in merged(some)])
    # A row of the run says more than its pack.
    conn.execute(f"INSERT INTO {EXPANDED} SELECT r.run_id, t.record_key, 'skipped' FROM temp.id_ranges r"
                 " JOIN tasks t ON t.record_id >= r.first AND t.record_id < r.stop WHERE NOT EXISTS"
                 " (SELECT 1 FROM main.considered c WHERE c.run_id = r.run_id AND c.record_key = t.record_key)")
    conn.execute("DELETE FROM temp.id_ranges")
