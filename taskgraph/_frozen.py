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
from typing import TYPE_CHECKING, TypeVar

_T = TypeVar("_T")

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform

    @dataclass_transform(frozen_default=True, eq_default=True)
    def frozen(cls: type[_T]) -> type[_T]:
        """A slotted dataclass that the type checker treats as frozen."""

else:

    def frozen(cls):
        """A slotted dataclass that the type checker treats as frozen."""
        # unsafe_hash: hashed by its fields, as a frozen dataclass is.
        made = dataclass(slots=True, unsafe_hash=True)(cls)
        get = operator.attrgetter(*(field.name for field in fields(made)))
        several = len(fields(made)) > 1

        def __reduce__(self):
            # A slotted class without __getstate__ cannot be pickled with protocols 0 and 1.
            return made, get(self) if several else (get(self),)

        made.__reduce__ = __reduce__
        return made


__all__ = ["frozen"]
