"""Module-level task functions for the engine tests (importable by worker processes)."""

import ctypes
import logging
import os
import signal
import time

import psutil


def _count(path):
    with open(os.path.join(os.path.dirname(path), "executions.log"), "a") as log:
        log.write(os.path.basename(path) + "\n")


def write(path, text):
    with open(path, "w") as stream:
        stream.write(str(text))
    _count(path)


def concat(out_path, *in_paths):
    with open(out_path, "w") as out:
        for path in in_paths:
            with open(path) as stream:
                out.write(stream.read())
    _count(out_path)
    return len(in_paths)


def fail():
    return 1 / 0


def sigkill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def segfault():
    ctypes.string_at(0)


def hard_exit():
    os._exit(3)


def sleep(seconds):
    time.sleep(seconds)


def niceness():
    return psutil.Process().nice()


def log_message(name, message):
    logging.getLogger(name).warning(message)


def append_order(path, label):
    with open(path, "a") as stream:
        stream.write(label + "\n")


def square(x):
    return x * x


def use_own_pool(n):
    """A task that starts processes of its own (workers must not be daemonic)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        return sum(pool.map(square, range(n)))


def unpicklable_result():
    import threading

    return threading.Lock()


def raise_unpicklable():
    import threading

    class Local(Exception):
        pass

    error = Local("cannot travel")
    error.lock = threading.Lock()
    raise error


def copy_bytes(out_path, in_path):
    with open(in_path, "rb") as source, open(out_path, "wb") as out:
        out.write(source.read())
    _count(out_path)


def slow_write(path, text, seconds):
    time.sleep(seconds)
    write(path, text)


def write_racy(path, size):
    """Write ``size`` random bytes with an mtime a whole second in the future: any fingerprint of
    it is racily clean, with the coarse file systems' window of two seconds."""
    with open(path, "wb") as stream:
        stream.write(os.urandom(size))
    future = (time.time_ns() // 1_000_000_000 + 60) * 1_000_000_000
    os.utime(path, ns=(future, future))
