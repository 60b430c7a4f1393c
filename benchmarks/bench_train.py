"""One training step of the Res18 detector, split into data loading, labelling + loss, and the
network (forward, backward, SGD), for the CPU preset and for full width at 96^3. Side by side,
on the same network and crops: a DeepLung-style step (numpy anchor labelling per crop, the
LabelMapping of benchmarks/bench_anchors.py, and their loss: sigmoid + BCE over positives and
the top-k hard negatives, smooth L1 over positives).

Then the network's step alone (forward, backward, AdamW, the weight average's update, on fixed
crops) in the forms a run can choose, old and new side by side at the demo's (0.25 x 32^3 x 8)
and the cpu preset's (0.25 x 48^3 x 8) settings: the old step (torch's layers: oneDNN's
convolution and its backward, torch's batch norm and max pooling; AdamW's per-tensor loop, the
average updated tensor by tensor, glibc's malloc as it is), deepem's step (Res18's cpu_kernels:
the narrow layers' convolutions, batch norm and pooling in deepem's kernels, the wider layers'
backward as forward convolutions, deepem.model.conv3d; fused AdamW; foreach average; freed memory
kept in the process, deepem.heap, as the trainer's epochs do), and on top of it
channels_last_3d (run.channels_last), bf16 autocast where the device has it natively
(run.amp=bf16; skipped where bf16 would be emulated), and with --compile torch.compile (its
compile time printed). Every old form runs before any new one: deepem.heap's scope leaves the
process's malloc keeping freed memory, which would speed the old step up too.

    python benchmarks/bench_train.py [--repeats 3] [--no-full] [--device cpu|cuda] [--compile] [--json PATH]
"""
import argparse
import os
import random
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_anchors  # noqa: E402
from common import fmt_ms, machine, print_table, write_json  # noqa: E402

from deepem import heap  # noqa: E402
from deepem.data import datasets  # noqa: E402
from deepem.model import DetectionLoss, Res18  # noqa: E402
from deepem.train.ema import WeightAverage  # noqa: E402


def synthetic_scans(folder, n=4, shape=(128, 128, 128), seed=0):
    """Preprocessed-layout scans with bright spheres (3-25 mm) on a noisy background."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    uids = []
    for i in range(n):
        boxes = np.concatenate([rng.uniform(20, 108, (3, 3)), rng.uniform(3, 25, (3, 1))], 1).astype(np.float32)
        img = 60 + rng.normal(0, 8, shape).astype(np.float32)
        for z, y, x, d in boxes:
            img += 150 * np.clip(d / 2 - np.sqrt((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2) + 0.5, 0, 1)
        uid = "s%d" % i
        np.save(os.path.join(folder, uid + "_clean.npy"), np.clip(img, 0, 255).astype(np.uint8))
        np.save(os.path.join(folder, uid + "_label.npy"), boxes)
        with open(os.path.join(folder, uid + "_meta.json"), "w") as f:
            f.write('{"shape": [%d, %d, %d]}' % shape)
        uids.append(uid)
    return uids


def deeplung_loss(output, labels, num_hard):
    """DeepLung's Loss on numpy labels [B, D, H, W, A, 5] (1 pos, -1 sampled neg, 0 ignore)."""
    out = output.reshape(-1, 5)
    lab = torch.from_numpy(labels).reshape(-1, 5)
    pos = lab[:, 0] > 0.5
    neg = lab[:, 0] < -0.5
    neg_out = out[neg, 0]
    neg_out = torch.topk(neg_out, min(num_hard * output.shape[0], len(neg_out)))[0]
    neg_loss = F.binary_cross_entropy(torch.sigmoid(neg_out), torch.zeros_like(neg_out))
    if pos.any():
        pos_out = out[pos]
        pos_loss = F.binary_cross_entropy(torch.sigmoid(pos_out[:, 0]), torch.ones(len(pos_out)))
        reg = sum(F.smooth_l1_loss(pos_out[:, i], lab[pos, i]) for i in range(1, 5))
        return 0.5 * pos_loss + 0.5 * neg_loss + reg
    return 0.5 * neg_loss


def time_case(name, width, crop, batch, folder, uids, repeats):
    torch.manual_seed(0)
    random.seed(0)
    net = Res18(width)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    ds = datasets.CropDataset(folder, uids, crop_size=crop)
    ours = DetectionLoss()
    bench_anchors.CROP = crop  # the DeepLung labeller reads its crop size from there
    rows = {"ours": [], "deeplung": []}
    for rep in range(repeats + 1):  # the first round warms up (oneDNN primitive creation)
        for style in ("ours", "deeplung"):
            t0 = time.perf_counter()
            ds.set_epoch(rep)
            batch_items = datasets.collate([ds[(rep * batch + i) % len(ds)] for i in range(batch)])
            t1 = time.perf_counter()
            output = net(batch_items["image"], batch_items["coord"])
            t2 = time.perf_counter()
            head = output.detach().requires_grad_()
            if style == "ours":
                loss = ours(head, batch_items["boxes"], seed=rep).total
            else:
                labels = np.stack([bench_anchors.deeplung_label(b.numpy().astype(np.float64))
                                   for b in batch_items["boxes"]])
                loss = deeplung_loss(head, labels, 2)
            loss.backward()
            t3 = time.perf_counter()
            opt.zero_grad()
            output.backward(head.grad)
            opt.step()
            t4 = time.perf_counter()
            if rep:
                rows[style].append((t1 - t0, t3 - t2, (t2 - t1) + (t4 - t3)))
    out = {}
    for style, times in rows.items():
        data, label_loss, network = (float(np.median(v)) for v in zip(*times))
        step = data + label_loss + network
        out[style] = {"data": data, "label_loss": label_loss, "network": network, "step": step,
                      "outside_share": (data + label_loss) / step, "steps_per_s": 1 / step,
                      "crops_per_s": batch / step}
    return {"case": name, "width": width, "crop": crop, "batch": batch, **out}


NETWORK_CASES = [("demo", 0.25, 32, 8), ("cpu preset", 0.25, 48, 8)]


def network_forms(device, compile_too):
    """(name, channels_last, amp, compiled, new) of the forms to time, the old one first; bf16
    only where native."""
    from deepem.infer.fast import resolve_amp

    forms = [("old step (eager fp32)", False, "none", False, False), ("deepem's step", False, "none", False, True),
             ("deepem's + channels_last_3d", True, "none", False, True)]
    if resolve_amp("auto", device) == "bf16":
        forms.append(("deepem's + channels_last_3d + bf16 autocast", True, "bf16", False, True))
    if compile_too:
        forms.append(("deepem's + channels_last_3d + torch.compile", True, "none", True, True))
    return forms


@torch.no_grad()
def old_average_update(average, model, decay):
    """The weight average's update as it was: tensor by tensor (same arithmetic as ema_update)."""
    for a, m in zip(average.parameters(), model.parameters()):
        a.mul_(decay).add_(m, alpha=1.0 - decay)
    for a, m in zip(average.buffers(), model.buffers()):
        if a.is_floating_point():
            a.mul_(decay).add_(m, alpha=1.0 - decay)
        else:
            a.copy_(m)


def time_network(width, crop, batch, device, channels_last, amp, compiled, new, repeats):
    """Median seconds of one network step (forward, a loss on the head, backward, AdamW, the
    weight average) and the seconds the first call took (compilation, oneDNN primitive creation).
    new: deepem's step (Res18's cpu_kernels, fused AdamW, ema_update); else the old one."""
    torch.manual_seed(0)
    net = Res18(width, dropout=0.0, cpu_kernels=new).to(device)
    image = torch.randn(batch, 1, crop, crop, crop, device=device)
    coord = torch.randn(batch, 3, crop // 4, crop // 4, crop // 4, device=device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        image = image.contiguous(memory_format=torch.channels_last_3d)
    run = torch.compile(net) if compiled else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4, fused=new)
    average = WeightAverage(net, 0.99)
    cuda = torch.device(device).type == "cuda"

    def step():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            out = run(image, coord)
        loss = out.float().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if new:
            average.update(net)
        else:
            old_average_update(average.model, net, 0.99)
        if cuda:
            torch.cuda.synchronize()

    with heap.reuse_freed_memory() if new else nullcontext():
        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return float(np.median(times[1:])), first


def network_table(device, repeats, compile_too):
    forms = network_forms(device, compile_too)
    runs = [(case, form) for new in (False, True) for case in NETWORK_CASES for form in forms if form[4] == new]
    timed = {}
    for (name, width, crop, batch), (form, cl, amp, compiled, new) in runs:  # the old forms first (see the docstring)
        timed[name, form] = time_network(width, crop, batch, device, cl, amp, compiled, new, repeats)
    results = []
    for name, width, crop, batch in NETWORK_CASES:
        old = timed[name, forms[0][0]][0]
        for form in forms:
            sec, first = timed[name, form[0]]
            results.append({"case": name, "width": width, "crop": crop, "batch": batch, "form": form[0],
                            "step_s": sec, "first_call_s": first, "crops_per_s": batch / sec,
                            "speedup_vs_old": old / sec})
    rows = [[r["case"], "%g x %d^3 x %d" % (r["width"], r["crop"], r["batch"]), r["form"], fmt_ms(r["step_s"]),
             "%.1f" % r["crops_per_s"], "%.2fx" % r["speedup_vs_old"], "%.1f" % r["first_call_s"]] for r in results]
    print("Network step (forward, backward, AdamW, weight average; median of %d), %s, %d threads" % (
        repeats, device, torch.get_num_threads()))
    print_table(["case", "width x crop x batch", "form", "step ms", "crops/s", "vs old", "first call s"], rows,
                left=(0, 1, 2))
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-full", action="store_true", help="skip full width at 96^3 (slow on CPU)")
    p.add_argument("--device", default="cpu", help="cpu | cuda: where the network forms are timed (default cpu)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    torch.set_flush_denormal(True)
    cases = [("cpu preset", 0.25, 48, 8)]
    if not args.no_full:
        cases.append(("full width", 1.0, 96, 2))
    network = network_table(args.device, args.repeats, args.compile)
    print()
    with tempfile.TemporaryDirectory() as folder:
        uids = synthetic_scans(folder)
        results = [time_case(*c, folder, uids, args.repeats) for c in cases]
    rows = []
    for r in results:
        for style in ("ours", "deeplung"):
            t = r[style]
            rows.append([r["case"], "%g x %d^3 x %d" % (r["width"], r["crop"], r["batch"]), style,
                         fmt_ms(t["data"]), fmt_ms(t["label_loss"]), fmt_ms(t["network"]), fmt_ms(t["step"]),
                         "%.1f%%" % (100 * t["outside_share"]), "%.2f" % t["crops_per_s"]])
    print("Training step (median of %d after a warm-up), %d threads" % (args.repeats, torch.get_num_threads()))
    print_table(["case", "width x crop x batch", "step", "data ms", "label+loss ms", "network ms", "total ms",
                 "outside network", "crops/s"], rows, left=(0, 1, 2))
    if args.json:
        write_json(args.json, {"benchmark": "train", "machine": machine(), "results": results,
                               "network": network})


if __name__ == "__main__":
    main()
