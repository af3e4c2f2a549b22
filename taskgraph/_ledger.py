"""The ledger: one SQLite file in the workspace recording every finished task.

Leaf module: the only module that speaks SQL. Imports the standard library,
sqlitedict (for the encoding of stored results) and ``_fingerprint`` /
``_errors``.

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`, ``PRAGMA
application_id`` = :data:`APPLICATION_ID`)::

    meta    (key PK, value)                      created_by, created_at
    runs    (run_id PK, started, ended, pid, host, n_workers, version)
    tasks   (record_key PK, task_key, exec_key, name, func, source_hash, args,
             hash_algorithm, store_result, state 'done'|'failed', run_id,
             started, ended, duration, worker, error,
             cpu_time, peak_memory)                  the run report (schema 2)
    files   (record_key, role 'input'|'target', path, mode, size, mtime_ns,
             digest, taken_at_ns)                PK (record_key, role, path)
    deps    (record_key, dep_key)                PK (record_key, dep_key)
    digests (path, algorithm, dev, ino, size, mtime_ns, ctime_ns, is_dir,
             digest, hashed_at_ns)               PK (path, algorithm)
    results (key PK, value BLOB, mac BLOB)       a sqlitedict table: read it with
                                                 SqliteDict(path, tablename='results', journal_mode='WAL')
                                                 mac: HMAC-SHA256 of key, exec key and value

Paths (``files.path``, ``digests.path``) are TEXT, except a file name that is
not valid UTF-8 (``os.listdir`` returns such names with surrogate escapes):
it is stored as a BLOB of the file system's own bytes (``os.fsencode``), so it
is kept exactly. Other text (names, arguments, errors) that is not valid UTF-8
is stored with backslash escapes.

Durability: WAL journal, ``synchronous=NORMAL``: a commit survives the process
being killed at any moment (it may be lost only to a power cut, never
corrupted). All writes of a batch of finished tasks (their row, files, deps and
stored result) commit in one ``BEGIN IMMEDIATE`` transaction, so a task is
never recorded as done without its result. Other processes on the same
workspace wait on SQLite's busy timeout instead of failing.

A file that is not a taskgraph ledger (corrupt, foreign, or a schema this
version cannot upgrade) is renamed aside, never deleted, with a warning saying
every task will run once. An older schema that can be upgraded is migrated in
place, in one transaction that keeps every record (:data:`_MIGRATIONS`). A
ledger from a newer taskgraph is left alone and refused.

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
import hashlib
import hmac
import json
import logging
import os
import pathlib
import secrets
import socket
import sqlite3
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlitedict
import xxhash

from taskgraph._errors import LedgerError
from taskgraph._fingerprint import CachedDigest, FileStat, Fingerprint

LOGGER = logging.getLogger("taskgraph.Task")

LEDGER_FILENAME = "taskgraph_ledger.sqlite"
#: The workspace's secret for the HMAC of stored results (beside the ledger).
KEY_SUFFIX = ".key"
#: 2: tasks gained ``cpu_time`` and ``peak_memory``, results the ``mac`` column
#: (a schema-1 ledger is upgraded in place, see :data:`_MIGRATIONS`).
#: 3: the ``mac`` of a result also covers the exec key of its run.
SCHEMA_VERSION = 3
_KEY_BYTES = 32
_MAC_CONTEXT = b"taskgraph stored result v2\0"
# Schema 2's HMAC: record key and bytes only (checked once, by the upgrade).
_MAC_CONTEXT_V1 = b"taskgraph stored result v1\0"
# SQLite's unix VFS holds a database's full path and the names of its
# journals (the path plus "-journal") in 512 bytes.
_SQLITE_MAX_PATH = 512
_JOURNAL_SUFFIX = "-journal"
#: Files taskgraph creates in a workspace are for their owner's eyes only.
FILE_MODE = 0o600
APPLICATION_ID = 0x54475248  # "TGRH"
_BUSY_TIMEOUT_S = 60.0
_BULK_AFTER = 64
_LOCK_RETRIES = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL, ended REAL, pid INTEGER, host TEXT,
    n_workers INTEGER, version TEXT);
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
    peak_memory INTEGER);
CREATE INDEX IF NOT EXISTS tasks_by_name ON tasks(name);
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
"""
# Buffered writes, in the order a flush runs them: deletes before inserts.
_DELETE_FILES = "DELETE FROM files WHERE record_key=?"
_DELETE_DEPS = "DELETE FROM deps WHERE record_key=?"
_DELETE_RESULT = "DELETE FROM results WHERE key=?"
_UPSERT_TASK = "INSERT OR REPLACE INTO tasks VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_INSERT_FILE = "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?)"
_INSERT_DEP = "INSERT OR REPLACE INTO deps VALUES (?,?)"
_UPSERT_RESULT = "INSERT OR REPLACE INTO results (key, value, mac) VALUES (?,?,?)"
_END_RUN = "UPDATE runs SET ended=? WHERE run_id=?"
_DECISION = "INSERT OR REPLACE INTO decisions VALUES (?,?,?,?,?,?)"
_STATEMENTS = (
    _DELETE_FILES, _DELETE_DEPS, _DELETE_RESULT, _UPSERT_TASK, _INSERT_FILE, _INSERT_DEP,
    _UPSERT_RESULT, _END_RUN, _DECISION,
)
# Rows whose loss costs nothing but a little work (a decision's explanation, a
# cached digest) ride along with the next commit instead of forcing one.
_LAZY_LIMIT = 4096
# Schema upgrades: from version N, the statements that make version N + 1.
# New columns are added at the end of their table, so a migrated ledger has
# the same column order as a new one.
# A step is SQL, or a function of the ledger and the connection (run in the
# same transaction).
_MIGRATIONS: dict[int, tuple[str | Callable[[Ledger, sqlite3.Connection], None], ...]] = {
    # Schema 1 results carry no HMAC: they fail their check, so tasks with
    # stored results run once more; every other record is kept as it is.
    1: ("ALTER TABLE tasks ADD COLUMN cpu_time REAL",
        "ALTER TABLE tasks ADD COLUMN peak_memory INTEGER",
        "ALTER TABLE results ADD COLUMN mac BLOB"),
    # Schema 2's HMAC covered record key and bytes only: results whose HMAC
    # verifies are signed again for the inputs their record holds.
    2: (lambda ledger, conn: ledger._bind_results_to_inputs(conn),),
}
_EXPECTED_TABLES = {"meta", "runs", "tasks", "files", "deps", "digests", "results", "decisions"}


class UntrustedResultError(LedgerError):
    """A stored result failed its authentication check and was not unpickled.

    Raised by :meth:`Ledger.load_result`; the scheduler catches it and runs
    the task again, so users see a warning, not this error.
    """


def _private_file(path: str, flags: int = os.O_RDWR) -> int:
    """Open (creating if missing) a file only its owner may read or write."""
    return os.open(path, flags | os.O_CREAT, FILE_MODE)


def _read_key(path: str) -> bytes | None:
    """The workspace key, or None if the file is damaged or not trustworthy
    (then it is moved aside with a warning)."""
    with open(path, "rb") as stream:
        info = os.fstat(stream.fileno())
        key = stream.read(_KEY_BYTES + 1)
    problem = None
    if len(key) != _KEY_BYTES:
        problem = f"it holds {len(key)} bytes instead of {_KEY_BYTES}"
    elif hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        problem = f"it belongs to another user (uid {info.st_uid})"
    if problem is None:
        if os.name == "posix" and info.st_mode & 0o077:  # (Windows has no such mode bits)
            # Others could read the secret: tighten, and say so.
            os.chmod(path, FILE_MODE)
            LOGGER.warning(
                "the taskgraph key %s was readable by other users; it is now readable by its "
                "owner only. If others may have copied it, delete it: stored results will "
                "then be computed again.", path,
            )
        return key
    aside = f"{path}.{time.strftime('%Y%m%dT%H%M%S')}.{secrets.token_hex(3)}.bad"
    os.rename(path, aside)
    LOGGER.warning(
        "the taskgraph key %s cannot be used because %s; it was moved to %s and a new key "
        "made, so tasks with stored results will run once.", path, problem, aside,
    )
    return None


def workspace_key(path: str, create: bool = True) -> bytes | None:
    """The secret keying the HMAC of stored results, made on first use.

    Creation is atomic: the random bytes are written to a private temporary
    file, which is then hard-linked to ``path``; the link fails if another
    process made the key first, and that key is used. None if there is no key
    and ``create`` is False.
    """
    for _ in range(3):
        try:
            key = _read_key(path)
        except FileNotFoundError:
            key = None
        if key is not None:
            return key
        if not create:
            return None
        temporary = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = _private_file(temporary, os.O_WRONLY | os.O_EXCL)
        try:
            os.write(fd, secrets.token_bytes(_KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        except OSError:
            # No hard links on this file system: an exclusive rename instead
            # (a reader may then briefly see no key, never half a key).
            if not os.path.exists(path):
                os.replace(temporary, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
    raise LedgerError(f"cannot make the taskgraph key {path}: it keeps being replaced or damaged")


def result_mac(key: bytes, record_key: str, run_key: str, value: bytes) -> bytes:
    """HMAC-SHA256 binding a stored result's bytes to its task's record key
    and to the exec key of the run that computed it (``run_key``: the input
    fingerprints of that run), so that the result of one run cannot stand in
    for another's."""
    message = _MAC_CONTEXT + record_key.encode() + b"\0" + run_key.encode() + b"\0" + bytes(value)
    return hmac.new(key, message, hashlib.sha256).digest()


def _schema_2_mac(key: bytes, record_key: str, value: bytes) -> bytes:
    message = _MAC_CONTEXT_V1 + record_key.encode() + b"\0" + bytes(value)
    return hmac.new(key, message, hashlib.sha256).digest()


def stored_path(path: str) -> str | bytes:
    """A path as the ledger stores it: its text, or, for a name that is not
    valid UTF-8, the file system's own bytes (kept exactly)."""
    if path.isascii():
        return path
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return os.fsencode(path)
        except UnicodeError:  # not a file name on this system at all
            return path.encode("utf-8", "surrogatepass")
    return path


def loaded_path(value: str | bytes) -> str:
    """A path as the ledger stored it, back as ``str`` (with surrogate escapes
    for bytes that are not UTF-8, as ``os.listdir`` returns it)."""
    return value if type(value) is str else os.fsdecode(value)


def _text(value: str | None) -> str | None:
    """Text for a TEXT column: as it is when valid UTF-8, else with the
    characters that are not (lone surrogates) as backslash escapes."""
    if value is None or value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _open_problem(path: str, error: BaseException) -> LedgerError | None:
    """The real reason SQLite cannot open ``path``, when it is the length of
    its path (SQLite's "unable to open database file" says nothing of it)."""
    try:
        full = len(os.fsencode(os.path.realpath(path)))
    except (OSError, ValueError):
        return None
    if full + len(_JOURNAL_SUFFIX) <= _SQLITE_MAX_PATH:
        return None
    most = _SQLITE_MAX_PATH - len(_JOURNAL_SUFFIX) - len(os.sep + LEDGER_FILENAME)
    return LedgerError(
        f"cannot open the taskgraph ledger {path}: its absolute path is {full} bytes long, and "
        f"SQLite opens a database only if its path and its journal's (the path plus "
        f"{_JOURNAL_SUFFIX!r}) fit in {_SQLITE_MAX_PATH} bytes ({error}). Use a workspace whose "
        f"absolute path (symbolic links resolved) is at most {most} bytes long; this one is "
        f"{full - len(os.sep + LEDGER_FILENAME)} bytes."
    )


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """What the ledger holds about one task."""

    record_key: str
    name: str
    state: str
    hash_algorithm: str
    store_result: bool
    inputs: dict[str, Fingerprint]
    targets: dict[str, Fingerprint]
    has_result: bool
    ended: float | None
    error: str | None


# A task in the ledger's snapshot: (name, state, hash_algorithm,
# store_result, ended, error, has_result, files), each file (role, path, mode,
# size, mtime_ns, digest, taken_at_ns).
_FileRow = tuple[str, str, str, int, int, "str | None", int]
_SnapshotRow = tuple[str, str, str, bool, "float | None", "str | None", bool, tuple[_FileRow, ...]]


# A digest cache row in the snapshot: (dev, ino, size, mtime_ns, ctime_ns,
# is_dir, digest, hashed_at_ns).
_DigestRow = tuple[int, int, int, int, int, int, str, int]


def _from_row(record_key: str, row: _SnapshotRow) -> TaskRecord:
    name, state, algorithm, store_result, ended, error, has_result, files = row
    if not files:
        return TaskRecord(record_key, name, state, algorithm, store_result, {}, {}, has_result, ended, error)
    inputs: dict[str, Fingerprint] = {}
    targets: dict[str, Fingerprint] = {}
    for role, path, mode, size, mtime_ns, digest, taken_at_ns in files:
        (inputs if role == "input" else targets)[path] = Fingerprint(mode, size, mtime_ns, digest, taken_at_ns)
    return TaskRecord(record_key, name, state, algorithm, store_result, inputs, targets, has_result, ended, error)


@dataclass(slots=True)
class Outcome:
    """A finished task as the scheduler hands it to the ledger."""

    record_key: str
    task_key: str
    name: str
    func: str
    source_hash: str
    args: str
    hash_algorithm: str
    store_result: bool
    started: float
    ended: float
    worker: str
    inputs: dict[str, Fingerprint] = field(default_factory=dict)
    targets: dict[str, Fingerprint] = field(default_factory=dict)
    deps: Sequence[str] = ()
    result: Any = None
    error: str | None = None
    #: True when the ledger held no record of this task before this run.
    fresh: bool = False
    #: The run report: CPU seconds and peak resident memory (bytes), if measured.
    cpu_time: float | None = None
    peak_memory: int | None = None


def exec_key(record_key: str, inputs: dict[str, Fingerprint]) -> str:
    """The re-execution key: the task's record key and what its input files
    were (path, size, mtime, digest) when it last ran. Equal keys mean the
    same call on the same inputs."""
    hasher = xxhash.xxh3_128(record_key.encode())
    for path in sorted(inputs):
        fp = inputs[path]
        hasher.update(f"\0{path}\0{fp.mode}\0{fp.size}\0{fp.mtime_ns}\0{fp.digest}".encode(
            "utf-8", "surrogatepass"))
    return str(hasher.hexdigest())


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (POSIX; a no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = _private_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


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
        # Buffered writes, statement -> rows, run in _STATEMENTS order by flush().
        self._rows: dict[str, list[tuple[Any, ...]]] = {sql: [] for sql in _STATEMENTS}
        # Whether _rows holds more than lazy decision rows: flush runs after
        # every task, so it must not scan the statements to find out.
        self._durable = False
        self._pending_digests: dict[tuple[str, str], CachedDigest] = {}
        # After _BULK_AFTER single lookups, the whole table is read once into
        # memory (ninja's "load the log once"): a large rerun then costs one
        # query instead of two per task. A snapshot that another process
        # outdates is safe: a task it lacks runs again; a record it keeps
        # still only matches files that are as that record left them.
        self._records: dict[str, TaskRecord | _SnapshotRow | None] | None = None
        self._digests: dict[tuple[str, str], CachedDigest | _DigestRow] | None = None
        self._record_lookups = 0
        self._written: set[str] = set()
        self._digest_lookups = 0
        self.run_id: int | None = None
        if read_only:
            self._conn = self._open_snapshot()
            return
        try:
            with _file_lock(self.path + ".lock"):
                self._conn = self._open()
        except sqlite3.Error as error:
            raise _open_problem(self.path, error) or LedgerError(
                f"cannot open the taskgraph ledger {self.path}: {error}. Check that the "
                "workspace is writable and the disk is not full."
            ) from error
        except OSError as error:
            raise LedgerError(
                f"cannot open the taskgraph ledger {self.path}: {error}. Check that the "
                "workspace exists and is writable."
            ) from error

    # -- opening --------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _open(self) -> sqlite3.Connection:
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            problem = self._check_existing()
            if problem is not None:
                self._move_aside(problem)
        if not os.path.exists(self.path):
            # SQLite gives its -wal and -shm files the mode of the database.
            os.close(_private_file(self.path))
        return self._prepare(self._connect())

    def _prepare(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """Create the schema of a new ledger or upgrade an older one."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            self._create(conn)
        elif version < SCHEMA_VERSION:
            self._migrate(conn)
        self._had_tasks = conn.execute("SELECT EXISTS(SELECT 1 FROM tasks)").fetchone()[0] == 1
        return conn

    def _read_only_uri(self) -> str:
        """Opens the ledger without writing anything beside it. With no WAL
        file, every commit is in the database file: ``immutable`` reads it
        with no -shm or -wal made. A WAL file means a writer may be active:
        ``mode=ro`` then reads through it (its -shm exists already)."""
        uri = pathlib.Path(self.path).resolve().as_uri()
        return f"{uri}?mode=ro" if os.path.exists(self.path + "-wal") else f"{uri}?immutable=1"

    def _open_snapshot(self) -> sqlite3.Connection:
        """A dry run's ledger: an in-memory copy of the workspace's ledger
        (upgraded there if its schema is older), or an empty one when there is
        none or it could not be used (every task would then run). The file is
        only read."""
        memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        problem: str | None = "there is none"
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            problem = self._check_existing()
            if problem is None:
                try:
                    source = sqlite3.connect(self._read_only_uri(), uri=True, timeout=_BUSY_TIMEOUT_S)
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
                        self.path, problem)
        return self._prepare(memory)

    def _check_existing(self) -> str | None:
        """Why the existing file cannot be used as it is, or None if it can."""
        try:
            target = self._read_only_uri() if self.read_only else self.path
            conn = sqlite3.connect(target, uri=self.read_only, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.DatabaseError as error:
            too_long = _open_problem(self.path, error)
            if too_long is not None:
                raise too_long from error  # the file may be fine: never move it aside for this
            return f"it cannot be opened ({error})"
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as error:
            too_long = _open_problem(self.path, error)
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
                f"the ledger {self.path} was written by a newer taskgraph (schema "
                f"{version}, this taskgraph reads schema {SCHEMA_VERSION}). Upgrade "
                "taskgraph, or move that file away to start a new ledger."
            )
        if version < SCHEMA_VERSION and any(v not in _MIGRATIONS for v in range(version, SCHEMA_VERSION)):
            return f"it has an older schema ({version}, now {SCHEMA_VERSION}) that cannot be upgraded"
        if not _EXPECTED_TABLES <= tables:
            return f"tables are missing: {sorted(_EXPECTED_TABLES - tables)}"
        return None

    def _move_aside(self, problem: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = f"{self.path}.{stamp}.bad"
        counter = 1
        while os.path.exists(aside):
            counter += 1
            aside = f"{self.path}.{stamp}-{counter}.bad"
        os.rename(self.path, aside)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.path + suffix, aside + suffix)
        LOGGER.warning(
            "the taskgraph ledger %s could not be used because %s; it was moved to %s "
            "and a new ledger started, so every task will run once.",
            self.path, problem, aside,
        )

    def _create(self, conn: sqlite3.Connection) -> None:
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

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Upgrade an older schema in place, keeping every record."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have upgraded it while this one waited.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            start = version
            while version < SCHEMA_VERSION:
                for step in _MIGRATIONS[version]:
                    if callable(step):
                        step(self, conn)
                    else:
                        conn.execute(step)
                version += 1
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if start < SCHEMA_VERSION:
            LOGGER.info("the taskgraph ledger %s was upgraded from schema %d to %d; every record was kept",
                        self.path, start, SCHEMA_VERSION)

    def _bind_results_to_inputs(self, conn: sqlite3.Connection) -> None:
        """The upgrade from schema 2: a result whose schema-2 HMAC (record key
        and bytes) verifies is signed again, binding it to the input
        fingerprints its record holds (what it was computed from); one that
        does not verify is left as it is and stays refused."""
        if conn.execute("SELECT NOT EXISTS(SELECT 1 FROM results WHERE mac IS NOT NULL)").fetchone()[0]:
            return
        secret = self._workspace_key(create=False)
        if secret is None:
            return  # no key: no result can verify
        inputs: dict[str, dict[str, Fingerprint]] = {}
        for key, path, mode, size, mtime_ns, digest, taken_at_ns in conn.execute(
            "SELECT record_key, path, mode, size, mtime_ns, digest, taken_at_ns FROM files WHERE role='input'"
        ):
            inputs.setdefault(key, {})[loaded_path(path)] = Fingerprint(mode, size, mtime_ns, digest, taken_at_ns)
        signed = []
        for key, value, mac in conn.execute("SELECT key, value, mac FROM results WHERE mac IS NOT NULL"):
            if hmac.compare_digest(bytes(mac), _schema_2_mac(secret, key, value)):
                signed.append((result_mac(secret, key, exec_key(key, inputs.get(key, {})), value), key))
        conn.executemany("UPDATE results SET mac=? WHERE key=?", signed)

    # -- runs -------------------------------------------------------------------

    def begin_run(self, n_workers: int) -> None:
        """Record the start of a run (one TaskGraph object)."""
        from taskgraph._version import __version__

        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO runs (started, pid, host, n_workers, version) VALUES (?,?,?,?,?)",
                (time.time(), os.getpid(), socket.gethostname(), n_workers, __version__),
            )
            self.run_id = cursor.lastrowid

    def end_run(self) -> None:
        if self.run_id is not None:
            self._rows[_END_RUN].append((time.time(), self.run_id))
            self._durable = True

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
            return _from_row(record_key, entry)
        return self._select(record_key)

    def _select(self, record_key: str) -> TaskRecord | None:
        row = self._conn.execute(
            "SELECT name, state, hash_algorithm, store_result, ended, error,"
            " EXISTS(SELECT 1 FROM results WHERE key=tasks.record_key)"
            " FROM tasks WHERE record_key=?",
            (record_key,),
        ).fetchone()
        if row is None:
            return None
        inputs: dict[str, Fingerprint] = {}
        targets: dict[str, Fingerprint] = {}
        for role, path, mode, size, mtime_ns, digest, taken_at_ns in self._conn.execute(
            "SELECT role, path, mode, size, mtime_ns, digest, taken_at_ns FROM files"
            " WHERE record_key=?",
            (record_key,),
        ):
            fingerprint = Fingerprint(mode, size, mtime_ns, digest, taken_at_ns)
            (inputs if role == "input" else targets)[loaded_path(path)] = fingerprint
        name, state, algorithm, store_result, ended, error, has_result = row
        return TaskRecord(
            record_key, name, state, algorithm, bool(store_result), inputs, targets,
            bool(has_result), ended, error,
        )

    def _load_records(self) -> dict[str, TaskRecord | _SnapshotRow | None]:
        # Plain tuples of atoms, not TaskRecords: CPython's garbage collector
        # stops tracking them (and the dict), so at 100,000 tasks its full
        # collections do not walk the snapshot. lookup() builds the record.
        files: dict[str, list[_FileRow]] = {}
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
        records: dict[str, TaskRecord | _SnapshotRow | None] = {}
        for key, name, state, algorithm, store_result, ended, error in self._conn.execute(
            "SELECT record_key, name, state, hash_algorithm, store_result, ended, error FROM tasks"
        ):
            listed = files.get(key)
            records[key] = (
                name, state, algorithm, bool(store_result), ended, error, key in with_result,
                tuple(listed) if listed else (),
            )
        return records

    def _load_digests(self) -> dict[tuple[str, str], CachedDigest | _DigestRow]:
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

    def previous_by_name(self, name: str) -> tuple[str, str, str, str] | None:
        """The latest record of a task with this name: (record_key, func,
        source_hash, args); explains why a task with no record of its own is new."""
        if not self._had_tasks:
            return None  # a new ledger: nothing to compare with
        row = self._conn.execute(
            "SELECT record_key, func, source_hash, args FROM tasks WHERE name=? ORDER BY ended DESC LIMIT 1",
            (_text(name),),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3])

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
        if mac is None or key is None or not hmac.compare_digest(
            bytes(mac), result_mac(key, record_key, run_key, value)
        ):
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
            dev, ino, size, mtime_ns, ctime_ns, is_dir, digest, hashed_at_ns = entry
            return CachedDigest(FileStat(size, mtime_ns, ctime_ns, dev, ino, bool(is_dir)), digest, hashed_at_ns)
        row = self._conn.execute(
            "SELECT size, mtime_ns, ctime_ns, dev, ino, is_dir, digest, hashed_at_ns"
            " FROM digests WHERE path=? AND algorithm=?",
            (stored_path(path), algorithm),
        ).fetchone()
        if row is None:
            return None
        size, mtime_ns, ctime_ns, dev, ino, is_dir, digest, hashed_at_ns = row
        return CachedDigest(FileStat(size, mtime_ns, ctime_ns, dev, ino, bool(is_dir)), digest, hashed_at_ns)

    def store_digest(self, path: str, algorithm: str, entry: CachedDigest) -> None:
        self._pending_digests[(path, algorithm)] = entry
        if self._digests is not None:
            self._digests[(path, algorithm)] = entry

    # -- writing ----------------------------------------------------------------

    def record(self, outcome: Outcome) -> None:
        """Buffer a finished task (done when ``outcome.error`` is None)."""
        key = outcome.record_key
        state = "done" if outcome.error is None else "failed"
        self._written.add(key)  # from now on served by SQL, not the snapshot
        self._durable = True
        rows = self._rows
        run_key = exec_key(key, outcome.inputs)
        rows[_UPSERT_TASK].append((
            key, outcome.task_key, run_key, _text(outcome.name), _text(outcome.func),
            outcome.source_hash, _text(outcome.args), outcome.hash_algorithm, int(outcome.store_result), state,
            self.run_id, outcome.started, outcome.ended, outcome.ended - outcome.started,
            _text(outcome.worker), _text(outcome.error), outcome.cpu_time, outcome.peak_memory,
        ))
        if outcome.error is not None:
            return  # keep the last success's files for explaining what changed
        if not outcome.fresh:
            rows[_DELETE_FILES].append((key,))
            rows[_DELETE_DEPS].append((key,))
            rows[_DELETE_RESULT].append((key,))
        for role, files in (("input", outcome.inputs), ("target", outcome.targets)):
            rows[_INSERT_FILE].extend(
                (key, role, stored_path(path), fp.mode, fp.size, fp.mtime_ns, fp.digest, fp.taken_at_ns)
                for path, fp in files.items()
            )
        rows[_INSERT_DEP].extend((key, dep) for dep in dict.fromkeys(outcome.deps))
        if outcome.store_result:
            value = sqlitedict.encode(outcome.result)
            secret = self._workspace_key()
            assert secret is not None  # made when missing
            mac = result_mac(secret, key, run_key, value)
            rows[_UPSERT_RESULT].append((key, value, mac))

    def record_decision(self, record_key: str, name: str, run: bool, reasons: list[dict[str, Any]]) -> None:
        """Buffer the outcome of an up-to-date check (a lazy row)."""
        self._rows[_DECISION].append((
            record_key, self.run_id, time.time(), _text(name), "run" if run else "skip",
            json.dumps(reasons, default=str) if reasons else "[]",
        ))

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
        lazy = len(self._rows[_DECISION]) + len(self._pending_digests)
        if not (self._durable or lazy >= _LAZY_LIMIT or (force and lazy)):
            return
        rows, self._rows = self._rows, {sql: [] for sql in _STATEMENTS}
        self._durable = False
        digests, self._pending_digests = self._pending_digests, {}
        with self._transaction() as conn:
            self._write(conn, rows, digests)

    @staticmethod
    def _write(
        conn: sqlite3.Connection,
        rows: dict[str, list[tuple[Any, ...]]],
        digests: dict[tuple[str, str], CachedDigest],
    ) -> None:
        for sql in _STATEMENTS:
            if rows[sql]:
                conn.executemany(sql, rows[sql])
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
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        for attempt in range(_LOCK_RETRIES):
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) and "busy" not in str(error):
                    raise LedgerError(f"cannot write the ledger {self.path}: {error}") from error
                LOGGER.warning(
                    "the ledger %s is busy (another process is writing it); waiting "
                    "(attempt %d of %d)", self.path, attempt + 1, _LOCK_RETRIES,
                )
        else:
            raise LedgerError(
                f"the ledger {self.path} stayed locked by another process for "
                f"{_LOCK_RETRIES * _BUSY_TIMEOUT_S:.0f} s; is a process stuck holding it?"
            )
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as error:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error):
                raise LedgerError(
                    f"cannot write the ledger {self.path}: {error}. Nothing recorded before "
                    "this error is lost; free disk space or fix permissions and run again."
                ) from error
            if isinstance(error, Exception):
                # Not the disk: a value SQLite could not take. Still a ledger
                # error, so the graph stops and every waiter is released.
                raise LedgerError(
                    f"cannot write the ledger {self.path}: {type(error).__name__}: {error}. Nothing "
                    "recorded before this error is lost; please report this as a taskgraph bug."
                ) from error
            raise

    def close(self) -> None:
        """Commit what is buffered and close the connection."""
        try:
            self.flush(force=True)
        finally:
            self._conn.close()


def format_exception(error: BaseException) -> str:
    """The text of an error as stored in the ledger."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


# -- the read side, for the command line and tools ------------------------------------------


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


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """The last run-or-skip decision about a task, with its reasons."""

    record_key: str
    run_id: int | None
    decided_at: float
    action: str
    reasons: list[dict[str, Any]]


class LedgerReader:
    """A read-only view of a workspace's ledger. Never unpickles anything.

    Raises:
        LedgerError: when there is no ledger, it is not a taskgraph ledger,
            or it was written by a newer taskgraph; the message is one line.
    """

    def __init__(self, workspace: str) -> None:
        self.workspace = workspace
        self.path = os.path.join(workspace, LEDGER_FILENAME)
        if not os.path.isfile(self.path):
            raise LedgerError(
                f"no taskgraph ledger in {workspace} ({LEDGER_FILENAME} not found): "
                "run a pipeline with this workspace first"
            )
        try:
            uri = "file:" + urllib.parse.quote(os.fsencode(os.path.abspath(self.path))) + "?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_S)
            app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as error:
            raise _open_problem(self.path, error) or LedgerError(
                f"{self.path} is not a readable taskgraph ledger ({error})") from error
        if app_id != APPLICATION_ID:
            raise LedgerError(f"{self.path} was not written by this taskgraph (it is another SQLite file)")
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path} was written by a newer taskgraph (schema {version}; this one reads "
                f"{SCHEMA_VERSION}): upgrade taskgraph to read it"
            )
        if version < min(_MIGRATIONS, default=SCHEMA_VERSION):
            raise LedgerError(
                f"{self.path} has an older schema ({version}); the next run of the pipeline "
                "upgrades it (or, if it is older than schema 1, moves it aside)"
            )
        # An older schema that the next run upgrades is read as it is (read-only):
        # the columns it lacks read as NULL.
        self._report_columns = "cpu_time, peak_memory" if version >= 2 else "NULL, NULL"

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as error:
            raise LedgerError(f"cannot read {self.path}: {error}") from error

    def tasks(self) -> list[TaskRow]:
        """Every recorded task, in the order they last ended."""
        return [
            TaskRow(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), row[8],
                    row[9], row[10], row[11], row[12], row[13], row[14], row[15], row[16])
            for row in self._rows(
                "SELECT record_key, task_key, exec_key, name, func, args, hash_algorithm, store_result,"
                f" state, run_id, started, ended, duration, worker, error, {self._report_columns} FROM tasks"
                " ORDER BY ended IS NULL, ended, name"
            )
        ]

    def files(self) -> dict[str, tuple[dict[str, Fingerprint], dict[str, Fingerprint]]]:
        """record_key -> (inputs, targets), each path -> Fingerprint."""
        out: dict[str, tuple[dict[str, Fingerprint], dict[str, Fingerprint]]] = {}
        for key, role, path, mode, size, mtime_ns, digest, taken_at_ns in self._rows(
            "SELECT record_key, role, path, mode, size, mtime_ns, digest, taken_at_ns FROM files"
        ):
            pair = out.setdefault(key, ({}, {}))
            pair[0 if role == "input" else 1][loaded_path(path)] = Fingerprint(
                mode, size, mtime_ns, digest, taken_at_ns)
        return out

    def deps(self) -> list[tuple[str, str]]:
        """(record_key, dependency's record_key) pairs."""
        return [(a, b) for a, b in self._rows("SELECT record_key, dep_key FROM deps")]

    def decisions(self) -> dict[str, DecisionRow]:
        return {
            key: DecisionRow(key, run_id, decided_at, action, json.loads(reasons))
            for key, run_id, decided_at, _name, action, reasons in self._rows("SELECT * FROM decisions")
        }

    def runs(self) -> list[tuple[int, float, float | None, int, str, int, str]]:
        """(run_id, started, ended, pid, host, n_workers, version), oldest first."""
        return [tuple(row) for row in self._rows("SELECT * FROM runs ORDER BY run_id")]

    def lookup_digest(self, path: str, algorithm: str) -> CachedDigest | None:
        rows = self._rows(
            "SELECT size, mtime_ns, ctime_ns, dev, ino, is_dir, digest, hashed_at_ns"
            " FROM digests WHERE path=? AND algorithm=?",
            (stored_path(path), algorithm),
        )
        if not rows:
            return None
        size, mtime_ns, ctime_ns, dev, ino, is_dir, digest, hashed_at_ns = rows[0]
        return CachedDigest(FileStat(size, mtime_ns, ctime_ns, dev, ino, bool(is_dir)), digest, hashed_at_ns)

    def store_digest(self, path: str, algorithm: str, entry: CachedDigest) -> None:
        pass  # read-only

    def close(self) -> None:
        self._conn.close()


def forget(workspace: str, record_keys: Sequence[str]) -> int:
    """Delete the records of these tasks; returns how many were recorded."""
    ledger = Ledger(workspace)
    try:
        with ledger._transaction() as conn:
            count = 0
            for key in record_keys:
                count += conn.execute("DELETE FROM tasks WHERE record_key=?", (key,)).rowcount
                for sql in (_DELETE_FILES, _DELETE_DEPS, _DELETE_RESULT,
                            "DELETE FROM decisions WHERE record_key=?"):
                    conn.execute(sql, (key,))
        return count
    finally:
        ledger.close()
