"""Input data the benchmarks read: the large file and the elevation tiles, under the cache folder.

Both live under ``~/.cache/taskgraph-bench`` (not a temporary folder) so that the
tiles are generated once for every later run; the large file is made for one run
of the suite and deleted after it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "taskgraph-bench")
_CHUNK = 1 << 24


def free_bytes(folder: str) -> int:
    """Free bytes for an unprivileged user on the file system of ``folder``, as ``df`` reports them."""
    out = subprocess.run(["df", "-P", "-B1", folder], check=True, capture_output=True, text=True).stdout
    return int(out.splitlines()[-1].split()[3])


def make_big_file(size: int) -> str:
    """Write ``size`` bytes of random data to a new file under the cache folder and return its path.

    Raises:
        SystemExit: if the disk does not have the file's size plus 1 GiB to spare.
    """
    os.makedirs(CACHE, exist_ok=True)
    free = free_bytes(CACHE)
    if free < size + (1 << 30):
        raise SystemExit(f"the big-input benchmark needs {size / 2**30:.1f} GiB and 1 GiB to spare under {CACHE}, "
                         f"but only {free / 2**30:.1f} GiB are free: pass a smaller --big-mib or skip it "
                         f"(--only without big)")
    _remove_stale_big_files()
    path = os.path.join(CACHE, f"big-input-{os.getpid()}.bin")
    # One random chunk repeated: writing is fast, and neither xxh3 nor md5 runs faster on repeats.
    chunk = os.urandom(_CHUNK)
    with open(path, "wb") as stream:
        left = size
        while left > 0:
            stream.write(chunk[:left])
            left -= len(chunk)
    return path


def _remove_stale_big_files() -> None:
    """Delete big files left by runs that were killed outright (SIGKILL skips the cleanup)."""
    import psutil

    for name in os.listdir(CACHE):
        if name.startswith("big-input-") and name.endswith(".bin"):
            pid = name[len("big-input-"):-len(".bin")]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                os.remove(os.path.join(CACHE, name))


def tiles_folder(count: int, side: int) -> str:
    """The folder of ``count`` elevation tiles of ``side`` x ``side`` float32, generated on first use.

    Tiles are named ``tile_0000.npy`` ... in row-major order of a square mosaic.
    """
    import numpy

    folder = os.path.join(CACHE, f"tiles-{count}x{side}")
    done = os.path.join(folder, "complete")
    if os.path.exists(done):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    rng = numpy.random.default_rng(20261123)
    for index in range(count):
        # A random walk along both axes: a rough but continuous surface, like a DEM.
        dem = rng.standard_normal((side, side), dtype=numpy.float32).cumsum(axis=0).cumsum(axis=1)
        numpy.save(os.path.join(folder, f"tile_{index:04d}.npy"), dem.astype(numpy.float32))
    with open(done, "w") as stream:
        stream.write(f"{count} tiles of {side}x{side} float32\n")
    return folder
