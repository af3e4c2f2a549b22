"""Task identity is canonical: same call, same key; different call, different key."""

import collections
import functools
import gc
import os
import weakref

import identity_funcs as f
from hypothesis import given, settings
from hypothesis import strategies as st

from taskgraph._identity import SelfReferenceError, function_info, task_identity


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


# -- what a function carries, and objects -------------------------------------------------

def test_two_lambdas_on_one_line_are_two_functions():
    inc, neg = f.OPS["inc"], f.OPS["neg"]
    assert key(function=inc) != key(function=neg)
    assert key(inc) != key(neg)  # passed as arguments too
    assert function_info(inc).source_hash != function_info(neg).source_hash
    outer = lambda x: lambda y: x + y  # noqa: E731
    assert function_info(outer).source_hash != function_info(outer(1)).source_hash


def test_defaults_kwdefaults_and_closure_cells_count_like_arguments():
    assert key(function=f.FS[0]) != key(function=f.FS[1])
    assert key(function=f.KW[0]) != key(function=f.KW[1])
    assert key(function=f.make(1)) != key(function=f.make(9))
    assert key(function=f.make(1)) == key(function=f.make(1))  # equal cells, one call
    assert key(f.make([1, 2])) != key(f.make([1, 3]))


def test_a_partial_of_a_partial_or_of_a_method_counts_all_it_is_bound_to():
    class Model:
        def __init__(self, n):
            self.n = n

        def fit(self, x):
            return x * self.n

    inner = functools.partial(func, 1)
    assert key(function=functools.partial(inner, 2)) != key(function=functools.partial(functools.partial(func, 3), 2))
    assert key(function=functools.partial(Model(2).fit)) != key(function=functools.partial(Model(3).fit))


def test_a_recursive_closure_and_an_object_with_parent_links_have_keys():
    def outer():
        def walk(n):
            return 0 if n == 0 else walk(n - 1)

        return walk

    assert key(function=outer()) == key(function=outer())

    class Node:
        def __init__(self, label, parent=None):
            self.label, self.parent, self.children = label, parent, []
            if parent is not None:
                parent.children.append(self)

    def tree(label):
        root = Node("root")
        Node(label, root)
        return root

    assert key(tree("a")) == key(tree("a")) != key(tree("b"))


def test_objects_count_by_value_with_sets_and_dicts_ordered():
    many = {f"s{i}" for i in range(100)}
    small = frozenset({"s1", "s2", "s3"})
    shrunk = frozenset(many - {f"s{i}" for i in range(100) if i not in (1, 2, 3)})  # another table size
    assert key(f.Settings(small, {"a": 1, "b": 2})) == key(f.Settings(shrunk, {"b": 2, "a": 1}))
    assert key(f.Settings(small, {"a": 1})) != key(f.Settings(small, {"a": 2}))
    # An OrderedDict's order is part of its value; a Counter's is not.
    assert key(collections.OrderedDict(a=1, b=2)) != key(collections.OrderedDict(b=2, a=1))
    assert key(collections.Counter("ab")) == key(collections.Counter("ba"))


def test_strings_with_a_url_scheme_are_not_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url in ("http://example.com//v1", "s3://bucket//key", "gs://b/k", "file:///tmp//x", "https://h/a/../b"):
        identity = task_identity(func, (url,), {}, ())
        assert identity.candidate_paths == ()
    assert key("http://example.com//v1") != key("http://example.com/v1")
    assert key("https://h/a/../b") != key("https://h/b")
    assert key("data//v1") == key("data/v1")  # a local path is still normalised


def test_the_function_cache_keeps_no_partial_or_bound_object_alive():
    class Big:
        def method(self, x):
            return x

    bound, argument = Big(), Big()
    argument.data = bytearray(1 << 20)
    refs = [weakref.ref(bound), weakref.ref(argument)]
    key(function=functools.partial(func, argument))
    key(function=bound.method)
    del bound, argument
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
