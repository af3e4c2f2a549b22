"""A ledger that is damaged, foreign, from a newer taskgraph, or in a
read-only workspace: a clear warning or error, and the user's files are never
lost (a ledger that cannot be used is moved aside, never deleted)."""

import logging
import os
import random
import sqlite3
import subprocess

import pytest
import reliability_funcs as r

import taskgraph

LEDGER = taskgraph.LEDGER_FILENAME


def run(ws, n_workers=-1, **options):
    """A small graph: a target, a stored result. Returns (a, b) tasks."""
    ws = str(ws)
    with taskgraph.TaskGraph(ws, n_workers, **options) as graph:
        target = os.path.join(ws, "a.bin")
        a = graph.add_task(r.write_bytes, args=(target, 10), target_path_list=[target], task_name="a")
        b = graph.add_task(r.identity, args=(5,), store_result=True, task_name="b")
    return a, b


def aside_files(ws):
    return sorted(name for name in os.listdir(ws) if name.endswith(".bad"))


def integrity(path):
    con = sqlite3.connect(str(path))
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


@pytest.fixture(scope="module")
def good_ledger(tmp_path_factory):
    """The bytes of a small, complete ledger."""
    ws = tmp_path_factory.mktemp("good")
    run(ws)
    assert not os.path.exists(ws / (LEDGER + "-wal")), "closing checkpoints the WAL"
    return (ws / LEDGER).read_bytes()


def check_survives(ws, damaged, caplog):
    """Run the graph on a workspace whose ledger holds ``damaged``: it either
    uses the file as it is or moves it aside (byte for byte) with a warning;
    either way the run completes and the new ledger is sound."""
    (ws / LEDGER).write_bytes(damaged)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="taskgraph"):
        a, b = run(ws)
    assert b.get() == 5 and (ws / "a.bin").read_bytes() == b"x" * 10
    aside = aside_files(ws)
    if aside:
        assert len(aside) == 1
        assert (ws / aside[0]).read_bytes() == damaged, "the damaged ledger was not kept as it was"
        assert "every task will run once" in caplog.text and aside[0] in caplog.text
        assert a.state == "ran" and b.state == "ran"
    assert integrity(ws / LEDGER) == "ok"
    return bool(aside)


def test_ledger_truncated_at_every_length(tmp_path, good_ledger, caplog):
    """Truncation at 0, at every page boundary and a byte either side, and at
    a stride of 509 bytes in between (about 150 lengths of a 56 KiB ledger)."""
    size = len(good_ledger)
    lengths = set(range(0, size, 509))
    for boundary in range(0, size + 1, 4096):
        lengths |= {boundary - 1, boundary, boundary + 1}
    lengths = sorted(length for length in lengths if 0 <= length < size)
    moved = 0
    for length in lengths:
        ws = tmp_path / f"len{length}"
        ws.mkdir()
        moved += check_survives(ws, good_ledger[:length], caplog)
    # SQLite takes an empty or one-byte file for an empty database (it is
    # initialised in place), and a file missing only unused bytes at the end
    # of its last page (zeros: the last page may be an empty index's) is
    # still whole to it. Every other length is moved aside.
    unseen = [length for length in lengths
              if length < 2 or length > size - 4096 + 512 or not good_ledger[length:].strip(b"\0")]
    assert moved >= len(lengths) - len(unseen)
    assert len(lengths) > 100


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_and_damaged_pages(tmp_path, good_ledger, caplog, seed):
    """Random bytes, a valid SQLite header followed by random bytes, and a
    good ledger with random bytes written over one of its pages."""
    rng = random.Random(seed)
    garbage = rng.randbytes(rng.randrange(1, 200_000))
    header_then_garbage = good_ledger[:100] + rng.randbytes(len(good_ledger) - 100)
    page = rng.randrange(1, len(good_ledger) // 4096)
    offset = page * 4096 + rng.randrange(0, 4096 - 256)
    scribbled = good_ledger[:offset] + rng.randbytes(256) + good_ledger[offset + 256:]
    for name, damaged in (("garbage", garbage), ("header", header_then_garbage), ("page", scribbled)):
        ws = tmp_path / name
        ws.mkdir()
        moved = check_survives(ws, damaged, caplog)
        if name != "page":
            assert moved


def test_a_ledger_damaged_after_a_clean_close_is_still_checked(tmp_path, caplog):
    """A clean close lets the next open skip SQLite's full quick_check, but
    only while the file is exactly as that close left it: bytes written over
    a page (same size, its mtime put back) are found, and the file is moved aside."""
    ws = tmp_path / "ws"
    ws.mkdir()
    run(ws)
    path = ws / LEDGER
    assert (ws / (LEDGER + ".lock")).read_bytes().startswith(b"clean "), "a clean close leaves its stamp"
    run(ws)  # the stamp is trusted: the records hold
    assert aside_files(ws) == []
    before = os.stat(path)
    data = bytearray(path.read_bytes())
    # Scribble over the page headers of every b-tree page but the first.
    rng = random.Random(3)
    for page in range(1, len(data) // 4096):
        data[page * 4096:page * 4096 + 12] = rng.randbytes(12)
    with open(path, "r+b") as stream:  # in place: same inode, same size
        stream.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size and os.stat(path).st_mtime_ns == before.st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="taskgraph"):
        a, b = run(ws)
    assert len(aside_files(ws)) == 1 and "every task will run once" in caplog.text
    assert a.state == "ran" and b.state == "ran" and b.get() == 5
    assert integrity(path) == "ok"


def test_garbage_wal_beside_a_good_ledger_is_ignored(tmp_path, good_ledger):
    """A -wal file of random bytes fails SQLite's checksums and is ignored:
    the ledger's records still hold (nothing reruns), nothing is moved."""
    ws = tmp_path / "ws"
    ws.mkdir()
    run(ws)
    (ws / (LEDGER + "-wal")).write_bytes(random.Random(1).randbytes(50_000))
    a, b = run(ws)
    assert a.state == "skipped" and b.state == "skipped" and b.get() == 5
    assert aside_files(ws) == []


def test_ledger_of_a_newer_schema_is_refused_untouched(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    run(ws)
    con = sqlite3.connect(str(ws / LEDGER))
    con.execute("PRAGMA user_version=99")
    con.close()
    before = (ws / LEDGER).read_bytes()
    with pytest.raises(taskgraph.LedgerError, match="newer taskgraph") as info:
        run(ws)
    assert isinstance(info.value, RuntimeError)
    assert "Upgrade" in str(info.value) or "upgrade" in str(info.value)
    assert (ws / LEDGER).read_bytes() == before
    assert aside_files(ws) == []


def test_ledger_path_that_is_a_directory_is_moved_aside_whole(tmp_path, caplog):
    ws = tmp_path / "ws"
    (ws / LEDGER).mkdir(parents=True)
    (ws / LEDGER / "keep.txt").write_text("mine")
    with caplog.at_level(logging.WARNING, logger="taskgraph"):
        a, _ = run(ws)
    assert a.state == "ran"
    [aside] = aside_files(ws)
    assert (ws / aside / "keep.txt").read_text() == "mine"
    assert aside in caplog.text


@pytest.fixture
def read_only(tmp_path):
    """Make a directory read-only: a read-only bind mount as root (root
    ignores permissions), chmod otherwise. Yields a function."""
    mounts = []

    def make(path):
        if os.geteuid() != 0:
            os.chmod(path, 0o555)
            return
        for command in (["mount", "--bind", str(path), str(path)],
                        ["mount", "-o", "remount,bind,ro", str(path)]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot make a read-only mount here: {done.stderr.strip()}")
            if command[1] == "--bind":
                mounts.append(path)

    yield make
    for path in mounts:
        subprocess.run(["umount", str(path)], check=False)
    for path in tmp_path.rglob("*"):
        if path.is_dir():
            os.chmod(path, 0o755)


@pytest.mark.parametrize("existing", [False, True])
def test_read_only_workspace_is_a_clear_error(tmp_path, read_only, existing):
    ws = tmp_path / "ws"
    ws.mkdir()
    if existing:
        run(ws)
    before = {path.name: path.read_bytes() for path in ws.iterdir()}
    read_only(ws)
    with pytest.raises(taskgraph.LedgerError, match="writable") as info:
        run(ws)
    assert str(ws) in str(info.value)
    assert {path.name: path.read_bytes() for path in ws.iterdir()} == before
