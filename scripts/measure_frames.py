"""Measure what the simulator must reproduce in real frames: sampling, distortion, blur, noise.

    python scripts/measure_frames.py FRAME [FRAME ...] [--material MoTe2] [--compare-preset realistic]

For each frame: pixel size from the lattice (Å/px), lattice-vector lengths and angle
(linear scan distortion), Gaussian FWHM of the averaged brightest column (Å), column
contrast (second / brightest sublattice), and the noise estimate (Poisson λ, Gaussian
μ in the simulator's units). With ``--compare-preset`` the same numbers are printed for
simulated frames of that preset at the measured pixel size, for a side-by-side check.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy import ndimage as ndi, optimize

from napari_tmd_defects.classical import fit_sublattices
from napari_tmd_defects.geometry import estimate_lattice
from napari_tmd_defects.io import read_image
from napari_tmd_defects.materials import get_material
from napari_tmd_defects.noise import estimate_noise


def measure(image: np.ndarray, material: str) -> dict:
    mat = get_material(material)
    lat = estimate_lattice(image)
    if lat is None:
        return {"error": "no lattice"}
    ps = mat.a / lat.a_px
    l1, l2 = np.linalg.norm(lat.a1), np.linalg.norm(lat.a2)
    ang = math.degrees(math.acos(np.dot(lat.a1, lat.a2) / (l1 * l2)))
    fit = fit_sublattices(image, lat.a_px, material)
    out = {
        "pixel_size_A": ps, "rotation_deg": lat.rotation_deg, "stretch_pct": 100 * (l2 / l1 - 1),
        "shear_deg": ang - 60.0, "lattice_strength": lat.strength,
    }
    if fit is not None:
        ij, x, m, hol = fit.sites(image.shape)
        bright = x if fit.bright_is_x else m
        dim = m if fit.bright_is_x else x
        r = int(0.6 * lat.a_px)
        inside = (bright[:, 0] > r) & (bright[:, 0] < image.shape[1] - r - 1) & (bright[:, 1] > r) & (bright[:, 1] < image.shape[0] - r - 1)
        acc = np.zeros((2 * r + 1, 2 * r + 1))
        for px, py in bright[inside]:
            acc += ndi.map_coordinates(image, np.mgrid[py - r : py + r + 1, px - r : px + r + 1][:, : 2 * r + 1, : 2 * r + 1], order=1)
        acc /= max(inside.sum(), 1)
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        core = xx**2 + yy**2 < (0.25 * lat.a_px) ** 2

        def resid(p):
            return (p[0] + p[1] * np.exp(-(xx**2 + yy**2) / (2 * p[2] ** 2)) - acc)[core]

        sol = optimize.least_squares(resid, [acc.min(), np.ptp(acc), 0.1 * lat.a_px]).x
        out["column_fwhm_A"] = 2.3548 * abs(sol[2]) * ps
        g = ndi.gaussian_filter(image, 0.1 * lat.a_px)
        s = lambda p: ndi.map_coordinates(g, [p[:, 1], p[:, 0]], order=1, mode="nearest")  # noqa: E731
        bg = np.median(s(hol))
        out["contrast_dim_over_bright"] = float((np.median(s(dim)) - bg) / (np.median(s(bright)) - bg))
        out["background_over_peak"] = float((bg - np.percentile(image, 1)) / max(np.median(s(bright)) - np.percentile(image, 1), 1e-9))
    try:
        n = estimate_noise(image, lat.a_px)
        out["poisson_lambda"] = n.poisson_lambda
        out["gaussian_mu"] = n.gaussian_mu
    except ValueError:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("frames", nargs="+")
    ap.add_argument("--material", default="MoTe2")
    ap.add_argument("--compare-preset", default=None, choices=["paper", "realistic"])
    ap.add_argument("--n-sim", type=int, default=6)
    args = ap.parse_args()
    keys = ["pixel_size_A", "rotation_deg", "stretch_pct", "shear_deg", "column_fwhm_A",
            "contrast_dim_over_bright", "background_over_peak", "poisson_lambda", "gaussian_mu"]
    print("| frame | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    sizes = []
    for f in args.frames:
        img, _ = read_image(f)
        sizes.append((img.shape, measure(img, args.material).get("pixel_size_A", 0.1)))
        m = measure(img, args.material)
        print(f"| {f.split('/')[-1]} | " + " | ".join(f"{m.get(k, float('nan')):.3g}" for k in keys) + " |")
    if args.compare_preset:
        from napari_tmd_defects.datasets import sample_conditions
        from napari_tmd_defects.simulation import simulate

        shape, ps = sizes[0]
        for k in range(args.n_sim):
            kw = sample_conditions(args.compare_preset, np.random.default_rng(k), shape, pixel_size=ps)
            sim = simulate(args.material, shape, seed=k, **kw)
            m = measure(sim.image, args.material)
            print(f"| simulated {args.compare_preset} #{k} | " + " | ".join(f"{m.get(k2, float('nan')):.3g}" for k2 in keys) + " |")


if __name__ == "__main__":
    main()
