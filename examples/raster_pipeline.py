"""A raster pipeline on a strip of DEM tiles: slope and hillshade per tile, a
slope mosaic, land-cover roughness, zonal statistics per catchment and a CSV.

Run it twice: the second run executes nothing. Change one input tile and only
the tasks that read it run again::

    python examples/raster_pipeline.py                  # first run: everything
    python examples/raster_pipeline.py                  # second run: ran 0
    python examples/raster_pipeline.py --touch-tile 3   # edit tile 3 in place: reruns its
                                                        # slope, hillshade, the mosaic, stats, CSV

The pipeline makes its own inputs (numpy ``.npy`` rasters under
``WORKSPACE/inputs``) with tasks, so a rerun skips them. Those tasks check
their targets for existence only (``hash_target_files=False``): an input
edited afterwards, by hand or by ``--touch-tile``, is kept, and only the tasks
that read it rerun. A generator reruns, and overwrites its files, only when
its arguments change (``--size``, ``--tiles``, ``--change-tile``, which draws
tile K from another random seed) or a file it made is deleted.

Only numpy is needed (``pip install -e '.[examples]'``). Task functions live at
module level in this file and the script body is under ``if __name__ ==
'__main__'``: worker processes are started with ``spawn`` and import this file
again (as ``__mp_main__``) to find them.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys

import numpy as np

import taskgraph

#: Ground width of one tile in metres; the cell size is this over ``--size``,
#: so the terrain (and its slopes) look the same at any resolution.
TILE_EXTENT_M = 15_360.0
N_CATCHMENTS = 3
#: Land-cover class -> Manning's roughness coefficient.
ROUGHNESS = {1: 0.030, 2: 0.035, 3: 0.150, 4: 0.040, 5: 0.015}
LANDCOVER_NAMES = {1: "water", 2: "grassland", 3: "forest", 4: "cropland", 5: "urban"}
STEEP_DEG = 15.0


# -- input generation (stands in for downloading real data) ---------------------------------


def _terrain(x_m: np.ndarray, y_m: np.ndarray) -> np.ndarray:
    """A smooth synthetic landscape in metres, continuous across tiles."""
    return (
        800.0
        + 300.0 * np.sin(x_m / 2500.0) * np.cos(y_m / 1900.0)
        + 150.0 * np.sin(x_m / 900.0 + y_m / 1300.0)
        + 40.0 * np.cos(y_m / 400.0)
    )


def make_dem_tile(index: int, size: int, seed: int, out_path: str) -> None:
    """Write DEM tile ``index``: ``size`` x ``size`` float32 metres, column
    block ``index`` of one landscape, plus survey noise drawn from ``seed``."""
    cell = TILE_EXTENT_M / size
    rows, cols = np.mgrid[0:size, 0:size]
    x_m = (cols + index * size + 0.5) * cell
    y_m = (rows + 0.5) * cell
    rng = np.random.default_rng([seed, index])
    dem = _terrain(x_m, y_m) + rng.normal(0.0, 2.0, (size, size))
    _save(out_path, dem.astype(np.float32))


def make_landcover(size: int, n_tiles: int, out_path: str) -> None:
    """Write a land-cover raster (classes 1..5, uint8) over the whole strip."""
    cell = TILE_EXTENT_M / size
    rows, cols = np.mgrid[0:size, 0 : size * n_tiles]
    x_m, y_m = (cols + 0.5) * cell, (rows + 0.5) * cell
    elevation = _terrain(x_m, y_m)
    texture = np.sin(x_m / 700.0) * np.cos(y_m / 1100.0)
    classes = np.full(elevation.shape, 2, dtype=np.uint8)  # grassland
    classes[texture > 0.35] = 4  # cropland
    classes[elevation > 950.0] = 3  # forest on the heights
    classes[elevation < 480.0] = 1  # water in the lows
    rng = np.random.default_rng(7)
    town = rng.random(elevation.shape) < 0.02
    classes[town & (classes == 4)] = 5  # scattered buildings among fields
    _save(out_path, classes)


def make_catchments(size: int, n_tiles: int, out_paths: list[str]) -> None:
    """Write one boolean mask per catchment: bands across the strip whose
    divides wander north to south. Together the masks cover every cell once."""
    width = size * n_tiles
    rows, cols = np.mgrid[0:size, 0:width]
    divides = [np.full(rows.shape, -np.inf)]
    for k in range(1, len(out_paths)):
        divides.append(k * width / len(out_paths) + 0.04 * width * np.sin(np.pi * (k + 1) * rows / size))
    divides.append(np.full(rows.shape, np.inf))
    for k, path in enumerate(out_paths):
        _save(path, (cols >= divides[k]) & (cols < divides[k + 1]))


def touch_tile(path: str, touch: int) -> None:
    """Edit a DEM tile in place, as a user replacing an input would: carve a
    landslide scar (a 25 m deep hollow) whose position depends on ``touch``.
    Shape and dtype are kept, so the file keeps its size; its values change."""
    dem = np.load(path)
    size = dem.shape[0]
    rows, cols = np.mgrid[0:size, 0:size]
    rng = np.random.default_rng(touch)
    r0, c0 = rng.uniform(0.2, 0.8, 2) * size
    dem -= (25.0 * np.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / (0.01 * size * size))).astype(np.float32)
    _save(path, dem)


# -- processing -------------------------------------------------------------------------------


def _gradient(dem: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """dz/d(row), dz/d(column) in metres per metre. Tiles are processed on
    their own, so edge cells use one-sided differences (no halo)."""
    dz_drow, dz_dcol = np.gradient(dem.astype(np.float64), cell)
    return dz_drow, dz_dcol


def slope(dem_path: str, cell: float, out_path: str) -> None:
    """Slope in degrees (float32)."""
    dz_drow, dz_dcol = _gradient(np.load(dem_path), cell)
    _save(out_path, np.degrees(np.arctan(np.hypot(dz_drow, dz_dcol))).astype(np.float32))


def hillshade(dem_path: str, cell: float, out_path: str, azimuth: float = 315.0, altitude: float = 45.0) -> None:
    """Hillshade 0..255 (uint8) for a sun at ``azimuth`` (clockwise from north)
    and ``altitude`` degrees. Rows run north to south, columns west to east."""
    dz_drow, dz_dcol = _gradient(np.load(dem_path), cell)
    slope_rad = np.arctan(np.hypot(dz_drow, dz_dcol))
    aspect = np.arctan2(-dz_dcol, dz_drow)  # downslope direction, clockwise from north
    zenith, sun = np.radians(90.0 - altitude), np.radians(azimuth)
    shade = np.cos(zenith) * np.cos(slope_rad) + np.sin(zenith) * np.sin(slope_rad) * np.cos(sun - aspect)
    _save(out_path, np.clip(255.0 * shade, 0, 255).astype(np.uint8))


def mosaic(tile_paths: list[str], out_path: str) -> None:
    """Tiles side by side (west to east), written tile by tile into a
    memory-mapped .npy so the whole mosaic is never held in memory."""
    first = np.load(tile_paths[0], mmap_mode="r")
    rows, cols = first.shape
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=first.dtype, shape=(rows, cols * len(tile_paths)))
    for k, path in enumerate(tile_paths):
        out[:, k * cols : (k + 1) * cols] = np.load(path, mmap_mode="r")
    out.flush()
    del out


def reclassify(landcover_path: str, table: dict[int, float], out_path: str) -> None:
    """Land-cover classes to roughness coefficients (float32; 0 for unknown classes)."""
    classes = np.load(landcover_path)
    lookup = np.zeros(256, dtype=np.float32)
    for value, coefficient in table.items():
        lookup[value] = coefficient
    _save(out_path, lookup[classes])


def zonal_stats(
    slope_path: str, roughness_path: str, catchment_paths: list[str], cell: float
) -> dict[str, dict[str, float]]:
    """Per catchment: cells, area, mean and max slope, share of steep cells,
    mean roughness. The dict is stored in the ledger (``store_result=True``)."""
    slope_deg = np.load(slope_path, mmap_mode="r")
    roughness = np.load(roughness_path, mmap_mode="r")
    stats = {}
    for path in catchment_paths:
        mask = np.load(path)
        values = slope_deg[mask]
        stats[os.path.splitext(os.path.basename(path))[0]] = {
            "cells": int(mask.sum()),
            "area_km2": float(mask.sum() * cell * cell / 1e6),
            "mean_slope_deg": float(values.mean()),
            "max_slope_deg": float(values.max()),
            "steep_fraction": float((values > STEEP_DEG).mean()),
            "mean_roughness": float(roughness[mask].mean()),
        }
    return stats


def write_csv(stats: dict[str, dict[str, float]], out_path: str) -> None:
    columns = ["mean_slope_deg", "max_slope_deg", "steep_fraction", "mean_roughness", "cells", "area_km2"]
    with open(out_path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["catchment", *columns])
        for name, values in sorted(stats.items()):
            writer.writerow([name, *(f"{values[c]:.6g}" for c in columns)])


def _save(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as stream:
        np.save(stream, array)


# -- the graph ------------------------------------------------------------------------------


def build(
    graph: taskgraph.TaskGraph,
    workspace: str,
    size: int,
    n_tiles: int,
    seeds: dict[int, int],
    hash_algorithm: str = "sizetimestamp",
) -> list[taskgraph.Task]:
    """Add the pipeline's tasks to ``graph`` and return them in order.

    Blocks once, on the zonal statistics, whose value the CSV task needs.
    """
    inputs, tiles = os.path.join(workspace, "inputs"), os.path.join(workspace, "tiles")
    os.makedirs(inputs, exist_ok=True)
    os.makedirs(tiles, exist_ok=True)
    cell = TILE_EXTENT_M / size
    common = {"hash_algorithm": hash_algorithm}
    tasks: list[taskgraph.Task] = []

    slope_paths, slope_tasks = [], []
    for index in range(n_tiles):
        dem = os.path.join(inputs, f"dem_{index}.npy")
        make_dem = graph.add_task(
            make_dem_tile, args=(index, size, seeds.get(index, 0), dem), target_path_list=[dem],
            hash_target_files=False, task_name=f"make dem {index}", **common)
        slope_path = os.path.join(tiles, f"slope_{index}.npy")
        shade_path = os.path.join(tiles, f"hillshade_{index}.npy")
        slope_task = graph.add_task(
            slope, args=(dem, cell, slope_path), target_path_list=[slope_path],
            dependent_task_list=[make_dem], task_name=f"slope {index}", **common)
        shade_task = graph.add_task(
            hillshade, args=(dem, cell, shade_path), target_path_list=[shade_path],
            dependent_task_list=[make_dem], task_name=f"hillshade {index}", **common)
        tasks += [make_dem, slope_task, shade_task]
        slope_paths.append(slope_path)
        slope_tasks.append(slope_task)

    landcover = os.path.join(inputs, "landcover.npy")
    catchments = [os.path.join(inputs, f"catchment_{k + 1}.npy") for k in range(N_CATCHMENTS)]
    make_lc = graph.add_task(
        make_landcover, args=(size, n_tiles, landcover), target_path_list=[landcover],
        hash_target_files=False, task_name="make landcover", **common)
    make_ct = graph.add_task(
        make_catchments, args=(size, n_tiles, catchments), target_path_list=catchments,
        hash_target_files=False, task_name="make catchments", **common)

    slope_mosaic = os.path.join(workspace, "slope_mosaic.npy")
    mosaic_task = graph.add_task(
        mosaic, args=(slope_paths, slope_mosaic), target_path_list=[slope_mosaic],
        dependent_task_list=slope_tasks, task_name="slope mosaic", **common)
    roughness = os.path.join(workspace, "roughness.npy")
    reclass = graph.add_task(
        reclassify, args=(landcover, ROUGHNESS, roughness), target_path_list=[roughness],
        dependent_task_list=[make_lc], task_name="reclassify", **common)
    stats = graph.add_task(
        zonal_stats, args=(slope_mosaic, roughness, catchments, cell), store_result=True,
        dependent_task_list=[mosaic_task, reclass, make_ct], task_name="zonal stats", **common)
    tasks += [make_lc, make_ct, mosaic_task, reclass, stats]

    # The CSV is made from the statistics' value, so wait for it here. When
    # the statistics are unchanged the CSV task is identical and is skipped.
    summary = os.path.join(workspace, "catchments.csv")
    tasks.append(graph.add_task(
        write_csv, args=(stats.get(), summary), target_path_list=[summary],
        task_name="write csv", **common))
    return tasks


def run(
    workspace: str,
    size: int = 512,
    n_tiles: int = 8,
    n_workers: int = 2,
    seeds: dict[int, int] | None = None,
    hash_algorithm: str = "sizetimestamp",
) -> list[taskgraph.Task]:
    """Run the whole pipeline in ``workspace`` and return its finished tasks."""
    os.makedirs(workspace, exist_ok=True)
    with taskgraph.TaskGraph(workspace, n_workers) as graph:
        tasks = build(graph, workspace, size, n_tiles, seeds or {}, hash_algorithm)
    return tasks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--workspace", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "workspace"),
                        help="where inputs, outputs and the ledger go (default examples/workspace)")
    parser.add_argument("--size", type=int, default=512, help="tile size in cells (default 512)")
    parser.add_argument("--tiles", type=int, default=8, help="number of DEM tiles (default 8)")
    parser.add_argument("--n-workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--touch-tile", type=int, action="append", default=[], metavar="K",
                        help="before running, edit input tile K's values in place (repeatable); "
                             "only the tasks that read it rerun")
    parser.add_argument("--change-tile", type=int, action="append", default=[], metavar="K",
                        help="regenerate tile K from another random seed: its generator reruns too")
    parser.add_argument("--hash-algorithm", default="sizetimestamp",
                        help="how input files are compared: 'sizetimestamp' (default) or a content "
                             "hash such as 'xxh3_128' (a rewritten but identical file then reruns nothing)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every task decision")
    args = parser.parse_args(argv)
    if args.size < 3 or args.tiles < 1:
        parser.error("--size must be at least 3 and --tiles at least 1")
    for index in args.touch_tile + args.change_tile:
        if not 0 <= index < args.tiles:
            parser.error(f"tile {index} does not exist: tiles are 0..{args.tiles - 1}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    for index in args.touch_tile:
        path = os.path.join(args.workspace, "inputs", f"dem_{index}.npy")
        if not os.path.exists(path):
            parser.error(f"--touch-tile {index}: {path} does not exist yet; run the pipeline once first")
        touch_tile(path, touch=int.from_bytes(os.urandom(4), "little"))
        print(f"edited {path}")

    tasks = run(args.workspace, args.size, args.tiles, args.n_workers,
                {index: 1 for index in args.change_tile}, args.hash_algorithm)
    ran = [task for task in tasks if task.state == "ran"]
    skipped = sum(task.state == "skipped" for task in tasks)
    print(f"ran {len(ran)} tasks, skipped {skipped}")
    for task in ran:
        print(f"  ran: {task.task_name}")
        for reason in task.reasons:
            print(f"      why: {reason}")
    print(f"outputs in {args.workspace}: slope_mosaic.npy, tiles/hillshade_*.npy, catchments.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
