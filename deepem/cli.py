"""The `deepem` command line. Each subcommand is a function that adds its parser to the
subparsers and sets `func` (args -> exit status); later subcommands append to COMMANDS.

    deepem phantom OUT_DIR [--scans N] [--seed S] ...
    deepem preprocess DATA_ROOT OUT_DIR [--workers W] ...
    deepem evaluate RESULTS.csv --annotations A.csv --out DIR [--seriesuids S.csv] ...
    deepem detect CHECKPOINT (--data DIR | --scans PATH...) --out DIR ...
    deepem weak-labels nlst --abnormalities CTAB.csv --dicom DIR [--image-info I.csv] --out DIR
    deepem weak-labels reports --reports REPORTS.csv --dicom DIR --out DIR
"""
import argparse
import os
import sys


NETWORK_FORMS = {"fused": "oneDNN's fused convolutions (deepem.infer.fused)", "torchscript": "a TorchScript graph",
                 "channels_last": "the module on channels_last_3d input", "module": "the module as it is"}


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer, got %s" % text)
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number, got %s" % text)
    return value


def _phantom(args):
    from .data import phantom

    kwargs = {}
    if args.spacing is not None:
        kwargs["spacing"] = tuple(args.spacing)
    shape = tuple(args.shape) if args.shape is not None else None
    splits = phantom.make_dataset(args.out_dir, n_scans=args.scans, seed=args.seed, shape=shape, preset=args.preset,
                                  n_subsets=args.subsets, split=tuple(args.split), workers=args.workers,
                                  write_seg=not args.no_seg, progress=not args.quiet, records=args.records, **kwargs)
    print("wrote %d phantom scans to %s (full %d, weak %d, test %d)"
          % (args.scans, args.out_dir, len(splits["full"]), len(splits["weak"]), len(splits["test"])))
    return 0


def add_phantom(sub):
    p = sub.add_parser("phantom", help="write a synthetic chest CT data set in LUNA16 layout",
                       description="Writes phantom chest CTs in LUNA16 layout: subsetK/<uid>.mhd/.raw, "
                       "seg-lungs-LUNA16/, annotations.csv, annotations_excluded.csv, seriesuids.csv, "
                       "weak_labels.csv, annotations_lobes.csv, annotations_types.csv, lookalikes.csv, "
                       "splits.json. Adult chests with vessel and airway trees, fissures, LUNA16-like nodules "
                       "(solid / part-solid / ground glass, juxtapleural / juxtavascular) and lookalikes. "
                       "Deterministic by --seed.")
    p.add_argument("out_dir", help="output folder (created)")
    p.add_argument("--scans", type=_positive_int, default=10, help="number of scans (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--preset", choices=["luna16", "demo"], default="luna16",
                   help="field of view. luna16 (default): the whole chest, 512 x 512 pixels of 0.62-0.8 mm and "
                   "~300-350 mm of 1.25-2.5 mm slices (~130-280 slices, 35-75 M voxels, ~10-30 s a scan). "
                   "demo: a window of 128 x 128 pixels of 0.7-0.8 mm (90-102 mm) by 64-80 mm of slices onto "
                   "one lung of the same chest (0.4-1.1 M voxels; 0.4-0.7 M after `deepem preprocess`; "
                   "~1-2 s a scan)")
    p.add_argument("--shape", type=_positive_int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="voxels per scan (default: the preset's field of view): a window of that size")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="voxel spacing in mm (default: random, 0.62-0.8 in plane, 1.25-2.5 slices)")
    p.add_argument("--subsets", type=_positive_int, default=10, help="subset folders (default 10)")
    p.add_argument("--split", type=float, nargs=3, default=[0.5, 0.3, 0.2], metavar=("FULL", "WEAK", "TEST"),
                   help="fractions of fully labelled / weakly labelled / test scans (default 0.5 0.3 0.2)")
    p.add_argument("--workers", type=_positive_int, default=1, help="processes (default 1)")
    p.add_argument("--no-seg", action="store_true", help="do not write the seg-lungs-LUNA16 lung masks")
    p.add_argument("--records", action="store_true", help="also write the weak split's medical records under "
                   "records/: each exam as DICOM series, an NLST-style abnormality table and free-text reports "
                   "(what `deepem weak-labels` mines)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_phantom)


def _preprocess(args):
    from .data import preprocess

    def default(path, name):
        if path is not None:
            return None if path == "none" else path
        guess = os.path.join(args.data_root, name)
        return guess if os.path.exists(guess) else None

    seg_dir = None if args.seg_dir == "none" else (args.seg_dir or "auto")
    report = preprocess.preprocess_dataset(
        args.data_root, args.out_dir,
        annotations_csv=default(args.annotations, "annotations.csv"),
        weak_csv=default(args.weak_labels, "weak_labels.csv"),
        seriesuids_csv=default(args.seriesuids, "seriesuids.csv"), seg_dir=seg_dir, workers=args.workers,
        resolution=args.resolution, overwrite=args.overwrite, progress=not args.quiet)
    print("preprocessed %d scans, %d already done, %d failed -> %s"
          % (len(report["done"]), len(report["skipped"]), len(report["failed"]), args.out_dir))
    for uid, reason in sorted(report["failed"].items()):
        print("  failed %s: %s" % (uid, reason.splitlines()[0]), file=sys.stderr)
    if report["unlisted"]:
        print("  %d scan(s) under %s are not in the seriesuids list and were left out (e.g. %s); "
              "--seriesuids none takes every scan found" % (len(report["unlisted"]), args.data_root,
                                                            report["unlisted"][0]), file=sys.stderr)
    return 1 if (report["failed"] and args.strict) else 0


def add_preprocess(sub):
    p = sub.add_parser("preprocess", help="DeepLung preprocessing of a LUNA16-layout data set",
                       description="Lung mask, HU window to uint8, 1 mm resampling and lung-box crop of every "
                       "scan under DATA_ROOT (.mhd, .nii/.nii.gz, DICOM folders). Writes <uid>_clean.npy, "
                       "<uid>_label.npy, <uid>_weak.npy and <uid>_meta.json per scan. Resumable: finished "
                       "scans are skipped; missing or unreadable scans are reported and skipped.")
    p.add_argument("data_root", help="folder holding the scans (searched recursively)")
    p.add_argument("out_dir", help="output folder (created)")
    p.add_argument("--annotations", help="annotations.csv (default DATA_ROOT/annotations.csv if present; 'none')")
    p.add_argument("--weak-labels", help="weak label CSV (default DATA_ROOT/weak_labels.csv if present; 'none')")
    p.add_argument("--seriesuids", help="only these scans (default DATA_ROOT/seriesuids.csv if present, which keeps "
                   "a phantom's records/ DICOM out; 'none': every scan found); a listed scan with no file is reported")
    p.add_argument("--seg-dir", help="LUNA16 lung masks (default DATA_ROOT/seg-lungs-LUNA16 if present; "
                   "'none' segments the lungs by threshold)")
    p.add_argument("--resolution", type=float, default=1.0, help="output voxel size in mm (default 1)")
    p.add_argument("--workers", type=_positive_int, default=1, help="processes (default 1)")
    p.add_argument("--overwrite", action="store_true", help="redo scans that are already finished")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when any scan failed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_preprocess)


def _load_run_config(args):
    """The training settings of `deepem train` / `deepem em`: preset, YAML, --data/--out, --set."""
    from .train import config as cfg

    extra = {}
    if args.data:
        extra.setdefault("data", {})["root"] = args.data
    if args.out:
        extra.setdefault("run", {})["out"] = args.out
    config = cfg.load_config(args.config, args.preset, args.set, extra)
    if not config.run.out:
        raise cfg.ConfigError("no run folder: give --out or run.out")
    return config


def _run_training(args, command, run):
    """Runs run(config) with one clear line and exit status 2 for a bad setting or input."""
    from .data.uids import UnsafeUid
    from .model.safe_load import CheckpointError
    from .train import config as cfg
    from .train import trainer

    from .train import distributed

    try:
        config = _load_run_config(args)
        t = run(config)
        distributed.finish(t.ctx)
    except (cfg.ConfigError, FileNotFoundError, KeyError, trainer.NonFiniteLoss, CheckpointError, UnsafeUid) as e:
        print("deepem %s: %s" % (command, e.args[0] if e.args else e), file=sys.stderr)
        return None, None
    return config, t


def _train(args):
    from .train import trainer

    config, t = _run_training(args, "train", lambda c: trainer.fit(c, resume=args.resume,
                                                                     trusted=args.trust_checkpoint))
    if t is None:
        return 2
    if t.ctx.main:
        best = "none" if t.best is None else "%.4f (epoch %d)" % t.best
        if config.data.val_split:
            what = "best validation %s %s" % ("loss" if config.run.select == "loss" else "-CPM", best)
        else:
            what = "no validation split: best.pt has the lowest training loss, %s" % best
        print("trained %d epochs -> %s (%s)" % (config.optim.epochs, config.run.out, what))
    return 0


def _em(args):
    from .em import em_fit
    from .train import config as cfg

    def run(config):
        if not (args.init or args.resume):
            raise cfg.ConfigError("give --init (a supervised checkpoint, e.g. from deepem train) or --resume")
        return em_fit(config, init=args.init, resume=args.resume, trusted=args.trust_checkpoint)

    config, t = _run_training(args, "em", run)
    if t is None:
        return 2
    if t.ctx.main:
        print("EM trained %d epochs -> %s" % (config.optim.epochs, config.run.out))
    return 0


def add_em(sub):
    p = sub.add_parser("em", help="DeepEM: EM training over weak labels from a supervised checkpoint",
                       description="Each epoch: E-step (whole-scan detection of a share of the weak scans, "
                       "posterior of every weak label over its proposals, MAP or sampled picks -> pseudo boxes, "
                       "written to pseudo_boxes/epoch_NNN.csv), lobe model update, M-step (one pass over the weak "
                       "scans with pseudo boxes, then one supervised epoch). Settings as deepem train, plus the em "
                       "section (e.g. --set em.method=map). Multi-GPU: torchrun --nproc_per_node N -m deepem em ...")
    p.add_argument("--init", help="supervised checkpoint to start from")
    _common_train_args(p)
    p.set_defaults(func=_em)


def _common_train_args(p):
    p.add_argument("--data", help="preprocessed folder (data.root)")
    p.add_argument("--out", help="run folder (run.out)")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--preset", choices=sorted(__import__("deepem.train.config", fromlist=["PRESETS"]).PRESETS),
                   help="starting settings: paper (GPU, the default values) or cpu (small model)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting (repeatable)")
    p.add_argument("--resume", metavar="CHECKPOINT|auto",
                   help="continue from a checkpoint; auto: the newest in the run folder, if any")
    _trust_arg(p)


def _trust_arg(p):
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load checkpoints with a full unpickle, which can run code stored in the file: only for "
                   "files you trust (e.g. from an older deepem). Without it, loading is weights-only and a file "
                   "that needs more is refused")


def add_train(sub):
    p = sub.add_parser("train", help="supervised training of the 3D Res18 detector",
                       description="Trains DeepLung's 3D Res18 on the fully labelled split of a preprocessed "
                       "folder. Settings: --preset, then --config YAML, then --set key=value (e.g. --set "
                       "optim.lr=0.01). Writes config.yaml, checkpoints/, last.pt, best.pt (lowest validation "
                       "loss), metrics.jsonl and loss.png to the run folder. Multi-GPU / multi-node: "
                       "torchrun --nproc_per_node N -m deepem train ...")
    _common_train_args(p)
    p.set_defaults(func=_train)


def _evaluate(args):
    from .data.tables import TableError
    from .eval import report

    try:
        _, lines = report.run(args.results, args.annotations, args.out, excluded=args.excluded,
                              seriesuids=args.seriesuids, other=args.compare, bootstrap=args.bootstrap,
                              seed=args.seed)
    except (TableError, FileNotFoundError, ValueError) as e:
        print("deepem evaluate: error: %s" % e, file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0, got %s" % text)
    return value


def add_evaluate(sub):
    p = sub.add_parser("evaluate", help="LUNA16 FROC / CPM of a results CSV, with bootstrap intervals",
                       description="FROC and CPM exactly as LUNA16's noduleCADEvaluationLUNA16.py computes them "
                       "(at most 100 marks a scan, hit = distance < radius, marks on excluded findings ignored), "
                       "with 95%% intervals from resampling the scans. Writes DIR/froc.json, froc.png, froc.csv. "
                       "With --compare, a paired bootstrap comparison of the two CPMs.")
    p.add_argument("results", help="submission CSV: seriesuid,coordX,coordY,coordZ,probability (world mm)")
    p.add_argument("--annotations", required=True, help="annotations.csv (seriesuid,coordX,coordY,coordZ,diameter_mm)")
    p.add_argument("--excluded", help="annotations_excluded.csv: marks on these findings are ignored")
    p.add_argument("--seriesuids", help="the scans that count, one uid a line (default: the scans named in the "
                   "annotations and results files)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--compare", metavar="OTHER.csv", help="a second results CSV to compare with, paired by scan")
    p.add_argument("--bootstrap", type=_non_negative_int, default=1000, help="resamples for the 95%% intervals "
                   "(default 1000; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=_evaluate)


def _write_marks_csv(path, marks_by_uid, diameters_by_uid):
    """LUNA16 submission CSV through deepem.eval (the CSV's one writer); infer never imports eval."""
    from .eval.froc import write_marks

    write_marks(path, marks_by_uid, diameters_by_uid)


def _detect(args):
    from .infer import Detector, fused
    from .infer import run

    try:
        if args.data:
            if args.split:
                uids = run.split_uids(args.split, args.splits or os.path.join(args.data, "splits.json"))
            elif args.uids:
                from .data import tables

                uids = tables.read_seriesuids(args.uids)
            else:
                uids = run.preprocessed_uids(args.data)
            inputs = [(u, (args.data, u)) for u in uids]
        else:
            inputs = run.raw_inputs(args.scans)
        detector = Detector(args.checkpoint, device=args.device, tile=args.tile, margin=args.margin,
                            tile_batch=args.tile_batch, amp=args.amp, threshold=args.threshold,
                            max_memory=args.max_memory * 2**30 if args.max_memory else None,
                            trusted=args.trust_checkpoint)
        mode = detector.runner().mode
        form = NETWORK_FORMS[mode]
        if mode == "fused" and fused.narrow_kernels_apply(detector.model):
            form += ", its full-resolution layers in deepem's AVX2 convolution"
        print("deepem detect: %s, amp %s%s, %s tiles, network as %s" % (
            detector.device, detector.amp, " (auto)" if args.amp == "auto" else "",
            "DeepLung's %d-voxel" % args.tile if args.tile else "planned (fewest that fit memory)", form),
            file=sys.stderr)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as e:
        print("deepem detect: %s" % (e.args[0] if e.args else e), file=sys.stderr)
        return 2
    settings = {k: getattr(args, k) for k in ("checkpoint", "data", "split", "splits", "uids", "scans", "threshold",
                                              "device", "tile", "margin", "tile_batch", "max_memory", "amp", "overlays",
                                              "overlay_min_prob", "seg_dir")}
    settings.update(device=str(detector.device), amp_chosen=detector.amp, network=detector.runner().mode,
                    nms_iou=detector.nms_iou, min_diameter_mm=detector.min_diameter, max_marks=detector.max_marks)
    result = run.detect_many(detector, inputs, args.out, _write_marks_csv, overlays=args.overlays,
                             overlay_min_prob=args.overlay_min_prob, seg_dir=args.seg_dir,
                             progress=not args.quiet, settings=settings)
    n = sum(len(m) for m in result.marks.values())
    print("detected %d marks in %d scans -> %s (%d failed%s)"
          % (n, len(result.marks), args.out, len(result.failed),
             ", %d overlays" % len(result.overlays) if args.overlays else ""))
    for uid, reason in sorted({**result.failed, **result.overlay_failed}.items()):
        print("  failed %s: %s" % (uid, reason), file=sys.stderr)
    return 0 if result.ok else 1


def add_detect(sub):
    p = sub.add_parser("detect", help="whole-scan nodule detection with a trained model",
                       description="Runs the 3D Res18 over whole scans in tiles, keeps anchors with logit > "
                       "--threshold and diameter > 3 mm, NMS at cube IoU 0.1, at most 100 marks per scan, in "
                       "world mm (ITK/LPS, as LUNA16). Writes OUT/marks.csv (LUNA16 submission columns + "
                       "diameter_mm), OUT/marks.json (MONAI-style cccwhd boxes), OUT/detect_report.json and, "
                       "with --overlays, OUT/overlays/*.png. Scans that cannot be read or have no lungs are "
                       "reported and skipped; the exit status is 1 when any failed.")
    p.add_argument("checkpoint", help="a checkpoint of deepem train (best.pt / last.pt)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="a deepem preprocess output folder (all its scans, or --split / --uids)")
    src.add_argument("--scans", nargs="+", metavar="PATH",
                     help="raw scans: .mhd, .nii/.nii.gz, DICOM series folders, or folders of them "
                     "(preprocessed inside)")
    p.add_argument("--split", help="with --data: a split name in --splits")
    p.add_argument("--splits", help="splits JSON ({name: [seriesuids]}; default DATA/splits.json)")
    p.add_argument("--uids", help="with --data: a file with one seriesuid a line")
    p.add_argument("--seg-dir", help="with --scans: LUNA16 lung masks (<uid>.mhd) to use instead of thresholding")
    p.add_argument("--out", required=True, help="run folder (created)")
    p.add_argument("--threshold", type=float, default=-2.0, help="logit threshold (default -2)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--tile", type=_positive_int, default=None,
                   help="DeepLung's fixed tiles of this side (voxels without the margin, a multiple of 16; "
                   "DeepLung: 144). Default: the fewest tiles that fit --max-memory, one for most scans")
    p.add_argument("--margin", type=int, default=None,
                   help="context voxels around each tile, a multiple of 8 (default 16; DeepLung: 32)")
    p.add_argument("--max-memory", type=_positive_float, default=None,
                   help="GiB the tiles may use (default: half the available memory; GPU: 80%% of its free memory)")
    p.add_argument("--tile-batch", type=_positive_int, default=1, help="tiles per forward pass (default 1)")
    p.add_argument("--amp", choices=["auto", "none", "bf16", "fp16"], default="auto",
                   help="autocast; auto (default): bf16 where the CPU or GPU computes it natively, else none")
    p.add_argument("--overlays", action="store_true", help="a PNG per mark above --overlay-min-prob")
    p.add_argument("--overlay-min-prob", type=float, default=0.5, help="default 0.5")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _trust_arg(p)
    p.set_defaults(func=_detect)


def _demo(args):
    from . import demo

    try:
        return demo.main(args.out, seed=args.seed, seeds=args.seeds, quick=args.quick, full=args.full,
                         workers=args.workers, paper=args.paper, weak_from=args.weak_from)
    except ValueError as e:
        print("deepem demo: %s" % e, file=sys.stderr)
        return 2


def add_demo(sub):
    p = sub.add_parser("demo", help="the DeepEM phantom benchmark end to end (data, 4 methods and a noise "
                                    "control, FROC table)",
                       description="Generates phantom CTs, trains a supervised baseline, its noise control (the same with "
                       "another training seed), DeepEM MAP, DeepEM sampling and an oracle under one step budget, detects on the test split and writes results.json, "
                       "results.md, froc.png and overlays/ to --out. Finished stages are reused on a second run.")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--seeds", type=_positive_int, default=1, help="repeat with seeds S..S+N-1, report mean and sd")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny settings, whole pipeline in minutes, no claim (CI)")
    size.add_argument("--full", action="store_true", help="the paper's setting (needs a CUDA GPU)")
    p.add_argument("--paper", action="store_true", help="DeepEM rows as the paper runs them: none of the "
                   "remedies (calibrated E-step, frozen teacher, posterior-weighted loss, mixed batches, "
                   "classification-only pseudo boxes) that the default adds")
    p.add_argument("--weak-from", choices=["nlst", "reports"], default="nlst",
                   help="mine the weak split's labels from its NLST-style abnormality table (default) or from "
                   "its free-text reports")
    p.add_argument("--workers", type=_positive_int, default=2, help="processes for data generation (default 2)")
    p.set_defaults(func=_demo)


def _study(args):
    from . import demo, study

    try:
        base = study.parse_settings(args.setting, demo.DEFAULT)
        variants = tuple(v for v in args.variants.split(",") if v)
        return study.main(args.out, n_full=tuple(args.n_full), seeds=tuple(args.seeds), variants=variants,
                          workers=args.workers, base=base)
    except ValueError as e:
        print("deepem study: %s" % e, file=sys.stderr)
        return 2


def add_study(sub):
    from .study import DEFAULT_VARIANTS, VARIANTS

    p = sub.add_parser("study", help="where DeepEM's gain appears: EM gain against the number of fully labelled "
                                     "scans, with the noise control, em_truth and remedies",
                       description="For each number of fully labelled scans (weak = 3x) and seed: the demo's "
                       "data and init stages, then each variant (supervised baseline, noise control, oracle, "
                       "em_truth, DeepEM and its remedies) trained, validated and detected on the test split. "
                       "Writes OUT/n<N>_s<seed>/point.json and OUT/study.json, study.md, study.png. Finished "
                       "stages are reused. Variants: %s." % ", ".join(VARIANTS))
    p.add_argument("--out", default="study_out", help="output folder (default study_out)")
    p.add_argument("--n-full", type=_positive_int, nargs="+", default=[16, 32, 64], help="default 16 32 64")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="default 0 1")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help="comma-separated (default %s)" % ",".join(DEFAULT_VARIANTS))
    p.add_argument("--setting", action="append", metavar="NAME=VALUE",
                   help="change one of the demo's settings (deepem.demo.Settings), e.g. n_val=24 (repeatable)")
    p.add_argument("--workers", type=_positive_int, default=2, help="processes for data generation (default 2)")
    p.set_defaults(func=_study)


def _weak_labels(args):
    from .data.tables import TableError
    from .emr import weak_labels

    try:
        if args.source == "nlst":
            weak_labels.mine_nlst(args.abnormalities, args.dicom, args.out, image_info=args.image_info,
                                  policy=args.series_policy, workers=args.workers, progress=not args.quiet)
        else:
            weak_labels.mine_reports(args.reports, args.dicom, args.out, policy=args.series_policy,
                                     workers=args.workers, progress=not args.quiet)
    except (TableError, FileNotFoundError, ImportError) as e:
        print("deepem weak-labels %s: %s" % (args.source, e), file=sys.stderr)
        return 2
    return 0


def add_weak_labels(sub):
    from .emr.weak_labels import REASONS

    p = sub.add_parser("weak-labels", help="mine weak labels (slice + lobe, size, texture) from medical records",
                       description="Reads records (an NLST abnormality table, or free-text CT reports) and a DICOM "
                       "tree (headers only, cached in OUT), looks each record's image number up among the exam's "
                       "InstanceNumbers, and writes OUT/weak_labels.csv (seriesuid, coordZ, slice, lobe, "
                       "diameter_mm, texture, source) and OUT/weak_labels_rejected.csv (source, reason, detail): "
                       "one row for every input row that did not become a label. Reasons: %s."
                       % "; ".join("%s: %s" % kv for kv in REASONS.items()))
    kinds = p.add_subparsers(dest="source", metavar="SOURCE")
    kinds.required = True
    nlst = kinds.add_parser("nlst", help="NLST's Spiral CT Abnormalities table")
    nlst.add_argument("--abnormalities", required=True, help="the abnormality table (CSV or TSV; CDAS or IDC "
                      "column names, any case and order)")
    nlst.add_argument("--image-info", help="a table (pid, study_yr, seriesinstanceuid) naming per exam the "
                      "series the slice numbers refer to; those series take the labels")
    reports = kinds.add_parser("reports", help="free-text chest CT reports")
    reports.add_argument("--reports", required=True, help="CSV with study_uid (or accession) and text")
    for q in (nlst, reports):
        q.add_argument("--dicom", required=True, help="folder holding the exams' DICOM files (any layout)")
        q.add_argument("--out", required=True, help="output folder")
        q.add_argument("--series-policy", choices=["strict", "thinnest"], default="strict",
                       help="where axial series of an exam put an image number at different z: strict "
                       "rejects the row as ambiguous_series (default), thinnest trusts the thinnest series")
        q.add_argument("--workers", type=_positive_int, default=2, help="processes reading headers (default 2)")
        q.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_weak_labels)


COMMANDS = [add_phantom, add_preprocess, add_train, add_em, add_detect, add_evaluate, add_demo, add_study,
            add_weak_labels]


def build_parser():
    parser = argparse.ArgumentParser(prog="deepem", description="3D lung nodule detection with DeepEM")
    from . import __version__

    parser.add_argument("--version", action="version", version="deepem " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
