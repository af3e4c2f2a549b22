"""A task module that takes ``TASKGRAPH_BENCH_IMPORT_S`` seconds (default 2) to import.

It stands for the modules of geospatial task functions (GDAL, pygeoprocessing,
scipy, pint registries), which take seconds to import: a worker that imports
the module again pays that again; a forked worker does not.
"""

import os
import time

time.sleep(float(os.environ.get("TASKGRAPH_BENCH_IMPORT_S", "2")))


def work(path, i):
    """Write ``i`` to ``path`` after 50 ms of computing."""
    deadline = time.perf_counter() + 0.05
    while time.perf_counter() < deadline:
        pass
    with open(path, "w") as stream:
        stream.write(str(i))
