"""The ``taskgraph`` command: its argument parser and its entry point, which
runs a command and turns its errors into one line.

    taskgraph status WORKSPACE [--all] [--json] [--failed]
    taskgraph explain WORKSPACE TASK
    taskgraph graph WORKSPACE [--format dot|mermaid|json] [-o FILE] [--all]
    taskgraph trace WORKSPACE -o trace.json [--run N]
    taskgraph report WORKSPACE -o report.html
    taskgraph forget WORKSPACE TASK... [--yes]
    taskgraph forget WORKSPACE --stale [--older-than 30d] [--yes]
    taskgraph clean WORKSPACE [--targets] [--yes]
    taskgraph cache stats|prune|verify CACHE ...

Imports the commands (``_cli_records``: status, explain; ``_cli_export``:
graph, trace, report; ``_cli_forget``: forget, clean; ``_cli_cache``), and
``_cli_common``, ``_errors`` and ``_escape`` for the errors. Every command is
a client of the ledger's read side (``LedgerReader``), and of the same
fingerprint comparison the scheduler uses, so what it says about files is
what the next run would decide. None unpickles anything from the ledger.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from taskgraph._cli_cache import add_cache_command
from taskgraph._cli_common import CommandError
from taskgraph._cli_export import cmd_graph, cmd_report, cmd_trace
from taskgraph._cli_forget import cmd_clean, cmd_forget
from taskgraph._cli_records import cmd_explain, cmd_status
from taskgraph._errors import LedgerError
from taskgraph._escape import terminal
from taskgraph._version import __version__

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` in seconds (argparse type)."""
    number, unit = text[:-1], text[-1:].lower()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: write a number and a unit, one of s, m, h, d, w (30d, 12h)")
    return value * _UNITS[unit]


_WORKSPACE_HELP = "the workspace directory given to TaskGraph (it holds taskgraph_ledger.sqlite)"


def _command(commands: Any, name: str, summary: str, run: Callable[[argparse.Namespace, TextIO], int]
             ) -> argparse.ArgumentParser:
    """A command on a workspace: its parser, which takes the workspace first, and ``run`` runs it."""
    parser: argparse.ArgumentParser = commands.add_parser(name, help=summary)
    parser.add_argument("workspace", help=_WORKSPACE_HELP)
    parser.set_defaults(run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskgraph", description="Look into a taskgraph workspace's ledger.")
    parser.add_argument("--version", action="version", version=f"taskgraph {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = _command(commands, "status", "one line per task of the current graph", cmd_status)
    status.add_argument("--all", action="store_true", help="the history too: records no run since the current "
                        "graph's considered (state 'stale')")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--failed", action="store_true", help="only failed tasks, with their errors")

    explain = _command(commands, "explain", "why a task ran or was skipped, and whether it would run now", cmd_explain)
    explain.add_argument("task", help="task name (its record in the current graph) or a key prefix (4 or more "
                         "characters, from `status --json` or `status --all`)")

    graph = _command(commands, "graph", "the current task graph", cmd_graph)
    graph.add_argument("--format", choices=("dot", "mermaid", "json"), default=None,
                       help="what to write: Graphviz dot (the default), a Mermaid flowchart or JSON; "
                       "without it, -o's extension says (.dot/.gv, .mmd/.mermaid, .json)")
    graph.add_argument("-o", "--output", help="file to write (default: print); .svg/.png/.pdf render with Graphviz")
    graph.add_argument("--all", action="store_true", help="draw the history's records too")

    trace = _command(commands, "trace", "a run's timeline as a Chrome trace", cmd_trace)
    trace.add_argument("-o", "--output", required=True,
                       help="the trace file to write (JSON, for https://ui.perfetto.dev or chrome://tracing)")
    trace.add_argument("--run", type=int, dest="run_id", metavar="N",
                       help="which run (default: the latest that executed tasks)")

    report = _command(commands, "report", "an HTML page: graph, timeline, costs, failures, next run", cmd_report)
    report.add_argument("-o", "--output", required=True,
                        help="the HTML file to write (one self-contained file, viewable without network)")

    forget_cmd = _command(commands, "forget", "drop the records of tasks so they run again, or the history", cmd_forget)
    forget_cmd.add_argument("tasks", nargs="*", help="task names or key prefixes")
    forget_cmd.add_argument("--stale", action="store_true", help="drop the history: the records no run since "
                            "the current graph's considered, with their files, decisions and results")
    forget_cmd.add_argument("--older-than", type=_duration, metavar="AGE",
                            help="with --stale: only records last seen longer ago than AGE (30d, 12h, 2w)")
    forget_cmd.add_argument("--yes", action="store_true", help="do not ask")

    clean = _command(commands, "clean", "drop every record (and, with --targets, the recorded targets)", cmd_clean)
    clean.add_argument("--targets", action="store_true", help="also delete recorded target files")
    clean.add_argument("--yes", action="store_true", help="do not ask")

    add_cache_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``taskgraph`` console script and ``python -m taskgraph``."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args, sys.stdout))
    except (LedgerError, CommandError) as error:
        sys.stderr.write(f"taskgraph: {terminal(str(error))}\n")
        return 1
    except subprocess.CalledProcessError as error:
        sys.stderr.write(f"taskgraph: Graphviz failed ({error})\n")
        return 1
    except BrokenPipeError:
        return 0


__all__ = ["CommandError", "build_parser", "main"]
