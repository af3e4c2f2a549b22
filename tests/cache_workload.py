"""A pipeline that puts its targets in a shared cache, for the cache's
concurrency and kill tests (``tests/test_cache.py``, ``tests/stress/cache_kill_loop.py``).

Run as a script::

    python cache_workload.py WORKSPACE CACHE N_WORKERS N_TASKS SIZE SALT [FIXED]

builds a layered graph of ``N_TASKS`` tasks in WORKSPACE with ``cache=CACHE``
and runs it. Each task reads up to three targets of the layer before, writes
its own target of ``SIZE`` bytes, and appends ``NAME PID SALT`` to the file
named by ``$CACHE_WORKLOAD_JOURNAL``: one line per execution of a function.
Tasks whose index is below FIXED (default 0) take the salt ``fixed``, the
others SALT, so a run with a new SALT computes those (and puts them) while
it restores the fixed ones. The last line printed is JSON: how many tasks
ran, were restored or were skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

JOURNAL_ENV = "CACHE_WORKLOAD_JOURNAL"
WIDTH = 20


def name_of(index: int) -> str:
    return f"t{index:04d}"


def inputs_of(index: int) -> list[int]:
    """Up to three tasks of the previous layer."""
    layer, slot = divmod(index, WIDTH)
    if layer == 0:
        return []
    base = (layer - 1) * WIDTH
    return sorted({base + slot, base + (slot * 7 + 3) % WIDTH, base + (slot * 13 + 5) % WIDTH})


def salt_of(index: int, salt: str, fixed: int) -> str:
    return "fixed" if index < fixed else salt


def _content(seed: bytes, size: int) -> bytes:
    line = seed.hex().encode() + b"\n"
    return (line * (size // len(line) + 1))[:size]


def expected(n_tasks: int, size: int, salt: str, fixed: int = 0) -> dict[str, bytes]:
    """Every target's bytes, computed without running anything."""
    out: dict[str, bytes] = {}
    for index in range(n_tasks):
        name = name_of(index)
        digest = hashlib.sha256(f"{name} {salt_of(index, salt, fixed)}".encode())
        for dep in inputs_of(index):
            digest.update(hashlib.sha256(out[name_of(dep)]).digest())
        out[name] = _content(digest.digest(), size)
    return out


def step(out_path: str, name: str, salt: str, size: int, *in_paths: str) -> None:
    digest = hashlib.sha256(f"{name} {salt}".encode())
    for path in in_paths:
        with open(path, "rb") as stream:
            digest.update(hashlib.sha256(stream.read()).digest())
    data = _content(digest.digest(), size)
    with open(out_path, "wb") as stream:
        for start in range(0, len(data), 1 << 20):
            stream.write(data[start:start + (1 << 20)])
    journal = os.environ.get(JOURNAL_ENV)
    if journal:
        fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{name} {os.getpid()} {salt}\n".encode())
        finally:
            os.close(fd)


def build(graph, workspace: str, n_tasks: int, size: int, salt: str, fixed: int) -> list:
    tasks = []
    for index in range(n_tasks):
        name = name_of(index)
        target = os.path.join(workspace, f"{name}.bin")
        deps = [tasks[dep] for dep in inputs_of(index)]
        in_paths = [os.path.join(workspace, f"{name_of(dep)}.bin") for dep in inputs_of(index)]
        tasks.append(graph.add_task(
            step, args=(target, name, salt_of(index, salt, fixed), size, *in_paths), target_path_list=[target],
            dependent_task_list=deps, task_name=name))
    return tasks


def main(argv: list[str]) -> int:
    import taskgraph

    workspace, cache, n_workers, n_tasks, size, salt = argv[:6]
    fixed = int(argv[6]) if len(argv) > 6 else 0
    with taskgraph.TaskGraph(workspace, int(n_workers), cache=cache, progress=False) as graph:
        tasks = build(graph, workspace, int(n_tasks), int(size), salt, fixed)
    states: dict[str, int] = {}
    for task in tasks:
        states[task.state] = states.get(task.state, 0) + 1
    print(json.dumps({"states": states}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
