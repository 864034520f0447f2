"""Multislice (abTEM) against the fast incoherent model for the same MoTe2 structure.

    python benchmarks/compare_multislice.py            # ~15 min on one core
    python benchmarks/compare_multislice.py --quick    # smaller, for a check

Needs the ``[multislice]`` extra. One thread. Writes

* ``docs/images/multislice_vs_fast.png``: both noise-free images (V_Te1, V_Te2, V_Mo near
  each other) and their difference;
* ``docs/images/multislice_profile.png``: intensity along a line through the V_Te1
  column, its Mo neighbour, a perfect Te2 column and its Mo neighbour;
* ``benchmarks/results/multislice.md``: column peak ratios above background for both
  models, frozen-phonon and static multislice, isolated-column multislice signals, the
  Z exponent of the fast model that best matches the multislice contrast, and the cost
  per image (time, peak memory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from napari_tmd_defects import multislice as ms  # noqa: E402
from napari_tmd_defects.materials import CLASS_VACANCIES, get_material  # noqa: E402
from napari_tmd_defects.simulation import Noise, Optics, build_lattice, simulate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLEAN = Noise(poisson_lambda=None, gaussian_mu=0.0)
MAT = get_material("MoTe2")
#: defect cells relative to the V_Te1 cell (i, j): V_Te2 one cell down-left, V_Mo two cells right
DEFECTS = {(0, 0): 1, (-1, 1): 2, (1, 1): 3}


# --------------------------------------------------------------------------- structure
def structure(shape: int, ps: float):
    """Labels for a perfect lattice with V_Te1, V_Te2 and V_Mo near each other."""
    lat = build_lattice(MAT, (shape, shape), ps)
    target = np.array([0.3 * shape, 0.62 * shape])
    c0 = int(np.argmin(np.linalg.norm(lat.x_site - target, axis=1)))
    i0, j0 = lat.ij[c0]
    labels = np.zeros(len(lat.ij), dtype=np.int64)
    where = {}
    for (di, dj), lab in DEFECTS.items():
        k = int(np.flatnonzero((lat.ij[:, 0] == i0 + di) & (lat.ij[:, 1] == j0 + dj))[0])
        labels[k] = lab
        where[lab] = k
    return lat, labels, where


def values_at(img: np.ndarray, xy: np.ndarray) -> np.ndarray:
    xy = np.asarray(xy, float).reshape(-1, 2)
    return ndi.map_coordinates(img.astype(float), [xy[:, 1], xy[:, 0]], order=3, mode="nearest")


def column_stats(img, lat, labels, where, shape, border_a, ps) -> dict[str, float]:
    """Peak values at the columns (bicubic at the true sites) and ratios above background."""
    b = border_a / ps

    def inner(p):
        return np.all((p > b) & (p < shape - 1 - b), axis=1)

    defect_xy = np.concatenate([lat.x_site[list(where.values())], lat.m_site[list(where.values())]])

    def far(p, r=1.2 * lat.a_px):
        return np.linalg.norm(p[:, None] - defect_xy[None], axis=-1).min(axis=1) > r

    vac = np.asarray(CLASS_VACANCIES)[labels]
    full_x = (vac[:, 0] == 0) & inner(lat.x_site) & far(lat.x_site)
    full_m = (vac[:, 1] == 0) & inner(lat.m_site) & far(lat.m_site)
    hollow = inner(lat.hex_center) & far(lat.hex_center)
    bg = float(np.median(values_at(img, lat.hex_center[hollow])))
    te2 = float(np.median(values_at(img, lat.x_site[full_x])))
    mo = float(np.median(values_at(img, lat.m_site[full_m])))
    te1 = float(values_at(img, lat.x_site[where[1]])[0])
    vte2 = float(values_at(img, lat.x_site[where[2]])[0])
    vmo = float(values_at(img, lat.m_site[where[3]])[0])
    return {
        "Te2 peak": te2, "Mo peak": mo, "V_Te1 peak": te1, "background (hollow)": bg,
        "V_Te1/Te2": (te1 - bg) / (te2 - bg),
        "Mo/Te2": (mo - bg) / (te2 - bg),
        "V_Te2 site/Te2": (vte2 - bg) / (te2 - bg),
        "V_Mo site/Mo": (vmo - bg) / (mo - bg),
        "n_Te2": int(full_x.sum()), "n_Mo": int(full_m.sum()),
    }


def isolated_columns(n_configs: int, seed: int = 0) -> dict[str, float]:
    """Multislice peak signal (fraction of the beam) of isolated Te2, Te1 and Mo columns."""
    import abtem
    import dask

    sep = ms.CHALCOGEN_SEPARATION_A["MoTe2"]
    t = sep / 2
    g = int(round(ms._TILE_BOX_A / 0.05))
    box = g * 0.05
    c = box / 2
    cols = {
        "Te2": ([[c, c, 0.5 * t], [c, c, 2.5 * t]], [52, 52]),
        "Te1 (entrance side)": ([[c, c, 0.5 * t]], [52]),
        "Te1 (exit side)": ([[c, c, 2.5 * t]], [52]),
        "Mo": ([[c, c, 1.5 * t]], [42]),
    }
    rng = np.random.default_rng(seed)
    out = {}
    with abtem.config.set({"dask.lazy": False, "diagnostics.progress_bar": False}), \
            dask.config.set(scheduler="synchronous"):
        runner = ms._Runner(abtem, Optics(), sep, 0.05)
        for fp in (0, n_configs):
            for name, (pos, num) in cols.items():
                pos, num = np.array(pos, float), np.array(num)
                sig = ms._thermal_sigmas(MAT, num, None)
                vals = [runner.signal(p, num, (box, box), (g, g), np.array([[c, c]]))[0]
                        for p in ms._configurations(pos, sig, fp, t, rng)]
                out[f"{name}, {'static' if fp == 0 else f'{fp} frozen phonons'}"] = float(np.mean(vals))
    return out


# --------------------------------------------------------------------------- cost
def cost_case(shape: int, ps: float, fp: int) -> dict:
    """One multislice image in this process: wall and CPU seconds, peak memory."""
    t0, c0 = time.perf_counter(), time.process_time()
    sim = ms.simulate_multislice("MoTe2", shape, ps, noise=Noise(), frozen_phonons=fp, seed=1)
    return {
        "shape": shape, "pixel_size": ps, "frozen_phonons": fp,
        "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
        "positions": sim.truth.params["multislice"]["scan_positions"],
        "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_cost_case(shape: int, ps: float, fp: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--cost-case", str(shape), str(ps), str(fp)],
        capture_output=True, text=True, check=True, env=os.environ.copy(),
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------- figures
def figures(fast, msi, lat, where, ps, line, out_dir: Path, n_best, fast_best, scale_best, fp):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    vmax = max(fast.max(), msi.max())
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.3), constrained_layout=True)
    ext = [-0.5 * ps, (fast.shape[1] - 0.5) * ps, (fast.shape[0] - 0.5) * ps, -0.5 * ps]
    for ax, img, title in ((axes[0], fast, "fast incoherent model (n = 1.7)"),
                           (axes[1], msi, f"multislice (abTEM, {fp} frozen phonons)")):
        im = ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, extent=ext)
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=axes[:2], shrink=0.8, label="intensity (isolated Te2 peak = 1)")
    d = msi - fast
    lim = np.abs(d).max()
    im2 = axes[2].imshow(d, cmap="RdBu_r", vmin=-lim, vmax=lim, extent=ext)
    axes[2].set_title("multislice − fast", fontsize=10)
    fig.colorbar(im2, ax=axes[2], shrink=0.8)
    names = {1: ("V_Te1", lat.x_site, "tab:red"), 2: ("V_Te2", lat.x_site, "gold"), 3: ("V_Mo", lat.m_site, "tab:blue")}
    for ax in axes:
        for lab, (name, sites, col) in names.items():
            x, y = sites[where[lab]] * ps
            ax.add_patch(matplotlib.patches.Circle((x, y), 0.55, fill=False, color=col, lw=1.5))
            ax.text(x + 0.6, y - 0.6, name, color=col, fontsize=8, fontweight="bold")
        ax.plot(line[:, 0] * ps, line[:, 1] * ps, color="tab:green", lw=1, ls="--")
        ax.set_xlabel("x (Å)")
    axes[0].set_ylabel("y (Å)")
    p1 = out_dir / "multislice_vs_fast.png"
    fig.savefig(p1, dpi=90)
    plt.close(fig)

    s = np.linalg.norm(line - line[0], axis=1) * ps
    fig, ax = plt.subplots(figsize=(7.5, 4), constrained_layout=True)
    ax.plot(s, values_at(fast, line), label="fast model, n = 1.7", color="0.4")
    ax.plot(s, scale_best[0] * values_at(fast_best, line) + scale_best[1], ls="--", color="tab:orange",
            label=f"fast model, best-fitting n = {n_best:.2f} (scaled)")
    ax.plot(s, values_at(msi, line), label=f"multislice ({fp} frozen phonons)", color="tab:purple")
    b = MAT.bond_length
    s0 = 1.5 * b
    for k, txt in enumerate(("V_Te1", "Mo", "", "Te2", "Mo")):
        if txt:
            ax.axvline(s0 + k * b, color="0.85", lw=0.8, zorder=0)
            ax.text(s0 + k * b, 1.02 * vmax, txt, ha="center", fontsize=9)
    ax.set_xlabel("distance along the line (Å)")
    ax.set_ylabel("intensity (isolated Te2 peak = 1)")
    ax.set_ylim(0, 1.1 * vmax)
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 0.93))
    p2 = out_dir / "multislice_profile.png"
    fig.savefig(p2, dpi=90)
    plt.close(fig)
    return p1, p2


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small field, fewer phonons (a check, not the note)")
    ap.add_argument("--images", type=Path, default=ROOT / "docs" / "images")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "multislice.md")
    ap.add_argument("--cost-case", nargs=3, metavar=("SHAPE", "PIXEL_SIZE", "FP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cost_case:
        s, p, f = args.cost_case
        print(json.dumps(cost_case(int(s), float(p), int(f))))
        return

    shape, ps = (200, 0.06) if args.quick else (400, 0.05)
    fps = (0, 1) if args.quick else (0, 2, 8)
    fp_main = fps[-1]
    border = 1.5  # Å left out at the image edge for statistics
    lat, labels, where = structure(shape, ps)

    fast = simulate(MAT, shape, ps, labels=labels, noise=CLEAN).clean
    stats = {"fast, n = 1.7": column_stats(fast, lat, labels, where, shape, border, ps)}
    ms_imgs, timing = {}, {}
    for fp in fps:
        t0, c0 = time.perf_counter(), time.process_time()
        sim = ms.simulate_multislice(MAT, shape, ps, labels=labels, noise=CLEAN, frozen_phonons=fp, seed=0)
        timing[fp] = (time.perf_counter() - t0, time.process_time() - c0, sim.truth.params["multislice"])
        ms_imgs[fp] = sim.clean
        name = "multislice, static lattice" if fp == 0 else f"multislice, {fp} frozen phonons"
        stats[name] = column_stats(sim.clean, lat, labels, where, shape, border, ps)
        print(name, {k: round(v, 3) for k, v in stats[name].items()}, f"{timing[fp][1]:.0f} s CPU", flush=True)
    msi = ms_imgs[fp_main]

    # frozen-phonon convergence: image differences against the largest ensemble
    b = int(round(border / ps))
    crop = np.s_[b:-b, b:-b]
    fp_effect = {fp: float(np.sqrt(np.mean((ms_imgs[fp][crop] - msi[crop]) ** 2))) for fp in fps if fp != fp_main}

    # the fast model's Z exponent that best matches the multislice contrast: least squares
    # a * fast_n + c (i) over the values at every interior column and hollow site (incl. the
    # vacancies), (ii) over all interior pixels; n on a grid
    bpx = border / ps
    sites = np.concatenate([lat.x_site, lat.m_site, lat.hex_center])
    sites = sites[np.all((sites > bpx) & (sites < shape - 1 - bpx), axis=1)]
    ms_sites = values_at(msi, sites)
    fits = []
    for n in np.round(np.arange(1.2, 2.31, 0.05), 2):
        f_n = simulate(MAT, shape, ps, labels=labels, noise=CLEAN, optics=Optics(z_exponent=float(n))).clean
        row = [float(n)]
        for f, m in ((values_at(f_n, sites), ms_sites), (f_n[crop].ravel(), msi[crop].ravel().astype(float))):
            A = np.stack([f, np.ones(f.size)], axis=1)
            coef, *_ = np.linalg.lstsq(A, m, rcond=None)
            row += [float(np.sqrt(np.mean((A @ coef - m) ** 2))), coef]
        row.append(column_stats(f_n, lat, labels, where, shape, border, ps)["Mo/Te2"])
        fits.append(tuple(row))
    best = min(fits, key=lambda f: f[1])
    n_pixels = min(fits, key=lambda f: f[3])[0]
    n_best = best[0]
    fast_best = simulate(MAT, shape, ps, labels=labels, noise=CLEAN, optics=Optics(z_exponent=n_best)).clean
    stats[f"fast, n = {n_best:.2f} (best fit)"] = column_stats(fast_best, lat, labels, where, shape, border, ps)
    ms_mo = stats[f"multislice, {fp_main} frozen phonons"]["Mo/Te2"]
    grid_n = np.array([f[0] for f in fits])
    grid_r = np.array([f[5] for f in fits])
    n_ratio = float(np.interp(ms_mo, grid_r[::-1], grid_n[::-1]))  # Mo/Te2 falls with n
    rel_fast = float(np.sqrt(np.mean((fast[crop] - msi[crop]) ** 2)))

    iso = isolated_columns(4 if args.quick else 32)

    # line through V_Te1 -> its Mo -> (gap) -> Te2 -> Mo, along the X->M bond
    k1 = where[1]
    u = lat.m_site[k1] - lat.x_site[k1]
    u = u / np.linalg.norm(u)
    bpx = MAT.bond_length / ps
    line = lat.x_site[k1][None] + np.linspace(-1.5 * bpx, 4.5 * bpx, 400)[:, None] * u[None]

    p1, p2 = figures(fast, msi, lat, where, ps, line, args.images, n_best, fast_best, best[2], fp_main)

    costs = [] if args.quick else [run_cost_case(128, 0.1, 1), run_cost_case(256, 0.12, 1)]
    write_report(args.out, shape, ps, stats, fp_effect, fits, n_best, n_ratio, n_pixels, rel_fast, iso, timing,
                 costs, fp_main, len(sites), [p1, p2], args.quick)
    print(f"wrote {args.out}, {p1}, {p2}")


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return p.name


def write_report(path, shape, ps, stats, fp_effect, fits, n_best, n_ratio, n_pixels, rel_fast, iso, timing,
                 costs, fp_main, n_sites, pngs, quick):
    import abtem

    cmd = "python benchmarks/compare_multislice.py" + (" --quick" if quick else "")
    lines = [
        "# Multislice (abTEM) vs the fast incoherent model",
        "",
        f"Command: `{cmd}` · {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs "
        f"(shared), one thread, Python {platform.python_version()}, numpy {np.__version__}, "
        f"abTEM {abtem.__version__}.",
        "",
        f"MoTe2, {shape}² px at {ps} Å/px ({shape * ps:.1f} Å field), 80 kV, 27 mrad, HAADF 70–277.9 mrad, "
        "no aberrations, no source blur, no noise. One V_Te1, V_Te2 and V_Mo near each other; "
        "everything else perfect. Both images are normalised so that the noise-free peak of an "
        "isolated Te2 column is 1. Column values are read at the true sites (bicubic); "
        "background = median at hollow sites; columns within 1.2 a of a vacancy and 1.5 Å of the "
        "edge are left out of the medians.",
        "",
        "## Column peaks above background",
        "",
        "| model | Te2 peak | Mo peak | background | V_Te1/Te2 | Mo/Te2 | V_Te2 site/Te2 | V_Mo site/Mo |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in stats.items():
        lines.append(
            f"| {name} | {s['Te2 peak']:.3f} | {s['Mo peak']:.3f} | {s['background (hollow)']:.3f} | "
            f"{s['V_Te1/Te2']:.3f} | {s['Mo/Te2']:.3f} | {s['V_Te2 site/Te2']:.3f} | {s['V_Mo site/Mo']:.3f} |"
        )
    lines += [
        "",
        "## Isolated columns (multislice signal, fraction of the incident beam)",
        "",
        "| column | signal | / Te2 (same ensemble) |",
        "|---|---:|---:|",
    ]
    for name, v in iso.items():
        ref = iso["Te2, " + name.split(", ", 1)[1]]
        lines.append(f"| {name} | {v:.5f} | {v / ref:.3f} |")
    lines += [
        "",
        "## Z exponent of the fast model",
        "",
        f"Least squares `a · fast_n + c` against the {fp_main}-phonon multislice image over the "
        f"values at all {n_sites} interior column and hollow sites (vacancies included): best "
        f"**n = {n_best:.2f}**; over all interior pixels: n = {n_pixels:.2f} (flat: the pixel "
        f"residual is dominated by the column shapes, not by the contrast). The Mo/Te2 ratio alone is "
        f"matched by **n = {n_ratio:.2f}**. RMS pixel difference between the fast model "
        f"(n = 1.7, no fit) and the multislice image: {rel_fast:.4f} (isolated Te2 peak = 1).",
        "",
        "| n | sites: rms residual | a | c | pixels: rms residual | fast Mo/Te2 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, rms, coef, rms_px, _, r in fits:
        lines.append(f"| {n:.2f} | {rms:.4f} | {coef[0]:.3f} | {coef[1]:.4f} | {rms_px:.4f} | {r:.3f} |")
    lines += [
        "",
        "## Frozen phonons",
        "",
        f"RMS pixel difference to the {fp_main}-phonon image (isolated Te2 peak = 1): "
        + ", ".join(f"{('static' if k == 0 else f'{k} phonons')}: {v:.4f}" for k, v in fp_effect.items())
        + ".",
        "",
        "## Cost (one thread)",
        "",
        "| image | frozen phonons | probe positions | wall s | CPU s | CPU ms / position / phonon | peak memory MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for fp, (wall, cpu, p) in timing.items():
        lines.append(f"| {shape}² at {ps} Å/px (this note) | {fp} | {p['scan_positions']} | {wall:.0f} | {cpu:.0f} | "
                     f"{1e3 * cpu / p['scan_positions'] / max(fp, 1):.1f} | – |")
    for c in costs:
        lines.append(
            f"| {c['shape']}² at {c['pixel_size']} Å/px, paper noise | {c['frozen_phonons']} | {c['positions']} | "
            f"{c['wall_s']:.0f} | {c['cpu_s']:.0f} | {1e3 * c['cpu_s'] / c['positions'] / max(c['frozen_phonons'], 1):.1f} | "
            f"{c['peak_rss_MiB']:.0f} |"
        )
    lines += [
        "",
        "The machine was shared with other jobs while this ran: CPU seconds are the better "
        "measure; wall seconds can be up to ~2× larger than on an idle core.",
        "",
        "Figures: " + ", ".join(f"`{_rel(p)}`" for p in pngs) + ".",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
