"""Kill a process while it puts entries into a shared cache, at random moments.

Usage::

    python tests/stress/cache_kill_loop.py --kills 20 [--tasks 60] [--size 2097152] [--seed N]

Every kill starts ``tests/cache_workload.py`` in a fresh workspace on one
cache, with a new salt for the second half of its graph (those tasks are
computed and put in the cache) while the first half, with a fixed salt, is
restored once some run has put it; the run uses the inline (-1), thread (0)
or process (2) mode at random and gets SIGKILL after a random delay within
the time an unkilled run takes. After every kill:

- ``taskgraph cache verify CACHE`` reports 0 bad entries (exit status 0);
- no process of the killed run is left within 10 s.

At the end, a run with a last salt completes and every target has exactly
the expected bytes; ``verify`` again reports 0 bad entries; and the same
graph in a fresh workspace restores every task from the cache, byte for
byte. The quick version (a few kills) runs in ``tests/test_cache.py``; this
file is not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path.insert(0, TESTS)

import cache_workload  # noqa: E402

WORKLOAD = os.path.join(TESTS, "cache_workload.py")
MARKER = "TASKGRAPH_CACHE_KILL_LOOP"
TIMEOUT_S = 300


class BrokenPromise(AssertionError):
    """What the cache promised did not hold; the message says what."""


@dataclass
class Stats:
    kills: int = 0
    finished_before_kill: int = 0
    leftovers: int = 0
    bad_entries: int = 0
    orphans: int = 0
    entries: int = 0


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER) == marker:
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found


def _start(workspace: str, cache: str, n_workers: int, n_tasks: int, size: int, salt: str,
           marker: str) -> subprocess.Popen[str]:
    env = {**os.environ, MARKER: marker, cache_workload.JOURNAL_ENV: os.path.join(workspace, "journal.txt")}
    env.pop("TASKGRAPH_CACHE", None)
    return subprocess.Popen(
        [sys.executable, WORKLOAD, workspace, cache, str(n_workers), str(n_tasks), str(size), salt,
         str(n_tasks // 2)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def verify(cache: str) -> dict[str, Any]:
    """``taskgraph cache verify CACHE --json``, as a user would run it."""
    process = subprocess.run([sys.executable, "-m", "taskgraph", "cache", "verify", cache, "--json"],
                             capture_output=True, text=True, timeout=TIMEOUT_S)
    report = json.loads(process.stdout)
    if process.returncode != 0 or report["bad"]:
        raise BrokenPromise(f"taskgraph cache verify {cache} reports bad entries: {report['bad']} "
                            f"(exit status {process.returncode}; {process.stderr})")
    return report


def _finish(process: subprocess.Popen[str], what: str) -> dict[str, int]:
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        raise BrokenPromise(f"{what} did not finish within {TIMEOUT_S} s") from None
    if process.returncode != 0:
        raise BrokenPromise(f"{what} failed (exit status {process.returncode}):\n{err}")
    return dict(json.loads(out.strip().splitlines()[-1])["states"])


def _check_targets(workspace: str, n_tasks: int, size: int, salt: str) -> None:
    for name, data in cache_workload.expected(n_tasks, size, salt, n_tasks // 2).items():
        with open(os.path.join(workspace, f"{name}.bin"), "rb") as stream:
            if stream.read() != data:
                raise BrokenPromise(f"{workspace}: target {name} does not hold the expected bytes")


def run(kills: int, n_tasks: int = 60, size: int = 2 << 20, seed: int | None = None,
        root: str | None = None, log: bool = False) -> Stats:
    """The loop; raises :class:`BrokenPromise` at the first broken promise."""
    rng = random.Random(seed)
    root = root or tempfile.mkdtemp(prefix="taskgraph-cache-kill-")
    cache = os.path.join(root, "cache")
    stats = Stats()
    # An unkilled run first: how long one takes.
    started = time.monotonic()
    _finish(_start(os.path.join(root, "calibrate"), cache, 2, n_tasks, size, "calibrate", uuid.uuid4().hex),
            "the first run")
    duration = time.monotonic() - started
    attempt = 0
    while stats.kills < kills:
        if attempt >= 3 * kills:
            raise BrokenPromise(f"only {stats.kills} of {attempt} runs were still running when killed")
        kill, attempt = attempt, attempt + 1
        workspace = os.path.join(root, f"ws{kill:03d}")
        marker = uuid.uuid4().hex
        n_workers = rng.choice((-1, 0, 2))
        process = _start(workspace, cache, n_workers, n_tasks, size, f"salt{kill}", marker)
        delay = rng.uniform(0.05, 0.9 * duration)
        kills_before = stats.kills
        try:
            process.wait(timeout=delay)
            stats.finished_before_kill += 1
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=TIMEOUT_S)
            stats.kills += 1
        deadline = time.monotonic() + 10
        while _marked(marker):
            if time.monotonic() > deadline:
                stats.orphans += len(_marked(marker))
                raise BrokenPromise(f"processes of the killed run are left: {_marked(marker)}")
            time.sleep(0.05)
        report = verify(cache)
        stats.leftovers = int(report["leftovers"])
        stats.entries = int(report["entries"])
        if log:
            what = "finished before its kill" if stats.kills == kills_before else f"kill {stats.kills}/{kills}"
            print(f"{what}: n_workers={n_workers}, after {delay:.2f} s: 0 bad entries of "
                  f"{report['entries']}, {report['leftovers']} leftover temporary files", flush=True)
        shutil.rmtree(workspace, ignore_errors=True)
    final = os.path.join(root, "final")
    states = _finish(_start(final, cache, 2, n_tasks, size, "final", uuid.uuid4().hex), "the final run")
    if sum(states.values()) != n_tasks:
        raise BrokenPromise(f"the final run did not finish every task: {states}")
    _check_targets(final, n_tasks, size, "final")
    verify(cache)
    again = os.path.join(root, "again")
    states = _finish(_start(again, cache, 0, n_tasks, size, "final", uuid.uuid4().hex), "the run in a fresh workspace")
    if states != {"restored": n_tasks}:
        raise BrokenPromise(f"a fresh workspace did not restore every task: {states}")
    _check_targets(again, n_tasks, size, "final")
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=60)
    parser.add_argument("--size", type=int, default=2 << 20, help="bytes per target (default 2 MiB)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="taskgraph-cache-kill-")
    started = time.monotonic()
    try:
        stats = run(args.kills, args.tasks, args.size, args.seed, root, log=True)
    except BrokenPromise as error:
        print(f"BROKEN: {error}\n(the cache and workspaces are kept in {root})", file=sys.stderr)
        return 1
    shutil.rmtree(root, ignore_errors=True)
    print(f"{stats.kills} kills ({stats.finished_before_kill} runs finished before their kill), 0 bad entries "
          f"after each ({stats.entries} entries and {stats.leftovers} leftover temporary files at the end), "
          f"no process left; the final run and a fresh workspace restored byte for byte "
          f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
