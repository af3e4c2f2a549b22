"""Task functions for the resource and boss tests (importable by spawned workers)."""

import os
import threading
import time

import psutil

#: Released by the tests that hold the first task of a thread-mode graph.
GATE = threading.Event()
ORDER: list[str] = []


def wait_for_gate(timeout=30.0):
    if not GATE.wait(timeout):
        raise TimeoutError("the test never opened the gate")


def note(name):
    ORDER.append(name)


def interval(directory, name, seconds):
    """Record when this call ran (ns since the epoch) in DIRECTORY/NAME."""
    started = time.time_ns()
    time.sleep(seconds)
    with open(os.path.join(directory, name), "w") as stream:
        stream.write(f"{started} {time.time_ns()}")


def affinity(index):
    return os.getpid(), sorted(psutil.Process().cpu_affinity())


def busy(seconds):
    """Spin the CPU for about ``seconds`` of wall time."""
    end = time.perf_counter() + seconds
    count = 0
    while time.perf_counter() < end:
        count += 1
    return count


def allocate(mebibytes):
    """Hold ``mebibytes`` of written (so resident) memory for a moment."""
    block = b"x" * (mebibytes * 2**20)
    time.sleep(0.05)
    return len(block)


def wait_for_file(path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


# -- boss workers -------------------------------------------------------------------------


def sleeper(sleeping_time, wakeup_sentence="Hello !"):
    """taylorism's Sleeper as a plain function."""
    time.sleep(sleeping_time)
    return f"{wakeup_sentence} Woke up after {sleeping_time} s sleep"


class Sleeper:
    """taylorism's Sleeper as a class with a ``_task`` method."""

    def __init__(self, sleeping_time, wakeup_sentence="Hello !", name=None):
        self.sleeping_time = sleeping_time
        self.wakeup_sentence = wakeup_sentence
        self.name = name

    def _task(self):
        time.sleep(self.sleeping_time)
        return f"{self.name}: {self.wakeup_sentence} Woke up after {self.sleeping_time} s sleep"


def fail_on(value, bad, directory=None):
    if value == bad:
        raise ValueError(f"cannot handle {value}")
    if directory is not None:
        wait_for_file(os.path.join(directory, "never"), timeout=20)
    return value


def wait_then(value, gate_file):
    wait_for_file(gate_file)
    return value * 10


def slice_sum(array, start, stop):
    return float(array[start:stop].sum())
