"""Real frames with what exports and alignment add: does the answer stay put?

    python benchmarks/export_artefacts.py FOLDER [FOLDER ...] [--out docs/reports/export_artefacts.md]
        [--variants scale_bar colour_bar ...]

Each real frame (folders as for ``benchmarks/real_frames.py``: image files and an optional
``frames.csv``) is analysed as it is (scaled to 0-255) and with one artefact at a time:

* ``scale_bar``: a bar and a label block burned in at the brightest grey level;
* ``colour_bar``: the same in yellow on an RGB copy;
* ``nan_border``: NaN over the left fifth and the top eighth (an aligned stack's border);
* ``zero_pad``: 15 % of the frame's size of zeros on every side (a padded canvas);
* ``black_canvas``: turned by 17° into a larger black canvas;
* ``jpeg40``: saved as an 8-bit JPEG at quality 40;
* ``up2x``: resampled to twice the pixels (cubic), half the pixel size;
* ``inverted``: maximum minus the frame (bright field / inverted contrast): the analysis
  should warn of dark columns;
* ``jet``: false-coloured through matplotlib's jet map (an RGB export whose brightness does
  not follow the intensity); ``jet_jpeg``: the same saved as a JPEG at quality 85;
* ``fourier``: Fourier (Bragg) filtered (discs of 0.15 |g100| around the strongest
  reflections, :func:`napari_tmd_defects.simulation.fourier_filter`): vacancies painted
  over, so the analysis should warn.

Per variant: the cells, the defect fraction of the classified cells, the share of metal
sites read as the base frame's most common metal state (*host share*) and of chalcogen
sites left ``unresolved``, the masked or vacuum share of the image and the warnings it
raised; the summary gives the largest change from the base frame over the frames.
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_frames import frames_in  # noqa: E402


def _grey8(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image, np.float64)
    if a.ndim == 3:
        a = a[..., :3].mean(-1)
    lo, hi = np.percentile(a, [0.1, 99.9])
    return np.clip((a - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255)


def _bar_slices(shape) -> list[tuple[slice, slice]]:
    h, w = shape
    return [(slice(int(0.92 * h), int(0.95 * h)), slice(int(0.05 * w), int(0.30 * w))),
            (slice(int(0.86 * h), int(0.90 * h)), slice(int(0.05 * w), int(0.15 * w)))]


def scale_bar(g):
    a = g.copy()
    for sl in _bar_slices(a.shape):
        a[sl] = a.max()
    return a, 1.0


def colour_bar(g):
    a = np.repeat(g[..., None], 3, axis=-1)
    for sl in _bar_slices(g.shape):
        a[sl] = (255.0, 255.0, 0.0)
    return a, 1.0


def nan_border(g):
    a = g.copy()
    a[:, : a.shape[1] // 5] = np.nan
    a[: a.shape[0] // 8] = np.nan
    return a, 1.0


def zero_pad(g):
    return np.pad(g, int(0.15 * max(g.shape))), 1.0


def black_canvas(g):
    return ndi.rotate(g, 17, reshape=True, order=1, mode="constant", cval=0.0), 1.0


def jpeg40(g):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(g, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=40)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())), np.float64), 1.0


def up2x(g):
    return ndi.zoom(g, 2, order=3), 0.5


def inverted(g):
    return g.max() - g, 1.0


def jet(g):
    import matplotlib

    lut = np.round(255 * matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3]).astype(np.uint8)
    return lut[np.clip(np.round(g), 0, 255).astype(np.uint8)], 1.0


def jet_jpeg(g):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(jet(g)[0]).save(buf, "JPEG", quality=85)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue()))), 1.0


def fourier(g):
    from napari_tmd_defects.geometry import estimate_lattice
    from napari_tmd_defects.simulation import fourier_filter

    lat = estimate_lattice(g)
    return (g if lat is None else fourier_filter(g, lat.a_px)), 1.0


VARIANTS = {f.__name__: f for f in (scale_bar, colour_bar, nan_border, zero_pad, black_canvas, jpeg40, up2x, inverted,
                                    jet, jet_jpeg, fourier)}


def measure(res, host: str | None) -> dict:
    """What a variant's result says: cells, defect fraction, host share, unresolved share."""
    counts = res.counts()
    n_cls = sum(counts.values())
    ss = res.site_state_counts()
    m, x = Counter(ss.get("M", {})), Counter(ss.get("X", {}))
    host = host or (m.most_common(1)[0][0] if m else None)
    return dict(cells=res.n_cells,
                defect_fraction=(n_cls - counts.get("Perfect", 0)) / n_cls if n_cls else float("nan"),
                host=host, host_share=m[host] / sum(m.values()) if m and host else float("nan"),
                x_unresolved=x["unresolved"] / sum(x.values()) if x else float("nan"),
                masked=res.vacuum_fraction,
                annotation=any("burned-in annotation" in w for w in res.warnings),
                nan_region=any("NaN or infinite" in w for w in res.warnings),
                dark=any("DARK COLUMNS" in w for w in res.warnings),
                colour_map=any("colour map" in w for w in res.warnings),
                fourier=any("FOURIER FILTERED" in w for w in res.warnings),
                polarity=res.checks.get("column_polarity", float("nan")))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/reports/export_artefacts.md"))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from napari_tmd_defects.classification import load_classifier
    from napari_tmd_defects.detection import load_detector
    from napari_tmd_defects.io import read_image
    from napari_tmd_defects.pipeline import analyze

    det, clf = load_detector(device="cpu"), load_classifier(device="cpu")
    rows = []
    for path, mat, ps_hint in (f for folder in args.folders for f in frames_in(folder)):
        image, meta = read_image(path)
        ps = ps_hint if ps_hint is not None else meta.get("pixel_size_A")
        g = _grey8(image)
        t0 = time.perf_counter()
        base = measure(analyze(g.astype(np.float32), ps, mat, detector=det, classifier=clf), None)
        rows.append(dict(frame=path.name, material=mat, variant="base", **base))
        for name in args.variants:
            a, scale = VARIANTS[name](g)
            a = a if a.dtype == np.uint8 else a.astype(np.float32)  # RGB exports as 8-bit
            res = analyze(a, None if ps is None else ps * scale, mat, detector=det, classifier=clf)
            rows.append(dict(frame=path.name, material=mat, variant=name, **measure(res, base["host"])))
        print(f"{path.name:40s} {len(args.variants) + 1} variants {time.perf_counter() - t0:.1f} s", flush=True)
    write_report(args, rows)
    print(f"wrote {args.out}")
    return 0


def write_report(args, rows) -> None:
    base = {r["frame"]: r for r in rows if r["variant"] == "base"}
    frames = list(base)
    cmd = "python benchmarks/export_artefacts.py " + " ".join(["FOLDER"] * len(args.folders))
    lines = [
        "# Real frames with export artefacts: does the answer stay put?", "",
        f"Command: `{cmd}` (the folders of `benchmarks/real_frames.py`: third-party frames, not part of the "
        "project; docs/reports/real_frames.md lists their sources).", "",
        f"Hardware: {platform.machine()}, {args.threads} torch threads, Python {platform.python_version()}; "
        f"written {time.strftime('%Y-%m-%d')}. {len(frames)} frames, each scaled to 0-255 (*base*) and then "
        "changed by one artefact at a time (the script's docstring says how).", "",
        "*Δ defect fraction*: the variant's defect fraction less the base frame's (percentage points); "
        "*host share*: metal sites read as the base frame's most common metal state; *unresolved*: chalcogen "
        "sites left `unresolved`; *warned*: frames whose result names the artefact (an annotation, a NaN region, "
        "dark columns, the colour map read back, a Fourier filter).", "",
        "## Summary", "",
        "| variant | frames | largest \\|Δ defect fraction\\| | median \\|Δ defect fraction\\| | lowest host share "
        "(base: lowest) | largest change in unresolved | masked or vacuum share (median) | warned |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lowest_base = min((b["host_share"] for b in base.values() if np.isfinite(b["host_share"])), default=float("nan"))
    for name in args.variants:
        sel = [r for r in rows if r["variant"] == name]
        d = np.array([abs(r["defect_fraction"] - base[r["frame"]]["defect_fraction"]) for r in sel]) * 100
        du = np.array([abs(r["x_unresolved"] - base[r["frame"]]["x_unresolved"]) for r in sel]) * 100
        hs = np.array([r["host_share"] for r in sel])
        key = {"scale_bar": "annotation", "colour_bar": "annotation", "nan_border": "nan_region",
               "inverted": "dark", "jet": "colour_map", "jet_jpeg": "colour_map", "fourier": "fourier"}.get(name)
        warned = f"{sum(r[key] for r in sel)}/{len(sel)}" if key else "—"
        lines.append(f"| {name} | {len(sel)} | {np.nanmax(d):.1f} | {np.nanmedian(d):.1f} | "
                     f"{100 * np.nanmin(hs):.1f} % ({100 * lowest_base:.1f} %) | {np.nanmax(du):.1f} | "
                     f"{100 * np.nanmedian([r['masked'] for r in sel]):.0f} % | {warned} |")
    lines += ["", "The inverted and Fourier-filtered frames are not expected to read right: they are expected to be "
              "warned of.", "",
              "## Per frame", "",
              "| frame | material | variant | cells | defect fraction | host share | unresolved | masked or vacuum | "
              "polarity | warnings |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        warn = ", ".join(k for k in ("annotation", "nan_region", "dark", "colour_map", "fourier") if r[k]) or "—"
        lines.append(f"| {r['frame']} | {r['material']} | {r['variant']} | {r['cells']} | "
                     f"{100 * r['defect_fraction']:.1f} % | {100 * r['host_share']:.1f} % ({r['host']}) | "
                     f"{100 * r['x_unresolved']:.1f} % | {100 * r['masked']:.0f} % | {r['polarity']:+.2f} | {warn} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
