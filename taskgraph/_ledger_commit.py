"""Committing the ledger's writes: the statements, transactions, group commits.

Owns the statements that ``Ledger`` buffers rows for (in the order a commit
runs them), the transaction (``BEGIN IMMEDIATE``, the wait for another
process's write lock, every failure a ``LedgerError``) and the commit of a
group of finished tasks, retried a task at a time when it cannot be
committed. Leaf module: the standard library, ``_ledger_rows``,
``_ledger_schema`` (the busy timeout), ``_ledger_considered`` (its
statements), ``_errors`` and ``_fingerprint`` (types).

Durability: WAL journal, ``synchronous=NORMAL``: a commit survives the process
being killed at any moment (it may be lost only to a power cut, never
corrupted). All writes of a group of finished tasks (their row, files, deps and
stored result) commit in one ``BEGIN IMMEDIATE`` transaction, so a task is
never recorded as done without its result; a group that cannot be committed
(disk full) is retried a task at a time, so what fits is kept. Other processes on the same
workspace wait on SQLite's busy timeout instead of failing.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

from taskgraph._errors import LedgerError
from taskgraph._fingerprint import CachedDigest
from taskgraph._ledger_considered import CONSIDER, PACK, give_ids, with_ids
from taskgraph._ledger_rows import stored_path
from taskgraph._ledger_schema import BUSY_TIMEOUT_S

LOGGER = logging.getLogger("taskgraph.Task")

#: How many times a writer waits out the busy timeout before giving up.
LOCK_RETRIES = 10

# Buffered writes, in the order a commit runs them: deletes before inserts.
DELETE_FILES = "DELETE FROM files WHERE record_key=?"
DELETE_DEPS = "DELETE FROM deps WHERE record_key=?"
DELETE_RESULT = "DELETE FROM results WHERE key=?"
# A record keeps its id; a new one is given the next (?23, see with_ids).
UPSERT_TASK = ("INSERT OR REPLACE INTO tasks VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,"
               "?19,?20,?21,?22,coalesce((SELECT record_id FROM tasks WHERE record_key=?1),?23))")
INSERT_FILE = "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?)"
INSERT_DEP = "INSERT OR REPLACE INTO deps VALUES (?,?)"
UPSERT_RESULT = "INSERT OR REPLACE INTO results (key, value, mac) VALUES (?,?,?)"
DECISION = "INSERT OR REPLACE INTO decisions VALUES (?,?,?,?,?,?)"
END_RUN = "UPDATE runs SET ended=?, tasks=?, ran=?, skipped=?, failed=? WHERE run_id=?"
RECORD_STATEMENTS = (
    DELETE_FILES, DELETE_DEPS, DELETE_RESULT, UPSERT_TASK, INSERT_FILE, INSERT_DEP, UPSERT_RESULT,
)
# (what a run considered: see _ledger_considered)
STATEMENTS = (*RECORD_STATEMENTS, DECISION, CONSIDER, PACK, END_RUN)

#: Buffered rows: statement -> its rows, committed in STATEMENTS order.
Rows = dict[str, list[tuple[Any, ...]]]


def empty_rows() -> Rows:
    """A buffer with no rows."""
    return {sql: [] for sql in STATEMENTS}


def append_all(rows: Rows, mine: Rows) -> None:
    """Add one task's rows to the buffer ``rows``, all or (interrupted) none."""
    added: list[tuple[list[tuple[Any, ...]], int]] = []
    try:
        for sql, new in mine.items():
            buffered = rows[sql]
            added.append((buffered, len(buffered)))
            buffered.extend(new)
    except BaseException:
        for buffered, length in added:
            del buffered[length:]
        raise


def commit(
    conn: sqlite3.Connection,
    path: str,
    rows: Rows,
    digests: dict[tuple[str, str], CachedDigest],
    prune: Callable[[sqlite3.Connection], None] | None,
) -> None:
    """Commit a group of buffered rows (with digest-cache entries, and what
    drops older runs' considered sets, ``prune``) in one transaction.

    Raises:
        LedgerError: the group could not be committed; when it held several
            finished tasks, its ``committed`` holds those then committed one
            at a time.
    """
    try:
        with transaction(conn, path):
            _write(conn, rows, digests)
            if prune is not None:
                prune(conn)
    except LedgerError as error:
        # The group of finished tasks could not be committed (disk full,
        # a result too large): commit what fits, a task at a time in the
        # order they finished, so that one large record does not cost
        # the others. The error is raised all the same.
        cause = error.__cause__
        if isinstance(cause, sqlite3.Error) and not is_busy(cause) and len(rows[UPSERT_TASK]) > 1:
            error.committed = frozenset(_commit_each(conn, path, rows))
        raise


def _commit_each(conn: sqlite3.Connection, path: str, rows: Rows) -> set[str]:
    """Commit each task of a failed batch in a transaction of its own, in
    order, until one fails; return the record keys committed. Each goes
    with its own decisions (the reader takes a record without a decision of
    its run for a new task's); the other lazy rows of the batch (other
    decisions, considered sets, digests) are left out."""
    blocks: dict[str, dict[str, list[tuple[Any, ...]]]] = {}
    for sql in (*RECORD_STATEMENTS, DECISION):  # every row of these starts with its record key
        for row in rows[sql]:
            blocks.setdefault(row[0], {}).setdefault(sql, []).append(row)
    committed: set[str] = set()
    for row in rows[UPSERT_TASK]:
        block = blocks[row[0]]
        try:
            with transaction(conn, path):
                for sql in (*RECORD_STATEMENTS, DECISION):
                    if sql in block:
                        conn.executemany(sql, with_ids(conn, block[sql]) if sql == UPSERT_TASK else block[sql])
                give_ids(conn)
        except LedgerError:
            break
        committed.add(row[0])
    return committed


def _write(conn: sqlite3.Connection, rows: Rows, digests: dict[tuple[str, str], CachedDigest]) -> None:
    for sql in STATEMENTS:
        if rows[sql]:
            conn.executemany(sql, with_ids(conn, rows[sql]) if sql == UPSERT_TASK else rows[sql])
    if rows[UPSERT_TASK]:
        give_ids(conn)
    if digests:
        conn.executemany(
            "INSERT OR REPLACE INTO digests VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (stored_path(path), algorithm, e.stat.dev, e.stat.ino, e.stat.size, e.stat.mtime_ns,
                 e.stat.ctime_ns, int(e.stat.is_dir), e.digest, e.hashed_at_ns)
                for (path, algorithm), e in digests.items()
            ],
        )


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, path: str) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` on ``conn`` (the ledger at
    ``path``), rolled back on any error.

    The write lock is waited for on SQLite's busy timeout, :data:`LOCK_RETRIES`
    times, with a warning between.

    Raises:
        LedgerError: the lock stayed taken, or the transaction failed (every
            error becomes one, so the graph stops and its waiters are released).
    """
    for attempt in range(LOCK_RETRIES):
        try:
            conn.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError as error:
            if not is_busy(error):
                raise LedgerError(f"cannot write the ledger {path}: {error}") from error
            LOGGER.warning(
                "the ledger %s is busy (another process is writing it); waiting "
                "(attempt %d of %d)", path, attempt + 1, LOCK_RETRIES,
            )
    else:
        raise LedgerError(
            f"the ledger {path} stayed locked by another process for "
            f"{LOCK_RETRIES * BUSY_TIMEOUT_S:.0f} s; is a process stuck holding it?"
        )
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException as error:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        if isinstance(error, sqlite3.Error):
            raise LedgerError(
                f"cannot write the ledger {path}: {error}. Nothing recorded before "
                "this error is lost; free disk space or fix permissions and run again."
            ) from error
        if isinstance(error, Exception):
            # Not the disk: a value SQLite could not take. Still a ledger
            # error, so the graph stops and every waiter is released.
            raise LedgerError(
                f"cannot write the ledger {path}: {type(error).__name__}: {error}. Nothing "
                "recorded before this error is lost; please report this as a taskgraph bug."
            ) from error
        raise


def is_busy(error: sqlite3.Error) -> bool:
    """Another connection holds the write lock (as opposed to a write that failed)."""
    return "locked" in str(error) or "busy" in str(error)
