"""Task functions for the shared-cache tests (importable by worker processes).

Each execution appends one line to the file named by ``$CACHE_FUNCS_JOURNAL``,
so a test can count which functions really ran.
"""

import os

JOURNAL_ENV = "CACHE_FUNCS_JOURNAL"


def journal(name):
    path = os.environ.get(JOURNAL_ENV)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{name} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def executions(path):
    """Names journaled so far, in order."""
    if not os.path.exists(path):
        return []
    with open(path) as stream:
        return [line.split()[0] for line in stream if line.strip()]


def write_text(path, text):
    with open(path, "w") as stream:
        stream.write(text)
    journal(f"write_text:{os.path.basename(path)}")


def upper(src, dst):
    with open(src) as stream, open(dst, "w") as out:
        out.write(stream.read().upper())
    journal(f"upper:{os.path.basename(dst)}")


def concat(dst, *srcs):
    with open(dst, "w") as out:
        for src in srcs:
            with open(src) as stream:
                out.write(stream.read())
    journal(f"concat:{os.path.basename(dst)}")


def count_chars(src):
    journal(f"count_chars:{os.path.basename(src)}")
    with open(src) as stream:
        return {"chars": len(stream.read())}


def split(src, first, second):
    with open(src) as stream:
        text = stream.read()
    half = len(text) // 2
    with open(first, "w") as out:
        out.write(text[:half])
    with open(second, "w") as out:
        out.write(text[half:])
    journal(f"split:{os.path.basename(first)}")


def write_named(folder, name, text):
    """Writes FOLDER/NAME: a target the arguments do not name as a path."""
    with open(os.path.join(folder, name), "w") as stream:
        stream.write(text)
    journal(f"write_named:{name}")


def make_dir(path):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "inside.txt"), "w") as stream:
        stream.write("inside")
    journal(f"make_dir:{os.path.basename(path)}")


def write_bytes(path, n_bytes):
    block = bytes(range(256)) * 4096
    with open(path, "wb") as stream:
        while n_bytes > 0:
            stream.write(block[:n_bytes])
            n_bytes -= len(block)
    journal(f"write_bytes:{os.path.basename(path)}")


def value(number):
    journal(f"value:{number}")
    return number * 2
