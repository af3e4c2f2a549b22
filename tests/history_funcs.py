"""Task functions for the tests of runs, history and failures (importable by worker processes)."""

import os
import time


def write(path, value, **options):
    with open(path, "w") as stream:
        stream.write(repr((value, options)))


def wait_for(path, timeout):
    """Wait until ``path`` exists (at most ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def parse(text):
    return int(text)


def nested(values):
    return helper(values)


def helper(values):
    return values["missing"]
