"""examples/raster_pipeline.py run as a user would, in a subprocess: the first
run executes every task, the second none, and an input tile rewritten with
other values reruns exactly the tasks downstream of it. Needs rasterio (the
``test`` and ``examples`` extras install it)."""

import csv
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
from procs import processes_marked

rasterio = pytest.importorskip("rasterio", reason="the example needs rasterio: pip install -e '.[examples]'")

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "examples", "raster_pipeline.py")
SIZE, TILES = 48, 4
ALL_TASKS = {
    *(f"{kind} {index}" for index in range(TILES) for kind in ("make dem", "reproject", "slope", "hillshade")),
    "make landcover", "make catchments", "reclassify", "slope mosaic", "hillshade mosaic", "zonal stats",
    "write csv",
}


def downstream_of(tile):
    return {f"reproject {tile}", f"slope {tile}", f"hillshade {tile}", "slope mosaic", "hillshade mosaic",
            "zonal stats", "write csv"}


MARKER = "TASKGRAPH_EXAMPLE_TEST_RUN"


def run_example(workspace, *extra):
    """Run the example; return (names of tasks that ran, number skipped, stdout).

    Also checks that the run left no process behind: the script and its
    workers carry a marker in their environment."""
    marker = uuid.uuid4().hex
    process = subprocess.run(
        [sys.executable, EXAMPLE, "--workspace", str(workspace), "--size", str(SIZE), "--tiles", str(TILES),
         "--n-workers", "2", *extra],
        capture_output=True, text=True, timeout=120, env={**os.environ, MARKER: marker},
    )
    assert not processes_marked(MARKER, marker)
    assert process.returncode == 0, process.stdout + process.stderr
    # One summary line, then one line per task that ran: "  name: why".
    summary, *lines = process.stdout.splitlines()
    assert summary.startswith("ran "), process.stdout
    ran_count, skipped = int(summary.split()[1]), int(summary.split()[4])
    assert all(line.startswith("  ") and ": " in line and len(line) < 160 for line in lines), process.stdout
    ran = [line[2:].split(": ", 1)[0] for line in lines]
    assert len(ran) == ran_count, process.stdout
    assert len(set(ran)) == len(ran), process.stdout
    return set(ran), skipped, process.stdout


def read_csv(workspace):
    with open(os.path.join(workspace, "catchments.csv"), newline="") as stream:
        return list(csv.DictReader(stream))


def read_band(path):
    with rasterio.open(path) as dataset:
        return dataset.read(1)


def rewrite_tile(workspace, tile):
    """Replace a tile's values in place (same shape, dtype and georeferencing)."""
    path = os.path.join(workspace, "inputs", f"dem_{tile}.tif")
    with rasterio.open(path, "r+") as dataset:
        dem = dataset.read(1)
        rows = np.arange(dem.shape[0], dtype=np.float32)[:, None]
        dataset.write(dem + 100.0 * rows, 1)  # tilt the tile southwards: steeper slopes
    return path


def outputs(workspace):
    """Every file the pipeline made, with its mtime, except the ledger."""
    found = {}
    for folder, _, names in os.walk(workspace):
        for name in names:
            if not name.startswith("taskgraph_ledger"):
                path = os.path.join(folder, name)
                found[os.path.relpath(path, workspace)] = os.stat(path).st_mtime_ns
    return found


def test_rerun_skips_everything_and_a_rewritten_tile_reruns_only_its_readers(tmp_path):
    ran, skipped, out = run_example(tmp_path)
    assert ran == ALL_TASKS, out
    assert skipped == 0
    assert out.count("\n") == 1 + len(ALL_TASKS) and out.count(": new\n") == len(ALL_TASKS), out
    with rasterio.open(tmp_path / "inputs" / "dem_0.tif") as dem:
        assert dem.crs.to_epsg() == 4326
    with rasterio.open(tmp_path / "slope_mosaic.tif") as mosaic, \
            rasterio.open(tmp_path / "tiles" / "slope_2.tif") as tile:
        assert mosaic.crs.to_epsg() == 32632 and tile.crs.to_epsg() == 32632
        assert mosaic.res == tile.res
        # Tile 2 lies inside the mosaic on the same grid, and its interior is what the mosaic holds there.
        window = rasterio.windows.from_bounds(*tile.bounds, transform=mosaic.transform).round_offsets()
        assert window.col_off > 0 and window.col_off + tile.width < mosaic.width
        inside = mosaic.read(1, window=rasterio.windows.Window(window.col_off, window.row_off, tile.width, tile.height))
        middle = (slice(SIZE // 3, 2 * SIZE // 3), slice(SIZE // 3, 2 * SIZE // 3))
        assert np.array_equal(inside[middle], tile.read(1)[middle])
    first_csv = read_csv(tmp_path)
    assert [row["catchment"] for row in first_csv] == ["catchment_1", "catchment_2", "catchment_3"]
    # The catchments share the strip (about 15 x 15.5 km per tile) between them.
    area = sum(float(row["area_km2"]) for row in first_csv)
    assert 0.8 * TILES * 15 * 15.5 < area < 1.05 * TILES * 15 * 15.5, first_csv
    assert all(0 < float(row["mean_roughness"]) < 0.2 for row in first_csv), first_csv

    before = outputs(tmp_path)
    ran, skipped, out = run_example(tmp_path)
    assert ran == set(), out
    assert skipped == len(ALL_TASKS)
    assert outputs(tmp_path) == before  # nothing was written either

    slope_before = read_band(tmp_path / "tiles" / "slope_2.tif")
    edited = rewrite_tile(tmp_path, 2)
    edited_values = read_band(edited)
    ran, skipped, out = run_example(tmp_path)
    assert ran == downstream_of(2), out
    assert skipped == len(ALL_TASKS) - len(downstream_of(2))
    # The generator did not run again: the edit is kept, and it reached the outputs.
    assert np.array_equal(read_band(edited), edited_values)
    after = outputs(tmp_path)
    rewritten = {path for path in before if after[path] != before[path]}
    assert rewritten == {
        os.path.join("inputs", "dem_2.tif"), os.path.join("utm", "dem_2.tif"), os.path.join("tiles", "slope_2.tif"),
        os.path.join("tiles", "hillshade_2.tif"), "slope_mosaic.tif", "hillshade_mosaic.tif", "catchments.csv",
    }
    slope_after = read_band(tmp_path / "tiles" / "slope_2.tif")
    valid = (slope_before != -9999) & (slope_after != -9999)
    assert slope_after[valid].mean() > slope_before[valid].mean() + 5
    assert read_csv(tmp_path) != first_csv

    ran, _, out = run_example(tmp_path)
    assert ran == set(), out


def test_a_closed_pipe_is_quiet(tmp_path):
    """``python examples/raster_pipeline.py | head -1``: the reader may be gone
    before the summary is written; the run still finishes and says nothing."""
    process = subprocess.Popen(
        [sys.executable, EXAMPLE, "--workspace", str(tmp_path), "--size", str(SIZE), "--tiles", str(TILES)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before anything is written
    try:
        stderr = process.stderr.read()
        returncode = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
    assert returncode == 0 and stderr == "", stderr
    ran, skipped, out = run_example(tmp_path)
    assert ran == set() and skipped == len(ALL_TASKS), out


def test_touch_and_change_tile_options_rerun_only_that_tiles_readers(tmp_path):
    run_example(tmp_path)
    ran, _, out = run_example(tmp_path, "--touch-tile", "1")
    assert ran == downstream_of(1), out
    assert run_example(tmp_path)[0] == set()
    # Another seed for tile 0 is another call of its generator: it runs, and so does what reads the tile.
    ran, _, out = run_example(tmp_path, "--change-tile", "0")
    assert ran == {"make dem 0"} | downstream_of(0), out


def test_content_hash_ignores_a_rewrite_with_the_same_values(tmp_path):
    ran, _, _ = run_example(tmp_path, "--hash-algorithm", "xxh3_128")
    assert ran == ALL_TASKS
    path = os.path.join(tmp_path, "inputs", "dem_0.tif")
    with open(path, "rb") as stream:
        data = stream.read()
    with open(path, "wb") as stream:
        stream.write(data)  # new mtime, same bytes
    ran, _, out = run_example(tmp_path, "--hash-algorithm", "xxh3_128")
    assert ran == set(), out
    rewrite_tile(tmp_path, 0)
    ran, _, out = run_example(tmp_path, "--hash-algorithm", "xxh3_128")
    assert ran == downstream_of(0), out


@pytest.mark.parametrize("argv", [["--touch-tile", "9"], ["--size", "2"], ["--touch-tile", "1"]])
def test_bad_arguments_are_refused(tmp_path, argv):
    process = subprocess.run(
        [sys.executable, EXAMPLE, "--workspace", str(tmp_path), "--tiles", "2", *argv],
        capture_output=True, text=True, timeout=60,
    )
    assert process.returncode == 2
    assert "error" in process.stderr
