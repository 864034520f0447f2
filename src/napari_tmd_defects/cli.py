"""``tmd-defects``: command-line interface (a thin layer over the library).

Run ``tmd-defects --help`` or ``tmd-defects COMMAND --help``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from ._version import __version__

__all__ = ["main", "progress_printer"]


def progress_printer(label: str, stream=None) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback on ``stream`` (default stderr).

    On a terminal: a tqdm bar. Otherwise (a log file, a pipe, a batch system): one plain
    line per step, ``label: 3/10 (2.1 s)``, without carriage returns or escape codes.
    """
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    tty = bool(isatty()) if callable(isatty) else False
    t0 = time.perf_counter()
    bar = None
    last: int | None = None
    finished = False

    def cb(done: int, total: int) -> None:
        nonlocal bar, last, finished
        if finished or done == last:
            return
        last = done
        if tty:
            from tqdm import tqdm

            if bar is None:
                bar = tqdm(total=total, desc=label, file=stream, leave=True, dynamic_ncols=True)
            bar.total = total
            bar.update(max(0, done - bar.n))
        else:
            stream.write(f"{label}: {done}/{total} ({time.perf_counter() - t0:.1f} s)\n")
            stream.flush()
        if done >= total:
            finished = True
            if bar is not None:
                bar.close()

    return cb


def _say(message: str, err: bool = False) -> None:
    """Print a line without breaking a progress bar (tqdm.write)."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr if err else sys.stdout)


def _range_or_value(values: Sequence[float] | None):
    if values is None:
        return None
    return values[0] if len(values) == 1 else (values[0], values[1])


# --------------------------------------------------------------------------- simulate
def _add_simulate(sub) -> None:
    from .datasets import PRESETS

    p = sub.add_parser(
        "simulate",
        help="simulate HAADF images with ground truth (a training/evaluation dataset)",
        description="Simulate N images of a 2H-MX2 monolayer with random point defects and "
        "write images (float32 TIFF), ground truth (JSON) and COCO boxes to OUT.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--n", type=int, default=10, help="number of images (default 10)")
    p.add_argument("--size", type=int, nargs="+", default=[512], help="image size in px: N or ROWS COLS")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--material", default="MoTe2",
                   help="MoTe2 (default), MoS2, MoSe2, WS2, WSe2, or an alloy / doped formula: "
                   "Mo0.8W0.2Te2, WS2(1-x)Se2x, (Mo,W)(S,Se)2, MoS2:Re0.02")
    p.add_argument("--preset", default="paper", choices=list(PRESETS),
                   help="imaging conditions: paper (default), realistic (randomised, like real frames), clean, "
                        "structure (realistic + domain boundaries, non-linear scan distortion, weak chalcogens)")
    p.add_argument("--pixel-size", type=float, nargs="+", default=[0.12], metavar="A_PER_PX",
                   help="Å/px, a value or a LOW HIGH range (default 0.12)")
    p.add_argument("--rotation", default="0", help="in-plane rotation in degrees, or 'random'")
    p.add_argument("--defect-fraction", type=float, nargs="+", default=[0.1],
                   help="fraction of defective cells, a value or a LOW HIGH range (default 0.1)")
    p.add_argument("--vacuum", type=float, default=0.0, metavar="P",
                   help="probability that an image holds vacuum: a hole or the film's edge (default 0)")
    p.add_argument("--previews", type=int, default=4, help="overlay PNGs for the first N images")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--model", default="fast", choices=["fast", "multislice"],
                   help="image model: fast (incoherent, default) or multislice (abTEM; needs the "
                   "[multislice] extra; minutes per image)")
    p.add_argument("--frozen-phonons", type=int, default=None, metavar="N",
                   help="multislice only: frozen-phonon configurations per image (default 4; 0 = static)")
    p.set_defaults(func=_run_simulate)


def _run_simulate(args) -> int:
    from .datasets import generate_dataset

    size = tuple(args.size) if len(args.size) == 2 else (args.size[0], args.size[0])
    rotation = args.rotation if args.rotation == "random" else float(args.rotation)
    model_options = None
    if args.frozen_phonons is not None:
        if args.model != "multislice":
            raise ValueError("--frozen-phonons needs --model multislice")
        model_options = {"frozen_phonons": args.frozen_phonons}
    t0 = time.perf_counter()
    path = generate_dataset(
        args.out,
        n=args.n,
        size=size,
        seed=args.seed,
        material=args.material,
        preset=args.preset,
        pixel_size=_range_or_value(args.pixel_size),
        rotation=rotation,
        defect_fraction=_range_or_value(args.defect_fraction),
        vacuum=args.vacuum,
        n_preview=args.previews,
        workers=args.workers,
        progress=progress_printer("simulate"),
        model=args.model,
        model_options=model_options,
    )
    print(f"wrote {args.n} images with ground truth to {args.out} ({time.perf_counter() - t0:.1f} s); index: {path}")
    return 0


# --------------------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the full pipeline on the built-in sample data and write the outputs",
        description="Simulate the built-in defective MoTe2 sample, analyse it with the shipped "
        "networks and write to OUT: sample.tif, sample_truth.json/.png (ground truth), "
        "sample_cells.csv, sample_summary.json, sample_overlay.png (results), and a score "
        "against the ground truth.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    _add_picture_options(p)
    p.set_defaults(func=_run_demo)


def _add_picture_options(p) -> None:
    p.add_argument("--palette", default="paper", choices=["paper", "colorblind"],
                   help="overlay colours: paper (default, the 2DIP-Net paper's) or colorblind (Okabe-Ito)")
    p.add_argument("--cells", default="outline", choices=["outline", "marker"], dest="cell_style",
                   help="overlay cells as outlines in their lattice frame (default) or as markers")


def _run_demo(args) -> int:
    from .pipeline import analyze
    from .datasets import sample_image
    from .evaluation import score_result
    from .io import write_tiff
    from .visualization import save_result_overlay, save_truth_overlay

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sim = sample_image(seed=args.seed)
    t = sim.truth
    write_tiff(out / "sample.tif", sim.image, t.pixel_size)
    t.save(out / "sample_truth.json")
    save_truth_overlay(out / "sample_truth.png", sim.image, t, palette=args.palette, cell_style=args.cell_style)
    print(f"sample: {t.shape[1]}x{t.shape[0]} px at {t.pixel_size} Å/px, MoTe2, {t.n_cells} unit cells (simulated)")
    res = analyze(sim.image, t.pixel_size, material=t.material, device=args.device,
                  progress=progress_printer("analyze"))
    if res.n_cells == 0:
        why = "; ".join(res.warnings) or "no unit cells found"
        print(f"tmd-defects demo: failed: no unit cells found in the sample: {why}", file=sys.stderr)
        return 1
    res.save(out, stem="sample")
    save_result_overlay(out / "sample_overlay.png", res, sim.image, name="sample.tif", palette=args.palette,
                        cell_style=args.cell_style)
    s = score_result(res, t)
    width = max(len(n) for n in res.class_names)
    print(f"{'class':<{width}}  found  true  concentration (cm⁻²)")
    conc = res.concentrations_cm2()
    true = t.counts()
    for name, n in res.counts().items():
        print(f"{name:<{width}}  {n:5d}  {true[name]:4d}  {conc[name]:.3g}")
    print(f"{res.n_cells} cells in {res.area_nm2:.1f} nm²; against the ground truth: recall {100 * s.recall:.1f} %, "
          f"precision {100 * s.precision:.1f} %, class accuracy {100 * s.class_accuracy:.1f} %; "
          f"{res.timings['total']:.2f} s")
    print(f"wrote {out}/sample.tif, sample_truth.json/.png, sample_cells.csv, sample_summary.json, sample_overlay.png")
    return 0


def _add_hexagons_option(p) -> None:
    from .pipeline import HEXAGON_COVERAGES

    p.add_argument("--hexagons", choices=HEXAGON_COVERAGES, default="frame",
                   help="where CNN-1 looks for hexagons: frame (default; every domain, all of it) or sample "
                   "(one tile of ~11 lattice constants per domain: enough to check each domain's sites; "
                   "cells outside the tiles get support -1)")


# --------------------------------------------------------------------------- analyze
def _add_analyze(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="find and classify the unit cells of images (one file, a folder, a glob, a batch)",
        description="Detect hexagons, cast unit cells and classify them. For each image write "
        "<name>_cells.csv, <name>_summary.json and <name>_overlay.png to OUT, plus "
        "batch_summary.csv with every image's status. An image that cannot be read or "
        "yields nothing (no crystal lattice, no unit cells: blank, constant or pure-noise "
        "frames) is reported as 'failed' with the reason and gets no result files; the "
        "others finish. Exit status: 0 when every image was analysed, 1 when any image "
        "failed (or on an error).",
    )
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns (TIFF, PNG/JPEG, DM3/DM4, EMD, ...)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--pixel-size", type=float, default=None, metavar="A_PER_PX",
                   help="Å/px; default: from the file's metadata, else estimated from the lattice. A value "
                   "more than 10 %% off the lattice's is replaced by it (with a warning)")
    p.add_argument("--trust-pixel-size", action="store_true",
                   help="keep the given or file pixel size even where it disagrees with the lattice")
    p.add_argument("--stack", choices=["sum"], default=None,
                   help="a file holding a series of frames (multi-page TIFF, 3-D .npy, DM/EMD/Nion series): 'sum' "
                   "aligns them (rigid, sub-pixel) and analyses their average over the common region; "
                   "default: such a file is reported failed")
    p.add_argument("--material", default="MoTe2",
                   help="MoTe2 (default), MoS2, MoSe2, WS2, WSe2, or an alloy / doped formula: "
                   "Mo0.8W0.2Te2, WS2(1-x)Se2x, (Mo,W)(S,Se)2, MoS2:Re0.02")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--alpha", type=float, default=0.65, help="casting width ratio (default 0.65)")
    p.add_argument("--beta", type=float, default=0.5, help="casting height ratio (default 0.5)")
    p.add_argument("--no-classify", action="store_true", help="detect cells only (defect = unclassified)")
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay PNGs")
    _add_picture_options(p)
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="dask.distributed scheduler address (tcp://host:8786) for large archives")
    p.add_argument("--detector", default=None, help="detector weights (default: shipped)")
    p.add_argument("--classifier", default=None,
                   help="classifier weights, or a shipped one by name: resnet18 (default), small (distilled, ~10x faster per cell)")
    _add_hexagons_option(p)
    head = p.add_mutually_exclusive_group()
    head.add_argument("--site-head", default="default", metavar="WEIGHTS",
                      help="the site-state head an alloy's or doped layer's metal sites are read with (default: "
                           "the shipped one): better than the column heights for blurred low-dose Mo-W alloys and "
                           "heavy dopants; binaries and light (3d) metals such as V or Cr are read from the heights "
                           "(see docs/reports/site_head.md)")
    head.add_argument("--no-site-head", dest="site_head", action="store_const", const=None,
                      help="read every metal site from the column heights")
    p.set_defaults(func=_run_analyze)


def _run_analyze(args) -> int:
    from .batch import BatchOptions, run_batch

    if args.device.startswith("cuda"):
        from .runtime import resolve_device

        resolve_device(args.device)  # fail fast with a clear message
    opts = BatchOptions(
        out_dir=str(args.out), pixel_size=args.pixel_size, trust_pixel_size=args.trust_pixel_size,
        material=args.material, alpha=args.alpha,
        beta=args.beta, device=args.device, classify=not args.no_classify, detector=args.detector,
        classifier=args.classifier, hexagons=args.hexagons, site_head=args.site_head, overlay=not args.no_overlay,
        palette=args.palette, cell_style=args.cell_style, stack=args.stack,
    )
    bar = progress_printer("analyze")

    def report(o) -> None:
        if o.ok:
            counts = ", ".join(f"{n} {c}" for n, c in o.counts.items() if c) or "no classified cells"
            _say(f"{Path(o.path).name}: {o.n_cells} cells, {o.area_nm2:.1f} nm² at {o.pixel_size:.4f} Å/px "
                 f"({o.pixel_size_source}); {counts}")
            for w in o.warnings:
                _say(f"  note: {w}")
        else:
            _say(f"{o.path}: failed: {o.message}", err=True)

    outcomes = run_batch(args.images, opts, workers=args.workers, scheduler=args.scheduler,
                         progress=bar, on_result=report)
    n_ok = sum(o.ok for o in outcomes)
    n_failed = len(outcomes) - n_ok
    failed = f"; {n_failed} failed (see the status column)" if n_failed else ""
    print(f"analysed {n_ok} of {len(outcomes)} images{failed}; results in {args.out} (batch_summary.csv)")
    return 0 if n_failed == 0 else 1


# --------------------------------------------------------------------------- evaluate
def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score the pipeline against simulated ground truth (Markdown report)",
        description="Run the networks and/or the classical reference on a simulated dataset "
        "(`tmd-defects simulate`) and report unit-cell recall, precision, duplicates, the "
        "paper's IoU>0.5 accuracy, per-class accuracy, confusion matrices and counts vs truth.",
    )
    p.add_argument("--data", required=True, type=Path, help="dataset folder written by `simulate`")
    p.add_argument("--method", nargs="+", choices=["networks", "classical", "fcn"], default=["networks", "classical"],
                   help="methods to score (default: networks classical)")
    p.add_argument("--fcn", type=Path, default=None,
                   help="FCN baseline weights for --method fcn (default: shipped; retrain with `tmd-defects train-fcn`)")
    p.add_argument("--report", type=Path, default=None, help="Markdown report file (default: print)")
    p.add_argument("--title", default=None, help="report title")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--detector", type=Path, default=None, help="detector weights (default: shipped)")
    p.add_argument("--classifier", default=None,
                   help="classifier weights, or a shipped one by name: resnet18 (default), small")
    _add_hexagons_option(p)
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    from .evaluation import dataset_material, evaluate_dataset, format_report

    methods = {}
    if "networks" in args.method:
        from .pipeline import analyze
        from .classification import load_classifier
        from .detection import load_detector

        det = load_detector(args.detector, device=args.device)
        clf = load_classifier(args.classifier, device=args.device)
        options = [f"{k} {v}" for k, v in (("classifier", args.classifier), ("hexagons", args.hexagons))
                   if v not in (None, "frame")]
        methods["2DIP-Net (ours" + "".join(f"; {o}" for o in options) + ")"] = lambda img, t: analyze(
            img, t.pixel_size, t.material, detector=det, classifier=clf, hexagons=args.hexagons
        )
    if "classical" in args.method:
        from .classical import analyze_classical

        methods["classical reference"] = lambda img, t: analyze_classical(img, t.pixel_size, t.material)
    if "fcn" in args.method:
        from .fcn import FCNSegmenter, analyze_fcn

        seg = FCNSegmenter.load(args.fcn, device=args.device)
        methods["FCN baseline"] = lambda img, t: analyze_fcn(img, t.pixel_size, t.material, seg)
    scores = evaluate_dataset(args.data, methods, limit=args.limit, progress=progress_printer("evaluate"))
    cmd = "tmd-defects " + shlex.join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("tmd-defects") else ""
    report = format_report(args.title or f"Evaluation on {args.data.name}", scores,
                           material=dataset_material(args.data, args.limit), command=cmd)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report)
        print(f"wrote {args.report}")
    else:
        print(report)
    return 0


# --------------------------------------------------------------------------- train-fcn
def _add_train_fcn(sub) -> None:
    p = sub.add_parser(
        "train-fcn",
        help="train the FCN (U-Net column segmentation) baseline of the paper's comparison",
        description="Simulate a pool of training crops and train the U-Net baseline; writes "
        "weights and a JSON card.",
    )
    p.add_argument("--out", required=True, type=Path, help="weights file (.pt)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--pool", type=int, default=1500, help="simulated training crops")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=_run_train_fcn)


def _run_train_fcn(args) -> int:
    from .fcn import train_fcn

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    path = train_fcn(args.out, steps=args.steps, batch=args.batch, pool=args.pool, seed=args.seed,
                     log=lambda m: print(m, flush=True))
    print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- classifier
def _add_train_classifier(sub) -> None:
    from .datasets import PRESETS

    p = sub.add_parser(
        "train-classifier",
        help="train CNN-2 (unit-cell defect classifier) on simulated crops",
        description="Train the unit-cell classifier (ResNet-18, or --arch small: a six-layer CNN, "
        "optionally distilled from --teacher). Training crops come from "
        "freshly simulated images (default; class-balanced, box jitter, intensity "
        "augmentation), from simulated datasets (--data) and/or a corrections folder "
        "(--corrections; format in the napari_tmd_defects.classification docstring). "
        "Writes OUT (weights, float16), OUT with .json (card), OUT with .ckpt "
        "(checkpoint, for --resume) and the validation confusion matrix "
        "(OUT_confusion.png / .json).",
    )
    p.add_argument("--out", required=True, type=Path, help="weights file to write (e.g. classifier.pt)")
    p.add_argument("--channels", type=int, choices=[1, 2], default=2,
                   help="2: X-column half + M-column half (default); 1: whole cell")
    p.add_argument("--input-size", type=int, default=32, help="crop side S in px (default 32)")
    p.add_argument("--stem", choices=["standard", "small"], default="standard",
                   help="ResNet stem: standard 7x7/2 + max-pool (default) or small 3x3/1")
    p.add_argument("--arch", choices=["resnet18", "small"], default="resnet18",
                   help="network: resnet18 (default) or small (six convolutions, ~14x fewer multiply-adds)")
    p.add_argument("--teacher", type=Path, default=None,
                   help="classifier weights to distil (soft labels of its logits plus the true labels)")
    p.add_argument("--distill-temperature", type=float, default=4.0,
                   help="softmax temperature of the distillation loss (default 4)")
    p.add_argument("--distill-alpha", type=float, default=0.7,
                   help="weight of the distillation loss; 1 - alpha on the cross-entropy (default 0.7)")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps (default 3000)")
    p.add_argument("--epochs", type=float, default=None,
                   help="alternative to --steps: passes over the training crops")
    p.add_argument("--batch-size", type=int, default=128, help="crops per step (default 128)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, AdamW one-cycle (default 2e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of data generation and training (default 0)")
    p.add_argument("--material", default="MoTe2", help="MoTe2 (default), MoS2, MoSe2, WS2, WSe2")
    p.add_argument("--n-per-class", type=int, default=4000,
                   help="simulated training crops per class (default 4000; 0 = none)")
    p.add_argument("--preset", nargs="+", default=["paper", "realistic"],
                   choices=list(PRESETS), help="imaging presets to draw from")
    p.add_argument("--pixel-size", type=float, nargs=2, default=[0.03, 0.18], metavar=("LOW", "HIGH"),
                   help="Å/px range of simulated images (log-uniform; default 0.03 0.18)")
    p.add_argument("--cache", type=Path, default=None,
                   help=".npz file of the simulated crops: read if it exists, else written (crops of "
                        "--matched-materials go next to it, as CACHE_<material>_n<per class>.npz)")
    p.add_argument("--data", type=Path, nargs="+", default=None,
                   help="simulated dataset folder(s) (tmd-defects simulate) to add")
    p.add_argument("--data-repeats", type=int, default=3,
                   help="passes over --data with new box jitter and augmentation (default 3)")
    p.add_argument("--matched-materials", nargs="+", default=None, metavar="MATERIAL",
                   help="also train on simulated crops of these materials, contrast-matched to --material as "
                        "analyze shows them to the networks (e.g. MoS2 WS2 MoSe2 WSe2)")
    p.add_argument("--matched-per-class", type=int, default=1500,
                   help="crops per class for each --matched-materials material (default 1500)")
    p.add_argument("--corrections", type=Path, default=None, help="corrections folder to add")
    p.add_argument("--corrections-repeats", type=int, default=20,
                   help="copies of each corrected cell (with box jitter where boxes are given; default 20)")
    p.add_argument("--val-data", type=Path, default=None,
                   help="validation dataset folder (default: simulated with --val-seed)")
    p.add_argument("--val-per-class", type=int, default=300, help="simulated validation crops per class")
    p.add_argument("--val-seed", type=int, default=100001, help="seed of the simulated validation crops")
    p.add_argument("--jitter", type=float, default=0.07,
                   help="box-edge jitter as a fraction of the box size (default 0.07)")
    p.add_argument("--no-augment", action="store_true", help="no intensity augmentation")
    p.add_argument("--init", type=Path, default=None, help="start from these weights (fine-tuning)")
    p.add_argument("--resume", action="store_true", help="continue from OUT's .ckpt checkpoint")
    p.add_argument("--time-limit", type=float, default=None, help="stop after this many minutes")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.set_defaults(func=_run_train_classifier)


def _simulated_crops(args, n_per_class, seed, variant, label):
    from .classification import CropSet, simulate_crops

    cache = args.cache if label == "train" else None
    if cache is not None and cache.exists():
        cs = CropSet.load(cache)
        if cs.x.shape[1:] != (variant[1], variant[0], variant[0]):
            raise ValueError(f"{cache} holds crops of shape {cs.x.shape[1:]}, not for "
                             f"--channels {variant[1]} --input-size {variant[0]}")
        print(f"loaded {len(cs)} {label} crops from {cache}")
        return cs
    cs = simulate_crops(n_per_class, [variant], seed=seed, presets=args.preset,
                        pixel_size=tuple(args.pixel_size), augment=not args.no_augment,
                        jitter=args.jitter, material=args.material,
                        progress=progress_printer(f"simulate {label} crops"))[variant]
    if cache is not None:
        cs.save(cache)
        print(f"wrote {len(cs)} {label} crops to {cache}")
    return cs


def _run_train_classifier(args) -> int:
    import torch

    from .classification import (
        CropSet,
        accuracy_summary,
        confusion_matrix,
        crops_from_corrections,
        crops_from_dataset,
        make_card,
        predict_crops,
        save_classifier,
        save_confusion_png,
        train_classifier,
    )
    from .materials import get_material
    from .runtime import load_weights

    if args.threads:
        torch.set_num_threads(args.threads)
    variant = (args.input_size, args.channels)
    parts = []
    if args.n_per_class > 0:
        parts.append(_simulated_crops(args, args.n_per_class, args.seed, variant, "train"))
    for k, other in enumerate(args.matched_materials or []):
        from .classification import simulate_crops

        mcache = args.cache.with_name(f"{args.cache.stem}_{other}_n{args.matched_per_class}.npz") if args.cache else None
        if mcache is not None and mcache.exists():
            parts.append(CropSet.load(mcache))
            print(f"loaded {len(parts[-1])} {other} crops from {mcache}")
            continue
        parts.append(simulate_crops(args.matched_per_class, [variant], seed=args.seed + 1000 + k, presets=args.preset,
                                    pixel_size=tuple(args.pixel_size), augment=not args.no_augment,
                                    jitter=args.jitter, material=other, match_to=args.material,
                                    progress=progress_printer(f"simulate {other} crops"))[variant])
        if mcache is not None:
            parts[-1].save(mcache)
    for d in args.data or []:
        parts.append(crops_from_dataset(d, [variant], jitter=args.jitter, repeats=args.data_repeats,
                                        augment=not args.no_augment, seed=args.seed,
                                        progress=progress_printer(f"crops {d.name}"))[variant])
    if args.corrections is not None:
        parts.append(crops_from_corrections(args.corrections, [variant], material=args.material, jitter=args.jitter,
                                            repeats=args.corrections_repeats, seed=args.seed)[variant])
    if not parts:
        raise ValueError("no training data: give --n-per-class > 0, --data or --corrections")
    train = parts[0] if len(parts) == 1 else CropSet.concat(parts)
    if args.val_data is not None:
        val = crops_from_dataset(args.val_data, [variant], progress=progress_printer("validation crops"))[variant]
    else:
        val = _simulated_crops(args, args.val_per_class, args.val_seed, variant, "validation")
    steps = args.steps
    if args.epochs is not None:
        steps = max(1, int(round(args.epochs * len(train) / args.batch_size)))
    init = load_weights(args.init)[0] if args.init is not None else None
    teacher = None
    if args.teacher is not None:
        from .classification import load_classifier

        teacher_clf = load_classifier(args.teacher, device="cpu")
        teacher = teacher_clf._inference_model()
    names = get_material(args.material).class_names
    counts = ", ".join(f"{n} {c}" for n, c in zip(names, train.counts))
    print(f"training on {len(train)} crops ({counts}); validation {len(val)}; {steps} steps of {args.batch_size}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model, hist = train_classifier(
        train, val, stem=args.stem, arch=args.arch, teacher=teacher,
        distill_temperature=args.distill_temperature, distill_alpha=args.distill_alpha, steps=steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        init_state=init, augment=not args.no_augment, checkpoint=args.out.with_suffix(".ckpt"),
        resume=args.resume, time_limit_s=None if args.time_limit is None else 60 * args.time_limit,
        log=lambda m: print(m, flush=True),
    )
    cm = confusion_matrix(val.y, predict_crops(model, val.x).argmax(1))
    summ = accuracy_summary(cm, names)
    training = {
        "command": "tmd-defects " + shlex.join(args.argv),
        "n_train": len(train), "train_counts": train.counts.tolist(), "data": [p.meta for p in parts],
        "steps": hist.get("steps_done", steps), "batch_size": args.batch_size, "lr": args.lr,
        "optimizer": "AdamW one-cycle, weight decay 5e-4", "loss": "cross-entropy",
        "seed": args.seed, "seconds": round(hist["seconds"], 1), "init": str(args.init) if args.init else None,
        "jitter": args.jitter, "augment": not args.no_augment,
    }
    if teacher is not None:
        import hashlib

        training["loss"] = (f"distillation: {args.distill_alpha} * T^2 * KL(teacher || student at T = "
                            f"{args.distill_temperature}) + {1 - args.distill_alpha:g} * cross-entropy; teacher "
                            "logits on the training crops before the batch augmentation")
        training["teacher"] = {"weights": args.teacher.name, "model": teacher_clf.card.get("model"),
                               "sha256": hashlib.sha256(args.teacher.read_bytes()).hexdigest()}
    card = make_card(args.channels, args.input_size, args.stem, args.material, training,
                     {"validation": {k: summ[k] for k in ("overall", "per_class", "n")}}, arch=args.arch)
    save_classifier(args.out, model, card)
    stem = args.out.with_suffix("")
    save_confusion_png(cm, names, f"{stem}_confusion.png", f"validation, {len(val)} cells")
    (Path(f"{stem}_confusion.json")).write_text(json.dumps(summ, indent=1))
    per = ", ".join(f"{k} {100 * v:.1f}%" for k, v in summ["per_class"].items())
    print(f"validation accuracy {100 * summ['overall']:.2f}% ({per})")
    print(f"wrote {args.out}, {args.out.with_suffix('.json')}, {stem}_confusion.png/.json")
    return 0


def _fmt(v) -> str:
    return "–" if v is None else f"{float(v):.1f}"


def _add_evaluate_classifier(sub) -> None:
    p = sub.add_parser(
        "evaluate-classifier",
        help="accuracy and confusion matrices of CNN-2 on simulated datasets",
        description="Classify every ground-truth cell of each simulated dataset with the full "
        "inference path (normalisation, crops, model) and write a Markdown report with "
        "per-class accuracies and confusion matrices (PNG + numbers).",
    )
    p.add_argument("--weights", type=Path, default=None, help="weights file (default: the shipped model)")
    p.add_argument("--data", type=Path, nargs="+", required=True, help="dataset folder(s) (tmd-defects simulate)")
    p.add_argument("--jitter", type=float, nargs="+", default=[0.0],
                   help="box-edge jitter(s), fraction of the box size (default 0)")
    p.add_argument("--report", type=Path, required=True, help="Markdown report to write")
    p.add_argument("--max-images", type=int, default=None, help="use the first N images of each dataset")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--update-card", action="store_true",
                   help="also store the scores in the weights file's card (and its .json)")
    p.set_defaults(func=_run_evaluate_classifier)


def _run_evaluate_classifier(args) -> int:
    import platform

    import torch

    from .classification import evaluate_dataset, load_classifier, save_confusion_png
    from .runtime import default_weights

    if args.threads:
        torch.set_num_threads(args.threads)
    clf = load_classifier(args.weights, device=args.device)
    wname = args.weights.name if args.weights else default_weights("classifier").name
    img_dir = args.report.parent / "img"
    lines = [
        "# CNN-2 evaluation",
        "",
        f"Command: `tmd-defects {' '.join(args.argv)}`",
        "",
        f"Model `{wname}`: {clf.card.get('input', '')}, {clf.input_size}x{clf.input_size} px, "
        f"stem {clf.card.get('stem', 'standard')}. Device {clf.device}, torch {torch.__version__}, "
        f"{platform.machine()}, {torch.get_num_threads()} threads.",
        "",
    ]
    names = clf.class_names
    rows = []
    for d in args.data:
        for j in args.jitter:
            res = evaluate_dataset(clf, d, jitter=j, max_images=args.max_images,
                                   progress=progress_printer(f"{d.name} jitter {j}"))
            tag = f"{d.name}_j{int(round(100 * j))}"
            png = save_confusion_png(res["confusion"], names, img_dir / f"{args.report.stem}_{tag}.png",
                                     f"{d.name}, jitter {j:g}, {res['n']} cells")
            rows.append((d.name, j, res, png))
            print(f"{d.name} jitter {j:g}: {100 * res['overall']:.2f}% of {res['n']} cells")
    lines += ["| dataset | box jitter | cells | overall | " + " | ".join(names) + " |",
              "|---|---:|---:|---:|" + "---:|" * len(names)]
    for name, j, res, _ in rows:
        lines.append(f"| {name} | ±{100 * j:.0f}% | {res['n']} | {100 * res['overall']:.2f}% | "
                     + " | ".join(f"{100 * v:.2f}%" for v in res["per_class"].values()) + " |")
    for name, j, res, png in rows:
        lines += ["", f"## {name}, box jitter ±{100 * j:.0f}%", "",
                  f"![confusion matrix]({png.relative_to(args.report.parent).as_posix()})", "",
                  "Rows: true class; columns: predicted class.", "",
                  "| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for i, r in enumerate(res["confusion"]):
            lines.append(f"| {names[i]} | " + " | ".join(str(v) for v in r) + " |")
        bad = [im for im in res["per_image"] if im["errors"]]
        lines += ["", f"Images with errors: {len(bad)} of {res['n_images']}.", ""]
        if bad:
            lines += ["| image | cells | errors | Å/px | Poisson λ | Gaussian μ |", "|---|---:|---:|---:|---:|---:|"]
            lines += [f"| {im['image']} | {im['cells']} | {im['errors']} | {im['pixel_size']:.3f} | "
                      f"{_fmt(im['poisson_lambda'])} | {_fmt(im['gaussian_mu'])} |" for im in bad]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.report}")
    if args.update_card:
        from .runtime import load_weights, save_weights

        wpath = args.weights or default_weights("classifier")
        sd, card = load_weights(wpath)
        scores = card.setdefault("scores", {})
        for name, j, res, _ in rows:
            scores[f"{name}, box jitter {j:g}"] = {
                "overall": res["overall"], "per_class": res["per_class"], "n": res["n"],
                "data": "held-out simulated dataset (tmd-defects simulate), ground-truth boxes",
            }
        save_weights(wpath, sd, card)
        print(f"stored the scores in the card of {wpath}")
    return 0


# --------------------------------------------------------------------------- detector
def _add_train_detector(sub) -> None:
    p = sub.add_parser(
        "train-detector",
        help="train CNN-1 (hexagon detector, or the direct unit-cell baseline)",
        description="Train the Faster R-CNN + MobileNetV2 detector from scratch. Training images "
        "are simulated on the fly unless --data names a dataset (tmd-defects simulate). Writes "
        "OUT (weights + JSON card) after every epoch and a checkpoint OUT.ckpt every few minutes.",
    )
    p.add_argument("--out", required=True, type=Path, help="weights file to write (e.g. detector.pt)")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset folder to train on (default: simulate training images on the fly)")
    p.add_argument("--val", type=Path, nargs="+", default=None, help="validation dataset folder(s)")
    p.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    p.add_argument("--steps-per-epoch", type=int, default=500, help="Adam steps per epoch (default 500)")
    p.add_argument("--config", choices=["slim", "paper"], default="slim",
                   help="slim (default, shipped) or paper (full MobileNetV2, 1024-d head)")
    p.add_argument("--target", choices=["hexagon", "cell"], default="hexagon",
                   help="hexagon (CNN-1, default) or cell (direct unit-cell detection baseline)")
    p.add_argument("--batch", type=int, default=2, help="crops per step (default 2)")
    p.add_argument("--crop", type=int, default=320, help="training crop size in px at the detector's sampling")
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (default 1e-3)")
    p.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from OUT.ckpt")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="checkpoint interval (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.set_defaults(func=_run_train_detector)


def _run_train_detector(args) -> int:
    import torch

    from .detection import train_detector

    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, flush=True)

    card = train_detector(
        args.out, data=args.data, val=args.val, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, config=args.config, target=args.target,
        seed=args.seed, batch=args.batch, crop=args.crop, lr=args.lr, lr_schedule=args.lr_schedule,
        resume=args.resume, checkpoint_every_s=60.0 * args.checkpoint_minutes, device=args.device, log=log,
    )
    tr = card["training"]
    print(f"trained {tr['steps']} steps in {tr['wall_time_s'] / 60:.1f} min; wrote {args.out}")
    return 0


def _add_evaluate_detector(sub) -> None:
    p = sub.add_parser(
        "evaluate-detector",
        help="reproduce the paper's unit-cell detection study on simulated test sets",
        description="Detect hexagons in held-out simulated datasets, cast them into unit cells and "
        "score hexagons, cells (casting vs raw casting vs direct detection), the alpha/beta IoU grid, "
        "duplicates, recall and precision. Writes a Markdown report (and JSON next to it).",
    )
    p.add_argument("--data", required=True, type=Path, nargs="+", help="dataset folder(s) (tmd-defects simulate)")
    p.add_argument("--weights", type=Path, default=None, help="hexagon detector (default: the shipped one)")
    p.add_argument("--direct-weights", type=Path, default=None,
                   help="direct unit-cell detector for the baseline (train-detector --target cell)")
    p.add_argument("--report", type=Path, default=Path("docs/reports/detection.md"), help="Markdown report to write")
    p.add_argument("--max-images", type=int, default=None, help="use at most N images per dataset")
    p.add_argument("--notes", type=Path, default=None, help="Markdown file appended to the report")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.set_defaults(func=_run_evaluate_detector)


def _run_evaluate_detector(args) -> int:
    import torch

    from .detection import evaluate_detector, write_detection_report

    if args.threads:
        torch.set_num_threads(args.threads)
    for d in args.data:
        if not (d / "dataset.json").exists():
            raise FileNotFoundError(f"no dataset index at {d / 'dataset.json'} (run `tmd-defects simulate --out DIR`)")
    from .runtime import WeightsError

    try:
        res = evaluate_detector(args.data, weights=args.weights, direct_weights=args.direct_weights,
                                max_images=args.max_images, device=args.device,
                                progress=progress_printer("evaluate"))
    except WeightsError as exc:  # names the file
        raise ValueError(str(exc)) from exc
    parts = ["tmd-defects evaluate-detector", "--data", *(f"DATA/{d.name}" for d in args.data)]
    if args.weights:
        parts += ["--weights", args.weights.name]
    if args.direct_weights:
        parts += ["--direct-weights", args.direct_weights.name]
    if args.max_images:
        parts += ["--max-images", str(args.max_images)]
    if args.notes:
        parts += ["--notes", args.notes.name if args.notes.is_absolute() else str(args.notes)]
    if args.threads:
        parts += ["--threads", str(args.threads)]
    parts += ["--report", args.report.name if args.report.is_absolute() else str(args.report)]
    command = " ".join(parts)
    notes = args.notes.read_text() if args.notes else None
    write_detection_report(res, args.report, command, notes)
    args.report.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    for d in res["datasets"]:
        ca = d["casting"]
        print(f"{d['name']}: cells recall {ca['recall']:.4f} precision {ca['precision']:.4f} "
              f"duplicates {ca['duplicate_rate']:.4f}")
    print(f"wrote {args.report}")
    return 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tmd-defects",
        description="Find and classify point defects in HAADF-STEM images of 2D TMD monolayers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        _add_simulate, _add_demo, _add_analyze, _add_evaluate, _add_train_detector,
        _add_evaluate_detector, _add_train_classifier, _add_evaluate_classifier, _add_train_fcn,
    ):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .runtime import WeightsError

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, OSError, ImportError, WeightsError) as exc:
        print(f"tmd-defects {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tmd-defects {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
