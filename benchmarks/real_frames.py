"""The pipeline on real (experimental) frames: plausibility without ground truth.

    python benchmarks/real_frames.py FOLDER [FOLDER ...] [--out docs/reports/real_frames.md]
        [--overlays DIR] [--variants full columns_only no_detector]

Each folder holds image files (TIFF, PNG/JPEG, DM3/DM4, NPY, ...) and optionally a
``frames.csv`` with columns ``file,material[,pixel_size]``; without a row, the material
is read from the file name (``MoTe2_...``, ``WSe2...``; alloys and doped frames take the
host: ``WSSe`` -> WSe2, ``VMoS2`` -> MoS2) and the pixel size is estimated from the
lattice unless the file's metadata has one. Third-party frames are not part of the
project: the benchmark takes them from the command line and writes overlays only where
told (``--overlays``).

Per frame the report gives what a microscopist would check first:

* **coverage**: the analysed area (cells, incl. boundary cells) over the crystal area the
  FFT lattice implies (image minus vacuum, minus half a cell at the border);
* **defect fraction** of the classified cells and the **largest cluster** of adjacent
  cells of one defect class (a whole region of invented vacancies shows here);
* **brighter sublattice**: the share of Perfect cells, both columns found, in which the column of
  the sublattice that is physically brighter (Z^1.7: Te2 > Mo, Se2 > Mo; W > Se2, Mo > S2,
  W > S2) is the brighter one at the reported sites;
* domains, boundary length, cells placed from their neighbours, time, warnings.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".npy", ".dm3", ".dm4", ".emd", ".ser", ".mrc")
#: file-name prefixes -> material (the first that matches)
NAME_RULES = [
    ("MoTe2", "MoTe2"), ("MoSe2", "MoSe2"), ("VMoS2", "MoS2"), ("MoS2", "MoS2"), ("WSe2", "WSe2"),
    ("WS2", "WS2"), ("WSSe", "WSe2"), ("VWSe2", "WSe2"), ("TiWSe2", "WSe2"), ("CrWSe2", "WSe2"),
    ("WSTe2", "WSe2"), ("MoWSSe", "WS2"),
]
VARIANTS = {
    "full": dict(),
    "no_detector": dict(use_detector=False),
}


def material_of(name: str) -> str | None:
    for prefix, mat in NAME_RULES:
        if name.startswith(prefix):
            return mat
    return None


def frames_in(folder: Path) -> list[tuple[Path, str, float | None]]:
    rows = {}
    table = folder / "frames.csv"
    if table.exists():
        with table.open() as fh:
            for r in csv.DictReader(fh):
                ps = r.get("pixel_size") or ""
                rows[r["file"]] = (r["material"], float(ps) if ps.strip() else None)
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in SUFFIXES:
            continue
        mat, ps = rows.get(p.name, (material_of(p.name), None))
        if mat is None:
            print(f"skipping {p.name}: material unknown (add it to frames.csv)", file=sys.stderr)
            continue
        out.append((p, mat, ps))
    return out


def brighter_share(res) -> float:
    """Share of the cells called Perfect (both columns found, off boundaries) where the
    physically brighter sublattice's column is the brighter one at the reported sites
    (in a cell with a vacancy the physically brighter column may have lost atoms)."""
    from napari_tmd_defects.lattice import x_brighter

    s = res.sites.sites if res.sites is not None else None
    if s is None or res.n_cells == 0:
        return float("nan")
    c = res.sites.cells
    ok = ~s.placed[c.x] & ~s.placed[c.m] & ~c.boundary & (np.asarray(res.labels) == 0)
    if not ok.any():
        return float("nan")
    hx, hm = s.height[c.x[ok]], s.height[c.m[ok]]
    return float(np.mean(hx > hm) if x_brighter(res.material) else np.mean(hm > hx))


def coverage(res, image: np.ndarray) -> float:
    """Analysed area (all cells) over the crystal area the FFT lattice implies."""
    from napari_tmd_defects.geometry import estimate_lattice

    lat = estimate_lattice(image)
    if lat is None or res.n_cells == 0:
        return float("nan")
    a = lat.a_px
    h, w = image.shape[:2]
    area = (h - a) * (w - a) * (1.0 - res.vacuum_fraction)
    return float(res.n_cells * math.sqrt(3) / 2 * a * a / max(area, 1.0))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/reports/real_frames.md"))
    ap.add_argument("--overlays", type=Path, default=None, help="write <frame>_overlay.png here")
    ap.add_argument("--variants", nargs="+", default=["full"], choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from napari_tmd_defects.classification import load_classifier
    from napari_tmd_defects.detection import load_detector
    from napari_tmd_defects.io import read_image
    from napari_tmd_defects.pipeline import analyze, column_ratio_range

    det, clf = load_detector(device="cpu"), load_classifier(device="cpu")
    frames = [f for folder in args.folders for f in frames_in(folder)]
    if args.overlays:
        args.overlays.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in args.variants:
        for path, mat, ps_hint in frames:
            image, meta = read_image(path)
            ps = ps_hint if ps_hint is not None else meta.get("pixel_size_A")
            t0 = time.perf_counter()
            res = analyze(image, ps, mat, detector=det, classifier=clf, **VARIANTS[variant])
            dt = time.perf_counter() - t0
            counts = res.counts()
            n_cls = sum(counts.values())
            frac = (n_cls - counts.get("Perfect", 0)) / n_cls if n_cls else float("nan")
            rows.append(dict(
                variant=variant, frame=path.name, material=mat, pixel_size=res.pixel_size,
                source=res.pixel_size_source, cells=res.n_cells, coverage=coverage(res, image),
                defect_fraction=frac, cluster=res.checks.get("largest_same_class_cluster", 0),
                brighter=brighter_share(res), domains=len(res.domains), boundary_nm=res.boundary_length_nm,
                boundary_cells=int(res.boundary.sum()), placed=int(np.sum(res.placed > 0)),
                detector=res.checks.get("hexagons_on_hollows"), polarity=res.checks.get("column_polarity"),
                ratio=res.checks.get("metal_chalcogen_ratio"), ratio_range=column_ratio_range(mat), seconds=dt, warnings=list(res.warnings),
            ))
            if args.overlays and variant == args.variants[0]:
                from PIL import Image

                Image.fromarray(res.overlay(image)).save(args.overlays / f"{path.stem}_overlay.png")
            r = rows[-1]
            print(f"{variant:12s} {path.name:40s} cells {r['cells']:5d} cov {r['coverage']:.2f} "
                  f"def {r['defect_fraction']:.3f} clu {r['cluster']:3d} bright {r['brighter']:.2f} "
                  f"dom {r['domains']} {dt:.1f}s", flush=True)
    write_report(args, rows)
    print(f"wrote {args.out}")
    return 0


def frame_sources(folders) -> dict[str, tuple[str, str]]:
    """``{file: (source, material)}`` from Markdown tables ``| file | source | material | ...``
    in the folders' README.md (a source ``same @ ...`` repeats the previous row's repository)."""
    out: dict[str, tuple[str, str]] = {}
    for folder in folders:
        readme = Path(folder) / "README.md"
        if not readme.is_file():
            continue
        repo = ""
        for line in readme.read_text(errors="replace").splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 3 or not line.lstrip().startswith("|") or cells[0] in ("file", "") or set(cells[0]) <= set("-: "):
                continue
            src = cells[1]
            if src.startswith("same") and repo:
                src = repo + src[len("same"):]
            repo = src.split("@")[0].strip() or repo
            out[cells[0]] = (src, cells[2])
    return out


def write_report(args, rows) -> None:
    cmd = "python benchmarks/real_frames.py " + " ".join(
        ["FOLDER"] * len(args.folders) + (["--variants", *args.variants] if args.variants != ["full"] else []))
    lines = [
        "# Real frames: plausibility without ground truth", "",
        f"Command: `{cmd}` (the folders hold third-party frames that are not part of the project; "
        "their sources are listed below).", "",
        f"Hardware: {platform.machine()}, {args.threads} torch threads, Python {platform.python_version()}; "
        f"written {time.strftime('%Y-%m-%d')}.", "",
        "Coverage: analysed area over the crystal area the FFT lattice implies. Defect fraction: defective "
        "cells over classified cells. Cluster: largest group of adjacent cells of one defect class (> 12 is "
        "flagged). Brighter: share of Perfect cells whose physically brighter column is brighter at the reported "
        "sites (≥ 0.9 expected where the two sublattices differ). Placed: cells with a site placed from its "
        "neighbours (no column found there). Polarity: skewness of the band-passed intensity "
        "(`exports.column_polarity`; positive: bright columns, as in HAADF; below -0.2 the analysis warns of "
        "dark columns). M/X: median metal over median chalcogen column height at the found sites, and in brackets "
        "the factor by which it lies outside the range the material's end members give (calibrated at 80 kV, "
        "`pipeline.column_ratio_range`; 1.00: inside; above 3 the analysis warns).", "",
    ]
    for variant in args.variants:
        sel = [r for r in rows if r["variant"] == variant]
        if not sel:
            continue
        lines += [f"## {variant}", "",
                  "| frame | material (flag) | Å/px | cells | coverage | defect fraction | cluster | brighter | "
                  "domains | boundary nm | boundary cells | placed | hexagons on hollows | polarity | M/X | s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sel:
            det = "—" if r["detector"] is None else f"{r['detector']:.2f}"
            ps = f"{r['pixel_size']:.4f}" + ("*" if "estimated" in r["source"] else "")
            pol = "—" if r["polarity"] is None else f"{r['polarity']:+.2f}"
            mx = "—"
            if r["ratio"]:
                lo, hi = r["ratio_range"]
                mx = f"{r['ratio']:.2f} ({max(1.0, lo / r['ratio'], r['ratio'] / hi):.2f})"
            lines.append(
                f"| {r['frame']} | {r['material']} | {ps} | {r['cells']} | {r['coverage']:.2f} | "
                f"{r['defect_fraction']:.3f} | {r['cluster']} | {r['brighter']:.2f} | {r['domains']} | "
                f"{r['boundary_nm']:.1f} | {r['boundary_cells']} | {r['placed']} | {det} | {pol} | {mx} | "
                f"{r['seconds']:.1f} |")
        n = len(sel)
        pure_fail = sum(1 for r in sel if r["defect_fraction"] > 0.2 or r["cluster"] > 12)
        lines += ["", f"{n} frames; {pure_fail} over 20 % defective or with a same-class cluster of more than "
                  "12 cells. (* pixel size estimated from the lattice.)", ""]
    sources = frame_sources(args.folders)
    if sources:
        lines += ["## Frames", "", "From the folders' README tables (owner/repository @ commit : path).", "",
                  "| frame | source | material |", "|---|---|---|"]
        for name in dict.fromkeys(r["frame"] for r in rows):
            if name in sources:
                lines.append(f"| {name} | {sources[name][0]} | {sources[name][1]} |")
        lines.append("")
    lines += ["## Warnings (first variant)", ""]
    for r in [r for r in rows if r["variant"] == args.variants[0]]:
        lines.append(f"* **{r['frame']}**: " + ("; ".join(r["warnings"]) if r["warnings"] else "none"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
