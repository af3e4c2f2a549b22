"""What the ``taskgraph`` commands share: their one error, finding the record a
name or a key prefix means, and asking before a change.

Imports ``_ledger``'s read side, ``_view`` (the current graph, times),
``_arguments`` (shortening) and ``_errors``.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from taskgraph._arguments import shorten, shorten_pair
from taskgraph._errors import TaskGraphError
from taskgraph._ledger_read import LedgerReader, TaskRow
from taskgraph._view import when

_KEY_CHARS = frozenset("0123456789abcdef")
_MIN_PREFIX = 4


class CommandError(TaskGraphError):
    """A command cannot do what was asked; the message is shown as one line."""


def in_graph(task: TaskRow, current: int | None) -> bool:
    """Part of the current graph, or of a run after it (not history)."""
    return current is None or (task.seen is not None and task.seen >= current)


def last_seen(reader: LedgerReader, task: TaskRow) -> str:
    run, at = reader.last_seen(task.record_key)
    return f"run {run}, {when(at)}" if run else when(at)


def listing(reader: LedgerReader, tasks: Sequence[TaskRow], limit: int = 6, reference: TaskRow | None = None) -> str:
    """Records to choose from: key prefix, where they were last seen, and
    their arguments around where they differ from the reference's (or the
    first one's)."""
    parts = []
    reference = reference or tasks[0]
    for task in tasks[:limit]:
        if reference is not task:
            args = shorten_pair(reference.args, task.args, 40)[1]
        else:
            args = shorten(task.args, 40)
        parts.append(f"{task.record_key[:12]} ({last_seen(reader, task)}: {args})")
    more = f", and {len(tasks) - limit} more" if len(tasks) > limit else ""
    return ", ".join(parts) + more


@dataclass(frozen=True, slots=True)
class Resolved:
    """A record named on the command line, and the other records of its name."""

    task: TaskRow
    others: list[TaskRow]
    by_key: bool


def _by_name(reader: LedgerReader, wanted: str, named: list[TaskRow], current: int | None) -> Resolved:
    """The record of the current graph of that name, or the only record of it."""
    live = [task for task in named if in_graph(task, current)]
    history = [task for task in named if not in_graph(task, current)]
    if len(live) == 1:
        return Resolved(live[0], history, False)
    if len(live) > 1:
        raise CommandError(
            f"{len(live)} tasks of the current graph are named {wanted!r}; give a key prefix instead: "
            f"{listing(reader, live)}"
        )
    if len(history) == 1:
        return Resolved(history[0], [], False)
    raise CommandError(
        f"{len(history)} records are named {wanted!r}, none of them in the current graph (run {current}); "
        f"give a key prefix instead: {listing(reader, history)}"
    )


def resolve_one(reader: LedgerReader, wanted: str, current: int | None) -> Resolved:
    """The record meant by a name or a key prefix: a name means its record in
    the current graph (or its only record); clear errors otherwise."""
    named = reader.named(wanted)
    if named:
        return _by_name(reader, wanted, named, current)
    prefix = wanted.lower()
    looks_like_key = bool(prefix) and set(prefix) <= _KEY_CHARS
    if looks_like_key and len(prefix) >= _MIN_PREFIX:
        matches = reader.with_prefix(prefix)
        if len(matches) == 1:
            return Resolved(matches[0], [], True)
        if matches:
            raise CommandError(
                f"{len(matches)} records have keys starting with {wanted!r}; give more of the key: "
                f"{listing(reader, matches)}"
            )
    close = difflib.get_close_matches(wanted, reader.names(), n=5)
    hint = f"; close matches: {', '.join(repr(name) for name in close)}" if close else ""
    if looks_like_key and len(prefix) < _MIN_PREFIX:
        hint += f" (a key prefix needs at least {_MIN_PREFIX} characters)"
    raise CommandError(f"no task named {wanted!r} in {reader.workspace}{hint}")


def resolve(reader: LedgerReader, names: Sequence[str]) -> list[TaskRow]:
    """Tasks named by name or record-key prefix; clear errors otherwise."""
    current = reader.current_run()
    return [resolve_one(reader, wanted, current).task for wanted in names]


def confirm(question: str, assume_yes: bool, stdin: TextIO) -> bool:
    """Whether the user agrees (or gave ``--yes``); without a terminal to ask
    on, a ``CommandError``."""
    if assume_yes:
        return True
    if not stdin.isatty():
        raise CommandError(f"{question} Refusing without a terminal to ask on: add --yes")
    sys.stdout.write(f"{question} [y/N] ")
    sys.stdout.flush()
    return stdin.readline().strip().lower() in ("y", "yes")
