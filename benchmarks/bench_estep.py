"""E-step benchmark: posterior + MAP + 2 draws per weak label, for a batch of weak scans.

deepem (CPU with 1 thread and with all threads, CUDA when present) against a numpy loop over
scans and labels written the way the public DeepEM code does it (linear-space probabilities,
argsort, a cumulative walk per draw; with its defects fixed: every label, a break after each
draw, k draws without replacement). The loop is timed on a subset of the scans and scaled to
the whole batch (stated in the output); its cost per scan does not depend on the others.

    python benchmarks/bench_estep.py [--json PATH] [--baseline-scans N] [--repeats R]

"record terms on": every weak label also carries a recorded diameter and texture (the size
and texture terms of em_posterior, not the paper's), the same picks after.

Where the time goes (large case, one core): em_posterior writes the dense [B, M, P] log
posterior (48 MB in float32; allocating and first-touching it alone costs tens of ms), then
em_map and em_sample read it again, while the loop only touches each label's admissible
proposals. Neither side includes the lobe model or NMS (the public code ran both per label).
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fmt_ms, machine, print_table, timeit, with_threads, write_json  # noqa: E402

from deepem.ops import em_map, em_posterior, em_sample  # noqa: E402
from deepem.ops.estep import DEFAULT_MU, DEFAULT_SIGMA, DEFAULT_Z_WINDOW  # noqa: E402

K = 2  # draws per weak label (the paper's sampling setting)
CASES = [  # name, scans B, proposal slots P, weak-label slots M
    ("small", 32, 300, 2),
    ("large", 1000, 3000, 4),
]


def make_case(B, P, M, seed=0, depth=300.0, lobes=6):
    """Proposals as the E-step sees them: above the logit threshold and inside the z window of
    one of their scan's weak labels (the pipeline filters them so before NMS)."""
    rng = np.random.default_rng(seed)
    num_weak = rng.integers(1, M + 1, B)
    num_proposals = rng.integers(int(0.8 * P), P + 1, B)
    weak_z = rng.uniform(20, depth - 20, (B, M))
    owner = (rng.random((B, P)) * num_weak[:, None]).astype(np.int64)
    props = np.zeros((B, P, 5), np.float32)
    props[..., 0] = np.clip(rng.normal(-1.0, 2.0, (B, P)), -3, None)
    props[..., 1] = np.take_along_axis(weak_z, owner, 1) + rng.uniform(-13, 13, (B, P))
    props[..., 2:4] = rng.uniform(0, 300, (B, P, 2))
    props[..., 4] = rng.uniform(3, 30, (B, P))
    weak_lobe = rng.integers(0, lobes, (B, M))
    logits = rng.normal(0, 2, (B, P, lobes))
    lobe_log_probs = (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)
    return dict(proposals=props, num_proposals=num_proposals, weak_z=weak_z.astype(np.float32),
                weak_lobe=weak_lobe, num_weak=num_weak, lobe_log_probs=lobe_log_probs)


def with_records(case, seed=1, textures=3):
    """The case with every weak label's recorded diameter and texture (the record terms on)
    and a texture model's log p(texture | proposal)."""
    rng = np.random.default_rng(seed)
    B, P, M = case["proposals"].shape[0], case["proposals"].shape[1], case["weak_z"].shape[1]
    logits = rng.normal(0, 1, (B, P, textures))
    return dict(case, weak_diameter=rng.uniform(4, 20, (B, M)).astype(np.float32),
                weak_texture=rng.integers(0, textures, (B, M)),
                texture_log_probs=(logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32))


def numpy_loop(case, scans, k=K, mu=DEFAULT_MU, sigma=DEFAULT_SIGMA, z_window=DEFAULT_Z_WINDOW,
               seed=0):
    """The public code's E-step per scan and per weak label (layers.py GetPBB), minus its NMS."""
    rng = np.random.RandomState(seed)
    picks = []
    for b in range(scans):
        output = case["proposals"][b, : case["num_proposals"][b]]
        lobe_prob = np.exp(case["lobe_log_probs"][b, : case["num_proposals"][b]])
        for m in range(case["num_weak"][b]):
            z_m, lobe_m = case["weak_z"][b, m], case["weak_lobe"][b, m]
            mask = (output[:, 1] >= z_m - z_window) & (output[:, 1] <= z_m + z_window)
            idx = np.where(mask)[0]
            if idx.shape[0] == 0:
                picks.append((b, m, -1, []))
                continue
            pbb = output[idx]
            prob = 1 / (1 + np.exp(-pbb[:, 0])) * 2 * np.exp(
                -np.square(np.maximum(abs(z_m - pbb[:, 1]) - mu, np.zeros_like(pbb[:, 1])))
                / (2 * sigma * sigma)) / (np.sqrt(2 * np.pi * sigma * sigma)) * lobe_prob[idx, lobe_m]
            order = (-prob).argsort()
            idx, prob = idx[order], prob[order]
            sum_prob = np.sum(prob)
            map_pick = idx[0]
            drawn, taken = [], np.zeros(len(idx), bool)
            for _ in range(min(k, len(idx))):
                cur_prob, currand = 0.0, rng.rand()
                left = sum_prob - prob[taken].sum()
                for i in range(prob.shape[0]):
                    if taken[i]:
                        continue
                    cur_prob += prob[i]
                    if cur_prob / left > currand:
                        drawn.append(idx[i])
                        taken[i] = True
                        break
            picks.append((b, m, map_pick, drawn))
    return picks


def to_torch(case, device):
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in case.items()}


def deepem_estep(t):
    lp, has = em_posterior(**t, size_sigma=0.5, texture_weight=0.1)  # the record terms apply when t has them
    return lp, em_map(lp), em_sample(lp, K, seed=0, offset=0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results to this path")
    ap.add_argument("--baseline-scans", type=int, default=100,
                    help="scans the numpy loop is timed on (scaled to the batch); default 100")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    threads_all = torch.get_num_threads()
    info = machine()
    results = {"machine": info, "cpu_threads": threads_all, "draws_per_label": K,
               "repeats": args.repeats, "target": "deepem CPU >= 100x the numpy loop", "cases": []}
    print(f"E-step (posterior + MAP + {K} draws per label); median of {args.repeats}; "
          f"CPU threads: {threads_all}; load average {info['load_average_1min'] or 0:.1f}", file=sys.stderr)

    def runs(n):  # median of exactly n runs after a warm-up
        return dict(min_runs=n, max_runs=n, budget=0)

    table, parts_lines = [], []
    for name, B, P, M in CASES:
        case = make_case(B, P, M)
        labels = int(case["num_weak"].sum())
        scans = min(B, args.baseline_scans)
        t = timeit(lambda: numpy_loop(case, scans), **runs(1 if scans > 50 else args.repeats))
        base = t * B / scans
        rows = [(f"numpy loop (public code){'' if scans == B else f', {scans} scans x {B / scans:g}'}", base)]
        tc = to_torch(case, "cpu")
        tr = to_torch(with_records(case), "cpu")

        def one_thread():
            total = timeit(lambda: deepem_estep(tc), **runs(args.repeats))
            total_records = timeit(lambda: deepem_estep(tr), **runs(args.repeats))
            lp = deepem_estep(tc)[0]
            return total, total_records, {
                "em_posterior": timeit(lambda: em_posterior(**tc), **runs(args.repeats)),
                "em_posterior with record terms": timeit(lambda: em_posterior(**tr, size_sigma=0.5, texture_weight=0.1),
                                                         **runs(args.repeats)),
                "em_map": timeit(lambda: em_map(lp), **runs(args.repeats)),
                "em_sample": timeit(lambda: em_sample(lp, K), **runs(args.repeats))}

        total, total_records, parts = with_threads(1, one_thread)
        rows.append(("deepem CPU, 1 thread", total))
        rows.append(("deepem CPU, 1 thread, record terms on (size, texture)", total_records))
        if threads_all > 1:
            rows.append((f"deepem CPU, {threads_all} threads",
                         timeit(lambda: deepem_estep(tc), **runs(args.repeats))))
        if torch.cuda.is_available():
            tg = to_torch(case, "cuda")
            rows.append(("deepem CUDA", timeit(lambda: deepem_estep(tg), cuda=True, **runs(args.repeats))))
            tgr = to_torch(with_records(case), "cuda")
            rows.append(("deepem CUDA, record terms on", timeit(lambda: deepem_estep(tgr), cuda=True,
                                                                **runs(args.repeats))))
        entry = {"case": name, "B": B, "P": P, "M": M, "weak_labels": labels,
                 "baseline_scans_timed": scans, "timings_s": {}, "cpu_1_thread_parts_s": parts}
        for impl, sec in rows:
            table.append([name, f"{B} x {P} x {M}", impl, fmt_ms(sec, 2), "%.1fx" % (base / sec)])
            entry["timings_s"][impl] = sec
        entry["speedup_vs_numpy"] = {impl: base / sec for impl, sec in rows}
        parts_lines.append(f"{name}, CPU 1 thread: " + ", ".join(
            f"{k} {fmt_ms(v, 1)} ms" for k, v in parts.items()))
        results["cases"].append(entry)
        print(f"done {name}", file=sys.stderr)
    print_table(["case", "B x P x M", "implementation", "time (ms)", "vs numpy"], table, left=(0, 2))
    for line in parts_lines:
        print(line)
    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
