"""A task's identity: the canonical encoding of a call (which function, with
which arguments, writing where) and the keys hashed from it, the portable one
of the shared cache included; path normalisation and input discovery.

Imports the standard library, xxhash, ``_function_info`` (how a function
counts) and ``_fingerprint`` (``file_stat``).

Two tasks are the same task when they call the same function (same name, same
source text, and the same defaults, closure cells and bound arguments) with the
same arguments. Arguments are encoded canonically, not by ``repr``: dicts and
sets are ordered, paths are normalised (``str`` and ``pathlib`` alike, relative
and absolute alike; URLs are not paths), target paths are replaced by a
placeholder, functions passed as arguments count as task functions do, and
other objects by what pickle would save of them, encoded the same canonical
way (so equal values give equal keys whatever the interpreter's hash seed).
The canonical structure is encoded with ``marshal`` and hashed with xxh3-128.
"""

from __future__ import annotations

import collections
import copyreg
import functools
import inspect
import logging
import os
import pickle
import re
import reprlib
import sys
import types
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import xxhash

from taskgraph._fingerprint import FileStat, file_stat
from taskgraph._frozen import frozen
from taskgraph._function_info import FunctionInfo, function_info
from taskgraph._function_info import marshalled as _marshal

if TYPE_CHECKING:
    from pathlib import PurePath

# FunctionInfo and function_info live in _function_info and are reached here too.
__all__ = [
    "ArgumentRepr",
    "FunctionInfo",
    "Identity",
    "PortableIdentity",
    "SelfReferenceError",
    "big_int_text",
    "describe_arguments",
    "function_info",
    "input_files",
    "normalize_path",
    "portable_identity",
    "task_identity",
]

LOGGER = logging.getLogger("taskgraph.Task")

_MAX_PATH_LENGTH = 4096


class ArgumentRepr(reprlib.Repr):
    """``reprlib``'s short rendering of arguments, which shows an int too
    large for ``str()`` (Python's limit on its digits) by its size, instead
    of raising ValueError."""

    def repr_int(self, x: int, level: int) -> str:
        try:
            return super().repr_int(x, level)
        except ValueError:
            return big_int_text(x)


def big_int_text(value: int) -> str:
    """How an int too large for ``str()`` is shown."""
    return f"<int of {value.bit_length()} bits>"


_ARG_REPR = ArgumentRepr()
_ARG_REPR.maxstring = 200
_ARG_REPR.maxother = 200
_ARG_REPR.maxlist = 12
_ARG_REPR.maxdict = 12
_ARG_REPR.maxlevel = 4


# Normalised forms of absolute path strings seen before: a graph names the
# same files again and again (targets, then the same strings in the
# arguments), and normalising costs several microseconds. Only absolute
# spellings are kept, since a relative one depends on the working directory.
_NORMALIZED: dict[str, str] = {}
_NORMALIZED_MAX = 1 << 17


def is_pure_path(value: object) -> bool:
    """``isinstance(value, pathlib.PurePath)`` without importing ``pathlib``
    (with ``urllib.parse`` and ``ipaddress``, a fifth of the engine's
    imports): no object is a pathlib path unless something imported it."""
    pathlib = sys.modules.get("pathlib")
    return pathlib is not None and isinstance(value, pathlib.PurePath)


def normalize_path(path: str | PurePath) -> str:
    """Absolute, normalised, case-normalised form of ``path``."""
    if type(path) is str:
        norm = _NORMALIZED.get(path)
        if norm is not None:
            return norm
        norm = os.path.normcase(os.path.abspath(path))
        if len(path) <= 512 and os.path.isabs(path):  # bounded in size too: at most ~130 MB
            if len(_NORMALIZED) >= _NORMALIZED_MAX:
                _NORMALIZED.clear()  # bounded: a huge graph keeps its latest paths
            _NORMALIZED[path] = norm
        return norm
    return os.path.normcase(os.path.abspath(os.fspath(path)))


def _path_candidate(text: str) -> bool:
    return bool(text) and len(text) <= _MAX_PATH_LENGTH and "\0" not in text


class SelfReferenceError(ValueError):
    """An argument contains itself, so it has no finite encoding."""


_PATH = "\0path"
_TARGET = ("\0target",)
_DICT = "\0dict"
_SET = "\0set"
_FUNC = "\0func"
_OBJ = "\0obj"
_TYPE = "\0type"
_MODULE = "\0module"
# A name that pickle stores by reference (the callable of an object's
# reduction, a singleton such as Ellipsis).
_GLOBAL = "\0global"
# A back-reference: an object or function met again while it is being
# encoded (a cycle, such as a parent link), by how many levels up it is.
_REF = "\0ref"
_PLAIN = (int, float, complex, bytes, bool, type(None))
# Types that stand for themselves in the canonical structure (str does not:
# it may be a path).
_ATOMS = frozenset(_PLAIN)
# A string that starts with a URL scheme ("s3://", "https://", "gs://",
# "file://") names no local path. Two letters at least: "C://x" is a Windows path.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://")


def _qualified(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return f"{module}.{name}"


class _Canonical:
    """Turns task arguments into a canonical structure of plain values.

    The structure holds only str, int, float, complex, bytes, bool, None,
    tuples and lists, so ``marshal`` encodes it deterministically: dicts and
    sets are sorted, paths normalised, targets replaced by a placeholder.
    Functions count by name and source with what they carry (defaults,
    closure cells, a partial's arguments, a method's object). Other objects
    count by what pickle would save of them (``__reduce_ex__``: their class,
    ``__getstate__`` or ``__dict__``, items), encoded the same canonical way,
    so that equal values are equal keys in every interpreter whatever its
    hash seed; their pickle is only the last resort. Inside an object,
    strings are values, not paths. Markers are tuples whose first item starts
    with a NUL character.
    """

    def __init__(self, targets: frozenset[str]) -> None:
        self.targets = targets
        # Normalised path strings seen in the arguments (candidate input files).
        self.paths: dict[str, None] = {}
        # id -> nesting depth of the containers, objects and functions being
        # encoded (to refuse or refer to cycles).
        self._active: dict[int, int] = {}
        # > 0 inside an object's reduction: strings there are plain values.
        self._literal = 0

    def _path(self, norm: str) -> Any:
        if norm in self.targets:
            return _TARGET  # a target: identity does not depend on its name
        self.paths[norm] = None
        return (_PATH, norm)

    def value(self, value: Any) -> Any:
        kind = type(value)
        if kind in _ATOMS:
            return value
        encode = _EXACT.get(kind)
        if encode is not None:
            return encode(self, value)
        return self._inexact(value, kind)

    # -- by exact type (the table _EXACT, after the class) ---------------------------------

    def _string(self, value: str) -> Any:
        if self._literal or not _path_candidate(value):
            return value
        if "://" in value and _URL.match(value):
            return value  # a URL, not a local path: counts as written
        norm = normalize_path(value)
        if norm in self.targets or "/" in value or os.sep in value:
            # Relative and absolute spellings of a path are one identity.
            return self._path(norm)
        # A bare name ("mean", "a.tif") counts as written, so that the
        # identity does not depend on the working directory or on whether
        # the file exists yet; it may still be an input.
        self.paths[norm] = None
        return value

    def _sequence(self, value: tuple[Any, ...] | list[Any]) -> Any:
        # Fast path: a sequence of plain numbers is its own canonical form
        # (and cannot contain itself).
        for item in value:
            if type(item) not in _ATOMS:
                return self._tracked(value)
        return value

    def _mapping(self, value: dict[Any, Any]) -> Any:
        return self._tracked(value) if value else (_DICT, [])

    def _tracked(self, value: Any) -> Any:
        """A container, refused if it contains itself."""
        key = id(value)
        if key in self._active:
            raise SelfReferenceError(f"argument {_ARG_REPR.repr(value)} contains itself")
        self._active[key] = len(self._active)
        try:
            return self._container(type(value), value)
        finally:
            del self._active[key]

    # -- the other types, in this order ----------------------------------------------------

    def _inexact(self, value: Any, kind: type) -> Any:
        if is_pure_path(value):
            if self._literal:
                return (_OBJ, _qualified(kind), os.fspath(value))
            return self._path(normalize_path(value))
        if isinstance(value, str):  # str subclass (an enum member, numpy.str_)
            return self.value(str(value))
        if inspect.isfunction(value) or inspect.isbuiltin(value) or inspect.ismethod(value) or isinstance(
            value, functools.partial
        ):
            return self.function(value)
        if isinstance(value, type):
            return (_TYPE, f"{value.__module__}.{value.__qualname__}")
        if isinstance(value, types.ModuleType):
            return (_MODULE, value.__name__)
        hook = getattr(kind, "__taskgraph_identity__", None)
        if hook is not None:
            # The object says what it stands for (a shared array: its content,
            # not the name of its memory segment, which is new on every run).
            return (_OBJ, f"{kind.__module__}.{kind.__qualname__}", self.value(hook(value)))
        return self._other(value)

    def _container(self, kind: type, value: Any) -> Any:
        if kind is tuple:
            return tuple([self.value(item) for item in value])
        if kind is list:
            return [self.value(item) for item in value]
        if kind is dict:
            items = [(self.value(key), self.value(item)) for key, item in value.items()]
            if all(type(key) is str for key, _ in items):
                items.sort(key=lambda pair: pair[0])
            else:
                items.sort(key=lambda pair: _marshal(pair[0]))
            return (_DICT, items)
        members = [self.value(item) for item in value]
        members.sort(key=_marshal)
        return (_SET, members)

    def function(self, func: Any) -> Any:
        if type(func) is types.FunctionType and (
            func.__defaults__ is None and func.__kwdefaults__ is None and func.__closure__ is None
        ):
            return (_FUNC, function_info(func).identity)  # the common case: it carries nothing
        # Plain functions and partials are tracked for cycles (a nested
        # function whose closure holds itself); objects are tracked by _object.
        tracked = inspect.isfunction(func) or isinstance(func, functools.partial)
        if not tracked:
            return self._function(func)
        key = id(func)
        depth = self._active.get(key)
        if depth is not None:
            return (_REF, len(self._active) - depth)
        self._active[key] = len(self._active)
        try:
            return self._function(func)
        finally:
            del self._active[key]

    def _function(self, func: Any) -> Any:
        info = function_info(func)
        if isinstance(func, functools.partial):
            parts = [_FUNC, info.identity, self.value(func.args), self.value(func.keywords)]
            inner = func.func
            if inspect.isfunction(inner):
                parts += self._carried(inner)
            else:  # a partial of a partial, of a method, of a callable instance
                parts.append(("\0calls", self.function(inner)))
            return tuple(parts)
        # The object a method is bound to is an argument of the call
        # (``Model(2).fit`` and ``Model(3).fit`` are different calls), and so
        # is the state of a callable instance; a module is not.
        owner = getattr(func, "__self__", None)
        if owner is None and not (inspect.isfunction(func) or inspect.isbuiltin(func) or inspect.isclass(func)):
            owner = func
        parts = [_FUNC, info.identity]
        if owner is not None and not inspect.ismodule(owner):
            parts.append(self.value(owner))
        code_owner = func.__func__ if inspect.ismethod(func) else func
        if inspect.isfunction(code_owner):
            parts += self._carried(code_owner)
        return tuple(parts)

    def _carried(self, func: types.FunctionType) -> list[Any]:
        """What a function object carries besides its code, encoded like
        arguments: its defaults and its closure cells (the values captured
        from the enclosing function when it was made)."""
        extra: list[Any] = []
        if func.__defaults__:
            extra.append(("\0defaults", self.value(func.__defaults__)))
        if func.__kwdefaults__:
            extra.append(("\0kwdefaults", self.value(func.__kwdefaults__)))
        if func.__closure__:
            cells: list[Any] = []
            for cell in func.__closure__:
                try:
                    contents = cell.cell_contents
                except ValueError:  # not assigned yet
                    cells.append(("\0empty",))
                    continue
                cells.append(self.value(contents))
            extra.append(("\0closure", cells))
        return extra

    def _other(self, value: Any) -> Any:
        if self._literal:
            return self._object(value)  # inside an object: the outermost one falls back
        self._literal += 1
        try:
            return self._object(value)
        except Exception:
            pass  # not reducible as pickle would: its pickle, as before
        finally:
            self._literal -= 1
        try:
            return (_OBJ, pickle.dumps(value, protocol=5))
        except RecursionError:
            raise  # nested too deeply: add_task says so
        except Exception:
            name = _qualified(type(value))
            LOGGER.warning(
                "an argument of type %s cannot be pickled, so only its type counts when "
                "deciding whether the task's inputs changed", name,
            )
            return (_TYPE, name)

    def _object(self, value: Any) -> Any:
        key = id(value)
        depth = self._active.get(key)
        if depth is not None:
            return (_REF, len(self._active) - depth)
        self._active[key] = len(self._active)
        try:
            return self._reduced(value)
        finally:
            del self._active[key]

    def _reduced(self, value: Any) -> Any:
        """``value`` as pickle would save it, canonically: its class, the
        callable and arguments that rebuild it, its state, its items."""
        kind = type(value)
        name = _qualified(kind)
        if isinstance(value, (set, frozenset)):
            # A set subclass reduces to a list in hash order: sort it.
            state = getattr(value, "__dict__", None)
            return (_OBJ, name, self._container(frozenset, value), self.value(state or None))
        reducer = copyreg.dispatch_table.get(kind)
        reduced = reducer(value) if reducer is not None else value.__reduce_ex__(4)
        if isinstance(reduced, str):
            return (_OBJ, name, (_GLOBAL, reduced))
        if not isinstance(reduced, tuple) or not 2 <= len(reduced) <= 6:
            raise TypeError(f"{name}.__reduce_ex__ returned {type(reduced).__name__}")
        rebuild, args, state, items, pairs = (*reduced, None, None, None)[:5]
        parts = [_OBJ, name, self._callable_name(rebuild), self.value(args)]
        if state is not None:
            parts.append(("\0state", self.value(state)))
        if items is not None:
            parts.append(("\0items", [self.value(item) for item in items]))
        if pairs is not None:
            encoded = [(self.value(k), self.value(v)) for k, v in pairs]
            if not isinstance(value, collections.OrderedDict):  # (whose order counts)
                encoded.sort(key=lambda pair: _marshal(pair[0]))
            parts.append(("\0pairs", encoded))
        return tuple(parts)

    def _callable_name(self, rebuild: Any) -> Any:
        """The callable of a reduction, by name as pickle saves it (its source
        is the library's, not the user's)."""
        owner = getattr(rebuild, "__self__", None)
        if owner is not None and not isinstance(owner, types.ModuleType):
            return (_GLOBAL, _qualified(rebuild), self.value(owner))
        return (_GLOBAL, _qualified(rebuild))


# How _Canonical.value encodes a value of each of these exact types (not their
# subclasses: a namedtuple or an OrderedDict counts as an object). Plain values
# (_ATOMS) stand for themselves; other types go to _Canonical._inexact. A
# subclass of _Canonical changes how paths are encoded (_path), not this table.
_EXACT: dict[type, Callable[[_Canonical, Any], Any]] = {
    str: _Canonical._string,
    tuple: _Canonical._sequence,
    list: _Canonical._sequence,
    dict: _Canonical._mapping,
    set: _Canonical._tracked,
    frozenset: _Canonical._tracked,
}


@frozen
class Identity:
    """A task's identity.

    Attributes:
        key: hex xxh3-128 of function and arguments, targets as placeholders.
            Equal keys are duplicate tasks within one graph.
        record_key: ``key`` plus the sorted target paths: the task's row in
            the ledger. Two tasks with equal ``key`` and disjoint targets are
            different records.
        function: the function's name and source hash.
        candidate_paths: normalised path arguments that are not targets (the
            files that may be inputs, decided when the task is ready).
    """

    key: str
    record_key: str
    function: FunctionInfo
    candidate_paths: tuple[str, ...]


def task_identity(
    func: Callable[..., Any],
    args: Iterable[Any],
    kwargs: dict[str, Any],
    targets: tuple[str, ...],
) -> Identity:
    """Compute the identity of ``func(*args, **kwargs)`` writing ``targets``.

    ``targets`` must already be normalised and sorted.

    Raises:
        SelfReferenceError: if an argument contains itself.
    """
    canonical = _Canonical(frozenset(targets))
    structure = (canonical.function(func), canonical.value(tuple(args)), canonical.value(kwargs))
    key = xxhash.xxh3_128_hexdigest(_marshal(structure))
    if targets:
        record = xxhash.xxh3_128(key.encode())
        for target in targets:
            record.update(b"\0" + target.encode("utf-8", "surrogatepass"))
        record_key = record.hexdigest()
    else:
        record_key = xxhash.xxh3_128_hexdigest(key.encode())
    info = function_info(func)
    return Identity(key, record_key, info, tuple(canonical.paths))


def describe_arguments(args: Iterable[Any], kwargs: dict[str, Any]) -> str:
    """A short readable rendering of a call's arguments, for the ledger."""
    parts = [_ARG_REPR.repr(arg) for arg in args]
    parts.extend(f"{name}={_ARG_REPR.repr(value)}" for name, value in sorted(kwargs.items()))
    return arguments_text(parts)


def arguments_text(parts: list[str]) -> str:
    """The readable arguments from each argument's rendering (``name=value`` for a keyword), cut to 2,000 characters."""
    text = ", ".join(parts)
    return text if len(text) <= 2000 else text[:1997] + "..."


def input_files(
    candidate_paths: Iterable[str], ignore: frozenset[str], ignore_directories: bool
) -> dict[str, FileStat]:
    """The candidate paths that exist now and count as inputs, in order, with their stats."""
    found: dict[str, FileStat] = {}
    for path in candidate_paths:
        if path in ignore:
            continue
        st = file_stat(path)
        if st is None or (st.is_dir and ignore_directories):
            continue
        found[path] = st
    return found


# -- the portable identity, for the shared cache ------------------------------------------------

_PORTABLE_VERSION = "taskgraph portable identity v1"
_INPUT = "\0input"
_PLACED = "\0placed"


def _relative(norm: str, root: str) -> str:
    """``norm`` relative to ``root``, with ``/`` separators (absolute when it
    has no relative spelling, on another Windows drive)."""
    try:
        return os.path.relpath(norm, root).replace(os.sep, "/")
    except ValueError:
        return norm


class _Portable(_Canonical):
    """The canonical encoding with no absolute path in it: input files become
    numbered slots (their content digests are added by the job), targets
    numbered placeholders in the order the arguments name them, and any other
    path its spelling relative to the workspace."""

    def __init__(self, targets: frozenset[str], inputs: frozenset[str], root: str) -> None:
        super().__init__(targets)
        self.inputs = inputs
        self.root = root
        self.slots: dict[str, int] = {}
        self.target_slots: dict[str, int] = {}

    def _path(self, norm: str) -> Any:
        if norm in self.targets:
            return ("\0target", self.target_slots.setdefault(norm, len(self.target_slots)))
        if norm in self.inputs:
            return (_INPUT, self.slots.setdefault(norm, len(self.slots)))
        return (_PLACED, _relative(norm, self.root))


@frozen
class PortableIdentity:
    """A task's identity without its workspace's location: the first half of
    its cache key, made before its input files are read.

    Attributes:
        template: hex xxh3-128 of the function and the arguments, with input
            files as numbered slots, targets as numbered placeholders and
            other paths relative to the workspace.
        inputs: the input files in slot order; the cache key is the template
            followed by their content digests in this order.
        labels: (target path, label) for each target: ``'arg N'`` for the
            Nth target the arguments name, ``'path P'`` (P relative to the
            workspace) for a target the arguments do not name.
    """

    template: str
    inputs: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]


def portable_identity(
    func: Callable[..., Any],
    args: Iterable[Any],
    kwargs: dict[str, Any],
    targets: tuple[str, ...],
    inputs: tuple[str, ...],
    root: str,
) -> PortableIdentity:
    """The identity of ``func(*args, **kwargs)`` as the shared cache sees it:
    the same in any workspace that makes the same call on files of the same
    contents. ``targets`` and ``inputs`` are normalised paths; ``root`` is the
    normalised workspace.

    Raises:
        SelfReferenceError: if an argument contains itself.
    """
    canonical = _Portable(frozenset(targets), frozenset(inputs), root)
    structure: list[Any] = [
        _PORTABLE_VERSION, canonical.function(func), canonical.value(tuple(args)), canonical.value(kwargs),
    ]
    # Inputs the arguments name without a separator ("a.tif") stay as written
    # in the structure; their contents follow the named slots, in argument order.
    slots = canonical.slots
    for path in (*canonical.paths, *inputs):
        if path in canonical.inputs and path not in slots:
            slots[path] = len(slots)
    unnamed = sorted(_relative(path, root) for path in targets if path not in canonical.target_slots)
    structure += [len(slots), unnamed]
    labels = tuple(
        (path, f"arg {canonical.target_slots[path]}" if path in canonical.target_slots
         else f"path {_relative(path, root)}")
        for path in targets
    )
    return PortableIdentity(xxhash.xxh3_128_hexdigest(_marshal(structure)), tuple(slots), labels)
