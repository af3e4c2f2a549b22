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


def _spin(clock, seconds):
    end = clock() + seconds
    count = 0
    while clock() < end:
        count += 1
    return count


def busy(seconds):
    """Spin the CPU for about ``seconds`` of wall time."""
    return _spin(time.perf_counter, seconds)


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


def fail_on(value, bad, marks):
    """Job 0 finishes at once; the bad job raises once job 0 has finished;
    the others wait (until they are killed)."""
    if value == bad:
        wait_for_file(os.path.join(marks, "0"))
        raise ValueError(f"cannot handle {value}")
    if value == 0:
        with open(os.path.join(marks, "0"), "w"):
            pass
        return "done 0"
    wait_for_file(os.path.join(marks, "never"), timeout=60)
    return f"done {value}"


def recorder(label, log, gate=None):
    """Append LABEL to LOG (after GATE exists, if given)."""
    if gate is not None:
        wait_for_file(gate)
    with open(log, "a") as stream:
        stream.write(label + "\n")
    return label


def slice_sum(array, start, stop):
    return float(array[start:stop].sum())


def burn_cpu(seconds):
    """Spin until this thread has used ``seconds`` of CPU time, however loaded the machine (and niced the worker)."""
    return _spin(time.thread_time, seconds)
