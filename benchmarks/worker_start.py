"""What starting a worker process costs, beside a bare ``os.fork()``, with a light and a heavy caller.

    python benchmarks/worker_start.py [--reps 7] [--heap-mb 400]

Each measurement runs in a fresh interpreter (``--light``: nothing but taskgraph imported;
``--heavy``: numpy, and rasterio when installed, imported and ``--heap-mb`` of Python objects
alive, as in a geospatial script) and times, from the same process state:

- ``bare fork``: ``os.fork()``, the child writes one byte to a pipe and exits, the parent reads it;
- ``fork server``: ``ProcessPool(1, 'fork')`` made (the fork server forked from the caller, once per pool);
- ``first worker, fork``: then one trivial job submitted and its result back (the worker forked by the
  server, its set-up, one round trip): what each worker costs;
- ``first worker, spawn``: the same with ``start_method='spawn'`` (a fresh interpreter per worker).

The issue's bar: the fork pool within 50 ms of the bare fork, whatever the caller imported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _bare_fork() -> float:
    read, write = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.write(write, b"x")
        os._exit(0)
    os.read(read, 1)
    elapsed = time.perf_counter() - start
    os.waitpid(pid, 0)
    os.close(read)
    os.close(write)
    return elapsed


def _pool(start_method: str) -> float:
    from taskgraph._job import call_job
    from taskgraph._pool import ProcessPool

    sys.path.insert(0, HERE)
    import _workloads

    done = threading.Event()
    start = time.perf_counter()
    pool = ProcessPool(1, start_method)
    made = time.perf_counter()
    pool.submit(call_job(0, "trivial", _workloads.trivial, (1,), remote=True), lambda result: done.set())
    done.wait(60)
    elapsed = time.perf_counter() - made
    pool.shutdown()
    return made - start, elapsed


def _measure(heavy: bool, heap_mb: int) -> dict[str, float]:
    keep = []
    if heavy:
        import numpy

        keep.append(numpy.zeros(1))
        try:
            import rasterio

            keep.append(rasterio)
        except ImportError:
            pass
        # Small objects, as a script's dicts and lists: about 100 bytes each.
        keep.append([{"i": i} for i in range(heap_mb * 10_000)])
    import taskgraph  # noqa: F401

    bare = _bare_fork()
    server, worker = _pool("fork")
    _, spawned = _pool("spawn")
    return {"bare fork": bare, "fork server": server, "pool, fork": worker, "pool, spawn": spawned}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--heap-mb", type=int, default=400)
    parser.add_argument("--child", choices=("light", "heavy"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child == "heavy", args.heap_mb)))
        return 0
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores, medians of {args.reps} fresh interpreters\n")
    print("| caller | bare fork | fork server (once per pool) | first worker, fork | worker minus bare fork | "
          "first worker, spawn |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind in ("light", "heavy"):
        runs = []
        for _ in range(args.reps):
            out = subprocess.run([sys.executable, __file__, "--child", kind, "--heap-mb", str(args.heap_mb)],
                                 capture_output=True, text=True, check=True, timeout=600)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        med = {key: statistics.median(run[key] for run in runs) * 1e3 for key in runs[0]}
        extra = statistics.median((run["pool, fork"] - run["bare fork"]) * 1e3 for run in runs)
        label = "light" if kind == "light" else f"heavy (numpy, rasterio, {args.heap_mb} MB of objects)"
        print(f"| {label} | {med['bare fork']:.1f} ms | {med['fork server']:.1f} ms | {med['pool, fork']:.1f} ms | "
              f"{extra:.1f} ms | {med['pool, spawn']:.0f} ms |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
