"""A skip is only worth having if it is never wrong: each case is run as a user
would run it, one fresh interpreter per run, the ledger kept between runs.

The wrong skips (two calls taken for one, the second returning the first's
result) must run; the needless reruns (equal values taken for different ones
in a new interpreter) must skip, also across different hash seeds."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))

SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    import identity_funcs as f
    import taskgraph

    CASES = {{
        "lambda": lambda v: dict(func=f.OPS[v], args=(5,)),
        "lambda_argument": lambda v: dict(func=f.apply, args=(f.OPS[v], 5)),
        "defaults": lambda v: dict(func=f.FS[int(v)], args=(5,)),
        "kwdefaults": lambda v: dict(func=f.KW[int(v)], args=(5,)),
        "closure": lambda v: dict(func=f.make(int(v)), args=(5,)),
        "closure_argument": lambda v: dict(func=f.apply, args=(f.make(int(v)), 5)),
        "url": lambda v: dict(func=f.identity, args=(v,)),
        "settings": lambda v: dict(func=f.identity, args=(f.settings(v),)),
    }}

    if __name__ == "__main__":
        workspace, case, variant = sys.argv[1:4]
        call = CASES[case](variant)
        with taskgraph.TaskGraph(workspace, -1) as graph:
            task = graph.add_task(store_result=True, task_name=case, **call)
        result = task.get()
        # "right": the result (stored, when skipped) is what this very call returns.
        print(json.dumps({{"state": task.state, "result": repr(result),
                          "right": result == call["func"](*call["args"]),
                          "reasons": [reason.code for reason in task.reasons]}}))
""")


@pytest.fixture
def run(tmp_path):
    script = tmp_path / "pipeline.py"
    script.write_text(SCRIPT.format(tests=TESTS))
    workspace = tmp_path / "ws"

    def run(case, variant, seed="0"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, str(script), str(workspace), case, variant],
                              capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    return run


@pytest.mark.parametrize("case,first,second,expected", [
    ("lambda", "inc", "neg", "-5"),  # two lambdas on one source line
    ("lambda_argument", "inc", "neg", "-5"),
    ("defaults", "0", "1", "10"),  # functions made in a loop, k=k
    ("kwdefaults", "0", "1", "10"),
    ("closure", "1", "9", "14"),  # make(1), then make(9)
    ("closure_argument", "1", "9", "14"),
    ("url", "http://example.com//v1", "http://example.com/v1", "'http://example.com/v1'"),
])
def test_a_different_call_is_not_skipped_as_the_first(run, case, first, second, expected):
    assert run(case, first)["state"] == "ran"
    again = run(case, second)
    assert again["state"] == "ran" and again["result"] == expected and again["right"], again
    assert run(case, second)["state"] == "skipped"
    back = run(case, first)
    assert back["state"] == "skipped" and back["right"], back  # each call keeps its own record


def test_equal_objects_skip_in_interpreters_with_other_hash_seeds(run):
    """A frozen dataclass holding a frozenset of strings and a dict (filled in
    either order, holding a set): equal values, so one task, whatever the
    interpreter's hash seed."""
    first = run("settings", "forward", seed="1")
    assert first["state"] == "ran"
    for seed, order in (("2", "forward"), ("3", "reversed"), ("4", "forward"), ("random", "reversed")):
        again = run("settings", order, seed=seed)
        assert again["state"] == "skipped" and again["right"], (seed, order, again)


KEY_SCRIPT = textwrap.dedent("""
    import collections, dataclasses, fractions, functools, sys, types
    sys.path.insert(0, {tests!r})
    import identity_funcs as f
    from taskgraph._identity import task_identity

    class Plain:
        def __init__(self):
            self.tags = {{"x", "y", "z", "w"}}
            self.nested = {{"k": frozenset({{"p", "q", "r"}})}}

    values = [
        f.settings("forward"), Plain(), {{"s": {{"a", "b", "c"}}}}, frozenset({{"u", "v", "w", "t"}}),
        collections.Counter("abracadabra"), collections.defaultdict(set, {{"k": {{"m", "n"}}}}),
        types.SimpleNamespace(a={{"i", "j"}}, b=1), fractions.Fraction(1, 3),
        functools.partial(f.identity, {{"e", "f", "g"}}), f.make(frozenset({{"h", "i"}})),
    ]
    for value in values:
        print(task_identity(f.identity, (value,), {{}}, ()).key)
""")


def test_keys_of_equal_values_do_not_depend_on_the_hash_seed(tmp_path):
    """Objects identified by what pickle saves of them, sets inside them
    included, give one key in every interpreter."""
    script = tmp_path / "keys.py"
    script.write_text(KEY_SCRIPT.format(tests=TESTS))
    outputs = set()
    for seed in ("0", "1", "2", "12345"):
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONHASHSEED": seed})
        assert done.returncode == 0, done.stderr
        outputs.add(done.stdout)
    assert len(outputs) == 1
    keys = outputs.pop().split()
    assert len(keys) == len(set(keys)) == 10
