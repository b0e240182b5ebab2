"""Task functions of the benchmarks (a module of their own, importable by workers)."""
import os
import time


def inc(x):
    return x + 1


def noop(x=None):
    return x


def length(buffer):
    return len(buffer)


def make_bytes(n):
    return b"\x01" * n


def make_array(n):
    import numpy
    return numpy.ones(n // 8)


def spin(n):
    total = 0
    for i in range(n):
        total += i
    return total


def announce(path):
    """Tell the benchmark our pid, then block until killed."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(120)


def nap(seconds):
    time.sleep(seconds)
    return seconds
