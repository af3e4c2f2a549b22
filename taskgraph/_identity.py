"""A task's identity: which function, with which arguments, writing where.

Leaf module: imports only the standard library, xxhash and ``_fingerprint``.

Two tasks are the same task when they call the same function (same qualified
name, same source text) with the same arguments. Arguments are encoded
canonically, not by ``repr``: dicts and sets are ordered, paths are normalised
(``str`` and ``pathlib`` alike, relative and absolute alike), target paths are
replaced by a placeholder, and functions passed as arguments count by their
source. The encoding streams into an xxh3-128 hash.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import pickle
import reprlib
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import xxhash

from taskgraph._fingerprint import file_stat

LOGGER = logging.getLogger("taskgraph")

PATH_TYPES = (str, PurePath)
_MAX_PATH_LENGTH = 4096
_ARG_REPR = reprlib.Repr()
_ARG_REPR.maxstring = 200
_ARG_REPR.maxother = 200
_ARG_REPR.maxlist = 12
_ARG_REPR.maxdict = 12
_ARG_REPR.maxlevel = 4


def normalize_path(path: str | PurePath) -> str:
    """Absolute, normalised, case-normalised form of ``path``."""
    return os.path.normcase(os.path.abspath(os.fspath(path)))


def _path_candidate(text: str) -> bool:
    return bool(text) and len(text) <= _MAX_PATH_LENGTH and "\0" not in text


def _has_separator(text: str) -> bool:
    return "/" in text or os.sep in text


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """How a function counts in a task's identity."""

    name: str
    source_hash: str


_FUNCTION_CACHE: dict[Any, FunctionInfo] = {}


def function_info(func: Callable[..., Any]) -> FunctionInfo:
    """Qualified name and source hash of ``func`` (cached per function).

    A function without retrievable source (a builtin, a C extension, frozen
    code) counts by its name alone, as in natcap taskgraph.
    """
    try:
        return _FUNCTION_CACHE[func]
    except (KeyError, TypeError):
        pass
    target: Any = func
    if isinstance(func, functools.partial):
        target = func.func
    elif inspect.ismethod(func):
        target = func.__func__
    elif not (inspect.isfunction(target) or inspect.isbuiltin(target) or inspect.isclass(target)):
        target = type(func)  # a callable instance counts by its class
    module = getattr(target, "__module__", None) or ""
    qualname = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    name = f"{module}.{qualname}" if qualname else repr(type(target))
    try:
        source = inspect.getsource(target)
    except (OSError, TypeError):
        source = ""
    info = FunctionInfo(name, xxhash.xxh3_128_hexdigest(source.encode("utf-8")))
    try:
        _FUNCTION_CACHE[func] = info
    except TypeError:
        pass  # unhashable callable: not cached
    return info


class SelfReferenceError(ValueError):
    """An argument contains itself, so it has no finite encoding."""


class _Encoder:
    """Streams a canonical encoding of task arguments into a hash."""

    def __init__(self, targets: frozenset[str]) -> None:
        self.hasher = xxhash.xxh3_128()
        self.targets = targets
        # Normalised path strings seen in the arguments (candidate input files).
        self.paths: dict[str, None] = {}
        self._active: set[int] = set()

    def _tag(self, tag: bytes, payload: bytes = b"") -> None:
        self.hasher.update(tag + struct.pack("<Q", len(payload)) + payload)

    def _path(self, norm: str) -> None:
        if norm in self.targets:
            self._tag(b"T")  # a target: identity does not depend on its name
        else:
            self.paths[norm] = None
            self._tag(b"P", norm.encode("utf-8", "surrogatepass"))

    def encode(self, value: Any) -> None:
        if value is None or isinstance(value, bool):
            self._tag(b"c", repr(value).encode())
        elif isinstance(value, str):
            if not _path_candidate(value):
                self._tag(b"s", value.encode("utf-8", "surrogatepass"))
                return
            norm = normalize_path(value)
            if norm in self.targets or _has_separator(value):
                # Relative and absolute spellings of a path are one identity.
                self._path(norm)
            else:
                # A bare name ("mean", "a.tif") counts as written, so that
                # the identity does not depend on the working directory or
                # on whether the file exists yet; it may still be an input.
                self.paths[norm] = None
                self._tag(b"s", value.encode("utf-8", "surrogatepass"))
        elif isinstance(value, PurePath):
            self._path(normalize_path(value))
        elif isinstance(value, (int, float, complex)) and type(value) in (int, float, complex):
            self._tag(type(value).__name__[:1].encode(), repr(value).encode())
        elif isinstance(value, bytes):
            self._tag(b"b", value)
        elif isinstance(value, (list, tuple, dict, set, frozenset)):
            key = id(value)
            if key in self._active:
                raise SelfReferenceError(f"argument {_ARG_REPR.repr(value)} contains itself")
            self._active.add(key)
            try:
                self._container(value)
            finally:
                self._active.discard(key)
        elif callable(value) and (
            inspect.isfunction(value) or inspect.isbuiltin(value) or inspect.ismethod(value)
            or isinstance(value, functools.partial)
        ):
            self.function(value)
        else:
            self._other(value)

    def _container(self, value: Any) -> None:
        if isinstance(value, dict):
            items = []
            for key, item in value.items():
                sub = _Encoder(self.targets)
                sub.encode(key)
                items.append((sub.hasher.digest(), item, sub.paths))
            items.sort(key=lambda entry: entry[0])
            self._tag(b"d", struct.pack("<Q", len(items)))
            for key_digest, item, paths in items:
                self.paths.update(paths)
                self.hasher.update(key_digest)
                self.encode(item)
        elif isinstance(value, (set, frozenset)):
            digests = []
            for item in value:
                sub = _Encoder(self.targets)
                sub.encode(item)
                self.paths.update(sub.paths)
                digests.append(sub.hasher.digest())
            digests.sort()
            self._tag(b"S", b"".join(digests))
        else:
            self._tag(b"l" if isinstance(value, list) else b"t", struct.pack("<Q", len(value)))
            for item in value:
                self.encode(item)

    def function(self, func: Any) -> None:
        info = function_info(func)
        self._tag(b"f", f"{info.name}\0{info.source_hash}".encode())
        if isinstance(func, functools.partial):
            self.encode(func.args)
            self.encode(func.keywords)

    def _other(self, value: Any) -> None:
        try:
            payload = pickle.dumps(value, protocol=5)
        except Exception:
            name = f"{type(value).__module__}.{type(value).__qualname__}"
            LOGGER.warning(
                "an argument of type %s cannot be pickled, so only its type counts when "
                "deciding whether the task's inputs changed", name,
            )
            self._tag(b"u", name.encode())
            return
        self._tag(b"o", payload)


@dataclass(frozen=True, slots=True)
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
    encoder = _Encoder(frozenset(targets))
    encoder.function(func)
    encoder.encode(tuple(args))
    encoder.encode(kwargs)
    key = encoder.hasher.hexdigest()
    record = xxhash.xxh3_128(key.encode())
    for target in targets:
        record.update(b"\0" + target.encode("utf-8", "surrogatepass"))
    info = function_info(func)
    return Identity(key, record.hexdigest(), info, tuple(encoder.paths))


def describe_arguments(args: Iterable[Any], kwargs: dict[str, Any]) -> str:
    """A short readable rendering of a call's arguments, for the ledger."""
    parts = [_ARG_REPR.repr(arg) for arg in args]
    parts.extend(f"{name}={_ARG_REPR.repr(value)}" for name, value in sorted(kwargs.items()))
    text = ", ".join(parts)
    return text if len(text) <= 2000 else text[:1997] + "..."


def input_files(
    candidate_paths: Iterable[str], ignore: frozenset[str], ignore_directories: bool
) -> Iterator[str]:
    """The candidate paths that exist now and count as inputs."""
    for path in candidate_paths:
        if path in ignore:
            continue
        st = file_stat(path)
        if st is None or (st.is_dir and ignore_directories):
            continue
        yield path
