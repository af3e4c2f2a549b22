"""``@frozen`` and ``@record``: the engine's small value classes, cheap to build and to define.

Each is a slotted class of annotated fields (with defaults, or
``field(default_factory=...)``) given an ``__init__``, ``__repr__`` and
``__eq__`` as a dataclass would be, and pickled (with every protocol) as its
class and the tuple of its fields: results cross a pipe per task, and a
slotted dataclass's default state (a list built from ``fields()``, names and
all) costs two and a half times as much, in time and bytes, and cannot be
pickled at all with protocols 0 and 1.

- ``@frozen``: immutable to the type checker (mypy reports any assignment
  to a field, as for ``dataclass(frozen=True)``), hashed by its fields. A
  frozen dataclass assigns each field in ``__init__`` through
  ``object.__setattr__``, which makes it about four times as slow to build
  (2 µs against 0.4 µs for eight fields); the engine builds several such
  values per task on its hottest paths (a file's stat, a cached digest, a
  fingerprint, a record read from the ledger, a decision). What is given up
  is the run-time guard on assignment, which the type check gives the
  engine's own code; so a class the user's code handles (``Reason``) stays a
  ``frozen=True`` dataclass.
- ``@record``: mutable, compared by its fields, unhashable (a job, its result).

Neither is a dataclass: making one takes about a millisecond here (five
generated methods compiled one by one, and the class made twice for its
slots), and some twenty of them made at every start were a fifth of a run's
start-up. Here one ``exec`` makes a class's methods.

The class is made anew with its slots (as ``dataclass(slots=True)`` does), so
a method of it cannot use ``super()`` without arguments: none here does.

Leaf module: imports only the standard library.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

_T = TypeVar("_T")


class _Factory:
    """A field's default made anew for each instance (``field(default_factory=...)``)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


_NOTHING = object()  # no default, or (for a factory's field) no value given


def _field_names(cls: type) -> list[str]:
    if cls.__bases__ != (object,):
        raise TypeError(f"{cls.__qualname__}: a value class derives from no other class")
    # ("ClassVar[...]" as a string, or typing.ClassVar itself in a module
    # without ``from __future__ import annotations``.)
    return [name for name, kind in cls.__annotations__.items()
            if not str(kind).removeprefix("typing.").startswith("ClassVar")]


def _init_source(cls: type, names: list[str], namespace: dict[str, Any]) -> list[str]:
    """The source of ``__init__``, its defaults and factories put in ``namespace``."""
    params, body = [], []
    for name in names:
        default = cls.__dict__.get(name, _NOTHING)
        if isinstance(default, _Factory):
            namespace[f"_make_{name}"] = default.make
            params.append(f"{name}=_NOTHING")
            body.append(f"    self.{name} = _make_{name}() if {name} is _NOTHING else {name}")
            continue
        if default is not _NOTHING:
            namespace[f"_default_{name}"] = default
            params.append(f"{name}=_default_{name}")
        elif params and "=" in params[-1]:
            raise TypeError(f"{cls.__qualname__}: field {name!r} without a default follows one with a default")
        else:
            params.append(name)
        body.append(f"    self.{name} = {name}")
    return [f"def __init__(self, {', '.join(params)}):", *(body or ["    pass"])]


def _build(cls: type, hashable: bool) -> type:
    names = _field_names(cls)
    namespace: dict[str, Any] = {"_NOTHING": _NOTHING}
    init = _init_source(cls, names, namespace)
    fields = "".join(f"self.{name}," for name in names)
    others = "".join(f"other.{name}," for name in names)
    shown = ", ".join(f"{name}={{self.{name}!r}}" for name in names)
    source = "\n".join([
        *init,
        "def __repr__(self):",
        f"    return f'{{self.__class__.__qualname__}}({shown})'",
        "def __eq__(self, other):",
        f"    if other.__class__ is self.__class__:\n        return ({fields}) == ({others})",
        "    return NotImplemented",
        "def __hash__(self):",
        f"    return hash(({fields}))",
    ])
    exec(source, namespace)
    body_of_class = {key: value for key, value in cls.__dict__.items()
                     if key not in names and key not in ("__dict__", "__weakref__")}
    # A method the class defines itself is kept, as a dataclass keeps it.
    made = {"__init__", "__repr__", "__eq__", "__reduce__"} - set(cls.__dict__)
    for method in made & {"__init__", "__repr__", "__eq__"}:
        namespace[method].__qualname__ = f"{cls.__qualname__}.{method}"
        body_of_class[method] = namespace[method]
    if cls.__dict__.get("__hash__") is None:  # (None too where the class defines __eq__ alone)
        body_of_class["__hash__"] = namespace["__hash__"] if hashable else None
    body_of_class["__slots__"] = tuple(names)
    body_of_class["__match_args__"] = tuple(names)
    body_of_class["__qualname__"] = cls.__qualname__
    built = type(cls)(cls.__name__, cls.__bases__, body_of_class)
    several = operator.attrgetter(*names) if names else (lambda obj: ())
    get = several if len(names) != 1 else (lambda obj: (several(obj),))

    def __reduce__(self: Any) -> tuple[type, tuple[Any, ...]]:
        return built, get(self)

    if "__reduce__" in made:
        built.__reduce__ = __reduce__  # type: ignore[assignment,method-assign]
    return built


if TYPE_CHECKING:
    from typing_extensions import dataclass_transform

    def field(*, default_factory: Callable[[], _T]) -> _T:
        """A field whose default is made anew for each instance."""

    @dataclass_transform(frozen_default=True, eq_default=True, field_specifiers=(field,))
    def frozen(cls: type[_T]) -> type[_T]:
        """A slotted value class that the type checker treats as frozen, hashed by its fields."""

    @dataclass_transform(eq_default=True, field_specifiers=(field,))
    def record(cls: type[_T]) -> type[_T]:
        """A slotted mutable value class, compared by its fields."""

else:

    def field(*, default_factory):
        """A field whose default is made anew for each instance."""
        return _Factory(default_factory)

    def frozen(cls):
        """A slotted value class that the type checker treats as frozen, hashed by its fields."""
        return _build(cls, hashable=True)

    def record(cls):
        """A slotted mutable value class, compared by its fields."""
        return _build(cls, hashable=False)


__all__ = ["field", "frozen", "record"]
