"""``tmd-defects``: command-line interface (a thin layer over the library).

Run ``tmd-defects --help`` or ``tmd-defects COMMAND --help``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from . import __version__

__all__ = ["main", "progress_printer"]


def progress_printer(label: str, stream=None) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that draws a one-line bar on stderr."""
    stream = stream or sys.stderr
    t0 = time.perf_counter()

    def cb(done: int, total: int) -> None:
        frac = done / total if total else 1.0
        bar = "#" * int(30 * frac)
        el = time.perf_counter() - t0
        stream.write(f"\r{label} [{bar:<30}] {done}/{total} {el:6.1f} s")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return cb


def _range_or_value(values: Sequence[float] | None):
    if values is None:
        return None
    return values[0] if len(values) == 1 else (values[0], values[1])


# --------------------------------------------------------------------------- simulate
def _add_simulate(sub) -> None:
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
    p.add_argument("--material", default="MoTe2", help="MoTe2 (default), MoS2, MoSe2, WS2, WSe2")
    p.add_argument("--preset", default="paper", choices=["paper", "realistic", "clean"],
                   help="imaging conditions: paper (default), realistic (randomised, like real frames), clean")
    p.add_argument("--pixel-size", type=float, nargs="+", default=[0.12], metavar="A_PER_PX",
                   help="Å/px, a value or a LOW HIGH range (default 0.12)")
    p.add_argument("--rotation", default="0", help="in-plane rotation in degrees, or 'random'")
    p.add_argument("--defect-fraction", type=float, nargs="+", default=[0.1],
                   help="fraction of defective cells, a value or a LOW HIGH range (default 0.1)")
    p.add_argument("--previews", type=int, default=4, help="overlay PNGs for the first N images")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.set_defaults(func=_run_simulate)


def _run_simulate(args) -> int:
    from .datasets import generate_dataset

    size = tuple(args.size) if len(args.size) == 2 else (args.size[0], args.size[0])
    rotation = args.rotation if args.rotation == "random" else float(args.rotation)
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
        n_preview=args.previews,
        workers=args.workers,
        progress=progress_printer("simulate"),
    )
    print(f"wrote {args.n} images with ground truth to {args.out} ({time.perf_counter() - t0:.1f} s); index: {path}")
    return 0


# --------------------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run on the built-in sample data and write the outputs",
        description="Simulate the built-in defective MoTe2 sample and write it (TIFF), its "
        "ground truth (JSON) and a preview PNG to OUT.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from .datasets import sample_image
    from .io import write_tiff
    from .visualization import save_overlay

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sim = sample_image(seed=args.seed)
    t = sim.truth
    write_tiff(out / "sample.tif", sim.image, t.pixel_size)
    t.save(out / "sample_truth.json")
    save_overlay(
        out / "sample_truth.png", sim.image, boxes=t.cell_box, labels=t.cell_label,
        points={"X": t.cell_x_site, "M": t.cell_m_site}, material=t.material,
    )
    counts = ", ".join(f"{k} {v}" for k, v in t.counts().items())
    print(f"sample: {t.shape[1]}x{t.shape[0]} px at {t.pixel_size} Å/px, {t.n_cells} cells ({counts}), "
          f"area {t.area_nm2:.1f} nm²")
    print(f"wrote {out / 'sample.tif'}, {out / 'sample_truth.json'}, {out / 'sample_truth.png'}")
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
    for add in (_add_simulate, _add_demo, _add_train_detector, _add_evaluate_detector):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"tmd-defects {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tmd-defects {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
