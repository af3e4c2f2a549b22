"""Module-level stage and work functions for the sequencer and topology tests
(importable by worker processes)."""

import os
import random
import time

import numpy as np

WAIT_S = 60  # how long a stage waits for a file the test creates, at most


def log(directory, line):
    """Append ``line`` to ``directory/log.txt`` (one write: atomic between processes)."""
    with open(os.path.join(directory, "log.txt"), "a") as stream:
        stream.write(f"{line}\n")


def read_log(directory):
    path = os.path.join(directory, "log.txt")
    return open(path).read().split("\n")[:-1] if os.path.exists(path) else []


def wait_for(path):
    deadline = time.monotonic() + WAIT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {WAIT_S} s")
        time.sleep(0.01)


# -- eumap's documented example (without its sleeps) ------------------------------------

def rnd_data(const, size):
    data = np.random.rand(size, size, size)
    return (const, data)


def max_value(const, data):
    return np.max(data + const)


# -- sequencer stages ----------------------------------------------------------------------

def jitter(index, seed):
    """Sleep a random 0-30 ms and pass the index on."""
    time.sleep(random.Random(seed * 1000 + index).random() * 0.03)
    return (index, index * 10)


def add(index, value):
    time.sleep(random.Random(index).random() * 0.03)
    return value + index


def after_next(directory, index, last):
    """Finish only after item ``index + 1`` has: items finish in reverse order."""
    if index < last:
        wait_for(os.path.join(directory, f"done-{index + 1}"))
    open(os.path.join(directory, f"done-{index}"), "w").close()
    return index


def start_logged(directory, index):
    log(directory, f"start {index}")
    return (directory, index)


def fail_on(directory, index, bad=(3,)):
    if index in bad:
        raise ValueError(f"item {index} is bad")
    return index * 2


def sleep_or_fail(directory, index):
    """Item 0 sleeps long (it must be killed), item 1 fails at once."""
    if index == 0:
        open(os.path.join(directory, "sleeper-started"), "w").close()
        time.sleep(WAIT_S)
    wait_for(os.path.join(directory, "sleeper-started"))
    raise RuntimeError("item 1 fails")


def load(directory, index, megabytes):
    """Allocate ``megabytes`` MiB (touched, so resident) and pass them on."""
    log(directory, f"load {index}")
    return (directory, index, b"\x01" * (megabytes << 20))


def consume(directory, index, data):
    """Hold the data until the test creates ``release-<index>``."""
    wait_for(os.path.join(directory, f"release-{index}"))
    return len(data)


# -- topology works ------------------------------------------------------------------------

def fill_names(input_queue, output_queue):
    for index in range(10):
        output_queue[f"im{index:02d}"] = index


def square_or_fail(value):
    if value in (3, 7):
        raise ValueError(f"value {value} is deliberately bad")
    return value * value


def square_logged(args):
    directory, value = args
    log(directory, f"square {value}")
    return value * value


def describe(key_value):
    key, value = key_value
    return f"{key}={value}"


def slow_copy(value):
    time.sleep(0.01)
    return value


def after_next_start(directory, index):
    """Item 0 returns only once stage 1 has started item 1 (only a pipeline can)."""
    deadline = time.monotonic() + WAIT_S
    while index == 0 and "start 1" not in read_log(directory):
        if time.monotonic() > deadline:
            raise TimeoutError("stage 1 never started item 1 while item 0 was in stage 2")
        time.sleep(0.01)
    return index


def fill_logged(directory):
    """A one-shot filler for ``directory``'s items: ``im00..im09 -> (directory, i)``."""

    def fill(input_queue, output_queue):
        for index in range(10):
            output_queue[f"im{index:02d}"] = (directory, index)

    return fill


def square_logged_or_fail(args):
    directory, value = args
    log(directory, f"square {value}")
    if value in (3, 7):
        raise ValueError(f"value {value} is deliberately bad")
    return value * value


def fill_names_and_paths(input_queue, output_queues):
    names, paths = output_queues
    for index in range(6):
        names[f"k{index}"] = f"name{index}"
    for index in reversed(range(6)):  # the other queue arrives in another order
        paths[f"k{index}"] = index


def read_value(value):
    time.sleep(0.005)
    return np.full(3, value)


def pair(input_queues, output_queue):
    names, arrays = input_queues
    for key in [key for key in names if key in arrays]:
        output_queue[key] = (names.pop(key), arrays.pop(key))


def combine(name_and_array):
    name, array = name_and_array
    return f"{name}:{int(array.sum())}"


def sleep_logged(directory, index):
    log(directory, f"pid {os.getpid()}")
    time.sleep(WAIT_S)


def die_on_one(index):
    if index == 1:
        os.kill(os.getpid(), 9)
    return index


def fail_on_twice(value):
    """Passes 0 on as 1; fails on 1 (so it fails in its second use)."""
    if value == 1:
        raise ValueError("second time")
    return value + 1


def broken_join(input_queue, output_queue):
    raise KeyError("no partner")


def make_lock(value):
    """A result that cannot be pickled."""
    import threading

    return (value, threading.Lock())


def fill_keys(input_queue, output_queue):
    for key in ("a/1", "a_1", "a 1"):
        output_queue[key] = key


def always_fail(value):
    raise ValueError(f"no good: {value}")


def nap(seconds):
    time.sleep(seconds)
    return seconds


def fail_if_short(seconds):
    if seconds < 0.05:
        raise ValueError(f"too short: {seconds}")
    return seconds
