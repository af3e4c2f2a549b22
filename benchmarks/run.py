"""Side-by-side benchmarks: this package vs natcap taskgraph 0.11.2 (own venv) and plain baselines.

    python -m benchmarks [--only overhead,noop,chain,big,tiles,scale] [--reps 5] [--json out.json]

Each measurement runs in a fresh interpreter (``_driver.py``) and a fresh
workspace; repetitions are interleaved (ours, natcap, ours, natcap, ...) so both
sides see the same load, and the table gives medians. Ours runs from
~/.cache/taskgraph-bench/ours-venv, into which this tree is installed (not
editable) at the start of every run, unless --ours-python names another
interpreter. The natcap venv (with numpy) is created under
~/.cache/taskgraph-bench/natcap-venv unless --natcap-python names an interpreter
that imports natcap's taskgraph. See docs/performance.md for what each workload
measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _data  # noqa: E402

DRIVER = os.path.join(HERE, "_driver.py")
ROOT = os.path.dirname(HERE)
OURS_VENV = os.path.join(_data.CACHE, "ours-venv")
NATCAP_VENV = os.path.join(_data.CACHE, "natcap-venv")
WORKLOADS = ("overhead", "noop", "chain", "big", "tiles", "scale", "slow_import", "uneven")


def natcap_python() -> str:
    """The natcap venv's interpreter, creating the venv (taskgraph 0.11.2, psutil, numpy) if needed."""
    python = os.path.join(NATCAP_VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", NATCAP_VENV], check=True)
    probe = subprocess.run([python, "-c", "import taskgraph, psutil, numpy"], cwd=tempfile.gettempdir(),
                           capture_output=True)
    if probe.returncode:
        subprocess.run([python, "-m", "pip", "install", "-q", "taskgraph==0.11.2", "psutil", "numpy"], check=True)
    return python


# Each interpreter imports its own taskgraph (no PYTHONPATH), and caches bytecode as a user's would.
_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"} | {"PYTHONPATH": ""}

# pyproject.toml's [build-system] requires, installed once in ours-venv so that each reinstall builds
# there (--no-build-isolation, about 1.5 s) instead of in a new isolated environment (about 3.5 s).
_SETUPTOOLS = 68
BUILD_REQUIRES = [f"setuptools>={_SETUPTOOLS}", "wheel"]
_HAS_BACKEND = ("import sys, setuptools.build_meta, wheel; "
                f"sys.exit(int(setuptools.__version__.split('.')[0]) < {_SETUPTOOLS})")

# Prints the requirements ours-venv lacks, one a line: the installed package's runtime dependencies, and
# numpy from its ``examples`` extra (the tiles need it; the extra's rasterio no benchmark uses). Presence
# only: the versions are pip's to choose when it installs them.
_MISSING = """
import importlib.metadata as metadata, re
for requirement in metadata.requires("taskgraph") or []:
    requirement, _, marker = requirement.partition(";")
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group()
    if "extra" in marker and not (name == "numpy" and '"examples"' in marker):
        continue
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        print(requirement.strip())
"""


def ours_python() -> str:
    """The interpreter of ours-venv, with the tree being benchmarked (``ROOT``) freshly installed in it.

    A regular install, as a user's: an editable one (``pip install -e``) adds a ``.pth`` whose finder
    imports pathlib, re, urllib.parse and more at every interpreter start, some 20 ms a process that
    no user pays and that would hide any import-time saving of ours. The tree is reinstalled at every
    run (``--force-reinstall --no-deps``), so the figures are always of the current sources; the build
    backend, the runtime dependencies and numpy are installed only when missing. pip compiles the
    modules as it installs them, so no measurement compiles them.
    """
    python = os.path.join(OURS_VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", OURS_VENV], check=True)

    def run(*command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([python, *command], cwd=tempfile.gettempdir(), env=_ENV, text=True, **kwargs)

    if run("-c", _HAS_BACKEND, capture_output=True).returncode:
        run("-m", "pip", "install", "-q", *BUILD_REQUIRES, check=True)
    with tempfile.TemporaryDirectory(prefix="taskgraph-src-") as source:
        _copy_sources(source)
        run("-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", "--no-build-isolation", source,
            check=True)
    # After the reinstall, so that a dependency the tree has just gained is installed in the same run.
    missing = run("-c", _MISSING, capture_output=True, check=True).stdout.split("\n")
    if any(missing):
        run("-m", "pip", "install", "-q", *filter(None, missing), check=True)
    return python


def _copy_sources(folder: str) -> None:
    """Copy what the build reads (the top-level files and the package) from ``ROOT`` into ``folder``.

    Built in the tree itself, setuptools would leave ``build/`` and ``taskgraph.egg-info`` there, and
    put into the wheel every module ``build/lib`` still holds, deleted ones included.
    """
    for name in os.listdir(ROOT):
        if os.path.isfile(os.path.join(ROOT, name)):
            shutil.copy2(os.path.join(ROOT, name), folder)
    shutil.copytree(os.path.join(ROOT, "taskgraph"), os.path.join(folder, "taskgraph"),
                    ignore=shutil.ignore_patterns("__pycache__"))


PEERS = {"doit": ["doit==0.37.0"], "joblib": ["joblib"]}


def peer_python(name: str) -> str:
    """The interpreter of a peer's own venv (``~/.cache/taskgraph-bench/NAME-venv``), created if needed."""
    venv = os.path.join(_data.CACHE, f"{name}-venv")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    module = name
    probe = subprocess.run([python, "-c", f"import {module}"], cwd=tempfile.gettempdir(), capture_output=True)
    if probe.returncode:
        subprocess.run([python, "-m", "pip", "install", "-q", *PEERS[name]], check=True)
    return python


@dataclasses.dataclass
class Side:
    """One thing measured in a row: an interpreter running one driver workload.

    ``phases`` run one after another on the same workspace, each in its own
    process; their figures are kept under the phase's name (``cold``, ``rerun``,
    ``rerun3``). ``n`` is the task count, for figures per task.
    """

    label: str
    python: str
    workload: str
    params: dict[str, object]
    phases: tuple[str, ...] = ()
    n: int | None = None
    capped: bool = False
    figures: list[dict[str, float]] = dataclasses.field(default_factory=list)

    def measure(self, timeout: float) -> None:
        ws = tempfile.mkdtemp(prefix="taskgraph-bench-")
        try:
            result: dict[str, float] = {}
            for phase in self.phases or ("",):
                # "rerun3" is the driver's "rerun" phase again, its figures kept under their own name.
                params = dict(self.params, phase=phase.rstrip("0123456789")) if phase else self.params
                # cwd is the workspace and PYTHONPATH is cleared so that each interpreter imports its own taskgraph.
                began = time.perf_counter()
                out = subprocess.run([self.python, DRIVER, self.workload, ws, json.dumps(params)],
                                     capture_output=True, text=True, cwd=ws, timeout=timeout,
                                     env=_ENV)
                # The whole fresh process, interpreter start and imports included: what a user
                # waits for, and the same for every tool (the driver's own figure starts after
                # a peer's imports but before ours, which are lazy).
                process_seconds = time.perf_counter() - began
                if out.returncode:
                    raise SystemExit(f"the {self.workload} benchmark ({self.label}, {params}) failed with exit "
                                     f"status {out.returncode}:\n{out.stderr[-3000:]}")
                figures = json.loads(out.stdout.strip().splitlines()[-1])
                figures["process_seconds"] = process_seconds
                if self.n:
                    figures["us_per_task"] = figures["seconds"] / self.n * 1e6
                    figures["cpu_us_per_task"] = figures["cpu_seconds"] / self.n * 1e6
                result.update({f"{phase}.{key}" if phase else key: value for key, value in figures.items()})
            self.figures.append(result)
        finally:
            shutil.rmtree(ws, ignore_errors=True)

    def median(self, metric: str) -> float:
        return statistics.median(figures[metric] for figures in self.figures)


@dataclasses.dataclass
class Line:
    """One line of the table: a metric of one side, beside a baseline side (ratio = side / baseline)."""

    measure: str
    side: str
    metric: str
    base: str | None = None
    base_metric: str | None = None
    unit: str = "µs/task"


@dataclasses.dataclass
class Row:
    """A workload in one setting: its sides are measured interleaved, ``reps`` times each."""

    workload: str
    setting: str
    sides: list[Side]
    lines: list[Line]
    prepare: Callable[[], None] | None = None
    cleanup: Callable[[], None] | None = None


_SCALE = {"µs/task": 1.0, "s": 1.0, "ms": 1e3, "MB": 1.0, "MiB": 1 / 2**20}


def _value(side: Side, metric: str, unit: str) -> float:
    return side.median(metric) * _SCALE[unit]


def _format(value: float) -> str:
    return f"{value:.3g}" if value < 10 else f"{value:,.0f}"


def table_lines(row: Row) -> list[str]:
    """The Markdown table lines of a measured row."""
    sides = {side.label: side for side in row.sides}
    lines = []
    for line in row.lines:
        side = sides[line.side]
        value = _value(side, line.metric, line.unit)
        ours = f"{_format(value)} {line.unit} ({line.side}{_n_note(side)})"
        theirs, ratio, paired = "", "", ""
        if line.base:
            base = sides[line.base]
            base_metric = line.base_metric or line.metric
            base_value = _value(base, base_metric, line.unit)
            theirs = f"{_format(base_value)} {line.unit} ({line.base}{_n_note(base)})"
            if side.n != base.n and line.unit != "µs/task":
                lines.append(f"| {row.workload} | {row.setting} | {line.measure} | {ours} | {theirs} | — | — |")
                continue  # totals of different task counts: no ratio
            ratio = f"{value / base_value:.2f}" if base_value else "—"
            # Repetition i of every side ran back to back, so the ratio within a repetition cancels slow drifts
            # of the machine's load; its median is the steadier figure when the load varies.
            pairs = [a[line.metric] / b[base_metric] for a, b in zip(side.figures, base.figures, strict=True)
                     if b[base_metric]]
            paired = f"{statistics.median(pairs):.2f}" if pairs else "—"
        lines.append(f"| {row.workload} | {row.setting} | {line.measure} | {ours} | {theirs} | {ratio} | {paired} |")
    return lines


def _n_note(side: Side) -> str:
    return f", N={side.n:,}" if side.capped else ""


def build_rows(args: argparse.Namespace, ours: str, theirs: str) -> list[Row]:
    """Every row the options select, in the order they run."""
    only = set(args.only.split(","))
    cap = args.natcap_max_n
    rows: list[Row] = []

    def pair(workload: str, n: int, params: dict[str, object], phases: tuple[str, ...] = (),
             our_hash: str | None = None, their_hash: str | None = None) -> list[Side]:
        their_n = min(n, cap)
        mine = Side("ours", ours, workload, dict(params, n=n, **({"hash": our_hash} if our_hash else {})),
                    phases, n)
        their_params = dict(params, n=their_n, **({"hash": their_hash} if their_hash else {}))
        natcap = Side("natcap", theirs, workload, their_params, phases, their_n, capped=their_n != n)
        return [mine, natcap]

    if "overhead" in only:
        for n in args.overhead_n:
            rows.append(Row("overhead", f"N={n:,}, n_workers=-1", pair("overhead", n, {"n_workers": -1}),
                            [Line("cold run", "ours", "us_per_task", "natcap"),
                             Line("cold run, CPU", "ours", "cpu_us_per_task", "natcap")]))
        for n_workers in (0, 2):
            rows.append(Row("overhead", f"N={args.n:,}, n_workers={n_workers}",
                            pair("overhead", args.n, {"n_workers": n_workers}),
                            [Line("cold run", "ours", "us_per_task", "natcap")]))
    if "noop" in only:
        settings = [(-1, "sizetimestamp", "sizetimestamp"), (2, "sizetimestamp", "sizetimestamp"),
                    (-1, "md5", "md5"), (-1, "xxh3_128", "md5"), (2, "xxh3_128", "md5")]
        settings = [(n_workers, ours_hash, theirs_hash) for n_workers, ours_hash, theirs_hash in settings
                    if n_workers in args.noop_workers and ours_hash in args.noop_hash.split(",")]
        for n in args.noop_n:
            for n_workers, our_hash, their_hash in settings:
                hashes = our_hash if our_hash == their_hash else f"{our_hash} (natcap {their_hash})"
                rows.append(Row("no-op rerun", f"N={n:,}, n_workers={n_workers}, {hashes}",
                                pair("noop", n, {"n_workers": n_workers}, ("cold", "rerun", "rerun3"),
                                     our_hash, their_hash),
                                [Line("first rerun", "ours", "rerun.us_per_task", "natcap"),
                                 Line("third run", "ours", "rerun3.us_per_task", "natcap"),
                                 *([Line("third run, CPU", "ours", "rerun3.cpu_us_per_task", "natcap")]
                                   if n_workers < 0 else [])]))
    if "chain" in only:
        rows.append(Row("chain", f"N={args.chain_n:,}, n_workers=2", pair("chain", args.chain_n, {"n_workers": 2}),
                        [Line("cold run", "ours", "us_per_task", "natcap")]))
    if "big" in only:
        rows.append(_big_row(args, ours, theirs))
    if "tiles" in only:
        rows.append(_tiles_row(args, ours, theirs))
    if "uneven" in only:
        rows.append(_uneven_row(args, ours, theirs))
    if "slow_import" in only:
        rows.append(_slow_import_row(args, ours, theirs))
    if "scale" in only:
        n = args.scale_n
        sides = pair("scale", n, {"n_workers": -1}, ("cold", "rerun"))
        rows.append(Row("scale", f"N={n:,} DAG, n_workers=-1", sides, [
            Line("cold run", "ours", "cold.us_per_task", "natcap"),
            Line("cold run", "ours", "cold.seconds", "natcap", unit="s"),
            Line("cold run, CPU", "ours", "cold.cpu_us_per_task", "natcap"),
            Line("cold run peak RSS", "ours", "cold.peak_rss_mb", "natcap", unit="MB"),
            Line("no-op rerun", "ours", "rerun.us_per_task", "natcap"),
            Line("no-op rerun", "ours", "rerun.seconds", "natcap", unit="s"),
            Line("no-op rerun, CPU", "ours", "rerun.cpu_us_per_task", "natcap"),
            Line("no-op rerun peak RSS", "ours", "rerun.peak_rss_mb", "natcap", unit="MB")]))
    return rows


def _big_row(args: argparse.Namespace, ours: str, theirs: str) -> Row:
    """One task reading a big file: content-hash cold run and rerun, beside ``cat`` and raw xxh3."""
    params: dict[str, object] = {}
    phases = ("cold", "rerun")
    sides = [Side("ours xxh3_128", ours, "big", dict(params, hash="xxh3_128"), phases),
             Side("ours md5", ours, "big", dict(params, hash="md5"), phases),
             Side("natcap md5", theirs, "big", dict(params, hash="md5"), phases),
             Side("cat", ours, "cat", params),
             Side("raw xxh3", ours, "raw_xxh3", params)]
    paths: list[str] = []

    def prepare() -> None:
        paths.append(_data.make_big_file(args.big_mib << 20))
        for side in sides:
            side.params["path"] = paths[0]

    def cleanup() -> None:
        for path in paths:
            os.remove(path)

    lines = [Line("cold run: bytes read", "ours xxh3_128", "cold.read_bytes", "natcap md5", unit="MiB"),
             Line("cold run: bytes read", "ours md5", "cold.read_bytes", "natcap md5", unit="MiB"),
             Line("rerun", "ours xxh3_128", "rerun.seconds", "natcap md5", unit="ms"),
             Line("rerun", "ours md5", "rerun.seconds", "natcap md5", unit="ms"),
             Line("rerun: bytes read", "ours xxh3_128", "rerun.read_bytes", "natcap md5", unit="MiB"),
             Line("rerun: bytes read", "ours md5", "rerun.read_bytes", "natcap md5", unit="MiB"),
             Line("cold run (first hash)", "ours xxh3_128", "cold.seconds", "cat", "seconds", unit="s"),
             Line("cold run (first hash)", "ours md5", "cold.seconds", "cat", "seconds", unit="s"),
             Line("cold run (first hash)", "natcap md5", "cold.seconds", "cat", "seconds", unit="s"),
             Line("raw xxh3 (no engine)", "raw xxh3", "seconds", "cat", unit="s")]
    return Row("big input", f"{args.big_mib:,} MiB, n_workers=-1", sides, lines, prepare, cleanup)


def _tiles_row(args: argparse.Namespace, ours: str, theirs: str) -> Row:
    """Slope of each tile and one mosaic, n_workers=2: ours, natcap and a bare multiprocessing.Pool(2).

    Our workers (and natcap's) run at niceness 10, so on a loaded machine they get less CPU than the plain
    pool's: ``mp niced`` is the same pool with niced workers, to tell that cost from the engine's.
    """
    params: dict[str, object] = {"count": args.tiles, "side": args.tile_side, "n_workers": 2}
    sides = [Side("ours", ours, "tiles", dict(params, mode="taskgraph")),
             Side("natcap", theirs, "tiles", dict(params, mode="taskgraph")),
             Side("mp", ours, "tiles", dict(params, mode="mp")),
             Side("mp niced", ours, "tiles", dict(params, mode="mp_nice"))]

    def prepare() -> None:
        folder = _data.tiles_folder(args.tiles, args.tile_side)
        for side in sides:
            side.params["folder"] = folder

    lines = [Line("cold run", "ours", "seconds", "mp", unit="s"),
             Line("cold run", "natcap", "seconds", "mp", unit="s"),
             Line("cold run", "ours", "seconds", "natcap", unit="s"),
             Line("cold run", "ours", "seconds", "mp niced", unit="s"),
             Line("cold run", "mp niced", "seconds", "mp", unit="s"),
             Line("cold run, CPU", "ours", "cpu_seconds", "mp", unit="s"),
             Line("cold run, CPU", "natcap", "cpu_seconds", "mp", unit="s")]
    return Row("raster tiles", f"{args.tiles} tiles of {args.tile_side}², n_workers=2", sides, lines, prepare)


def _slow_import_row(args: argparse.Namespace, ours: str, theirs: str) -> Row:
    """A task module that takes 2 s to import, 12 tasks of 50 ms, n_workers=2: ours (fork and spawn) and natcap."""
    params: dict[str, object] = {"n": args.slow_import_n, "n_workers": 2}
    sides = [Side("ours", ours, "slow_import", dict(params, start_method="fork")),
             Side("natcap", theirs, "slow_import", dict(params)),
             Side("ours spawn", ours, "slow_import", dict(params, start_method="spawn"))]
    lines = [Line("cold run (import included)", "ours", "seconds", "natcap", unit="s"),
             Line("cold run (import included)", "ours spawn", "seconds", "natcap", unit="s")]
    return Row("slow task module", f"2 s import, {args.slow_import_n} tasks, n_workers=2", sides, lines)


def _uneven_row(args: argparse.Namespace, ours: str, theirs: str) -> Row:
    """Short tasks, a long chain added last, a fan-in; the second run's makespan against its lower bound."""
    params: dict[str, object] = {"n_workers": 2, "chain": 8, "link_s": 0.25, "short": 24, "short_s": 0.1}
    sides = [Side("ours", ours, "uneven", dict(params), ("cold", "rerun")),
             Side("natcap", theirs, "uneven", dict(params), ("cold", "rerun"))]
    lines = [Line("second run: makespan / lower bound", "ours", "rerun.seconds", "ours", "rerun.lower_bound", unit="s"),
             Line("second run: makespan / lower bound", "natcap", "rerun.seconds", "natcap", "rerun.lower_bound",
                  unit="s"),
             Line("second run: makespan", "ours", "rerun.seconds", "natcap", unit="s")]
    return Row("uneven DAG", "24 tasks of 0.1 s, a chain of 8 x 0.25 s added last, a fan-in; n_workers=2",
               sides, lines)


def _peer_rows(args: argparse.Namespace, ours: str, theirs: str) -> list[Row]:
    """W1 (independent tasks, one small file each) and the DAG of small files: ours, natcap, doit (MD5 and
    timestamp checkers), joblib.Memory, each in its own venv, and a plain loop (the floor)."""
    doit, joblib = peer_python("doit"), peer_python("joblib")
    phases = ("cold", "rerun", "rerun3")
    rows = []
    for shape, n, ours_workload in (("w1", args.peers_w1_n, "noop"), ("dag", args.peers_dag_n, "dag_files")):
        their_n = min(n, args.natcap_max_n)
        common = {"n": n, "shape": shape}
        sides = [Side("ours", ours, ours_workload, {"n": n, "n_workers": -1, "hash": "sizetimestamp"}, phases, n),
                 Side("natcap", theirs, ours_workload, {"n": their_n, "n_workers": -1, "hash": "sizetimestamp"},
                      phases, their_n, capped=their_n != n),
                 Side("doit md5", doit, "doit", dict(common, checker="md5"), phases, n),
                 Side("doit timestamp", doit, "doit", dict(common, checker="timestamp"), phases, n),
                 Side("joblib", joblib, "joblib", common, phases, n),
                 Side("loop", ours, "loop", common, ("cold",), n)]
        lines = []
        for phase, label in (("cold", "cold run"), ("rerun", "first no-op rerun"), ("rerun3", "third run")):
            # Wall time of the whole fresh process: each tool's interpreter start and imports included.
            metric = f"{phase}.process_seconds"
            lines += [Line(label, "ours", metric, "doit md5", unit="s"),
                      Line(label, "ours", metric, "doit timestamp", unit="s"),
                      Line(label, "ours", metric, "joblib", unit="s"),
                      # natcap ran fewer tasks: per task, from the driver's clock (in the process).
                      Line(f"{label}, in process", "ours", f"{phase}.us_per_task", "natcap")]
        lines.append(Line("cold run", "ours", "cold.process_seconds", "loop", unit="s"))
        lines.append(Line("cold run", "doit md5", "cold.process_seconds", "loop", unit="s"))
        lines.append(Line("cold run, in process", "ours", "cold.seconds", "loop", unit="s"))
        setting = f"N={n:,}, n_workers=-1, one small file per task" + (" (DAG)" if shape == "dag" else "")
        rows.append(Row("peers: W1" if shape == "w1" else "peers: DAG", setting, sides, lines))
    return rows


def _ints(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated subset of {WORKLOADS}")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions of each side (median shown)")
    parser.add_argument("--n", type=int, default=2000, help="tasks for overhead at n_workers 0 and 2")
    parser.add_argument("--overhead-n", type=_ints, default=[1000, 10000, 100000],
                        help="task counts for overhead at n_workers=-1 (comma-separated)")
    parser.add_argument("--noop-n", type=_ints, default=[2000], help="task counts for the no-op rerun")
    parser.add_argument("--noop-workers", type=_ints, default=[-1, 2], help="n_workers of the no-op reruns")
    parser.add_argument("--noop-hash", default="sizetimestamp,md5,xxh3_128",
                        help="our hash algorithms for the no-op reruns (natcap uses md5 for xxh3_128)")
    parser.add_argument("--chain-n", type=int, default=1000)
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the big input file in MiB")
    parser.add_argument("--tiles", type=int, default=64, help="number of tiles (a square number)")
    parser.add_argument("--tile-side", type=int, default=1024)
    parser.add_argument("--scale-n", type=int, default=100_000)
    parser.add_argument("--peers", action="store_true",
                        help="run only the workloads measured beside doit and joblib.Memory (each in its own venv)")
    parser.add_argument("--peers-w1-n", type=int, default=2000)
    parser.add_argument("--peers-dag-n", type=int, default=20_020)
    parser.add_argument("--slow-import-n", type=int, default=12, help="tasks of the slow task module workload")
    parser.add_argument("--natcap-max-n", type=int, default=10_000,
                        help="natcap runs at most this many tasks per measurement (its N is shown when smaller)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed to one measurement")
    parser.add_argument("--ours-python", default=None, metavar="PATH",
                        help="measure the taskgraph this interpreter imports (e.g. a dev venv's) instead of "
                             f"installing this tree into {OURS_VENV} (regular install, redone every run)")
    parser.add_argument("--natcap-python", default=None, metavar="PATH",
                        help=f"an interpreter that imports natcap's taskgraph (default: {NATCAP_VENV})")
    parser.add_argument("--json", default=None, help="write every raw figure to this file")
    parser.add_argument("--table-from", default=None, metavar="PATH",
                        help="measure nothing: print the table of a file written by --json (same options)")
    args = parser.parse_args(argv)
    # A plain kill runs the cleanups too (the big file is removed, the running driver is killed by subprocess.run).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    unknown = set(args.only.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {sorted(unknown)} in --only: choose from {','.join(WORKLOADS)}")
    if args.tiles != round(args.tiles ** 0.5) ** 2:
        parser.error(f"--tiles {args.tiles} is not a square number: the mosaic is square")

    theirs = args.natcap_python or ("natcap" if args.table_from else natcap_python())
    ours = args.ours_python or ("ours" if args.table_from else ours_python())
    if not args.table_from:
        # pip compiled ours-venv's taskgraph and natcap's as it installed them. What it did not compile is
        # compiled here, so that no measurement does: the driver's helper modules (its imports from this
        # folder) and, for an --ours-python that imports our sources from a tree (an editable install),
        # those sources.
        import compileall

        compileall.compile_dir(HERE, quiet=1)
        if args.ours_python:
            subprocess.run([ours, "-c", "import compileall, os, taskgraph; "
                            "compileall.compile_dir(os.path.dirname(taskgraph.__file__), quiet=1)"],
                           cwd=tempfile.gettempdir(), env=_ENV, check=True)
    rows = _peer_rows(args, ours, theirs) if args.peers else build_rows(args, ours, theirs)
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores, medians of {args.reps} interleaved runs; "
          f"ratio = side / baseline (below 1 is faster)\n")
    print("| workload | setting | measure | ours (or side) | baseline | ratio | paired ratio |")
    print("|---|---|---|---:|---:|---:|---:|", flush=True)
    if args.table_from:
        return _print_saved(rows, args.table_from)
    started = time.perf_counter()
    for done, row in enumerate(rows):
        if row.prepare:
            row.prepare()
        try:
            for _ in range(args.reps):  # interleaved, so every side sees the same machine load
                for side in row.sides:
                    side.measure(args.timeout)
        finally:
            if row.cleanup:
                row.cleanup()
        print("\n".join(table_lines(row)), flush=True)
        if args.json:  # after every row, so that an interrupted run keeps what it measured
            _save(rows[:done + 1], args.json)
    print(f"\n{time.perf_counter() - started:.0f} s in all", file=sys.stderr)
    return 0


def _save(rows: list[Row], path: str) -> None:
    with open(path, "w") as stream:
        json.dump([{"workload": row.workload, "setting": row.setting,
                    "sides": [{"label": side.label, "python": side.python, "workload": side.workload,
                               "params": side.params, "phases": side.phases, "n": side.n,
                               "figures": side.figures} for side in row.sides]} for row in rows],
                  stream, indent=1)


def _print_saved(rows: list[Row], path: str) -> int:
    """Print the table of figures saved by ``--json`` for the rows the same options select."""
    with open(path) as stream:
        saved = {(row["workload"], row["setting"]): row for row in json.load(stream)}
    for row in rows:
        if (row.workload, row.setting) not in saved:
            continue
        figures = {side["label"]: side["figures"] for side in saved[row.workload, row.setting]["sides"]}
        for side in row.sides:
            side.figures = figures[side.label]
        print("\n".join(table_lines(row)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
