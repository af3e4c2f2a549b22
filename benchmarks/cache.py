"""What the shared cache (``TaskGraph(cache=...)``) costs and saves.

    python benchmarks/cache.py [--mib 1024] [--reps 3] [--noop-n 2000] [--noop-reps 5] [--small-n 500] [--json PATH]

Every measurement runs in a fresh interpreter (``--driver``), wall time from
just before ``TaskGraph(...)`` to ``join()`` returning, inline (``n_workers=-1``).

- **big target**: one task reads a ``--mib`` input and writes a target of the
  same size (float32 ``sqrt(|x|) + 1``, numpy, 16 MiB at a time), run in a fresh
  workspace: *recomputed* without a cache; *computed and put* with a new cache;
  *restored* in another fresh workspace from that cache (this includes hashing
  the input for the cache key, since that workspace has never seen it);
  *restored, input digest known* (the target deleted and restored again in the
  same workspace, whose ledger has the input's digest); beside them ``cp`` of
  the target and a plain xxh3-128 of it (python ``xxhash``), both from the page
  cache as the restores are. Each measurement starts after an ``os.sync()``, so
  none is slowed by the write-back of the files an earlier one wrote (a put's
  fsync of its object is measured: it is part of a put). The files live under ``--dir`` (default: a new
  temporary directory, removed afterwards); they need about 6 times ``--mib``.
- **no-op rerun**: ``--noop-n`` tasks with one small target each, made once
  with the cache; then reruns (all up to date) alternately with ``cache=`` and
  without, after two warm-up reruns: the per-task cost of having a cache when
  nothing needs it.
- **small tasks**: ``--small-n`` tasks with one small target each in a fresh
  workspace: run without a cache, run and put, and restored in another fresh
  workspace: the per-task cost of a put and of a hit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)
_CHUNK = 16 << 20


def transform(src: str, dst: str) -> None:
    """A raster-like step: float32 ``sqrt(|x|) + 1`` over the whole file, 16 MiB at a time."""
    import numpy

    with open(src, "rb") as source, open(dst, "wb") as out:
        while True:
            chunk = source.read(_CHUNK)
            if not chunk:
                break
            values = numpy.frombuffer(chunk, dtype=numpy.float32)
            out.write((numpy.sqrt(numpy.abs(numpy.nan_to_num(values))) + 1).astype(numpy.float32).tobytes())


def write(path: str, i: int) -> None:
    with open(path, "w") as stream:
        stream.write(f"{i}\n" * 8)


# -- the driver: one measurement per interpreter ----------------------------------------------------


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _read_chars() -> int:
    try:
        import psutil

        return int(psutil.Process().io_counters().read_chars)
    except (ImportError, AttributeError, OSError):
        return 0


def drive(kind: str, ws: str, cache: str | None, params: dict[str, object]) -> dict[str, object]:
    import taskgraph

    read_before = _read_chars()
    start, cpu = time.perf_counter(), _cpu()
    with taskgraph.TaskGraph(ws, -1, cache=cache if cache else False, progress=False) as graph:
        if kind == "big":
            target = os.path.join(ws, "out.bin")
            tasks = [graph.add_task(transform, args=(str(params["src"]), target), target_path_list=[target],
                                    task_name="transform")]
        else:
            tasks = []
            for i in range(int(str(params["n"]))):
                target = os.path.join(ws, f"t{i}.txt")
                tasks.append(graph.add_task(write, args=(target, i), target_path_list=[target],
                                            task_name=f"t{i}"))
    seconds, cpu_seconds = time.perf_counter() - start, _cpu() - cpu
    # The jobs' own time (restore or call, fingerprints, put), without the engine's start and commits.
    task_seconds = sum(report.wall_time for report in graph.report())
    states: dict[str, int] = {}
    for task in tasks:
        states[task.state] = states.get(task.state, 0) + 1
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "task_seconds": task_seconds, "states": states,
            "read_mib": (_read_chars() - read_before) / 2**20}


def measure(kind: str, ws: str, cache: str | None, expect: str, **params: object) -> dict[str, object]:
    os.sync()  # no write-back of an earlier measurement's files slows this one down
    process = subprocess.run(
        [sys.executable, HERE, "--driver", kind, ws, cache or "", json.dumps(params)],
        capture_output=True, text=True, timeout=3600,
    )
    if process.returncode != 0:
        raise RuntimeError(f"{kind} in {ws} failed:\n{process.stderr}")
    figures: dict[str, object] = json.loads(process.stdout.strip().splitlines()[-1])
    states = figures["states"]
    assert isinstance(states, dict)
    if set(states) != {expect}:
        raise RuntimeError(f"{kind} in {ws}: expected every task {expect}, got {states}")
    return figures


def _timed(command: list[str]) -> float:
    os.sync()
    start = time.perf_counter()
    subprocess.run(command, check=True, timeout=3600)
    return time.perf_counter() - start


def _xxh3_seconds(path: str) -> float:
    code = ("import sys, time, xxhash; h = xxhash.xxh3_128(); b = bytearray(1 << 20); v = memoryview(b); "
            "f = open(sys.argv[1], 'rb', buffering=0); t = time.perf_counter()\n"
            "while True:\n n = f.readinto(b)\n if not n: break\n h.update(v[:n])\n"
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True, timeout=3600)
    return float(out.stdout)


def _median(rows: list[dict[str, object]], key: str = "seconds") -> float:
    return statistics.median(float(str(row[key])) for row in rows)


# -- the suite ------------------------------------------------------------------------------------


def big_target(root: str, mib: int, reps: int) -> dict[str, list[float]]:
    src = os.path.join(root, "input.bin")
    block = os.urandom(_CHUNK)
    with open(src, "wb") as stream:
        for _ in range(max(1, mib * 2**20 // _CHUNK)):
            stream.write(block)
    sides: dict[str, list[float]] = {name: [] for name in (
        "recomputed", "computed and put", "restored", "restored, input digest known", "cp", "xxh3 of the target",
        "recomputed: the task alone", "computed and put: the task alone", "restored: the task alone",
        "restored, input digest known: the task alone",
        "restored: MiB read", "restored, input digest known: MiB read")}
    for rep in range(reps):
        base = os.path.join(root, f"rep{rep}")
        cache = os.path.join(base, "cache")
        figures = {}
        figures["recomputed"] = measure("big", os.path.join(base, "plain"), None, "ran", src=src)
        shutil.rmtree(os.path.join(base, "plain"))
        figures["computed and put"] = measure("big", os.path.join(base, "A"), cache, "ran", src=src)
        figures["restored"] = measure("big", os.path.join(base, "B"), cache, "restored", src=src)
        os.unlink(os.path.join(base, "B", "out.bin"))
        figures["restored, input digest known"] = measure("big", os.path.join(base, "B"), cache, "restored", src=src)
        for name, row in figures.items():
            sides[name].append(float(str(row["seconds"])))
            sides[f"{name}: the task alone"].append(float(str(row["task_seconds"])))
            if name.startswith("restored"):
                sides[f"{name}: MiB read"].append(float(str(row["read_mib"])))
        target = os.path.join(base, "A", "out.bin")
        sides["cp"].append(_timed(["cp", target, os.path.join(base, "copy.bin")]))
        sides["xxh3 of the target"].append(_xxh3_seconds(target))
        shutil.rmtree(base)
    return sides


def noop_rerun(root: str, n: int, reps: int) -> dict[str, list[dict[str, object]]]:
    ws, cache = os.path.join(root, "noop"), os.path.join(root, "noop-cache")
    measure("small", ws, cache, "ran", n=n)
    for _ in range(2):  # the first rerun rehashes racily clean targets; then the steady state
        measure("small", ws, cache, "skipped", n=n)
    sides: dict[str, list[dict[str, object]]] = {"with cache": [], "without": []}
    for _ in range(reps):
        sides["with cache"].append(measure("small", ws, cache, "skipped", n=n))
        sides["without"].append(measure("small", ws, None, "skipped", n=n))
    shutil.rmtree(ws)
    shutil.rmtree(cache)
    return sides


def small_tasks(root: str, n: int, reps: int) -> dict[str, list[dict[str, object]]]:
    sides: dict[str, list[dict[str, object]]] = {"run, no cache": [], "run and put": [], "restored": []}
    for rep in range(reps):
        base = os.path.join(root, f"small{rep}")
        cache = os.path.join(base, "cache")
        sides["run, no cache"].append(measure("small", os.path.join(base, "plain"), None, "ran", n=n))
        sides["run and put"].append(measure("small", os.path.join(base, "A"), cache, "ran", n=n))
        sides["restored"].append(measure("small", os.path.join(base, "B"), cache, "restored", n=n))
        shutil.rmtree(base)
    return sides


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--driver":
        kind, ws, cache, params = sys.argv[2:6]
        print(json.dumps(drive(kind, ws, cache or None, json.loads(params))))
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="size of the big target (default 1024)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--noop-n", type=int, default=2000)
    parser.add_argument("--noop-reps", type=int, default=5)
    parser.add_argument("--small-n", type=int, default=500)
    parser.add_argument("--only", default="big,noop,small", help="any of big, noop, small")
    parser.add_argument("--dir", help="where the files go (default: a new temporary directory)")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="taskgraph-cache-bench-", dir=args.dir)
    only = set(args.only.split(","))
    results: dict[str, object] = {"argv": sys.argv[1:], "python": sys.version.split()[0]}
    try:
        if "big" in only:
            big = big_target(root, args.mib, args.reps)
            results["big"] = big
            print(f"big target, {args.mib} MiB, medians of {args.reps}:")
            for name, values in big.items():
                unit = "" if name.endswith("MiB read") else " s"
                print(f"  {name:<40} {statistics.median(values):8.3f}{unit}")
        if "noop" in only:
            noop = noop_rerun(root, args.noop_n, args.noop_reps)
            results["noop"] = noop
            print(f"no-op rerun of {args.noop_n} tasks, n_workers=-1, medians of {args.noop_reps}:")
            for name, rows in noop.items():
                print(f"  {name:<12} {_median(rows) / args.noop_n * 1e6:7.1f} us/task wall, "
                      f"{_median(rows, 'cpu_seconds') / args.noop_n * 1e6:7.1f} us/task CPU")
            pairs = [(float(str(a["seconds"])) - float(str(b["seconds"]))) / args.noop_n * 1e6
                     for a, b in zip(noop["with cache"], noop["without"], strict=True)]
            cpu_pairs = [(float(str(a["cpu_seconds"])) - float(str(b["cpu_seconds"]))) / args.noop_n * 1e6
                         for a, b in zip(noop["with cache"], noop["without"], strict=True)]
            print(f"  cache minus none, paired: {statistics.median(pairs):+.1f} us/task wall, "
                  f"{statistics.median(cpu_pairs):+.1f} us/task CPU")
        if "small" in only:
            small = small_tasks(root, args.small_n, args.reps)
            results["small"] = small
            print(f"{args.small_n} small tasks, n_workers=-1, medians of {args.reps}:")
            for name, rows in small.items():
                print(f"  {name:<14} {_median(rows):7.3f} s, {_median(rows) / args.small_n * 1e3:6.2f} ms/task")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(results, stream, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
