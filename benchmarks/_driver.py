"""Runs one measurement with whichever ``taskgraph`` this interpreter imports; prints JSON.

Usage: python _driver.py WORKLOAD WORKSPACE PARAMS_JSON

The runner (``run.py``) starts one fresh interpreter per measurement, with this
package's venv or natcap's. A workload that has phases (``cold`` then ``rerun``)
is called once per phase on the same workspace, each phase in its own process,
as a user's rerun would be: nothing cached in memory carries over, and the peak
RSS of each phase is its own. ``taskgraph`` is imported only by the workloads that
use it, so the baselines (``cat``, raw xxh3, ``multiprocessing``) run without it.

Every figure is wall time from just before ``TaskGraph(...)`` to ``join()``
returning, so start-up and shutdown of worker processes are included.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _workloads


def _cpu():
    """CPU seconds of this process and of the children it has waited for (worker processes, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _start():
    return time.perf_counter(), _cpu()


def _since(start):
    """Wall and CPU seconds since ``_start()``.

    CPU time moves far less than wall time with the load of other processes on a
    shared machine, so it is the steadier figure for the inline (n_workers=-1) runs.
    """
    return {"seconds": time.perf_counter() - start[0], "cpu_seconds": _cpu() - start[1]}


def overhead(ws, n, n_workers, **_):
    """N independent trivial tasks, no files."""
    import taskgraph

    start = _start()
    graph = taskgraph.TaskGraph(ws, n_workers)
    for i in range(n):
        graph.add_task(_workloads.trivial, args=(i,), task_name=f"t{i}")
    graph.close()
    graph.join()
    return _since(start)


def _target_mtimes(ws, suffix):
    return {entry.name: entry.stat().st_mtime_ns for entry in os.scandir(ws) if entry.name.endswith(suffix)}


def noop(ws, n, n_workers, hash, phase, **_):
    """N tasks with one small target each; ``cold`` creates them, ``rerun`` must execute none."""
    import taskgraph

    before = _target_mtimes(ws, ".txt") if phase == "rerun" else None
    start = _start()
    graph = taskgraph.TaskGraph(ws, n_workers)
    for i in range(n):
        target = os.path.join(ws, f"t{i}.txt")
        graph.add_task(_workloads.write, args=(target, i), target_path_list=[target], hash_algorithm=hash,
                       task_name=f"t{i}")
    graph.close()
    graph.join()
    figures = _since(start)
    if before is not None and _target_mtimes(ws, ".txt") != before:
        raise SystemExit(f"the no-op rerun of {n} tasks executed some of them")
    return figures


def chain(ws, n, n_workers, **_):
    """A linear chain: task i reads task i-1's small file and writes its own."""
    import taskgraph

    start = _start()
    graph = taskgraph.TaskGraph(ws, n_workers)
    previous_path, previous_task = None, None
    for i in range(n):
        path = os.path.join(ws, f"link{i}.txt")
        previous_task = graph.add_task(
            _workloads.chain_step, args=(previous_path, path, i), target_path_list=[path],
            dependent_task_list=[previous_task] if previous_task else [], task_name=f"link{i}")
        previous_path = path
    graph.close()
    graph.join()
    figures = _since(start)
    with open(previous_path) as stream:
        if not stream.read().endswith(f"{n - 1}\n"):
            raise SystemExit("the chain's last file is wrong")
    return figures


def _read_bytes():
    """Bytes this process has read through read() calls so far (page cache included)."""
    import psutil

    return psutil.Process().io_counters().read_chars


def big(ws, path, hash, phase, **_):
    """One task whose input is the big file; inline, so every byte read is read by this process."""
    import taskgraph

    target = os.path.join(ws, "size.txt")
    read_before = _read_bytes()
    start = _start()
    graph = taskgraph.TaskGraph(ws, -1)
    graph.add_task(_workloads.file_size, args=(path, target), target_path_list=[target], hash_algorithm=hash,
                   task_name="big")
    graph.close()
    graph.join()
    return dict(_since(start), read_bytes=_read_bytes() - read_before)


def cat(ws, path, **_):
    """``cat FILE > /dev/null``."""
    start = _start()
    subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)
    return _since(start)


def raw_xxh3(ws, path, **_):
    """xxh3-128 over the file with the xxhash module, streaming 1 MiB reads (what the engine does)."""
    import xxhash

    start = _start()
    digest = xxhash.xxh3_128()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as stream:
        while count := stream.readinto(buffer):
            digest.update(view[:count])
    digest.hexdigest()
    return _since(start)


def tiles(ws, folder, count, side, n_workers, mode, **_):
    """Slope of every tile, then one mosaic task; through taskgraph or a bare ``multiprocessing.Pool``.

    ``mode`` is ``taskgraph``, ``mp`` (a plain ``Pool``) or ``mp_nice`` (its workers niced to 10).
    """
    sources = [os.path.join(folder, f"tile_{index:04d}.npy") for index in range(count)]
    slopes = [os.path.join(ws, f"slope_{index:04d}.npy") for index in range(count)]
    mosaic_path = os.path.join(ws, "mosaic.npy")
    mosaic_side = round(count ** 0.5)
    start = _start()
    if mode in ("mp", "mp_nice"):
        import multiprocessing

        # mp_nice: workers at the niceness this package gives its own (10), to tell that cost from the engine's.
        nice = {"initializer": os.nice, "initargs": (10,)} if mode == "mp_nice" else {}
        with multiprocessing.Pool(n_workers, **nice) as pool:
            pool.starmap(_workloads.slope, zip(sources, slopes, strict=True), chunksize=1)
            pool.apply(_workloads.mosaic, (slopes, mosaic_side, mosaic_path))
    else:
        import taskgraph

        graph = taskgraph.TaskGraph(ws, n_workers)
        slope_tasks = [graph.add_task(_workloads.slope, args=(source, target), target_path_list=[target],
                                      task_name=f"slope{index}")
                       for index, (source, target) in enumerate(zip(sources, slopes, strict=True))]
        graph.add_task(_workloads.mosaic, args=(slopes, mosaic_side, mosaic_path), target_path_list=[mosaic_path],
                       dependent_task_list=slope_tasks, task_name="mosaic")
        graph.close()
        graph.join()
    figures = _since(start)
    if os.path.getsize(mosaic_path) < count * side * side * 4:
        raise SystemExit("the mosaic is incomplete")
    return figures


def slow_import(ws, n, n_workers, start_method=None, **_):
    """``n`` tasks of a module that takes seconds to import (``_slow_import``), imported here first.

    Timed from before the import (as a user's script pays it) to ``join()``: a worker that imports
    the module again adds that time to the run; a forked worker does not.
    """
    start = _start()
    import _slow_import

    import taskgraph

    extra = {"start_method": start_method} if start_method else {}
    graph = taskgraph.TaskGraph(ws, n_workers, **extra)
    for i in range(n):
        path = os.path.join(ws, f"out{i}.txt")
        graph.add_task(_slow_import.work, args=(path, i), target_path_list=[path], task_name=f"t{i}")
    graph.close()
    graph.join()
    return _since(start)


def uneven(ws, n_workers, chain, link_s, short, short_s, phase, **_):
    """Many short independent tasks, then one long chain added last, then a fan-in of everything.

    ``cold`` runs it once (the ledger records every duration); ``rerun`` deletes the targets and
    runs it again, timed: its makespan against the lower bound max(critical path, total work /
    workers). Added in this order, first-added-first keeps one worker idle while the chain runs
    at the end; the remaining critical path, known from the first run, starts the chain first.
    """
    import taskgraph

    if phase == "rerun":
        for entry in os.scandir(ws):
            if entry.name.endswith(".out"):
                os.remove(entry.path)
    fan_s = 0.05
    start = _start()
    graph = taskgraph.TaskGraph(ws, n_workers)
    tasks, paths = [], []
    for i in range(short):
        path = os.path.join(ws, f"short{i}.out")
        # i in the call: calls that differ only in their targets would be one task, each a dependency of the next.
        tasks.append(graph.add_task(_workloads.timed_step, args=(path, short_s, i), target_path_list=[path],
                                    task_name=f"short {i}"))
        paths.append(path)
    previous = None
    for i in range(chain):
        path = os.path.join(ws, f"link{i}.out")
        upstream = (paths[-1],) if previous else ()
        previous = graph.add_task(_workloads.timed_step, args=(path, link_s, *upstream), target_path_list=[path],
                                  dependent_task_list=[previous] if previous else [], task_name=f"link {i}")
        paths.append(path)
    tasks.append(previous)
    final = os.path.join(ws, "fan_in.out")
    graph.add_task(_workloads.timed_step, args=(final, fan_s, *paths), target_path_list=[final],
                   dependent_task_list=tasks, task_name="fan in")
    graph.close()
    graph.join()
    figures = _since(start)
    total = chain * link_s + short * short_s + fan_s
    figures["lower_bound"] = max(chain * link_s + fan_s, total / n_workers)
    return figures


def dag_dependencies(n, fan=8, depth=10):
    """The dependencies (earlier indices) of each of ``n`` tasks in a wide-and-deep DAG.

    Blocks follow one another, each block's root depending on the previous block's
    join: root -> ``fan`` chains of ``depth`` tasks -> one join of the chains' ends.
    With the defaults a block is 82 tasks; the last block is cut at ``n``.
    """
    deps: list[list[int]] = []
    previous_join = None
    while len(deps) < n:
        root = len(deps)
        deps.append([] if previous_join is None else [previous_join])
        ends = []
        for _ in range(fan):
            last = root
            for _ in range(depth):
                if len(deps) >= n:
                    return deps
                deps.append([last])
                last = len(deps) - 1
            ends.append(last)
        if len(deps) >= n:
            return deps
        deps.append(ends)
        previous_join = len(deps) - 1
    return deps


def scale(ws, n, n_workers, phase, **_):
    """N trivial tasks (no files) in the DAG of ``dag_dependencies``."""
    import taskgraph

    structure = dag_dependencies(n)
    start = _start()
    graph = taskgraph.TaskGraph(ws, n_workers)
    tasks = []
    for i, deps in enumerate(structure):
        tasks.append(graph.add_task(_workloads.trivial, args=(i,), dependent_task_list=[tasks[d] for d in deps],
                                    task_name=f"t{i}"))
    graph.close()
    graph.join()
    return _since(start)


# -- the DAG of small files, and the peers ----------------------------------------------------------


def _dag_paths(ws, n):
    return [os.path.join(ws, f"d{i}.txt") for i in range(n)]


def dag_files(ws, n, n_workers, hash="sizetimestamp", **_):
    """N tasks in the DAG of ``dag_dependencies``, each writing one small file (its dependencies' files are inputs)."""
    import taskgraph

    structure, paths = dag_dependencies(n), _dag_paths(ws, n)
    start = _start()
    graph = taskgraph.TaskGraph(ws, n_workers)
    tasks = []
    for i, deps in enumerate(structure):
        tasks.append(graph.add_task(_workloads.dag_step, args=(paths[i], i, *(paths[d] for d in deps)),
                                    target_path_list=[paths[i]], dependent_task_list=[tasks[d] for d in deps],
                                    hash_algorithm=hash, task_name=f"t{i}"))
    graph.close()
    graph.join()
    return _since(start)


def loop(ws, n, shape, **_):
    """The floor: the same calls in a plain loop, no engine (nothing is skipped on a rerun)."""
    start = _start()
    if shape == "w1":
        for i in range(n):
            _workloads.write(os.path.join(ws, f"t{i}.txt"), i)
    else:
        paths = _dag_paths(ws, n)
        for i, deps in enumerate(dag_dependencies(n)):
            _workloads.dag_step(paths[i], i, *(paths[d] for d in deps))
    return _since(start)


def doit_run(ws, n, shape, checker, **_):
    """The same tasks through doit (one process), its state in ``ws``; ``checker`` is ``md5`` or ``timestamp``."""
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    if shape == "w1":
        def task_w1():
            for i in range(n):
                path = os.path.join(ws, f"t{i}.txt")
                yield {"name": f"t{i}", "actions": [(_workloads.write, (path, i))], "targets": [path],
                       "uptodate": [True]}
        tasks = {"task_w1": task_w1}
    else:
        structure, paths = dag_dependencies(n), _dag_paths(ws, n)

        def task_dag():
            for i, deps in enumerate(structure):
                inputs = [paths[d] for d in deps]
                yield {"name": f"t{i}", "actions": [(_workloads.dag_step, (paths[i], i, *inputs))],
                       "file_dep": inputs, "targets": [paths[i]]}
        tasks = {"task_dag": task_dag}
    config = {"check_file_uptodate": checker, "dep_file": os.path.join(ws, ".doit.db"), "verbosity": 0,
              "reporter": "zero"}
    start = _start()
    code = DoitMain(ModuleTaskLoader(dict(tasks, DOIT_CONFIG=config))).run(["run"])
    figures = _since(start)
    if code:
        raise SystemExit(f"doit failed with exit code {code}")
    return figures


def joblib_run(ws, n, shape, **_):
    """The same calls through ``joblib.Memory`` (its cache in ``ws``): a rerun is a cache hit per call."""
    import joblib

    memory = joblib.Memory(os.path.join(ws, "joblib-cache"), verbose=0)
    start = _start()
    if shape == "w1":
        write = memory.cache(_workloads.write)
        for i in range(n):
            write(os.path.join(ws, f"t{i}.txt"), i)
    else:
        step, paths = memory.cache(_workloads.dag_step), _dag_paths(ws, n)
        for i, deps in enumerate(dag_dependencies(n)):
            step(paths[i], i, *(paths[d] for d in deps))
    return _since(start)


WORKLOADS = {"overhead": overhead, "noop": noop, "chain": chain, "big": big, "cat": cat, "raw_xxh3": raw_xxh3,
             "tiles": tiles, "scale": scale, "slow_import": slow_import, "uneven": uneven,
             "dag_files": dag_files, "loop": loop, "doit": doit_run, "joblib": joblib_run}


if __name__ == "__main__":
    workload, workspace, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    figures = WORKLOADS[workload](workspace, **params)
    # ru_maxrss is in KiB on Linux: the peak resident set of this process, interpreter included.
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(figures))
