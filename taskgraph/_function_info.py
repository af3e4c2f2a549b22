"""How a function counts in a task's identity: its short name and a hash of its
own dedented source text (a lambda's alone), cached per code object.

Leaf module: imports only the standard library and xxhash.

What a function carries besides its code (defaults, closure cells, a
partial's arguments, a method's object) is not here: the canonical encoding
of ``_identity`` adds it, encoded as arguments are.
"""

from __future__ import annotations

import ast
import functools
import inspect
import linecache
import marshal
import textwrap
import types
import weakref
from collections.abc import Callable
from typing import Any

import xxhash

from taskgraph._frozen import frozen

__all__ = ["FunctionInfo", "function_info", "marshalled"]


def marshalled(value: Any) -> bytes:
    """``value`` (a structure of plain values) as bytes that depend only on the structure."""
    # Version 2 has no back-references, whose use depends on object sharing
    # and refcounts; its output depends only on the structure.
    return marshal.dumps(value, 2)


@frozen
class FunctionInfo:
    """How a function counts in a task's identity.

    Attributes:
        name: ``module.qualname``, for people (logs, the ledger).
        source_hash: xxh3-128 of the dedented source text (of a lambda: the
            text of that lambda alone, not of the line it is on).
        identity: what counts: the short ``__name__`` and the dedented source,
            as in natcap taskgraph. The same function moved to another module
            or nested elsewhere (re-indented) is the same function. What the
            function object carries besides its code (defaults, closure cells,
            a partial's arguments, a method's object) is added by the
            canonical encoding of the call, not here.
    """

    name: str
    source_hash: str
    identity: str


# Functions are cached by their code object (with the names that are not part
# of it), never by the callable itself: a partial or a bound method holds its
# arguments and object, and a cache keyed by it kept them alive for the life
# of the process. Code objects hold only what the source says. Classes (a
# callable instance counts by its class) are cached weakly.
_FUNCTION_CACHE: dict[tuple[Any, ...], FunctionInfo] = {}
_FUNCTION_CACHE_MAX = 1 << 14
_CLASS_CACHE: weakref.WeakKeyDictionary[type, FunctionInfo] = weakref.WeakKeyDictionary()
_BY_FUNCTION: dict[int, tuple[weakref.ref[Any], FunctionInfo]] = {}


def _underlying(func: Any) -> Any:
    """What names a callable and has its source: the function a partial or a
    method calls, the class of a callable instance."""
    target = func
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.ismethod(target):
        target = target.__func__
    elif not (inspect.isfunction(target) or inspect.isbuiltin(target) or inspect.isclass(target)):
        target = type(target)  # a callable instance counts by its class
    return target


def function_info(func: Callable[..., Any]) -> FunctionInfo:
    """Qualified name and source hash of ``func`` (cached per code object).

    A function without retrievable source (a builtin, a C extension, frozen
    code) counts by its name alone, as in natcap taskgraph.
    """
    if type(func) is types.FunctionType:
        # The common case, looked up first by the function itself, weakly (a
        # closure holds what it captured): by id, checked through the weak
        # reference, whose callback drops the entry with the function.
        entry = _BY_FUNCTION.get(id(func))
        if entry is not None and entry[0]() is func:
            return entry[1]
        info = _function_info(func)
        ident = id(func)
        _BY_FUNCTION[ident] = (weakref.ref(func, functools.partial(_forget_function, ident)), info)
        return info
    return _function_info(func)


def _forget_function(ident: int, _ref: object) -> None:
    entry = _BY_FUNCTION.get(ident)
    if entry is not None and entry[0]() is None:
        del _BY_FUNCTION[ident]


def _function_info(func: Callable[..., Any]) -> FunctionInfo:
    target = _underlying(func)
    key: tuple[Any, ...] | None = None
    try:
        if inspect.isfunction(target):
            unwrapped = inspect.unwrap(target)  # getsource reads what __wrapped__ names
            key = (getattr(unwrapped, "__code__", None), target.__module__, target.__qualname__,
                   target.__name__, unwrapped is target)
            info = _FUNCTION_CACHE.get(key)
        elif inspect.isclass(target):
            info = _CLASS_CACHE.get(target)
        else:
            info = None
    except Exception:  # an unhashable or hostile object: not cached
        key, info = None, None
    if info is not None:
        return info
    info = _describe(target)
    try:
        if key is not None:
            if len(_FUNCTION_CACHE) >= _FUNCTION_CACHE_MAX:
                _FUNCTION_CACHE.clear()  # bounded: code made by exec() in a loop
            _FUNCTION_CACHE[key] = info
        elif inspect.isclass(target):
            _CLASS_CACHE[target] = info
    except Exception:
        pass
    return info


def _describe(target: Any) -> FunctionInfo:
    module = getattr(target, "__module__", None) or ""
    qualname = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    name = f"{module}.{qualname}" if qualname else repr(type(target))
    source = _source(target)
    short = str(getattr(target, "__name__", None) or name)
    source_hash = xxhash.xxh3_128_hexdigest(source.encode("utf-8", "surrogatepass"))
    return FunctionInfo(name, source_hash, f"{short}\0{source_hash}")


def _source(target: Any) -> str:
    """The dedented source text of ``target``; "" when it has none."""
    try:
        source = textwrap.dedent(inspect.getsource(target))
    except Exception:  # OSError, TypeError; a tokenizer error on an odd file
        return ""
    try:
        own = inspect.unwrap(target) if inspect.isfunction(target) else target
    except ValueError:  # a __wrapped__ loop
        own = target
    code = getattr(own, "__code__", None)
    if isinstance(code, types.CodeType) and getattr(own, "__name__", None) == "<lambda>":
        # getsource returns the whole line(s) of a lambda: two lambdas on one
        # line would be one function. Take this lambda's own text.
        own = _lambda_source(code)
        if own is not None:
            return own
        return f"{source}\0{_code_digest(code)}"
    return source


# Parsed source files, for finding lambdas in them (a few recent files).
_TREES: dict[str, tuple[str, ast.Module | None]] = {}


def _lambda_source(code: types.CodeType) -> str | None:
    """The text of the lambda expression whose code is ``code``, or None if it
    cannot be told apart from the others on its line."""
    text = "".join(linecache.getlines(code.co_filename))
    if not text:
        return None
    cached = _TREES.get(code.co_filename)
    if cached is not None and cached[0] == text:
        tree = cached[1]
    else:
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            tree = None
        if len(_TREES) >= 16:
            _TREES.clear()
        _TREES[code.co_filename] = (text, tree)
    if tree is None:
        return None
    found = [node for node in ast.walk(tree) if isinstance(node, ast.Lambda) and node.lineno == code.co_firstlineno]
    if len(found) > 1:
        found = _by_position(found, code)
    if len(found) != 1:
        return None
    return ast.get_source_segment(text, found[0])


def _by_position(candidates: list[ast.Lambda], code: types.CodeType) -> list[ast.Lambda]:
    """The innermost candidate whose body holds every instruction of
    ``code`` (Python 3.11+ records columns; before, nothing is chosen)."""
    positions = getattr(code, "co_positions", None)
    if positions is None:
        return []
    spans = [(line, col, end_line, end_col) for line, end_line, col, end_col in positions()
             if line is not None and col is not None and end_line is not None and end_col is not None
             and (line, col) != (end_line, end_col)]
    if not spans:
        return []
    first = min((line, col) for line, col, _, _ in spans)
    last = max((end_line, end_col) for _, _, end_line, end_col in spans)
    holding = []
    for node in candidates:
        body = node.body
        if body.end_lineno is None or body.end_col_offset is None:
            continue
        if (body.lineno, body.col_offset) <= first and last <= (body.end_lineno, body.end_col_offset):
            holding.append(node)
    if not holding:
        return []
    # Nested bodies start later (or end earlier) than the bodies around them.
    innermost = max(holding, key=lambda node: (node.body.lineno, node.body.col_offset,
                                               -(node.body.end_lineno or 0), -(node.body.end_col_offset or 0)))
    return [innermost]


def _code_digest(code: types.CodeType) -> str:
    """A digest of what a code object does (its instructions, names and
    constants, nested code included), independent of where it is in its file
    and of the hash seed (constant sets are sorted)."""

    def const(value: Any) -> Any:
        if isinstance(value, types.CodeType):
            return ("\0code", _code_digest(value))
        if isinstance(value, (tuple, list)):
            return tuple(const(item) for item in value)
        if isinstance(value, frozenset):
            return ("\0set", tuple(sorted((const(item) for item in value), key=marshalled)))
        return value

    structure = (code.co_code, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars,
                 code.co_argcount, code.co_kwonlyargcount, code.co_flags, const(code.co_consts))
    return xxhash.xxh3_128_hexdigest(marshalled(structure))
