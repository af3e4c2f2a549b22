"""Task identity is canonical: same call, same key; different call, different key."""

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from taskgraph._identity import SelfReferenceError, task_identity


def func(*args, **kwargs):
    return args, kwargs


def other(*args, **kwargs):
    return args, kwargs


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
                    st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner),
    st.dictionaries(st.text(max_size=5), inner, max_size=4),
    st.frozensets(st.integers(), max_size=4)), max_leaves=12)


def key(*args, targets=(), function=func, **kwargs):
    return task_identity(function, args, kwargs, tuple(sorted(targets))).key


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), values, max_size=6))
def test_dict_order_does_not_matter(mapping):
    reordered = dict(reversed(list(mapping.items())))
    assert key(mapping) == key(reordered)
    assert key(**{f"k{i}": v for i, v in enumerate(mapping.values())}) == key(
        **dict(reversed(list({f"k{i}": v for i, v in enumerate(mapping.values())}.items()))))


@settings(max_examples=200, deadline=None)
@given(st.sets(st.one_of(st.integers(), st.text(max_size=6)), max_size=8))
def test_set_order_does_not_matter(members):
    assert key(set(members)) == key(set(reversed(list(members))))
    assert key(frozenset(members)) == key(frozenset(reversed(list(members))))


@settings(max_examples=200, deadline=None)
@given(values, values)
def test_different_arguments_give_different_keys(a, b):
    # Values that print differently are different calls, even when they
    # compare equal across types (1 and 1.0, True and 1, [1] and (1,)).
    if repr(a) != repr(b) and not (a == b and type(a) is type(b)):
        assert key(a) != key(b)


def test_lists_tuples_and_functions_are_told_apart():
    assert key([1, 2]) != key((1, 2))
    assert key(1) != key(True) and key(1) != key(1.0)
    assert key(func) != key(other)
    assert key(function=func) != key(function=other)


def test_paths_relative_absolute_and_targets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    absolute = os.path.join(str(tmp_path), "sub", "a.tif")
    assert key("sub/a.tif") == key(absolute) == key("./sub/../sub/a.tif")
    # Target names do not count, so the same call writing elsewhere is a duplicate.
    assert key("sub/out.tif", targets=[os.path.join(str(tmp_path), "sub", "out.tif")]) == key(
        "sub/other.tif", targets=[os.path.join(str(tmp_path), "sub", "other.tif")])
    identity = task_identity(func, ("sub/a.tif", "mean"), {}, ())
    assert absolute in identity.candidate_paths
    assert os.path.join(str(tmp_path), "mean") in identity.candidate_paths  # bare names may be inputs


def test_self_referencing_argument_is_refused():
    loop = []
    loop.append(loop)
    try:
        key(loop)
    except SelfReferenceError:
        pass
    else:
        raise AssertionError("a list containing itself must be refused")
