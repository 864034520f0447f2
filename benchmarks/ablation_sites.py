"""What each stage of the site pipeline contributes: an ablation on simulated and real frames.

    python benchmarks/ablation_sites.py --data data/structure data/realistic \
        [--real FOLDER ...] [--out docs/reports/ablation_sites.md]

Variants (the classifier is the shipped CNN-2 in all of them):

* ``full``: columns -> local lattice -> domains -> sites with local gap filling -> cells,
  CNN-1 hexagons checking each domain's hollow sites, column states checked against the
  image;
* ``no detector``: the same without CNN-1 (cells have no hexagon support; the hollow sites
  come from the intensities alone);
* ``random detector``: CNN-1 with untrained (random) weights: its garbage must be caught
  (a warning, no influence on the cells);
* ``columns only``: no local gap filling: only sites where a column was found (missing
  columns leave their cells out);
* ``lattice only``: every site cast from one lattice fitted to the whole frame (the
  largest domain's), i.e. what the pipeline did before sites came from the image: global
  completion, one domain, no boundaries.

Simulated sets are scored against their ground truth (:func:`~.evaluation.score_result`);
real frames by the plausibility measures of ``benchmarks/real_frames.py``.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VARIANTS = ["full", "no detector", "random detector", "columns only", "lattice only"]


def random_detector():
    """CNN-1 with the shipped architecture and card but untrained weights."""
    import torch

    from napari_tmd_defects.detection import CONFIGS, HexagonDetector, build_detector, load_detector

    shipped = load_detector(device="cpu")
    torch.manual_seed(0)
    cfg = shipped.card["config"]
    model = build_detector({k: cfg[k] for k in CONFIGS["slim"]}, target=shipped.card.get("target", "hexagon"))
    card = dict(shipped.card, name="random (untrained) detector")
    det = HexagonDetector(model.eval(), card, torch.device("cpu"))
    det.score_threshold = 0.05  # untrained scores are low: let its boxes through
    return det


def lattice_only_model(frame):
    """One lattice for the whole frame: the largest domain's mean basis and roles, every
    X and M position of the image cast from it (no local sites, no boundaries)."""
    from napari_tmd_defects.lattice.cells import build_cells
    from napari_tmd_defects.sites import ROLE_M, ROLE_X, SiteModel, Sites

    state = frame.state
    if not state.domains:
        return None
    main = max(state.domains, key=lambda d: int(np.sum(state.domain == d.id)))
    sel = np.flatnonzero(state.domain == main.id)
    g = state.graph
    basis = main.basis
    # origin: least squares of the found columns on the domain's indices
    nm = g.nm[sel].astype(float)
    origin = np.median(g.xy[sel] - nm @ basis.T, axis=0)
    h, w = state.shape
    inv = np.linalg.inv(basis)
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], float)
    f = (corners - origin) @ inv.T
    lo, hi = np.floor(f.min(axis=0)) - 1, np.ceil(f.max(axis=0)) + 1
    n_, m_ = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    keys = np.stack([n_.ravel(), m_.ravel()], axis=1).astype(np.int64)
    cls = np.mod(keys[:, 0] - keys[:, 1], 3)
    role = np.where(cls == main.x_class, ROLE_X, np.where(cls == main.m_class, ROLE_M, 2))
    keys, role = keys[role != 2], role[role != 2]
    xy = origin + keys.astype(float) @ basis.T
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)
    keys, role, xy = keys[inside], role[inside], xy[inside]
    k = len(xy)
    main_id = main.id
    sites = Sites(xy=xy, role=role, domain=np.full(k, main_id), nm=keys, placed=np.zeros(k, bool),
                  height=state.work.sample(xy), boundary=np.zeros(k, bool),
                  basis=np.broadcast_to(basis, (k, 2, 2)).copy(), fitted=xy.copy())
    # the domain list keeps its position so that domain ids index it
    cells = build_cells(sites, state.domains, state.shape)
    a_px = math.sqrt(2.0 * math.sqrt(3.0) * abs(np.linalg.det(basis)))
    return SiteModel(sites=sites, domains=state.domains, cells=cells, a_px=a_px, n_columns=len(state.columns))


def run_variant(variant: str, image, pixel_size, material, det, rdet, clf):
    import napari_tmd_defects.lattice.cells as LC
    from napari_tmd_defects import pipeline as P

    if variant == "full":
        return P.analyze(image, pixel_size, material, detector=det, classifier=clf)
    if variant == "no detector":
        return P.analyze(image, pixel_size, material, use_detector=False, classifier=clf)
    if variant == "random detector":
        return P.analyze(image, pixel_size, material, detector=rdet, classifier=clf)
    if variant == "columns only":
        rounds = LC.build_sites.__kwdefaults__["rounds"]
        LC.build_sites.__kwdefaults__["rounds"] = 0  # no gap filling
        try:
            return P.analyze(image, pixel_size, material, use_detector=False, classifier=clf)
        finally:
            LC.build_sites.__kwdefaults__["rounds"] = rounds
    if variant == "lattice only":
        orig = P.complete_sites

        def global_sites(frame):
            orig(frame)  # pixel size, warnings
            model = lattice_only_model(frame)
            if model is not None:
                frame.model = model

        P.complete_sites = global_sites
        try:
            return P.analyze(image, pixel_size, material, use_detector=False, classifier=clf)
        finally:
            P.complete_sites = orig
    raise ValueError(variant)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", type=Path, default=[])
    ap.add_argument("--real", nargs="*", type=Path, default=[])
    ap.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    ap.add_argument("--limit", type=int, default=None, help="frames per simulated set")
    ap.add_argument("--out", type=Path, default=Path("docs/reports/ablation_sites.md"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from real_frames import brighter_share, coverage, frames_in

    from napari_tmd_defects.classification import load_classifier
    from napari_tmd_defects.datasets import load_dataset
    from napari_tmd_defects.detection import load_detector
    from napari_tmd_defects.evaluation import aggregate, score_result
    from napari_tmd_defects.io import read_image

    det, clf = load_detector(device="cpu"), load_classifier(device="cpu")
    rdet = random_detector()
    sim_rows, real_rows = [], []
    for data in args.data:
        items = load_dataset(data)[: args.limit] if args.limit else load_dataset(data)
        for variant in args.variants:
            scores, caught, t0 = [], 0, time.perf_counter()
            for item in items:
                image, truth = item.load()
                res = run_variant(variant, image, truth.pixel_size, truth.material, det, rdet, clf)
                scores.append(score_result(res, truth))
                caught += int(res.checks.get("detector_consistent") is False)
            a = aggregate(scores)
            sim_rows.append((data.name, variant, a, caught, len(items), time.perf_counter() - t0))
            print(data.name, variant, f"recall {a.recall:.4f} precision {a.precision:.4f} "
                  f"acc {a.class_accuracy:.4f} sites {np.round(a.site_recall(), 3)} {np.round(a.site_precision(), 3)} "
                  f"boundary {a.boundary_recall:.3f}", flush=True)
    frames = [f for folder in args.real for f in frames_in(folder)]
    for path, mat, ps in frames:
        image, meta = read_image(path)
        for variant in args.variants:
            res = run_variant(variant, image, ps if ps is not None else meta.get("pixel_size_A"), mat, det, rdet, clf)
            counts = res.counts()
            n_cls = sum(counts.values())
            frac = (n_cls - counts.get("Perfect", 0)) / n_cls if n_cls else float("nan")
            real_rows.append((path.name, variant, res.n_cells, coverage(res, image), frac,
                              res.checks.get("largest_same_class_cluster", 0), brighter_share(res),
                              res.checks.get("detector_consistent")))
            print(path.name, variant, res.n_cells, f"{frac:.3f}", flush=True)
    write_report(args, sim_rows, real_rows)
    print(f"wrote {args.out}")
    return 0


def _pct(x: float) -> str:
    return "—" if x != x else f"{100 * x:.2f} %"


def write_report(args, sim_rows, real_rows) -> None:
    cmd = ("python benchmarks/ablation_sites.py --data " + " ".join(str(d) for d in args.data)
           + (" --real FOLDER" if args.real else "") + (f" --limit {args.limit}" if args.limit else ""))
    lines = ["# Ablation: what each stage of the site pipeline adds", "",
             f"Command: `{cmd}`", "",
             f"Hardware: {platform.machine()}, {args.threads} torch threads, Python {platform.python_version()}; "
             f"written {time.strftime('%Y-%m-%d')}.", "",
             (__doc__ or "").split("\n\n", 2)[2].split("Simulated sets")[0].strip(), ""]
    if sim_rows:
        lines += ["## Simulated sets (ground truth)", "",
                  "| set | variant | recall | precision | class accuracy | V_M sites (R / P) | V_X1 sites (R / P) | "
                  "V_X2 sites (R / P) | boundary recall | boundary precision | largest fake cluster | "
                  "detector caught | s / image |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, variant, a, caught, n, secs in sim_rows:
            rec, pre = a.site_recall(), a.site_precision()
            sites = [f"{_pct(r)} / {_pct(p)}" for r, p in zip(rec, pre)]
            lines.append(f"| {name} | {variant} | {_pct(a.recall)} | {_pct(a.precision)} | {_pct(a.class_accuracy)} | "
                         + " | ".join(sites) + f" | {_pct(a.boundary_recall)} | {_pct(a.boundary_precision)} | "
                         f"{a.largest_fake_cluster} | {caught}/{n} | {secs / max(n, 1):.2f} |")
        lines.append("")
    if real_rows:
        lines += ["## Real frames (no ground truth)", "",
                  "Defect fraction of the classified cells, largest same-class cluster, share of Perfect cells whose "
                  "physically brighter column is brighter at the reported sites (see "
                  "[real_frames.md](real_frames.md)).", "",
                  "| frame | variant | cells | coverage | defect fraction | cluster | brighter | detector consistent |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for name, variant, n, cov, frac, clu, br, dc in real_rows:
            lines.append(f"| {name} | {variant} | {n} | {cov:.2f} | {frac:.3f} | {clu} | {br:.2f} | "
                         f"{'—' if dc is None else dc} |")
        lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
