"""``taskgraph cache``: look into, prune and verify a shared cache.

    taskgraph cache stats CACHE [--json]
    taskgraph cache prune CACHE [--max-size SIZE] [--dry-run] [--json]
    taskgraph cache verify CACHE [--repair] [--key FILE] [--json]

A client of ``_cache_admin``; wired into ``taskgraph`` by ``_cli``. Each
command refuses a directory that is not a taskgraph cache, so a mistyped
path is never pruned.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, TextIO

from taskgraph._cache import Cache
from taskgraph._cache_admin import VerifyReport, parse_size, prune, recent_runs, scan, verify
from taskgraph._cache_entry import CacheUnusable, read_team_key
from taskgraph._cache_use import CACHE_KEY_ENV
from taskgraph._cli_common import CommandError


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _open(path: str) -> Cache:
    try:
        return Cache.open(path, create=False)
    except CacheUnusable as error:
        raise CommandError(str(error)) from error


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    cache = _open(args.cache)
    found = scan(cache)
    runs = recent_runs(cache, args.runs)
    totals = {name: sum(run.get(name, 0) for run in runs)
              for name in ("hits", "misses", "stored", "put_failures", "problems", "restored_bytes",
                           "stored_bytes", "seconds_saved")}
    if args.json:
        json.dump({
            "cache": cache.root, "entries": len(found.entries), "damaged_entries": len(found.bad_entries),
            "entry_bytes": found.entry_bytes, "objects": len(found.objects), "object_bytes": found.object_bytes,
            "leftovers": len(found.leftovers), "quarantined": len(found.quarantined),
            "recent_runs": runs, "recent_totals": totals,
        }, out, indent=1)
        out.write("\n")
        return 0
    out.write(f"cache {cache.root}\n")
    out.write(f"  entries: {len(found.entries)}" + (f" ({len(found.bad_entries)} damaged)" if found.bad_entries else "")
              + f", objects: {len(found.objects)}, {_size(found.object_bytes + found.entry_bytes)} in all\n")
    if found.leftovers or found.quarantined:
        out.write(f"  {len(found.leftovers)} leftover temporary file(s), {len(found.quarantined)} quarantined "
                  "object(s): `taskgraph cache prune` removes them once they are old\n")
    if not runs:
        out.write("no run has used this cache yet\n")
        return 0
    out.write(f"last {len(runs)} run(s), newest first:\n")
    out.write(f"  {'ENDED':<19} {'HOST':<14} {'USER':<10} {'HITS':>5} {'MISSES':>6} {'STORED':>6} "
              f"{'RESTORED':>10} {'SAVED':>8}\n")
    for run in runs:
        ended = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.get("ended", 0)))
        out.write(f"  {ended:<19} {str(run.get('host', '?'))[:14]:<14} {str(run.get('user', '?'))[:10]:<10} "
                  f"{run.get('hits', 0):>5} {run.get('misses', 0):>6} {run.get('stored', 0):>6} "
                  f"{_size(run.get('restored_bytes', 0)):>10} {_duration(run.get('seconds_saved', 0.0)):>8}\n")
    looked = totals["hits"] + totals["misses"]
    rate = f" ({100 * totals['hits'] / looked:.0f}% hit rate)" if looked else ""
    out.write(f"in these runs: {totals['hits']} hits, {totals['misses']} misses{rate}, "
              f"{_size(totals['restored_bytes'])} restored, {_duration(totals['seconds_saved'])} of task time saved"
              + (f"; {totals['put_failures']} entries could not be stored" if totals["put_failures"] else "")
              + (f"; {totals['problems']} damaged entries or objects met" if totals["problems"] else "") + "\n")
    return 0


def cmd_prune(args: argparse.Namespace, out: TextIO) -> int:
    cache = _open(args.cache)
    try:
        max_size = None if args.max_size is None else parse_size(args.max_size)
    except ValueError as error:
        raise CommandError(f"--max-size: {error}") from error
    report = prune(cache, max_size, dry_run=args.dry_run)
    if args.json:
        json.dump({"cache": cache.root, "dry_run": args.dry_run, "max_size": max_size,
                   **{name: getattr(report, name) for name in report.__slots__}}, out, indent=1)
        out.write("\n")
        return 0
    verb = "would remove" if args.dry_run else "removed"
    parts = [f"{report.entries} entries", f"{report.objects} objects"]
    if report.bad_entries:
        parts.append(f"{report.bad_entries} damaged manifests")
    if report.leftovers or report.quarantined:
        parts.append(f"{report.leftovers} leftover temporary files and {report.quarantined} quarantined objects")
    out.write(f"{verb} {', '.join(parts)}: {_size(report.freed_bytes)}; the cache "
              f"{'would hold' if args.dry_run else 'holds'} {_size(report.size_after)} "
              f"(it held {_size(report.size_before)})\n")
    if report.kept_recent:
        out.write(f"kept {report.kept_recent} unreferenced object(s) ({_size(report.pending_bytes)}) used in the "
                  "last 15 minutes, in case a run is putting them: a prune after that removes them\n")
    if max_size is not None and report.size_after - report.pending_bytes > max_size:
        out.write(f"still above {_size(max_size)}: what is left is in use or was used recently\n")
    return 0


def _secret(key_file: str | None) -> bytes | None:
    """The team's key from ``--key`` or ``$TASKGRAPH_CACHE_KEY``, if either names one."""
    key_file = key_file or os.environ.get(CACHE_KEY_ENV) or None
    if not key_file:
        return None
    try:
        return read_team_key(key_file)
    except CacheUnusable as error:
        raise CommandError(str(error)) from error


def _write_problems(report: VerifyReport, repair: bool, out: TextIO) -> None:
    """The bad entries and corrupt objects (50 of each at most), and what to do."""
    details: list[tuple[str, Any]] = sorted(report.bad.items())
    for key, problem in details[:50]:
        out.write(f"  bad entry {key[:12]}: {problem}\n")
    for digest, problem in sorted(report.bad_objects.items())[:50]:
        out.write(f"  corrupt object {digest[:12]}: {problem}\n")
    if report.bad or report.bad_objects:
        out.write("  (tasks skip bad entries and run; `--repair` removes damaged manifests and moves corrupt "
                  "objects aside, and the next run of each task puts a good entry)\n" if not repair else
                  "  repaired: damaged manifests removed, corrupt objects moved to quarantine/\n")


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    cache = _open(args.cache)
    report = verify(cache, _secret(args.key), repair=args.repair)
    if args.json:
        json.dump({"cache": cache.root, **{name: getattr(report, name) for name in report.__slots__}},
                  out, indent=1)
        out.write("\n")
        return 1 if report.bad else 0
    out.write(f"checked {report.entries} entries and {report.objects} objects ({_size(report.bytes)}): "
              f"{len(report.bad)} bad entries, {len(report.bad_objects)} corrupt objects\n")
    _write_problems(report, args.repair, out)
    if report.untrusted:
        out.write(f"{report.untrusted} entries hold a result not signed with this key: their targets are used, "
                  "their results never\n")
    if report.unreferenced or report.leftovers:
        out.write(f"{report.unreferenced} unreferenced object(s), {report.leftovers} leftover temporary file(s): "
                  "harmless; `taskgraph cache prune` removes them\n")
    return 1 if report.bad and not args.repair else 0


def add_cache_command(commands: Any) -> None:
    """Add ``taskgraph cache ...`` to the ``taskgraph`` parser's subcommands."""
    cache = commands.add_parser("cache", help="look into, prune or verify a shared cache (TaskGraph(cache=...))")
    actions = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")

    stats = actions.add_parser("stats", help="entries, bytes, and hits and misses of recent runs")
    stats.add_argument("cache", help="the cache directory")
    stats.add_argument("--runs", type=int, default=10, help="how many recent runs to show (default 10)")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(run=cmd_stats)

    prune_cmd = actions.add_parser(
        "prune", help="remove leftovers, and least recently used entries down to --max-size; safe while in use")
    prune_cmd.add_argument("cache", help="the cache directory")
    prune_cmd.add_argument("--max-size", metavar="SIZE",
                           help="remove least recently used entries until the cache holds at most SIZE "
                                "(50G, 500M; powers of 1024)")
    prune_cmd.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    prune_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    prune_cmd.set_defaults(run=cmd_prune)

    verify_cmd = actions.add_parser(
        "verify", help="read every entry and object and check their digests; exit status 1 if any is bad")
    verify_cmd.add_argument("cache", help="the cache directory")
    verify_cmd.add_argument("--repair", action="store_true",
                            help="remove damaged manifests and move corrupt objects to quarantine/")
    verify_cmd.add_argument("--key", metavar="FILE",
                            help=f"the team's cache key file (default ${CACHE_KEY_ENV}): also check signatures")
    verify_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    verify_cmd.set_defaults(run=cmd_verify)


__all__ = ["add_cache_command"]
