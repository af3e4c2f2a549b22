"""The house rules: each module imports only what docs/design.md's module table says it may.

The table is the specification: its rows are read here, so the rules cannot
drift from the page. Imports anywhere in a module count (top level, inside
functions, under ``TYPE_CHECKING``), since a function-level import is still a
dependency.
"""

from __future__ import annotations

import ast
import os
import re
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "taskgraph")
DESIGN = os.path.join(ROOT, "docs", "design.md")


def read_table(path: str = DESIGN) -> dict[str, set[str] | None]:
    """Module -> the package modules it may import (None: any of them)."""
    rules: dict[str, set[str] | None] = {}
    with open(path, encoding="utf-8") as stream:
        rows = [line for line in stream if line.startswith("| `")]
    for row in rows:
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) != 3:
            continue
        module = cells[0].strip("`")
        allowed_text = cells[2]
        if "the public names" in allowed_text:
            rules[module] = None
            continue
        allowed: set[str] = set()
        if "the above" in allowed_text:
            allowed |= set(rules)
        for name in re.findall(r"`([^`]+)`", allowed_text):
            # "`LedgerReader` and `forget` of `_ledger`", "`_fingerprint.compare`": the module is what counts.
            head = name.split(".")[0]
            if head.startswith("_") or head in ("sequencer", "topology", "multitask", "boss", "Task"):
                allowed.add(head)
        rules[module] = allowed
    return rules


def imports_of(source: str) -> set[str]:
    """The package modules a module's source imports (``taskgraph.X`` and ``from taskgraph import X``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "taskgraph" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] != "taskgraph":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found.update(alias.name for alias in node.names)
    return found


def violations(package: str, rules: dict[str, set[str] | None]) -> list[str]:
    problems = []
    for entry in sorted(os.listdir(package)):
        if not entry.endswith(".py") or entry in ("__init__.py", "__main__.py", "_version.py"):
            continue
        module = entry[:-3]
        if module not in rules:
            problems.append(f"{module}: not in the module table of docs/design.md")
            continue
        allowed = rules[module]
        if allowed is None:
            continue
        with open(os.path.join(package, entry), encoding="utf-8") as stream:
            used = imports_of(stream.read())
        for name in sorted(used - allowed - {module, "_version"}):
            problems.append(f"{module} imports {name}, which the table does not allow")
    return problems


#: The ledger's rooms (``_ledger`` and ``_ledger_*``): together, one leaf, and the only SQL.
LEDGER_ROOM = re.compile(r"_ledger(_\w+)?")
LEDGER_ROOMS = [
    entry[:-3] for entry in sorted(os.listdir(PACKAGE)) if entry.endswith(".py") and LEDGER_ROOM.fullmatch(entry[:-3])
]
SQL_LIBRARIES = ("sqlite3", "sqlitedict")


def sql_outside_the_ledger(package: str) -> list[str]:
    """The modules outside the ledger's rooms that import an SQL library."""
    problems = []
    for entry in sorted(os.listdir(package)):
        if not entry.endswith(".py") or LEDGER_ROOM.fullmatch(entry[:-3]):
            continue
        with open(os.path.join(package, entry), encoding="utf-8") as stream:
            tree = ast.parse(stream.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.split(".")[0] in SQL_LIBRARIES:
                    problems.append(f"{entry[:-3]} imports {name}: only the ledger speaks SQL")
    return problems


def test_every_module_imports_only_what_the_design_allows():
    assert violations(PACKAGE, read_table()) == []


def test_a_broken_rule_is_reported(tmp_path):
    copy = tmp_path / "taskgraph"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "_errors.py", "a") as stream:
        stream.write("\n\ndef _late():\n    from taskgraph._ledger import Ledger\n    return Ledger\n")
    assert violations(str(copy), read_table()) == ["_errors imports _ledger, which the table does not allow"]


def test_only_the_ledger_speaks_sql():
    assert LEDGER_ROOMS  # (the pattern finds the rooms)
    assert sql_outside_the_ledger(PACKAGE) == []


def test_sql_outside_the_ledger_is_reported(tmp_path):
    copy = tmp_path / "taskgraph"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "_view.py", "a") as stream:
        stream.write("\n\ndef _peek():\n    import sqlite3\n    return sqlite3\n")
    assert sql_outside_the_ledger(str(copy)) == ["_view imports sqlite3: only the ledger speaks SQL"]


@pytest.mark.parametrize("module", ["_fingerprint", "_frozen", "_claims", "_errors", "_threads", *LEDGER_ROOMS])
def test_the_leaves_import_nothing_above_them(module):
    # design.md: the ledger and fingerprinting are leaves; the ledger's rooms import one another.
    with open(os.path.join(PACKAGE, f"{module}.py"), encoding="utf-8") as stream:
        used = imports_of(stream.read())
    below = {"_errors", "_fingerprint", "_frozen", "_version"}
    if module in LEDGER_ROOMS:
        below |= set(LEDGER_ROOMS)
    assert used <= below, used


def test_an_inline_graph_imports_no_process_machinery(tmp_path):
    """A script that runs its tasks inline pays for no process pool (psutil,
    multiprocessing), no shared cache it does not use (nor its socket, secrets
    and hmac), no snapshot classes it does not ask for, no read side of the
    ledger, no pathlib (with urllib.parse and ipaddress), no hashlib for
    xxhash's digests, no shutil, and, storing no results, no sqlitedict:
    together about half of the engine's import time, in every short run of
    such a script."""
    import os
    import subprocess
    import sys

    import xxhash

    import taskgraph

    # -S: without site, so that nothing an installer's start-up hook imports
    # (an editable install's finder imports pathlib) hides what the engine does.
    path = os.pathsep.join(os.path.dirname(os.path.dirname(module.__file__)) for module in (taskgraph, xxhash))
    script = (
        "import sys, taskgraph\n"
        f"graph = taskgraph.TaskGraph({str(tmp_path / 'ws')!r}, -1)\n"
        f"target = {str(tmp_path / 'out.txt')!r}\n"
        "graph.add_task(open, args=(target, 'w'), target_path_list=[target], task_name='touch')\n"
        "graph.close(); graph.join()\n"
        "heavy = ('psutil', 'multiprocessing', 'sqlitedict', 'taskgraph._pool', 'taskgraph._forkserver',\n"
        "         'taskgraph._cache', 'taskgraph._cache_entry', 'taskgraph._cache_job', 'taskgraph._snapshots',\n"
        "         'taskgraph._ledger_read', 'socket', 'secrets', 'hmac', 'hashlib', 'pathlib', 'urllib.parse',\n"
        "         'shutil', 'unicodedata')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "out.txt").exists()
