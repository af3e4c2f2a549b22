"""Forgetting records: ``forget`` (the named records) and ``forget_stale``
(the history), each in one transaction, with their files, dependencies,
stored results, decisions and run memberships.

Imports ``_ledger`` (a writer's connection) and ``_ledger_considered``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from taskgraph._ledger import Ledger
from taskgraph._ledger_considered import (
    CONSIDERED_SINCE,
    LATEST_CONSIDERED,
    RECORDS_SEEN,
    SEEN_BY_RECORD,
    expand,
    latest_by_record,
    seen,
)


def _delete_records(conn: sqlite3.Connection, record_keys: Iterable[str]) -> int:
    """Delete records with their files, dependencies, stored results,
    decisions and run memberships; returns how many were recorded."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS doomed (key TEXT PRIMARY KEY) WITHOUT ROWID")
    conn.execute("DELETE FROM temp.doomed")
    conn.executemany("INSERT OR IGNORE INTO temp.doomed VALUES (?)", ((key,) for key in record_keys))
    count = int(conn.execute("DELETE FROM tasks WHERE record_key IN (SELECT key FROM temp.doomed)").rowcount)
    # (a pack may keep a forgotten record's id: with no record that has it,
    # it counts for nothing, and ids are never given again)
    for table, column in (("files", "record_key"), ("deps", "record_key"), ("results", "key"),
                          ("decisions", "record_key"), ("considered", "record_key")):
        conn.execute(f"DELETE FROM {table} WHERE {column} IN (SELECT key FROM temp.doomed)")
    conn.execute("DELETE FROM temp.doomed")
    return count


def forget(workspace: str, record_keys: Sequence[str]) -> int:
    """Delete the records of these tasks; returns how many were recorded."""
    ledger = Ledger(workspace)
    try:
        with ledger._transaction() as conn:
            return _delete_records(conn, record_keys)
    finally:
        ledger.close()


def forget_stale(workspace: str, record_keys: Iterable[str], before: float | None = None) -> int:
    """Delete those of ``record_keys`` that are still history, in one transaction.

    A record is deleted only if, when the transaction starts, no run from the
    current graph's on has considered it (and, with ``before``, it was last
    seen before that time): a run that ended since the list was made keeps
    what it used. Digest-cache rows of paths no remaining record names go too.
    Returns how many records were deleted.
    """
    wanted = set(record_keys)
    ledger = Ledger(workspace)
    try:
        with ledger._transaction() as conn:
            row = conn.execute("SELECT max(run_id) FROM runs WHERE ended IS NOT NULL AND tasks > 0").fetchone()
            if row[0] is None:
                return 0  # no run has ended: nothing is history
            current = int(row[0])
            expand(conn)
            latest = {} if before is None else latest_by_record(conn.execute(LATEST_CONSIDERED))
            still = [
                key for key, run, seen_at in conn.execute(
                    f"SELECT t.record_key, {SEEN_BY_RECORD} FROM {RECORDS_SEEN}"
                    f" WHERE t.record_key NOT IN ({CONSIDERED_SINCE})", (current,))
                if key in wanted and (before is None or (seen(run, seen_at, latest.get(key))[1] or 0) < before)
            ]
            count = _delete_records(conn, still)
            if count:
                conn.execute("DELETE FROM digests WHERE path NOT IN (SELECT path FROM files)")
            return count
    finally:
        ledger.close()


__all__ = ["forget", "forget_stale"]
