"""The ledger holds pickles: only results taskgraph stored with this
workspace's key are ever unpickled, and the files are private to their owner."""

import hashlib
import hmac
import logging
import os
import pickle
import sqlite3
import stat
import subprocess
import sys
import textwrap

import pytest
import reliability_funcs as r
import sqlitedict
from ledgers import downgrade

import taskgraph
from taskgraph._ledger import KEY_SUFFIX

LEDGER = taskgraph.LEDGER_FILENAME
TESTS = os.path.dirname(__file__)


def run(ws, n_workers=-1):
    """A target-writing task and a stored result. Returns (a, b)."""
    ws = str(ws)
    with taskgraph.TaskGraph(ws, n_workers) as graph:
        target = os.path.join(ws, "a.bin")
        a = graph.add_task(r.write_bytes, args=(target, 10), target_path_list=[target], task_name="a")
        b = graph.add_task(r.identity, args=(5,), store_result=True, task_name="b")
    return a, b


def set_result(ws, value, keep_mac=True):
    """Overwrite the stored result of every task with ``value``'s bytes."""
    con = sqlite3.connect(str(ws / LEDGER))
    if keep_mac:
        con.execute("UPDATE results SET value=?", (value,))
    else:
        con.execute("UPDATE results SET value=?, mac=NULL", (value,))
    con.commit()
    con.close()


def malicious(canary):
    """The bytes of a pickle that creates ``canary`` when loaded."""
    return sqlite3.Binary(pickle.dumps(r.Canary(str(canary))))


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_workspace_files_are_private_to_their_owner(tmp_path):
    old_umask = os.umask(0o022)
    try:
        graph = taskgraph.TaskGraph(str(tmp_path), 2)
        graph.add_task(r.identity, args=(1,), store_result=True)
        graph.join(timeout=60)
        during = {name: mode(tmp_path / name) for name in os.listdir(tmp_path)}
        graph.close()
        graph.join(timeout=60)
    finally:
        os.umask(old_umask)
    names = {LEDGER, LEDGER + "-wal", LEDGER + "-shm", LEDGER + ".lock", LEDGER + ".claims", LEDGER + KEY_SUFFIX}
    assert names <= set(during)
    assert {name: during[name] for name in names} == dict.fromkeys(names, 0o600)
    assert mode(tmp_path / LEDGER) == 0o600 and mode(tmp_path / (LEDGER + KEY_SUFFIX)) == 0o600
    assert len((tmp_path / (LEDGER + KEY_SUFFIX)).read_bytes()) == 32


@pytest.mark.parametrize("keep_mac", [True, False])
def test_a_tampered_result_is_never_unpickled_and_the_task_reruns(tmp_path, caplog, keep_mac):
    """A result whose bytes were replaced (with the old HMAC kept, or none, as
    a tool such as sqlitedict would write it) is refused with a warning; the
    malicious pickle never runs; the task runs again and its new result is
    trusted on the next run."""
    run(tmp_path)
    canary = tmp_path / "canary"
    set_result(tmp_path, malicious(canary), keep_mac)
    with caplog.at_level(logging.WARNING, logger="taskgraph"):
        a, b = run(tmp_path, 2)
    assert not canary.exists()
    assert a.state == "skipped" and b.state == "ran" and b.get() == 5
    assert [reason.code for reason in b.reasons] == ["result_untrusted"]
    assert "task 'b'" in caplog.text and "not unpickled" in caplog.text
    a, b = run(tmp_path)
    assert b.state == "skipped" and b.get() == 5


def test_a_result_written_with_sqlitedict_is_refused(tmp_path):
    run(tmp_path)
    canary = tmp_path / "canary"
    [key] = [row[0] for row in sqlite3.connect(str(tmp_path / LEDGER)).execute("SELECT key FROM results")]
    with sqlitedict.SqliteDict(str(tmp_path / LEDGER), tablename="results", journal_mode="WAL") as results:
        results[key] = r.Canary(str(canary))
        results.commit()
    assert not canary.exists()
    _, b = run(tmp_path)
    assert not canary.exists()
    assert b.state == "ran" and b.get() == 5


def test_a_plausible_value_with_a_foreign_mac_is_refused(tmp_path):
    """Changing 5 into 6 is caught as surely as a malicious pickle."""
    run(tmp_path)
    set_result(tmp_path, sqlite3.Binary(pickle.dumps(6)))
    _, b = run(tmp_path)
    assert b.state == "ran" and b.get() == 5


def test_a_ledger_copied_from_another_workspace_is_not_trusted(tmp_path):
    """Two workspaces, same pipeline (a task without paths: same record key
    in both): the other's ledger, copied in, holds results made with another
    key, so they are refused and the task runs."""
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    mine.mkdir()
    theirs.mkdir()

    def graph_in(ws):
        with taskgraph.TaskGraph(str(ws), -1) as graph:
            return graph.add_task(r.identity, args=(7,), store_result=True, task_name="seven")

    assert graph_in(mine).state == "ran"
    assert graph_in(theirs).state == "ran"
    assert graph_in(mine).state == "skipped"
    (mine / LEDGER).write_bytes((theirs / LEDGER).read_bytes())
    task = graph_in(mine)
    assert task.state == "ran" and task.get() == 7
    assert graph_in(mine).state == "skipped"


def test_the_cli_never_unpickles(tmp_path):
    run(tmp_path)
    canary = tmp_path / "canary"
    set_result(tmp_path, malicious(canary))
    exe = [sys.executable, "-m", "taskgraph"]
    for args in (["status", str(tmp_path)], ["status", "--json", str(tmp_path)], ["explain", str(tmp_path), "b"],
                 ["graph", "--format", "json", str(tmp_path)]):
        done = subprocess.run([*exe, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert not canary.exists()


def test_a_damaged_key_is_moved_aside_and_results_recomputed(tmp_path, caplog):
    run(tmp_path)
    key_path = tmp_path / (LEDGER + KEY_SUFFIX)
    key_path.write_bytes(b"short")
    with caplog.at_level(logging.WARNING, logger="taskgraph"):
        a, b = run(tmp_path)
    assert a.state == "skipped" and b.state == "ran"
    [aside] = [name for name in os.listdir(tmp_path) if name.startswith(LEDGER + KEY_SUFFIX) and name.endswith(".bad")]
    assert (tmp_path / aside).read_bytes() == b"short"
    assert "holds 5 bytes" in caplog.text
    assert len(key_path.read_bytes()) == 32 and mode(key_path) == 0o600


def test_a_key_others_can_read_is_made_private(tmp_path, caplog):
    run(tmp_path)
    key_path = tmp_path / (LEDGER + KEY_SUFFIX)
    os.chmod(key_path, 0o644)
    with caplog.at_level(logging.WARNING, logger="taskgraph"):
        _, b = run(tmp_path)
    assert b.state == "skipped"
    assert mode(key_path) == 0o600
    assert "readable by other users" in caplog.text


KEY_SCRIPT = textwrap.dedent("""
    import hashlib, sys, time
    from taskgraph._ledger_keys import workspace_key
    start = float(sys.argv[2])
    while time.time() < start:
        pass
    print(hashlib.sha256(workspace_key(sys.argv[1])).hexdigest())
""")


def test_processes_creating_the_key_at_once_agree_on_one(tmp_path):
    import time

    path = str(tmp_path / (LEDGER + KEY_SUFFIX))
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", KEY_SCRIPT, path, str(start)], stdout=subprocess.PIPE,
                              text=True) for _ in range(6)]
    digests = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert digests == {hashlib.sha256(open(path, "rb").read()).hexdigest()}
    assert sorted(os.listdir(tmp_path)) == [LEDGER + KEY_SUFFIX]  # no temporary file left


@pytest.mark.skipif(sqlite3.sqlite_version_info < (3, 35), reason="DROP COLUMN needs SQLite 3.35")
def test_a_schema_1_ledger_is_upgraded_in_place(tmp_path):
    """Schema 1 had no HMAC: its records are kept (tasks skip), its stored
    results are not trusted (those tasks run once)."""
    run(tmp_path)
    downgrade(str(tmp_path / LEDGER), 1)  # no HMAC column, no run-report columns
    a, b = run(tmp_path)
    assert a.state == "skipped" and b.state == "ran"
    assert [name for name in os.listdir(tmp_path) if name.endswith(".bad")] == []
    con = sqlite3.connect(str(tmp_path / LEDGER))
    assert con.execute("PRAGMA user_version").fetchone()[0] == taskgraph._ledger.SCHEMA_VERSION
    con.close()
    assert run(tmp_path)[1].state == "skipped"


def results_rows(ws):
    con = sqlite3.connect(str(ws / LEDGER))
    try:
        return con.execute("SELECT key, value, mac FROM results").fetchall()
    finally:
        con.close()


def write_results_rows(ws, rows):
    con = sqlite3.connect(str(ws / LEDGER))
    con.executemany("UPDATE results SET value=?, mac=? WHERE key=?", [(value, mac, key) for key, value, mac in rows])
    con.commit()
    con.close()


def test_a_replayed_result_of_an_earlier_run_is_refused(tmp_path):
    """Save a task's signed result, change its input so that it runs again
    and stores a new result, write the old row back: the old result is not
    returned as if it were the new one (it was computed from other inputs).
    The task runs, and its own result is trusted again afterwards."""
    source = tmp_path / "in.txt"
    source.write_text("old")

    def run_count():
        with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
            return graph.add_task(r.read_text, args=(str(source),), store_result=True, task_name="read")

    assert run_count().get() == "old"
    saved = results_rows(tmp_path)
    source.write_text("newer")
    assert run_count().get() == "newer"
    write_results_rows(tmp_path, saved)
    replayed = run_count()
    assert replayed.state == "ran" and replayed.get() == "newer"
    assert [reason.code for reason in replayed.reasons] == ["result_untrusted"]
    again = run_count()
    assert again.state == "skipped" and again.get() == "newer"


def _schema_2_mac(ws, record_key, value):
    secret = (ws / (LEDGER + KEY_SUFFIX)).read_bytes()
    message = b"taskgraph stored result v1\0" + record_key.encode() + b"\0" + bytes(value)
    return hmac.new(secret, message, hashlib.sha256).digest()


def test_a_schema_2_ledger_keeps_its_trusted_results_and_refuses_tampered_ones(tmp_path):
    """Schema 2 signed record key and bytes only. The upgrade signs again, for
    the inputs its record holds, every result whose old HMAC verifies (so
    those tasks stay skipped with their results); a result whose old HMAC
    does not verify stays refused."""
    source = tmp_path / "in.txt"
    source.write_text("kept")
    ws = tmp_path / "ws"

    def run_both():
        with taskgraph.TaskGraph(str(ws), -1) as graph:
            kept = graph.add_task(r.read_text, args=(str(source),), store_result=True, task_name="kept")
            forged = graph.add_task(r.identity, args=(5,), store_result=True, task_name="forged")
        return kept, forged

    run_both()
    con = sqlite3.connect(str(ws / LEDGER))
    rows = con.execute("SELECT key, value FROM results").fetchall()
    names = dict(con.execute("SELECT record_key, name FROM tasks"))
    for key, value in rows:  # back to what schema 2 wrote; "forged" gets another value under its old HMAC
        mac = _schema_2_mac(ws, key, value)
        if names[key] == "forged":
            value = sqlite3.Binary(pickle.dumps(6))
        con.execute("UPDATE results SET value=?, mac=? WHERE key=?", (value, mac, key))
    con.commit()
    con.close()
    downgrade(str(ws / LEDGER), 2)
    kept, forged = run_both()
    assert kept.state == "skipped" and kept.get() == "kept"
    assert forged.state == "ran" and forged.get() == 5
    assert [reason.code for reason in forged.reasons] == ["result_untrusted"]
    con = sqlite3.connect(str(ws / LEDGER))
    assert con.execute("PRAGMA user_version").fetchone()[0] == taskgraph._ledger.SCHEMA_VERSION
    con.close()
    assert [task.state for task in run_both()] == ["skipped", "skipped"]
