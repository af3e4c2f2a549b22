"""The ledger's read side, for the command line and tools: ``LedgerReader``.

Owns ``LedgerReader`` (a read-only connection that never unpickles anything)
and the rows it gives: ``TaskRow``, ``DecisionRow``, ``RunRow``, ``StaleRow``,
``OverviewRow``. Leaf module: the standard library, ``_ledger_schema`` (the
read-only connection), ``_ledger_considered`` (what each run considered,
expanded for SQL), ``_ledger_rows``, ``_errors`` and ``_fingerprint`` (types).

What each run considered is read from one temporary table that
``_ledger_considered.expand`` fills, once per reader, when a question needs it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from taskgraph._errors import LedgerError
from taskgraph._fingerprint import CachedDigest, Fingerprint
from taskgraph._ledger_considered import (
    CONSIDERED_SINCE,
    EXPANDED,
    LATEST_CONSIDERED,
    RECORDS_SEEN,
    SEEN_BY_RECORD,
    expand,
    latest_by_record,
    seen,
)
from taskgraph._ledger_decisions import NEW_TASK_TEXT
from taskgraph._ledger_rows import cached_digest, files_of, fingerprint, loaded_path, stored_path, stored_text
from taskgraph._ledger_schema import LEDGER_FILENAME, open_to_read


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One task as the ledger records it (no unpickling involved)."""

    record_key: str
    task_key: str
    exec_key: str
    name: str
    func: str
    args: str
    hash_algorithm: str
    store_result: bool
    state: str
    run_id: int | None
    started: float | None
    ended: float | None
    duration: float | None
    worker: str | None
    error: str | None
    cpu_time: float | None = None
    peak_memory: int | None = None
    #: A failed task: the exception's type and message, and the user's frames
    #: (JSON, see ``_failure.load_frames``); None in records of older ledgers.
    error_type: str | None = None
    error_message: str | None = None
    error_frames: str | None = None
    #: The arguments' tree (``_arguments.tree``); None in records of older ledgers.
    arguments: str | None = None
    #: The latest run that considered it, as far as the ledger still knows
    #: (the current graph's run and the runs after it); None for history.
    seen: int | None = None


_TASK_COLUMNS = (
    "t.record_key, t.task_key, t.exec_key, t.name, t.func, t.args, t.hash_algorithm, t.store_result,"
    " t.state, t.run_id, t.started, t.ended, t.duration, t.worker, t.error, t.cpu_time, t.peak_memory,"
    " t.error_type, t.error_message, t.error_frames, t.arguments"
)


def _task_row(row: Sequence[Any]) -> TaskRow:
    return TaskRow(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), row[8], row[9],
                   row[10], row[11], row[12], row[13], row[14], row[15], row[16], row[17], row[18], row[19],
                   row[20], row[21])


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """The last run-or-skip decision about a task, with its reasons."""

    record_key: str
    run_id: int | None
    decided_at: float
    action: str
    reasons: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run (one ``TaskGraph``) on the workspace.

    ``ended`` is None for a run that is still going on, or whose process was
    killed. The counts are written when it ends (None for runs recorded by
    older versions): ``tasks`` it was given, of which ``ran``, ``skipped``
    and ``failed``; the rest were cancelled.
    """

    run_id: int
    started: float
    ended: float | None
    pid: int | None
    host: str | None
    n_workers: int | None
    version: str | None
    tasks: int | None = None
    ran: int | None = None
    skipped: int | None = None
    failed: int | None = None


@dataclass(frozen=True, slots=True)
class StaleRow:
    """A record that is history: no run since the current graph's considered it."""

    record_key: str
    name: str
    #: The last run that considered it, and when (decided or ended).
    last_run: int | None
    last_seen: float | None


def _loaded_paths(rows: list[tuple[Any, ...]], column: int) -> list[tuple[Any, ...]]:
    """Rows with the path in ``column`` back as ``str`` (a name that is not
    UTF-8 is stored as bytes); the rows of other names as they are."""
    return [row if type(row[column]) is not bytes else (*row[:column], loaded_path(row[column]), *row[column + 1:])
            for row in rows]


#: What ``LedgerReader.overview`` gives of a record: (record_key, name, state,
#: run_id, started, ended, duration, worker, cpu_time, peak_memory).
OverviewRow = tuple[Any, ...]


class LedgerReader:
    """A read-only view of a workspace's ledger. Never unpickles anything.

    A ledger of an older schema is read as the next run will upgrade it: it
    is copied into memory and upgraded there; the file is not changed.

    Raises:
        LedgerError: when there is no ledger, it is not a taskgraph ledger,
            or it was written by a newer taskgraph; the message is one line
            and says what the path is instead.
    """

    def __init__(self, workspace: str) -> None:
        self.workspace = workspace
        self.path = os.path.join(workspace, LEDGER_FILENAME)
        if not os.path.isfile(self.path):
            raise LedgerError(_no_ledger(workspace))
        self._conn, version = open_to_read(self.path)
        #: The schema of the file (the view is always of the current schema).
        self.schema = version
        self._wanted: set[str] | None = None  # the keys in the temporary table
        self._expanded = False

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            if not self._expanded and EXPANDED in sql:
                self._expand()
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as error:
            raise LedgerError(f"cannot read {self.path}: {error}") from error

    def _expand(self) -> None:
        """Fill the table of what each run considered (every question about
        it names that table), from one snapshot of the file: a writer's
        commit cannot fall between its rows and its packs."""
        self._conn.execute("BEGIN")
        try:
            expand(self._conn)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        self._expanded = True

    # -- runs ---------------------------------------------------------------------------

    def runs(self) -> list[RunRow]:
        """Every run, oldest first."""
        return [RunRow(*row) for row in self._rows(
            "SELECT run_id, started, ended, pid, host, n_workers, version, tasks, ran, skipped, failed"
            " FROM runs ORDER BY run_id")]

    def current_run(self) -> int | None:
        """The run whose graph is the current graph: the latest that ended and
        was given at least one task. None before any run ended."""
        row = self._rows("SELECT max(run_id) FROM runs WHERE ended IS NOT NULL AND tasks > 0")
        return None if row[0][0] is None else int(row[0][0])

    def considered(self, run_id: int) -> int:
        """How many tasks the ledger knows ``run_id`` was given (recorded or not)."""
        return int(self._rows(f"SELECT count(*) FROM {EXPANDED} WHERE run_id=?", (run_id,))[0][0])

    def run_states(self, run_id: int) -> dict[str, int]:
        """What became of the tasks ``run_id`` was given: state -> how many
        (as far as the ledger still holds its considered rows)."""
        return dict(self._rows(f"SELECT state, count(*) FROM {EXPANDED} WHERE run_id=? GROUP BY state", (run_id,)))

    def memberships(self, since: int = 0) -> list[tuple[str, int, str]]:
        """(record_key, run, state) of every record the runs from ``since``
        on considered (as far as the ledger still knows), by run."""
        return self._rows(f"SELECT record_key, run_id, state FROM {EXPANDED} WHERE run_id >= ? ORDER BY run_id",
                          (since,))

    def _seen(self, keys: Iterable[str] | None = None) -> dict[str, int]:
        """The latest run that considered each record (of ``keys``, or all)."""
        if keys is None:
            rows = self._rows(f"SELECT record_key, max(run_id) FROM {EXPANDED} GROUP BY record_key")
        else:
            wanted = list(keys)
            rows = []
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                rows += self._rows(
                    f"SELECT record_key, max(run_id) FROM {EXPANDED} WHERE record_key IN"
                    f" ({','.join('?' * len(chunk))}) GROUP BY record_key", chunk)
        return {key: run for key, run in rows}

    def history_count(self, since: int) -> int:
        """How many records no run from ``since`` on considered."""
        return int(self._rows(
            f"SELECT count(*) FROM tasks WHERE record_key NOT IN ({CONSIDERED_SINCE})", (since,))[0][0])

    # -- records ------------------------------------------------------------------------

    def count(self) -> int:
        """How many records there are."""
        return int(self._rows("SELECT count(*) FROM tasks")[0][0])

    def status_rows(self, since: int | None) -> list[tuple[Any, ...]]:
        """What status shows, in one pass: (record_key, run, run's state,
        name, recorded state, run_id, ended, duration, cpu_time,
        peak_memory, and one target's path, mode, size, mtime_ns, digest, or
        NULLs), one row per target of each record.

        With ``since``, the records considered by that run or later, ``run``
        being each of those runs that considered it; without it, every record,
        with ``run`` and its state NULL.
        """
        columns = ("t.name, t.state, t.run_id, t.ended, t.duration, t.cpu_time, t.peak_memory,"
                   " f.path, f.mode, f.size, f.mtime_ns, f.digest")
        target = "LEFT JOIN files f ON f.record_key = t.record_key AND f.role = 'target'"
        if since is not None:
            return _loaded_paths(self._rows(
                f"SELECT c.record_key, c.run_id, c.state, {columns} FROM {EXPANDED} c"
                f" JOIN tasks t ON t.record_key = c.record_key {target} WHERE c.run_id >= ?", (since,)), 10)
        # (its runs are looked up in memberships().)
        return _loaded_paths(self._rows(f"SELECT t.record_key, NULL, NULL, {columns} FROM tasks t {target}"), 10)

    def unrecorded(self, since: int) -> list[tuple[str, int, str, str | None]]:
        """(record_key, run, state, name from its decision or NULL) of the
        tasks the runs from ``since`` on were given that have no record."""
        return self._rows(
            f"SELECT c.record_key, c.run_id, c.state, d.name FROM {EXPANDED} c"
            " LEFT JOIN decisions d ON d.record_key = c.record_key"
            " WHERE c.run_id >= ? AND c.record_key NOT IN (SELECT record_key FROM tasks) ORDER BY c.run_id",
            (since,))

    def overview(self, keys: set[str] | None = None) -> list[OverviewRow]:
        """What status shows of each record, cheaply: (record_key, name,
        state, run_id, started, ended, duration, worker, cpu_time,
        peak_memory), in no particular order; with ``keys``, only those."""
        columns = "record_key, name, state, run_id, started, ended, duration, worker, cpu_time, peak_memory"
        return self._some(f"SELECT {columns} FROM tasks", keys)

    def stored_reasons(self, keys: set[str]) -> dict[str, list[dict[str, Any]]]:
        """The reasons of the stored decisions of ``keys`` (a restore from the
        shared cache is always written: it has reasons of its own)."""
        return {key: json.loads(reasons) for key, reasons in self._some(
            "SELECT record_key, reasons FROM decisions", keys)}

    def decided_names(self, keys: set[str]) -> list[tuple[str, str]]:
        """(record_key, name) of those of ``keys`` that were decided: a task a
        run decided to run is named there before it has a record."""
        return self._some("SELECT record_key, name FROM decisions", keys)

    def targets(self, keys: set[str] | None = None) -> list[tuple[Any, ...]]:
        """(record_key, path, mode, size, mtime_ns, digest) of every recorded
        target (of the records ``keys``, if given)."""
        return _loaded_paths(self._some(
            "SELECT record_key, path, mode, size, mtime_ns, digest FROM files WHERE role = 'target'", keys), 1)

    def _some(self, sql: str, keys: set[str] | None) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` whose first column is one of ``keys`` (all if None).

        A scan that Python filters costs less than looking up each key once
        the keys are a good part of the table (a current graph usually is);
        a few keys are looked up through a temporary table.
        """
        if keys is None:
            return self._rows(sql)
        if len(keys) * 4 >= self.count():
            return [row for row in self._rows(sql) if row[0] in keys]
        self._rows("CREATE TEMP TABLE IF NOT EXISTS wanted (key TEXT PRIMARY KEY) WITHOUT ROWID")
        if self._wanted is not keys:
            self._rows("DELETE FROM temp.wanted")
            self._conn.executemany("INSERT OR IGNORE INTO temp.wanted VALUES (?)", ((key,) for key in keys))
            self._wanted = keys
        joiner = " AND" if " WHERE " in sql else " WHERE"
        return self._rows(f"{sql}{joiner} record_key IN (SELECT key FROM temp.wanted)")

    def tasks(self, since: int | None = None, state: str | None = None) -> list[TaskRow]:
        """Recorded tasks, whole, in the order they last ended.

        Args:
            since: only those considered by this run or a later one (the
                current graph and what runs after it were given); None for
                every record, history included.
            state: only those recorded in this state (``'done'``, ``'failed'``).
        """
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append(f"t.record_key IN ({CONSIDERED_SINCE})")
            params.append(since)
        if state is not None:
            where.append("t.state = ?")
            params.append(state)
        sql = f"SELECT {_TASK_COLUMNS}, NULL FROM tasks t"
        if where:
            sql += " WHERE " + " AND ".join(where)
        found = [_task_row(row) for row in self._rows(sql + " ORDER BY t.ended IS NULL, t.ended, t.name", params)]
        seen = self._seen() if len(found) > 500 else self._seen(task.record_key for task in found)
        return [dataclasses.replace(task, seen=seen.get(task.record_key)) for task in found]

    def named(self, name: str) -> list[TaskRow]:
        """The records of tasks with this name, latest first."""
        return self._select_tasks("t.name = ?", (stored_text(name),))

    def names(self) -> list[str]:
        """Every recorded task name, sorted."""
        return [row[0] for row in self._rows("SELECT DISTINCT name FROM tasks ORDER BY name")]

    def with_prefix(self, prefix: str) -> list[TaskRow]:
        """The records whose key starts with ``prefix`` (lower-case hex)."""
        return self._select_tasks("t.record_key >= ? AND t.record_key < ?", (prefix, prefix + "g"))

    def _select_tasks(self, where: str, params: tuple[Any, ...]) -> list[TaskRow]:
        found = [_task_row(row) for row in self._rows(
            f"SELECT {_TASK_COLUMNS}, NULL FROM tasks t WHERE {where} ORDER BY t.ended IS NULL, t.ended DESC",
            params)]
        seen = self._seen(task.record_key for task in found)
        return [dataclasses.replace(task, seen=seen.get(task.record_key)) for task in found]

    def last_seen(self, record_key: str) -> tuple[int | None, float | None]:
        """The last run that considered a record, and when, as far as its
        decision, its last execution and what the runs considered tell (a
        plain skip is not always written: see :meth:`decision`)."""
        rows = self._rows(f"SELECT {SEEN_BY_RECORD} FROM {RECORDS_SEEN} WHERE t.record_key = ?", (record_key,))
        if not rows:
            return None, None
        latest = self._rows(f"SELECT c.run_id, r.started FROM {EXPANDED} c JOIN runs r USING (run_id)"
                            " WHERE c.record_key = ? ORDER BY c.run_id DESC LIMIT 1", (record_key,))
        return seen(rows[0][0], rows[0][1], latest[0] if latest else None)

    def stale(self, since: int, before: float | None = None) -> list[StaleRow]:
        """Records no run from ``since`` on considered (history), oldest first;
        with ``before``, only those last seen before that time."""
        rows = self._rows(f"SELECT t.record_key, t.name, {SEEN_BY_RECORD} FROM {RECORDS_SEEN}"
                          f" WHERE t.record_key NOT IN ({CONSIDERED_SINCE})", (since,))
        latest = latest_by_record(self._rows(LATEST_CONSIDERED))
        found = [StaleRow(key, name, *seen(run, when, latest.get(key))) for key, name, run, when in rows]
        found.sort(key=lambda row: (row.last_seen or 0, row.name))
        return [row for row in found if before is None or (row.last_seen or 0) < before]

    def files(
        self, since: int | None = None, role: str | None = None
    ) -> dict[str, tuple[dict[str, Fingerprint], dict[str, Fingerprint]]]:
        """record_key -> (inputs, targets), each path -> Fingerprint; with
        ``since``, only for the records considered by that run or later; with
        ``role`` (``'input'`` or ``'target'``), only those files."""
        sql = "SELECT record_key, role, path, mode, size, mtime_ns, digest, taken_at_ns FROM files"
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append(f"record_key IN ({CONSIDERED_SINCE})")
            params.append(since)
        if role is not None:
            where.append("role = ?")
            params.append(role)
        if where:
            sql += " WHERE " + " AND ".join(where)
        out: dict[str, tuple[dict[str, Fingerprint], dict[str, Fingerprint]]] = {}
        for row in self._rows(sql, params):
            pair = out.get(row[0])
            if pair is None:
                pair = out[row[0]] = ({}, {})
            pair[0 if row[1] == "input" else 1][loaded_path(row[2])] = fingerprint(row[3:])
        return out

    def record_files(self, record_key: str) -> tuple[dict[str, Fingerprint], dict[str, Fingerprint]]:
        """(inputs, targets) of one record."""
        return files_of(self._rows(
            "SELECT role, path, mode, size, mtime_ns, digest, taken_at_ns FROM files WHERE record_key=?",
            (record_key,),
        ))

    def deps(self, since: int | None = None) -> list[tuple[str, str]]:
        """(record_key, dependency's record_key) pairs (of the records
        considered by ``since`` or later, if given)."""
        if since is None:
            return [(a, b) for a, b in self._rows("SELECT record_key, dep_key FROM deps")]
        return [(a, b) for a, b in self._rows(
            f"SELECT record_key, dep_key FROM deps WHERE record_key IN ({CONSIDERED_SINCE})", (since,))]

    def decision(self, record_key: str) -> DecisionRow | None:
        """A record's last decision. Two are not written (see
        ``_ledger_decisions``): a new task's, committed with its record, is
        told by a record from a later run than its decision row, made before
        the record's task started (or with none); a plain skip (up to date, no reasons) after an earlier run's
        decision: a run that skipped the record and started after its
        decision was made makes the last decision a plain skip, by the
        latest such run, at that run's start. (Runs that overlap write every
        plain skip once one has written the ledger; a decision made after the
        record's task started is not taken for an earlier one.)"""
        rows = self._rows("SELECT run_id, decided_at, action, reasons FROM decisions WHERE record_key=?",
                          (record_key,))
        record = self._rows("SELECT run_id, started FROM tasks WHERE record_key=? AND run_id IS NOT NULL",
                            (record_key,))
        if record and (not rows or ((rows[0][0] is None or rows[0][0] < record[0][0])
                                    and (rows[0][1] or 0) <= (record[0][1] or 0))):
            # Recorded by a later run than its decision's, after that decision
            # was made (or with none): that run decided it as a new task, and
            # left the decision to the record.
            rows = [(*record[0], "run", NEW_TASK_TEXT)]
        if not rows:
            return None
        run_id, decided_at, action, reasons = rows[0]
        later = self._rows(
            f"SELECT c.run_id, runs.started FROM {EXPANDED} c JOIN runs USING (run_id)"
            " WHERE c.record_key=? AND c.state='skipped' AND c.run_id>? AND runs.started>=?"
            " ORDER BY c.run_id DESC LIMIT 1",
            (record_key, run_id if run_id is not None else -1, decided_at or 0),
        )
        if later:
            (run_id, decided_at), action, reasons = later[0], "skip", "[]"
        return DecisionRow(record_key, run_id, decided_at, action, json.loads(reasons))

    def lookup_digest(self, path: str, algorithm: str) -> CachedDigest | None:
        rows = self._rows(
            "SELECT dev, ino, size, mtime_ns, ctime_ns, is_dir, digest, hashed_at_ns"
            " FROM digests WHERE path=? AND algorithm=?",
            (stored_path(path), algorithm),
        )
        return cached_digest(rows[0]) if rows else None

    def store_digest(self, path: str, algorithm: str, entry: CachedDigest) -> None:
        pass  # read-only

    def close(self) -> None:
        self._conn.close()


def _no_ledger(workspace: str) -> str:
    """Why there is no ledger to read at ``workspace``, and what to do."""
    if not os.path.exists(workspace):
        return f"{workspace} does not exist: give the workspace directory a pipeline ran with"
    if not os.path.isdir(workspace):
        return (f"{workspace} is a file, not a workspace directory: give the directory that holds "
                f"{LEDGER_FILENAME}")
    if os.path.isfile(os.path.join(workspace, "taskgraph_data.db")):
        return (f"{workspace} is a natcap taskgraph workspace (taskgraph_data.db); this taskgraph keeps "
                f"its own ledger ({LEDGER_FILENAME}) and runs every task once, then skips as natcap did: "
                "run the pipeline with this taskgraph first")
    return (f"no taskgraph ledger in {workspace} ({LEDGER_FILENAME} not found): "
            "run a pipeline with this workspace first")
