"""What a failed task's record keeps: the exception as the user wrote it.

Leaf module: imports only the standard library, so a worker process can use
it too.

A failure is the exception's type and message, the frames of the user's own
code (the frames of taskgraph's machinery above the call are left out), and
the whole traceback text. The frames are taken where the exception was
caught, in the worker (:func:`user_frames` in ``run_job``), and travel back
with the result as plain tuples; when they did not travel (an exception
raised in the parent, such as a dead worker), they come from the local
traceback, or from the worker's traceback text.
"""

from __future__ import annotations

import json
import os
import re
import traceback
from collections.abc import Sequence
from types import TracebackType

from taskgraph._frozen import frozen

#: (file, line, function, source line) of one frame.
Frame = tuple[str, int, str, str]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: The deepest frames are where the error happened: a deep recursion keeps these.
MAX_FRAMES = 40
_MAX_MESSAGE = 4000
_FRAME_LINE = re.compile(r'^  File "(?P<file>.*)", line (?P<line>\d+), in (?P<func>.*)$')
_NOTE_PREFIX = "raised by taskgraph task "


@frozen
class Failure:
    """One failed run of a task.

    Attributes:
        type: the exception's type, as Python prints it (``ZeroDivisionError``,
            ``json.decoder.JSONDecodeError``, ``taskgraph.MissingTargetError``).
        message: ``str()`` of the exception (without notes).
        frames: the user's frames, outermost first, at most
            :data:`MAX_FRAMES` of them (the innermost).
        omitted: how many outer frames were left out.
        text: the whole traceback, as the worker printed it.
    """

    type: str
    message: str
    frames: tuple[Frame, ...]
    omitted: int
    text: str

    def headline(self) -> str:
        """``Type: message``, as the last line of a traceback."""
        return f"{self.type}: {self.message}" if self.message else self.type

    def frames_json(self) -> str:
        """The frames as stored in the ledger."""
        return json.dumps({"frames": [list(frame) for frame in self.frames], "omitted": self.omitted})


def type_name(kind: type) -> str:
    """The name Python's traceback prints for an exception type; taskgraph's
    own by their public name."""
    module = kind.__module__
    if module in ("builtins", "__main__"):
        return kind.__qualname__
    if module.startswith("taskgraph."):
        return f"taskgraph.{kind.__qualname__}"
    return f"{module}.{kind.__qualname__}"


def _keep(path: str) -> bool:
    return not os.path.abspath(path).startswith(_PACKAGE_DIR)


def user_frames(tb: TracebackType | None) -> list[Frame]:
    """The frames of a traceback that are not taskgraph's own, outermost first."""
    return [
        (frame.filename, frame.lineno or 0, frame.name, (frame.line or "").strip())
        for frame in traceback.extract_tb(tb)
        if _keep(frame.filename)
    ]


def frames_from_text(text: str) -> list[Frame]:
    """The user's frames of the last exception in a printed traceback (for a
    worker whose frames did not come back as data)."""
    # The last traceback block belongs to the exception that was raised last.
    block = text.rsplit("Traceback (most recent call last):", 1)[-1]
    lines = block.splitlines()
    frames: list[Frame] = []
    for index, line in enumerate(lines):
        match = _FRAME_LINE.match(line)
        if match is None:
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        code = following.strip() if following.startswith("    ") else ""
        if _keep(match["file"]):
            frames.append((match["file"], int(match["line"]), match["func"], code))
    return frames


def describe(error: BaseException, frames: Sequence[Frame] | None = None, text: str | None = None) -> Failure:
    """The failure of a task that raised ``error``.

    Args:
        error: the exception (the task's own, re-raised in this process).
        frames: the user's frames as taken where it was caught, if known.
        text: the worker's traceback text, if it ran elsewhere.
    """
    if frames is None:
        if error.__traceback__ is not None:
            frames = user_frames(error.__traceback__)
        elif text:
            frames = frames_from_text(text)
        else:
            frames = []
    if not text:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    try:
        message = str(error)
    except Exception as broken:  # a __str__ that raises must not lose the failure
        message = f"<str() of the exception failed: {type(broken).__name__}>"
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "..."
    omitted = max(0, len(frames) - MAX_FRAMES)
    return Failure(type_name(type(error)), message, tuple(frames[omitted:]), omitted, text)


def from_text(text: str) -> tuple[str, str]:
    """(type, message) of the last exception in a traceback's text: for the
    records of older ledgers, which kept only the text."""
    lines = [line for line in text.rstrip().splitlines()
             if line.strip() and not line.startswith(_NOTE_PREFIX)]
    if not lines:
        return "", ""
    # The exception line is the last one that is not indented (a message may
    # span lines; its first line then starts with the type).
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        if not line.startswith(" ") and re.match(r"^[A-Za-z_][\w.]*(:|$)", line):
            kind, _, message = line.partition(":")
            rest = "\n".join(lines[index + 1:])
            message = message.strip() + ("\n" + rest if rest else "")
            return kind, message
    return "", lines[-1]


def load_frames(stored: str | None) -> tuple[list[Frame], int]:
    """The frames and the count of omitted ones, from the ledger's JSON."""
    if not stored:
        return [], 0
    try:
        data = json.loads(stored)
        return [(str(f), int(n), str(func), str(code)) for f, n, func, code in data["frames"]], int(data["omitted"])
    except (ValueError, KeyError, TypeError):
        return [], 0


def format_frames(frames: Sequence[Frame], omitted: int = 0) -> list[str]:
    """The frames as Python prints them (two lines each)."""
    lines = [f"  ... {omitted} outer frames left out"] if omitted else []
    for file, line, func, code in frames:
        lines.append(f'  File "{file}", line {line}, in {func}')
        if code:
            lines.append(f"    {code}")
    return lines
