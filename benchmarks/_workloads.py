"""Task functions for the benchmark drivers (importable by worker processes)."""


def trivial(i):
    return i


def write(path, i):
    with open(path, "w") as stream:
        stream.write(str(i))
