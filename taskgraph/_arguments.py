"""A call's arguments for people: the tree stored with each record, and what
changed between two calls.

Imports the standard library, xxhash, ``_identity`` (path normalisation) and
``_function_info`` (function identities), so the tree agrees with the identity
about what counts: paths are normalised, functions count by name and source.

The tree is JSON: ``{"args": [node, ...], "kwargs": {name: node}}``, where a
node is a leaf (the value's ``repr``, a string) or a container
(``{"d": [[key, node], ...]}`` for a dict, ``{"l": [...]}`` a list, ``{"t":
[...]}`` a tuple, ``{"s": [...]}`` a set, ``{"f": [...]}`` a frozenset). Long
leaves keep their start and a hash of the rest (``{"r": start, "h": hash, "n":
length}``), and large or deep containers only their size, a short rendering and
a hash (``{"big": type, "n": items, "r": text, "h": hash}``), so a record's
tree stays small whatever the call passed.
"""

from __future__ import annotations

import functools
import inspect
import json
import marshal
import pickle
import re
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

import xxhash

from taskgraph._frozen import frozen
from taskgraph._function_info import function_info
from taskgraph._identity import (
    ArgumentRepr,
    arguments_text,
    big_int_text,
    describe_arguments,
    is_pure_path,
    normalize_path,
)

if TYPE_CHECKING:
    from pathlib import PurePath

_LEAF_MAX = 1000
_ITEMS_MAX = 200
_DEPTH_MAX = 8
_NODES_MAX = 2000
_CHANGES_MAX = 20
_SHORT = ArgumentRepr()
_SHORT.maxstring = 60
_SHORT.maxother = 60
_SHORT.maxlist = 4
_SHORT.maxdict = 4
_SHORT.maxlevel = 2
# Object reprs that differ between runs only by where the object lived.
_ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")
_CONTAINER_TAGS: dict[type, str] = {dict: "d", list: "l", tuple: "t", set: "s", frozenset: "f"}
_TAG_NAMES = {"d": "dict", "l": "list", "t": "tuple", "s": "set", "f": "frozenset"}
_NUMBERS = (int, float, bool, complex, type(None))

Node = Any  # str | dict[str, Any]


def _hash(data: bytes) -> str:
    return str(xxhash.xxh3_64_hexdigest(data))


def _digest(value: Any) -> str:
    try:
        return _hash(marshal.dumps(value, 2))
    except Exception:
        pass
    try:
        return _hash(pickle.dumps(value))
    except Exception:
        return _hash(repr(value).encode("utf-8", "backslashreplace"))


class _Builder:
    def __init__(self) -> None:
        self.nodes = 0

    def node(self, value: Any, depth: int) -> Node:
        self.nodes += 1
        kind = type(value)
        if kind is str or is_pure_path(value):
            return self._text(value)
        if kind in _NUMBERS:
            try:
                return repr(value)
            except ValueError:  # an int with more digits than str() makes
                return {"r": big_int_text(value), "h": _digest(value), "n": value.bit_length()}
        if kind is bytes:
            return self._long(repr(value[:_LEAF_MAX]), value) if len(value) > _LEAF_MAX else repr(value)
        tag = _CONTAINER_TAGS.get(kind)
        if tag is not None:
            return self._container(tag, value, depth)
        if inspect.isfunction(value) or inspect.isbuiltin(value) or inspect.ismethod(value) or isinstance(
            value, functools.partial
        ):
            info = function_info(value)
            return f"<function {info.name}, source {info.source_hash[:12]}>"
        return self._other(value, kind)

    def _text(self, value: str | PurePath) -> Node:
        """A string or a path; one that looks like a path is normalised, as the identity sees it."""
        text = str(value)
        if "/" in text or "\\" in text or is_pure_path(value):
            try:
                text = normalize_path(text)
            except (ValueError, OSError):
                pass
        return self._long(repr(text[:_LEAF_MAX]), text) if len(text) > _LEAF_MAX else repr(text)

    def _container(self, tag: str, value: Any, depth: int) -> Node:
        if len(value) > _ITEMS_MAX or depth >= _DEPTH_MAX or self.nodes + len(value) > _NODES_MAX:
            return {"big": _TAG_NAMES[tag], "n": len(value), "r": _SHORT.repr(value), "h": _digest(value)}
        if tag == "d":
            items = [[self._key(key), self.node(item, depth + 1)] for key, item in value.items()]
            return {"d": items}
        if tag in ("s", "f"):
            return {tag: sorted(json.dumps(self.node(item, depth + 1), sort_keys=True) for item in value)}
        return {tag: [self.node(item, depth + 1) for item in value]}

    def _other(self, value: Any, kind: type) -> Node:
        """Any other object, by its repr (without its address)."""
        try:
            text = _ADDRESS.sub(" at 0x…", repr(value))
        except Exception:
            text = f"<{kind.__module__}.{kind.__qualname__} object>"
        if hasattr(value, "tobytes") and hasattr(value, "shape"):
            # An array's repr leaves out most of its values: its bytes say
            # whether they changed.
            try:
                return {"r": text[:_LEAF_MAX], "h": _hash(value.tobytes()), "n": len(text)}
            except Exception:
                pass
        return self._long(text[:_LEAF_MAX], text) if len(text) > _LEAF_MAX else text

    @staticmethod
    def _long(start: str, whole: str | bytes) -> Node:
        data = whole.encode("utf-8", "surrogatepass") if isinstance(whole, str) else whole
        return {"r": start, "h": _hash(data), "n": len(whole)}

    def _key(self, key: Any) -> str:
        node = self.node(key, _DEPTH_MAX)  # keys are shown, not walked
        return node if isinstance(node, str) else str(node.get("r", ""))


#: What ``json.dumps(value, separators=(",", ":"))`` does, without making
#: an encoder at each call (a microsecond of the two per task).
_COMPACT = json.JSONEncoder(separators=(",", ":"))
#: A string as _COMPACT writes it (ASCII, escaped).
_quoted = encode_basestring_ascii


def tree(args: Iterable[Any], kwargs: dict[str, Any]) -> str:
    """The JSON tree of a call's arguments, as stored with its record."""
    builder = _Builder()
    data = {
        "args": [builder.node(arg, 1) for arg in args],
        "kwargs": {str(name): builder.node(value, 1) for name, value in sorted(kwargs.items())},
    }
    return _COMPACT.encode(data)


# The plain values a call is most often made of, and the longest printed form
# (``repr``) that ``describe_arguments`` shows whole: for these the readable
# arguments are each value's repr, with no need for its general rendering.
_PLAIN_REPR_MAX: dict[type, int] = {str: 200, int: 40, float: 200, bool: 200, type(None): 200}


def tree_and_text(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str]:
    """The call's arguments as stored with its record: the JSON tree
    (:func:`tree`) and the readable text (``_identity.describe_arguments``).

    Built in one pass when every argument is a short string or a plain number
    (most calls): each value's ``repr`` is its readable text, and a number's
    its node. The same as the two functions give, in about half the time.
    """
    builder = _Builder()
    nodes: list[Node] = []
    parts: list[str] = []
    for value in args:
        plain = _plain(builder, value)
        if plain is None:
            return tree(args, kwargs), describe_arguments(args, kwargs)
        parts.append(plain[0])
        nodes.append(plain[1])
    named: dict[str, Node] = {}
    for name, value in sorted(kwargs.items()):
        plain = _plain(builder, value)
        if plain is None:
            return tree(args, kwargs), describe_arguments(args, kwargs)
        parts.append(f"{name}={plain[0]}")
        named[str(name)] = plain[1]
    if all(type(node) is str for node in nodes) and all(type(node) is str for node in named.values()):
        # Every node a leaf (as most often): the same JSON as _COMPACT makes, in a third of the time.
        pairs = ",".join([f"{_quoted(name)}:{_quoted(node)}" for name, node in named.items()])
        return f'{{"args":[{",".join(map(_quoted, nodes))}],"kwargs":{{{pairs}}}}}', arguments_text(parts)
    return _COMPACT.encode({"args": nodes, "kwargs": named}), arguments_text(parts)


def _plain(builder: _Builder, value: Any) -> tuple[str, Node] | None:
    """A plain value's readable text and its node; None for any other value."""
    limit = _PLAIN_REPR_MAX.get(type(value))
    if limit is None:
        return None
    try:
        shown = repr(value)
    except ValueError:  # an int with more digits than str() makes: the general rendering
        return None
    if len(shown) > limit:
        return None
    builder.nodes += 1
    return shown, builder._text(value) if type(value) is str else shown


@frozen
class Change:
    """One difference between two calls' arguments.

    Attributes:
        path: where, as Python would index it: ``args[0]['catchment_1']['area_km2']``
            or ``kwargs['factor']``.
        old: the old value's rendering, None if it was not passed.
        new: the new value's rendering, None if it is no longer passed.
        note: what kind of change when the values alone do not say it
            (a tuple became a list, a large value's contents changed).
    """

    path: str
    old: str | None
    new: str | None
    note: str = ""

    def describe(self, width: int = 60) -> str:
        """One line: the path and both values, shortened around their first difference."""
        if self.old is None:
            return f"{self.path} was not passed before (now {shorten(self.new or '', width)})"
        if self.new is None:
            return f"{self.path} is no longer passed (was {shorten(self.old, width)})"
        old, new = shorten_pair(self.old, self.new, width)
        note = f" ({self.note})" if self.note else ""
        return f"{self.path}: {old} -> {new}{note}"


def shorten(text: str, width: int = 60) -> str:
    """``text`` cut to about ``width`` characters."""
    return text if len(text) <= width else text[: width - 1] + "…"


def shorten_pair(old: str, new: str, width: int = 60) -> tuple[str, str]:
    """Both texts cut to about ``width`` characters around where they first differ."""
    if len(old) <= width and len(new) <= width:
        return old, new
    first = 0
    limit = min(len(old), len(new))
    while first < limit and old[first] == new[first]:
        first += 1
    start = max(0, first - width // 3)

    def cut(text: str) -> str:
        piece = text[start:start + width]
        return ("…" if start else "") + piece + ("…" if start + width < len(text) else "")

    return cut(old), cut(new)


def _leaf_text(node: Node) -> str:
    if isinstance(node, str):
        return node
    if "big" in node:
        return f"{node['r']} ({node['n']} items)"
    if "r" in node:
        return str(node["r"]) + ("…" if node.get("n", 0) > len(str(node["r"])) else "")
    tag = next(iter(node))
    return f"{_TAG_NAMES.get(tag, tag)} of {len(node[tag])} items"


def _render(node: Node) -> str:
    """A container node back as Python-looking text (for a value shown whole)."""
    if isinstance(node, str) or "r" in node:
        return _leaf_text(node)
    tag = next(iter(node))
    items = node[tag]
    if tag == "d":
        return "{" + ", ".join(f"{key}: {_render(value)}" for key, value in items) + "}"
    if tag in ("s", "f"):
        inner = ", ".join(_render(json.loads(item)) for item in items)
        return ("{" + inner + "}" if items else "set()") if tag == "s" else f"frozenset({{{inner}}})"
    inner = ", ".join(_render(item) for item in items)
    if tag == "t":
        return "(" + inner + ("," if len(items) == 1 else "") + ")"
    return "[" + inner + "]"


def _kind(node: Node) -> str:
    if isinstance(node, str):
        return "leaf"
    if "big" in node:
        return "big:" + str(node["big"])
    if "r" in node:
        return "leaf"
    return str(next(iter(node)))


def _diff(old: Node, new: Node, path: str, out: list[Change]) -> None:
    """Add to ``out`` what changed from ``old`` to ``new`` at ``path`` (at most _CHANGES_MAX in all)."""
    if len(out) >= _CHANGES_MAX or old == new:
        return
    old_kind, new_kind = _kind(old), _kind(new)
    if old_kind != new_kind or old_kind == "leaf" or old_kind.startswith("big:"):
        _diff_whole(old, new, old_kind, new_kind, path, out)
    elif old_kind == "d":
        _diff_dict(old["d"], new["d"], path, out)
    elif old_kind in ("s", "f"):
        _diff_set(old, new, old_kind, path, out)
    else:
        _diff_sequence(old[old_kind], new[old_kind], path, out)


def _add(out: list[Change], change: Change) -> None:
    if len(out) < _CHANGES_MAX:
        out.append(change)


def _diff_whole(old: Node, new: Node, old_kind: str, new_kind: str, path: str, out: list[Change]) -> None:
    """Two values compared whole: leaves, large values, or values of two kinds."""
    old_text, new_text = _render(old), _render(new)
    note = ""
    if old_text == new_text:
        if old_kind != new_kind:
            note = f"a {_TAG_NAMES.get(old_kind, old_kind)} became a {_TAG_NAMES.get(new_kind, new_kind)}"
        else:
            note = "contents changed beyond what is shown"
    _add(out, Change(path, old_text, new_text, note))


def _diff_dict(old_items: list[Any], new_items: list[Any], path: str, out: list[Change]) -> None:
    old_keys, new_by_key = dict(old_items), dict(new_items)
    for key, value in old_items:
        if key in new_by_key:
            _diff(value, new_by_key[key], f"{path}[{key}]", out)
        else:
            _add(out, Change(f"{path}[{key}]", _render(value), None))
    for key, value in new_items:
        if key not in old_keys:
            _add(out, Change(f"{path}[{key}]", None, _render(value)))


def _diff_set(old: Node, new: Node, tag: str, path: str, out: list[Change]) -> None:
    """One change for a set: what it gained and lost."""
    lost = [item for item in old[tag] if item not in new[tag]]
    gained = [item for item in new[tag] if item not in old[tag]]
    parts = []
    if gained:
        parts.append("gained " + ", ".join(_render(json.loads(item)) for item in gained[:5]))
    if lost:
        parts.append("lost " + ", ".join(_render(json.loads(item)) for item in lost[:5]))
    _add(out, Change(path, _render(old), _render(new), "; ".join(parts)))


def _diff_sequence(old_list: list[Any], new_list: list[Any], path: str, out: list[Change]) -> None:
    """Item by item, then the items one of them has beyond the other's end."""
    for index in range(min(len(old_list), len(new_list))):
        _diff(old_list[index], new_list[index], f"{path}[{index}]", out)
    for index in range(len(new_list), len(old_list)):
        _add(out, Change(f"{path}[{index}]", _render(old_list[index]), None))
    for index in range(len(old_list), len(new_list)):
        _add(out, Change(f"{path}[{index}]", None, _render(new_list[index])))


def changes(old_tree: str, new_tree: str) -> list[Change]:
    """What differs between two stored trees, first difference first (at most
    a few dozen). Empty if the trees are equal or one cannot be read."""
    try:
        old, new = json.loads(old_tree), json.loads(new_tree)
        old_args, new_args = old["args"], new["args"]
        old_kwargs, new_kwargs = old["kwargs"], new["kwargs"]
    except (ValueError, KeyError, TypeError):
        return []
    out: list[Change] = []
    _diff({"l": old_args}, {"l": new_args}, "args", out)
    _diff({"d": [[repr(k), v] for k, v in old_kwargs.items()]},
          {"d": [[repr(k), v] for k, v in new_kwargs.items()]}, "kwargs", out)
    return out


def text_change(old: str, new: str, width: int = 60) -> str:
    """The first difference between two renderings of a call's arguments (for
    records of older ledgers, which kept only the text)."""
    old_short, new_short = shorten_pair(old, new, width)
    return f"{old_short} -> {new_short}"
