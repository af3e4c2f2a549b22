"""A small raster pipeline: synthetic DEM tiles -> slope and hillshade per tile
-> mosaic, land-cover reclassification, zonal statistics per catchment, CSV.

Run it twice: the second run executes nothing. Change one input tile and only
the tasks that read it run again::

    python examples/raster_pipeline.py                  # first run: everything
    python examples/raster_pipeline.py                  # second run: nothing
    python examples/raster_pipeline.py --change-tile 3  # rewrites tile 3's DEM, reruns its chain

Inputs are made by the pipeline itself (numpy ``.npy`` rasters), so the
example needs only numpy (``pip install -e '.[examples]'``).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np

import taskgraph

CELL_SIZE = 30.0  # metres


def make_dem_tile(index: int, size: int, seed_offset: int, out_path: str) -> None:
    """A synthetic elevation tile: smooth hills plus noise."""
    rng = np.random.default_rng(1000 * index + seed_offset)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    hills = 200 * np.sin(3 * x + index) * np.cos(2 * y - index) + 500
    np.save(out_path, (hills + rng.normal(0, 2, (size, size))).astype(np.float32))


def make_landcover(size: int, n_tiles: int, out_path: str) -> None:
    """A land-cover raster over the whole mosaic, classes 1..5."""
    rng = np.random.default_rng(7)
    np.save(out_path, rng.integers(1, 6, (size, size * n_tiles), dtype=np.uint8))


def make_catchments(size: int, n_tiles: int, out_path: str) -> None:
    """Catchment ids (1..3) as vertical bands over the mosaic."""
    ids = np.zeros((size, size * n_tiles), dtype=np.uint8)
    for band, columns in enumerate(np.array_split(np.arange(size * n_tiles), 3), start=1):
        ids[:, columns] = band
    np.save(out_path, ids)


def slope(dem_path: str, out_path: str) -> None:
    """Slope in degrees."""
    dem = np.load(dem_path)
    dz_dy, dz_dx = np.gradient(dem, CELL_SIZE)
    np.save(out_path, np.degrees(np.arctan(np.hypot(dz_dx, dz_dy))).astype(np.float32))


def hillshade(dem_path: str, out_path: str, azimuth: float = 315.0, altitude: float = 45.0) -> None:
    """Hillshade (0..255) for a sun at ``azimuth``/``altitude`` degrees."""
    dem = np.load(dem_path)
    dz_dy, dz_dx = np.gradient(dem, CELL_SIZE)
    slope_rad = np.arctan(np.hypot(dz_dx, dz_dy))
    aspect = np.arctan2(-dz_dx, dz_dy)
    az, alt = np.radians(360.0 - azimuth + 90.0), np.radians(altitude)
    shade = np.sin(alt) * np.cos(slope_rad) + np.cos(alt) * np.sin(slope_rad) * np.cos(az - aspect)
    np.save(out_path, np.clip(255 * shade, 0, 255).astype(np.uint8))


def mosaic(tile_paths: list[str], out_path: str) -> None:
    """Tiles side by side."""
    np.save(out_path, np.concatenate([np.load(path) for path in tile_paths], axis=1))


def reclassify(landcover_path: str, table: dict[int, float], out_path: str) -> None:
    """Land-cover classes to roughness coefficients."""
    classes = np.load(landcover_path)
    out = np.zeros(classes.shape, dtype=np.float32)
    for value, coefficient in table.items():
        out[classes == value] = coefficient
    np.save(out_path, out)


def zonal_stats(slope_path: str, roughness_path: str, catchments_path: str) -> dict[int, dict[str, float]]:
    """Mean slope and mean roughness per catchment (stored in the ledger)."""
    slope_values, roughness = np.load(slope_path), np.load(roughness_path)
    zones = np.load(catchments_path)
    return {
        int(zone): {
            "mean_slope": float(slope_values[zones == zone].mean()),
            "mean_roughness": float(roughness[zones == zone].mean()),
            "cells": int((zones == zone).sum()),
        }
        for zone in np.unique(zones)
    }


def write_csv(stats: dict[int, dict[str, float]], out_path: str) -> None:
    with open(out_path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["catchment", "mean_slope_deg", "mean_roughness", "cells"])
        for zone, values in sorted(stats.items()):
            writer.writerow([zone, f"{values['mean_slope']:.3f}", f"{values['mean_roughness']:.4f}", values["cells"]])


def run(workspace: str, size: int, n_tiles: int, n_workers: int, changed: dict[int, int]) -> list[taskgraph.Task]:
    os.makedirs(workspace, exist_ok=True)

    def path(name: str) -> str:
        return os.path.join(workspace, name)

    tasks: list[taskgraph.Task] = []
    with taskgraph.TaskGraph(workspace, n_workers) as graph:
        slope_tiles, slope_tasks = [], []
        for index in range(n_tiles):
            dem = path(f"dem_{index}.npy")
            make = graph.add_task(make_dem_tile, args=(index, size, changed.get(index, 0), dem),
                                  target_path_list=[dem], task_name=f"make dem {index}")
            slope_path, shade_path = path(f"slope_{index}.npy"), path(f"hillshade_{index}.npy")
            slope_tasks.append(graph.add_task(slope, args=(dem, slope_path), target_path_list=[slope_path],
                                              dependent_task_list=[make], task_name=f"slope {index}"))
            tasks += [make, slope_tasks[-1], graph.add_task(
                hillshade, args=(dem, shade_path), target_path_list=[shade_path],
                dependent_task_list=[make], task_name=f"hillshade {index}")]
            slope_tiles.append(slope_path)
        landcover, catchments = path("landcover.npy"), path("catchments.npy")
        make_lc = graph.add_task(make_landcover, args=(size, n_tiles, landcover),
                                 target_path_list=[landcover], task_name="make landcover")
        make_ct = graph.add_task(make_catchments, args=(size, n_tiles, catchments),
                                 target_path_list=[catchments], task_name="make catchments")
        slope_mosaic = path("slope_mosaic.npy")
        mosaic_task = graph.add_task(mosaic, args=(slope_tiles, slope_mosaic), target_path_list=[slope_mosaic],
                                     dependent_task_list=slope_tasks, task_name="slope mosaic")
        roughness = path("roughness.npy")
        reclass = graph.add_task(reclassify, args=(landcover, {1: 0.03, 2: 0.05, 3: 0.1, 4: 0.15, 5: 0.4}, roughness),
                                 target_path_list=[roughness], dependent_task_list=[make_lc], task_name="reclassify")
        stats = graph.add_task(zonal_stats, args=(slope_mosaic, roughness, catchments), store_result=True,
                               dependent_task_list=[mosaic_task, reclass, make_ct], task_name="zonal stats")
        tasks += [make_lc, make_ct, mosaic_task, reclass, stats]
        # The CSV needs the statistics' value, so wait for it here.
        summary = path("catchments.csv")
        tasks.append(graph.add_task(write_csv, args=(stats.get(), summary), target_path_list=[summary],
                                    task_name="write csv"))
    return tasks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "workspace"))
    parser.add_argument("--size", type=int, default=512, help="tile size in cells (default 512)")
    parser.add_argument("--tiles", type=int, default=8, help="number of DEM tiles (default 8)")
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--change-tile", type=int, action="append", default=[],
                        help="regenerate this tile's DEM with different values (repeatable)")
    args = parser.parse_args(argv)
    tasks = run(args.workspace, args.size, args.tiles, args.n_workers, {i: 1 for i in args.change_tile})
    ran = [task.task_name for task in tasks if task.state == "ran"]
    skipped = sum(task.state == "skipped" for task in tasks)
    print(f"ran {len(ran)} tasks, skipped {skipped}")
    for name in ran:
        print(f"  ran: {name}")
    print(f"outputs in {args.workspace}: slope_mosaic.npy, catchments.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
