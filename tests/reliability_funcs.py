"""Task functions for the reliability tests (importable by worker processes)."""

import ctypes
import os
import resource
import signal
import subprocess
import sys
import time


def journal(path, line):
    """Append one line to a journal file, fsync'd (several processes may write it)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def write_journaled(out_path, journal_path, text, seconds=0.0, kill_pid=None):
    """Write a target, taking ``seconds``; journal the pid that ran it; then
    SIGKILL process ``kill_pid`` if given (the script's main process)."""
    if seconds:
        time.sleep(seconds)
    with open(out_path, "w") as stream:
        stream.write(str(text))
    journal(journal_path, f"{os.path.basename(out_path)} {os.getpid()}")
    if kill_pid is not None:
        kill_process(kill_pid)
    return text


def interrupt_self():
    """What Ctrl-C does to a task running in the caller's own process."""
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(10)


def kill_process(pid):
    """SIGKILL process ``pid`` and wait for the signal to land."""
    os.kill(pid, signal.SIGKILL)
    time.sleep(60)


def write_bytes(out_path, n_bytes):
    with open(out_path, "wb") as stream:
        stream.write(b"x" * n_bytes)
    return n_bytes


def big_result(n_bytes):
    return b"r" * n_bytes


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def exhaust_memory():
    """A real MemoryError: cap the address space, then allocate past it."""
    limit = 1 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return bytearray(2 * limit)


def abort():
    os.abort()


def report_pid_and_sleep(pid_file, seconds):
    with open(pid_file + ".tmp", "w") as stream:
        stream.write(str(os.getpid()))
    os.replace(pid_file + ".tmp", pid_file)
    time.sleep(seconds)


def start_grandchild_then_die(pid_file):
    """Start a long-lived process of its own, then die without cleaning up."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(pid_file + ".tmp", "w") as stream:
        stream.write(str(child.pid))
    os.replace(pid_file + ".tmp", pid_file)
    os.kill(os.getpid(), signal.SIGKILL)


def segfault():
    ctypes.string_at(0)


def identity(value):
    return value


def recursion_forever(depth=0):
    return recursion_forever(depth + 1)


class Canary:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def copy_file(src, dst):
    with open(src, "rb") as source, open(dst, "wb") as out:
        out.write(source.read())
    return os.path.basename(dst)


class UserError(Exception):
    """Raised by the tests' own hostile objects."""


class UnhashableCallable:
    """A callable whose __hash__ and __eq__ raise the user's own error."""

    def __init__(self, n=1):
        self.n = n

    def __call__(self, *args, **kwargs):
        return self.n

    def __hash__(self):
        raise UserError("no hash")

    def __eq__(self, other):
        raise UserError("no eq")


class BadBool:
    """An object whose truth value raises the user's own error."""

    def __bool__(self):
        raise UserError("no truth value")


def read_text(path):
    with open(path) as stream:
        return stream.read()
