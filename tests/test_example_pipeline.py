"""The README's example pipeline: a second run executes nothing; a changed tile
reruns exactly the tasks downstream of it."""

import os
import subprocess
import sys

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "raster_pipeline.py")


def run(workspace, *extra):
    out = subprocess.run(
        [sys.executable, EXAMPLE, "--workspace", str(workspace), "--size", "64", "--tiles", "4", *extra],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    return [line.split("ran: ", 1)[1] for line in out.splitlines() if line.startswith("  ran: ")]


def test_example_reruns_only_what_changed(tmp_path):
    first = run(tmp_path)
    assert len(first) == 4 * 3 + 6
    assert run(tmp_path) == []
    assert sorted(run(tmp_path, "--change-tile", "2")) == sorted(
        ["make dem 2", "slope 2", "hillshade 2", "slope mosaic", "zonal stats", "write csv"]
    )
    assert run(tmp_path, "--change-tile", "2") == []
    with open(os.path.join(tmp_path, "catchments.csv")) as stream:
        assert stream.readline().startswith("catchment,mean_slope_deg")
