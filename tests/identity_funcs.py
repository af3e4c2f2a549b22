"""Functions and values for the identity tests, shaped as users write them:
lambdas that share a line, functions made in a loop or by a factory, and
values whose pickle depends on the hash seed."""

import dataclasses

OPS = {"inc": lambda x: x + 1, "neg": lambda x: -x}

FS = []
for _k in (1, 2):

    def scaled(x, k=_k):
        return x * k

    FS.append(scaled)

KW = []
for _k in (1, 2):

    def scaled_kw(x, *, k=_k):
        return x * k

    KW.append(scaled_kw)


def make(n):
    def add(x):
        return x + n

    return add


def apply(func, value):
    return func(value)


def identity(value):
    return value


@dataclasses.dataclass(frozen=True)
class Settings:
    names: frozenset
    options: dict


def settings(order):
    """Equal Settings whose dict was filled in another order."""
    options = {"a": 1, "b": [2, 3], "c": {"x", "y"}}
    if order == "reversed":
        options = dict(reversed(list(options.items())))
    return Settings(frozenset({"alpha", "beta", "gamma", "delta", "epsilon"}), options)
