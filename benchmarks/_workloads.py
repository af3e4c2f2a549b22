"""Task functions for the benchmark drivers (importable by worker processes).

Everything here is plain Python and numpy, so the same functions run under this
package, under natcap taskgraph and in a bare ``multiprocessing.Pool``.
"""

import os


def trivial(i):
    """Return ``i``: a task whose cost is all overhead."""
    return i


def write(path, i):
    """Write ``i`` to ``path`` (one small target)."""
    with open(path, "w") as stream:
        stream.write(str(i))


def chain_step(previous_path, path, i):
    """Read the previous link's small file and write this link's own."""
    text = ""
    if previous_path is not None:
        with open(previous_path) as stream:
            text = stream.read()
    with open(path, "w") as stream:
        stream.write(f"{text[-32:]}{i}\n")


def file_size(input_path, path):
    """Record the size of ``input_path`` in ``path``, reading none of the input.

    The task reads nothing, so any read of the input counted around a run is
    the engine's fingerprinting.
    """
    with open(path, "w") as stream:
        stream.write(str(os.path.getsize(input_path)))


def slope(dem_path, slope_path):
    """Slope magnitude of one elevation tile (``numpy.gradient``), saved as float32 ``.npy``."""
    import numpy

    dem = numpy.load(dem_path)
    d_row, d_col = numpy.gradient(dem)
    numpy.save(slope_path, numpy.hypot(d_row, d_col).astype(numpy.float32))


def mosaic(slope_paths, side, mosaic_path):
    """Put ``side`` x ``side`` tiles (row-major order) into one array saved as ``.npy``."""
    import numpy

    first = numpy.load(slope_paths[0], mmap_mode="r")
    rows, cols = first.shape
    out = numpy.lib.format.open_memmap(mosaic_path, mode="w+", dtype=numpy.float32,
                                       shape=(rows * side, cols * side))
    for index, path in enumerate(slope_paths):
        r, c = divmod(index, side)
        out[r * rows:(r + 1) * rows, c * cols:(c + 1) * cols] = numpy.load(path)
    out.flush()
    del out


def timed_step(path, seconds, *inputs):
    """Sleep ``seconds`` (a task of known length that leaves the cores free), then write ``path``."""
    import time

    time.sleep(seconds)
    with open(path, "w") as stream:
        stream.write(str(seconds))


def dag_step(path, i, *dep_paths):
    """One task of the DAG workload: write ``i`` to ``path`` (the dependencies' files are its inputs)."""
    with open(path, "w") as stream:
        stream.write(str(i))
