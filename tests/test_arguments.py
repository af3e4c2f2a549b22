"""What changed in a task's arguments: the reason names the argument, with
its old and new values shortened around the difference, in Task.reasons, the
log and the ledger (real runs, real ledgers)."""

import logging
import os
import subprocess
import sys
import textwrap

import history_funcs as h
import pytest
from ledgers import downgrade

import taskgraph


def run(ws, *args, name="step", dry_run=False, **kwargs):
    target = os.path.join(ws, "out.txt")
    with taskgraph.TaskGraph(str(ws), -1, dry_run=dry_run) as graph:
        return graph.add_task(h.write, args=(target, *args), kwargs=kwargs, target_path_list=[target],
                              task_name=name)


def stats(area, note="x" * 80):
    return {"catchment_1": {"area_km2": area, "cells": 701784, "note": note}, "catchment_2": {"area_km2": 1.5}}


def test_the_reason_names_the_argument_and_both_values(tmp_path):
    assert run(tmp_path, stats(631.6056)).reasons[0].code == "new_task"
    (reason,) = run(tmp_path, stats(655.2)).reasons
    assert reason.code == "arguments_changed"
    assert reason.argument == "args[1]['catchment_1']['area_km2']"
    assert (reason.old, reason.new) == ("631.6056", "655.2")
    assert reason.detail == "its arguments changed: args[1]['catchment_1']['area_km2']: 631.6056 -> 655.2"
    assert reason.as_dict()["argument"] == reason.argument


def test_long_values_are_shortened_around_the_first_difference(tmp_path):
    before = "a" * 300 + "OLD" + "z" * 300
    run(tmp_path, stats(1.0, note=before))
    (reason,) = run(tmp_path, stats(1.0, note=before.replace("OLD", "NEW"))).reasons
    assert reason.argument == "args[1]['catchment_1']['note']"
    assert len(reason.detail) < 200
    old_shown, new_shown = reason.detail.split(": ", 2)[2].split(" -> ")
    assert "OLD" in old_shown and "NEW" in new_shown
    assert old_shown.startswith("…a") and old_shown.endswith("z…")
    assert reason.old == repr(before)  # the whole value stays on the reason


def test_several_changes_added_and_removed_keywords_and_types(tmp_path):
    run(tmp_path, [1, 2, 3], factor=1)
    (reason,) = run(tmp_path, [1, 5, 3, 4], factor=2).reasons
    assert reason.detail == ("its arguments changed: args[1][1]: 2 -> 5 (and 2 more: args[1][3], "
                             "kwargs['factor'])")
    (reason,) = run(tmp_path, [1, 5, 3, 4]).reasons
    assert reason.detail == "its arguments changed: kwargs['factor'] is no longer passed (was 2)"
    (reason,) = run(tmp_path, [1, 5, 3, 4], scale=0.5).reasons
    assert reason.detail == "its arguments changed: kwargs['scale'] was not passed before (now 0.5)"
    (reason,) = run(tmp_path, (1, 5, 3, 4), scale=0.5).reasons
    assert reason.detail == "its arguments changed: args[1]: [1, 5, 3, 4] -> (1, 5, 3, 4)"
    run(tmp_path, {1, 2}, scale=0.5)
    (reason,) = run(tmp_path, {1, 3}, scale=0.5).reasons
    assert reason.argument == "args[1]" and "gained 3" in reason.detail and "lost 2" in reason.detail


def test_the_log_says_which_argument_changed(tmp_path, caplog):
    run(tmp_path, stats(631.6056))
    with caplog.at_level(logging.DEBUG, logger="taskgraph.Task"):
        run(tmp_path, stats(655.2))
    assert "task 'step' runs: its arguments changed: args[1]['catchment_1']['area_km2']: 631.6056 -> 655.2" \
        in caplog.text


def test_a_task_is_compared_with_an_earlier_record_not_with_a_sibling(tmp_path):
    def graph(values):
        with taskgraph.TaskGraph(str(tmp_path), -1) as tg:
            return [tg.add_task(h.write, args=(str(tmp_path / f"{v}.txt"), v), target_path_list=[
                str(tmp_path / f"{v}.txt")], task_name="write") for v in values]

    graph([1, 2])
    *_, new = graph([1, 2, 3])
    assert [reason.code for reason in new.reasons] == ["new_task"]


def test_a_record_of_an_older_ledger_is_compared_by_its_text(tmp_path):
    run(tmp_path, stats(631.6056))
    downgrade(os.path.join(tmp_path, taskgraph.LEDGER_FILENAME), 3)
    (reason,) = run(tmp_path, stats(655.2)).reasons
    assert reason.code == "arguments_changed" and reason.argument is None
    assert "631.6056" in reason.detail and "655.2" in reason.detail and len(reason.detail) < 200


MODULE = textwrap.dedent("""
    import os, sys
    import taskgraph

    def step(path, value):
        with open(path, "w") as stream:
            stream.write(repr(value))

    def build(ws, value, dry_run=False):
        target = os.path.join(ws, "out.txt")
        with taskgraph.TaskGraph(ws, -1, dry_run=dry_run) as graph:
            return graph.add_task(step, args=(target, value), target_path_list=[target], task_name="step")

    if __name__ == "__main__":
        print(build(sys.argv[1], int(sys.argv[2])).state)
""")


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_function_is_the_same_whether_its_script_runs_or_is_imported(tmp_path, monkeypatch, dry_run):
    (tmp_path / "pipeline_module.py").write_text(MODULE)
    ws = str(tmp_path / "ws")
    os.mkdir(ws)
    ran = subprocess.run([sys.executable, str(tmp_path / "pipeline_module.py"), ws, "1"], capture_output=True,
                         text=True, timeout=60)
    assert ran.stdout.strip() == "ran", ran.stderr
    monkeypatch.syspath_prepend(str(tmp_path))
    import pipeline_module

    assert pipeline_module.build(ws, 1, dry_run=dry_run).state == "skipped"
    task = pipeline_module.build(ws, 2, dry_run=dry_run)
    assert [(reason.code, reason.argument) for reason in task.reasons] == [("arguments_changed", "args[1]")]
    assert task.reasons[0].detail == "its arguments changed: args[1]: 1 -> 2"


# -- the tree and the readable text in one pass -------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from taskgraph._arguments import tree, tree_and_text  # noqa: E402
from taskgraph._identity import describe_arguments  # noqa: E402

_PLAIN = (st.text(max_size=260) | st.sampled_from(["/abs/path.tif", "rel/dir/file.txt", "a\\b", "x" * 198])
          | st.integers(min_value=-10**45, max_value=10**45) | st.floats(allow_nan=True) | st.booleans() | st.none())
_ANY = _PLAIN | st.lists(_PLAIN, max_size=3) | st.dictionaries(st.text(max_size=4), _PLAIN, max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ANY, max_size=5), st.dictionaries(st.text(min_size=1, max_size=8), _ANY, max_size=4))
def test_the_one_pass_rendering_is_the_tree_and_the_text(args, kwargs):
    """What a record stores of its call does not depend on which way it was built."""
    args = tuple(args)
    assert tree_and_text(args, kwargs) == (tree(args, kwargs), describe_arguments(args, kwargs))
