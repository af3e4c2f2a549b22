"""Per-task overhead of the scheduling policies beside the default priority heap.

    python benchmarks/policy_overhead.py [--n 2000] [--reps 5] [--n-workers 0 2]

Runs trivial tasks (``transient_run=True``, so every one executes) with the
default scheduler, ``scheduler='longest_first'`` with ``expected_time`` hints,
and ``memory_limit`` with ``memory`` hints, interleaving the variants so that
load from other processes spreads over all of them. Prints the median
microseconds per task of each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _workloads

import taskgraph

VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (TaskGraph options, add_task hints)
    "default": ({}, {}),
    "longest_first": ({"scheduler": "longest_first"}, {"expected_time": 1.0}),
    "memory_limit": ({"memory_limit": 10_000}, {"memory": 10}),
}


def per_task_us(n_workers: int, n: int, graph_options: dict[str, Any], hints: dict[str, Any]) -> float:
    workspace = tempfile.mkdtemp(prefix="taskgraph-policy-bench-")
    try:
        start = time.perf_counter()
        with taskgraph.TaskGraph(workspace, n_workers, progress=False, **graph_options) as graph:
            for i in range(n):
                graph.add_task(_workloads.trivial, args=(i,), task_name=f"t{i}", transient_run=True, **hints)
        return (time.perf_counter() - start) / n * 1e6
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--n-workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    for n_workers in args.n_workers:
        samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(args.reps):
            for name, (options, hints) in VARIANTS.items():
                samples[name].append(per_task_us(n_workers, args.n, options, hints))
        cells = ", ".join(f"{name} {statistics.median(values):.0f}" for name, values in samples.items())
        print(f"n_workers={n_workers}, {args.n} trivial tasks, medians of {args.reps} (us/task): {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
