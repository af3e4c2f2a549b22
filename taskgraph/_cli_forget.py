"""``taskgraph forget`` and ``taskgraph clean``: dropping records (so their tasks
run again), the history, or every record and its targets.

Imports ``_ledger`` (its read side), ``_ledger_forget``,
``_view`` (run status, times), ``_cli_common`` and ``_escape``. Each asks
before it changes anything, unless given ``--yes``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import TextIO

from taskgraph._cli_common import CommandError, confirm, resolve
from taskgraph._escape import terminal
from taskgraph._ledger_forget import forget, forget_stale
from taskgraph._ledger_read import LedgerReader, StaleRow
from taskgraph._view import run_status, when


def _stale(args: argparse.Namespace) -> tuple[int | None, list[StaleRow], int, float | None]:
    """The current graph's run, the history records to forget, how many more
    history records were seen since ``--older-than``, and that time."""
    reader = LedgerReader(args.workspace)
    try:
        current = reader.current_run()
        if current is None:
            return None, [], 0, None
        for run in reader.runs():
            if run_status(run) == "running" and run.host == socket.gethostname():
                raise CommandError(
                    f"run {run.run_id} is in progress (pid {run.pid}): it may be using records that are "
                    "history now; forget --stale once it has ended"
                )
        before = time.time() - args.older_than if args.older_than is not None else None
        stale = reader.stale(current, before)
        return current, stale, reader.history_count(current) - len(stale), before
    finally:
        reader.close()


def _forget_stale(args: argparse.Namespace, out: TextIO) -> int:
    current, stale, kept, before = _stale(args)
    if current is None:
        out.write("nothing is history: no run has ended yet, so there is no current graph\n")
        return 0
    if not stale:
        more = f" ({kept} history record{'s were' if kept > 1 else ' was'} seen since)" if kept else ""
        out.write(f"nothing to forget: every record is in the current graph (run {current}){more}\n"
                  if not kept else f"nothing to forget: no record was last seen before {when(before)}{more}\n")
        return 0
    names = sorted({row.name for row in stale})
    shown = ", ".join(repr(name) for name in names[:5])
    if len(names) > 5:
        shown += f" and {len(names) - 5} more names"
    question = (f"Forget {len(stale)} record(s) that no run since run {current} considered ({shown}; the oldest "
                f"last seen {when(stale[0].last_seen)}), with their files, decisions and stored results?")
    if not confirm(question, args.yes, sys.stdin):
        out.write("nothing forgotten\n")
        return 1
    count = forget_stale(args.workspace, [row.record_key for row in stale], before)
    out.write(f"forgot {count} record(s) of history; the current graph (run {current}) is untouched"
              + (f"; {kept} more history records were seen since {when(before)}" if kept else "") + "\n")
    return 0


def cmd_forget(args: argparse.Namespace, out: TextIO) -> int:
    if args.stale:
        if args.tasks:
            raise CommandError("give either task names or --stale, not both")
        return _forget_stale(args, out)
    if args.older_than is not None:
        raise CommandError("--older-than goes with --stale")
    if not args.tasks:
        raise CommandError("name the tasks to forget (names or key prefixes), or give --stale")
    reader = LedgerReader(args.workspace)
    tasks = resolve(reader, args.tasks)
    reader.close()
    names = ", ".join(repr(task.name) for task in tasks)
    if not confirm(f"Forget {len(tasks)} task(s) ({names}); they will run again next time?",
                   args.yes, sys.stdin):
        out.write("nothing forgotten\n")
        return 1
    count = forget(args.workspace, [task.record_key for task in tasks])
    out.write(f"forgot {count} task(s)\n")
    return 0


def _delete(paths: list[str], out: TextIO) -> int:
    """Delete the files (and links) of ``paths`` that are there; how many were."""
    deleted = 0
    for path in paths:
        try:
            if os.path.isfile(path) or os.path.islink(path):
                os.remove(path)
                deleted += 1
        except OSError as error:
            out.write(f"could not delete {terminal(path)}: {terminal(str(error))}\n")
    return deleted


def cmd_clean(args: argparse.Namespace, out: TextIO) -> int:
    reader = LedgerReader(args.workspace)
    tasks = reader.tasks()
    targets = sorted({path for _, pair in reader.files(role="target").items() for path in pair[1]})
    reader.close()
    what = f"Forget all {len(tasks)} recorded task(s)"
    if args.targets:
        what += f" and delete their {len(targets)} recorded target file(s)"
    if not confirm(what + "?", args.yes, sys.stdin):
        out.write("nothing cleaned\n")
        return 1
    deleted = _delete(targets, out) if args.targets else 0
    count = forget(args.workspace, [task.record_key for task in tasks])
    out.write(f"forgot {count} task(s)" + (f", deleted {deleted} target file(s)" if args.targets else "") + "\n")
    return 0
