"""``@frozen``: the engine's small immutable value classes, as cheap to build as plain ones.

A ``dataclass(frozen=True)`` assigns each field in ``__init__`` through
``object.__setattr__``, which makes it about four times as slow to build as
the same class unfrozen (2 µs against 0.4 µs for eight fields). The engine
builds several such values per task on its hottest paths (a file's stat, a
cached digest, a fingerprint, a record read from the ledger, a decision), so
those classes are declared ``@frozen``: immutable to the type checker (mypy
reports any assignment to a field, as for ``frozen=True``), hashable and
compared by value as a frozen dataclass is, pickled (with every protocol)
as its class and the tuple of its fields, and built like an unfrozen
slotted one. What is given up is the run-time guard on assignment, which
the type check gives the engine's own code; so a class the user's code
handles (``Reason``) stays a ``frozen=True`` dataclass.

Leaf module: imports only the standard library.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

_T = TypeVar("_T")

def pickled_by_fields(cls: type[_T]) -> type[_T]:
    """Pickle instances of the dataclass ``cls`` as its constructor and the
    tuple of its fields: results cross a pipe per task, and a slotted
    dataclass's default state (a list built from ``fields()``, names and
    all) costs two and a half times as much, in time and bytes; and a
    slotted class without ``__getstate__`` cannot be pickled at all with
    protocols 0 and 1."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    several = operator.attrgetter(*names)
    get = several if len(names) > 1 else (lambda obj: (several(obj),))

    def __reduce__(self: _T) -> tuple[type[_T], tuple[Any, ...]]:
        return cls, get(self)

    cls.__reduce__ = __reduce__  # type: ignore[assignment,method-assign]
    return cls


if TYPE_CHECKING:
    from typing_extensions import dataclass_transform

    @dataclass_transform(frozen_default=True, eq_default=True)
    def frozen(cls: type[_T]) -> type[_T]:
        """A slotted dataclass that the type checker treats as frozen."""

else:

    def frozen(cls):
        """A slotted dataclass that the type checker treats as frozen, pickled by its fields."""
        # unsafe_hash: hashed by its fields, as a frozen dataclass is.
        return pickled_by_fields(dataclass(slots=True, unsafe_hash=True)(cls))


__all__ = ["frozen", "pickled_by_fields"]
