"""Ledgers of older schemas, made from a ledger of the current one.

``downgrade`` takes back, one schema at a time, what each migration added,
so the file is what that schema's taskgraph wrote: the records, files,
decisions and results stay; only the newer tables and columns go.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from taskgraph._ledger_considered import unpack
from taskgraph._ledger_decisions import NEW_TASK_TEXT


def _skips_as_rows(con: sqlite3.Connection) -> None:
    """Schema 4 wrote a row for every skip: the packs become rows again."""
    for run_id, ids in con.execute("SELECT run_id, ids FROM considered_skips").fetchall():
        for first, end in unpack(ids):
            con.execute("INSERT OR IGNORE INTO considered SELECT ?, record_key, 'skipped' FROM tasks"
                        " WHERE record_id >= ? AND record_id < ?", (run_id, first, end))


def _skips_as_decisions(con: sqlite3.Connection) -> None:
    """Schema 4 wrote every decision: a record recorded by a later run than
    its decision's (or with none) gets that run's new task decision, then a
    record skipped by a run after its decision's run gets that skip (of the
    latest such run) as its decision."""
    con.execute(
        "INSERT INTO decisions SELECT t.record_key, t.run_id, t.started, t.name, 'run', ? FROM tasks t"
        " LEFT JOIN decisions d ON d.record_key = t.record_key WHERE t.run_id IS NOT NULL"
        " AND (d.record_key IS NULL OR (coalesce(d.run_id, -1) < t.run_id AND coalesce(d.decided_at, 0) <= t.started))"
        " ON CONFLICT (record_key) DO UPDATE SET run_id = excluded.run_id, decided_at = excluded.decided_at,"
        " action = 'run', reasons = excluded.reasons", (NEW_TASK_TEXT,))
    con.execute(
        "UPDATE decisions SET (run_id, decided_at, action, reasons) = (SELECT c.run_id, r.started, 'skip', '[]'"
        " FROM considered c JOIN runs r USING (run_id) WHERE c.record_key = decisions.record_key"
        " AND c.state = 'skipped' ORDER BY c.run_id DESC LIMIT 1)"
        " WHERE coalesce(run_id, -1) < (SELECT max(c.run_id) FROM considered c"
        " WHERE c.record_key = decisions.record_key AND c.state = 'skipped')")


# From schema N + 1 back to N: what the migration from N added (SQL, or a
# function of the connection).
_ADDED: dict[int, tuple[str | Callable[[sqlite3.Connection], None], ...]] = {
    4: (_skips_as_rows, _skips_as_decisions, "DROP TABLE considered_skips", "DROP INDEX tasks_by_id",
        "ALTER TABLE tasks DROP COLUMN record_id", "DELETE FROM meta WHERE key = 'last_record_id'"),
    3: ("DROP TABLE considered",
        "ALTER TABLE tasks DROP COLUMN error_type", "ALTER TABLE tasks DROP COLUMN error_message",
        "ALTER TABLE tasks DROP COLUMN error_frames", "ALTER TABLE tasks DROP COLUMN arguments",
        "ALTER TABLE runs DROP COLUMN tasks", "ALTER TABLE runs DROP COLUMN ran",
        "ALTER TABLE runs DROP COLUMN skipped", "ALTER TABLE runs DROP COLUMN failed"),
    # Schema 3 changed what a result's HMAC covers, not the tables (a test
    # that needs schema 2's HMAC writes it itself).
    2: (),
    1: ("ALTER TABLE results DROP COLUMN mac", "ALTER TABLE tasks DROP COLUMN cpu_time",
        "ALTER TABLE tasks DROP COLUMN peak_memory"),
}


def downgrade(path: str, version: int) -> None:
    """Turn the ledger at ``path`` into one of schema ``version`` (needs SQLite 3.35)."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        current = con.execute("PRAGMA user_version").fetchone()[0]
        con.execute("BEGIN")
        for step in range(current - 1, version - 1, -1):
            for statement in _ADDED[step]:
                if callable(statement):
                    statement(con)
                else:
                    con.execute(statement)
        con.execute(f"PRAGMA user_version={version}")
        con.execute("COMMIT")
    finally:
        con.close()
