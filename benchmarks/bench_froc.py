"""LUNA16 FROC with 1000 bootstrap resamples of the scans (deepem.eval.evaluate) and the
paired comparison, on synthetic LUNA16-like mark sets: ~1.3 nodules a scan, 110 marks a scan
(so the 100-mark cap applies), 80% of the nodules hit by 1-3 marks.

    python benchmarks/bench_froc.py [--scans 50 888] [--bootstrap 1000] [--repeats 3]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from deepem.eval import compare, evaluate  # noqa: E402


def synthetic(n_scans, marks_per_scan=110, seed=0):
    rng = np.random.default_rng(seed)
    uids = ["1.3.6.1.4.%d" % i for i in range(n_scans)]
    ann, marks = {}, {}
    for uid in uids:
        n = rng.poisson(1.3)
        a = np.c_[rng.uniform(-120, 120, (n, 3)), rng.uniform(3, 30, n)]
        if n:
            ann[uid] = a
        hits = [np.r_[f[:3] + rng.normal(0, f[3] / 6, 3), rng.normal(1.5, 1)]
                for f in a if rng.random() < 0.8 for _ in range(rng.integers(1, 4))]
        fp = np.c_[rng.uniform(-150, 150, (marks_per_scan, 3)), rng.normal(-1, 1, marks_per_scan)]
        marks[uid] = np.r_[np.reshape(hits, (-1, 4)), fp]
    return marks, ann, uids


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scans", type=int, nargs="+", default=[50, 888])
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print("%6s %8s %9s %14s %14s %14s" % ("scans", "marks", "nodules", "no bootstrap", "evaluate", "compare"))
    for n in args.scans:
        marks, ann, uids = synthetic(n)
        other = {u: m + [0, 0, 0, 0.2] for u, m in marks.items()}
        r = evaluate(marks, ann, uids, bootstrap=0)
        t0 = best_of(args.repeats, lambda: evaluate(marks, ann, uids, bootstrap=0))
        t1 = best_of(args.repeats, lambda: evaluate(marks, ann, uids, bootstrap=args.bootstrap))
        t2 = best_of(args.repeats, lambda: compare(marks, other, ann, uids, bootstrap=args.bootstrap))
        print("%6d %8d %9d %12.3f s %12.3f s %12.3f s" % (n, r.num_marks, r.num_nodules, t0, t1, t2))
    print("(%d bootstrap resamples; best of %d; load average %s)"
          % (args.bootstrap, args.repeats, " ".join("%.2f" % v for v in os.getloadavg())))


if __name__ == "__main__":
    main()
