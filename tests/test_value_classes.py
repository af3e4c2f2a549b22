"""The engine's value classes (``_frozen``): what the engine relies on of
them, as it relied on dataclasses before: construction with defaults and
fresh factories, equality and hashing by fields, a readable repr, slots, and
pickling with every protocol, also across a real worker process."""

from __future__ import annotations

import copy
import pickle

import pytest

import taskgraph
from taskgraph._fingerprint import take
from taskgraph._frozen import field, frozen, record
from taskgraph._job import JobResult


@frozen
class Point:
    x: int
    label: str = "p"
    tags: tuple[str, ...] = ()


@record
class Bag:
    name: str
    items: dict[str, int] = field(default_factory=dict)


def test_frozen_values_are_built_compared_hashed_and_shown_by_their_fields():
    point = Point(1)
    assert point == Point(1, "p", ()) == Point(x=1, tags=())
    assert point != Point(1, "q") and point != (1, "p", ())
    assert hash(point) == hash(Point(1)) and len({point, Point(1), Point(2)}) == 2
    assert repr(point) == "Point(x=1, label='p', tags=())"
    assert Point.__match_args__ == ("x", "label", "tags")
    with pytest.raises(AttributeError):
        point.other = 1  # slotted: no instance dictionary
    with pytest.raises(TypeError):
        Point()  # x has no default


def test_records_are_mutable_unhashable_and_get_a_fresh_default_each():
    first, second = Bag("a"), Bag("a")
    first.items["k"] = 1
    assert second.items == {} and first != second
    assert Bag("a", {"k": 1}) == first
    with pytest.raises(TypeError):
        hash(first)


def test_methods_a_class_defines_are_kept():
    @frozen
    class Shown:
        a: int

        def __repr__(self):
            return f"<{self.a}>"

    assert repr(Shown(1)) == "<1>" and Shown(1) == Shown(1) and hash(Shown(1)) == hash(Shown(1))


def test_a_field_without_a_default_after_one_with_is_refused():
    with pytest.raises(TypeError, match="without a default follows"):
        @frozen
        class Wrong:
            a: int = 0
            b: int


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_value_classes_pickle_and_copy_with_every_protocol(protocol, tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("x")
    values = [Point(3, "z", ("a",)), Bag("b", {"k": 2}), take(str(target), "sizetimestamp"),
              JobResult(7, result=[1], targets={str(target): take(str(target), "sizetimestamp")})]
    for value in values:
        again = pickle.loads(pickle.dumps(value, protocol))
        assert type(again) is type(value) and again == value
        assert copy.deepcopy(value) == value


def test_results_cross_a_real_worker_process(tmp_path):
    # JobResult and the fingerprints in it travel back over the pool's pipe.
    target = str(tmp_path / "out.txt")
    with taskgraph.TaskGraph(str(tmp_path / "ws"), 1) as graph:
        task = graph.add_task(_write, args=(target,), target_path_list=[target], store_result=True)
    assert task.get() == 2
    assert (tmp_path / "out.txt").read_text() == "xy"


def _write(path):
    with open(path, "w") as stream:
        return stream.write("xy")
