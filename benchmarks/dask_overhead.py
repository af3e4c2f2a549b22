"""Per-task overhead through a Dask LocalCluster beside the local process pool.

    python benchmarks/dask_overhead.py [--n 1000] [--reps 3] [--in-flight 0]

Needs ``pip install 'taskgraph[dask]'``. The cluster (scheduler and two worker
processes on 127.0.0.1) runs on the same machine, as does the pool measured
beside it, so both compete for the same cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _workloads

import taskgraph


def per_task_us(make, n: int) -> float:
    workspace = tempfile.mkdtemp(prefix="taskgraph-dask-bench-")
    try:
        start = time.perf_counter()
        with make(workspace) as graph:
            for i in range(n):
                graph.add_task(_workloads.trivial, args=(i,), task_name=f"t{i}")
        return (time.perf_counter() - start) / n * 1e6
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=0, help="n_workers for the Dask graph (0: default cap)")
    args = parser.parse_args()
    import distributed

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, silence_logs=40)
    client = distributed.Client(cluster)
    try:
        dask_us, pool_us = [], []
        for _ in range(args.reps):
            dask_us.append(per_task_us(lambda ws: taskgraph.TaskGraph(ws, args.in_flight, executor=client), args.n))
            pool_us.append(per_task_us(lambda ws: taskgraph.TaskGraph(ws, 2), args.n))
    finally:
        client.close()
        cluster.close()
    print(f"{args.n} trivial tasks, medians of {args.reps}: dask {statistics.median(dask_us):.0f} us/task, "
          f"local pool {statistics.median(pool_us):.0f} us/task")
    return 0


if __name__ == "__main__":
    sys.exit(main())
