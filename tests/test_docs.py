"""The documentation: the Sphinx site builds without a warning, and every
Python sample in docs/*.md and README.md runs.

A fenced block tagged ``python`` is run as a standalone script
(``python block.py``) in an empty temporary directory and must exit with 0.
A block that must not run (another tool's code, a cluster address) has the
line ``<!-- not-run -->`` directly above its fence. Output and shell sessions
use ``text`` or ``console`` blocks, which are not run.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import re
import subprocess
import sys
import uuid

import pytest
from procs import processes_marked

import taskgraph

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
NOT_RUN = "<!-- not-run -->"
BLOCK_TIMEOUT_S = 60
BUILD_TIMEOUT_S = 300
MARKER = "TASKGRAPH_DOCS_TEST_RUN"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language tag and its code."""

    path: str
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    not_run: bool

    @property
    def name(self) -> str:
        return f"{os.path.relpath(self.path, ROOT)}:{self.line}"


def fenced_blocks(path: str) -> list[Block]:
    """Every top-level fenced block of a Markdown file (blocks nested in
    another fence, such as a Markdown sample, are part of that fence)."""
    with open(path, encoding="utf-8") as stream:
        lines = stream.read().splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        language = opening["info"].strip().split(" ")[0] if opening["info"].strip() else ""
        body = []
        end = index + 1
        while end < len(lines):
            closing = _FENCE.match(lines[end])
            if (closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence)
                    and not closing["info"].strip()):
                break
            # Fences inside a list item are indented: drop that indentation.
            body.append(lines[end][indent:] if lines[end][:indent].strip() == "" else lines[end])
            end += 1
        above = lines[index - 1].strip() if index > 0 else ""
        blocks.append(Block(path, index + 1, language, "\n".join(body) + "\n", above == NOT_RUN))
        index = end + 1
    return blocks


def documented_files() -> list[str]:
    return [*sorted(glob.glob(os.path.join(DOCS, "*.md"))), os.path.join(ROOT, "README.md")]


def python_blocks() -> list[Block]:
    return [block for path in documented_files() for block in fenced_blocks(path)
            if block.language == "python" and not block.not_run]


# -- the samples --------------------------------------------------------------------------------


def test_the_parser_finds_fences_tags_and_not_run_marks(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n```python\nprint(1)\n```\n\n<!-- not-run -->\n```python\nimport missing\n```\n"
        "````markdown\n```python\nnested\n```\n````\n"
        "- item\n\n  ```python\n  x = 1\n  ```\n```console\n$ ls\n```\n"
    )
    found = [(block.line, block.language, block.code, block.not_run) for block in fenced_blocks(str(page))]
    assert found == [
        (2, "python", "print(1)\n", False),
        (7, "python", "import missing\n", True),
        (10, "markdown", "```python\nnested\n```\n", False),
        (17, "python", "x = 1\n", False),
        (20, "console", "$ ls\n", False),
    ]


def test_there_are_samples_to_run():
    names = {os.path.basename(block.path) for block in python_blocks()}
    assert {"README.md", "tutorial.md", "rerun-decision.md", "migration.md"} <= names


@pytest.mark.parametrize("block", python_blocks(), ids=lambda block: block.name)
def test_python_sample_runs(block, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(block.code, encoding="utf-8")
    marker = uuid.uuid4().hex
    try:
        process = subprocess.run(
            [sys.executable, "block.py"], cwd=tmp_path, capture_output=True, text=True,
            timeout=BLOCK_TIMEOUT_S, env={**os.environ, MARKER: marker},
        )
    except subprocess.TimeoutExpired as error:
        for leftover in processes_marked(MARKER, marker):
            leftover.kill()
        pytest.fail(f"the sample at {block.name} did not finish within {BLOCK_TIMEOUT_S} s: {error.stdout!r}")
    assert process.returncode == 0, (
        f"the sample at {block.name} failed (exit {process.returncode}); mark it with {NOT_RUN} "
        f"directly above its fence if it must not run.\n--- stdout\n{process.stdout}\n--- stderr\n{process.stderr}"
    )
    assert not processes_marked(MARKER, marker), f"the sample at {block.name} left processes behind"


def test_ci_runs_exactly_the_readme_test_command():
    readme = [block.code.strip() for block in fenced_blocks(os.path.join(ROOT, "README.md"))
              if block.language == "sh" and "pytest" in block.code]
    assert len(readme) == 1, readme
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as stream:
        ci = [line.strip() for line in stream if not line.lstrip().startswith("#")]
    assert readme[0] in ci


# -- the site -----------------------------------------------------------------------------------


def test_the_site_builds_without_warnings_and_documents_every_public_name(tmp_path):
    for module in ("sphinx", "myst_parser"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: `pip install -e '.[docs]'` (or '.[test]') builds the site")
    out = tmp_path / "html"
    process = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"),
         DOCS, str(out)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
    )
    assert process.returncode == 0, f"sphinx-build failed:\n{process.stdout}\n{process.stderr}"
    pages = {os.path.splitext(os.path.basename(path))[0] for path in glob.glob(os.path.join(DOCS, "*.md"))}
    built = {os.path.splitext(name)[0] for name in os.listdir(out) if name.endswith(".html")}
    assert pages <= built
    if importlib.util.find_spec("pydata_sphinx_theme") is not None:  # the docs and test extras have it
        assert "pydata-sphinx-theme" in (out / "index.html").read_text(encoding="utf-8")
    api = (out / "api.html").read_text(encoding="utf-8")
    for name in taskgraph.__all__:
        if callable(getattr(taskgraph, name)):  # classes and functions: documented from their docstrings
            assert f'id="taskgraph.{name}"' in api, f"{name} is public but missing from the API reference"
        else:  # constants: named in the text
            assert name in api, f"{name} is public but not mentioned in the API reference"
