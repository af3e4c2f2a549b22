"""Runs one workload with whichever ``taskgraph`` this interpreter imports; prints JSON.

Usage: python _driver.py WORKLOAD N N_WORKERS HASH WORKSPACE
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _workloads

import taskgraph


def overhead(n, n_workers, ws):
    start = time.perf_counter()
    graph = taskgraph.TaskGraph(ws, n_workers)
    for i in range(n):
        graph.add_task(_workloads.trivial, args=(i,), task_name=f"t{i}")
    graph.close()
    graph.join()
    return time.perf_counter() - start


def noop_rerun(n, n_workers, ws, hash_algorithm):
    def once():
        start = time.perf_counter()
        graph = taskgraph.TaskGraph(ws, n_workers)
        for i in range(n):
            target = os.path.join(ws, f"t{i}.txt")
            graph.add_task(_workloads.write, args=(target, i), target_path_list=[target],
                           hash_algorithm=hash_algorithm, task_name=f"t{i}")
        graph.close()
        graph.join()
        return time.perf_counter() - start

    once()
    mtimes = {name: os.stat(os.path.join(ws, name)).st_mtime_ns for name in os.listdir(ws) if name.endswith(".txt")}
    seconds = once()
    after = {name: os.stat(os.path.join(ws, name)).st_mtime_ns for name in mtimes}
    if after != mtimes:
        raise SystemExit("the rerun executed tasks")
    return seconds


if __name__ == "__main__":
    workload, n, n_workers, hash_algorithm, ws = sys.argv[1:6]
    n, n_workers = int(n), int(n_workers)
    if workload == "overhead":
        seconds = overhead(n, n_workers, ws)
    else:
        seconds = noop_rerun(n, n_workers, ws, hash_algorithm)
    print(json.dumps({"seconds": seconds, "per_task_us": seconds / n * 1e6}))
