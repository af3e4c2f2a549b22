"""Kill the main process of a pipeline at random moments, again and again.

Usage::

    python tests/stress/kill_loop.py --kills 200 [--tasks 300] [--seed N]

Each cycle starts a fresh workspace and runs ``workload.py`` (a layered graph
of 300 tasks with targets and a journal, see that file), killing it at a
random moment, several times in a row, with SIGKILL (and, one time in five,
SIGINT: Ctrl-C), using the inline (-1), thread (0) and process (2) modes at
random. After every signal it checks:

- the process's workers are gone within 10 s (none orphaned);
- the ledger passes ``PRAGMA integrity_check``;
- no record was lost: every task recorded as done before the run still is;
- no task recorded as done before the run ran again in it;
- every task recorded as done had journaled, i.e. its target was complete,
  and its target holds exactly the expected bytes;
- after SIGINT, the process ended with ``KeyboardInterrupt`` within 20 s.

A cycle ends with a run that is not killed: it must complete, without running
any task that was recorded as done, running every task whose target was left
partial, leaving every target with the expected bytes; one more run then
executes nothing. The counts are printed at the end; any broken promise stops
the loop with the workspace kept for inspection and exit status 1.

The quick version of this loop runs in the test suite
(``tests/test_reliability.py``); this file is not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workload  # noqa: E402

LEDGER = "taskgraph_ledger.sqlite"
MODES = (-1, 0, 2)
RUN_TIMEOUT_S = 120.0
#: Ctrl-C must end a run within this (it kills the workers; nothing waits on them).
INTERRUPT_TIMEOUT_S = 20.0


class BrokenPromise(AssertionError):
    """A check failed; the message says which and where the workspace is."""


@dataclass
class Stats:
    kills: int = 0
    interrupts: int = 0
    signals_after_exit: int = 0
    cycles: int = 0
    partial_targets: int = 0
    journaled_not_recorded: int = 0
    records_lost: int = 0
    recorded_tasks_rerun: int = 0
    orphans: int = 0
    integrity_failures: int = 0
    by_mode: Counter[int] = field(default_factory=Counter)

    def report(self) -> str:
        modes = ", ".join(f"{mode}: {count}" for mode, count in sorted(self.by_mode.items()))
        return "\n".join([
            f"SIGKILL of the main process mid-run:          {self.kills}",
            f"SIGINT (Ctrl-C) mid-run:                      {self.interrupts}",
            f"signals that came after the run had ended:    {self.signals_after_exit}",
            f"signals by n_workers:                         {modes}",
            f"cycles completed (fresh workspace each):      {self.cycles}",
            f"partial targets left by a kill, all rerun:    {self.partial_targets}",
            f"finished but not yet committed, rerun:        {self.journaled_not_recorded}",
            f"records lost:                                 {self.records_lost}",
            f"recorded tasks that ran again:                {self.recorded_tasks_rerun}",
            f"worker processes left behind:                 {self.orphans}",
            f"ledgers failing integrity_check:              {self.integrity_failures}",
        ])


def _journal(workspace: str) -> list[str]:
    path = os.path.join(workspace, workload.JOURNAL)
    if not os.path.exists(path):
        return []
    with open(path) as stream:
        return stream.read().split()


def _recorded(workspace: str) -> set[str]:
    """Names of the tasks recorded as done, after checking the ledger's integrity."""
    path = os.path.join(workspace, LEDGER)
    if not os.path.exists(path):
        return set()
    con = sqlite3.connect(path, timeout=30)
    try:
        check = con.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise BrokenPromise(f"integrity_check of {path}: {check}")
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
        if "tasks" not in tables:
            return set()  # killed before the schema was committed
        return {row[0] for row in con.execute("SELECT name FROM tasks WHERE state='done'")}
    finally:
        con.close()


def _target(workspace: str, name: str) -> bytes | None:
    try:
        with open(workload.target_of(workspace, name), "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        return None


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: give the run the default back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(workspace: str, n_workers: int, n_tasks: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "workload.py"), workspace, str(n_workers), str(n_tasks)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint,
    )


def _signal_mid_run(
    workspace: str, n_workers: int, n_tasks: int, delay: float, signum: int, stats: Stats
) -> tuple[bool, str]:
    """Start a run, send ``signum`` after ``delay`` seconds. Returns (whether
    the signal hit a live run, stderr)."""
    proc = _start(workspace, n_workers, n_tasks)
    time.sleep(delay)  # a random moment: the point of this loop
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    hit = proc.poll() is None
    if hit:
        proc.send_signal(signum)
    timeout = INTERRUPT_TIMEOUT_S if signum == signal.SIGINT else RUN_TIMEOUT_S
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # workload.py dumps its threads' stacks
        time.sleep(1)
        proc.kill()
        _, err = proc.communicate()
        raise BrokenPromise(
            f"the run (n_workers={n_workers}) did not end within {timeout} s of signal "
            f"{signal.Signals(signum).name} sent after {delay:.2f} s; its stderr:\n{err}"
        ) from None
    _, alive = psutil.wait_procs(children, timeout=10)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if alive:
        stats.orphans += len(alive)
        for process in alive:
            process.kill()
        raise BrokenPromise(f"processes left behind after signal {signum}: {[p.pid for p in alive]}")
    if hit and proc.returncode == 0:
        hit = False  # the signal landed as the run was ending
    if hit and signum == signal.SIGINT and "KeyboardInterrupt" not in err:
        # Only a process interrupted before Python set up its handler (while
        # the interpreter starts) may die of SIGINT itself, saying nothing.
        if proc.returncode != -signal.SIGINT or err.strip():
            raise BrokenPromise(f"SIGINT did not end in KeyboardInterrupt (exit {proc.returncode}):\n{err}")
    if not hit and proc.returncode != 0:
        raise BrokenPromise(f"a run that was not signalled failed:\n{err}")
    return hit, err


def _check_after_signal(
    workspace: str, before: set[str], journal_before: int, expected: dict[str, bytes], stats: Stats
) -> set[str]:
    """The promises that hold after any kill; returns the partial targets' names."""
    try:
        after = _recorded(workspace)
    except BrokenPromise:
        stats.integrity_failures += 1
        raise
    journal = _journal(workspace)
    ran = set(journal[journal_before:])
    lost = before - after
    if lost:
        stats.records_lost += len(lost)
        raise BrokenPromise(f"records lost: {sorted(lost)}")
    again = ran & before
    if again:
        stats.recorded_tasks_rerun += len(again)
        raise BrokenPromise(f"tasks recorded as done ran again: {sorted(again)}")
    unjournaled = after - set(journal)
    if unjournaled:
        raise BrokenPromise(f"recorded as done but never finished: {sorted(unjournaled)}")
    for name in after:
        if _target(workspace, name) != expected[name]:
            raise BrokenPromise(f"{name} is recorded as done but its target is not what it wrote")
    partial = set()
    for name in set(expected) - after:
        content = _target(workspace, name)
        if content is not None and content != expected[name]:
            partial.add(name)
    stats.journaled_not_recorded += len((ran - after) - partial)
    return partial


def _complete(workspace: str, n_tasks: int, expected: dict[str, bytes], partial: set[str], stats: Stats) -> None:
    """A run that is not killed finishes the graph; a second one runs nothing."""
    before = _recorded(workspace)
    journal_before = len(_journal(workspace))
    n_workers = random.choice(MODES)
    proc = _start(workspace, n_workers, n_tasks)
    _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    if proc.returncode != 0:
        raise BrokenPromise(f"the completing run (n_workers={n_workers}) failed:\n{err}")
    ran = set(_journal(workspace)[journal_before:])
    if ran & before:
        stats.recorded_tasks_rerun += len(ran & before)
        raise BrokenPromise(f"the completing run ran recorded tasks again: {sorted(ran & before)}")
    if not partial <= ran:
        raise BrokenPromise(f"partial targets were not rebuilt: {sorted(partial - ran)}")
    wrong = [name for name, content in expected.items() if _target(workspace, name) != content]
    if wrong:
        raise BrokenPromise(f"after completion these targets are wrong: {wrong[:10]}")
    if _recorded(workspace) != set(expected):
        raise BrokenPromise("after completion not every task is recorded as done")
    journal_before = len(_journal(workspace))
    proc = _start(workspace, n_workers, n_tasks)
    _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    if proc.returncode != 0 or len(_journal(workspace)) != journal_before:
        raise BrokenPromise(f"a rerun of a complete graph executed tasks or failed:\n{err}")


def run(kills: int, n_tasks: int = 300, seed: int | None = None, root: str | None = None,
        kills_per_cycle: int = 4, verbose: bool = False) -> Stats:
    """Signal ``kills`` runs mid-way (SIGKILL, one in five SIGINT); raise
    :class:`BrokenPromise` on the first broken promise (the workspace is kept)."""
    rng = random.Random(seed)
    random.seed(rng.random())
    expected = workload.expected(n_tasks)
    stats = Stats()
    base = tempfile.mkdtemp(prefix="taskgraph-kill-loop-", dir=root)
    workspace = os.path.join(base, "ws")
    # How long a run from scratch takes here: signals land within it.
    os.makedirs(workspace)
    started = time.monotonic()
    proc = _start(workspace, -1, n_tasks)
    proc.communicate(timeout=RUN_TIMEOUT_S)
    full = max(0.3, time.monotonic() - started)
    try:
        while stats.kills + stats.interrupts < kills:
            shutil.rmtree(workspace)
            os.makedirs(workspace)
            partial: set[str] = set()
            for _ in range(kills_per_cycle):
                if stats.kills + stats.interrupts >= kills:
                    break
                before = _recorded(workspace)
                journal_before = len(_journal(workspace))
                n_workers = rng.choice(MODES)
                signum = signal.SIGINT if rng.random() < 0.2 else signal.SIGKILL
                # Within what is left of the run: later runs of a cycle skip more.
                delay = rng.uniform(0.0, full * max(0.3, 1.1 - len(before) / n_tasks))
                hit, _ = _signal_mid_run(workspace, n_workers, n_tasks, delay, signum, stats)
                if hit:
                    if signum == signal.SIGINT:
                        stats.interrupts += 1
                    else:
                        stats.kills += 1
                    stats.by_mode[n_workers] += 1
                else:
                    stats.signals_after_exit += 1
                new_partial = _check_after_signal(workspace, before, journal_before, expected, stats)
                # A partial target rebuilt by a later killed run is no longer partial.
                partial = (partial & {n for n in expected if _target(workspace, n) != expected[n]}) | new_partial
                stats.partial_targets += len(new_partial)
                if verbose:
                    print(f"signal {signum} after {delay:.2f}s (n_workers={n_workers}): hit={hit} "
                          f"recorded={len(_recorded(workspace))} partial={len(new_partial)}", flush=True)
            _complete(workspace, n_tasks, expected, partial, stats)
            stats.cycles += 1
    except BrokenPromise as error:
        raise BrokenPromise(f"{error}\n(workspace kept: {workspace})") from None
    shutil.rmtree(base)
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=200, help="signals that must hit a live run")
    parser.add_argument("--tasks", type=int, default=300, help="tasks in the pipeline")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--verbose", action="store_true", help="one line per signal")
    options = parser.parse_args()
    seed = options.seed if options.seed is not None else random.randrange(2**32)
    started = time.monotonic()
    try:
        stats = run(options.kills, options.tasks, seed, verbose=options.verbose)
    except BrokenPromise as error:
        print(f"FAILED (seed {seed}): {error}", file=sys.stderr)
        return 1
    print(f"kill loop: seed {seed}, {options.tasks} tasks, {time.monotonic() - started:.0f} s")
    print(stats.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
