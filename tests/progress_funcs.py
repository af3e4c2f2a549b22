"""Task functions and the pipeline script of tests/test_progress.py (worker
processes import this module to find the functions)."""

import logging
import os
import sys
import threading
import time

import taskgraph
from taskgraph._errors import TasksFailedError

LOGGER = logging.getLogger("tiles")


def tile(index, path, bad, seconds):
    """Log a warning, then write ``path``; tile ``bad`` raises instead."""
    time.sleep(seconds)
    LOGGER.warning("tile %d looks odd", index)
    if index == bad:
        raise ValueError(f"tile {index} is broken")
    with open(path, "w") as stream:
        stream.write(str(index))


def main(argv):
    """``WORKSPACE N_TASKS BAD SECONDS LOGGING``: a keep-going pipeline whose
    tasks and parent log warnings. LOGGING is ``early`` (basicConfig before
    the graph), ``late`` (after it) or ``none`` (Python's last resort)."""
    ws, n_tasks, bad, seconds, setup = argv[0], int(argv[1]), int(argv[2]), float(argv[3]), argv[4]
    config = {"level": logging.WARNING, "format": "%(levelname)s %(name)s: %(message)s"}
    if setup == "early":
        logging.basicConfig(**config)
    graph = taskgraph.TaskGraph(ws, 2, keep_going=True)
    if setup == "late":
        logging.basicConfig(**config)
    parent = logging.getLogger("pipeline")
    stop = threading.Event()

    def heartbeat():
        beat = 0
        while not stop.wait(0.15):
            beat += 1
            parent.warning("parent heartbeat %d while waiting", beat)

    for index in range(n_tasks):
        path = os.path.join(ws, f"tile_{index}.txt")
        graph.add_task(tile, args=(index, path, bad, seconds), target_path_list=[path], task_name=f"tile {index}")
        if index % 10 == 0:
            parent.warning("parent added tile %d", index)
    graph.close()
    beats = threading.Thread(target=heartbeat, daemon=True)
    beats.start()
    try:
        graph.join(timeout=120)
        print("join returned")
    except TasksFailedError as error:
        print(f"join raised {type(error).__name__}: {error}")
    finally:
        stop.set()
        beats.join(timeout=10)


if __name__ == "__main__":
    main(sys.argv[1:])
