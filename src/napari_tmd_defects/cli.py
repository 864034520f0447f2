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


# --------------------------------------------------------------------------- analyze
def _add_analyze(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="find and classify the unit cells of images (one file, a folder, a glob, a batch)",
        description="Detect hexagons, cast unit cells and classify them. For each image write "
        "<name>_cells.csv, <name>_summary.json and <name>_overlay.png to OUT, plus "
        "batch_summary.csv. A file that cannot be analysed is reported and skipped.",
    )
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns (TIFF, PNG/JPEG, DM3/DM4, EMD, ...)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--pixel-size", type=float, default=None, metavar="A_PER_PX",
                   help="Å/px; default: from the file's metadata, else estimated from the lattice")
    p.add_argument("--material", default="MoTe2", help="MoTe2 (default), MoS2, MoSe2, WS2, WSe2")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--alpha", type=float, default=0.65, help="casting width ratio (default 0.65)")
    p.add_argument("--beta", type=float, default=0.5, help="casting height ratio (default 0.5)")
    p.add_argument("--no-classify", action="store_true", help="detect cells only (defect = unclassified)")
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay PNGs")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="dask.distributed scheduler address (tcp://host:8786) for large archives")
    p.add_argument("--detector", default=None, help="detector weights (default: shipped)")
    p.add_argument("--classifier", default=None, help="classifier weights (default: shipped)")
    p.set_defaults(func=_run_analyze)


def _run_analyze(args) -> int:
    from .batch import BatchOptions, run_batch

    if args.device.startswith("cuda"):
        from .runtime import resolve_device

        resolve_device(args.device)  # fail fast with a clear message
    opts = BatchOptions(
        out_dir=str(args.out), pixel_size=args.pixel_size, material=args.material, alpha=args.alpha,
        beta=args.beta, device=args.device, classify=not args.no_classify, detector=args.detector,
        classifier=args.classifier, overlay=not args.no_overlay,
    )
    bar = progress_printer("analyze")

    def report(o) -> None:
        sys.stderr.write("\r\033[K")
        if o.ok:
            counts = ", ".join(f"{n} {c}" for n, c in o.counts.items() if c) or "no classified cells"
            print(f"{Path(o.path).name}: {o.n_cells} cells, {o.area_nm2:.1f} nm² at {o.pixel_size:.4f} Å/px "
                  f"({o.pixel_size_source}); {counts}")
            for w in o.warnings:
                print(f"  note: {w}")
        else:
            print(f"{o.path}: skipped: {o.message}", file=sys.stderr)

    outcomes = run_batch(args.images, opts, workers=args.workers, scheduler=args.scheduler,
                         progress=bar, on_result=report)
    n_ok = sum(o.ok for o in outcomes)
    print(f"analysed {n_ok} of {len(outcomes)} images; results in {args.out} (batch_summary.csv)")
    return 0 if n_ok else 1


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
    p.add_argument("--fcn", type=Path, default=None, help="FCN baseline weights (for --method fcn)")
    p.add_argument("--report", type=Path, default=None, help="Markdown report file (default: print)")
    p.add_argument("--title", default=None, help="report title")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--detector", type=Path, default=None, help="detector weights (default: shipped)")
    p.add_argument("--classifier", type=Path, default=None, help="classifier weights (default: shipped)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    from .evaluation import evaluate_dataset, format_report

    methods = {}
    if "networks" in args.method:
        from .analysis import analyze
        from .classification import load_classifier
        from .detection import load_detector

        det = load_detector(args.detector, device=args.device)
        clf = load_classifier(args.classifier, device=args.device)
        methods["2DIP-Net (ours)"] = lambda img, t: analyze(
            img, t.pixel_size, t.material, detector=det, classifier=clf
        )
    if "classical" in args.method:
        from .classical import analyze_classical

        methods["classical reference"] = lambda img, t: analyze_classical(img, t.pixel_size, t.material)
    if "fcn" in args.method:
        from .fcn import FCNSegmenter, analyze_fcn

        if args.fcn is None:
            raise ValueError("--method fcn needs --fcn WEIGHTS (train them with `tmd-defects train-fcn`)")
        seg = FCNSegmenter.load(args.fcn, device=args.device)
        methods["FCN baseline"] = lambda img, t: analyze_fcn(img, t.pixel_size, t.material, seg)
    scores = evaluate_dataset(args.data, methods, limit=args.limit, progress=progress_printer("evaluate"))
    cmd = "tmd-defects " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("tmd-defects") else ""
    report = format_report(args.title or f"Evaluation on {args.data.name}", scores, command=cmd)
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


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tmd-defects",
        description="Find and classify point defects in HAADF-STEM images of 2D TMD monolayers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_simulate, _add_demo, _add_analyze, _add_evaluate, _add_train_fcn):
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
    except (ValueError, FileNotFoundError, OSError, ImportError) as exc:
        print(f"tmd-defects {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tmd-defects {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
