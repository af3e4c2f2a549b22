"""Text from the ledger made safe for each output of the ``taskgraph`` command.

Leaf module: imports only the standard library.

Task names come from scripts (and from item keys in ``Topology``), paths from
the file system, and a ledger may have been edited by anyone who could write
it: any of them may hold quotes, newlines, terminal escape sequences or bytes
that are not UTF-8. Each function here returns text that its format shows as
that text, literally, and that adds nothing to the output: no node, no
attribute, no link, no table row, no cursor movement. JSON output needs none of
this (``json.dumps`` escapes every control character and round-trips).
"""

from __future__ import annotations

import re

__all__ = ["dot_id", "dot_label", "mermaid_id", "mermaid_label", "terminal"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HEX_KEY = re.compile(r"[0-9a-f]+")
# Characters a Mermaid label would read as syntax or markup, as its numeric
# entity codes ("#35;" is "#", so the other codes cannot be forged).
_MERMAID = {"#": "#35;", '"': "#34;", "<": "#60;", ">": "#62;", "&": "#38;", "`": "#96;"}


def terminal(text: object) -> str:
    """``text`` for a terminal, on one line: every character that is not
    printable (control characters such as ESC and newline, C1 controls,
    format characters such as bidirectional overrides, line separators, lone
    surrogates) is shown as a Python-style escape; a surrogate escape of a
    byte that is not UTF-8 (from a file name) as that byte, ``\\xff``.
    Anything but a str (from an edited ledger) is shown as its ``str``."""
    if not isinstance(text, str):
        text = str(text)
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
            continue
        code = ord(char)
        if char in _NAMED:
            out.append(_NAMED[char])
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's escape of a byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def dot_label(text: object) -> str:
    """The inside of a Graphviz double-quoted string that Graphviz shows as
    ``text``: non-printable characters shown escaped (so no newline ends the
    statement), backslashes doubled (Graphviz reads ``\\n``, ``\\N``, ``\\G``
    in labels), quotes escaped, and ``&`` written as an entity (Graphviz reads
    ``&lt;`` and the like as HTML entities, in SVG output too)."""
    return terminal(text).replace("\\", "\\\\").replace('"', '\\"').replace("&", "&amp;")


def dot_id(key: object) -> str:
    """A node id for DOT: a quoted string."""
    return '"' + terminal(key).replace("\\", "\\\\").replace('"', '\\"') + '"'


def mermaid_label(text: object) -> str:
    """The inside of a Mermaid ``["..."]`` label that Mermaid shows as
    ``text``: non-printable characters shown escaped (so no newline starts a
    statement), then quotes, ``#``, backticks (Markdown strings) and HTML
    markup characters as entity codes."""
    return "".join(_MERMAID.get(char, char) for char in terminal(text))


def mermaid_id(key: object) -> str:
    """A Mermaid node id: ``k`` and the key's first 16 hex digits (a key that
    is not hex, from an edited ledger, by the hex of its bytes)."""
    text = key if isinstance(key, str) else str(key)
    short = text[:16]
    if _HEX_KEY.fullmatch(short):
        return f"k{short}"
    return "k" + text.encode("utf-8", "surrogatepass").hex()
