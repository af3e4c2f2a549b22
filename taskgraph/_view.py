"""What the command line and the run report show of a workspace: its runs,
its current graph and its history, each record's state, its files checked
against the disk, and what the next run would do.

A client of the ledger's read side (``LedgerReader``, which never unpickles)
and of ``_fingerprint.compare``, the scheduler's own comparison, so what it
says about files is what the next run would decide. Imports psutil to tell a
run in progress from one whose process was killed.

The current graph is what the latest run that ended considered (every task it
was given, whatever became of it). Records considered by a run after it (one in
progress, or one that was killed) are shown with it; every other record is
history (state ``stale``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import psutil

from taskgraph._failure import Frame, from_text, load_frames
from taskgraph._fingerprint import Fingerprint, compare, file_stat, is_content_algorithm
from taskgraph._ledger_read import LedgerReader, RunRow, TaskRow

#: Every state a record can be shown in.
STATES = ("ran", "restored", "skipped", "failed", "cancelled", "running", "pending", "interrupted", "stale")


# -- runs ----------------------------------------------------------------------------------


def run_status(run: RunRow) -> str:
    """``'ended'``; ``'running'`` (its process is alive, or it is on another
    host and has not ended); or ``'unfinished'`` (its process is gone: killed
    or crashed)."""
    if run.ended is not None:
        return "ended"
    if run.pid is None or run.host != socket.gethostname():
        return "running"  # cannot look: say what the ledger says
    try:
        process = psutil.Process(run.pid)
        # A pid reused since by another process started after the run did.
        alive = process.create_time() <= run.started + 1.0 and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        alive = False
    return "running" if alive else "unfinished"


def ended_run_states(reader: LedgerReader, run_id: int) -> dict[str, int]:
    """What became of the tasks a run that ended was given: state -> how
    many, the tasks still pending or running when it ended counted as
    cancelled."""
    states = reader.run_states(run_id)
    for unfinished in ("pending", "running"):  # the run ended before they finished
        states["cancelled"] = states.get("cancelled", 0) + states.pop(unfinished, 0)
    return states


def executed(reader: LedgerReader) -> list[TaskRow]:
    """The records of tasks that ran (their last execution: its run and start)."""
    return [task for task in reader.tasks() if task.started is not None and task.run_id is not None]


def executed_in(tasks: Iterable[TaskRow], run_id: int) -> list[TaskRow]:
    """The records whose last execution was in ``run_id``, in the order they started."""
    return sorted((task for task in tasks if task.run_id == run_id), key=lambda task: task.started or 0)


# -- files ---------------------------------------------------------------------------------


def file_state(path: str, recorded: Fingerprint, reader: LedgerReader, read: bool) -> str:
    """'ok', 'missing', 'changed', 'unreadable' or (content modes, without
    ``read``) 'touched': the stat changed but the content was not read."""
    mode = recorded.mode
    if not read and is_content_algorithm(mode):
        st = file_stat(path)
        if st is None:
            return "missing"
        if st.size != recorded.size:
            return "changed"
        entry = reader.lookup_digest(path, mode)
        if entry is None or entry.stat != st:
            return "ok" if st.mtime_ns == recorded.mtime_ns else "touched"
        return "ok" if entry.digest == recorded.digest else "changed"
    try:
        change = compare(path, recorded, mode, reader)
    except OSError:
        return "unreadable"
    if change is None:
        return "ok"
    return "missing" if change.what == "missing" else "changed"


# -- failures ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FailureView:
    """A failed record's exception, as raised (or as far as an older ledger's
    text tells)."""

    type: str
    message: str
    frames: list[Frame]
    omitted: int
    text: str

    def headline(self) -> str:
        first = self.message.splitlines()[0] if self.message else ""
        return f"{self.type}: {first}" if first else (self.type or "(no message)")


def failure_of(task: TaskRow) -> FailureView | None:
    """The failure of a failed record, None otherwise."""
    if task.state != "failed":
        return None
    text = task.error or ""
    if task.error_type is not None:
        frames, omitted = load_frames(task.error_frames)
        return FailureView(task.error_type, task.error_message or "", frames, omitted, text)
    kind, message = from_text(text)
    return FailureView(kind, message, [], 0, text)


# -- the graph -----------------------------------------------------------------------------


@dataclass(slots=True)
class Entry:
    """One record as shown.

    Attributes:
        key, name: the record's key and its task's name.
        state: one of :data:`STATES`: what became of it in the run that last
            considered it, or ``'stale'`` for history.
        run: that run (for history, the last run that considered it).
        current: whether the current graph's run considered it.
        recorded: the record's own state, ``'done'`` or ``'failed'``; ``''``
            for a task a run was given and decided to run that has no record
            yet (running, or it never finished).
        run_id, ended, duration, cpu_time, peak_memory: its last execution.
        targets: the state of its targets on disk (:func:`targets_state`).
    """

    key: str
    name: str
    state: str
    run: int | None
    current: bool
    recorded: str
    run_id: int | None
    ended: float | None
    duration: float | None
    cpu_time: float | None
    peak_memory: int | None
    targets: str = "-"


@dataclass(slots=True)
class View:
    """A workspace's ledger as the command line shows it.

    Attributes:
        runs: every run, oldest first.
        current: the current graph's run (None before any run ended).
        later: the runs after it (in progress, or killed), with their status.
        entries: the records shown (the current graph and what later runs
            considered; with ``everything``, history too), in the order
            they last ended.
        history: how many records are history.
        edges: (dependency, dependent) pairs among the entries.
        unrecorded: tasks the current graph's run was given that have no
            record (they never finished: cancelled, or stopped with the run).
    """

    reader: LedgerReader
    runs: list[RunRow]
    current: int | None
    later: list[tuple[RunRow, str]]
    entries: list[Entry]
    history: int
    edges: list[tuple[str, str]] = field(default_factory=list)
    unrecorded: int = 0
    _failed: dict[str, TaskRow] | None = None

    def run(self, run_id: int | None) -> RunRow | None:
        for run in self.runs:
            if run.run_id == run_id:
                return run
        return None

    def failed(self) -> dict[str, TaskRow]:
        """The whole records of the failed entries, by key."""
        if self._failed is None:
            keys = {entry.key for entry in self.entries if entry.recorded == "failed"}
            self._failed = {task.record_key: task for task in self.reader.tasks(state="failed")
                            if task.record_key in keys} if keys else {}
        return self._failed


# How a run's state for a record reads once the run is over, or was killed.
_ENDED = {"pending": "cancelled", "running": "cancelled"}
_KILLED = {"pending": "interrupted", "running": "interrupted"}


def _stat_state(path: str, mode: str, size: int, mtime_ns: int, digest: str | None, reader: LedgerReader) -> str:
    """A target's state from one stat, without reading it (a content-hashed
    target whose stat changed is looked up in the digest cache)."""
    try:
        found = os.stat(path)
    except OSError:
        return "missing"
    if mode == "exists":
        return "ok"
    if found.st_size != size:
        return "changed"
    if found.st_mtime_ns == mtime_ns:
        return "ok"
    if not is_content_algorithm(mode):
        return "changed"
    st = file_stat(path)
    entry = reader.lookup_digest(path, mode) if st is not None else None
    if entry is None or entry.stat != st:
        return "touched"
    return "ok" if entry.digest == digest else "changed"


class _States:
    """What each record's state reads as now, for one view: a run's state for
    a task (memoised, since every row asks), and the state of a record as its
    rows come in."""

    def __init__(self, statuses: dict[int, str], current: int | None) -> None:
        self._statuses = statuses
        self._current = current
        self._shown: dict[tuple[int, str], str] = {}

    def now(self, run_id: int, state: str) -> str:
        """What a run's state for a task reads as now: a run that ended or
        was killed leaves no task pending."""
        found = self._shown.get((run_id, state))
        if found is None:
            status = self._statuses.get(run_id, "ended")
            found = state if status == "running" else (_ENDED if status == "ended" else _KILLED).get(state, state)
            self._shown[(run_id, state)] = found
        return found

    def in_graph(self, run_id: int | None) -> bool:
        """Whether a run is the current graph's or one after it."""
        return run_id is not None and (self._current is None or run_id >= self._current)

    def first(self, run_id: int | None, state: str, recorded: str, last_run: int | None) -> tuple[str, int | None]:
        """The state and run of a record from its first row."""
        if run_id is not None and self.in_graph(run_id):
            return self.now(run_id, state), run_id
        if self._current is None:  # before any run ended, its own record says
            return ("failed" if recorded == "failed" else "ran"), last_run
        return "stale", max(run_id or 0, last_run or 0) or None

    def another_run(self, entry: Entry, run_id: int | None, state: str) -> None:
        """A further row of a record, from another run of the current graph
        or after it: the latest run says its state."""
        if run_id is None or entry.run is None or run_id == entry.run or not self.in_graph(run_id):
            return
        entry.current = entry.current or run_id == self._current
        if run_id > entry.run:
            entry.state, entry.run = self.now(run_id, state), run_id


def _memberships(reader: LedgerReader) -> dict[str, list[tuple[int, str]]]:
    """Every record's (run, state) in the runs that considered it, by run."""
    runs_of: dict[str, list[tuple[int, str]]] = {}
    for key, run_id, state in reader.memberships(0):
        runs_of.setdefault(key, []).append((run_id, state))
    return runs_of


_TARGET_RANK = {"missing": 4, "changed": 3, "touched": 2, "ok": 1}


def _check_target(entry: Entry, path: str, mode: str, size: int, mtime_ns: int, digest: str | None,
                  reader: LedgerReader) -> None:
    """Check one target on disk; the entry's ``targets`` is its worst target."""
    try:
        found = os.stat(path)
        # The common case, settled by the stat alone.
        same = found.st_size == size and (found.st_mtime_ns == mtime_ns or mode == "exists")
    except OSError:
        same = False
    target = "ok" if same else _stat_state(path, mode, size, mtime_ns, digest, reader)
    if entry.targets == "-" or _TARGET_RANK[target] > _TARGET_RANK[entry.targets]:
        entry.targets = target


def _first_look(checked: set[tuple[str, str]] | None, key: str, path: str) -> bool:
    """Whether a record's target is met for the first time (always, without a set to remember)."""
    if checked is None:
        return True
    if (key, path) in checked:
        return False
    checked.add((key, path))
    return True


def _recorded_entries(reader: LedgerReader, states: _States, current: int | None, since: int | None,
                      check_targets: bool, several_runs: bool) -> list[Entry]:
    """One entry per record considered since ``since`` (every record if
    None), in the order they last ended, with their targets checked."""
    by_key: dict[str, Entry] = {}
    # A record considered by several runs from the current graph's on comes
    # once per run (a run in progress or killed after it): its targets are
    # checked once, and the latest run says its state.
    checked: set[tuple[str, str]] | None = set() if several_runs else None
    # Without a scope, the runs that considered each record come from here.
    runs_of = _memberships(reader) if since is None else {}
    for (key, run_id, state, name, recorded, last_run, ended, duration, cpu_time, peak_memory,
         path, mode, size, mtime_ns, digest) in reader.status_rows(since):
        current_too = run_id == current
        if run_id is None and key in runs_of:
            run_id, state = runs_of[key][-1]  # (by run: the latest)
            current_too = any(run == current for run, _ in runs_of[key])
        entry = by_key.get(key)
        if entry is None:
            entry = by_key[key] = Entry(key, name, *states.first(run_id, state, recorded, last_run), current_too,
                                        recorded, last_run, ended, duration, cpu_time, peak_memory)
        else:
            states.another_run(entry, run_id, state)
        if check_targets and path is not None and _first_look(checked, key, path):
            _check_target(entry, path, mode, size, mtime_ns, digest, reader)
    return sorted(by_key.values(), key=lambda entry: (entry.ended is None, entry.ended or 0.0, entry.name))


def _unrecorded_entries(reader: LedgerReader, states: _States, current: int | None) -> tuple[list[Entry], int]:
    """Tasks given to a run that have no record yet (running, or stopped
    before they first finished), shown by the name their decision has; and
    how many of the current graph's have no name (never decided)."""
    missing: dict[str, tuple[int, str, str | None]] = {}
    for key, run_id, state, name in reader.unrecorded(current or 0):
        missing[key] = (run_id, state, name)  # by run: the latest says
    entries: list[Entry] = []
    undecided = 0
    for key, (run_id, state, name) in missing.items():
        if name is None:
            undecided += run_id == current  # not even decided: no name to show
            continue
        entries.append(Entry(key, name, states.now(run_id, state), run_id, run_id == current, "", None, None, None,
                             None, None))
    return entries, undecided


def build(reader: LedgerReader, everything: bool = False, check_targets: bool = True, edges: bool = True) -> View:
    """The view of a workspace: the current graph (and, with ``everything``,
    the history), each record's state and, with ``check_targets``, its
    targets checked on disk (by their stat: no file is read); with
    ``edges``, the dependencies between them."""
    runs = reader.runs()
    statuses = {run.run_id: run_status(run) for run in runs}
    current = reader.current_run()
    later = [(run, statuses[run.run_id]) for run in runs if current is None or run.run_id > current]
    since = None if everything or current is None else current
    states = _States(statuses, current)
    entries = _recorded_entries(reader, states, current, since, check_targets, several_runs=bool(later))
    if since is None:
        history = sum(entry.state == "stale" for entry in entries)
    else:
        history = reader.count() - len(entries)
    unrecorded, undecided = _unrecorded_entries(reader, states, current)
    entries += unrecorded
    keys = {entry.key for entry in entries}
    pairs = [(dep, key) for key, dep in reader.deps(since) if key in keys and dep in keys] if edges else []
    return View(reader, runs, current, later, entries, history, pairs, undecided)


# -- what the next run would do ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What the next run would do about one record, from the ledger and the
    disk alone (a change to the function or its arguments is seen only by
    the script).

    ``action`` is ``'run'`` (a reason of its own), ``'after'`` (it reads
    files of a task that would run, so it runs if those change) or
    ``'skip'``.
    """

    entry: Entry
    action: str
    reasons: tuple[str, ...]


def changed_files(inputs: dict[str, Fingerprint], targets: dict[str, Fingerprint], reader: LedgerReader,
                  read: bool) -> list[tuple[str, str, str]]:
    """(role, path, state) of each of a record's files that is not as the
    ledger has it: targets first, then inputs (see :func:`file_state`)."""
    found = []
    for role, recorded in (("target", targets), ("input", inputs)):
        for path, fp in recorded.items():
            state = file_state(path, fp, reader, read)
            if state != "ok":
                found.append((role, path, state))
    return found


def _own_reasons(entry: Entry, failed: dict[str, TaskRow],
                 files: tuple[dict[str, Fingerprint], dict[str, Fingerprint]], reader: LedgerReader,
                 read: bool) -> list[str]:
    """Why a record would run whatever the others do."""
    reasons: list[str] = []
    if not entry.recorded:
        reasons.append("it has no record: it has never finished")
    if entry.recorded == "failed":
        failure = failure_of(failed[entry.key]) if entry.key in failed else None
        reasons.append(f"its last run failed ({failure.headline()})" if failure else "its last run failed")
    reasons += [f"{role} {path} is {state}" for role, path, state in changed_files(*files, reader, read)]
    return reasons


def _upstream(keys: list[str], own: dict[str, list[str]], edges: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Each record downstream of one that would run on its own -> the
    records just upstream of it that would run (breadth-first from every
    record that would run on its own)."""
    wanted = set(keys)
    dependents: dict[str, list[str]] = {}
    for dep, key in edges:
        if dep in wanted and key in wanted:
            dependents.setdefault(dep, []).append(key)
    upstream: dict[str, list[str]] = {}
    queue = [key for key in keys if own[key]]
    seen = set(queue)
    while queue:
        key = queue.pop(0)
        for child in dependents.get(key, ()):
            upstream.setdefault(child, []).append(key)
            if child not in seen:
                seen.add(child)
                queue.append(child)
    return upstream


def plan(view: View, read: bool = False) -> list[Plan]:
    """The next run's decisions about the records of the view that are not
    history, in the order of the view; dependents of a task that would run
    are ``'after'`` it."""
    shown = [entry for entry in view.entries if entry.state != "stale"]
    failed = view.failed()
    files = view.reader.files(view.current) if shown else {}
    own = {entry.key: _own_reasons(entry, failed, files.get(entry.key, ({}, {})), view.reader, read)
           for entry in shown}
    upstream = _upstream([entry.key for entry in shown], own, view.edges)
    names = {entry.key: entry.name for entry in shown}
    out: list[Plan] = []
    for entry in shown:
        key = entry.key
        if own[key]:
            out.append(Plan(entry, "run", tuple(own[key])))
        elif key in upstream:
            after = ", ".join(repr(names[dep]) for dep in upstream[key][:3])
            out.append(Plan(entry, "after", (f"it reads what {after} would write",)))
        else:
            out.append(Plan(entry, "skip", ()))
    return out


def counts(states: Iterable[str]) -> dict[str, int]:
    """How many of each state, in the order of :data:`STATES`."""
    found: dict[str, int] = {}
    for state in states:
        found[state] = found.get(state, 0) + 1
    return {state: found[state] for state in STATES if state in found}


def describe_counts(found: dict[str, int], order: Sequence[str] = STATES) -> str:
    return ", ".join(f"{found[state]} {state}" for state in order if found.get(state))


# -- how figures are written ---------------------------------------------------------------


_WHEN: dict[int, str] = {}


def when(timestamp: float | None) -> str:
    """A local date and time, ``-`` if unknown."""
    if not timestamp:
        return "-"
    second = int(timestamp)
    text = _WHEN.get(second)
    if text is None:
        if len(_WHEN) > 4096:
            _WHEN.clear()
        text = _WHEN[second] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
    return text


def mebibytes(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.0f}MiB"


def seconds(duration: float | None) -> str:
    if duration is None:
        return "-"
    if duration < 60:
        return f"{duration:.2f}s"  # the common case first
    minutes, rest = divmod(duration, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)}h{int(minutes):02d}m{int(rest):02d}s" if hours else f"{int(minutes)}m{int(rest):02d}s"
