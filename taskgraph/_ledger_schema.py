"""The ledger's schema, and how a file in the workspace becomes a ledger.

Owns the schema and its version, the migrations from older schemas, checking
an existing file, moving a bad one aside, creating a new ledger, the dry run's
copy in memory and the command line's read-only connection. Leaf module: the
standard library, ``_ledger_keys``, ``_ledger_rows``, ``_errors`` and
``_version``.

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`, ``PRAGMA
application_id`` = :data:`APPLICATION_ID`)::

    meta    (key PK, value)                      created_by, created_at
    runs    (run_id PK, started, ended, pid, host, n_workers, version,
             tasks, ran, skipped, failed)        counts written when it ends (schema 4)
    tasks   (record_key PK, task_key, exec_key, name, func, source_hash, args,
             hash_algorithm, store_result, state 'done'|'failed', run_id,
             started, ended, duration, worker, error,
             cpu_time, peak_memory,                  the run report (schema 2)
             error_type, error_message, error_frames,  the failure as raised (schema 4)
             arguments,                              the arguments' tree, JSON (schema 4)
             record_id)                              its stable id (schema 5), never given
                                                 again: meta's last_record_id is the last
                                                 index tasks_by_name on name
    files   (record_key, role 'input'|'target', path, mode, size, mtime_ns,
             digest, taken_at_ns)                PK (record_key, role, path)
    deps    (record_key, dep_key)                PK (record_key, dep_key)
    digests (path, algorithm, dev, ino, size, mtime_ns, ctime_ns, is_dir,
             digest, hashed_at_ns)               PK (path, algorithm)
    results (key PK, value BLOB, mac BLOB)       a sqlitedict table: read it with
                                                 SqliteDict(path, tablename='results', journal_mode='WAL')
                                                 mac: HMAC-SHA256 of key, exec key and value
    decisions (record_key PK, run_id, decided_at, name, action 'run'|'skip', reasons)
                                                 the last decision written (see _ledger_decisions)
    considered (run_id, record_key, state)       PK (run_id, record_key): the records
                                                 each run was given, and what became of
                                                 each: 'ran', 'restored', 'skipped',
                                                 'failed', 'cancelled'; while it runs also
                                                 'pending' and 'running' (schema 4); but
                                                 for plain skips, which are packed:
    considered_skips (run_id, part, ids BLOB)    PK (run_id, part): per run and commit,
                                                 the ids of the records it skipped,
                                                 packed (schema 5, see _ledger_considered)

Runs and the current graph: every task added to a run is *considered* by it
(a row of ``considered`` or its id in a pack of ``considered_skips``, whether
it then ran, was skipped or was cancelled). The *current graph* is what the
latest run that ended (and was given at least one task) considered; every
other record is history. When a run ends, what the finished runs before it
considered is dropped, so the tables hold about one graph, not one per run;
a record's last consideration stays in ``decisions`` and ``tasks``.

A file that is not a taskgraph ledger (corrupt, foreign, or a schema this
version cannot upgrade) is renamed aside, never deleted, with a warning saying
every task will run once. An older schema that can be upgraded is migrated in
place, in one transaction that keeps every record (:data:`_MIGRATIONS`). A
ledger from a newer taskgraph is left alone and refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator

from taskgraph._errors import LedgerError
from taskgraph._fingerprint import Fingerprint
from taskgraph._frozen import frozen
from taskgraph._ledger_keys import macs_equal, private_file, result_mac, schema_2_mac
from taskgraph._ledger_rows import exec_key, fingerprint, loaded_path

LOGGER = logging.getLogger("taskgraph.Task")

LEDGER_FILENAME = "taskgraph_ledger.sqlite"
#: 2: tasks gained ``cpu_time`` and ``peak_memory``, results the ``mac`` column.
#: 3: the ``mac`` of a result also covers the exec key of its run.
#: 4: which records each run considered (``considered``, and counts in
#: ``runs``), failures as raised and the arguments' tree in ``tasks``.
#: 5: a run's plain skips packed per commit (``tasks.record_id``, ``considered_skips``).
#: Older ledgers are upgraded in place, see :data:`_MIGRATIONS`.
SCHEMA_VERSION = 5
APPLICATION_ID = 0x54475248  # "TGRH"
#: SQLite's files beside the ledger: the write-ahead log and its shared
#: memory (WAL mode), and the rollback journal.
WAL_SUFFIX = "-wal"
SHM_SUFFIX = "-shm"
JOURNAL_SUFFIX = "-journal"
#: The advisory lock held while the ledger is checked, moved aside, created or upgraded.
LOCK_SUFFIX = ".lock"
#: Every file beside the ledger that belongs to it, but for the claims
#: (``_claims.CLAIMS_SUFFIX``) and the key (``_ledger_keys.KEY_SUFFIX``).
SIDE_SUFFIXES = (WAL_SUFFIX, SHM_SUFFIX, JOURNAL_SUFFIX, LOCK_SUFFIX)
# SQLite's unix VFS holds a database's full path and the names of its
# journals (the path plus "-journal") in 512 bytes.
_SQLITE_MAX_PATH = 512
#: How long a connection waits for another process's write lock.
BUSY_TIMEOUT_S = 60.0
_CHECKPOINT_PAGES = 8192  # 32 MiB of 4 KiB pages
#: The workspace's key when it has one (it is not made): what the upgrade
#: from schema 2 signs results with again.
Secret = Callable[[], "bytes | None"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL, ended REAL, pid INTEGER, host TEXT,
    n_workers INTEGER, version TEXT,
    tasks INTEGER, ran INTEGER, skipped INTEGER, failed INTEGER);
CREATE TABLE IF NOT EXISTS tasks (
    record_key TEXT PRIMARY KEY,
    task_key TEXT NOT NULL,
    exec_key TEXT NOT NULL,
    name TEXT NOT NULL,
    func TEXT NOT NULL,
    source_hash TEXT NOT NULL,
    args TEXT NOT NULL,
    hash_algorithm TEXT NOT NULL,
    store_result INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('done', 'failed')),
    run_id INTEGER,
    started REAL, ended REAL, duration REAL,
    worker TEXT,
    error TEXT,
    cpu_time REAL,
    peak_memory INTEGER,
    error_type TEXT,
    error_message TEXT,
    error_frames TEXT,
    arguments TEXT,
    record_id INTEGER);
CREATE INDEX IF NOT EXISTS tasks_by_name ON tasks(name);
CREATE INDEX IF NOT EXISTS tasks_by_id ON tasks(record_id);
CREATE TABLE IF NOT EXISTS files (
    record_key TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('input', 'target')),
    path TEXT NOT NULL,
    mode TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    digest TEXT,
    taken_at_ns INTEGER NOT NULL,
    PRIMARY KEY (record_key, role, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deps (
    record_key TEXT NOT NULL,
    dep_key TEXT NOT NULL,
    PRIMARY KEY (record_key, dep_key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS digests (
    path TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, is_dir INTEGER NOT NULL,
    digest TEXT NOT NULL,
    hashed_at_ns INTEGER NOT NULL,
    PRIMARY KEY (path, algorithm)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value BLOB, mac BLOB);
CREATE TABLE IF NOT EXISTS decisions (
    record_key TEXT PRIMARY KEY,
    run_id INTEGER,
    decided_at REAL NOT NULL,
    name TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('run', 'skip')),
    reasons TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS considered (
    run_id INTEGER NOT NULL,
    record_key TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (run_id, record_key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS considered_skips (
    run_id INTEGER NOT NULL, part INTEGER NOT NULL, ids BLOB NOT NULL, PRIMARY KEY (run_id, part));
"""


def _bind_results_to_inputs(conn: sqlite3.Connection, read_secret: Secret) -> None:
    """The upgrade from schema 2: a result whose schema-2 HMAC (record key
    and bytes) verifies is signed again, binding it to the input
    fingerprints its record holds (what it was computed from); one that
    does not verify is left as it is and stays refused."""
    if conn.execute("SELECT NOT EXISTS(SELECT 1 FROM results WHERE mac IS NOT NULL)").fetchone()[0]:
        return
    secret = read_secret()
    if secret is None:
        return  # no key: no result can verify
    inputs: dict[str, dict[str, Fingerprint]] = {}
    for row in conn.execute(
        "SELECT record_key, path, mode, size, mtime_ns, digest, taken_at_ns FROM files WHERE role='input'"
    ):
        inputs.setdefault(row[0], {})[loaded_path(row[1])] = fingerprint(row[2:])
    signed = []
    for key, value, mac in conn.execute("SELECT key, value, mac FROM results WHERE mac IS NOT NULL"):
        if macs_equal(bytes(mac), schema_2_mac(secret, key, value)):
            signed.append((result_mac(secret, key, exec_key(key, inputs.get(key, {})), value), key))
    conn.executemany("UPDATE results SET mac=? WHERE key=?", signed)


# Schema upgrades: from version N, the statements that make version N + 1.
# New columns are added at the end of their table, so a migrated ledger has
# the same column order as a new one.
# A step is SQL, or a function of the connection and the workspace's key
# (run in the same transaction).
_MIGRATIONS: dict[int, tuple[str | Callable[[sqlite3.Connection, Secret], None], ...]] = {
    # Schema 1 results carry no HMAC: they fail their check, so tasks with
    # stored results run once more; every other record is kept as it is.
    1: ("ALTER TABLE tasks ADD COLUMN cpu_time REAL",
        "ALTER TABLE tasks ADD COLUMN peak_memory INTEGER",
        "ALTER TABLE results ADD COLUMN mac BLOB"),
    # Schema 2's HMAC covered record key and bytes only: results whose HMAC
    # verifies are signed again for the inputs their record holds.
    2: (_bind_results_to_inputs,),
    # Schema 3 kept only each record's last decision: the run of that
    # decision (or, without one, of its last execution) is the best account
    # of which run considered it. Runs before that have no count of tasks.
    3: ("ALTER TABLE tasks ADD COLUMN error_type TEXT",
        "ALTER TABLE tasks ADD COLUMN error_message TEXT",
        "ALTER TABLE tasks ADD COLUMN error_frames TEXT",
        "ALTER TABLE tasks ADD COLUMN arguments TEXT",
        "ALTER TABLE runs ADD COLUMN tasks INTEGER",
        "ALTER TABLE runs ADD COLUMN ran INTEGER",
        "ALTER TABLE runs ADD COLUMN skipped INTEGER",
        "ALTER TABLE runs ADD COLUMN failed INTEGER",
        "CREATE TABLE considered (run_id INTEGER NOT NULL, record_key TEXT NOT NULL, state TEXT NOT NULL,"
        " PRIMARY KEY (run_id, record_key)) WITHOUT ROWID",
        "INSERT OR IGNORE INTO considered SELECT d.run_id, d.record_key, CASE"
        " WHEN t.run_id = d.run_id AND t.state = 'done' AND d.reasons LIKE '%\"restored_from_cache\"%'"
        " THEN 'restored'"
        " WHEN t.run_id = d.run_id THEN (CASE t.state WHEN 'done' THEN 'ran' ELSE 'failed' END)"
        " WHEN d.action = 'skip' THEN 'skipped' ELSE 'cancelled' END"
        " FROM decisions d JOIN tasks t ON t.record_key = d.record_key WHERE d.run_id IS NOT NULL",
        "INSERT OR IGNORE INTO considered SELECT run_id, record_key,"
        " CASE state WHEN 'done' THEN 'ran' ELSE 'failed' END FROM tasks t WHERE run_id IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM decisions d WHERE d.record_key = t.record_key AND d.run_id IS NOT NULL)",
        "UPDATE runs SET tasks = (SELECT count(*) FROM considered c WHERE c.run_id = runs.run_id)"
        " WHERE ended IS NOT NULL"),
    # Schema 4's considered rows stay (a row says as much as a pack); each
    # record gets its id, in the order the records were written.
    4: ("ALTER TABLE tasks ADD COLUMN record_id INTEGER",
        "UPDATE tasks SET record_id = rowid",
        "CREATE INDEX tasks_by_id ON tasks(record_id)",
        "INSERT OR REPLACE INTO meta VALUES ('last_record_id', (SELECT coalesce(max(record_id), 0) FROM tasks))",
        "CREATE TABLE considered_skips (run_id INTEGER NOT NULL, part INTEGER NOT NULL, ids BLOB NOT NULL,"
        " PRIMARY KEY (run_id, part))"),
}
_EXPECTED_TABLES = {"meta", "runs", "tasks", "files", "deps", "digests", "results", "decisions", "considered",
                    "considered_skips"}
#: Tables a migration creates: a ledger of an older schema does not have them yet.
_TABLES_SINCE = {"considered": 4, "considered_skips": 5}


def _open_problem(path: str, error: BaseException) -> LedgerError | None:
    """The real reason SQLite cannot open ``path``, when it is the length of
    its path (SQLite's "unable to open database file" says nothing of it)."""
    try:
        full = len(os.fsencode(os.path.realpath(path)))
    except (OSError, ValueError):
        return None
    if full + len(JOURNAL_SUFFIX) <= _SQLITE_MAX_PATH:
        return None
    most = _SQLITE_MAX_PATH - len(JOURNAL_SUFFIX) - len(os.sep + LEDGER_FILENAME)
    return LedgerError(
        f"cannot open the taskgraph ledger {path}: its absolute path is {full} bytes long, and "
        f"SQLite opens a database only if its path and its journal's (the path plus "
        f"{JOURNAL_SUFFIX!r}) fit in {_SQLITE_MAX_PATH} bytes ({error}). Use a workspace whose "
        f"absolute path (symbolic links resolved) is at most {most} bytes long; this one is "
        f"{full - len(os.sep + LEDGER_FILENAME)} bytes."
    )


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[int | None]:
    """Hold an exclusive advisory lock on ``path``, giving its descriptor
    (open for writing); POSIX only: elsewhere it locks nothing and gives None."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield None
        return
    fd = private_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


def _upgrade(conn: sqlite3.Connection, secret: Secret | None) -> int:
    """Run the migrations from the connection's schema to :data:`SCHEMA_VERSION`
    in one transaction; returns the version it started from.

    A step that is a function needs the workspace's key (it re-signs stored
    results); without one (the command line's copy in memory, which never
    unpickles a result) it is left out.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have upgraded it while this one waited.
        version = start = conn.execute("PRAGMA user_version").fetchone()[0]
        while version < SCHEMA_VERSION:
            for step in _MIGRATIONS[version]:
                if callable(step):
                    if secret is not None:
                        step(conn, secret)
                else:
                    conn.execute(step)
            version += 1
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(start)


@frozen
class Opened:
    """A connection to a ledger of the current schema, and what opening it found."""

    conn: sqlite3.Connection
    #: Whether the ledger held any record (a new ledger has nothing to compare with).
    had_tasks: bool
    #: ``PRAGMA data_version`` when it was opened: it changes when another
    #: connection commits.
    data_version: int


def open_ledger(path: str, read_secret: Secret) -> Opened:
    """The workspace's ledger at ``path``, opened for writing: under the
    advisory lock, an existing file is checked (and moved aside if it cannot
    be used), a new one created, an older schema upgraded.

    Raises:
        LedgerError: the ledger cannot be opened (saying what to check), is
            of a newer schema, or its path is too long for SQLite.
    """
    try:
        with _file_lock(path + LOCK_SUFFIX):
            if os.path.exists(path) and os.path.getsize(path) > 0:
                problem = _check_existing(path, read_only=False)
                if problem is not None:
                    _move_aside(path, problem)
            if not os.path.exists(path):
                # SQLite gives its -wal and -shm files the mode of the database.
                os.close(private_file(path))
            return _prepare(_connect(path), path, read_secret)
    except sqlite3.Error as error:
        raise _open_problem(path, error) or LedgerError(
            f"cannot open the taskgraph ledger {path}: {error}. Check that the "
            "workspace is writable and the disk is not full."
        ) from error
    except OSError as error:
        raise LedgerError(
            f"cannot open the taskgraph ledger {path}: {error}. Check that the "
            "workspace exists and is writable."
        ) from error


def open_snapshot(path: str, read_secret: Secret) -> Opened:
    """A dry run's ledger: an in-memory copy of the workspace's ledger
    (upgraded there if its schema is older), or an empty one when there is
    none or it could not be used (every task would then run). The file is
    only read."""
    memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    problem: str | None = "there is none"
    if os.path.exists(path) and os.path.getsize(path) > 0:
        problem = _check_existing(path, read_only=True)
        if problem is None:
            try:
                source = sqlite3.connect(_read_only_uri(path), uri=True, timeout=BUSY_TIMEOUT_S)
                try:
                    source.backup(memory)
                finally:
                    source.close()
            except sqlite3.Error as error:
                problem = f"it cannot be read ({error})"
                memory.close()  # a partial copy is not a ledger: start empty
                memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    if problem is not None:
        LOGGER.info("dry run: the taskgraph ledger %s is not used because %s; every task would run",
                    path, problem)
    return _prepare(memory, path, read_secret)


def open_to_read(path: str) -> tuple[sqlite3.Connection, int]:
    """A read-only connection to the ledger at ``path`` for the command line,
    and the schema of the file. A ledger of an older schema is read as the
    next run will upgrade it: it is copied into memory and upgraded there;
    the file is not changed.

    Raises:
        LedgerError: it is not a taskgraph ledger, was written by a newer
            taskgraph, or is older than any upgrade; the message is one line
            and says what the path is instead.
    """
    import urllib.parse  # the command line's reads only

    try:
        uri = "file:" + urllib.parse.quote(os.fsencode(os.path.abspath(path))) + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as error:
        raise _open_problem(path, error) or LedgerError(
            f"{path} is not a readable taskgraph ledger ({error})") from error
    if app_id != APPLICATION_ID:
        raise LedgerError(f"{path} was not written by this taskgraph (it is another SQLite file)")
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"{path} was written by a newer taskgraph (schema {version}; this one reads "
            f"{SCHEMA_VERSION}): upgrade taskgraph to read it"
        )
    if version < min(_MIGRATIONS, default=SCHEMA_VERSION):
        raise LedgerError(
            f"{path} has an older schema ({version}); the next run of the pipeline "
            "upgrades it (or, if it is older than schema 1, moves it aside)"
        )
    if version < SCHEMA_VERSION:
        memory = sqlite3.connect(":memory:", isolation_level=None)
        try:
            conn.backup(memory)
            _upgrade(memory, None)
        except sqlite3.DatabaseError as error:
            memory.close()
            raise LedgerError(f"cannot read {path} (schema {version}): {error}") from error
        finally:
            conn.close()
        conn = memory
    return conn, int(version)


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    # With synchronous=NORMAL, checkpoints are the only fsyncs: one per
    # _CHECKPOINT_PAGES pages of WAL instead of SQLite's default 1,000
    # (4 MiB), which short tasks' group commits reach every few dozen
    # commits. The WAL may grow to this before it is copied back.
    conn.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
    return conn


def _prepare(conn: sqlite3.Connection, path: str, read_secret: Secret) -> Opened:
    """Create the schema of a new ledger or upgrade an older one."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        _create(conn)
    elif version < SCHEMA_VERSION:
        _migrate(conn, path, read_secret)
    had_tasks = conn.execute("SELECT EXISTS(SELECT 1 FROM tasks)").fetchone()[0] == 1
    return Opened(conn, had_tasks, conn.execute("PRAGMA data_version").fetchone()[0])


def _read_only_uri(path: str) -> str:
    """Opens the ledger without writing anything beside it. With no WAL
    file, every commit is in the database file: ``immutable`` reads it
    with no -shm or -wal made. A WAL file means a writer may be active:
    ``mode=ro`` then reads through it (its -shm exists already)."""
    import pathlib  # (read-only opens: the command line)

    uri = pathlib.Path(path).resolve().as_uri()
    return f"{uri}?mode=ro" if os.path.exists(path + WAL_SUFFIX) else f"{uri}?immutable=1"


def _stamp(path: str) -> bytes | None:
    """The ledger file's identity and state as ``os.stat`` sees it, or None
    when a write-ahead log beside it holds commits not yet copied back."""
    try:
        if os.path.getsize(path + WAL_SUFFIX) > 0:
            return None
    except OSError:
        pass  # no WAL: every commit is in the file
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"clean {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}\n".encode()


def stamp_clean_close(path: str) -> None:
    """After the last connection closed cleanly: note the file's state in
    its lock file, so that the next open can skip ``PRAGMA quick_check``
    (a read of the whole file) while nothing has touched it since. Any
    write, by SQLite or anything else, changes its ctime; a WAL left by
    another process's connection means no stamp."""
    with contextlib.suppress(OSError), _file_lock(path + LOCK_SUFFIX) as fd:
        stamp = _stamp(path)
        if stamp is not None and fd is not None:  # (no lock, no stamp: always checked)
            os.ftruncate(fd, 0)
            os.pwrite(fd, stamp, 0)


def _closed_clean(path: str) -> bool:
    """Whether the file is as the last clean close left it (see :func:`stamp_clean_close`)."""
    stamp = _stamp(path)
    if stamp is None:
        return False
    try:
        with open(path + LOCK_SUFFIX, "rb") as stream:
            return stream.read(256) == stamp
    except OSError:
        return False


def _check_existing(path: str, read_only: bool) -> str | None:
    """Why the existing file cannot be used as it is, or None if it can.

    ``PRAGMA quick_check`` reads the whole file (half a second for 100,000
    records): it is skipped when the file is exactly as a clean close left
    it, so a corruption from outside (a disk error, a copy of a live file,
    another tool) is still found the next time it is opened after any change.
    """
    try:
        target = _read_only_uri(path) if read_only else path
        conn = sqlite3.connect(target, uri=read_only, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.DatabaseError as error:
        too_long = _open_problem(path, error)
        if too_long is not None:
            raise too_long from error  # the file may be fine: never move it aside for this
        return f"it cannot be opened ({error})"
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        check = "ok" if _closed_clean(path) else conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as error:
        too_long = _open_problem(path, error)
        if too_long is not None:
            raise too_long from error
        return f"it is not a readable SQLite database ({error})"
    finally:
        conn.close()
    if check != "ok":
        return f"SQLite reports it corrupt ({check})"
    if app_id == 0 and not tables:
        return None  # an empty database: initialise it in place
    if app_id != APPLICATION_ID:
        return "it was not written by this taskgraph (a natcap taskgraph or other database)"
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"the ledger {path} was written by a newer taskgraph (schema "
            f"{version}, this taskgraph reads schema {SCHEMA_VERSION}). Upgrade "
            "taskgraph, or move that file away to start a new ledger."
        )
    if version < SCHEMA_VERSION and any(v not in _MIGRATIONS for v in range(version, SCHEMA_VERSION)):
        return f"it has an older schema ({version}, now {SCHEMA_VERSION}) that cannot be upgraded"
    expected = {name for name in _EXPECTED_TABLES if _TABLES_SINCE.get(name, 0) <= version}
    if not expected <= tables:
        return f"tables are missing: {sorted(expected - tables)}"
    return None


def _move_aside(path: str, problem: str) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = f"{path}.{stamp}.bad"
    counter = 1
    while os.path.exists(aside):
        counter += 1
        aside = f"{path}.{stamp}-{counter}.bad"
    os.rename(path, aside)
    for suffix in (WAL_SUFFIX, SHM_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            os.rename(path + suffix, aside + suffix)
    LOGGER.warning(
        "the taskgraph ledger %s could not be used because %s; it was moved to %s "
        "and a new ledger started, so every task will run once.",
        path, problem, aside,
    )


def _create(conn: sqlite3.Connection) -> None:
    from taskgraph._version import __version__

    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('created_by', ?), ('created_at', ?)",
                (f"taskgraph {__version__}", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            )
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _migrate(conn: sqlite3.Connection, path: str, read_secret: Secret) -> None:
    """Upgrade an older schema in place, keeping every record."""
    start = _upgrade(conn, read_secret)
    if start < SCHEMA_VERSION:
        LOGGER.info("the taskgraph ledger %s was upgraded from schema %d to %d; every record was kept",
                    path, start, SCHEMA_VERSION)
