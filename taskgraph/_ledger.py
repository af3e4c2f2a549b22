"""The ledger's writer: one long-lived connection to the workspace's ledger.

Owns :class:`Ledger` (runs and what each considered, lookups and the
snapshot, durations, stored results, the digest cache, the write buffer and
``flush``) and :class:`UntrustedResultError`.
May import the ledger's other rooms, ``_errors``, ``_fingerprint``,
``_version`` and sqlitedict (for the encoding of stored results).

The ledger is one SQLite file in the workspace recording every finished task.
Its rooms, the only modules that speak SQL: ``_ledger_schema`` (the schema,
migrations, opening a file, moving a bad one aside), ``_ledger_keys`` (the
workspace's secret and the HMACs of stored results), ``_ledger_rows`` (how
values are stored in rows and read back), ``_ledger_commit`` (the write
statements, transactions and group commits; durability), ``_ledger_considered``
(what each run considered: rows, and plain skips packed per commit),
``_ledger_read`` (the read side for the command line), ``_ledger_forget``
(forgetting records) and this writer. Names that the engine imports from here
are re-exported from the room that owns them; the read side is imported from
``_ledger_read`` itself, so that a run never loads it.

Security: stored results are pickles, and unpickling runs code. Each result is
stored with an HMAC-SHA256 of its record key, the exec key of the run that
computed it (the input fingerprints of that run) and its bytes, keyed by a secret of
the workspace (``taskgraph_ledger.sqlite.key``, 32 random bytes, mode 0600,
created atomically on first use). A result whose HMAC does not verify (the
ledger was edited, written by another tool, or copied from another workspace)
is never unpickled: :meth:`Ledger.load_result` raises
:class:`UntrustedResultError` and the task runs again. Nor is the result of an
earlier run of the task written back over a newer one: it was computed from
other inputs than the record's, so its HMAC does not verify. The ledger, its WAL and
every file taskgraph creates in the workspace are readable by their owner only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from taskgraph._errors import LedgerError
from taskgraph._fingerprint import CachedDigest
from taskgraph._ledger_commit import (
    DECISION,
    DELETE_DEPS,
    DELETE_FILES,
    DELETE_RESULT,
    END_RUN,
    INSERT_DEP,
    INSERT_FILE,
    UPSERT_RESULT,
    UPSERT_TASK,
    Rows,
    append_all,
    commit,
    empty_rows,
    transaction,
)
from taskgraph._ledger_considered import Considered, end_of_run
from taskgraph._ledger_decisions import Decisions
from taskgraph._ledger_keys import KEY_SUFFIX, macs_equal, result_mac, workspace_key
from taskgraph._ledger_rows import (
    DigestRow,
    FileRow,
    Outcome,
    Previous,
    SnapshotRow,
    TaskRecord,
    cached_digest,
    exec_key,
    files_of,
    loaded_path,
    snapshot_record,
    stored_path,
    stored_text,
)
from taskgraph._ledger_schema import (
    LEDGER_FILENAME,
    SCHEMA_VERSION,
    open_ledger,
    open_snapshot,
    stamp_clean_close,
)

# Ledger and UntrustedResultError are defined here; the
# others belong to the ledger's other rooms and are re-exported for the
# modules that import them from here.
__all__ = [
    "KEY_SUFFIX",
    "LEDGER_FILENAME",
    "SCHEMA_VERSION",
    "Ledger",
    "Outcome",
    "TaskRecord",
    "UntrustedResultError",
]

LOGGER = logging.getLogger("taskgraph.Task")

_BULK_AFTER = 64

# Rows whose loss costs nothing but a little work (a decision's explanation, a
# cached digest) ride along with the next commit instead of forcing one.
_LAZY_LIMIT = 4096


class UntrustedResultError(LedgerError):
    """A stored result failed its authentication check and was not unpickled.

    Raised by :meth:`Ledger.load_result`; the scheduler catches it and runs
    the task again, so users see a warning, not this error.
    """


def _host() -> str:
    """This host's name, as ``socket.gethostname()`` gives it (on POSIX the
    same ``uname`` node name, without importing ``socket`` at every start)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def _process_may_run(pid: int | None, host: str | None) -> bool:
    """Whether the process of a run that has not ended may still be running
    (it may, on another host or where that cannot be checked)."""
    if pid is None or host != _host() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, as another user's process
    return True


class Ledger:
    """One long-lived connection to the workspace's ledger.

    Not thread-safe: the scheduler owns it and calls it from one thread at a
    time. Writes are buffered and committed together by :meth:`flush`.
    """

    def __init__(self, workspace: str, read_only: bool = False) -> None:
        self.path = os.path.join(workspace, LEDGER_FILENAME)
        self._key: bytes | None = None
        #: A dry run: the ledger is read into memory and nothing in the
        #: workspace is created, upgraded, moved or written.
        self.read_only = read_only
        # Buffered writes, statement -> rows, committed by flush().
        self._rows: Rows = empty_rows()
        # Whether _rows holds more than lazy decision rows: flush runs after
        # every task, so it must not scan the statements to find out.
        self._durable = False
        self._pending_digests: dict[tuple[str, str], CachedDigest] = {}
        # After _BULK_AFTER single lookups, the whole table is read once into
        # memory (ninja's "load the log once"): a large rerun then costs one
        # query instead of two per task. A snapshot that another process
        # outdates is safe: a task it lacks runs again; a record it keeps
        # still only matches files that are as that record left them.
        self._records: dict[str, TaskRecord | SnapshotRow | None] | None = None
        self._digests: dict[tuple[str, str], CachedDigest | DigestRow] | None = None
        self._record_lookups = 0
        self._written: set[str] = set()
        self._digest_lookups = 0
        self.run_id: int | None = None
        # The records this run was given, and what became of each (what it
        # considered, and its counts when it ends).
        self._considered = Considered()
        # The ids of the records read by _select (the snapshot's rows hold theirs).
        self._ids: dict[str, int | None] = {}
        # Set by end_run: what drops older runs' considered sets.
        self._prune: Callable[[sqlite3.Connection], None] | None = None
        # See written_elsewhere(); a dry run's copy in memory never knows.
        self._elsewhere = read_only
        # A dry run's copy in memory, or the file: checked (moved aside if it
        # cannot be used), created or upgraded (see _ledger_schema).
        opened = (open_snapshot if read_only else open_ledger)(self.path, lambda: self._workspace_key(create=False))
        self._conn = opened.conn
        self._decisions = Decisions(self._conn, self.written_elsewhere)
        self._had_tasks = opened.had_tasks
        self._data_version = opened.data_version

    # -- runs -------------------------------------------------------------------

    def begin_run(self, n_workers: int) -> None:
        """Record the start of a run (one TaskGraph object)."""
        from taskgraph._version import __version__

        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO runs (started, pid, host, n_workers, version) VALUES (?,?,?,?,?)",
                (time.time(), os.getpid(), _host(), n_workers, __version__),
            )
            self.run_id = cursor.lastrowid

    def consider(self, record_key: str) -> None:
        """Note that this run was given the task (a lazy row): it is part of
        this run's graph whatever becomes of it."""
        if record_key not in self._considered.states:
            self._member(record_key, "pending")

    def _member(self, record_key: str, state: str) -> None:
        self._considered.note(record_key, state, self.run_id is not None)  # (a dry run records nothing)

    def end_run(self) -> None:
        """Record the end of the run with its counts; the next commit makes
        it the workspace's current graph (if it was given any task)."""
        if self.run_id is None:
            return
        run_id = self.run_id
        tasks, ran, skipped, failed = self._considered.end()  # (what had not finished is cancelled)
        self._rows[END_RUN].append((time.time(), tasks, ran, skipped, failed, run_id))
        self._durable = True
        if tasks and not self.read_only:
            keep = [
                run for run, pid, host in self._conn.execute(
                    "SELECT run_id, pid, host FROM runs WHERE run_id < ? AND ended IS NULL", (run_id,))
                if _process_may_run(pid, host)
            ]
            ids = self._considered.skipped_ids(self._record_id)
            states = self._considered.states
            self._prune = lambda conn: end_of_run(conn, run_id, keep, ids, states)

    # -- reading ----------------------------------------------------------------

    def lookup(self, record_key: str, fresh: bool = False) -> TaskRecord | None:
        """The ledger's record of a task, or None.

        Args:
            record_key: the task's record key.
            fresh: read the file even if a snapshot is loaded (another process
                may have recorded the task since), and update the snapshot.
        """
        if fresh:
            record = self._select(record_key)
            if self._records is not None:
                self._records[record_key] = record
            return record
        if record_key not in self._written:
            if self._records is None:
                self._record_lookups += 1
                if self._record_lookups <= _BULK_AFTER:
                    return self._select(record_key)
                self._records = self._load_records()
            entry = self._records.get(record_key)
            if entry is None or isinstance(entry, TaskRecord):
                return entry
            return snapshot_record(record_key, entry)
        return self._select(record_key)

    def written_elsewhere(self) -> bool:
        """Whether another connection (another process or graph on the
        workspace) has committed to the ledger since this one opened it.

        While it has not, every lookup is as fresh as a read of the file, so
        a decision need not be checked again once its task is claimed. One
        ``PRAGMA data_version`` (no read of the tables); once true, true for
        good, since the snapshot may then be out of date.
        """
        if not self._elsewhere:
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            self._elsewhere = version != self._data_version
        return self._elsewhere

    def _select(self, record_key: str) -> TaskRecord | None:
        row = self._conn.execute(
            "SELECT name, state, hash_algorithm, store_result, ended, error,"
            " EXISTS(SELECT 1 FROM results WHERE key=tasks.record_key), record_id"
            " FROM tasks WHERE record_key=?",
            (record_key,),
        ).fetchone()
        if row is None:
            return None
        self._ids[record_key] = row[7]
        inputs, targets = files_of(self._conn.execute(
            "SELECT role, path, mode, size, mtime_ns, digest, taken_at_ns FROM files"
            " WHERE record_key=?",
            (record_key,),
        ))
        name, state, algorithm, store_result, ended, error, has_result, _ = row
        return TaskRecord(
            record_key, name, state, algorithm, bool(store_result), inputs, targets,
            bool(has_result), ended, error,
        )

    def _load_records(self) -> dict[str, TaskRecord | SnapshotRow | None]:
        # Plain tuples of atoms, not TaskRecords: CPython's garbage collector
        # stops tracking them (and the dict), so at 100,000 tasks its full
        # collections do not walk the snapshot. lookup() builds the record.
        files: dict[str, list[FileRow]] = {}
        for row in self._conn.execute(
            "SELECT record_key, role, path, mode, size, mtime_ns, digest, taken_at_ns FROM files"
        ):
            listed = files.get(row[0])
            if listed is None:
                listed = files[row[0]] = []
            if type(row[2]) is not str:  # a name that is not UTF-8, stored as bytes
                row = (*row[:2], loaded_path(row[2]), *row[3:])
            listed.append(row[1:])
        with_result = {row[0] for row in self._conn.execute("SELECT key FROM results")}
        records: dict[str, TaskRecord | SnapshotRow | None] = {}
        for key, name, state, algorithm, store_result, ended, error, record_id in self._conn.execute(
            "SELECT record_key, name, state, hash_algorithm, store_result, ended, error, record_id FROM tasks"
        ):
            listed = files.get(key)
            records[key] = (
                name, state, algorithm, bool(store_result), ended, error, key in with_result,
                tuple(listed) if listed else (), record_id,
            )
        return records

    def _record_id(self, record_key: str) -> int | None:
        """The record's id, as read with its record (None if it has none)."""
        entry = self._records.get(record_key) if self._records is not None else None
        if type(entry) is tuple:
            return entry[8]
        return self._ids.get(record_key)

    def _load_digests(self) -> dict[tuple[str, str], CachedDigest | DigestRow]:
        # Plain tuples, for the garbage collector as in _load_records;
        # lookup_digest builds the entry.
        return {
            (loaded_path(row[0]), row[1]): row[2:]
            for row in self._conn.execute(
                "SELECT path, algorithm, dev, ino, size, mtime_ns, ctime_ns, is_dir, digest, hashed_at_ns"
                " FROM digests"
            )
        }

    def durations(self) -> tuple[dict[str, float], dict[tuple[str, str], tuple[int, float]]]:
        """How long recorded tasks took: each record's last duration, and per
        function (name, source hash) how many records and their total seconds."""
        by_record: dict[str, float] = {}
        by_function: dict[tuple[str, str], tuple[int, float]] = {}
        for key, func, source_hash, duration in self._conn.execute(
            "SELECT record_key, func, source_hash, duration FROM tasks "
            "WHERE state='done' AND duration IS NOT NULL"
        ):
            by_record[key] = duration
            count, total = by_function.get((func, source_hash), (0, 0.0))
            by_function[func, source_hash] = (count + 1, total + duration)
        return by_record, by_function

    def previous_by_name(self, name: str) -> Previous | None:
        """The latest record of a task with this name that this run has not
        been given (a sibling is not a previous version): explains why a task
        with no record of its own is new."""
        if not self._had_tasks:
            return None  # a new ledger: nothing to compare with
        for row in self._conn.execute(
            "SELECT record_key, task_key, func, source_hash, args, arguments FROM tasks WHERE name=?"
            " ORDER BY ended DESC LIMIT 64",
            (stored_text(name),),
        ):
            if row[0] not in self._considered.states:
                return Previous(*row)
        return None

    def load_result(self, record_key: str) -> Any:
        """The stored result of a task, unpickled only once its HMAC verifies.

        Raises:
            KeyError: if no result is stored.
            UntrustedResultError: if the HMAC is missing or wrong (the bytes
                were not written by taskgraph with this workspace's key).
        """
        row = self._conn.execute("SELECT value, mac FROM results WHERE key=?", (record_key,)).fetchone()
        if row is None:
            raise KeyError(record_key)
        value, mac = row
        key = self._workspace_key(create=not self.read_only)
        # Bound to the inputs the record holds: the ones the up-to-date check
        # just found unchanged on disk.
        record = self.lookup(record_key)
        run_key = exec_key(record_key, record.inputs if record is not None else {})
        if mac is None or key is None or not macs_equal(bytes(mac), result_mac(key, record_key, run_key, value)):
            if mac is None:
                # Results recorded before results were authenticated (a
                # schema-1 ledger, upgraded in place) have no code: expected,
                # not a sign of tampering.
                raise UntrustedResultError(
                    f"the stored result in {self.path} was recorded before taskgraph authenticated "
                    "stored results (the ledger was upgraded from an older schema), so it is not "
                    "unpickled: it is computed once more"
                )
            raise UntrustedResultError(
                f"the stored result in {self.path} was not unpickled because its authentication "
                "code does not match: the ledger was changed outside taskgraph, written by another "
                "tool, or copied from another workspace, or the result is that of another run of "
                "the task (computed from other input files) written back"
            )
        import sqlitedict  # only a graph with stored results pays for its import

        return sqlitedict.decode(value)

    def _workspace_key(self, create: bool = True) -> bytes | None:
        if self._key is None:
            path = self.path + KEY_SUFFIX
            try:
                self._key = workspace_key(path, create)
            except OSError as error:
                raise LedgerError(
                    f"cannot read or make the taskgraph key {path}: {error}. Check that the "
                    "workspace is writable and owned by you."
                ) from error
        return self._key

    # -- digest cache (a DigestCache for _fingerprint) ------------------------------

    def lookup_digest(self, path: str, algorithm: str) -> CachedDigest | None:
        pending = self._pending_digests.get((path, algorithm))
        if pending is not None:
            return pending
        if self._digests is None:
            self._digest_lookups += 1
            if self._digest_lookups > _BULK_AFTER:
                self._digests = self._load_digests()
        if self._digests is not None:
            entry = self._digests.get((path, algorithm))
            if entry is None or isinstance(entry, CachedDigest):
                return entry
            return cached_digest(entry)
        row = self._conn.execute(
            "SELECT dev, ino, size, mtime_ns, ctime_ns, is_dir, digest, hashed_at_ns"
            " FROM digests WHERE path=? AND algorithm=?",
            (stored_path(path), algorithm),
        ).fetchone()
        return None if row is None else cached_digest(row)

    def store_digest(self, path: str, algorithm: str, entry: CachedDigest) -> None:
        self._pending_digests[(path, algorithm)] = entry
        if self._digests is not None:
            self._digests[(path, algorithm)] = entry

    # -- writing ----------------------------------------------------------------

    def record(self, outcome: Outcome) -> None:
        """Buffer a finished task (done when ``outcome.error`` is None).

        Its rows go into the buffer together, after everything that can take
        time (the stored result's encoding and code, which may import
        sqlitedict and make the workspace's key): a Ctrl-C inside this call
        must not leave the task's row in the buffer without its result,
        since what is buffered is committed on the way out.
        """
        key = outcome.record_key
        state = "done" if outcome.error is None else "failed"
        failure = outcome.failure or (None, None, None)
        run_key = exec_key(key, outcome.inputs)
        mine: Rows = {UPSERT_TASK: [(
            key, outcome.task_key, run_key, stored_text(outcome.name), stored_text(outcome.func),
            outcome.source_hash, stored_text(outcome.args), outcome.hash_algorithm, int(outcome.store_result), state,
            self.run_id, outcome.started, outcome.ended, outcome.ended - outcome.started,
            stored_text(outcome.worker), stored_text(outcome.error), outcome.cpu_time, outcome.peak_memory,
            stored_text(failure[0]), stored_text(failure[1]), stored_text(failure[2]), stored_text(outcome.arguments),
            outcome.fresh,  # (its id, when it is new: see _ledger_considered.with_ids)
        )]}
        if not outcome.fresh:
            mine[DELETE_DEPS] = [(key,)]
        mine[INSERT_DEP] = [(key, dep) for dep in dict.fromkeys(outcome.deps)]
        if outcome.error is None:  # a failure keeps the last success's files, for explaining what changed
            if not outcome.fresh:
                mine[DELETE_FILES] = [(key,)]
                mine[DELETE_RESULT] = [(key,)]
            mine[INSERT_FILE] = [
                (key, role, stored_path(path), fp.mode, fp.size, fp.mtime_ns, fp.digest, fp.taken_at_ns)
                for role, files in (("input", outcome.inputs), ("target", outcome.targets))
                for path, fp in files.items()
            ]
            if outcome.store_result:
                import sqlitedict  # only a graph with stored results pays for its import

                value = sqlitedict.encode(outcome.result)
                secret = self._workspace_key()
                assert secret is not None  # made when missing
                mine[UPSERT_RESULT] = [(key, value, result_mac(secret, key, run_key, value))]
        append_all(self._rows, mine)
        self._decisions.recorded(key)  # (it was decided "new task": the record says so)
        self._written.add(key)  # from now on served by SQL, not the snapshot
        self._durable = True
        self._member(key, "ran" if outcome.error is None else "failed")

    def record_decision(self, record_key: str, name: str, run: bool, reasons: list[dict[str, Any]]) -> None:
        """Buffer the outcome of an up-to-date check (a lazy row)."""
        if reasons and any(reason.get("code") == "restored_from_cache" for reason in reasons):
            self._member(record_key, "restored")  # its targets came from the shared cache
        elif not run:
            self._member(record_key, "skipped")
        elif self._considered.states.get(record_key) not in ("ran", "failed", "restored"):
            self._member(record_key, "running")
        self._decisions.add(self._rows[DECISION], self.run_id, record_key, stored_text(name), run, reasons)

    def _lazy_rows(self) -> int:
        return (len(self._rows[DECISION]) + len(self._decisions.waiting) + self._considered.waiting()
                + len(self._pending_digests))

    def lazy_rows_full(self) -> bool:
        """Whether the lazy rows waiting are many enough to be committed
        now, not only with the next finished task's record."""
        return self._lazy_rows() >= _LAZY_LIMIT

    def flush(self, force: bool = False) -> None:
        """Commit buffered writes in one transaction.

        Finished tasks are always committed. Lazy rows (decisions, digests)
        are committed with them, when ``force`` is set, or once they are many.

        Raises:
            LedgerError: if the transaction cannot be committed (disk full,
                read-only file). The ledger keeps everything committed before.
        """
        if self.read_only:
            return
        lazy = self._lazy_rows()
        if not (self._durable or lazy >= _LAZY_LIMIT or (force and lazy)):
            return
        self._decisions.flush_into(self._rows[DECISION])
        rows, self._rows = self._rows, empty_rows()
        self._durable = False
        digests, self._pending_digests = self._pending_digests, {}
        taken = self._considered.take(self.run_id, self._record_id, rows)
        prune, self._prune = self._prune, None
        try:
            commit(self._conn, self.path, rows, digests, prune)
        except LedgerError as error:
            # What became of each task is kept for the next commit (the
            # current graph must list the records committed one at a time);
            # a task whose record did not go in ended failed.
            self._considered.not_committed(
                taken, [row[0] for row in rows[UPSERT_TASK] if row[0] not in error.committed])
            self._prune = prune
            raise
        self._considered.committed(taken)

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return transaction(self._conn, self.path)

    def close(self) -> None:
        """Commit what is buffered and close the connection (then, when no
        other connection is left, note that the file was closed cleanly)."""
        try:
            self.flush(force=True)
        finally:
            self._conn.close()
        if not self.read_only:
            stamp_clean_close(self.path)
