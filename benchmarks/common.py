"""Timing and reporting shared by the bench_*.py scripts (the one implementation of each).

A script imports these after putting this directory on sys.path:

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import fmt_ms, machine, print_table, timeit, with_threads, write_json
"""
import json
import os
import statistics
import time

import torch

from deepem.machine import describe


def timeit(fn, min_runs=3, max_runs=50, budget=0.3, cuda=False, first_is_enough=False):
    """Median wall time of fn() in seconds.

    One warm-up call, then timed calls until max_runs were made, or until at least min_runs
    were made and `budget` seconds have passed since the first timed call (min_runs ==
    max_runs gives exactly that many). With first_is_enough, a warm-up call that alone took
    over budget / 2 is returned as the measurement, so big cases run once. cuda: synchronize
    after every call, so the time includes the kernels.
    """
    def run():
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    first = run()
    if first_is_enough and first > budget / 2:
        return first
    times = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget):
        times.append(run())
    return statistics.median(times)


def with_threads(n, fn):
    """fn() with torch limited to n intra-op threads (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


machine = describe  # the one implementation lives in the package


def fmt_ms(seconds, digits=3):
    """Seconds as milliseconds with `digits` decimals; None as '-'."""
    return "-" if seconds is None else "%.*f" % (digits, seconds * 1e3)


def print_table(headers, rows, left=()):
    """Columns right-aligned to their widest cell, except the column indices in `left`."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]

    def fmt(cells):
        return "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    line = fmt(headers)
    print(line)
    print("-" * len(line))
    for r in rows:
        print(fmt(r))


def write_json(path, payload):
    """Atomic write (PATH.tmp, then renamed over PATH): a reader never sees
    half a file. Creates the directory when missing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
