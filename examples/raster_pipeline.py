"""A raster pipeline with rasterio on a strip of DEM tiles: reproject each tile
to UTM, slope and hillshade per tile, mosaics, land-cover roughness, zonal
statistics per catchment and a CSV.

Run it twice: the second run executes nothing. Change one input tile and only
the tasks that read it run again::

    python examples/raster_pipeline.py                  # first run: everything
    python examples/raster_pipeline.py                  # second run: ran 0 tasks
    python examples/raster_pipeline.py --touch-tile 3   # edit tile 3 in place: reruns its
                                                        # reprojection, slope, hillshade,
                                                        # the mosaics, the statistics, the CSV

The pipeline makes its own inputs under ``WORKSPACE/inputs``, as a download
step would: DEM tiles as GeoTIFFs in geographic coordinates (EPSG:4326, like
SRTM or Copernicus tiles), a land-cover raster already in UTM (EPSG:32632) at
twice the cell size, and catchment polygons as GeoJSON. Those generator tasks
check their targets for existence only (``hash_target_files=False``): an input
edited afterwards, by hand or by ``--touch-tile``, is kept, and only the tasks
that read it rerun. A generator reruns, and overwrites its files, only when its
arguments change (``--size``, ``--tiles``, ``--change-tile``, which draws tile
K from another random seed) or a file it made is deleted.

With ``TASKGRAPH_CACHE=DIR`` in the environment, finished tasks are put in
that shared cache, and a run in another workspace restores them instead of
computing them (see "Sharing work across workspaces" in the docs).

Needs rasterio and numpy (``pip install -e '.[examples]'``). Task functions
live at module level in this file and the script body is under ``if __name__
== '__main__'``: worker processes are started with ``spawn`` and import this
file again (as ``__mp_main__``) to find them.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import time
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import rasterio.merge
import rasterio.warp
from rasterio.transform import from_bounds, from_origin

import taskgraph

#: The tiles lie west to east along this latitude band, in the Alps.
WEST, NORTH = 10.0, 46.6
TILE_DEG_X, TILE_DEG_Y = 0.2, 0.14
GEOGRAPHIC = "EPSG:4326"
UTM = "EPSG:32632"  # WGS 84 / UTM zone 32N
#: Metres per degree at this latitude, to lay one continuous landscape over the tiles.
M_PER_DEG_X, M_PER_DEG_Y = 76_600.0, 111_200.0
#: Ground width of one tile in metres; the UTM cell size is this over
#: ``--size``, so the terrain (and its slopes) look the same at any resolution.
TILE_EXTENT_M = 15_360.0
NODATA = -9999.0
N_CATCHMENTS = 3
#: Land-cover class -> Manning's roughness coefficient.
ROUGHNESS = {1: 0.030, 2: 0.035, 3: 0.150, 4: 0.040, 5: 0.015}
STEEP_DEG = 15.0


# -- input generation (stands in for downloading real data) ---------------------------------


def _terrain(x_m: np.ndarray, y_m: np.ndarray) -> np.ndarray:
    """A smooth synthetic landscape in metres, continuous across tiles;
    ``x_m`` east and ``y_m`` south of the strip's north-west corner."""
    return (
        800.0
        + 300.0 * np.sin(x_m / 2500.0) * np.cos(y_m / 1900.0)
        + 150.0 * np.sin(x_m / 900.0 + y_m / 1300.0)
        + 40.0 * np.cos(y_m / 400.0)
    )


def tile_bounds(index: int) -> tuple[float, float, float, float]:
    """(west, south, east, north) of DEM tile ``index`` in degrees."""
    west = WEST + index * TILE_DEG_X
    return west, NORTH - TILE_DEG_Y, west + TILE_DEG_X, NORTH


def make_dem_tile(index: int, size: int, seed: int, out_path: str) -> None:
    """Write DEM tile ``index``: ``size`` x ``size`` float32 metres in
    EPSG:4326, one block of the landscape plus survey noise drawn from ``seed``."""
    west, south, east, north = tile_bounds(index)
    rows, cols = np.mgrid[0:size, 0:size]
    lon = west + (cols + 0.5) * (east - west) / size
    lat = north - (rows + 0.5) * (north - south) / size
    rng = np.random.default_rng([seed, index])
    dem = _terrain((lon - WEST) * M_PER_DEG_X, (NORTH - lat) * M_PER_DEG_Y) + rng.normal(0.0, 2.0, (size, size))
    # Uncompressed, as raw tiles often come: an in-place edit keeps the file's size.
    _write(out_path, dem.astype(np.float32), GEOGRAPHIC, from_bounds(west, south, east, north, size, size),
           compress=None)


def _strip_utm_bounds(n_tiles: int, cell: float) -> tuple[float, float, float, float]:
    """The whole strip's UTM bounds, widened to whole cells of a grid anchored at 0, 0."""
    west, south, _, north = tile_bounds(0)
    east = tile_bounds(n_tiles - 1)[2]
    return _snap(rasterio.warp.transform_bounds(GEOGRAPHIC, UTM, west, south, east, north), cell)


def make_landcover(size: int, n_tiles: int, out_path: str) -> None:
    """Write a land-cover raster (classes 1..5, uint8) over the whole strip, in
    UTM at twice the DEM's cell size, as a land-cover product would come."""
    cell = 2 * TILE_EXTENT_M / size
    left, bottom, right, top = _strip_utm_bounds(n_tiles, cell)
    width, height = round((right - left) / cell), round((top - bottom) / cell)
    rows, cols = np.mgrid[0:height, 0:width]
    xs = (left + (cols + 0.5) * cell).ravel()
    ys = (top - (rows + 0.5) * cell).ravel()
    lon, lat = (np.asarray(v).reshape(height, width) for v in rasterio.warp.transform(UTM, GEOGRAPHIC, xs, ys))
    x_m, y_m = (lon - WEST) * M_PER_DEG_X, (NORTH - lat) * M_PER_DEG_Y
    elevation = _terrain(x_m, y_m)
    texture = np.sin(x_m / 700.0) * np.cos(y_m / 1100.0)
    classes = np.full(elevation.shape, 2, dtype=np.uint8)  # grassland
    classes[texture > 0.35] = 4  # cropland
    classes[elevation > 950.0] = 3  # forest on the heights
    classes[elevation < 480.0] = 1  # water in the lows
    rng = np.random.default_rng(7)
    town = rng.random(elevation.shape) < 0.02
    classes[town & (classes == 4)] = 5  # scattered buildings among fields
    _write(out_path, classes, UTM, from_origin(left, top, cell, cell), nodata=0)


def make_catchments(n_tiles: int, out_path: str) -> None:
    """Write catchment polygons as GeoJSON (EPSG:4326): bands across the strip
    whose divides wander north to south. Together they cover the strip once."""
    west, south, _, north = tile_bounds(0)
    width = n_tiles * TILE_DEG_X
    lats = np.linspace(north, south, 25)

    def divide(k: int) -> list[tuple[float, float]]:
        if k == 0:
            return [(west, float(lat)) for lat in lats]
        if k == N_CATCHMENTS:
            return [(west + width, float(lat)) for lat in lats]
        wander = 0.04 * width * np.sin(np.pi * (k + 1) * (north - lats) / (north - south))
        return [(float(west + k * width / N_CATCHMENTS + dx), float(lat)) for dx, lat in zip(wander, lats, strict=True)]

    features = []
    for k in range(N_CATCHMENTS):
        ring = divide(k) + divide(k + 1)[::-1]
        features.append({
            "type": "Feature",
            "properties": {"name": f"catchment_{k + 1}"},
            "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
        })
    with open(out_path, "w") as stream:
        json.dump({"type": "FeatureCollection", "features": features}, stream)


def touch_tile(path: str, touch: int) -> None:
    """Edit a DEM tile in place, as a user replacing an input would: carve a
    landslide scar (a 25 m deep hollow) whose position depends on ``touch``.
    Shape, dtype and georeferencing are kept; the values change."""
    with rasterio.open(path, "r+") as dataset:
        dem = dataset.read(1)
        size = dem.shape[0]
        rows, cols = np.mgrid[0:size, 0:size]
        r0, c0 = np.random.default_rng(touch).uniform(0.2, 0.8, 2) * size
        dem -= (25.0 * np.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / (0.01 * size * size))).astype(np.float32)
        dataset.write(dem, 1)


# -- processing -------------------------------------------------------------------------------


def reproject_tile(src_path: str, dst_crs: str, cell: float, out_path: str) -> None:
    """Reproject a DEM tile to ``dst_crs`` with square ``cell``-metre cells on a
    grid anchored at 0, 0, so that every tile's cells line up in the mosaic.
    Cells outside the tile's footprint get ``NODATA``."""
    with rasterio.open(src_path) as source:
        left, bottom, right, top = _snap(rasterio.warp.transform_bounds(source.crs, dst_crs, *source.bounds), cell)
        width, height = round((right - left) / cell), round((top - bottom) / cell)
        transform = from_origin(left, top, cell, cell)
        dem = np.full((height, width), NODATA, dtype=np.float32)
        rasterio.warp.reproject(
            rasterio.band(source, 1), dem, dst_transform=transform, dst_crs=dst_crs,
            dst_nodata=NODATA, resampling=rasterio.warp.Resampling.bilinear,
        )
    _write(out_path, dem, dst_crs, transform, nodata=NODATA)


def _read_dem(path: str) -> tuple[np.ndarray, float, dict[str, Any]]:
    """The DEM as float64 with NaN for no data, its cell size and its profile."""
    with rasterio.open(path) as dataset:
        dem = dataset.read(1).astype(np.float64)
        dem[dem == dataset.nodata] = np.nan
        return dem, dataset.res[0], dict(dataset.profile)


def _gradient(dem: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """dz/d(row), dz/d(column) in metres per metre. Tiles are processed on
    their own, so edge cells use one-sided differences (no halo); cells next
    to no data become NaN."""
    dz_drow, dz_dcol = np.gradient(dem, cell)
    return dz_drow, dz_dcol


def slope(dem_path: str, out_path: str) -> None:
    """Slope in degrees (float32, ``NODATA`` where unknown)."""
    dem, cell, profile = _read_dem(dem_path)
    dz_drow, dz_dcol = _gradient(dem, cell)
    degrees = np.degrees(np.arctan(np.hypot(dz_drow, dz_dcol)))
    _write(out_path, np.where(np.isnan(degrees), NODATA, degrees).astype(np.float32), profile["crs"],
           profile["transform"], nodata=NODATA)


def hillshade(dem_path: str, out_path: str, azimuth: float = 315.0, altitude: float = 45.0) -> None:
    """Hillshade 1..255 (uint8, 0 for no data) for a sun at ``azimuth``
    (clockwise from north) and ``altitude`` degrees."""
    dem, cell, profile = _read_dem(dem_path)
    dz_drow, dz_dcol = _gradient(dem, cell)
    slope_rad = np.arctan(np.hypot(dz_drow, dz_dcol))
    aspect = np.arctan2(-dz_dcol, dz_drow)  # downslope direction, clockwise from north
    zenith, sun = np.radians(90.0 - altitude), np.radians(azimuth)
    shade = np.cos(zenith) * np.cos(slope_rad) + np.sin(zenith) * np.sin(slope_rad) * np.cos(sun - aspect)
    shade = np.where(np.isnan(shade), 0, np.clip(255.0 * shade, 1, 255))
    _write(out_path, shade.astype(np.uint8), profile["crs"], profile["transform"], nodata=0)


def mosaic(tile_paths: list[str], out_path: str) -> None:
    """Merge tiles into one GeoTIFF; where reprojected tiles overlap, the
    first with data wins. Written window by window, never whole in memory."""
    # Tiled, with blocks of its own: rasterio 1.5 carries the tiles' block size over, which
    # GDAL refuses (with a warning) for a striped file.
    rasterio.merge.merge(tile_paths, dst_path=out_path,
                         dst_kwds={"compress": "deflate", "tiled": True, "blockxsize": 256, "blockysize": 256})


def reclassify(landcover_path: str, table: dict[int, float], out_path: str) -> None:
    """Land-cover classes to roughness coefficients (float32; ``NODATA`` for
    unknown classes)."""
    with rasterio.open(landcover_path) as dataset:
        classes = dataset.read(1)
        profile = dataset.profile
    lookup = np.full(256, NODATA, dtype=np.float32)
    for value, coefficient in table.items():
        lookup[value] = coefficient
    _write(out_path, lookup[classes], profile["crs"], profile["transform"], nodata=NODATA)


def zonal_stats(slope_path: str, roughness_path: str, catchments_path: str) -> dict[str, dict[str, float]]:
    """Per catchment: cells, area, mean and max slope, share of steep cells,
    mean roughness. The catchments are rasterised and the roughness resampled
    onto the slope mosaic's grid. The dict is stored in the ledger
    (``store_result=True``)."""
    with rasterio.open(slope_path) as dataset:
        slope_deg = dataset.read(1, masked=True)
        crs, transform, shape, res = dataset.crs, dataset.transform, dataset.shape, dataset.res
    roughness = np.full(shape, NODATA, dtype=np.float32)
    with rasterio.open(roughness_path) as dataset:
        rasterio.warp.reproject(rasterio.band(dataset, 1), roughness, dst_transform=transform, dst_crs=crs,
                                dst_nodata=NODATA, resampling=rasterio.warp.Resampling.nearest)
    with open(catchments_path) as stream:
        features = json.load(stream)["features"]
    stats = {}
    for feature in features:
        geometry = rasterio.warp.transform_geom(GEOGRAPHIC, crs, feature["geometry"])
        inside = rasterio.features.rasterize([(geometry, 1)], out_shape=shape, transform=transform, dtype="uint8")
        mask = (inside == 1) & ~np.ma.getmaskarray(slope_deg)
        values = slope_deg.data[mask]
        rough = roughness[mask & (roughness != NODATA)]
        stats[feature["properties"]["name"]] = {
            "cells": int(mask.sum()),
            "area_km2": float(mask.sum() * res[0] * res[1] / 1e6),
            "mean_slope_deg": float(values.mean()),
            "max_slope_deg": float(values.max()),
            "steep_fraction": float((values > STEEP_DEG).mean()),
            "mean_roughness": float(rough.mean()) if rough.size else math.nan,
        }
    return stats


def write_csv(stats: dict[str, dict[str, float]], out_path: str) -> None:
    """One row per catchment."""
    columns = ["mean_slope_deg", "max_slope_deg", "steep_fraction", "mean_roughness", "cells", "area_km2"]
    with open(out_path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["catchment", *columns])
        for name, values in sorted(stats.items()):
            writer.writerow([name, *(f"{values[c]:.6g}" for c in columns)])


def _snap(bounds: tuple[float, float, float, float], cell: float) -> tuple[float, float, float, float]:
    """Widen bounds to whole cells of a grid anchored at 0, 0."""
    left, bottom, right, top = bounds
    return (math.floor(left / cell) * cell, math.floor(bottom / cell) * cell,
            math.ceil(right / cell) * cell, math.ceil(top / cell) * cell)


def _write(path: str, array: np.ndarray, crs: Any, transform: Any, nodata: float | None = None,
           compress: str | None = "deflate") -> None:
    """Write a one-band GeoTIFF."""
    profile: dict[str, Any] = {
        "driver": "GTiff", "height": array.shape[0], "width": array.shape[1], "count": 1,
        "dtype": array.dtype, "crs": crs, "transform": transform, "nodata": nodata,
    }
    if compress:
        profile["compress"] = compress
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(array, 1)


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
    folders = {name: os.path.join(workspace, name) for name in ("inputs", "utm", "tiles")}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    inputs, utm, tiles = folders["inputs"], folders["utm"], folders["tiles"]
    cell = TILE_EXTENT_M / size
    common = {"hash_algorithm": hash_algorithm}
    tasks: list[taskgraph.Task] = []

    slope_paths, slope_tasks, shade_paths, shade_tasks = [], [], [], []
    for index in range(n_tiles):
        dem = os.path.join(inputs, f"dem_{index}.tif")
        make_dem = graph.add_task(
            make_dem_tile, args=(index, size, seeds.get(index, 0), dem), target_path_list=[dem],
            hash_target_files=False, task_name=f"make dem {index}", **common)
        dem_utm = os.path.join(utm, f"dem_{index}.tif")
        reproject_task = graph.add_task(
            reproject_tile, args=(dem, UTM, cell, dem_utm), target_path_list=[dem_utm],
            dependent_task_list=[make_dem], task_name=f"reproject {index}", **common)
        slope_path = os.path.join(tiles, f"slope_{index}.tif")
        shade_path = os.path.join(tiles, f"hillshade_{index}.tif")
        slope_task = graph.add_task(
            slope, args=(dem_utm, slope_path), target_path_list=[slope_path],
            dependent_task_list=[reproject_task], task_name=f"slope {index}", **common)
        shade_task = graph.add_task(
            hillshade, args=(dem_utm, shade_path), target_path_list=[shade_path],
            dependent_task_list=[reproject_task], task_name=f"hillshade {index}", **common)
        tasks += [make_dem, reproject_task, slope_task, shade_task]
        slope_paths.append(slope_path)
        slope_tasks.append(slope_task)
        shade_paths.append(shade_path)
        shade_tasks.append(shade_task)

    landcover = os.path.join(inputs, "landcover.tif")
    catchments = os.path.join(inputs, "catchments.geojson")
    make_lc = graph.add_task(
        make_landcover, args=(size, n_tiles, landcover), target_path_list=[landcover],
        hash_target_files=False, task_name="make landcover", **common)
    make_ct = graph.add_task(
        make_catchments, args=(n_tiles, catchments), target_path_list=[catchments],
        hash_target_files=False, task_name="make catchments", **common)

    slope_mosaic = os.path.join(workspace, "slope_mosaic.tif")
    slope_mosaic_task = graph.add_task(
        mosaic, args=(slope_paths, slope_mosaic), target_path_list=[slope_mosaic],
        dependent_task_list=slope_tasks, task_name="slope mosaic", **common)
    shade_mosaic = os.path.join(workspace, "hillshade_mosaic.tif")
    shade_mosaic_task = graph.add_task(
        mosaic, args=(shade_paths, shade_mosaic), target_path_list=[shade_mosaic],
        dependent_task_list=shade_tasks, task_name="hillshade mosaic", **common)
    roughness = os.path.join(workspace, "roughness.tif")
    reclass = graph.add_task(
        reclassify, args=(landcover, ROUGHNESS, roughness), target_path_list=[roughness],
        dependent_task_list=[make_lc], task_name="reclassify", **common)
    stats = graph.add_task(
        zonal_stats, args=(slope_mosaic, roughness, catchments), store_result=True,
        dependent_task_list=[slope_mosaic_task, reclass, make_ct], task_name="zonal stats", **common)
    tasks += [make_lc, make_ct, slope_mosaic_task, shade_mosaic_task, reclass, stats]

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
    parser.add_argument("--size", type=int, default=512,
                        help="tile size in cells (default 512; larger makes a benchmark: 2048 is 16 times the work)")
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
    if args.size < 8 or args.tiles < 1:
        parser.error("--size must be at least 8 and --tiles at least 1")
    for index in args.touch_tile + args.change_tile:
        if not 0 <= index < args.tiles:
            parser.error(f"tile {index} does not exist: tiles are 0..{args.tiles - 1}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    for index in args.touch_tile:
        path = os.path.join(args.workspace, "inputs", f"dem_{index}.tif")
        if not os.path.exists(path):
            parser.error(f"--touch-tile {index}: {path} does not exist yet; run the pipeline once first")
        touch_tile(path, touch=int.from_bytes(os.urandom(4), "little"))

    started = time.perf_counter()
    tasks = run(args.workspace, args.size, args.tiles, args.n_workers,
                {index: 1 for index in args.change_tile}, args.hash_algorithm)
    elapsed = time.perf_counter() - started
    ran = [task for task in tasks if task.state == "ran"]
    restored = [task for task in tasks if task.state == "restored"]
    skipped = sum(task.state == "skipped" for task in tasks)
    edited = f" after editing tile {', '.join(map(str, args.touch_tile))}" if args.touch_tile else ""
    from_cache = f", restored {len(restored)} from the cache" if restored else ""
    print(f"ran {len(ran)} tasks, skipped {skipped} in {elapsed:.1f} s{from_cache}{edited}; outputs in "
          f"{args.workspace}: slope_mosaic.tif, hillshade_mosaic.tif, catchments.csv")
    for task in ran + restored:  # a restored task's first reason says where it came from
        print(f"  {task.task_name}: {why(task, args.workspace)}")
    return 0


def why(task: taskgraph.Task, workspace: str) -> str:
    """Why a task ran, on one line: its first reason, paths relative to the
    workspace, cut to 120 characters."""
    reasons = task.reasons
    if not reasons:
        return "ran"
    first = reasons[0]
    text = "new" if first.code == "new_task" else str(first).replace(os.path.abspath(workspace) + os.sep, "")
    if len(text) > 120:
        text = text[:117] + "..."
    return text + (f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else "")


if __name__ == "__main__":
    try:
        status = main()
        sys.stdout.flush()  # here, so that a closed pipe is noticed inside the try
    except BrokenPipeError:
        # The reader went away (``| head -1``): the pipeline's work is done and
        # recorded, there is just nobody left to tell. Point stdout at devnull so
        # that the interpreter's own flush at exit does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 0
    sys.exit(status)
