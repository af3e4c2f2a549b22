"""examples/raster_pipeline.py run as a user would, in a subprocess: the first
run executes every task, the second none, and an input tile rewritten with
other values reruns exactly the tasks downstream of it."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "examples", "raster_pipeline.py")
SIZE, TILES = 48, 4
ALL_TASKS = {
    *(f"{kind} {index}" for index in range(TILES) for kind in ("make dem", "slope", "hillshade")),
    "make landcover", "make catchments", "reclassify", "slope mosaic", "zonal stats", "write csv",
}


def downstream_of(tile):
    return {f"slope {tile}", f"hillshade {tile}", "slope mosaic", "zonal stats", "write csv"}


def run_example(workspace, *extra):
    """Run the example; return (names of tasks that ran, number skipped, stdout)."""
    process = subprocess.run(
        [sys.executable, EXAMPLE, "--workspace", str(workspace), "--size", str(SIZE), "--tiles", str(TILES),
         "--n-workers", "2", *extra],
        capture_output=True, text=True, timeout=120,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    lines = process.stdout.splitlines()
    summary = next(line for line in lines if line.startswith("ran "))
    ran_count, skipped = int(summary.split()[1]), int(summary.split()[4])
    ran = [line.split("ran: ", 1)[1] for line in lines if line.startswith("  ran: ")]
    assert len(ran) == ran_count, process.stdout
    assert len(set(ran)) == len(ran), process.stdout
    return set(ran), skipped, process.stdout


def read_csv(workspace):
    with open(os.path.join(workspace, "catchments.csv"), newline="") as stream:
        return list(csv.DictReader(stream))


def rewrite_tile(workspace, tile):
    """Replace a tile's values (same shape and dtype, so the same file size)."""
    path = os.path.join(workspace, "inputs", f"dem_{tile}.npy")
    dem = np.load(path)
    rows = np.arange(dem.shape[0], dtype=np.float32)[:, None]
    np.save(path, dem + 100.0 * rows)  # tilt the tile southwards: steeper slopes
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
    mosaic = np.load(tmp_path / "slope_mosaic.npy")
    assert mosaic.shape == (SIZE, SIZE * TILES)
    assert np.array_equal(mosaic[:, 2 * SIZE : 3 * SIZE], np.load(tmp_path / "tiles" / "slope_2.npy"))
    first_csv = read_csv(tmp_path)
    assert [row["catchment"] for row in first_csv] == ["catchment_1", "catchment_2", "catchment_3"]
    assert sum(int(row["cells"]) for row in first_csv) == SIZE * SIZE * TILES

    before = outputs(tmp_path)
    ran, skipped, out = run_example(tmp_path)
    assert ran == set(), out
    assert skipped == len(ALL_TASKS)
    assert outputs(tmp_path) == before  # nothing was written either

    slope_before = np.load(tmp_path / "tiles" / "slope_2.npy")
    edited = rewrite_tile(tmp_path, 2)
    edited_values = np.load(edited)
    ran, skipped, out = run_example(tmp_path)
    assert ran == downstream_of(2), out
    assert skipped == len(ALL_TASKS) - len(downstream_of(2))
    # The generator did not run again: the edit is kept, and it reached the outputs.
    assert np.array_equal(np.load(edited), edited_values)
    after = outputs(tmp_path)
    rewritten = {path for path in before if after[path] != before[path]}
    assert rewritten == {
        os.path.join("inputs", "dem_2.npy"), os.path.join("tiles", "slope_2.npy"),
        os.path.join("tiles", "hillshade_2.npy"), "slope_mosaic.npy", "catchments.csv",
    }
    assert np.load(tmp_path / "tiles" / "slope_2.npy").mean() > slope_before.mean() + 5
    assert read_csv(tmp_path) != first_csv

    ran, _, out = run_example(tmp_path)
    assert ran == set(), out


def test_touch_tile_option_reruns_only_that_tiles_readers(tmp_path):
    run_example(tmp_path)
    ran, _, out = run_example(tmp_path, "--touch-tile", "1")
    assert ran == downstream_of(1), out
    assert run_example(tmp_path)[0] == set()


def test_content_hash_ignores_a_rewrite_with_the_same_values(tmp_path):
    ran, _, _ = run_example(tmp_path, "--hash-algorithm", "xxh3_128")
    assert ran == ALL_TASKS
    path = os.path.join(tmp_path, "inputs", "dem_0.npy")
    np.save(path, np.load(path))  # new mtime, same bytes
    ran, _, out = run_example(tmp_path, "--hash-algorithm", "xxh3_128")
    assert ran == set(), out
    rewrite_tile(tmp_path, 0)
    ran, _, out = run_example(tmp_path, "--hash-algorithm", "xxh3_128")
    assert ran == downstream_of(0), out


@pytest.mark.parametrize("argv", [["--touch-tile", "9"], ["--size", "2"]])
def test_bad_arguments_are_refused(tmp_path, argv):
    process = subprocess.run(
        [sys.executable, EXAMPLE, "--workspace", str(tmp_path), "--tiles", "2", *argv],
        capture_output=True, text=True, timeout=60,
    )
    assert process.returncode == 2
    assert "error" in process.stderr
