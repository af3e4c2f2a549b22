"""How fast the command line answers on a ledger that grew for years.

    python benchmarks/ledger_history.py [--records 100000] [--generations 10] [--reps 5]

Builds two workspaces of ``--records`` records each, written through the
ledger as real runs write them (one run per generation, each record with an
input and a target file that exist on disk):

- ``current``: one run of all the records, so every record is in the current
  graph and ``status`` checks every target;
- ``history``: ``--generations`` runs of ``records / generations`` tasks whose
  arguments changed every time, so one generation is the current graph and
  the rest is history.

Then times, each in a fresh process (the ``taskgraph`` command as a user runs
it, interpreter start-up included): ``status``, ``status --json``,
``status --all``, ``explain NAME``, ``graph --format json``, and, last, on the
history workspace, ``forget --stale --yes``. Prints the median seconds of each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from taskgraph._fingerprint import take
from taskgraph._ledger import Ledger, Outcome


def build(workspace: str, records: int, generations: int) -> None:
    """Write ``generations`` runs of ``records // generations`` tasks each."""
    files = os.path.join(workspace, "files")
    os.makedirs(files)
    per_run = records // generations
    for index in range(per_run):
        for role in ("in", "out"):
            with open(os.path.join(files, f"{role}{index}.txt"), "w") as stream:
                stream.write(str(index))
    fingerprints = {
        index: (take(os.path.join(files, f"in{index}.txt"), "sizetimestamp", None),
                take(os.path.join(files, f"out{index}.txt"), "sizetimestamp", None))
        for index in range(per_run)
    }
    for generation in range(generations):
        ledger = Ledger(workspace)
        ledger.begin_run(2)
        now = time.time()
        for index in range(per_run):
            key = f"{generation:04x}{index:028x}"
            source, target = fingerprints[index]
            assert source is not None and target is not None
            ledger.consider(key)
            ledger.record_decision(key, f"task {index}", True, [{"code": "new_task", "detail": "no record"}])
            ledger.record(Outcome(
                record_key=key, task_key=key, name=f"task {index}", func="pipeline.step", source_hash="0" * 32,
                args=f"'files/in{index}.txt', 'files/out{index}.txt', {generation}", hash_algorithm="sizetimestamp",
                store_result=False, started=now, ended=now + 0.01, worker="taskgraph-worker-0 (pid 1)",
                inputs={os.path.join(files, f"in{index}.txt"): source},
                targets={os.path.join(files, f"out{index}.txt"): target},
                fresh=True, cpu_time=0.01, peak_memory=50 << 20,
                arguments=f'{{"args":["\'in{index}\'","\'out{index}\'","{generation}"],"kwargs":{{}}}}',
            ))
            if index % 5000 == 4999:
                ledger.flush()
        ledger.end_run()
        ledger.close()


def timed(command: list[str], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=600)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="records per workspace (default 100000)")
    parser.add_argument("--generations", type=int, default=10, help="runs of the history workspace (default 10)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each command (default 5)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="taskgraph-history-bench-")
    command = [sys.executable, "-m", "taskgraph"]
    try:
        for label, generations in (("current", 1), ("history", args.generations)):
            workspace = os.path.join(root, label)
            os.makedirs(workspace)
            started = time.perf_counter()
            build(workspace, args.records, generations)
            size = os.path.getsize(os.path.join(workspace, "taskgraph_ledger.sqlite")) / 2**20
            print(f"{label}: {args.records:,} records in {generations} runs, {size:.0f} MiB, "
                  f"built in {time.perf_counter() - started:.0f} s")
            for name, extra in (("status", []), ("status --json", ["--json"]), ("status --all", ["--all"]),
                                ("explain NAME", ["task 7"]), ("graph --format json", ["--format", "json"])):
                verb = name.split()[0]
                seconds = timed([*command, verb, workspace, *extra], args.reps)
                print(f"  {name:<22} {seconds:6.2f} s")
            if generations > 1:
                seconds = timed([*command, "forget", workspace, "--stale", "--yes"], 1)
                print(f"  {'forget --stale --yes':<22} {seconds:6.2f} s (once)")
                seconds = timed([*command, "status", workspace], args.reps)
                print(f"  {'status, after':<22} {seconds:6.2f} s")
        startup = timed([sys.executable, "-c", "import taskgraph._cli"], args.reps)
        print(f"(python -c 'import taskgraph._cli' alone: {startup:.2f} s)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
