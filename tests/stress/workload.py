"""The pipeline the kill loop runs, killed, and runs again.

Run as a script: ``python workload.py WORKSPACE N_WORKERS [N_TASKS]`` builds a
layered graph of ``N_TASKS`` tasks (default 300) in WORKSPACE and runs it.
Each task reads its inputs, writes its target in several flushed pieces (so a
kill can leave a partial target), fsyncs it, and only then appends its name to
``journal.txt`` (fsync'd too): a name in the journal means that task's target
was complete on disk. ``expected()`` gives every target's final bytes, so a
checker can tell a complete target from a partial one.

Content hashing (``xxh3_128``) is used so that a task that reruns because its
record was lost, and rewrites identical bytes, does not make its recorded
dependents run again: every rerun the checker sees is then one the ledger had
no record for.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

JOURNAL = "journal.txt"
WIDTH = 20  # tasks per layer
PIECES = 8  # a target is written in this many flushed pieces


def name_of(index: int) -> str:
    return f"t{index:04d}"


def inputs_of(index: int) -> list[int]:
    """Up to three tasks of the previous layer."""
    layer, slot = divmod(index, WIDTH)
    if layer == 0:
        return []
    base = (layer - 1) * WIDTH
    return sorted({base + slot, base + (slot * 7 + 3) % WIDTH, base + (slot * 13 + 5) % WIDTH})


def expected(n_tasks: int) -> dict[str, bytes]:
    """Every task's target bytes, computed without running anything."""
    out: dict[str, bytes] = {}
    for index in range(n_tasks):
        name = name_of(index)
        digest = hashlib.sha256(name.encode())
        for dep in inputs_of(index):
            digest.update(out[name_of(dep)])
        out[name] = _content(name, digest.digest())
    return out


def _content(name: str, seed: bytes) -> bytes:
    line = (name.encode() + b" " + seed.hex().encode() + b"\n")
    return line * (PIECES * 32)


def step(out_path: str, journal: str, name: str, *in_paths: str) -> int:
    """The task: read inputs, write the target in pieces, fsync, journal."""
    digest = hashlib.sha256(name.encode())
    for path in in_paths:
        with open(path, "rb") as stream:
            digest.update(stream.read())
    data = _content(name, digest.digest())
    piece = len(data) // PIECES
    with open(out_path, "wb") as out:
        for start in range(0, len(data), piece):
            out.write(data[start:start + piece])
            out.flush()  # reach the file now: a kill here leaves it partial
            if start == 0:
                time.sleep(0.001)  # widen the window in which a kill finds it so
        os.fsync(out.fileno())
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{name}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(data)


def target_of(workspace: str, name: str) -> str:
    return os.path.join(workspace, "out", f"{name}.txt")


def build(workspace: str, n_workers: int, n_tasks: int) -> None:
    import taskgraph

    os.makedirs(os.path.join(workspace, "out"), exist_ok=True)
    journal = os.path.join(workspace, JOURNAL)
    with taskgraph.TaskGraph(workspace, n_workers) as graph:
        tasks = []
        for index in range(n_tasks):
            name = name_of(index)
            deps = [tasks[dep] for dep in inputs_of(index)]
            tasks.append(graph.add_task(
                step,
                args=(target_of(workspace, name), journal, name,
                      *(target_of(workspace, name_of(dep)) for dep in inputs_of(index))),
                target_path_list=[target_of(workspace, name)],
                ignore_path_list=[journal],
                dependent_task_list=deps,
                hash_algorithm="xxh3_128",
                store_result=index % 5 == 0,
                task_name=name,
            ))


if __name__ == "__main__":
    import faulthandler
    import signal

    # The kill loop asks a run that hangs for its threads' stacks.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Import this file as ``workload`` so task functions are pickled (and
    # identified) by that module name, not as ``__main__``.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import workload

    workload.build(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 300)
