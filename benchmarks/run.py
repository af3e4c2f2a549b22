"""Side-by-side benchmark: this package vs natcap taskgraph 0.11.2 (own venv).

    python -m benchmarks [--reps 5] [--n 2000] [--natcap-python PATH] [--json out.json]

Each measurement runs in a fresh interpreter and a fresh workspace. The natcap
venv is created under ~/.cache/taskgraph-bench/natcap-venv unless
--natcap-python names an interpreter that imports natcap's taskgraph.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "_driver.py")
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "taskgraph-bench", "natcap-venv")


def natcap_python() -> str:
    python = os.path.join(CACHE, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", CACHE], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "taskgraph==0.11.2", "psutil"], check=True)
    return python


def measure(python: str, workload: str, n: int, n_workers: int, hash_algorithm: str) -> float:
    with tempfile.TemporaryDirectory() as ws:
        env = dict(os.environ, PYTHONPATH="")
        out = subprocess.run([python, DRIVER, workload, str(n), str(n_workers), hash_algorithm, ws],
                             check=True, capture_output=True, text=True, cwd=ws, env=env, timeout=3600)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["per_task_us"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--natcap-python", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    theirs = args.natcap_python or natcap_python()
    ours = sys.executable
    rows = [("overhead", -1, "sizetimestamp"), ("overhead", 0, "sizetimestamp"), ("overhead", 2, "sizetimestamp"),
            ("noop_rerun", -1, "sizetimestamp"), ("noop_rerun", 2, "sizetimestamp"), ("noop_rerun", -1, "md5")]
    results = []
    print(f"{'workload':12} {'n_workers':>9} {'hash':>13} {'ours us/task':>13} {'natcap us/task':>15} {'ratio':>7}")
    for workload, n_workers, hash_algorithm in rows:
        mine, natcap = [], []
        for _ in range(args.reps):  # interleaved, so both sides see the same machine load
            mine.append(measure(ours, workload, args.n, n_workers, hash_algorithm))
            natcap.append(measure(theirs, workload, args.n, n_workers, hash_algorithm))
        a, b = statistics.median(mine), statistics.median(natcap)
        results.append({"workload": workload, "n": args.n, "n_workers": n_workers, "hash": hash_algorithm,
                        "ours_us": mine, "natcap_us": natcap, "ours_median": a, "natcap_median": b})
        print(f"{workload:12} {n_workers:>9} {hash_algorithm:>13} {a:>13.0f} {b:>15.0f} {a / b:>7.2f}")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(results, stream, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
